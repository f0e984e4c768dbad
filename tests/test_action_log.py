"""Action logs: appended per chunk, saved whole, replayed into fresh pools (a mismatch raises)."""

import numpy as np
import pytest

from mtspark_jax import checkpoint as C
from mtspark_jax.rl import envs as E
from mtspark_jax.rl.action_log import ActionLog, fast_forward, restore_envs


def test_action_log_keeps_every_chunk_in_order():
    log = ActionLog(num_tasks=2, width=3)
    assert [a.shape for a in log.arrays()] == [(0, 3), (0, 3)]
    log.append(0, np.full((2, 3), 1, np.uint8))
    log.append(0, np.full((1, 3), 2, np.uint8))
    log.append(1, np.full((4, 3), 5, np.uint8))
    first, second = log.arrays()
    np.testing.assert_array_equal(first[:, 0], [1, 1, 2])
    assert second.shape == (4, 3) and first.dtype == np.uint8 and log.steps() == 7
    restored = ActionLog(2, 3, [first, second])
    restored.append(1, np.zeros((1, 3), np.uint8))
    assert [len(a) for a in restored.arrays()] == [3, 5]


def test_fast_forward_mismatch_raises():
    env = E.EnvPoolAtari("Breakout", E.AtariConfig(num_envs=2, seed=1))
    acts = np.zeros((5, 2), np.uint8)
    _, obs = fast_forward(env, acts)
    other = E.EnvPoolAtari("Breakout", E.AtariConfig(num_envs=2, seed=1))
    with pytest.raises(C.CheckpointError, match="did not reproduce"):
        restore_envs([other], [np.ones((6, 2), np.uint8)], np.asarray(obs)[None])
