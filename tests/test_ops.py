"""ops.py kernels equal the plain expressions they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax import ops, spiking
from mtspark_jax.spiking import NeuronConfig


@pytest.mark.parametrize("kind", ["lif", "if"])
@pytest.mark.parametrize("t", [1, 4])
def test_neuron_constant_input_matches_broadcast_unroll(kind, t):
    cur = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7)) * 2.0
    cfg = NeuronConfig()
    ref = spiking.neuron_unroll(jnp.broadcast_to(cur, (t,) + cur.shape), cfg, kind).spikes
    got = ops.neuron_constant_input(cur, t, cfg, kind)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))

    w = jax.random.normal(jax.random.PRNGKey(1), (t,) + cur.shape)
    g_ref = jax.grad(lambda c: jnp.sum(w * spiking.neuron_unroll(
        jnp.broadcast_to(c, (t,) + c.shape), cfg, kind).spikes))(cur)
    g_got = jax.grad(lambda c: jnp.sum(w * ops.neuron_constant_input(c, t, cfg, kind)))(cur)
    np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_ref), rtol=1e-6, atol=1e-6)


def test_neuron_constant_input_rejects_bad_t():
    with pytest.raises(ValueError, match="time_steps"):
        ops.neuron_constant_input(jnp.zeros((2,)), 0)
