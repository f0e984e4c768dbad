"""Orbax checkpoints of the training state, with exact resume.

What is saved at a chunk boundary (``step`` = ``global_step``):

* ``state``: the whole :class:`~mtspark_jax.rl.training.TrainState` except the
  env states (EnvPool handles are pointers into a live process);
* ``actions``: per task, every action the training pools have been given so
  far, ``[steps_i, N]`` uint8;
* ``meta`` (JSON): config, host-side counters, metrics history.

The action logs are what makes resume exact: EnvPool cannot save its
emulators, so a resume replays them into fresh pools
(:mod:`mtspark_jax.rl.action_log`). This module knows only pytrees and files.

``CheckpointManager`` keeps the last ``keep`` steps; Orbax writes into a
temporary directory and renames it when complete, so a partial (interrupted)
save is never listed. A listed checkpoint that fails to restore (corrupt or
missing files) is refused with a warning naming it, and the next older one is
tried (:meth:`Checkpointer.restore_latest`). A save that fails raises
:class:`mtspark_jax.workdir.WriteFailed` with one line: what failed, whether
the disk is full, and the newest complete checkpoint the same command resumes
from (the older checkpoints are untouched).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtspark_jax.workdir import error_summary, guard_writes

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or the environments could not be brought back exactly."""


def refusal_line(step: int, directory: str, error: BaseException) -> str:
    """One line naming a refused checkpoint and the cause (the full error goes to the debug log).

    Orbax and TensorStore errors carry multi-line specs; only the first line
    of the message is kept, cut at 160 characters.
    """
    return (f"checkpoint {step} in {directory} is corrupt or incomplete, refused ({error_summary(error)}); "
            "trying an older one")


class _OrbaxErrorsToDebug(logging.Filter):
    """Moves Orbax's ERROR records to this module's debug log.

    Orbax's background threads log every failed write with a long traceback
    (absl logging), each thread its own; the failure reaches the caller as an
    exception as well, which :func:`guard_save` reports in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            log.debug("Orbax: %s", record.getMessage(), exc_info=record.exc_info)
            return False
        return True


@contextlib.contextmanager
def guard_save(what: str, newest_checkpoint: Callable[[], int | None] | None) -> Iterator[None]:
    """Context for an Orbax save: any error becomes :class:`mtspark_jax.workdir.WriteFailed` (one line;
    :func:`mtspark_jax.workdir.guard_writes`), and what else a failed save prints goes to the debug log.

    Any error counts because Orbax and TensorStore wrap the OSError in their
    own (``ValueError: RESOURCE_EXHAUSTED: ... No space left on device``).
    A failed save also prints, besides the exception the caller gets:

    * Orbax's ERROR logs, a traceback per background thread (absl logging);
    * after the first failed write has closed Orbax's event loop, the
      completion callback of every other pending TensorStore write raises
      ``RuntimeError: Event loop is closed``, which Python reports through
      ``sys.unraisablehook`` (dozens of tracebacks, depending on timing).

    Both go to the debug log while the save runs; unraisable errors of a save
    that succeeds are handed to the previous hook afterwards.
    """
    quiet, absl_logger = _OrbaxErrorsToDebug(), logging.getLogger("absl")  # Orbax logs through absl
    unraisable, previous_hook = [], sys.unraisablehook
    absl_logger.addFilter(quiet)
    sys.unraisablehook = unraisable.append
    failed = False
    try:
        with guard_writes(what, newest_checkpoint, catch=(Exception,)):
            yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.unraisablehook = previous_hook
        absl_logger.removeFilter(quiet)
        for u in unraisable:
            if failed:
                log.debug("during the failed save: %s", u.err_msg or "unraisable error",
                          exc_info=(u.exc_type, u.exc_value, u.exc_traceback))
            else:
                previous_hook(u)


class Checkpointer:
    """Periodic Orbax checkpoints in ``directory`` (keeps the last ``keep``)."""

    def __init__(self, directory: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def newest_on_disk(self) -> int | None:
        """The newest complete checkpoint as the disk lists it now (after a failed save); None: none."""
        self.manager.reload()
        steps = self.manager.all_steps()
        return max(steps) if steps else None

    def save(self, step: int, state: Any, actions: Sequence[np.ndarray], meta: dict) -> None:
        """Saves ``state`` (env_states dropped), the action logs and ``meta``; waits until written.

        Raises:
          mtspark_jax.workdir.WriteFailed: the save failed (any error of Orbax's: TensorStore wraps
            ``ENOSPC`` in its own); the message names the newest complete checkpoint.
        """
        state = state.replace(env_states=None)
        # One leading padding row per log: Orbax refuses zero-size arrays (a task that has not acted yet).
        acts = {f"task{i}": np.concatenate([np.zeros((1,) + np.shape(a)[1:], np.uint8), np.asarray(a, np.uint8)])
                for i, a in enumerate(actions)}
        with guard_save(f"checkpoint {step} in {self.directory}", self.newest_on_disk):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    actions=ocp.args.StandardSave(acts),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
            self.manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, list[np.ndarray], dict]:
        """Restores checkpoint ``step`` onto ``template`` (a TrainState with env_states)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.replace(env_states=None))
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                actions=ocp.args.StandardRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        acts = out["actions"]
        actions = [np.asarray(acts[f"task{i}"], np.uint8)[1:] for i in range(len(acts))]
        state = out["state"].replace(env_states=template.env_states)
        return state, actions, dict(out["meta"])

    def restore_latest(self, template: Any) -> tuple[int, Any, list[np.ndarray], dict] | None:
        """Newest checkpoint that restores; ``None`` if there is none at all.

        A checkpoint that fails to restore is logged and skipped; if every one
        fails, raises :class:`CheckpointError` naming them.
        """
        steps = self.steps()
        if not steps:
            return None
        failures = []
        for step in reversed(steps):
            try:
                state, actions, meta = self.restore(step, template)
                return step, state, actions, meta
            except Exception as e:  # noqa: BLE001 - any failure means "refuse this one"
                log.debug("checkpoint %d in %s failed to restore", step, self.directory, exc_info=True)
                print(f"WARNING: {refusal_line(step, self.directory, e)}")
                failures.append(step)
        raise CheckpointError(f"no usable checkpoint in {self.directory}: refused steps {failures}")

    def close(self) -> None:
        self.manager.close()

