"""Tasks that differ only in their action map: the wrapper, its parsing and the launcher path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax.rl import envs as E
from mtspark_jax.rl import minatar, runner
from mtspark_jax.rl.training import TrainConfig

SWAP = "0-3-2-1-4-5"  # MinAtar: left (1) and right (3) swapped


class RecordingEnv:
    """A TaskEnv whose observation is the action it was last given (to see what reaches the env)."""

    def __init__(self, num_envs=3, num_actions=6, split=False):
        self.spec = E.EnvSpec("rec", num_envs, (1, 1, 1), 1, num_actions)
        if split:
            self.send = lambda state, actions: actions.astype(jnp.int32)
            self.recv = lambda state: (state, self._out(state))

    def _out(self, actions):
        n = self.spec.num_envs
        z = jnp.zeros((n,), jnp.float32)
        return E.EnvStep(actions.astype(jnp.uint8).reshape(n, 1, 1, 1), z, z, z > 0, z > 0)

    def reset(self):
        return jnp.zeros((self.spec.num_envs,), jnp.int32), jnp.zeros((self.spec.num_envs, 1, 1, 1), jnp.uint8)

    def step(self, state, actions):
        return actions.astype(jnp.int32), self._out(actions)


@pytest.mark.parametrize("split", [False, True])
def test_mapped_action_reaches_the_env(split):
    perm = np.array([0, 3, 2, 1, 4, 5])
    env = E.PermutedActions(RecordingEnv(num_envs=6, split=split), perm, "rec@swap")
    assert env.spec.name == "rec@swap" and env.spec.num_actions == 6
    assert hasattr(env, "send") == split
    state, _ = env.reset()
    actions = jnp.arange(6, dtype=jnp.int32)
    if split:
        state = jax.jit(lambda s, a: E.send(env, s, a))(state, actions)
        _, out = jax.jit(lambda s, a: E.recv(env, s, a))(state, actions)
    else:
        _, out = jax.jit(env.step)(state, actions)
    np.testing.assert_array_equal(np.asarray(out.obs).reshape(-1), perm)


def test_permuted_minatar_equals_the_game_given_mapped_actions():
    perm = E.parse_action_perm(SWAP, 6)
    plain = minatar.GymnaxMinAtar("breakout", num_envs=4, seed=5)
    wrapped = E.PermutedActions(minatar.GymnaxMinAtar("breakout", num_envs=4, seed=5), perm, "breakout@swap")
    assert wrapped.reset_from_seed
    (sp, op), (sw, ow) = plain.reset(), wrapped.reset()
    np.testing.assert_array_equal(np.asarray(op), np.asarray(ow))
    rng = np.random.default_rng(0)
    moved = False
    for _ in range(40):
        a = rng.integers(0, 6, size=4)
        sp, outp = plain.step(sp, jnp.asarray(perm[a]))
        sw, outw = wrapped.step(sw, jnp.asarray(a))
        np.testing.assert_array_equal(np.asarray(outp.obs), np.asarray(outw.obs))
        np.testing.assert_array_equal(np.asarray(outp.reward), np.asarray(outw.reward))
    # And the unmapped actions would have moved the paddle differently.
    sp, _ = plain.reset()
    sq, _ = plain.reset()
    for _ in range(5):
        sp, outp = plain.step(sp, jnp.full((4,), 1))
        sq, outq = plain.step(sq, jnp.full((4,), 3))
        moved |= not np.array_equal(np.asarray(outp.obs), np.asarray(outq.obs))
    assert moved


@pytest.mark.parametrize("spec, expected", [("id", None), ("", None), ("0-1-2-3-4-5", None),
                                            (SWAP, [0, 3, 2, 1, 4, 5])])
def test_parse_action_perm(spec, expected):
    got = E.parse_action_perm(spec, 6)
    assert (got is None) if expected is None else (got.tolist() == expected)


@pytest.mark.parametrize("spec", ["0-1-2", "0-0-2-3-4-5", "a-b", "0-1-2-3-4-6"])
def test_bad_action_perm_names_the_value(spec):
    with pytest.raises(ValueError, match="permutation of 0..5"):
        E.parse_action_perm(spec, 6)


def test_launcher_builds_same_game_tasks_with_their_maps(tmp_path):
    c = TrainConfig(backend="minatar", games=("breakout", "breakout"), action_perms=("id", SWAP), num_envs=2,
                    convs="4:3:1", hidden=16)
    games, _ = runner.validate_run(c, str(tmp_path))
    assert games == ["breakout", f"breakout@{SWAP}"]
    envs = runner.make_task_envs(c, games, is_eval=False)
    assert [e.spec.name for e in envs] == games
    assert not isinstance(envs[0], E.PermutedActions)
    assert envs[1].perm.tolist() == [0, 3, 2, 1, 4, 5]
    same = dict(backend="minatar", games=("breakout", "breakout"), convs="4:3:1")
    with pytest.raises(ValueError, match="distinct"):
        runner.validate_run(TrainConfig(**same), str(tmp_path))
    with pytest.raises(ValueError, match="one entry per game"):
        runner.validate_run(TrainConfig(**same, action_perms=(SWAP,)), str(tmp_path))
