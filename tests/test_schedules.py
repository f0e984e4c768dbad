"""Schedules switch exactly when they should."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax.rl import schedules as S


def run(cfg, episodes, steps=None, params=None, num_tasks=3):
    state = S.init_schedule(cfg, params[0] if params else None)
    actives = []
    for i, e in enumerate(episodes):
        p = params[i + 1] if params else None
        state = S.update_schedule(cfg, state, num_tasks, jnp.int32(e), jnp.int32(steps[i] if steps else 4), p)
        actives.append(int(state.active))
    return actives, state


def test_round_robin_episodes_switches_at_interval():
    cfg = S.ScheduleConfig(kind="round_robin", interval=3)
    # episodes ended per iteration on the active task
    actives, state = run(cfg, [0, 1, 1, 0, 1, 2, 0, 3, 0, 0, 1, 1, 1])
    assert actives == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0]
    assert int(state.switches) == 3


def test_round_robin_steps():
    cfg = S.ScheduleConfig(kind="round_robin", interval=8, interval_unit="steps")
    actives, _ = run(cfg, [0] * 6, steps=[4] * 6, num_tasks=2)
    assert actives == [0, 1, 1, 0, 0, 1]


def test_simultaneous_all_act():
    cfg = S.ScheduleConfig(kind="simultaneous")
    state = S.init_schedule(cfg)
    assert S.acting_mask(cfg, state, 3).tolist() == [True, True, True]
    state = S.update_schedule(cfg, state, 3, jnp.int32(100), jnp.int32(4))
    assert int(state.switches) == 0
    rr = S.init_schedule(S.ScheduleConfig())
    assert S.acting_mask(S.ScheduleConfig(), rr, 3).tolist() == [True, False, False]


def test_adaptive_switches_after_min_episodes_and_small_changes():
    cfg = S.ScheduleConfig(kind="adaptive", min_episodes=4, window=2, threshold=0.1)
    # params is a single vector whose norm stays 1 ; relative change = |delta|.
    def p(x):
        return {"w": jnp.array([np.sqrt(1 - x**2), x], jnp.float32)}
    # angles[0] is the initial ref; iteration i sees params[i + 1].
    angles = [0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.05, 0.05, 0.05]
    params = [p(a) for a in angles]
    eps = [0, 1, 1, 1, 0, 1, 0, 1, 1]
    actives, state = run(cfg, eps, params=params)
    # changes recorded at episode ends: it1 0, it2 0.52, it3 0, it5 0.52, it7 0.05, it8 0
    # window means: ..., it7 mean(0.05, 0.52) > 0.1, it8 mean(0.05, 0) < 0.1 with 6 >= 4 episodes.
    assert actives == [0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert int(state.episodes) == 0 and int(state.num_changes) == 0 and int(state.switches) == 1


def test_adaptive_waits_for_min_episodes():
    cfg = S.ScheduleConfig(kind="adaptive", min_episodes=5, window=1, threshold=0.1)
    params = [{"w": jnp.ones(3)}] * 8
    actives, _ = run(cfg, [1] * 7, params=params)
    assert actives == [0, 0, 0, 0, 1, 1, 1]


def test_bad_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'rr'"):
        S.init_schedule(S.ScheduleConfig(kind="rr"))
    with pytest.raises(ValueError, match="interval"):
        S.init_schedule(S.ScheduleConfig(interval=0))
