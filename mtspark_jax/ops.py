"""Fast kernels behind the networks' layer-by-layer path (SPEC section 7).

Nothing here changes what a network computes; each function is a cheaper
formulation of an expression ``networks.py`` used to write directly, checked
against it in ``tests/test_ops.py``.

* :func:`neuron_constant_input`: a neuron driven by the same current at every
  step (direct encoding's first layer). The old form broadcast the current to
  ``[T, ...]`` and scanned over it; XLA then materialised the broadcast in the
  forward pass and reduced the ``[T, ...]`` cotangent in the backward pass
  (on 2 CPU cores about 13 % of the MTSpark_ADD train step). Here the current
  is a loop invariant of the scan, so its cotangent is accumulated in the
  loop carry, element-wise, and nothing ``[T, ...]``-sized is built for it.
  Same arithmetic per step, so the outputs are identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtspark_jax import spiking
from mtspark_jax.spiking import NeuronConfig, NeuronKind

Array = jax.Array


def neuron_constant_input(
    current: Array,
    time_steps: int,
    cfg: NeuronConfig = NeuronConfig(),
    kind: NeuronKind = "lif",
) -> Array:
    """Spikes of a neuron fed the same ``current`` at each of ``time_steps`` steps.

    Equal to ``neuron_unroll(broadcast_to(current, (T,) + current.shape)).spikes``.

    Args:
      current: input current ``[...]`` (any shape), the same at every step.
      time_steps: T >= 1.
      cfg: neuron constants.
      kind: ``"lif"`` or ``"if"``.

    Returns:
      spikes ``[T, ...]``.
    """
    if time_steps < 1:
        raise ValueError(f"time_steps (T) must be >= 1, got {time_steps}")
    v0 = jnp.full(current.shape, cfg.initial_v, current.dtype)

    def body(v, _):
        v, s = spiking.neuron_step(v, current, cfg, kind)
        return v, s

    _, spikes = jax.lax.scan(body, v0, None, length=time_steps, unroll=True)
    return spikes
