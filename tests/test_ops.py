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


def _lax_conv(x, w, s, padding="VALID"):
    return jax.lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (batch, height, width, channels, kernel, stride, features): the nature trunk's
# 8x8/4 and 4x4/2 layers, sizes the stride does not divide, a 6x6/3 kernel.
@pytest.mark.parametrize("n,h,w_,c,k,s,f", [(3, 84, 84, 4, 8, 4, 8), (5, 20, 20, 6, 4, 2, 7),
                                            (2, 21, 22, 3, 4, 2, 5), (2, 11, 13, 3, 6, 3, 4)])
def test_strided_conv_matches_lax_values_and_gradients(n, h, w_, c, k, s, f):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(k * 10 + s), 3)
    x = jax.random.normal(kx, (n, h, w_, c))
    w = jax.random.normal(kw, (k, k, c, f))
    y_ref, vjp_ref = jax.vjp(lambda x, w: _lax_conv(x, w, s), x, w)
    y_got, vjp_got = jax.vjp(lambda x, w: ops.strided_conv(x, w, s), x, w)
    np.testing.assert_array_equal(np.asarray(y_got), np.asarray(y_ref))  # the same forward op
    g = jax.random.normal(kg, y_ref.shape)
    (dx_ref, dw_ref), (dx_got, dw_got) = vjp_ref(g), vjp_got(g)
    np.testing.assert_array_equal(np.asarray(dw_got), np.asarray(dw_ref))  # the same weight gradient
    # The input gradient is summed in another order: equal up to float rounding.
    np.testing.assert_allclose(np.asarray(dx_got), np.asarray(dx_ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(dx_ref).max()))
    assert float(jnp.abs(dx_got).max()) > 0


def test_conv_general_dilated_uses_strided_conv_only_where_it_applies(monkeypatch):
    calls = []
    real = ops.strided_conv
    monkeypatch.setattr(ops, "strided_conv", lambda x, w, s: calls.append(s) or real(x, w, s))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20, 3))
    dn = ("NHWC", "HWIO", "NHWC")
    cases = [  # (kernel, strides, padding, applies)
        ((4, 4, 3, 5), (2, 2), "VALID", True),
        ((4, 4, 3, 5), (2, 2), ((0, 0), (0, 0)), True),
        ((3, 3, 3, 5), (2, 2), "VALID", False),  # the stride does not divide the kernel
        ((4, 4, 3, 5), (1, 1), "VALID", False),  # stride 1: nothing to gain
        ((4, 4, 3, 5), (2, 2), "SAME", False),
        ((4, 4, 3, 5), (2, 1), "VALID", False),
    ]
    for shape, strides, padding, applies in cases:
        w = jax.random.normal(jax.random.PRNGKey(1), shape)
        calls.clear()
        got = ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
        ref = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        assert bool(calls) == applies, (shape, strides, padding)
    calls.clear()  # another layout goes to lax
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 5))
    xc = jnp.transpose(x, (0, 3, 1, 2))
    got = ops.conv_general_dilated(xc, jnp.transpose(w, (3, 2, 0, 1)), (2, 2), "VALID",
                                   dimension_numbers=("NCHW", "OIHW", "NCHW"))
    assert not calls and got.shape == (2, 5, 9, 9)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # not measured on accelerators: lax there
    ops.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=dn)
    assert not calls


def test_nature_trunk_routes_its_strided_layers_and_keeps_its_gradients(monkeypatch):
    """MTSpark_ADD's 8x8/4 and 4x4/2 layers take strided_conv; gradients match plain lax convolutions."""
    import mtspark_jax as mj

    net = mj.MTSparkADD(num_actions=4, num_tasks=2, hidden=32)
    obs = jax.random.randint(jax.random.PRNGKey(0), (3, 84, 84, 4), 0, 256).astype(jnp.uint8)
    tasks = jnp.array([0, 1, 0])
    params = mj.init_network(net, jax.random.PRNGKey(1), obs.shape)["params"]

    def grads():
        return jax.grad(lambda p: jnp.sum(net.apply({"params": p}, obs, tasks).q ** 2))(params)

    calls = []
    real = ops.strided_conv
    monkeypatch.setattr(ops, "strided_conv", lambda x, w, s: calls.append(s) or real(x, w, s))
    fast = grads()
    assert sorted(calls) == [2, 4]

    calls.clear()
    monkeypatch.setattr(ops, "conv_general_dilated", jax.lax.conv_general_dilated)  # plain XLA convolutions
    ref = grads()
    assert not calls
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5 * float(jnp.abs(b).max()))
