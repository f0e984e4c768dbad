"""Active dendrites: context gating of a layer's input current (docs/design.md section 2).

Two formulations, both driven by a context ``c`` ``[B, d_c]`` (one-hot task id):

* ``per_neuron`` (Numenta, Iyer et al. 2022): unit ``i`` owns ``s`` segments
  ``U_i`` ``[s, d_c]``; its segment activations are ``a_i = U_i c`` and the unit
  is gated by ``sigmoid(a_i*)`` where ``a_i*`` is the activation of largest
  magnitude, sign kept (``selection="abs_max"``, default) or the plain maximum
  (``selection="max"``). Computed as a ``vmap`` over units (and batch) of
  "segment activations, then the segment maximum".
* ``layer_shared`` (authors' released code): one matrix ``D`` ``[n_tasks, s]``
  per layer; ``gate = sigmoid(max_j (c D)_j)``, one scalar per sample.

Initialisation: both weight tensors are drawn from ``U(-1/sqrt(d_c), 1/sqrt(d_c))``
(the PyTorch ``nn.Linear`` rule with fan-in ``d_c``), so with a one-hot context
every initial gate lies in ``[sigmoid(-1), sigmoid(1)]``, about ``[0.27, 0.73]``.
``DendriticGate(context_density=p)`` widens the bound to ``1/sqrt(p * d_c)``,
Numenta's "modified" init for a context with a fraction ``p`` of non-zero
entries (``DendriticMLP(context_percent_on=p)``).
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Selection = Literal["abs_max", "max"]
Formulation = Literal["per_neuron", "layer_shared"]


def _check_selection(selection: str) -> None:
    if selection not in ("abs_max", "max"):
        raise ValueError(f"unknown selection {selection!r}; expected 'abs_max' or 'max'")


def select_segment(activations: Array, selection: Selection = "abs_max") -> Array:
    """Picks one activation per row: ``[..., s] -> [...]``.

    ``abs_max`` returns the entry of largest magnitude with its sign; ``max`` the
    largest entry. The gradient flows to the selected segment only.
    """
    _check_selection(selection)
    if selection == "max":
        return activations.max(axis=-1)
    idx = jnp.argmax(jnp.abs(activations), axis=-1)
    return jnp.take_along_axis(activations, idx[..., None], axis=-1)[..., 0]


def _unit_gate_logit(segments: Array, context: Array, selection: Selection) -> Array:
    """One unit, one sample: ``segments [s, d_c]``, ``context [d_c]`` -> scalar."""
    return select_segment(segments @ context, selection)


def per_neuron_gate(
    segments: Array, context: Array, selection: Selection = "abs_max"
) -> Array:
    """Numenta dendritic gate.

    Args:
      segments: ``[units, s, d_c]`` segment weights.
      context: ``[B, d_c]``.
      selection: ``abs_max`` (signed absolute maximum) or ``max``.

    Returns:
      gates in (0, 1), ``[B, units]``.
    """
    if segments.ndim != 3:
        raise ValueError(f"segments must be [units, s, d_c], got shape {segments.shape}")
    if context.ndim != 2 or context.shape[-1] != segments.shape[-1]:
        raise ValueError(
            f"context must be [B, {segments.shape[-1]}], got shape {context.shape}"
        )
    over_units = jax.vmap(_unit_gate_logit, in_axes=(0, None, None))
    over_batch = jax.vmap(over_units, in_axes=(None, 0, None))
    return jax.nn.sigmoid(over_batch(segments, context, selection))


def layer_shared_gate(table: Array, context: Array) -> Array:
    """Authors' layer-shared gate.

    Args:
      table: ``D`` ``[n_tasks, s]``.
      context: ``[B, n_tasks]``.

    Returns:
      ``sigmoid(max_j (c D)_j)`` as ``[B, 1]`` (broadcasts over the layer's units).
    """
    if table.ndim != 2:
        raise ValueError(f"table must be [n_tasks, s], got shape {table.shape}")
    if context.ndim != 2 or context.shape[-1] != table.shape[0]:
        raise ValueError(f"context must be [B, {table.shape[0]}], got shape {context.shape}")
    return jax.nn.sigmoid((context @ table).max(axis=-1, keepdims=True))


def kwta(x: Array, k: int) -> Array:
    """k-winners-take-all over the last axis: keeps exactly ``k`` largest entries.

    Args:
      x: ``[..., n]``.
      k: 1 <= k <= n. Ties are broken by position (``lax.top_k``), so exactly
        ``k`` entries survive.

    Returns:
      ``x`` with all but the top ``k`` entries of each row set to 0.
    """
    return x * kwta_mask(x, k)


def kwta_mask(x: Array, k: int) -> Array:
    """The 0/1 mask of :func:`kwta`: 1 at the ``k`` largest entries of each row of ``x [..., n]``.

    Returns an array shaped and typed like ``x``; no gradient flows through it.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"kwta needs 1 <= k <= {n}, got k={k}")
    rows = jax.lax.stop_gradient(x).reshape(-1, n)
    _, idx = jax.lax.top_k(rows, k)
    # A scatter of ones, not a sum of one-hot rows: that builds [rows, k, n]
    # (20x slower for a [256, 2048] batch with k = 102 on a CPU).
    mask = jnp.zeros_like(rows).at[jnp.arange(rows.shape[0])[:, None], idx].set(1)
    return mask.reshape(x.shape)


def uniform_fan_in(fan_in: int, density: float = 1.0) -> nn.initializers.Initializer:
    """``U(-b, b)`` with ``b = 1 / sqrt(density * fan_in)``: PyTorch's ``nn.Linear``
    rule at ``density = 1``, Numenta's sparsity-aware "modified" rule below it."""
    bound = 1.0 / math.sqrt(density * fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class DendriticGate(nn.Module):
    """Flax module: context ``[B, d_c]`` -> gate ``[B, units]`` (or ``[B, 1]``).

    Attributes:
      units: number of units the gate serves.
      num_segments: segments per unit (per_neuron) or per layer (layer_shared).
      formulation: ``per_neuron`` (Numenta) or ``layer_shared`` (authors' code).
      selection: ``abs_max`` or ``max`` (per_neuron only).
      context_density: in (0, 1]; the weights start in ``U(-b, b)`` with
        ``b = 1 / sqrt(context_density * d_c)``.
    """

    units: int
    num_segments: int
    formulation: Formulation = "per_neuron"
    selection: Selection = "abs_max"
    context_density: float = 1.0

    @nn.compact
    def __call__(self, context: Array) -> Array:
        d_c = context.shape[-1]
        if not 0.0 < self.context_density <= 1.0:
            raise ValueError(f"context_density must be in (0, 1], got {self.context_density}")
        init = uniform_fan_in(d_c, self.context_density)
        if self.formulation == "per_neuron":
            _check_selection(self.selection)
            segments = self.param("segments", init, (self.units, self.num_segments, d_c))
            return per_neuron_gate(segments, context, self.selection)
        if self.formulation == "layer_shared":
            table = self.param("table", init, (d_c, self.num_segments))
            return layer_shared_gate(table, context)
        raise ValueError(
            f"unknown dendrite formulation {self.formulation!r}; "
            "expected 'per_neuron' or 'layer_shared'"
        )
