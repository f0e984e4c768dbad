"""Environments: the task-env interface the training loop uses, and EnvPool Atari.

The loop never talks to EnvPool directly; it sees one :class:`TaskEnv` per task:

* ``env.spec`` (:class:`EnvSpec`): ``name``, ``num_envs`` N, ``frame_shape``
  ``(H, W, C)`` of ONE frame, ``stack`` (frames per observation),
  ``num_actions`` (the shared action space), ``seed``.
* ``env.reset() -> (env_state, obs)``: host side, called ONCE per env object
  (a fresh object gives a reproducible stream; EnvPool's pool RNG advances on
  every reset). A backend whose every reset restarts from its seed says so
  with ``reset_from_seed = True`` (MinAtar); evaluation then reuses its envs
  instead of building fresh ones (:mod:`mtspark_jax.rl.evaluation`). ``obs`` is ``[N, H, W, stack * C]`` uint8, channels last, the
  newest frame in the last ``C`` channels.
* ``env.step(env_state, actions[N] int32) -> (env_state, EnvStep)``: jittable
  (it runs inside ``lax.scan`` / ``lax.switch``), no Python side effects.
  :class:`EnvStep` holds ``obs [N, H, W, stack*C] uint8``, ``reward [N] f32``
  (the training reward, e.g. clipped), ``raw_reward [N] f32`` (the game
  score), ``terminated [N] bool``, ``truncated [N] bool``.
* optional ``env.send(env_state, actions) -> env_state`` and
  ``env.recv(env_state) -> (env_state, EnvStep)``: the step in two halves, so
  that the loop can compute while the envs step (EnvPool steps its envs on
  its own threads between the two). :func:`send` and :func:`recv` fall back
  to ``step`` (run at ``recv``) for backends without them.

Auto-reset contract (EnvPool's, and what :mod:`mtspark_jax.rl.replay` assumes):
the step that ends an episode returns the *terminal* observation with
``terminated | truncated``; the NEXT call ignores its action and returns the
first observation of the next episode with reward 0 and no done flag. A
pure-JAX backend (gymnax MinAtar) must emulate this (keep a
``needs_reset`` flag in its state; ``gymnax``'s ``step_env`` does not reset).
After a reset the stack holds the first frame repeated ``stack`` times
(EnvPool does this; checked in tests/test_envs.py), so replay rebuilds stacks
by repeating an episode's first frame. All tasks trained together must share
``num_envs``, ``frame_shape``, ``stack`` and ``num_actions`` (pad channels and
map actions in the backend).

EnvPool facts (docs/design.md section 7): ``full_action_space=True`` gives 18 actions;
obs come channels first ``[N, 4, 84, 84]`` and are transposed here;
``info["reward"]`` is the raw reward; ``jax.vmap`` over the XLA step raises, so
there is one pool per task. Given its seed and the actions, a pool is
deterministic (tests/test_envs.py), which :mod:`mtspark_jax.rl.action_log` uses to
rebuild emulator state on resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class EnvSpec(NamedTuple):
    """Static description of one task's vectorised environment."""

    name: str
    num_envs: int
    frame_shape: tuple[int, int, int]
    stack: int
    num_actions: int
    seed: int = 0

    @property
    def obs_shape(self) -> tuple[int, int, int, int]:
        """``[N, H, W, stack * C]``."""
        h, w, c = self.frame_shape
        return (self.num_envs, h, w, self.stack * c)


class EnvStep(NamedTuple):
    """What ``TaskEnv.step`` returns besides the new env state (all ``[N]`` but obs)."""

    obs: Array
    reward: Array
    raw_reward: Array
    terminated: Array
    truncated: Array


class TaskEnv(Protocol):
    """One task's vectorised environment (see module docstring)."""

    spec: EnvSpec

    def reset(self) -> tuple[Any, Array]: ...

    def step(self, state: Any, actions: Array) -> tuple[Any, EnvStep]: ...


def send(env: TaskEnv, state: Any, actions: Array) -> Any:
    """Starts ``env`` stepping on ``actions [N]`` (jittable); the step completes at :func:`recv`.

    Backends without a split step return ``state`` unchanged and step at :func:`recv`.
    """
    return env.send(state, actions) if hasattr(env, "send") else state


def recv(env: TaskEnv, state: Any, actions: Array) -> tuple[Any, EnvStep]:
    """Completes the step started by :func:`send` with the same ``actions``. Returns ``(state, EnvStep)``."""
    return env.recv(state) if hasattr(env, "send") else env.step(state, actions)


@dataclasses.dataclass(frozen=True)
class AtariConfig:
    """EnvPool Atari settings (docs/design.md section 4).

    Attributes:
      num_envs: environments per task (pool size).
      seed: pool seed (each task adds its index, so games differ).
      noop_max: random no-ops at reset (up to 30).
      frame_skip: repeated action with max-pool over the last two frames (4).
      stack: frames per observation (4).
      reward_clip: train on sign(reward). Default False: the MTSpark authors
        did not clip (docs/design.md section 4); DQN/DSQN practice clips (set True).
      episodic_life: life loss ends the training episode. Default False (the
        authors); the returned ``raw_reward`` is unaffected either way.
      max_episode_steps: agent steps before truncation (27000 = 108k frames).
      repeat_action_probability: sticky actions (0: v4-style determinism).
      num_threads: EnvPool worker threads (0: one per env).
      full_action_space: the 18 Atari actions (True: one action space shared by
        every game, which a multi-task network needs) or the game's minimal set
        (Pong 6, Breakout 4, Enduro 9).
    """

    num_envs: int = 4
    seed: int = 0
    noop_max: int = 30
    frame_skip: int = 4
    stack: int = 4
    reward_clip: bool = False
    episodic_life: bool = False
    max_episode_steps: int = 27000
    repeat_action_probability: float = 0.0
    num_threads: int = 0
    full_action_space: bool = True


def atari_games() -> list[str]:
    """Names of the Atari games EnvPool knows (``Pong``, ``Breakout``, ...)."""
    from envpool.registration import registry

    names = []
    for task_id, entry in registry.specs.items():
        if task_id.endswith("-v5") and entry[0] == "envpool.atari":
            names.append(task_id[: -len("-v5")])
    return sorted(names)


def canonical_game(name: str) -> str:
    """``"pong"``, ``"Pong"`` or ``"Pong-v5"`` -> ``"Pong"``; unknown names raise ValueError."""
    base = name[: -len("-v5")] if name.endswith("-v5") else name
    games = atari_games()
    lower = {g.lower(): g for g in games}
    if base.lower() not in lower:
        raise ValueError(f"unknown Atari game {name!r}; expected an EnvPool game such as Pong, Breakout, Enduro")
    return lower[base.lower()]


def validate_atari_config(config: AtariConfig) -> None:
    """Raises ValueError naming the first impossible setting."""
    checks = [
        (config.num_envs >= 1, f"num_envs must be >= 1, got {config.num_envs}"),
        (0 <= config.noop_max, f"noop_max must be >= 0, got {config.noop_max}"),
        (config.frame_skip >= 1, f"frame_skip must be >= 1, got {config.frame_skip}"),
        (config.stack >= 1, f"stack must be >= 1, got {config.stack}"),
        (config.max_episode_steps >= 1, f"max_episode_steps must be >= 1, got {config.max_episode_steps}"),
        (0.0 <= config.repeat_action_probability <= 1.0,
         f"repeat_action_probability must be in [0, 1], got {config.repeat_action_probability}"),
        (config.num_threads >= 0, f"num_threads must be >= 0, got {config.num_threads}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


class EnvPoolAtari:
    """One EnvPool Atari pool behind the :class:`TaskEnv` interface.

    ``env_state`` is EnvPool's XLA handle; stepping goes through
    ``pool.xla()`` so it runs inside ``jit``. The raw 84x84 grey frames are
    channels first in EnvPool and channels last here.

    With ``render=True`` the pool also keeps the screens in colour and the env
    has ``render_rgb()`` (host side, between steps): what a person would see,
    for videos. It does not change the episodes.
    """

    def __init__(self, game: str, config: AtariConfig = AtariConfig(), seed: int | None = None,
                 render: bool = False):
        import envpool

        validate_atari_config(config)
        game = canonical_game(game)
        seed = config.seed if seed is None else seed
        self.game = game
        self.config = config
        self._pool = envpool.make(
            f"{game}-v5",
            env_type="gymnasium",
            num_envs=config.num_envs,
            batch_size=config.num_envs,
            num_threads=config.num_threads,
            seed=seed,
            full_action_space=config.full_action_space,
            noop_max=config.noop_max,
            frame_skip=config.frame_skip,
            stack_num=config.stack,
            reward_clip=False,  # clipping is done here so that raw rewards stay exact
            episodic_life=config.episodic_life,
            max_episode_steps=config.max_episode_steps,
            repeat_action_probability=config.repeat_action_probability,
            img_height=84,
            img_width=84,
            **({"render_mode": "rgb_array"} if render else {}),
        )
        self._handle, self._xla_recv, self._xla_send, _step = self._pool.xla()
        self.spec = EnvSpec(
            name=game,
            num_envs=config.num_envs,
            frame_shape=(84, 84, 1),
            stack=config.stack,
            num_actions=int(self._pool.action_space.n),
            seed=seed,
        )
        self._was_reset = False
        if render:  # only a rendering pool has the method (mtspark_jax.rl.video looks for it)
            self.render_rgb = self._render_rgb

    @property
    def pool(self):
        """The underlying EnvPool pool (NumPy API, channels first), e.g. for a host-side loop."""
        return self._pool

    def reset(self) -> tuple[Array, Array]:
        """Resets every env (host side). Returns ``(handle, obs [N, 84, 84, stack] uint8)``."""
        obs, _ = self._pool.reset()
        self._was_reset = True
        return self._handle, jnp.asarray(np.transpose(obs, (0, 2, 3, 1)))

    def send(self, state: Array, actions: Array) -> Array:
        """Jittable: hands ``actions [N]`` to the pool's threads and returns at once (new handle)."""
        return self._xla_send(state, actions.astype(jnp.int32))

    def recv(self, state: Array) -> tuple[Array, EnvStep]:
        """Jittable: waits for the step started by :meth:`send`. Returns ``(handle, EnvStep)``."""
        state, (obs, _reward, terminated, truncated, info) = self._xla_recv(state)
        raw = info["reward"].astype(jnp.float32)
        reward = jnp.sign(raw) if self.config.reward_clip else raw
        obs = jnp.transpose(obs, (0, 2, 3, 1))
        return state, EnvStep(obs, reward, raw, terminated.astype(bool), truncated.astype(bool))

    def step(self, state: Array, actions: Array) -> tuple[Array, EnvStep]:
        """Jittable step. ``actions`` ``[N]`` int -> ``(handle, EnvStep)``."""
        return self.recv(self.send(state, actions))

    def _render_rgb(self) -> np.ndarray:
        """The current screens of every env, ``[N, 210, 160, 3]`` uint8 RGB (host side)."""
        return self._pool.render(env_ids=np.arange(self.spec.num_envs))

    def close(self) -> None:
        """Releases the pool's threads."""
        self._pool.close()


def make_atari_envs(games: Sequence[str], config: AtariConfig = AtariConfig(), seed_offset: int = 0,
                    render: bool = False) -> list[EnvPoolAtari]:
    """One :class:`EnvPoolAtari` per game; task ``i`` is seeded ``config.seed + seed_offset + 1000 * i``.

    ``render``: pools that also give colour screens (:class:`EnvPoolAtari`).
    """
    if not games:
        raise ValueError("games must name at least one Atari game, got none")
    names = [canonical_game(g) for g in games]
    return [EnvPoolAtari(g, config, seed=config.seed + seed_offset + 1000 * i, render=render)
            for i, g in enumerate(names)]


IDENTITY_PERM = "id"
"""The action map that leaves actions as they are."""


def parse_action_perm(spec: str, num_actions: int) -> np.ndarray | None:
    """``"id"`` (or ``""``) -> None; ``"0-3-2-1-4-5"`` -> ``[num_actions]`` int32 map, agent action -> env action.

    Raises ValueError unless the entries are a permutation of ``range(num_actions)``.
    """
    if spec in ("", IDENTITY_PERM):
        return None
    try:
        perm = np.asarray([int(v) for v in spec.split("-")], np.int32)
    except ValueError:
        perm = np.zeros((0,), np.int32)
    if sorted(perm.tolist()) != list(range(num_actions)):
        raise ValueError(f"action map {spec!r} must be 'id' or a '-'-separated permutation of 0..{num_actions - 1}, "
                         f"e.g. {'-'.join(str(a) for a in reversed(range(num_actions)))}")
    return None if np.array_equal(perm, np.arange(num_actions)) else perm


def task_name(game: str, spec: str, num_actions: int) -> str:
    """``game`` for the identity map, ``<game>@<spec>`` for any other (ValueError on a bad map)."""
    return game if parse_action_perm(spec, num_actions) is None else f"{game}@{spec}"


def base_game(task: str) -> str:
    """The game of a task name made by :func:`task_name`."""
    return task.split("@")[0]


class PermutedActions:
    """A :class:`TaskEnv` whose agent action ``a`` reaches the wrapped env as ``perm[a]``.

    The observations, rewards and done flags are the wrapped env's: a task that
    differs from another only in its action map looks the same on screen, so
    only a task signal (the context) tells the two apart. ``spec.name`` is
    ``name``; everything else in the spec is the wrapped env's.
    """

    def __init__(self, env: TaskEnv, perm: np.ndarray, name: str):
        perm = np.asarray(perm, np.int32)
        if sorted(perm.tolist()) != list(range(env.spec.num_actions)):
            raise ValueError(f"perm must be a permutation of 0..{env.spec.num_actions - 1}, got {perm.tolist()}")
        self.env = env
        self.perm = perm
        self.spec = env.spec._replace(name=name)
        self.reset_from_seed = getattr(env, "reset_from_seed", False)
        if hasattr(env, "send"):  # keep the split step of the wrapped env (envs.send / envs.recv look for it)
            self.send = self._send
            self.recv = env.recv

    def map_actions(self, actions: Array) -> Array:
        """Agent actions ``[N]`` -> the env actions ``[N]`` int32."""
        return jnp.asarray(self.perm)[actions.astype(jnp.int32)]

    def reset(self) -> tuple[Any, Array]:
        return self.env.reset()

    def step(self, state: Any, actions: Array) -> tuple[Any, EnvStep]:
        return self.env.step(state, self.map_actions(actions))

    def _send(self, state: Any, actions: Array) -> Any:
        return self.env.send(state, self.map_actions(actions))

    def close(self) -> None:
        if hasattr(self.env, "close"):
            self.env.close()


def with_action_perms(envs: Sequence[TaskEnv], specs: Sequence[str]) -> list[TaskEnv]:
    """Wraps task ``i`` in :class:`PermutedActions` when ``specs[i]`` is not the identity.

    ``specs`` is empty (every task as it is) or has one entry per env; a
    wrapped task is named by :func:`task_name`.
    """
    if not specs:
        return list(envs)
    if len(specs) != len(envs):
        raise ValueError(f"action_perms needs one entry per game ({len(envs)}), got {len(specs)}: {list(specs)}")
    out = []
    for env, spec in zip(envs, specs):
        perm = parse_action_perm(spec, env.spec.num_actions)
        name = task_name(env.spec.name, spec, env.spec.num_actions)
        out.append(env if perm is None else PermutedActions(env, perm, name))
    return out


def close_envs(envs: Sequence[Any]) -> None:
    """Closes every env that can be closed (EnvPool pools hold threads; MinAtar envs hold nothing)."""
    for env in envs:
        if hasattr(env, "close"):
            env.close()


def check_same_specs(envs: Sequence[TaskEnv]) -> EnvSpec:
    """All tasks must share N, frame shape, stack and actions; returns the first spec."""
    first = envs[0].spec
    for env in envs[1:]:
        s = env.spec
        if (s.num_envs, s.frame_shape, s.stack, s.num_actions) != (
            first.num_envs, first.frame_shape, first.stack, first.num_actions
        ):
            raise ValueError(
                f"task {s.name} has spec {s} but {first.name} has {first}; all tasks must share "
                "num_envs, frame_shape, stack and num_actions"
            )
    return first
