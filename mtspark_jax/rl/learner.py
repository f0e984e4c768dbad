"""Double DQN learner (docs/design.md section 4): target, Huber loss, clipped Adam, target sync, epsilon.

Pure functions over :class:`LearnerState`. ``variables`` are the network's
Flax variables (``{"params": ...}`` plus ``{"batch_stats": ...}`` when the
network uses BatchNorm); the online network is applied with ``train=True``
while learning and ``train=False`` when acting and for targets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mtspark_jax.rl.replay import Batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Learner hyper-parameters. Defaults: the authors' ranges (docs/design.md section 4).

    Attributes:
      lr: Adam learning rate (authors: 1e-4 to 3e-4).
      adam_eps: Adam epsilon (Optax default).
      gamma: discount.
      max_grad_norm: global-norm gradient clipping.
      huber_delta: Huber loss threshold.
      batch_size: transitions per gradient step per task (authors: 256 to
        1024; small default for CPU).
      update_mode: ``per_task``: one gradient step per task per update (the
        authors); ``mixed``: one step on a batch concatenating every task's
        samples.
      optimizer_per_task: one Adam state (moments) per task instead of one
        shared by all: with ``per_task`` updates, each task's gradient step is
        then normalised by that task's own gradient scale, and its momentum
        holds that task's gradients only. With one shared state, a task whose
        TD errors are large (Enduro's frequent rewards) sets the second
        moments and the momentum of every step, and a task with small
        gradients (Pong's rare rewards) moves its weights by a fraction of
        ``lr`` in directions mixed with the others' (docs/design.md section 4).
      gate_lr_scale: the dendritic segments' step relative to every other
        parameter's (the parameters of modules named ``*_gate``). A gate is
        ``sigmoid`` of one segment weight per unit and task, and Adam moves
        that weight by about ``lr`` per update whenever its gradient keeps its
        sign, however small the gradient; a smaller scale slows the gates'
        drift (docs/design.md section 4).
      rate_floor: lowest mean spike rate each spiking layer may have on a
        batch before the loss adds ``rate_weight * (rate_floor - rate)**2``
        for it (0: off). The TD loss alone can push a whole layer below
        threshold (measured on Pong: the dueling advantage stream), where
        the surrogate gradient nearly vanishes and the layer stays silent.
      rate_weight: weight of that penalty.
    """

    lr: float = 1e-4
    adam_eps: float = 1e-8
    gamma: float = 0.99
    max_grad_norm: float = 10.0
    huber_delta: float = 1.0
    batch_size: int = 32
    update_mode: str = "per_task"
    optimizer_per_task: bool = False
    gate_lr_scale: float = 1.0
    rate_floor: float = 0.0
    rate_weight: float = 1.0


def validate_learner_config(c: LearnerConfig) -> None:
    """Raises ValueError naming the first bad value."""
    if not c.lr > 0:
        raise ValueError(f"lr must be > 0, got {c.lr}")
    if not 0.0 <= c.gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {c.gamma}")
    if not c.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {c.max_grad_norm}")
    if c.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {c.batch_size}")
    if not 0.0 <= c.rate_floor < 1.0 or not c.rate_weight >= 0:
        raise ValueError(f"rate_floor must be in [0, 1) and rate_weight >= 0, got {c.rate_floor}, {c.rate_weight}")
    if not c.gate_lr_scale >= 0:
        raise ValueError(f"gate_lr_scale must be >= 0, got {c.gate_lr_scale}")
    if c.update_mode not in ("per_task", "mixed"):
        raise ValueError(f"update_mode must be 'per_task' or 'mixed', got {c.update_mode!r}")
    if c.optimizer_per_task and c.update_mode != "per_task":
        raise ValueError("optimizer_per_task needs update_mode='per_task' (a mixed step has no single task)")


@flax.struct.dataclass
class LearnerState:
    """Online variables, target variables, optimiser state and update counter."""

    variables: Any
    target_variables: Any
    opt_state: Any
    updates: Array


class LossInfo(NamedTuple):
    """Scalars of one gradient step."""

    td_loss: Array
    q_mean: Array
    grad_norm: Array


def is_gate_param(path: tuple, leaf: Any) -> bool:
    """Whether a parameter belongs to a dendritic gate (a module named ``*_gate``)."""
    del leaf
    return any(str(getattr(k, "key", k)).endswith("_gate") for k in path)


def make_optimizer(c: LearnerConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm(max_grad_norm)``, Adam, then the gates' steps times ``gate_lr_scale``."""
    parts = [optax.clip_by_global_norm(c.max_grad_norm), optax.adam(c.lr, eps=c.adam_eps)]
    if c.gate_lr_scale != 1.0:
        mask = lambda params: jax.tree_util.tree_map_with_path(is_gate_param, params)  # noqa: E731
        parts.append(optax.masked(optax.scale(c.gate_lr_scale), mask))
    return optax.chain(*parts)


def init_learner(variables: Any, optimizer: optax.GradientTransformation, num_states: int = 0) -> LearnerState:
    """Target = copy of online; fresh optimiser state.

    ``num_states > 0`` stacks that many optimiser states (one per task,
    ``LearnerConfig.optimizer_per_task``): every leaf gets a leading
    ``[num_states]`` axis. ``0``: one unstacked state.
    """
    opt_state = optimizer.init(variables["params"])
    if num_states:
        opt_state = jax.tree.map(lambda x: jnp.stack([x] * num_states), opt_state)
    return LearnerState(
        variables=variables,
        target_variables=jax.tree.map(jnp.copy, variables),
        opt_state=opt_state,
        updates=jnp.zeros((), jnp.int32),
    )


def double_dqn_target(
    q_next_online: Array, q_next_target: Array, reward: Array, terminated: Array, gamma: float | Array
) -> Array:
    """``r + gamma * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a))``.

    Args:
      q_next_online, q_next_target: ``[B, A]``.
      reward, terminated: ``[B]`` (terminated as 0/1 float).
      gamma: a float, or ``[B]`` per-sample discounts (``gamma**k`` of n-step
        transitions, :attr:`mtspark_jax.rl.replay.Batch.discount`).

    Returns:
      ``[B]`` targets (no gradient).
    """
    chex.assert_rank([q_next_online, q_next_target], 2)
    a_star = jnp.argmax(q_next_online, axis=-1)
    q_eval = jnp.take_along_axis(q_next_target, a_star[:, None], axis=-1)[:, 0]
    return jax.lax.stop_gradient(reward + gamma * (1.0 - terminated) * q_eval)


def target_q(net: nn.Module, target_variables: Any, next_obs: Array, task: Array) -> Array:
    """``Q_target(s', .)``: the target network in eval mode.

    Args:
      next_obs: ``[B, H, W, C]`` uint8 observations.
      task: ``[B]`` int32 task ids.

    Returns:
      ``[B, A]`` float32, without gradient. Computed inside :func:`td_loss`
      unless the caller passes it (:func:`make_update`'s ``q_next_target``),
      e.g. once for several updates' batches, as the target network does not
      change between target syncs.
    """
    chex.assert_rank(next_obs, 4)
    chex.assert_equal_shape_prefix([next_obs, task], 1)
    return jax.lax.stop_gradient(net.apply(target_variables, next_obs, task, train=False).q)


def _apply(net: nn.Module, variables: Any, obs: Array, task: Array, train: bool):
    """Returns (the network's output, new batch_stats or None)."""
    if train and "batch_stats" in variables:
        out, mutated = net.apply(variables, obs, task, train=True, mutable=["batch_stats"])
        return out, mutated["batch_stats"]
    return net.apply(variables, obs, task, train=False), None


def rate_penalty(spike_rates: dict[str, Array], mask: Array, floor: float) -> Array:
    """``sum_layers relu(floor - rate)**2`` with each layer's rate averaged over the batch (``mask`` weights).

    Args:
      spike_rates: layer name -> ``[B]`` spike rates (``NetworkOutput.spike_rates``).
      mask: ``[B]`` sample weights.
    """
    denom = jnp.maximum(mask.sum(), 1.0)
    total = jnp.zeros(())
    for rate in spike_rates.values():
        total = total + jnp.square(jax.nn.relu(floor - (rate * mask).sum() / denom))
    return total


def td_loss(
    params: Any, state: LearnerState, net: nn.Module, batch: Batch, c: LearnerConfig,
    q_next_target: Array | None = None,
) -> tuple[Array, tuple[LossInfo, Any]]:
    """Masked mean Huber loss of Double DQN on ``batch`` (``batch.mask`` weights).

    ``q_next_target``: ``[B, A]`` from :func:`target_q` on this batch, or None
    to compute it here.
    """
    variables = {**state.variables, "params": params}
    out, new_stats = _apply(net, variables, batch.obs, batch.task, train=True)
    q = out.q
    # The online argmax over s' gets no gradient; applying it to stopped parameters keeps the
    # backward pass from carrying its forward residuals (about a fifth of an MTSpark_ADD update).
    q_next_online = _apply(net, jax.lax.stop_gradient(variables), batch.next_obs, batch.task, train=False)[0].q
    if q_next_target is None:
        q_next_target = target_q(net, state.target_variables, batch.next_obs, batch.task)
    chex.assert_equal_shape([q_next_online, q_next_target])
    gamma = c.gamma if batch.discount is None else batch.discount
    target = double_dqn_target(q_next_online, q_next_target, batch.reward, batch.terminated, gamma)
    q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
    per_sample = optax.huber_loss(q_taken, target, delta=c.huber_delta)
    denom = jnp.maximum(batch.mask.sum(), 1.0)
    loss = (per_sample * batch.mask).sum() / denom
    q_mean = (q_taken * batch.mask).sum() / denom
    info = LossInfo(loss, q_mean, jnp.zeros(()))  # the TD loss alone
    if c.rate_floor > 0:
        loss = loss + c.rate_weight * rate_penalty(out.spike_rates, batch.mask, c.rate_floor)
    return loss, (info, new_stats)


def make_update(
    net: nn.Module, optimizer: optax.GradientTransformation, c: LearnerConfig
) -> Callable[..., tuple[LearnerState, LossInfo]]:
    """Builds ``update(state, batch, q_next_target=None) -> (state, info)``: one clipped Adam step.

    ``q_next_target`` (``[B, A]``, optional) is the target network's Q on
    ``batch.next_obs`` (:func:`target_q`); without it the update computes it.
    A batch with ``mask.sum() == 0`` leaves the parameters and optimiser state
    unchanged (nothing to learn from yet). With ``c.optimizer_per_task`` the
    state's optimiser states are stacked per task (:func:`init_learner`) and
    the step uses and updates the one of ``batch.task[0]`` (a per-task batch
    holds one task).
    """

    def update(
        state: LearnerState, batch: Batch, q_next_target: Array | None = None
    ) -> tuple[LearnerState, LossInfo]:
        params = state.variables["params"]
        (_, (info, new_stats)), grads = jax.value_and_grad(td_loss, has_aux=True)(
            params, state, net, batch, c, q_next_target)
        if c.optimizer_per_task:
            task = batch.task[0]
            own = jax.tree.map(lambda x: x[task], state.opt_state)
            updates, own = optimizer.update(grads, own, params)
            opt_state = jax.tree.map(lambda x, o: x.at[task].set(o), state.opt_state, own)
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        variables = {**state.variables, "params": new_params}
        if new_stats is not None:
            variables["batch_stats"] = new_stats
        any_data = batch.mask.sum() > 0
        new_state = LearnerState(variables, state.target_variables, opt_state, state.updates + 1)
        new_state = jax.tree.map(lambda n, o: jnp.where(any_data, n, o), new_state, state)
        return new_state, info._replace(grad_norm=optax.tree.norm(grads))

    return update


def sync_target(state: LearnerState, do_sync: Array | bool) -> LearnerState:
    """Hard copy online -> target where ``do_sync``."""
    target = jax.tree.map(lambda o, t: jnp.where(do_sync, o, t), state.variables, state.target_variables)
    return state.replace(target_variables=target)


def linear_epsilon(step: Array, start: float, end: float, decay_steps: int) -> Array:
    """Linearly from ``start`` at step 0 to ``end`` at ``decay_steps``, then flat."""
    frac = jnp.clip(step / max(decay_steps, 1), 0.0, 1.0)
    return start + frac * (end - start)


def epsilon_greedy(key: Array, q: Array, epsilon: Array) -> Array:
    """Actions ``[B]`` int32: argmax of ``q [B, A]`` or uniform with probability ``epsilon``."""
    k1, k2 = jax.random.split(key)
    b, a = q.shape
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    rand = jax.random.randint(k1, (b,), 0, a, dtype=jnp.int32)
    return jnp.where(jax.random.uniform(k2, (b,)) < epsilon, rand, greedy)


def relative_change(new_params: Any, old_params: Any) -> Array:
    """``||new - old|| / ||new||`` over every leaf (SwitchMT's signal)."""
    diff = optax.tree.norm(jax.tree.map(lambda a, b: a - b, new_params, old_params))
    return diff / jnp.maximum(optax.tree.norm(new_params), 1e-12)
