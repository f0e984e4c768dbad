"""Task schedules (docs/design.md section 4): which task's environments act when.

* ``round_robin`` (MTSpark): one task at a time; move to the next task after
  ``interval`` episodes (or agent steps, ``interval_unit="steps"``) on the
  current one. Default 25 episodes (the likely unpublished value, docs/design.md section 4).
* ``adaptive`` (SwitchMT): one task at a time; at every iteration in which
  episodes end on the active task, record the relative parameter change
  ``||theta - theta_prev|| / ||theta||`` since the previous such point; after
  at least ``min_episodes`` episodes, switch when the mean of the last
  ``window`` changes falls below ``threshold``.
* ``simultaneous``: every task acts at every iteration.

Episodes are counted over all N envs of the active task; when several end in
the same iteration they all count, and the switch happens at the end of that
iteration. Pure functions over :class:`ScheduleState` (jittable).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from mtspark_jax.rl.learner import relative_change

Array = jax.Array

KINDS = ("round_robin", "adaptive", "simultaneous")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """See module docstring. ``interval``/``interval_unit`` apply to round robin;
    ``min_episodes``/``window``/``threshold`` to adaptive."""

    kind: str = "round_robin"
    interval: int = 25
    interval_unit: str = "episodes"
    min_episodes: int = 25
    window: int = 5
    threshold: float = 0.1


def validate_schedule_config(c: ScheduleConfig) -> None:
    """Raises ValueError naming the first bad value."""
    if c.kind not in KINDS:
        raise ValueError(f"unknown schedule {c.kind!r}; expected one of {list(KINDS)}")
    if c.interval < 1:
        raise ValueError(f"schedule interval must be >= 1, got {c.interval}")
    if c.interval_unit not in ("episodes", "steps"):
        raise ValueError(f"interval_unit must be 'episodes' or 'steps', got {c.interval_unit!r}")
    if c.min_episodes < 0 or c.window < 1:
        raise ValueError(f"need min_episodes >= 0 and window >= 1, got {c.min_episodes}, {c.window}")
    if not c.threshold > 0:
        raise ValueError(f"threshold must be > 0, got {c.threshold}")


@flax.struct.dataclass
class ScheduleState:
    """Attributes:
      active: the acting task (sequential schedules), int32 scalar.
      episodes: episodes finished on the active task since the last switch.
      steps: agent steps on the active task since the last switch.
      switches: number of switches so far.
      changes: ring ``[window]`` of relative parameter changes (adaptive).
      num_changes: changes recorded since the last switch.
      ref_params: parameters at the last recorded episode end (adaptive; else None).
    """

    active: Array
    episodes: Array
    steps: Array
    switches: Array
    changes: Array
    num_changes: Array
    ref_params: Any = None


def init_schedule(c: ScheduleConfig, params: Any = None) -> ScheduleState:
    """Starts on task 0. ``params`` is needed for ``adaptive`` only."""
    validate_schedule_config(c)
    z = jnp.zeros((), jnp.int32)
    ref = jax.tree.map(jnp.copy, params) if c.kind == "adaptive" else None
    if c.kind == "adaptive" and params is None:
        raise ValueError("the adaptive schedule needs the initial params")
    return ScheduleState(z, z, z, z, jnp.zeros((c.window,), jnp.float32), z, ref)


def acting_mask(c: ScheduleConfig, state: ScheduleState, num_tasks: int) -> Array:
    """``[num_tasks]`` bool: which tasks' envs step this iteration."""
    if c.kind == "simultaneous":
        return jnp.ones((num_tasks,), bool)
    return jnp.arange(num_tasks) == state.active


def update_schedule(
    c: ScheduleConfig,
    state: ScheduleState,
    num_tasks: int,
    episodes_ended: Array,
    steps: Array,
    params: Any = None,
) -> ScheduleState:
    """Advances the schedule after one iteration.

    Args:
      episodes_ended: episodes that ended this iteration on the active task.
      steps: agent steps taken this iteration on the active task.
      params: current parameters (adaptive only).

    Returns:
      the new state (``active`` moved to the next task if it is time).
    """
    episodes = state.episodes + episodes_ended
    steps_ = state.steps + steps
    state = state.replace(episodes=episodes, steps=steps_)
    if c.kind == "simultaneous":
        return state
    if c.kind == "round_robin":
        progress = episodes if c.interval_unit == "episodes" else steps_
        switch = progress >= c.interval
    else:
        ended = episodes_ended > 0
        change = relative_change(params, state.ref_params)
        changes = jnp.where(ended, state.changes.at[state.num_changes % c.window].set(change), state.changes)
        num_changes = state.num_changes + ended.astype(jnp.int32)
        ref = jax.tree.map(lambda p, r: jnp.where(ended, p, r), params, state.ref_params)
        state = state.replace(changes=changes, num_changes=num_changes, ref_params=ref)
        switch = (episodes >= c.min_episodes) & (num_changes >= c.window) & (changes.mean() < c.threshold)
    return _switch(state, switch, num_tasks)


def _switch(state: ScheduleState, switch: Array, num_tasks: int) -> ScheduleState:
    z = jnp.zeros((), jnp.int32)
    return state.replace(
        active=jnp.where(switch, (state.active + 1) % num_tasks, state.active).astype(jnp.int32),
        episodes=jnp.where(switch, z, state.episodes),
        steps=jnp.where(switch, z, state.steps),
        switches=state.switches + switch.astype(jnp.int32),
        num_changes=jnp.where(switch, z, state.num_changes),
        changes=jnp.where(switch, jnp.zeros_like(state.changes), state.changes),
    )
