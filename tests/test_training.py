"""The jitted loop: a few hundred steps on each of the three games, schedules inside the scan."""

import jax
import numpy as np
import pytest

from mtspark_jax.rl import envs as E
from mtspark_jax.rl import replay as R
from mtspark_jax.rl import training as T


@pytest.fixture(scope="module")
def three_game_run():
    cfg = T.TrainConfig(games=("Pong", "Breakout", "Enduro"), num_envs=2, hidden=16, convs="4:8:4", time_steps=2,
                        batch_size=8, warmup_steps=40, buffer_size=600, target_update=100, chunk_iters=200,
                        schedule="round_robin", switch_interval=200, switch_unit="steps")
    envs = E.make_atari_envs(cfg.games, E.AtariConfig(num_envs=2, seed=3))
    trainer = T.jitted(T.make_train(cfg, envs))
    env_states, obs = T.reset_envs(envs)
    state = trainer.init(jax.random.PRNGKey(0), env_states, obs)
    p0 = jax.tree.map(np.asarray, state.learner.variables)
    logs = []
    for _ in range(2):
        state, log = trainer.run_chunk(state)
        logs.append(jax.tree.map(np.asarray, log))
    log = jax.tree.map(lambda *x: np.concatenate(x), *logs)
    yield cfg, trainer, state, log, p0
    for e in envs:
        e.close()


def test_every_game_played_a_few_hundred_steps(three_game_run):
    cfg, trainer, state, log, _ = three_game_run
    # 400 iterations x 2 envs = 800 agent steps; switch every 200 -> 400, 200, 200.
    np.testing.assert_array_equal(np.asarray(state.task_steps), [400, 200, 200])
    assert int(state.global_step) == 800
    np.testing.assert_array_equal(np.asarray(state.replay.count), [200, 100, 100])
    assert int(state.schedule.switches) == 4
    # Active task sequence: 100 iterations each, round robin.
    expect = np.repeat([0, 1, 2, 0], 100)
    np.testing.assert_array_equal(log.active, expect)
    np.testing.assert_array_equal(log.acted.argmax(1), expect)
    assert (log.acted.sum(1) == 1).all()


def test_learning_happened_after_warmup(three_game_run):
    cfg, trainer, state, log, p0 = three_game_run
    # 2 envs, train_every 4 -> one update every other iteration once the task is warmed up (40 steps).
    assert int(state.learner.updates) > 150
    losses = log.td_loss[np.isfinite(log.td_loss)]
    assert len(losses) > 150 and np.isfinite(losses).all()
    assert np.isnan(log.td_loss[:19]).all()  # warm-up: 40 steps are reached by iteration 19
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), p0, state.learner.variables)
    assert any(jax.tree.leaves(changed))
    eps = log.epsilon
    assert eps[0] == pytest.approx(1.0) and eps[-1] < eps[0]


def test_target_syncs_to_the_online_net(three_game_run):
    cfg, trainer, state, log, p0 = three_game_run
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, np.asarray(y)), a, b)))
    # The target left its initial values: it was synced after learning had changed the online net.
    assert not same(p0, state.learner.target_variables)
    # The last iteration took global_step to 800, a multiple of target_update (100), after its
    # updates: the target is the online net exactly.
    assert int(state.global_step) % cfg.target_update == 0
    assert same(state.learner.variables, state.learner.target_variables)


def test_replay_holds_real_stacks(three_game_run):
    cfg, trainer, state, log, _ = three_game_run
    batch = jax.jit(R.sample, static_argnums=(1, 3))(state.replay, 1, jax.random.PRNGKey(1), 16)
    assert float(batch.mask.min()) == 1.0
    assert batch.obs.shape == (16, 84, 84, 4)
    assert int(np.asarray(batch.obs).max()) > 0


def test_simultaneous_and_mixed_and_dqn(tiny_config):
    cfg = tiny_config(games=("Breakout", "Pong"), schedule="simultaneous", update_mode="mixed", agent="dqn",
                      chunk_iters=60, learn_from="all")
    envs = E.make_atari_envs(cfg.games, E.AtariConfig(num_envs=2))
    trainer = T.jitted(T.make_train(cfg, envs))
    st, obs = T.reset_envs(envs)
    state = trainer.init(jax.random.PRNGKey(1), st, obs)
    state, log = trainer.run_chunk(state)
    np.testing.assert_array_equal(np.asarray(state.task_steps), [120, 120])
    assert np.asarray(log.acted).all()
    assert int(state.global_step) == 240
    assert int(state.learner.updates) == 21  # odd iterations 19..59 (40-step warm-up reached at 19)
    for e in envs:
        e.close()


def test_optimizer_per_task_keeps_one_adam_state_per_learning_task(tiny_config):
    """learn_from='all': every update steps each warmed-up task with that task's own Adam state
    (Pong acts second, so it warms up later and has taken fewer steps)."""
    import optax

    cfg = tiny_config(games=("Breakout", "Pong"), chunk_iters=60, learn_from="all", optimizer_per_task=True,
                      switch_interval=60, switch_unit="steps")
    envs = E.make_atari_envs(cfg.games, E.AtariConfig(num_envs=2))
    trainer = T.jitted(T.make_train(cfg, envs))
    st, obs = T.reset_envs(envs)
    state, _ = trainer.run_chunk(trainer.init(jax.random.PRNGKey(1), st, obs))
    adam = [s for s in jax.tree.leaves(state.learner.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]
    counts = np.asarray(adam.count)
    assert counts.shape == (2,) and counts[0] > counts[1] > 0
    assert int(state.learner.updates) == counts.sum()
    first = jax.tree.map(lambda x: np.asarray(x[0]), adam.mu)
    second = jax.tree.map(lambda x: np.asarray(x[1]), adam.mu)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    for e in envs:
        e.close()
    with pytest.raises(ValueError, match="optimizer_per_task"):
        T.validate_config(tiny_config(update_mode="mixed", optimizer_per_task=True))


def test_bad_configs_raise_before_work(tiny_config):
    with pytest.raises(ValueError, match="unknown agent"):
        T.validate_config(tiny_config(agent="ppo"))
    with pytest.raises(ValueError, match="convs"):
        T.validate_config(tiny_config(convs="32x8"))
    with pytest.raises(ValueError, match="buffer_size"):
        T.validate_config(tiny_config(buffer_size=4))
    with pytest.raises(ValueError, match="unknown schedule"):
        T.validate_config(tiny_config(schedule="random"))
    with pytest.raises(ValueError, match="tau"):
        T.validate_config(tiny_config(tau=0.5))
    with pytest.raises(ValueError, match="kwta must be in"):
        T.validate_config(tiny_config(kwta=17))  # hidden 16
    with pytest.raises(ValueError, match="dendritic agents"):
        T.validate_config(tiny_config(agent="dqn", kwta=4))
    with pytest.raises(ValueError, match="for dsqn and dqn"):
        T.validate_config(tiny_config(context="task_input"))
    with pytest.raises(ValueError, match="one entry per game"):
        T.validate_config(tiny_config(action_perms=("id",)))


def test_kwta_and_task_input_reach_the_network(tiny_config):
    spec = E.EnvSpec("x", 2, (84, 84, 1), 4, 18)
    assert T.build_network(tiny_config(kwta=4), spec, 3).kwta == 4
    assert T.build_network(tiny_config(), spec, 3).kwta is None
    assert T.build_network(tiny_config(agent="dqn", context="task_input"), spec, 3).task_input
    assert not T.build_network(tiny_config(agent="dqn"), spec, 3).task_input


def test_adaptive_schedule_switches_inside_the_loop(tiny_config):
    # Threshold 10: every relative change qualifies, so the task switches at the
    # first iteration in which an episode ends (min_episodes=1, window=1).
    cfg = tiny_config(games=("Breakout", "Breakout"), schedule="adaptive", min_episodes=1, switch_window=1,
                      switch_threshold=10.0, chunk_iters=160, warmup_steps=1000)
    envs = E.make_atari_envs(cfg.games, E.AtariConfig(num_envs=2, seed=2))
    trainer = T.jitted(T.make_train(cfg, envs))
    st, obs = T.reset_envs(envs)
    state = trainer.init(jax.random.PRNGKey(1), st, obs)
    state, log = trainer.run_chunk(state)
    log = jax.tree.map(np.asarray, log)
    ends = np.nonzero(log.ended[np.arange(len(log.active)), log.active].any(-1))[0]
    assert len(ends) >= 1, "expected a Breakout episode to end within 160 random steps per env"
    first = ends[0]
    assert (log.active[: first + 1] == 0).all() and log.active[first + 1] == 1
    assert log.switches[first] == 1
    for e in envs:
        e.close()


def test_jit_once_initialises_the_state_the_default_compilation_does():
    """Initialisation compiled at XLA:CPU optimisation level 1 (mtspark_jax.init_jit) gives the train
    state of XLA's default compilation, bit for bit: parameters, Adam state and replay."""
    from mtspark_jax.init_jit import jit_once

    cfg = T.TrainConfig(games=("Pong",), num_envs=2, hidden=16, convs="4:8:4", time_steps=2, batch_size=8,
                        buffer_size=64)
    envs = E.make_atari_envs(cfg.games, E.AtariConfig(num_envs=2, seed=3))
    try:
        init = T.make_train(cfg, envs).init
        args = (jax.random.PRNGKey(5), (None,), np.zeros((1,) + envs[0].spec.obs_shape, np.uint8))
        once, default = jit_once(init)(*args), jax.jit(init)(*args)
    finally:
        for e in envs:
            e.close()
    leaves, reference = (jax.tree.leaves((s.learner, s.replay)) for s in (once, default))
    assert len(leaves) == len(reference) > 10
    for a, b in zip(leaves, reference):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
