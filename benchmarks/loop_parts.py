"""Pieces shared by ``rl_loop.py`` and ``loop_profile.py``: the loop's gradient steps and a small filled replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax.rl import learner as L
from mtspark_jax.rl import replay as R
from mtspark_jax.rl import training as T


def gradient_steps(c: T.TrainConfig) -> tuple[int, int]:
    """(gradient steps per update, samples per step) past warm-up, as :func:`training.learn` does them."""
    tasks = len(c.games) if c.learn_from == "all" else 1
    return (1, c.batch_size * tasks) if c.update_mode == "mixed" and tasks > 1 else (tasks, c.batch_size)


def filled_replay(num_tasks: int, num_envs: int, spec, records: int = 40) -> R.ReplayState:
    """A small replay with ``records`` random frames per env in every task (enough to sample from)."""
    rep = R.init_replay(num_tasks, records + 24, num_envs, spec.frame_shape, spec.stack, spec.num_actions)
    rng = np.random.default_rng(0)
    add = jax.jit(R.add, static_argnums=1)
    for task in range(num_tasks):
        flags_ = R.initial_flags(num_envs)
        for _ in range(records):
            frame = jnp.asarray(rng.integers(0, 255, (num_envs, *spec.frame_shape), dtype=np.uint8))
            none = jnp.zeros(num_envs, bool)
            rep = add(rep, task, frame, jnp.zeros(num_envs, jnp.int32), jnp.zeros(num_envs), none, none,
                      flags_.first, ~flags_.terminal)
            flags_ = R.next_flags(flags_, none, none)
    return rep


def loop_update(loop: T.Loop, state: T.TrainState, key) -> L.LearnerState:
    """One owed update exactly as the fused loop runs it (:func:`training.draw`, :func:`training.learn`):
    a gradient step per learning task (``learn_from``), or one on their concatenated samples (``mixed``)."""
    batches = T.draw(loop, state, key)
    lstate, _ = T.learn(loop, state.learner, state, batches, [None] * len(batches),
                        jnp.ones((loop.num_tasks,), bool))
    return lstate
