"""Tests of mtspark_jax.nn.spiking against plain NumPy/Python references."""

import itertools
import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mtspark_jax as mj
from mtspark_jax.nn import spiking

CLOSED_FORMS = {
    "sigmoid": lambda x, a: a * (1 / (1 + np.exp(-a * x))) * (1 - 1 / (1 + np.exp(-a * x))),
    "atan": lambda x, a: a / 2 / (1 + (math.pi / 2 * a * x) ** 2),
    "fast_sigmoid": lambda x, a: 1 / (1 + a * np.abs(x)) ** 2,
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0, 25.0])
def test_surrogate_gradient_equals_closed_form(name, alpha):
    x = np.linspace(-3, 3, 601).astype(np.float32)
    grad = jax.vmap(jax.grad(lambda v: mj.spike(v, name, alpha)))(jnp.asarray(x))
    np.testing.assert_allclose(grad, CLOSED_FORMS[name](x.astype(np.float64), alpha), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_forward_is_exact_heaviside(name):
    x = jnp.array([-2.0, -1e-7, 0.0, 1e-7, 3.0])
    np.testing.assert_array_equal(mj.spike(x, name), [0, 0, 1, 1, 1])


def test_default_alpha_used_when_none():
    g = jax.grad(lambda v: mj.spike(v, "sigmoid"))(0.0)
    assert float(g) == pytest.approx(4.0 * 0.25)  # alpha=4: alpha * 0.5 * 0.5
    g = jax.grad(lambda v: mj.spike(v, "atan"))(0.0)
    assert float(g) == pytest.approx(1.0)  # alpha=2: alpha / 2


def test_alpha_can_be_traced_and_vmapped():
    alphas = jnp.array([1.0, 4.0, 10.0])
    grads = jax.vmap(lambda a: jax.grad(lambda v: mj.spike(v, "sigmoid", a))(0.3))(alphas)
    np.testing.assert_allclose(grads, CLOSED_FORMS["sigmoid"](0.3, np.asarray(alphas)), rtol=1e-5)


def test_unknown_surrogate_raises():
    with pytest.raises(ValueError, match="unknown surrogate 'relu'.*expected one of"):
        mj.spike(jnp.zeros(3), "relu")
    with pytest.raises(ValueError, match="unknown surrogate"):
        mj.NeuronConfig(surrogate="nope")


def _numpy_neuron(x_seq, cfg, kind):
    """Plain Python loop over time: the equations of docs/design.md section 1."""
    v = np.full(x_seq.shape[1:], cfg.initial_v, np.float64)
    spikes, membranes = [], []
    for x in x_seq.astype(np.float64):
        if kind == "lif":
            h = v + (x - (v - cfg.initial_v)) / cfg.tau
        else:
            h = v + x
        s = (h - cfg.v_threshold >= 0).astype(np.float64)
        if cfg.v_reset is None:
            v = h - cfg.v_threshold * s
        else:
            v = h * (1 - s) + cfg.v_reset * s
        spikes.append(s)
        membranes.append(v)
    return np.stack(spikes), np.stack(membranes)


CONFIGS = [
    mj.NeuronConfig(),
    mj.NeuronConfig(tau=3.0, v_threshold=0.5, v_reset=-0.2),
    mj.NeuronConfig(v_reset=None),
    mj.NeuronConfig(surrogate="atan", detach_reset=True),
    mj.NeuronConfig(surrogate="fast_sigmoid", alpha=10.0, v_reset=None, detach_reset=True),
]


class TestUnroll(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_scan_equals_python_loop(self):
        rng = np.random.default_rng(0)
        x_seq = rng.normal(0.8, 1.0, size=(7, 5, 6)).astype(np.float32)
        for cfg, kind in itertools.product(CONFIGS, ["lif", "if"]):
            unroll = self.variant(lambda x, c=cfg, k=kind: mj.neuron_unroll(x, c, k))
            trace = unroll(jnp.asarray(x_seq))
            ref_s, ref_v = _numpy_neuron(x_seq, cfg, kind)
            assert ref_s.sum() > 0 and (1 - ref_s).sum() > 0, "input must exercise resets"
            np.testing.assert_array_equal(trace.spikes, ref_s)
            np.testing.assert_allclose(trace.membrane, ref_v, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_leaky_readout_equals_loop(self):
        rng = np.random.default_rng(1)
        x_seq = rng.normal(size=(6, 4, 3)).astype(np.float32)
        v, trace = np.zeros((4, 3)), []
        for x in x_seq:
            v = v + (x - v) / 2.5
            trace.append(v)
        trace = np.stack(trace)
        for decode, ref in [("max", trace.max(0)), ("mean", trace.mean(0)), ("last", trace[-1])]:
            out = self.variant(lambda x, d=decode: mj.leaky_readout(x, 2.5, d))(jnp.asarray(x_seq))
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mj.identity_readout(jnp.asarray(x_seq)), x_seq)


@pytest.mark.parametrize("kind", ["lif", "if"])
@pytest.mark.parametrize("surrogate", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"reset{c.v_reset}-detach{c.detach_reset}")
def test_multistep_spikes_equals_unroll_values_and_gradient(kind, surrogate, cfg):
    """The hand-written backward pass through time equals autodiff of the scan."""
    import dataclasses

    cfg = dataclasses.replace(cfg, surrogate=surrogate, alpha=None if surrogate != cfg.surrogate else cfg.alpha)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(0.8, 1.2, size=(6, 5, 7)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    ref = mj.neuron_unroll(x, cfg, kind).spikes
    got = jax.jit(lambda x: spiking.multistep_spikes(x, cfg, kind))(x)
    assert 0 < float(ref.mean()) < 1, "input must exercise both spikes and resets"
    np.testing.assert_array_equal(got, ref)
    g_ref = jax.grad(lambda x: (w * mj.neuron_unroll(x, cfg, kind).spikes).sum())(x)
    g_got = jax.jit(jax.grad(lambda x: (w * spiking.multistep_spikes(x, cfg, kind)).sum()))(x)
    assert float(jnp.abs(g_ref).max()) > 0
    np.testing.assert_allclose(g_got, g_ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(g_ref).max()))
    # lif / if_neuron are this function.
    fn = mj.lif if kind == "lif" else mj.if_neuron
    np.testing.assert_array_equal(fn(x, cfg), ref)


def test_multistep_spikes_with_traced_constants_takes_the_scan():
    """Per-member constants under vmap (a sweep) give the same spikes and gradients as concrete ones."""
    x = jnp.asarray(np.random.default_rng(4).normal(0.8, 1.0, size=(5, 9)).astype(np.float32))
    taus = jnp.array([1.5, 2.0, 4.0])

    def loss(x, tau):
        return (jnp.arange(9.0) * mj.lif(x, mj.NeuronConfig(tau=tau))).sum()

    vmapped = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0))(x, taus)
    for i, tau in enumerate([1.5, 2.0, 4.0]):
        val, grad = jax.value_and_grad(loss)(x, tau)
        np.testing.assert_allclose(vmapped[0][i], val, rtol=1e-6)
        np.testing.assert_allclose(vmapped[1][i], grad, rtol=1e-5, atol=1e-6)


def test_detach_reset_changes_only_gradient():
    x = jnp.linspace(0.5, 3.0, 12).reshape(4, 3)
    attached = mj.NeuronConfig()
    detached = mj.NeuronConfig(detach_reset=True)

    def loss(x, cfg):
        return mj.neuron_unroll(x, cfg, "lif").membrane.sum()

    np.testing.assert_array_equal(mj.lif(x, attached), mj.lif(x, detached))
    g_att, g_det = jax.grad(loss)(x, attached), jax.grad(loss)(x, detached)
    assert np.all(np.isfinite(g_att)) and np.all(np.isfinite(g_det))
    assert not np.allclose(g_att, g_det)


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=12),
    tau=st.floats(1.0, 10.0),
    v_th=st.floats(0.1, 3.0),
    v_reset=st.floats(-1.0, 0.0),
    kind=st.sampled_from(["lif", "if"]),
)
def test_property_spikes_binary_and_hard_reset(x, tau, v_th, v_reset, kind):
    cfg = mj.NeuronConfig(tau=tau, v_threshold=v_th, v_reset=v_reset)
    trace = mj.neuron_unroll(jnp.asarray(x, jnp.float32)[:, None], cfg, kind)
    s, v = np.asarray(trace.spikes), np.asarray(trace.membrane)
    assert set(np.unique(s)) <= {0.0, 1.0}
    # atol: XLA:CPU flushes subnormals to zero in fused (unrolled) code, so a
    # subnormal v_reset such as -1e-45 comes back as 0.
    np.testing.assert_allclose(v[s == 1], np.float32(v_reset), atol=np.finfo(np.float32).tiny)
    # Below threshold after every step that did not spike.
    assert np.all(v[s == 0] < np.float32(v_th) + 1e-6)


@settings(max_examples=25, deadline=None)
@given(
    x=st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=12),
    v_th=st.floats(0.1, 3.0),
)
def test_property_soft_reset_subtracts_threshold(x, v_th):
    cfg = mj.NeuronConfig(v_threshold=v_th, v_reset=None)
    _, s0 = spiking.neuron_step(jnp.zeros(()), jnp.asarray(x[0], jnp.float32), cfg, "if")
    trace = mj.neuron_unroll(jnp.asarray(x, jnp.float32), cfg, "if")
    assert float(s0) == float(trace.spikes[0])
    v_prev = 0.0
    for xt, st_, vt in zip(x, np.asarray(trace.spikes), np.asarray(trace.membrane)):
        h = np.float32(v_prev) + np.float32(xt)
        assert st_ == (1.0 if h - np.float32(v_th) >= 0 else 0.0)
        np.testing.assert_allclose(vt, h - np.float32(v_th) * st_, rtol=1e-5, atol=1e-5)
        v_prev = vt


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mj.lif(jnp.zeros((0, 3))), r"time-major \[T, \.\.\.\] with T >= 1"),
        (lambda: mj.lif(jnp.zeros(())), r"time-major"),
        (lambda: mj.neuron_unroll(jnp.zeros((2, 3)), kind="adex"), "unknown neuron kind 'adex'"),
        (lambda: mj.NeuronConfig(tau=0.5), "tau must be >= 1"),
        (lambda: mj.NeuronConfig(v_threshold=0.0, v_reset=0.0), "must be below v_threshold"),
        (lambda: mj.decode_time(jnp.zeros((2, 3)), "median"), "unknown decode 'median'"),
        (lambda: mj.spike(jnp.zeros(3, jnp.int32)), "floating input"),
        (lambda: mj.lif(jnp.zeros((2, 3), jnp.int32)), "neuron inputs must be floating"),
        (lambda: spiking.multistep_spikes(jnp.zeros((2, 3)), kind="adex"), "unknown neuron kind 'adex'"),
    ],
)
def test_bad_input_raises_with_expectation(call, message):
    with pytest.raises(ValueError, match=message):
        call()
