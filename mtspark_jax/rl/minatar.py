"""MinAtar games (gymnax, pure JAX) behind the :class:`mtspark_jax.rl.envs.TaskEnv` interface.

MinAtar (Young & Tian 2019) is the field's small-scale Atari: 10x10 grids with
one binary channel per object type. ``gymnax`` 1.0 implements Breakout,
Asterix, Freeway, SpaceInvaders and Seaquest in pure JAX, so acting runs inside the same
jitted ``lax.scan`` as the learner, like EnvPool's XLA interface for Atari.

Choices, so that one network serves all games:

* Observations are ``[N, 10, 10, 10]`` uint8: each game's 4-10 binary channels
  are zero-padded to 10 (Seaquest's count) and scaled to {0, 255}, so the
  networks' uint8 -> [0, 1] scaling recovers the binary grid. One frame per
  observation (``stack = 1``): MinAtar's trail channels carry motion.
* Actions: MinAtar's full set of 6 (no-op, left, up, right, down, fire) for
  every game, the analogue of Atari's 18-action full space
  (``use_minimal_action_set=False``); an action a game does not use acts as a
  no-op there.
* Auto-reset follows EnvPool's contract (see :mod:`mtspark_jax.rl.envs`): the
  step that ends an episode returns the terminal frame with the done flag; the
  next call ignores its action and returns the new episode's first frame with
  reward 0. ``truncated`` is the time limit (``max_steps_in_episode``),
  ``terminated`` a game over.
* gymnax does not implement MinAtar's sticky actions or difficulty ramping.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mtspark_jax.rl.envs import EnvSpec, EnvStep

Array = jax.Array

GAMES = {
    "breakout": "Breakout-MinAtar",
    "asterix": "Asterix-MinAtar",
    "freeway": "Freeway-MinAtar",
    "space_invaders": "SpaceInvaders-MinAtar",
    "seaquest": "Seaquest-MinAtar",
}
"""Our short names -> gymnax ids."""

NUM_CHANNELS = 10
"""Channels after padding (Seaquest has the most)."""
NUM_ACTIONS = 6
"""MinAtar's full action set, shared by all games."""

MINATAR_CONVS = ((16, 3, 1),)
"""Trunk for 10x10 inputs (MinAtar's reference DQN): conv 16 3x3/1 -> 8x8x16."""
MINATAR_HIDDEN = 128
"""Hidden width of the MinAtar reference DQN."""


def canonical_game(name: str) -> str:
    """``"Breakout"``, ``"breakout"``, ``"Breakout-MinAtar"`` -> ``"breakout"``; unknown names raise."""
    key = name.lower().replace("-minatar", "").replace("spaceinvaders", "space_invaders")
    if key not in GAMES:
        raise ValueError(f"unknown MinAtar game {name!r}; expected one of {sorted(GAMES)}")
    return key


class MinAtarState(NamedTuple):
    """Env state of N games: gymnax states, a key, and whether each must reset next."""

    game: Any
    key: Array
    needs_reset: Array


def _to_obs(frames: Array) -> Array:
    """gymnax float frames ``[N, 10, 10, C]`` -> uint8 ``[N, 10, 10, 10]`` in {0, 255}."""
    pad = NUM_CHANNELS - frames.shape[-1]
    frames = jnp.pad(frames, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return (frames > 0).astype(jnp.uint8) * jnp.uint8(255)


class GymnaxMinAtar:
    """N copies of one MinAtar game as a :class:`~mtspark_jax.rl.envs.TaskEnv`."""

    reset_from_seed = True
    """Every ``reset`` starts the same episodes (from the spec's seed)."""

    def __init__(self, game: str, num_envs: int = 8, seed: int = 0):
        import gymnax

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.game = canonical_game(game)
        self._env, self._params = gymnax.make(GAMES[self.game], use_minimal_action_set=False)
        self.spec = EnvSpec(
            name=self.game,
            num_envs=num_envs,
            frame_shape=(10, 10, NUM_CHANNELS),
            stack=1,
            num_actions=NUM_ACTIONS,
            seed=seed,
        )

    def reset(self) -> tuple[MinAtarState, Array]:
        """Resets every env from the spec's seed. Returns ``(state, obs [N, 10, 10, 10])``."""
        return self.reset_from(jax.random.PRNGKey(self.spec.seed))

    def reset_from(self, key: Array) -> tuple[MinAtarState, Array]:
        """Resets every env from ``key`` (may be traced: a sweep vmaps it over seeds).
        Returns ``(state, obs [N, 10, 10, 10])``."""
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, self.spec.num_envs)
        frames, game = jax.vmap(self._env.reset_env, in_axes=(0, None))(keys, self._params)
        needs_reset = jnp.zeros((self.spec.num_envs,), bool)
        return MinAtarState(game, key, needs_reset), _to_obs(frames)

    def step(self, state: MinAtarState, actions: Array) -> tuple[MinAtarState, EnvStep]:
        """Jittable step of all N envs; ``actions`` ``[N]`` int in ``[0, 6)``."""
        key, step_key, reset_key = jax.random.split(state.key, 3)
        n = self.spec.num_envs
        frames, game, reward, done, _ = jax.vmap(self._env.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, n), state.game, actions.astype(jnp.int32), self._params
        )
        reset_frames, reset_game = jax.vmap(self._env.reset_env, in_axes=(0, None))(
            jax.random.split(reset_key, n), self._params
        )
        r = state.needs_reset

        def pick(new, fresh):
            return jnp.where(r.reshape((n,) + (1,) * (new.ndim - 1)), fresh, new)

        game = jax.tree_util.tree_map(pick, game, reset_game)
        frames = pick(frames, reset_frames)
        reward = jnp.where(r, 0.0, reward).astype(jnp.float32)
        done = jnp.logical_and(done, ~r)
        truncated = jnp.logical_and(done, game.time >= self._params.max_steps_in_episode)
        terminated = jnp.logical_and(done, ~truncated)
        new_state = MinAtarState(game, key, done)
        return new_state, EnvStep(_to_obs(frames), reward, reward, terminated, truncated)


def make_minatar_envs(games: Sequence[str], num_envs: int = 8, seed: int = 0) -> list[GymnaxMinAtar]:
    """One :class:`GymnaxMinAtar` per game; task ``i`` is seeded ``seed + 1000 * i``."""
    if not games:
        raise ValueError("games must name at least one MinAtar game, got none")
    return [GymnaxMinAtar(g, num_envs, seed + 1000 * i) for i, g in enumerate(games)]
