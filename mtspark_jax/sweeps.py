"""Batch sweeps: what every sweep shares (members, their health, progress, the table).

A sweep is the product of a grid of *settings* (hyper-parameters that keep
every array shape fixed) and a list of seeds; every member is one
(setting, seed) pair. Members are stacked along a leading axis ``[M, ...]``
and trained by one vmapped, jitted step, so the per-member cost of dispatch,
compilation and small kernels is shared.

Each sweep lives beside what it sweeps:

* images: :mod:`mtspark_jax.vision.image_sweep` (every member in one step);
* MinAtar: :mod:`mtspark_jax.rl.minatar_sweep` (a setting's seeds vmapped);
* Atari: :mod:`mtspark_jax.rl.atari_sweep` (a setting's seeds sharing one
  EnvPool per game).

This module imports neither ``rl`` nor ``vision``. It holds:

* the grid's members: :func:`make_members`, :func:`setting_config`,
  :func:`setting_label` (grids are parsed by
  :func:`mtspark_jax.config_flags.parse_grid`);
* divergence checks: :func:`all_finite`, :func:`chunk_td_health`;
* the progress bar: :func:`progress_bar`, :func:`member_progress`;
* the result table: :func:`summarize_members`, :func:`write_table`,
  :func:`write_members`.

Divergence: a member whose loss or parameters become non-finite is marked
``diverged`` and left out of the table's mean and spread, which reports it
by count. Other members are computed independently under ``vmap`` and are
not affected.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtspark_jax import config_flags

Array = jax.Array


# ---------------------------------------------------------------------------
# Members: settings x seeds.


@dataclasses.dataclass(frozen=True)
class Members:
    """The members of a sweep.

    Attributes:
      settings: one dict (hyper-parameter -> value) per grid point, in grid order.
      setting: ``[M]`` index into ``settings`` of each member.
      seed: ``[M]`` seed of each member.
    """

    settings: tuple[dict[str, float], ...]
    setting: np.ndarray
    seed: np.ndarray

    @property
    def size(self) -> int:
        return len(self.seed)

    def values(self, name: str, default: float) -> np.ndarray:
        """``[M]`` float32 value of ``name`` per member (``default`` where not swept)."""
        return np.array([self.settings[s].get(name, default) for s in self.setting], np.float32)


def make_members(grid: Mapping[str, Sequence[float]], seeds: Sequence[int]) -> Members:
    """Every grid point (product of the value lists, in order) times every seed."""
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    names = list(grid)
    settings = tuple(dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names)))
    setting = np.repeat(np.arange(len(settings)), len(seeds))
    seed = np.tile(np.asarray(seeds, np.int64), len(settings))
    return Members(settings, setting, seed)


def setting_config(config, setting: Mapping[str, Any]):
    """``config`` (a frozen dataclass, e.g. a TrainConfig) with one grid point's values.

    Grids from :func:`mtspark_jax.config_flags.parse_grid` hold typed values; a
    float for an int field is a whole number. ValueError for a name that is not
    a field.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    for name in setting:
        if name not in fields:
            raise ValueError(f"{name!r} is not a {type(config).__name__} field")
    cast = {n: (int(v) if isinstance(v, float) and isinstance(getattr(config, n), int) else v)
            for n, v in setting.items()}
    return dataclasses.replace(config, **cast)


def setting_label(setting: Mapping[str, Any]) -> str:
    """``{"lr": 1e-4, "tau": 2.0}`` -> ``"lr=0.0001,tau=2.0"``: one grid point in the grid's own syntax."""
    return ",".join(f"{k}={config_flags.format_value(v)}" for k, v in setting.items())


# ---------------------------------------------------------------------------
# Divergence.


def all_finite(tree: Any) -> Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def chunk_td_health(td_loss: np.ndarray, num_updates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per member, from one chunk's RL logs ``[M, K]`` (K loop iterations).

    Returns:
      ``(diverged [M], mean_td_loss [M])``: whether an iteration that updated
      had a non-finite TD loss, and the mean TD loss over the iterations that
      updated and logged a loss (NaN for a member without any).
    """
    updated = np.asarray(num_updates) > 0
    td_loss = np.asarray(td_loss)
    diverged = (updated & ~np.isfinite(td_loss)).any(-1)
    losses = np.where(updated, td_loss, np.nan)
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(losses)).sum(-1)
        mean = np.where(counts > 0, np.nansum(losses, -1) / np.maximum(counts, 1), np.nan)
    return diverged, mean


# ---------------------------------------------------------------------------
# Progress.


def progress_bar(total: int, enabled: bool, desc: str | None = None, initial: int = 0) -> tqdm:
    """A tqdm bar of ``total`` steps on stderr, the launchers' bar; with ``enabled`` False
    it prints nothing and its updates do nothing."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True)


def member_progress(values: Mapping[str, np.ndarray], diverged: np.ndarray) -> str:
    """Bar text: each metric's mean over the members that have not diverged.

    Args:
      values: metric name -> ``[M]`` per-member value (NaN: none yet; left
        out of the mean, ``-`` where no member has one).
      diverged: ``[M]`` bool.

    Returns:
      e.g. ``"ret 3.21 td 0.0123 (1 of 4 diverged)"``.
    """
    diverged = np.asarray(diverged, bool)
    parts = []
    for name, v in values.items():
        v = np.asarray(v, np.float64)[~diverged]
        v = v[np.isfinite(v)]
        parts.append(f"{name} {np.mean(v):.4g}" if len(v) else f"{name} -")
    if diverged.any():
        parts.append(f"({int(diverged.sum())} of {len(diverged)} diverged)")
    return " ".join(parts)


# ---------------------------------------------------------------------------
# The table.


def _spread(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize_members(result: Mapping[str, Any], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per setting: its values, ``members``, ``diverged`` and ``<metric>_mean`` / ``_std``.

    Mean and sample standard deviation (ddof = 1) are over the members of the
    setting that did not diverge.
    """
    out = []
    for k, setting in enumerate(result["settings"]):
        rows = [r for r in result["members"] if r["setting"] == k]
        ok = [r for r in rows if not r["diverged"]]
        row: dict[str, Any] = dict(setting)
        row["members"] = len(rows)
        row["diverged"] = len(rows) - len(ok)
        for m in metrics:
            mean, std = _spread(np.array([r[m] for r in ok], np.float64))
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        out.append(row)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return config_flags.format_value(v)


def write_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], workdir: str | Path,
                stem: str = "sweep") -> str:
    """Writes ``<stem>.md`` (mean ± std per setting) and ``<stem>.csv``; returns the markdown."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not rows:
        return ""
    hp = [k for k in rows[0] if k not in ("members", "diverged") and not k.endswith(("_mean", "_std"))]
    header = hp + ["members", "diverged"] + list(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_fmt(r[k]) for k in hp] + [str(r["members"]), str(r["diverged"])]
        cells += [f"{_fmt(r[m + '_mean'])} ± {_fmt(r[m + '_std'])}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    (workdir / f"{stem}.md").write_text(md + "\n")
    with open(workdir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return md


def write_members(result: Mapping[str, Any], workdir: str | Path, stem: str = "members") -> None:
    """Per-member CSV (one row per member)."""
    rows = result["members"]
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(workdir) / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
