"""EnvPool Atari behind the TaskEnv interface: shapes, reset stacks, determinism, replay parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax.rl import envs, replay


def _run(env, actions):
    """Steps a fresh env through actions [T, N]; returns obs [T+1, ...] and step outputs."""
    handle, obs = env.reset()

    def body(h, a):
        h, out = env.step(h, a)
        return h, out

    handle, outs = jax.jit(lambda h, a: jax.lax.scan(body, h, a))(handle, jnp.asarray(actions))
    return obs, outs


@pytest.fixture(scope="module")
def breakout_stream():
    cfg = envs.AtariConfig(num_envs=2, seed=5)
    actions = np.random.default_rng(0).integers(0, 18, (420, 2))
    env = envs.EnvPoolAtari("Breakout", cfg)
    obs0, outs = _run(env, actions)
    env.close()
    return cfg, actions, obs0, outs


def test_spec_and_shapes(breakout_stream):
    cfg, actions, obs0, outs = breakout_stream
    assert obs0.shape == (2, 84, 84, 4) and obs0.dtype == jnp.uint8
    assert outs.obs.shape == (420, 2, 84, 84, 4)
    assert outs.reward.dtype == jnp.float32 and outs.terminated.dtype == jnp.bool_
    env = envs.EnvPoolAtari("pong-v5", envs.AtariConfig(num_envs=1))
    assert env.spec.num_actions == 18 and env.spec.name == "Pong"
    assert env.spec.obs_shape == (1, 84, 84, 4)
    minimal = envs.EnvPoolAtari("Pong", envs.AtariConfig(num_envs=1, full_action_space=False))
    assert minimal.spec.num_actions == 6  # NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE


def test_reset_stack_repeats_first_frame_and_autoreset(breakout_stream):
    _, _, obs0, outs = breakout_stream
    for i in range(2):
        for k in range(4):
            np.testing.assert_array_equal(obs0[i, ..., k], obs0[i, ..., 3])
    done = np.asarray(outs.terminated | outs.truncated)
    assert done.any(), "expected at least one Breakout episode to end in 420 random steps"
    obs = np.asarray(outs.obs)
    for t, i in zip(*np.nonzero(done[:-1])):
        # The call after a done returns the next episode's first obs (repeated frame), reward 0.
        assert float(outs.raw_reward[t + 1, i]) == 0.0
        for k in range(4):
            np.testing.assert_array_equal(obs[t + 1, i, ..., k], obs[t + 1, i, ..., 3])
        assert not done[t + 1, i]


def test_deterministic_given_seed_and_actions(breakout_stream):
    cfg, actions, obs0, outs = breakout_stream
    env = envs.EnvPoolAtari("Breakout", cfg)
    obs0b, outsb = _run(env, actions)
    np.testing.assert_array_equal(np.asarray(obs0), np.asarray(obs0b))
    np.testing.assert_array_equal(np.asarray(outs.obs), np.asarray(outsb.obs))
    np.testing.assert_array_equal(np.asarray(outs.raw_reward), np.asarray(outsb.raw_reward))


def test_send_then_recv_with_work_between_equals_step(breakout_stream):
    """The loop's split step (work between send and recv in one jitted scan) gives step's stream."""
    cfg, actions, obs0, outs = breakout_stream
    env = envs.EnvPoolAtari("Breakout", cfg)
    handle, obs0b = env.reset()

    def body(c, a):
        h, w = c
        h = envs.send(env, h, a)
        w = jnp.tanh(w @ w)  # work while the pool's threads step
        h, w = jax.lax.optimization_barrier((h, w))
        h, out = envs.recv(env, h, a)
        return (h, w), out

    _, split = jax.jit(lambda h, a: jax.lax.scan(body, (h, jnp.eye(64)), a))(handle, jnp.asarray(actions[:150]))
    env.close()
    np.testing.assert_array_equal(np.asarray(obs0), np.asarray(obs0b))
    for f in ("obs", "raw_reward", "terminated", "truncated"):
        np.testing.assert_array_equal(np.asarray(getattr(outs, f))[:150], np.asarray(getattr(split, f)))


def test_send_recv_fall_back_to_step_for_backends_without_them():
    class Counter:
        def step(self, state, actions):
            return state + actions.sum(), actions * 2

    env = Counter()
    state = envs.send(env, jnp.int32(1), jnp.arange(3))
    assert int(state) == 1  # nothing happens at send
    state, out = envs.recv(env, state, jnp.arange(3))
    assert int(state) == 4 and out.tolist() == [0, 2, 4]


def test_replay_rebuilds_exactly_the_stacks_the_agent_saw(breakout_stream):
    _, actions, obs0, outs = breakout_stream
    obs_all = np.concatenate([np.asarray(obs0)[None], np.asarray(outs.obs)], 0)
    state = replay.init_replay(1, 300, 2, (84, 84, 1), 4)
    flags = replay.initial_flags(2)
    add = jax.jit(replay.add)
    terminal = []
    for t in range(len(actions)):
        terminal.append(np.asarray(flags.terminal))
        state = add(state, 0, jnp.asarray(obs_all[t][..., -1:]), jnp.asarray(actions[t]), outs.reward[t],
                    outs.terminated[t], outs.truncated[t], flags.first, ~flags.terminal)
        flags = replay.next_flags(flags, outs.terminated[t], outs.truncated[t])
    count = len(actions)
    ts = np.repeat(np.arange(count - 300, count - 1), 2)
    es = np.tile(np.arange(2), len(ts) // 2)
    batch = jax.jit(replay.gather, static_argnums=1)(state, 0, jnp.asarray(ts), jnp.asarray(es))
    mask = np.asarray(batch.mask)
    bo, bn = np.asarray(batch.obs), np.asarray(batch.next_obs)
    for j, (t, e) in enumerate(zip(ts, es)):
        assert mask[j] == (0.0 if terminal[t][e] or t < count - 300 + 3 else 1.0)
        if mask[j]:
            np.testing.assert_array_equal(bo[j], obs_all[t, e])
            np.testing.assert_array_equal(bn[j], obs_all[t + 1, e])
            # The transition's action, reward and done flag are the ones of that env step.
            assert int(batch.action[j]) == int(actions[t, e])
            assert float(batch.reward[j]) == float(outs.reward[t, e])
            assert float(batch.terminated[j]) == float(outs.terminated[t, e])
    # The stream crosses episode ends and has rewards, so the checks above cover them.
    assert np.asarray(outs.terminated | outs.truncated)[count - 300:].any()
    assert (np.asarray(outs.reward)[count - 300:] != 0).any()


def test_unknown_game_and_bad_config():
    with pytest.raises(ValueError, match="unknown Atari game 'Pongg'"):
        envs.canonical_game("Pongg")
    with pytest.raises(ValueError, match="num_envs"):
        envs.EnvPoolAtari("Pong", envs.AtariConfig(num_envs=0))
