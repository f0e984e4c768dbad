"""Per-task replay buffers as one pure-functional pytree in device memory.

Every task has its own ring buffer; the buffers of all tasks are stacked on a
leading task axis so that the jitted loop writes and samples task ``i`` with a
dynamic index and no copy. Each environment step stores ONE record per env:

* ``frames [M, cap, N, H, W, C] uint8``: the newest frame of the observation
  the agent acted on (84x84x1 for Atari: stored once, never as a stack);
* ``actions [M, cap, N] uint8`` (int32 when there are more than 255 actions);
* ``rewards [M, cap, N] f32``: training reward of the transition;
* ``flags [M, cap, N] uint8``: bit 0 terminated, bit 1 truncated, bit 2
  *first* (the observation is an episode's first), bit 3 *invalid* (the
  observation was terminal, so the env discarded the action and reset: not a
  transition, see :mod:`mtspark_jax.rl.envs`).

Record ``t`` and ``t + 1`` give the transition ``(s_t, a_t, r_t, s_{t+1})``;
the terminal observation of an episode gets a record of its own (the env's
discarded reset step), so ``s_{t+1}`` always belongs to ``s_t``'s episode.
Stacks are rebuilt at sampling time: going back from ``t``, frames before the
episode's first are replaced by the first frame, which is exactly what EnvPool
puts in the stack after a reset. A transition is sampled only if ``s_t`` is
not terminal, ``s_{t+1}`` has been written, and every frame of ``s_t``'s stack
is still in the buffer. Atari: 7056 + 1 + 4 + 1 = 7062 bytes per transition
(:func:`bytes_per_transition`), against about 225 KB for float32 stacks.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

TERMINATED = 1
TRUNCATED = 2
FIRST = 4
INVALID = 8


@flax.struct.dataclass
class ReplayState:
    """Ring buffers of all tasks (see module docstring for shapes).

    Attributes:
      frames, actions, rewards, flags: the records.
      count: records written so far per task ``[M]`` int32 (per env; all envs
        of a task write together).
      stack: frames per observation (static).
    """

    frames: Array
    actions: Array
    rewards: Array
    flags: Array
    count: Array
    stack: int = flax.struct.field(pytree_node=False, default=4)

    @property
    def num_tasks(self) -> int:
        return self.frames.shape[0]

    @property
    def capacity(self) -> int:
        return self.frames.shape[1]

    @property
    def num_envs(self) -> int:
        return self.frames.shape[2]


class Batch(NamedTuple):
    """Sampled transitions, all with leading ``[B]``.

    obs/next_obs ``[B, H, W, stack*C]`` uint8; action int32; reward f32;
    terminated f32 (1 cuts the bootstrap); mask f32 (0: padding, ignore);
    task int32; discount: None (one-step transitions: the learner uses its
    gamma) or ``[B]`` f32 ``gamma**k`` for n-step transitions that end
    ``k <= n`` steps later (:func:`gather` with ``n_step > 1``).
    """

    obs: Array
    action: Array
    reward: Array
    next_obs: Array
    terminated: Array
    mask: Array
    task: Array
    discount: Array | None = None


def init_replay(
    num_tasks: int,
    capacity: int,
    num_envs: int,
    frame_shape: tuple[int, int, int],
    stack: int,
    num_actions: int = 18,
    frame_dtype=jnp.uint8,
) -> ReplayState:
    """Empty buffers. ``capacity`` is records per env; a task holds ``capacity * num_envs``."""
    for name, value, low in (("num_tasks", num_tasks, 1), ("num_envs", num_envs, 1), ("stack", stack, 1),
                             ("num_actions", num_actions, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if capacity < stack + 1:
        raise ValueError(f"replay capacity per env must be >= stack + 1 = {stack + 1}, got {capacity}")
    if len(frame_shape) != 3:
        raise ValueError(f"frame_shape must be (H, W, C), got {frame_shape}")
    action_dtype = jnp.uint8 if num_actions <= 256 else jnp.int32
    m, cap, n = num_tasks, capacity, num_envs
    return ReplayState(
        frames=jnp.zeros((m, cap, n) + tuple(frame_shape), frame_dtype),
        actions=jnp.zeros((m, cap, n), action_dtype),
        rewards=jnp.zeros((m, cap, n), jnp.float32),
        flags=jnp.full((m, cap, n), INVALID, jnp.uint8),
        count=jnp.zeros((m,), jnp.int32),
        stack=stack,
    )


def bytes_per_transition(state: ReplayState) -> float:
    """Bytes of device memory per stored transition (all arrays / records)."""
    total = sum(x.size * x.dtype.itemsize for x in (state.frames, state.actions, state.rewards, state.flags))
    return total / (state.num_tasks * state.capacity * state.num_envs)


def add(
    state: ReplayState,
    task: Array | int,
    frame: Array,
    action: Array,
    reward: Array,
    terminated: Array,
    truncated: Array,
    first: Array,
    valid: Array,
) -> ReplayState:
    """Writes one record per env of task ``task`` (may be traced).

    Args:
      frame: ``[N, H, W, C]`` newest frame of the observation acted on.
      action, reward: ``[N]``.
      terminated, truncated: ``[N]`` bool, the step's done flags.
      first: ``[N]`` bool, the observation is an episode's first.
      valid: ``[N]`` bool, False when the observation was terminal (the env
        discarded the action and reset).
    """
    chex.assert_shape(frame, state.frames.shape[2:])
    chex.assert_shape([action, reward, terminated, truncated, first, valid], (state.num_envs,))
    slot = state.count[task] % state.capacity
    flags = (
        terminated.astype(jnp.uint8) * TERMINATED
        + truncated.astype(jnp.uint8) * TRUNCATED
        + first.astype(jnp.uint8) * FIRST
        + (~valid.astype(bool)).astype(jnp.uint8) * INVALID
    )
    return state.replace(
        frames=state.frames.at[task, slot].set(frame.astype(state.frames.dtype)),
        actions=state.actions.at[task, slot].set(action.astype(state.actions.dtype)),
        rewards=state.rewards.at[task, slot].set(reward.astype(jnp.float32)),
        flags=state.flags.at[task, slot].set(flags),
        count=state.count.at[task].add(1),
    )


def set_outcome(state: ReplayState, task: Array | int, reward: Array, terminated: Array, truncated: Array) -> ReplayState:
    """Writes the step's outcome into the newest record of task ``task`` (after :func:`add`).

    Lets the loop write a record in two halves: :func:`add` with the
    observation, action and ``first``/``valid`` (known before the env steps;
    reward and done flags 0), then this once the step returns. No transition
    that can be sampled in between reads the newest record's reward or done
    flags (it is only ``s_{t+1}`` of the newest sampleable transition), so
    sampling in between gives the same batches as after a single :func:`add`.

    Args:
      reward: ``[N]``.
      terminated, truncated: ``[N]`` bool.
    """
    chex.assert_shape([reward, terminated, truncated], (state.num_envs,))
    slot = (state.count[task] - 1) % state.capacity
    keep = state.flags[task, slot] & jnp.uint8(FIRST | INVALID)
    flags = keep + terminated.astype(jnp.uint8) * TERMINATED + truncated.astype(jnp.uint8) * TRUNCATED
    return state.replace(
        rewards=state.rewards.at[task, slot].set(reward.astype(jnp.float32)),
        flags=state.flags.at[task, slot].set(flags),
    )


def _flag(state: ReplayState, task, t: Array, env: Array, bit: int) -> Array:
    return (state.flags[task, t % state.capacity, env] & bit) != 0


def _stack_indices(state: ReplayState, task, u: Array, env: Array) -> list[Array]:
    """Absolute indices of the frames of the stack ending at ``u``, oldest first."""
    idx = [u]
    cur = u
    for _ in range(state.stack - 1):
        cur = jnp.where(_flag(state, task, cur, env, FIRST), cur, cur - 1)
        idx.append(cur)
    return idx[::-1]


def stack_at(state: ReplayState, task, u: Array, env: Array) -> Array:
    """Rebuilds observations ending at absolute records ``u [B]`` of envs ``env [B]``.

    Returns ``[B, H, W, stack * C]`` (oldest frame first, as the env gives them).
    """
    idx = _stack_indices(state, task, u, env)
    frames = jnp.stack([state.frames[task, i % state.capacity, env] for i in idx], axis=1)  # [B,S,H,W,C]
    b, s, h, w, c = frames.shape
    return jnp.transpose(frames, (0, 2, 3, 1, 4)).reshape(b, h, w, s * c)


def is_valid(state: ReplayState, task, t: Array, env: Array, n_step: int = 1) -> Array:
    """Whether ``(t, env)`` is a sampleable transition (see module docstring); ``[B]`` bool.

    With ``n_step > 1`` the records ``t .. t + n_step`` must all be written
    (the last one's outcome may still be pending), whether or not the
    episode ends before.
    """
    count = state.count[task]
    oldest = jnp.maximum(count - state.capacity, 0)
    ok = (t >= oldest) & (t + n_step <= count - 1) & ~_flag(state, task, t, env, INVALID)
    # Every frame the stack of s_t uses must still be in the buffer.
    ok &= _stack_indices(state, task, t, env)[0] >= oldest
    return ok


def n_step_return(state: ReplayState, task, t: Array, env: Array, n_step: int, gamma: float):
    """Discounted reward sum over records ``t .. t + n_step - 1``, stopping after an episode's end.

    Returns ``(reward [B], steps k [B] int32, terminated [B] bool)``: ``k`` is
    ``n_step``, or fewer when record ``t + k - 1`` ended its episode (terminated
    or truncated); ``terminated`` is that record's terminated bit, so a
    truncated episode still bootstraps from its last observation ``t + k``.
    """
    reward = jnp.zeros(t.shape, jnp.float32)
    steps = jnp.zeros(t.shape, jnp.int32)
    terminated = jnp.zeros(t.shape, bool)
    alive = jnp.ones(t.shape, bool)
    for j in range(n_step):
        slot = (t + j) % state.capacity
        flags = state.flags[task, slot, env]
        reward = reward + jnp.where(alive, gamma**j * state.rewards[task, slot, env], 0.0)
        steps = steps + alive.astype(jnp.int32)
        terminated = jnp.where(alive, (flags & TERMINATED) != 0, terminated)
        alive = alive & ((flags & (TERMINATED | TRUNCATED)) == 0)
    return reward, steps, terminated


def gather(state: ReplayState, task, t: Array, env: Array, n_step: int = 1, gamma: float = 0.99) -> Batch:
    """Transitions at absolute records ``t [B]`` of envs ``env [B]`` (mask = validity).

    ``n_step = 1``: ``(s_t, a_t, r_t, s_{t+1})`` and ``discount`` None.
    ``n_step > 1``: ``(s_t, a_t, sum_j gamma^j r_{t+j}, s_{t+k})`` with ``k``
    and the reward sum from :func:`n_step_return` and ``discount = gamma**k``.
    """
    reward, steps, terminated = n_step_return(state, task, t, env, n_step, gamma)
    return Batch(
        obs=stack_at(state, task, t, env),
        action=state.actions[task, t % state.capacity, env].astype(jnp.int32),
        reward=reward,
        next_obs=stack_at(state, task, t + steps, env),
        terminated=terminated.astype(jnp.float32),
        mask=is_valid(state, task, t, env, n_step).astype(jnp.float32),
        task=jnp.full(t.shape, task, jnp.int32),
        discount=None if n_step == 1 else jnp.float32(gamma) ** steps.astype(jnp.float32),
    )


def sample(state: ReplayState, task, key: Array, batch_size: int, oversample: int = 2, n_step: int = 1,
           gamma: float = 0.99) -> Batch:
    """Uniformly samples ``batch_size`` valid transitions of task ``task`` (``n_step``, ``gamma``: :func:`gather`).

    Draws ``oversample * batch_size`` uniform candidates over the stored
    records and keeps the first valid ones, which are uniform over the valid
    set. If too few candidates are valid (an almost empty buffer) the rest of
    the batch has ``mask == 0`` and must be ignored by the loss.
    """
    count = state.count[task]
    oldest = jnp.maximum(count - state.capacity, 0)
    n = oversample * batch_size
    kt, ke = jax.random.split(key)
    t = jax.random.randint(kt, (n,), oldest, jnp.maximum(count - 1, oldest + 1))
    env = jax.random.randint(ke, (n,), 0, state.num_envs)
    valid = is_valid(state, task, t, env, n_step)
    order = jnp.argsort(~valid, stable=True)[:batch_size]
    return gather(state, task, t[order], env[order], n_step, gamma)


def num_valid_upper_bound(state: ReplayState, task) -> Array:
    """Transitions stored for task ``task`` (records minus one per env), an upper bound."""
    return jnp.maximum(jnp.minimum(state.count[task], state.capacity) - 1, 0) * state.num_envs


class EpisodeFlags(NamedTuple):
    """What the actor knows about its current observations, ``[N]`` bool each.

    first: the observation is an episode's first (after a reset).
    terminal: the observation ended an episode; the env will discard the next
      action and reset, so the next record is not a transition.
    """

    first: Array
    terminal: Array


def initial_flags(num_envs: int) -> EpisodeFlags:
    """Flags of the observations returned by ``env.reset()``."""
    return EpisodeFlags(jnp.ones((num_envs,), bool), jnp.zeros((num_envs,), bool))


def next_flags(flags: EpisodeFlags, terminated: Array, truncated: Array) -> EpisodeFlags:
    """Flags of the observation an env step returned, given the flags before it."""
    done = (terminated | truncated) & ~flags.terminal
    return EpisodeFlags(first=flags.terminal, terminal=done)
