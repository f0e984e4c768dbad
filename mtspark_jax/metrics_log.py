"""Run logs: TensorBoard scalars and the long-format ``metrics.csv`` every launcher writes.

The RL runner, the Atari sweep and the image path all log through
:class:`MetricsLogger`; the CSVs hold every scalar, and TensorBoard
(tensorboardX, optional) is a view of them.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Mapping, Sequence

import numpy as np


def truncate_csv(path: str, last_step: int) -> None:
    """Drops the rows of a CSV with a ``step`` column past ``last_step``, and partial rows.

    A resumed run restarts from its checkpoint's step, so rows an interrupted
    run wrote after that checkpoint would otherwise appear twice. A run that
    stopped on a full disk may have left a partial last row; it has fewer
    columns than the header (a cut inside the leading ``step`` leaves one), or
    a step past ``last_step``, as the runner flushes the logs before every
    checkpoint.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index("step")
    keep = [r for r in body if len(r) == len(header) and int(r[col]) <= last_step]
    if len(keep) != len(body):
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + keep)
        os.replace(tmp, path)


class MetricsLogger:
    """TensorBoard + long-format CSV of scalars (``metrics.csv``), and an RL eval CSV (``eval.csv``).

    Args:
      workdir: the folder of the CSVs and ``tb/``.
      tensorboard: also write TensorBoard events (tensorboardX; without it,
        the CSVs only, with a warning).
      resume_step: the step a resumed run restarts from (-1: a run from
        scratch). Rows logged past it (by an interrupted run) are dropped from
        both CSVs, and TensorBoard purges its events past it, so that each
        step is logged once. ``None`` appends to whatever is there.
      columns: extra leading columns of ``metrics.csv``, filled from the
        keyword arguments of :meth:`scalar` (the image path logs ``time``,
        ``stage`` and ``epoch``); the header is ``[*columns, step, name, value]``.
      eval_csv: keep ``eval.csv`` (greedy evaluation returns per task).
    """

    def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None,
                 columns: Sequence[str] = (), eval_csv: bool = True):
        self.workdir = os.fspath(workdir)
        workdir = self.workdir
        self.columns = tuple(columns)
        self.writer = None
        if resume_step is not None:
            for name in ("metrics.csv", "eval.csv"):
                truncate_csv(os.path.join(workdir, name), resume_step)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # the CSVs hold every scalar; TensorBoard is a view of them
                logging.warning("tensorboardX is not installed: logging to metrics.csv and eval.csv only")
            else:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)
        new = not os.path.exists(os.path.join(workdir, "metrics.csv"))
        self._csv = open(os.path.join(workdir, "metrics.csv"), "a", newline="")
        self._w = csv.writer(self._csv)
        if new:
            self._w.writerow([*self.columns, "step", "name", "value"])
        self._eval = self._ew = None
        if eval_csv:
            new_eval = not os.path.exists(os.path.join(workdir, "eval.csv"))
            self._eval = open(os.path.join(workdir, "eval.csv"), "a", newline="")
            self._ew = csv.writer(self._eval)
            if new_eval:
                self._ew.writerow(["step", "switches", "active_task", "task", "game", "mean_return", "returns"])

    def scalar(self, name: str, value: float, step: int, **context) -> None:
        """One row of ``metrics.csv`` (``context``: a value for each of ``columns``)."""
        value = float(value)
        self._w.writerow([context[c] for c in self.columns] + [step, name, f"{value:.6g}"])
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def scalars(self, metrics: Mapping[str, float], step: int, **context) -> None:
        """:meth:`scalar` for every item of ``metrics``."""
        for name, value in metrics.items():
            self.scalar(name, value, step, **context)

    def eval_row(self, step, switches, active, task, game, returns) -> None:
        self._ew.writerow([step, switches, active, task, game, f"{float(np.mean(returns)):.4g}",
                           " ".join(f"{r:.4g}" for r in returns)])

    def flush(self) -> None:
        self._csv.flush()
        if self._eval is not None:
            self._eval.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        self._csv.close()
        if self._eval is not None:
            self._eval.close()
        if self.writer is not None:
            self.writer.close()
