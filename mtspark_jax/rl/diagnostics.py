"""What a trained multi-task Q-network does per task: action preference and context use.

Two questions a stalled multi-task run raises, answered from the parameters
and a few observed states (``experiments/inspect_agent.py`` runs both on an
agent file):

* :func:`q_by_context`: on one task's states, does the network prefer some
  actions (the spread of Q over the actions; a flat advantage stream gives
  every action the same Q and the greedy policy a fixed action), and does the
  context change that (Q under every task's context)?
* :func:`gate_ranges`: how far each dendritic stream's per-neuron gates have
  moved from their initial range, per task (one-hot context).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax.nn import dendrites

Array = jax.Array


class ContextQ(NamedTuple):
    """One task's states under every context (``M`` tasks, ``A`` actions).

    ``mean_q [M]``: mean Q over states and actions under context ``m``;
    ``spread [M]``: mean over states of ``max_a Q - min_a Q``;
    ``greedy [M, A]``: how often each action is the greedy one.
    """

    mean_q: np.ndarray
    spread: np.ndarray
    greedy: np.ndarray


def q_by_context(net: nn.Module, variables: Any, obs: Array, num_tasks: int) -> ContextQ:
    """Q of ``obs [B, H, W, C]`` under each of the ``num_tasks`` one-hot contexts (see :class:`ContextQ`)."""
    chex.assert_rank(obs, 4)
    b = obs.shape[0]
    apply = jax.jit(lambda o, t: net.apply(variables, o, t, train=False).q)
    qs = np.stack([np.asarray(apply(obs, jnp.full((b,), m, jnp.int32))) for m in range(num_tasks)])  # [M, B, A]
    actions = qs.shape[-1]
    greedy = np.stack([np.bincount(q.argmax(-1), minlength=actions) for q in qs])
    return ContextQ(qs.mean(axis=(1, 2)), (qs.max(-1) - qs.min(-1)).mean(-1), greedy)


class GateRange(NamedTuple):
    """Per task, the gates of one stream's units under that task's one-hot context: ``[M]`` each."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def gate_ranges(params: Any, selection: dendrites.Selection = "abs_max") -> dict[str, GateRange]:
    """``{module name: GateRange}`` for every per-neuron dendritic gate in ``params``.

    A module counts when its name ends in ``_gate`` and it holds
    ``segments [units, s, num_tasks]`` (the ``per_neuron`` dendrites).
    """
    out = {}
    for name, leaf in params.items():
        segments = leaf.get("segments") if name.endswith("_gate") and isinstance(leaf, dict) else None
        if segments is None or segments.ndim != 3:
            continue
        m = segments.shape[-1]
        gates = np.asarray(dendrites.per_neuron_gate(jnp.asarray(segments), jnp.eye(m), selection))  # [M, units]
        out[name] = GateRange(gates.mean(-1), gates.min(-1), gates.max(-1))
    return out
