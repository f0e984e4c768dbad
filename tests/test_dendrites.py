"""Tests of mtspark_jax.nn.dendrites against direct NumPy formulas."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mtspark_jax as mj


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_per_neuron(segments, context, selection):
    batch, units = context.shape[0], segments.shape[0]
    out = np.zeros((batch, units))
    for b in range(batch):
        for i in range(units):
            acts = segments[i] @ context[b]
            if selection == "abs_max":
                chosen = acts[np.argmax(np.abs(acts))]
            else:
                chosen = acts.max()
            out[b, i] = _sigmoid(chosen)
    return out


class TestGates(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_per_neuron_equals_numpy(self):
        rng = np.random.default_rng(0)
        segments = rng.normal(size=(7, 4, 3)).astype(np.float32)
        context = rng.normal(size=(5, 3)).astype(np.float32)
        for selection in ["abs_max", "max"]:
            gate = self.variant(lambda s, c, sel=selection: mj.per_neuron_gate(s, c, sel))
            np.testing.assert_allclose(
                gate(segments, context), _numpy_per_neuron(segments, context, selection), rtol=1e-5
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_layer_shared_equals_numpy(self):
        rng = np.random.default_rng(1)
        table = rng.normal(size=(3, 6)).astype(np.float32)
        context = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
        gate = self.variant(mj.layer_shared_gate)(table, context)
        ref = _sigmoid((context @ table).max(axis=1, keepdims=True))
        chex.assert_shape(gate, (4, 1))
        np.testing.assert_allclose(gate, ref, rtol=1e-6)


def test_abs_max_keeps_sign():
    acts = jnp.array([[0.5, -2.0, 1.0], [0.1, 0.2, -0.05]])
    np.testing.assert_allclose(mj.select_segment(acts, "abs_max"), [-2.0, 0.2])
    np.testing.assert_allclose(mj.select_segment(acts, "max"), [1.0, 0.2])


@pytest.mark.parametrize("formulation", ["per_neuron", "layer_shared"])
def test_different_contexts_give_different_gates(formulation):
    module = mj.DendriticGate(units=16, num_segments=3, formulation=formulation)
    ctx = jnp.eye(3)
    params = module.init(jax.random.PRNGKey(0), ctx)
    gates = module.apply(params, ctx)
    assert gates.shape == ((3, 16) if formulation == "per_neuron" else (3, 1))
    assert np.all((gates > 0) & (gates < 1))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.allclose(gates[a], gates[b])


def test_segment_gradient_reaches_selected_segment_only():
    segments = jnp.array([[[1.0, 0.0], [-3.0, 0.5]]])  # one unit, two segments, d_c=2
    ctx = jnp.array([[1.0, 0.0]])  # activations [1, -3]: abs_max picks segment 1
    g = jax.grad(lambda s: mj.per_neuron_gate(s, ctx).sum())(segments)
    assert g[0, 0].sum() == 0.0
    assert g[0, 1, 0] != 0.0 and g[0, 1, 1] == 0.0


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    k_frac=st.floats(0.0, 1.0),
    batch=st.integers(1, 4),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kwta_keeps_exactly_k(n, k_frac, batch, ties, seed):
    k = max(1, int(round(k_frac * n)))
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 3, size=(batch, n)) if ties else rng.uniform(0.1, 1.0, size=(batch, n))
    x = jnp.asarray(x, jnp.float32)
    out = np.asarray(mj.kwta(x, k))
    assert np.all((out != 0).sum(axis=-1) == k)
    # The survivors are the k largest values.
    for row_in, row_out in zip(np.asarray(x), out):
        kept = np.sort(row_out[row_out != 0])
        np.testing.assert_allclose(kept, np.sort(row_in)[-k:])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mj.kwta(jnp.ones((2, 4)), 5), r"1 <= k <= 4"),
        (lambda: mj.per_neuron_gate(jnp.ones((4, 3)), jnp.ones((2, 3))), r"\[units, s, d_c\]"),
        (lambda: mj.per_neuron_gate(jnp.ones((4, 2, 3)), jnp.ones((2, 5))), r"context must be \[B, 3\]"),
        (lambda: mj.layer_shared_gate(jnp.ones((3, 2)), jnp.ones((2, 4))), r"context must be \[B, 3\]"),
        (lambda: mj.select_segment(jnp.ones((2, 3)), "min"), "unknown selection 'min'"),
        (
            lambda: mj.DendriticGate(4, 2, "dendritic").init(jax.random.PRNGKey(0), jnp.ones((1, 3))),
            "unknown dendrite formulation",
        ),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
