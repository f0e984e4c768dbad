"""Evaluation on environments of its own (never the training ones).

``make_evaluator(net, eval_envs, ...)`` returns ``evaluate(variables, key)``:
for every task it resets that task's evaluation pool (host side), then runs a
jitted ``lax.while_loop`` that steps all ``N`` eval envs with epsilon-greedy
actions (epsilon 0 = greedy) until every env has finished its first episode or
``max_steps`` steps have passed. Each env contributes one episode, so the
number of episodes per task is the eval pool's ``num_envs``.

With ``noop_max > 0`` env ``e`` first takes ``k_e`` no-op actions (action 0:
``n`` in MinAtar's full action set ``n l u r d f``, ``NOOP`` in ALE's), ``k_e``
uniform in ``0..noop_max`` and drawn from the evaluation key, then follows the
policy. Gymnax's MinAtar games reset from their seed and Breakout's only random
choice is which of two corners the ball starts from, so without these no-ops
the greedy episodes of an evaluation are copies of at most a few games; with
them the mean is over different starts. The no-ops are agent actions: an action
map (``TrainConfig.action_perms``) that moves action 0 moves them too.
:meth:`EvalResult.distinct_episodes` counts how many different episodes an
evaluation held.

An evaluation depends only on the parameters, the key and the pools' seeds,
never on earlier evaluations, so that a resumed run reproduces every
evaluation of the uninterrupted one. Envs whose ``reset`` restarts from their
seed (``env.reset_from_seed``, e.g. MinAtar) are reused; others (EnvPool,
whose pool RNG advances at every reset and step) are rebuilt for every
evaluation by ``make_envs`` and closed after it, at the cost of building the
pools and compiling the episode loop again (about 0.7 s per game on 2 CPU
cores for the ``cpu`` preset).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax.rl.envs import TaskEnv, close_envs
from mtspark_jax.rl.learner import epsilon_greedy

Array = jax.Array


class EvalResult(NamedTuple):
    """``returns [M, E]`` raw episode returns; ``lengths [M, E]``; ``complete [M, E]`` bool
    (False: the episode was cut at ``max_steps`` and its return is partial)."""

    returns: np.ndarray
    lengths: np.ndarray
    complete: np.ndarray

    def mean_returns(self) -> np.ndarray:
        """``[M]`` mean return per task."""
        return self.returns.mean(axis=1)

    def distinct_episodes(self) -> np.ndarray:
        """``[M]`` int: per task, the number of distinct (return, length) pairs among its episodes
        (as ``experiments/eval_atari.py`` counts them; equal pairs are taken for copies of one game)."""
        return np.array([distinct_episodes(r, n) for r, n in zip(self.returns, self.lengths)])


def distinct_episodes(returns: np.ndarray, lengths: np.ndarray) -> int:
    """The number of distinct (return, length) pairs among ``[E]`` episodes (equal pairs: copies of one game)."""
    return len(set(zip(np.asarray(returns).tolist(), np.asarray(lengths).tolist())))


def make_evaluator(
    net: nn.Module,
    eval_envs: Sequence[TaskEnv] | Callable[[], Sequence[TaskEnv]],
    max_steps: int,
    epsilon: float = 0.0,
    noop_max: int = 0,
) -> Callable[[Any, Array], EvalResult]:
    """Builds ``evaluate(variables, key) -> EvalResult`` (see module docstring).

    Args:
      net: the network, called as ``net.apply(variables, obs, task_ids, train=False)``.
      eval_envs: one env per task, or a function that builds them. With a
        function, envs that do not restart from their seed at ``reset`` are
        built afresh for every evaluation (and closed after it).
      max_steps: steps after which an unfinished episode is cut (``complete`` False).
      epsilon: exploration rate of the evaluation policy (0 = greedy).
      noop_max: every episode starts with ``0..noop_max`` no-op actions, drawn
        per episode from the evaluation key (0: none, and the key is used as
        without this option).
    """
    if max_steps < 1:
        raise ValueError(f"eval max_steps must be >= 1, got {max_steps}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"eval epsilon must be in [0, 1], got {epsilon}")
    if noop_max < 0:
        raise ValueError(f"eval noop_max must be >= 0, got {noop_max}")

    def make_run(task: int, env: TaskEnv):
        n = env.spec.num_envs
        step = make_policy_step(net, env, task, epsilon)

        def run(variables, handle, obs, key):
            if noop_max:
                key, k_noop = jax.random.split(key)
                noops = jax.random.randint(k_noop, (n,), 0, noop_max + 1)
            else:
                noops = jnp.zeros((n,), jnp.int32)

            def cond(c):
                return (c[6] < max_steps) & ~c[3].all()

            def body(c):
                handle, obs, key, done, ret, length, t = c
                key, k = jax.random.split(key)
                handle, out = step(variables, handle, obs, k, t < noops)
                live = ~done
                ret = ret + jnp.where(live, out.raw_reward, 0.0)
                length = length + live.astype(jnp.int32)
                done = done | out.terminated | out.truncated
                return handle, out.obs, key, done, ret, length, t + 1

            init = (handle, obs, key, jnp.zeros((n,), bool), jnp.zeros((n,)), jnp.zeros((n,), jnp.int32), 0)
            _, _, _, done, ret, length, _ = jax.lax.while_loop(cond, body, init)
            return ret, length, done

        return jax.jit(run)

    build = eval_envs if callable(eval_envs) else None
    envs = list(build() if build else eval_envs)
    reuse = build is None or all(getattr(env, "reset_from_seed", False) for env in envs)
    runs = [make_run(i, env) for i, env in enumerate(envs)]
    unused = [(envs, runs)]  # pools built above and not yet evaluated on

    def evaluate(variables: Any, key: Array) -> EvalResult:
        if reuse:
            pools, fns = envs, runs
        elif unused:
            pools, fns = unused.pop()
        else:
            pools = list(build())
            fns = [make_run(i, env) for i, env in enumerate(pools)]
        rets, lens, comps = [], [], []
        try:
            for i, (env, run) in enumerate(zip(pools, fns)):
                handle, obs = env.reset()
                ret, length, done = run(variables, handle, obs, jax.random.fold_in(key, i))
                rets.append(np.asarray(ret))
                lens.append(np.asarray(length))
                comps.append(np.asarray(done))
        finally:
            if not reuse:
                close_envs(pools)
        return EvalResult(np.stack(rets), np.stack(lens), np.stack(comps))

    return evaluate


def make_policy_step(net: nn.Module, env: TaskEnv, task: int, epsilon: float) -> Callable:
    """``step(variables, handle, obs, key, noop=None) -> (handle, EnvStep)``: every env of ``env``
    takes one epsilon-greedy action of the network on task ``task`` (jittable); the envs where
    ``noop`` (``[N]`` bool, optional) is True take action 0 instead.

    ``obs`` is ``[N, H, W, S*C]`` uint8; the evaluator runs it in its episode loop and
    :mod:`mtspark_jax.rl.video` once per recorded step.
    """
    n = env.spec.num_envs

    def step(variables: Any, handle: Any, obs: Array, key: Array, noop: Array | None = None) -> tuple[Any, Any]:
        q = net.apply(variables, obs, jnp.full((n,), task, jnp.int32), train=False).q
        actions = epsilon_greedy(key, q, epsilon)
        if noop is not None:
            actions = jnp.where(noop, jnp.zeros_like(actions), actions)
        return env.step(handle, actions)

    return step
