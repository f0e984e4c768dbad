"""ops.py kernels equal the plain expressions they replace."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax.nn import ops, spiking
from mtspark_jax.nn.networks import SpikingClassifier
from mtspark_jax.nn.spiking import NeuronConfig


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


_DN = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, strides, padding="VALID"):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


# (input shape, kernel shape, strides, padding): the nature trunk's 8x8/4, 4x4/2 and 3x3/1 layers,
# sizes the stride does not divide, a 6x6/3 kernel, SAME padding with strides 1 and 2, unequal
# strides with uneven explicit padding, a non-square kernel.
CONV_CASES = [
    ((3, 84, 84, 4), (8, 8, 4, 8), (4, 4), "VALID"),
    ((5, 20, 20, 6), (4, 4, 6, 7), (2, 2), "VALID"),
    ((4, 9, 9, 6), (3, 3, 6, 7), (1, 1), "VALID"),
    ((2, 21, 22, 3), (4, 4, 3, 5), (2, 2), "VALID"),
    ((2, 11, 13, 3), (6, 6, 3, 4), (3, 3), "VALID"),
    ((3, 10, 10, 7), (3, 3, 7, 16), (1, 1), "SAME"),
    ((3, 15, 14, 5), (3, 3, 5, 6), (2, 2), "SAME"),
    ((2, 11, 13, 3), (5, 3, 3, 4), (3, 2), ((1, 2), (0, 1))),
]


@pytest.mark.parametrize("xs,ws,strides,padding", CONV_CASES)
def test_conv_nhwc_matches_lax_values_and_gradients(xs, ws, strides, padding):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(sum(xs) + sum(ws)), 3)
    x = jax.random.normal(kx, xs)
    w = jax.random.normal(kw, ws)
    y_ref, vjp_ref = jax.vjp(lambda x, w: _lax_conv(x, w, strides, padding), x, w)
    y_got, vjp_got = jax.vjp(lambda x, w: ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN), x, w)
    np.testing.assert_array_equal(np.asarray(y_got), np.asarray(y_ref))  # the same forward op
    g = jax.random.normal(kg, y_ref.shape)
    (dx_ref, dw_ref), (dx_got, dw_got) = vjp_ref(g), vjp_got(g)
    assert dx_got.shape == x.shape and dw_got.shape == w.shape
    # The weight gradient is XLA's own operation in the layout XLA itself rewrites it to.
    np.testing.assert_array_equal(np.asarray(dw_got), np.asarray(dw_ref))
    # The input gradient: the same operation, or (space-to-depth) summed in another order.
    np.testing.assert_allclose(np.asarray(dx_got), np.asarray(dx_ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(dx_ref).max()))
    assert float(jnp.abs(dx_got).max()) > 0


def _conv_labels_inside_cond(conv) -> list:
    """dim_labels of every convolution XLA compiles for conv's gradients inside ``lax.cond``."""
    x, w = jnp.ones((8, 20, 20, 3)), jnp.ones((4, 4, 3, 5))

    def grads(x, w):
        return jax.grad(lambda x, w: conv(x, w, (2, 2), "SAME", dimension_numbers=_DN).sum(), (0, 1))(x, w)

    fn = jax.jit(lambda ok, x, w: jax.lax.cond(ok, lambda: grads(x, w), lambda: (x, w)))
    return re.findall(r"convolution\(.*?dim_labels=(\S+?),", fn.lower(True, x, w).compile().as_text())


def test_gradients_inside_cond_compile_to_the_eigen_layout():
    """XLA:CPU rewrites gradient convolutions into its Eigen kernel's layout only at a program's top
    level; inside lax.cond / lax.scan it ran them 50-150x slower (docs/performance.md, section 2.6).
    conv_nhwc writes them in that layout itself."""
    ours = _conv_labels_inside_cond(ops.conv_general_dilated)
    assert ours and set(ours) == {"b01f_01io->b01f"}, ours
    # Why: XLA's own gradients keep other layouts there (if this fails, XLA fixed it and
    # conv_nhwc's gradients are no longer needed for that reason).
    assert set(_conv_labels_inside_cond(jax.lax.conv_general_dilated)) - {"b01f_01io->b01f"}


def test_conv_general_dilated_uses_conv_nhwc_only_where_it_applies(monkeypatch):
    calls = []
    real = ops.conv_nhwc
    monkeypatch.setattr(ops, "conv_nhwc", lambda x, w, s, p: calls.append((s, p)) or real(x, w, s, p))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20, 3))
    cases = [  # (kernel, strides, padding, extra keywords, pads conv_nhwc gets or None)
        ((4, 4, 3, 5), (2, 2), "VALID", {}, ((0, 0), (0, 0))),
        ((4, 4, 3, 5), (2, 2), ((0, 0), (0, 0)), {}, ((0, 0), (0, 0))),
        ((3, 3, 3, 5), (1, 1), "SAME", {}, ((1, 1), (1, 1))),
        ((4, 4, 3, 5), (2, 1), ((1, 2), (0, 3)), {}, ((1, 2), (0, 3))),
        ((3, 3, 3, 5), (1, 1), "VALID", {"rhs_dilation": (2, 2)}, None),
        ((3, 3, 3, 5), (1, 1), ((0, 0), (0, 0)), {"lhs_dilation": (2, 2)}, None),
        ((3, 3, 1, 3), (1, 1), "VALID", {"feature_group_count": 3}, None),
    ]
    for shape, strides, padding, kw, pads in cases:
        w = jax.random.normal(jax.random.PRNGKey(1), shape)
        calls.clear()
        got = ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN, **kw)
        ref = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN, **kw)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        assert calls == ([] if pads is None else [(strides, pads)]), (shape, strides, padding, kw)
    calls.clear()  # another layout goes to lax
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 5))
    xc = jnp.transpose(x, (0, 3, 1, 2))
    got = ops.conv_general_dilated(xc, jnp.transpose(w, (3, 2, 0, 1)), (2, 2), "VALID",
                                   dimension_numbers=("NCHW", "OIHW", "NCHW"))
    assert not calls and got.shape == (2, 5, 9, 9)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # not measured on accelerators: lax there
    ops.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=_DN)
    assert not calls


def _count_space_to_depth(monkeypatch) -> list:
    calls = []
    real = ops._space_to_depth_input_grad
    monkeypatch.setattr(ops, "_space_to_depth_input_grad",
                        lambda g, w, hw, b: calls.append(b) or real(g, w, hw, b))
    return calls


def test_space_to_depth_input_gradient_only_where_the_stride_divides_the_kernel(monkeypatch):
    calls = _count_space_to_depth(monkeypatch)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20, 3))
    cases = [((4, 4, 3, 5), (2, 2), "VALID", True), ((3, 3, 3, 5), (2, 2), "VALID", False),
             ((4, 4, 3, 5), (1, 1), "VALID", False), ((4, 4, 3, 5), (2, 2), "SAME", False),
             ((4, 4, 3, 5), (2, 1), "VALID", False)]
    for shape, strides, padding, applies in cases:
        w = jax.random.normal(jax.random.PRNGKey(1), shape)
        calls.clear()
        jax.grad(lambda x: ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN).sum())(x)
        assert bool(calls) == applies, (shape, strides, padding)


def test_nature_trunk_routes_its_layers_and_keeps_its_gradients(monkeypatch):
    """MTSpark_ADD's three convolutions take conv_nhwc (8x8/4 and 4x4/2 with the space-to-depth input
    gradient); gradients match plain lax convolutions."""
    import mtspark_jax as mj

    net = mj.MTSparkADD(num_actions=4, num_tasks=2, hidden=32)
    obs = jax.random.randint(jax.random.PRNGKey(0), (3, 84, 84, 4), 0, 256).astype(jnp.uint8)
    tasks = jnp.array([0, 1, 0])
    params = mj.init_network(net, jax.random.PRNGKey(1), obs.shape)["params"]

    def grads():
        return jax.grad(lambda p: jnp.sum(net.apply({"params": p}, obs, tasks).q ** 2))(params)

    s2d = _count_space_to_depth(monkeypatch)
    convs = []
    real = ops.conv_nhwc
    monkeypatch.setattr(ops, "conv_nhwc", lambda x, w, s, p: convs.append(s) or real(x, w, s, p))
    fast = grads()
    assert sorted(convs) == [(1, 1), (2, 2), (4, 4)] and sorted(s2d) == [2, 4]

    convs.clear()
    monkeypatch.setattr(ops, "conv_general_dilated", jax.lax.conv_general_dilated)  # plain XLA convolutions
    ref = grads()
    assert not convs
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5 * float(jnp.abs(b).max()))


def test_dqn_baseline_convolutions_take_conv_nhwc(monkeypatch):
    import mtspark_jax as mj

    convs = []
    real = ops.conv_nhwc
    monkeypatch.setattr(ops, "conv_nhwc", lambda x, w, s, p: convs.append(s) or real(x, w, s, p))
    net = mj.make_network("dqn", num_tasks=2)
    mj.init_network(net, jax.random.PRNGKey(1), (1, 84, 84, 4))
    assert sorted(convs) == [(1, 1), (2, 2), (4, 4)]


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 15, 15, 2), (5, 5, 2, 4), (2, 2), "SAME"), ((3, 10, 10, 7), (3, 3, 7, 16), (1, 1), "VALID")])
def test_slice_conv_equals_xla_conv(shape, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    want = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(ops.slice_conv(x, w, strides, padding), want, rtol=1e-4, atol=1e-4)


def test_slice_conv_interceptor_leaves_network_output_unchanged(monkeypatch):
    net = SpikingClassifier(hidden=8, convs=((4, 5, 2), (8, 3, 2)), time_steps=2, batch_norm=False)
    x = (jax.random.uniform(jax.random.key(1), (2, 16, 16, 1)) * 255).astype(jnp.uint8)
    v = net.init(jax.random.key(0), x, jnp.array([0, 1]))
    plain = net.apply(v, x, jnp.array([0, 1]))
    calls = []
    slice_conv = ops.slice_conv
    monkeypatch.setattr(ops, "slice_conv", lambda *a: calls.append(a[1].shape) or slice_conv(*a))
    sliced = ops.with_conv_impl(net.apply, "slices")(v, x, jnp.array([0, 1]))
    assert calls == [(5, 5, 1, 4), (3, 3, 4, 8)]  # both convolutions, as slices
    np.testing.assert_allclose(sliced.q, plain.q, rtol=1e-4, atol=1e-5)
    apply = net.apply
    assert ops.with_conv_impl(apply, "xla") is apply
    with pytest.raises(ValueError, match="conv_impl must be 'xla' or 'slices'"):
        ops.with_conv_impl(apply, "fft")
