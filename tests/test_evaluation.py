"""Evaluation: distinct-episode counts, random no-op starts, reproducibility (mtspark_jax.rl.evaluation)."""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import get_preset
from mtspark_jax.rl import minatar
from mtspark_jax.rl.evaluation import EvalResult, make_evaluator
from mtspark_jax.rl.training import validate_config


class _Out(NamedTuple):
    q: jax.Array


class AlwaysRight(nn.Module):
    """A parameter-free policy that always moves right (action 3, ``r``): ``q [N, 6]``.

    In breakout its paddle reaches the right wall before the ball comes down, so a
    greedy episode's length depends on how many no-ops delayed the paddle."""

    @nn.compact
    def __call__(self, obs, task_ids, train=False):
        return _Out(jnp.broadcast_to(jax.nn.one_hot(3, minatar.NUM_ACTIONS), (obs.shape[0], minatar.NUM_ACTIONS)))


def make_breakout_evaluator(noop_max, epsilon=0.0, num_envs=16):
    """``evaluate(key)`` of :class:`AlwaysRight` on 16 breakout games that reset from one seed."""
    env = minatar.GymnaxMinAtar("breakout", num_envs, seed=3)
    net = AlwaysRight()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((num_envs, 10, 10, 10), jnp.uint8),
                         jnp.zeros((num_envs,), jnp.int32))
    evaluate = make_evaluator(net, [env], max_steps=60, epsilon=epsilon, noop_max=noop_max)
    return lambda key: evaluate(variables, key)


def test_distinct_episodes_counts_return_length_pairs():
    returns = np.array([[3.0, 3.0, 9.0, 3.0, 9.0], [1.0, 2.0, 1.0, 2.0, 2.0]])
    lengths = np.array([[10, 10, 20, 12, 20], [5, 5, 5, 6, 5]])
    res = EvalResult(returns, lengths, np.ones_like(lengths, bool))
    # Task 0: (3, 10) twice, (9, 20) twice, (3, 12); task 1: (1, 5) twice, (2, 5) twice, (2, 6).
    np.testing.assert_array_equal(res.distinct_episodes(), [3, 3])


def test_noop_starts_give_more_distinct_episodes_and_reproduce():
    key = jax.random.PRNGKey(7)
    fixed = make_breakout_evaluator(0)(key)
    assert fixed.distinct_episodes()[0] <= 2  # the ball starts from one of two corners
    evaluate = make_breakout_evaluator(5)
    varied = evaluate(key)
    assert varied.distinct_episodes()[0] > fixed.distinct_episodes()[0]
    assert varied.complete.all()
    again = evaluate(key)  # the same key: the same no-op counts, the same episodes
    np.testing.assert_array_equal(again.returns, varied.returns)
    np.testing.assert_array_equal(again.lengths, varied.lengths)
    other = evaluate(jax.random.PRNGKey(8))
    assert not np.array_equal(other.lengths, varied.lengths)


def test_noop_max_zero_uses_the_key_as_before():
    # With noop_max=0 the key is not split for the no-ops: an epsilon-greedy evaluation (whose actions
    # depend on the key) equals the one of an evaluator built without the option.
    env = minatar.GymnaxMinAtar("breakout", 8, seed=3)
    net = AlwaysRight()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((8, 10, 10, 10), jnp.uint8), jnp.zeros((8,), jnp.int32))
    key = jax.random.PRNGKey(1)
    plain = make_evaluator(net, [env], max_steps=60, epsilon=0.5)(variables, key)
    zero = make_evaluator(net, [env], max_steps=60, epsilon=0.5, noop_max=0)(variables, key)
    np.testing.assert_array_equal(plain.returns, zero.returns)
    np.testing.assert_array_equal(plain.lengths, zero.lengths)


def test_bad_noop_max_raises():
    with pytest.raises(ValueError, match="noop_max"):
        make_evaluator(AlwaysRight(), [minatar.GymnaxMinAtar("breakout", 2)], max_steps=10, noop_max=-1)
    with pytest.raises(ValueError, match="eval_noop_max"):
        validate_config(dataclasses.replace(get_preset("minatar"), eval_noop_max=-1))


@pytest.mark.parametrize("corner", [0, 1])
def test_minatar_preset_noops_leave_every_breakout_start_catchable(corner):
    """After any no-op count of the preset's range, a policy that moves the paddle toward the ball
    still returns it: the no-ops never decide an episode on their own."""
    import gymnax

    noop_max = get_preset("minatar").eval_noop_max
    assert noop_max > 0
    env, params = gymnax.make("Breakout-MinAtar", use_minimal_action_set=False)
    key = jax.random.PRNGKey(0)
    step = jax.jit(lambda state, action: env.step_env(key, state, action, params))
    _, start = env.reset_env(key, params)
    x, direction = [0, 9][corner], [2, 3][corner]
    start = start.replace(ball_x=jnp.array(x), last_x=jnp.array(x), ball_dir=jnp.array(direction))
    for k in range(noop_max + 1):
        state, bounced = start, False
        for t in range(10):
            ball, paddle = int(state.ball_x), int(state.pos)
            action = 0 if t < k else (3 if ball > paddle else 1 if ball < paddle else 0)  # n, l, r
            _, state, _, done, _ = step(state, action)
            assert not done, f"corner {corner}: the ball is lost after {k} no-ops"
            bounced |= int(state.ball_dir) in (0, 1)  # moving up again
            if bounced:
                break
        assert bounced, f"corner {corner}, {k} no-ops: the ball never came back up"
