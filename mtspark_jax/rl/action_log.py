"""Exact resume of EnvPool training pools: the log of their actions, and its replay.

EnvPool cannot save its emulators, but a pool is deterministic given its
seed and its actions (tests/test_envs.py). So every checkpoint saves, per
task, every action the training pools have been given (``[steps, N]``
uint8, 1 byte per agent step), and a resume recreates each pool with the
same seed, resets it and replays the log (:func:`fast_forward`), then checks
that the observations it reaches equal the checkpointed ``obs`` bit for bit
(:func:`restore_envs`; a mismatch raises). The cost is one env step per
logged step (about 5k steps/s on 2 CPU cores, no network).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax.checkpoint import CheckpointError
from mtspark_jax.rl.envs import TaskEnv


class ActionLog:
    """Per task, the actions the training pools were given so far, appended chunk by chunk.

    Args:
      num_tasks: tasks (one pool each).
      width: envs per pool (``N``; an Atari sweep's shared pools: ``M * N``).
      restored: the logs of a restored checkpoint, ``[steps_i, width]`` per task.
    """

    def __init__(self, num_tasks: int, width: int, restored: Sequence[np.ndarray] | None = None):
        self.width = width
        self._parts: list[list[np.ndarray]] = [[np.asarray(a, np.uint8)] for a in restored] if restored else [
            [] for _ in range(num_tasks)]

    def append(self, task: int, actions: np.ndarray) -> None:
        """Adds ``actions [steps, width]`` given to ``task``'s pool."""
        self._parts[task].append(actions)

    def arrays(self) -> list[np.ndarray]:
        """Every task's whole log ``[steps_i, width]`` uint8 (kept as one array from now on)."""
        out = [np.concatenate(p).astype(np.uint8, copy=False) if p else np.zeros((0, self.width), np.uint8) for p in self._parts]
        self._parts = [[a] for a in out]
        return out

    def steps(self) -> int:
        """Logged iterations of env steps, over all tasks."""
        return sum(len(a) for p in self._parts for a in p)


def fast_forward(env: TaskEnv, actions: np.ndarray, chunk: int = 4096) -> tuple[Any, jax.Array]:
    """Resets a FRESH ``env`` and replays ``actions [T, N]``; returns ``(env_state, obs)``."""
    state, obs = env.reset()

    def body(carry, a):
        s, _ = carry
        s, out = env.step(s, a)
        return (s, out.obs), None

    run = jax.jit(lambda s, o, a: jax.lax.scan(body, (s, o), a)[0])
    for start in range(0, len(actions), chunk):
        state, obs = run(state, obs, jnp.asarray(actions[start:start + chunk], jnp.int32))
    return state, obs


def restore_envs(envs: Sequence[TaskEnv], actions: Sequence[np.ndarray], expected_obs: jax.Array) -> tuple:
    """Fast-forwards every (fresh) task env; raises CheckpointError unless obs match exactly."""
    states = []
    for i, (env, acts) in enumerate(zip(envs, actions)):
        s, obs = fast_forward(env, acts)
        if not np.array_equal(np.asarray(obs), np.asarray(expected_obs[i])):
            raise CheckpointError(
                f"task {i} ({env.spec.name}): replaying {len(acts)} logged actions did not reproduce the "
                "checkpointed observations; the environment is not deterministic here"
            )
        states.append(s)
    return tuple(states)
