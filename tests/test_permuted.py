"""Tests for permuted MNIST: the permuted data set, the dendritic spiking MLP, the continual loop."""

import dataclasses
import json
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtspark_jax.vision import data
from mtspark_jax.vision import permuted as pm

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# The data set.


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), num_tasks=st.integers(1, 6))
def test_permutations_are_deterministic_true_permutations(seed, num_tasks):
    perms = pm.task_permutations(seed, num_tasks)
    assert perms.shape == (num_tasks, pm.NUM_PIXELS) and perms.dtype == np.int32
    np.testing.assert_array_equal(perms, pm.task_permutations(seed, num_tasks))
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(pm.NUM_PIXELS))
    # More tasks from the same seed extend the list: task t is the same whatever num_tasks.
    np.testing.assert_array_equal(pm.task_permutations(seed, num_tasks + 1)[:num_tasks], perms)


def test_permutations_differ_across_tasks_and_seeds_and_task0_is_permuted():
    perms = pm.task_permutations(0, 3)
    assert not np.array_equal(perms[0], perms[1]) and not np.array_equal(perms[1], perms[2])
    assert not np.array_equal(perms[0], np.arange(pm.NUM_PIXELS))  # documented: no identity task
    assert not np.array_equal(perms, pm.task_permutations(1, 3))


def test_permuted_splits_move_pixels_and_keep_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 5)
    perms = pm.task_permutations(3, 2)
    splits = pm.permuted_splits((images, labels), perms)
    flat = images.reshape(5, -1)
    for perm, (x, y) in zip(perms, splits):
        assert x.shape == (5, pm.NUM_PIXELS) and x.dtype == np.uint8
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x, flat[:, perm])  # out[:, j] = in[:, perm[j]]
        inverse = np.argsort(perm)
        np.testing.assert_array_equal(x[:, inverse], flat)  # nothing lost
    with pytest.raises(ValueError, match="permutation must be"):
        pm.permute_images(images, np.arange(10))


def test_bad_values_raise():
    with pytest.raises(ValueError, match="num_tasks"):
        pm.task_permutations(0, 0)
    with pytest.raises(ValueError, match="context"):
        pm.PermutedConfig(context="label")
    with pytest.raises(ValueError, match="units"):
        pm.PermutedConfig(units="tanh")
    with pytest.raises(ValueError, match="weight_sparsity"):
        pm.PermutedConfig(weight_sparsity=1.0)
    with pytest.raises(ValueError, match="context_density"):
        pm.PermutedConfig(context_density=0.0)
    with pytest.raises(ValueError, match="neuron_kind"):
        pm.PermutedConfig(neuron_kind="izhikevich")
    with pytest.raises(ValueError, match="spiking_init"):
        pm.PermutedConfig(spiking_init="orthogonal")
    with pytest.raises(ValueError, match="init_spike_rate"):
        pm.PermutedConfig(init_spike_rate=0.0)
    with pytest.raises(ValueError, match="surrogate_alpha"):
        pm.PermutedConfig(surrogate_alpha=-1.0)
    with pytest.raises(ValueError, match="recipe"):
        pm.preset("nupic")
    with pytest.raises(ValueError, match="variant"):
        pm.preset("numenta", "xdg")
    with pytest.raises(ValueError, match="kwta_fraction"):
        pm.PermutedConfig(kwta_fraction=0.0)
    with pytest.raises(ValueError, match="context_scale"):
        pm.PermutedConfig(context_scale=0.0)
    with pytest.raises(ValueError, match="width"):
        pm.PermutedConfig(width=0)


# ---------------------------------------------------------------------------
# The network.

TINY = dict(num_tasks=2, width=32, kwta_fraction=0.25, time_steps=3, batch_size=16, eval_batch_size=24)


class TestNetwork(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_gates_and_kwta(self):
        config = pm.PermutedConfig(**TINY)
        net = config.network()
        x = jax.random.uniform(jax.random.key(1), (6, 20))
        ctx = jax.nn.one_hot(jnp.array([0, 1, 0, 1, 0, 1]), 2)
        params = net.init(jax.random.key(0), x, ctx)["params"]
        assert params["gate0"]["segments"].shape == (32, 2, 2)  # [units, one segment per task, d_c]
        logits, inter = self.variant(lambda p, x, c: net.apply({"params": p}, x, c, mutable=["intermediates"]))(
            params, x, ctx)
        chex.assert_shape(logits, (6, pm.NUM_CLASSES))
        inter = inter["intermediates"]
        chex.assert_shape(inter["gate0_out"][0], (6, 32))
        for layer in ("activity0", "activity1"):
            assert float(inter[layer][0].max()) <= 1.0  # spikes per step
        # Layer 0 sees a constant current: the same k = 8 winners at every step, so at most 8 units fire.
        assert int((inter["activity0"][0] > 0).sum(-1).max()) <= config.k
        assert float(inter["activity0"][0].sum()) > 0  # the init gain makes the winners fire

    def test_zero_context_gates_half_and_nodendrites_has_no_gates(self):
        config = pm.PermutedConfig(**TINY)
        net = config.network()
        x = jnp.ones((2, 20))
        params = net.init(jax.random.key(0), x, jnp.zeros((2, 2)))["params"]
        _, inter = net.apply({"params": params}, x, jnp.zeros((2, 2)), mutable=["intermediates"])
        np.testing.assert_allclose(inter["intermediates"]["gate1_out"][0], 0.5)
        bare = pm.PermutedConfig(**TINY, dendrites=False).network()
        assert set(bare.init(jax.random.key(0), x, jnp.zeros((2, 2)))["params"]) == {"fc0", "fc1", "readout"}


def test_layer_activity_and_usage_overlap():
    config = pm.PermutedConfig(**TINY, context_scale=20.0)
    state = pm.create_train_state(config, jax.random.key(0), 20)
    images = jax.random.randint(jax.random.key(1), (24, 20), 0, 256).astype(jnp.uint8)
    acts = [pm.layer_activity(config, state.variables, images, jnp.eye(2)[t]) for t in range(2)]
    for name in ("activity0", "active0", "gate0_out", "activity1", "active1", "gate1_out"):
        chex.assert_shape(acts[0][name], (32,))
    assert float(acts[0]["active0"].sum()) <= config.k + 1e-6  # layer 0: at most k winners per image
    # Scale 20 makes the initial gates nearly 0 or 1, different per task.
    gates = np.asarray(acts[0]["gate0_out"])
    assert np.mean((gates < 0.1) | (gates > 0.9)) > 0.8
    assert np.mean((gates > 0.5) != (np.asarray(acts[1]["gate0_out"]) > 0.5)) > 0.2
    assert pm.usage_overlap([1, 0, 2], [1, 0, 2]) == 1.0 and pm.usage_overlap([1, 0], [0, 1]) == 0.0
    assert pm.usage_overlap([1, 1], [1, 0]) == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# Numenta's recipe: ReLU units, fixed weight masks, prototype contexts.


def test_numenta_recipe_and_its_rows():
    ad = pm.preset("numenta")
    assert (ad.width, ad.num_layers, ad.k, ad.units, ad.weight_sparsity) == (2048, 2, 102, "relu", 0.5)
    assert (ad.learning_rate, ad.batch_size, ad.epochs_per_task, ad.num_tasks) == (5e-4, 256, 3, 10)
    assert ad.context == "prototype" and ad.context_dim() == pm.NUM_PIXELS and ad.infers_context
    assert ad.variant == "dendrites_prototype"
    assert pm.preset("numenta", "kwta_only").variant == "kwta_only"
    assert pm.preset("numenta", "ad_only").variant == "dendrites_prototype_nokwta"
    mlp = pm.preset("numenta", "mlp")
    assert mlp.variant == "mlp" and mlp.weight_sparsity == 0.0 and not mlp.infers_context
    tuned = pm.preset("numenta", "mlp_tuned")  # Numenta's THREE_LAYER_MLP_10
    assert tuned.variant == "mlp" and (tuned.learning_rate, tuned.epochs_per_task, tuned.relu_density) == (3e-6, 5, 0.5)
    assert dataclasses.replace(tuned, learning_rate=mlp.learning_rate, epochs_per_task=3, relu_density=1.0) == mlp
    assert pm.preset() == pm.PermutedConfig()


@pytest.mark.parametrize("normalize", [False, True])
def test_prototype_context_is_the_mean_training_image_of_each_permuted_task(normalize):
    config = pm.PermutedConfig(context="prototype", normalize=normalize, num_tasks=3)
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    perms = pm.task_permutations(1, 3)
    contexts = pm.task_contexts(config, images, perms)
    assert contexts.shape == (3, pm.NUM_PIXELS) and contexts.dtype == np.float32
    for t in range(3):
        task_pixels = pm.permute_images(images, perms[t]).astype(np.float64) / 255.0
        if normalize:
            task_pixels = (task_pixels - 0.13062755) / 0.30810780
        np.testing.assert_allclose(contexts[t], task_pixels.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(contexts[0], contexts[1])


def test_nearest_context_picks_the_closest_of_the_valid_rows():
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(3, 10)).astype(np.float32)
    x = jnp.asarray(np.repeat(protos, 2, axis=0) + 0.05 * rng.normal(size=(6, 10)).astype(np.float32))
    np.testing.assert_array_equal(pm.nearest_context(x, protos, jnp.ones(3, bool)), [0, 0, 1, 1, 2, 2])
    seen_two = np.asarray(pm.nearest_context(x, protos, jnp.array([True, True, False])))
    np.testing.assert_array_equal(seen_two[:4], [0, 0, 1, 1])
    assert not np.any(seen_two == 2)


def _numpy_forward(config, params, masks, x, context, index, num_layers=None):
    """Reference ReLU forward in float64: masked Dense, abs-max dendritic gate, kWTA (or ReLU).
    With ``num_layers``, returns that many hidden layers' output instead of the logits."""
    def dense(name, h):
        w = np.asarray(params[name]["kernel"], np.float64)
        if masks:
            w = w * np.asarray(masks[name]["kernel"])
        return h @ w + np.asarray(params[name]["bias"], np.float64)

    h = np.asarray(x, np.float64)
    for layer in range(config.num_layers if num_layers is None else num_layers):
        a = dense(f"fc{layer}", h)
        if config.dendrites:
            segments = np.asarray(params[f"gate{layer}"]["segments"], np.float64)  # [units, segments, d_c]
            act = np.einsum("usd,cd->cus", segments, np.asarray(context, np.float64))
            chosen = np.take_along_axis(act, np.abs(act).argmax(-1)[..., None], -1)[..., 0]  # sign kept
            gate = 1.0 / (1.0 + np.exp(-chosen))
            a = a * (gate if index is None else gate[np.asarray(index)])
        if config.kwta:
            winners = np.argsort(-a, axis=-1)[:, : config.k]
            h = np.zeros_like(a)
            np.put_along_axis(h, winners, np.take_along_axis(a, winners, -1), -1)
        else:
            h = np.maximum(a, 0.0)
    return h if num_layers is not None else dense("readout", h)


@pytest.mark.parametrize("variant,per_sample", [("ad_kwta", False), ("ad_kwta", True), ("kwta_only", False),
                                                ("ad_only", True), ("mlp", False), ("mlp_tuned", False)])
def test_relu_forward_matches_numpy(variant, per_sample):
    config = dataclasses.replace(pm.preset("numenta", variant), width=16, kwta_fraction=0.25, num_tasks=3)
    net = config.network()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, 12)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(3 if per_sample else 1, 12)), jnp.float32)
    index = jnp.asarray(rng.integers(0, 3, 5)) if per_sample else None
    variables = net.init(jax.random.key(0), x, context[:1])
    masks = variables.get("masks", {})
    assert bool(masks) == (config.weight_sparsity > 0)
    logits = jax.jit(net.apply)(variables, x, context, index)
    np.testing.assert_allclose(logits, _numpy_forward(config, variables["params"], masks, x, context, index),
                               rtol=1e-4, atol=1e-5)
    # Numenta's init: U(-b, b), b = 1 / sqrt(input density * weight density * fan_in).
    density = 1 - config.weight_sparsity
    assert np.abs(variables["params"]["fc0"]["kernel"]).max() <= 1 / np.sqrt(density * 12)
    readout_bound = 1 / np.sqrt((config.k / 16 if config.kwta else config.relu_density) * density * 16)
    assert np.abs(variables["params"]["readout"]["kernel"]).max() <= readout_bound


@pytest.mark.parametrize("time_steps,threshold,rate", [(4, 1.0, 1.0), (8, 0.5, 0.25)])
def test_if_soft_reset_units_are_a_quantised_clipped_relu(time_steps, threshold, rate):
    config = dataclasses.replace(pm.preset("numenta", "ad_kwta"), width=16, kwta_fraction=0.25, num_tasks=3,
                                 units="spiking", neuron_kind="if", soft_reset=True, spiking_init="fan_in",
                                 time_steps=time_steps, v_threshold=threshold, init_spike_rate=rate)
    net = config.network()
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(6, 12)) * 3, jnp.float32)
    context = jnp.asarray(rng.normal(size=(1, 12)), jnp.float32)
    variables = net.init(jax.random.key(0), x, context)
    _, inter = jax.jit(lambda v: net.apply(v, x, context, mutable=["intermediates"]))(variables)
    activity = np.asarray(inter["intermediates"]["activity0"][0])  # [B, width], spikes per step
    # The first layer's current is constant over the T steps: an IF unit with soft
    # reset fires min(T, floor(T * I / threshold)) times (the kWTA's losers: I = 0).
    current = _numpy_forward(config, variables["params"], variables["masks"], x, context, None, num_layers=1)
    expected = np.clip(np.floor(time_steps * current / threshold), 0, time_steps) / time_steps
    np.testing.assert_allclose(activity, expected, atol=1e-6)
    assert 0 < np.mean((activity > 0) & (activity < 1)), "some winners fire at graded rates"
    # The second layer's init bound counts the inputs that spike at a step: k / width * rate of them.
    bound = 1 / np.sqrt(config.k / 16 * rate * (1 - config.weight_sparsity) * 16)
    kernel = np.abs(np.asarray(variables["params"]["fc1"]["kernel"]))
    assert 0.7 * bound < kernel.max() <= bound


@pytest.mark.parametrize("on_mean", [False, True])
def test_kwta_on_mean_keeps_one_set_of_winners_per_image(on_mean):
    config = dataclasses.replace(pm.preset("numenta", "ad_kwta"), width=32, kwta_fraction=0.125, num_tasks=3,
                                 units="spiking", neuron_kind="if", soft_reset=True, spiking_init="fan_in",
                                 time_steps=8, v_threshold=1.0, kwta_on_mean=on_mean)
    net = config.network()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 12)), jnp.float32)
    context = jnp.ones((1, 12), jnp.float32)
    variables = net.init(jax.random.key(0), x, context)
    _, inter = net.apply(variables, x, context, mutable=["intermediates"])
    # Units that fired at any step, per image, in the second layer (its current changes over the steps).
    fired = (np.asarray(inter["intermediates"]["activity1"][0]) > 0).sum(-1)
    if on_mean:
        assert fired.max() <= config.k
    else:
        assert fired.max() > config.k  # per-step winners differ from step to step


def test_neuron_flags_reach_the_neuron_config():
    assert pm.PermutedConfig(surrogate_alpha=2.0).neuron.surrogate_alpha == 2.0
    assert pm.PermutedConfig().neuron.surrogate_alpha == 4.0  # sigmoid's default
    assert pm.PermutedConfig(soft_reset=True).neuron.v_reset is None
    assert pm.PermutedConfig().neuron.v_reset == 0.0


@pytest.mark.parametrize("units", ["relu", "spiking"])
def test_energy_per_image_counts_events_times_outgoing_synapses(units):
    config = dataclasses.replace(pm.preset("numenta", "ad_kwta"), width=16, kwta_fraction=0.25, num_tasks=3,
                                 units=units, time_steps=3, init_gain=5.0)
    state = pm.create_train_state(config, jax.random.key(0), 12)
    images = jax.random.randint(jax.random.key(1), (20, 12), 0, 256).astype(jnp.uint8)
    context = jnp.asarray(np.random.default_rng(2).normal(size=12), jnp.float32)
    e = pm.energy_per_image(config, state.variables, pm.layer_activity(config, state.variables, images, context))
    # Independent count: per image, units with output (spikes over T) times their non-zero outgoing weights.
    _, inter = config.network().apply(state.variables, pm.pixels(config, images), context[None],
                                      mutable=["intermediates"])
    masks = state.variables["masks"]
    out_synapses = [np.asarray(masks[name]["kernel"]).sum(axis=1) for name in ("fc1", "readout")]
    events = 0.0
    for layer in range(2):
        (act,) = inter["intermediates"][f"activity{layer}"]
        per_image = np.asarray(act) * 3 if units == "spiking" else (np.asarray(act) > 0).astype(np.float64)
        assert per_image.sum() > 0
        events += float((per_image @ out_synapses[layer]).mean())
    assert e["event_ops"] == pytest.approx(events, rel=1e-5)
    # 50 % of each unit's inputs are cut: fc0 16 x 6, fc1 16 x 8, readout 10 x 8 synapses.
    assert e["first_layer_macs"] == 96 and e["dense_macs"] == 96 + 128 + 80
    assert e["dendrite_macs"] == 2 * 16 * 3 * 12
    e_event = 0.9 if units == "spiking" else 4.6
    assert e["energy_uJ"] == pytest.approx((96 * 4.6 + events * e_event) * 1e-6, rel=1e-5)
    assert e["dense_energy_uJ"] == pytest.approx(304 * 4.6e-6)
    if units == "relu":  # kWTA: at most k = 4 non-zero units per layer
        assert 0 < e["spike_rate/fc0"] <= 4 / 16 + 1e-6


RELU_TINY = dict(num_tasks=2, width=32, kwta_fraction=0.25, batch_size=16, eval_batch_size=16, units="relu",
                 weight_sparsity=0.5, context="prototype", context_scale=1.0, normalize=True, learning_rate=1e-2)


def test_weight_masks_keep_their_sparsity_through_training():
    config = pm.PermutedConfig(**RELU_TINY)
    state = pm.create_train_state(config, jax.random.key(0), 20)
    masks = {name: np.asarray(m["kernel"]) for name, m in state.masks.items()}
    kernels0 = {name: np.asarray(state.params[name]["kernel"]) for name in masks}
    assert set(masks) == {"fc0", "fc1", "readout"}
    for name, m in masks.items():
        np.testing.assert_array_equal((m == 0).sum(axis=0), round(0.5 * m.shape[0]))  # the same count per unit
        assert not np.array_equal(m[:, 0], m[:, 1])  # each unit its own inputs
        assert np.all(kernels0[name][m == 0] == 0) and np.all(kernels0[name][m == 1] != 0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 20), dtype=np.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 64))
    context = jnp.asarray(pm.task_contexts(config, images, pm.task_permutations(0, 2, 20)))[0]
    for epoch in range(2):  # 8 Adam steps
        state, _ = pm.train_epoch(config, state, jnp.asarray(images), labels, context, jax.random.key(epoch))
    for name, m in masks.items():
        np.testing.assert_array_equal(state.masks[name]["kernel"], m)
        kernel = np.asarray(state.params[name]["kernel"])
        assert np.all(kernel[m == 0] == 0)  # the cut weights stay zero,
        assert np.mean(kernel[m == 1] != kernels0[name][m == 1]) > 0.3  # the others learn,
    # and the cut weights would have no effect even if they were not zero: the forward pass masks them.
    filled = {name: dict(p) for name, p in state.params.items()}
    for name, m in masks.items():
        filled[name]["kernel"] = filled[name]["kernel"] + 5.0 * (1 - m)
    x, ctx, apply = pm.pixels(config, jnp.asarray(images)), context[None], jax.jit(config.network().apply)
    np.testing.assert_allclose(apply({"params": filled, "masks": state.masks}, x, ctx),
                               apply(state.variables, x, ctx), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Learning: the context is necessary.


def _conflicting_task(rng, n):
    """Task 0: label = which half of 16 pixels is brighter; task 1: the other label, same images."""
    x = rng.integers(0, 120, (n, 16)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    for i, c in enumerate(y):
        x[i, 8 * c : 8 * c + 8] += 120
    return x, y.astype(np.int32)


def _train_two_tasks(context, epochs=15):
    """Task 0 then task 1 (continual) on the same images with opposite labels; test accuracy of both."""
    config = pm.PermutedConfig(context=context, width=64, kwta_fraction=0.1, num_tasks=2, time_steps=2,
                               batch_size=32, eval_batch_size=256, learning_rate=3e-3)
    rng = np.random.default_rng(0)
    (x, y), (xt, yt) = _conflicting_task(rng, 256), _conflicting_task(rng, 256)
    labels = [jnp.asarray(y), jnp.asarray(1 - y)]
    contexts = jnp.asarray(pm.task_contexts(config, x, pm.task_permutations(0, 2, 16)))
    state = pm.create_train_state(config, jax.random.key(0), 16)
    for task in range(2):
        for epoch in range(epochs):
            state, _ = pm.train_epoch(config, state, jnp.asarray(x), labels[task], contexts[task],
                                      jax.random.key(100 * task + epoch))
    return [float(pm.evaluate(config, state.variables, jnp.asarray(xt), jnp.asarray(yt if t == 0 else 1 - yt),
                              contexts, jnp.int32(t), jnp.int32(2))) for t in range(2)]


def test_context_is_necessary_for_conflicting_tasks():
    on, off = _train_two_tasks("task"), _train_two_tasks("zero")
    assert off[1] >= 0.9 and off[0] <= 0.1  # without context, task 1 overwrote task 0
    assert on[1] >= 0.9 and on[0] >= 0.75  # with it, task 0 survives task 1
    assert np.mean(on) >= np.mean(off) + 0.2


# ---------------------------------------------------------------------------
# The continual loop and the launcher.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An MNIST look-alike (IDX, 64 train / 48 test), prepared with TFDS: class = the bright half."""
    root = tmp_path_factory.mktemp("pmnist")
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir()
    for split, n in (("train", 64), ("test", 48)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, :, 14 * y : 14 * y + 14] = 220
        img_stem, lbl_stem = data.IDX_FILES[split]
        data.write_idx(src / f"{img_stem}.gz", images)
        data.write_idx(src / f"{lbl_stem}.gz", labels.astype(np.uint8))
    data.prepare("mnist", root / "tfds", src)
    return root / "tfds"


def _run_launcher(argv: list[str], monkeypatch) -> dict:
    """Runs experiments/permuted_mnist.py's main with ``argv`` (every other flag at its default); its summary."""
    sys.path.insert(0, str(ROOT))
    from absl import flags

    from experiments import permuted_mnist

    monkeypatch.setattr(sys, "argv", argv)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    permuted_mnist.main(argv[:1])
    workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
    return json.loads((Path(workdir) / "summary.json").read_text())


def test_launcher_writes_metrics_and_summary(data_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    summary = _run_launcher(
        ["permuted_mnist.py", f"--workdir={workdir}", f"--data_dir={data_dir}", "--num_tasks=2",
         "--epochs_per_task=2", "--width=32", "--kwta_fraction=0.25", "--time_steps=2", "--batch_size=16",
         "--eval_batch_size=20", "--learning_rate=3e-3", "--context=zero", "--seed=3"], monkeypatch)
    assert summary["experiment"] == "permuted_mnist" and summary["variant"] == "dendrites_zero"
    assert summary["recipe"] == "default" and summary["units"] == "spiking"
    assert summary["context"] == "zero" and summary["dendrites"] and summary["seed"] == 3
    assert summary["width"] == 32 and summary["k"] == 8
    assert len(summary["final_accuracies"]) == 2 and [len(r) for r in summary["accuracy_matrix"]] == [1, 2]
    assert summary["mean_accuracy"] == pytest.approx(np.mean(summary["final_accuracies"]))
    assert summary["test_examples"] == 48 and summary["train_examples"] == 64
    for key in ("wall_seconds", "cpu_seconds", "command", "commit"):
        assert key in summary
    assert (workdir / "params.msgpack").stat().st_size > 0
    rows = (workdir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "time,kind,task,epoch,eval_task,loss,accuracy"
    assert len(rows) == 1 + 2 * 2 + (1 + 2)  # 4 epochs, then 1 + 2 tests


NUMENTA_TINY = ["--num_tasks=2", "--epochs_per_task=1", "--width=32", "--batch_size=16", "--eval_batch_size=16",
                "--seed=1"]


def test_run_continual_trains_on_each_tasks_prototype(data_dir):
    config = dataclasses.replace(pm.preset("numenta"), num_tasks=2, epochs_per_task=1, width=32, batch_size=16,
                                 eval_batch_size=16, seed=1)
    train, test = (data.load_split("mnist", split, str(data_dir)) for split in ("train", "test"))
    result = pm.run_continual(config, train, test)
    perms = pm.task_permutations(1, 2)
    for t in range(2):  # the training images' mean (not the test images'), standardised, per permutation
        expected = (pm.permute_images(train[0], perms[t]) / 255.0 - 0.13062755) / 0.30810780
        np.testing.assert_allclose(result["contexts"][t], expected.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert [len(r) for r in result["accuracy_matrix"]] == [1, 2]
    assert all(0.0 <= a <= 1.0 for a in result["final_accuracies"])


def test_launcher_numenta_recipe_writes_the_summary(data_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "numenta"
    argv = ["permuted_mnist.py", f"--workdir={workdir}", f"--data_dir={data_dir}", "--recipe=numenta",
            "--variant=ad_kwta", *NUMENTA_TINY]
    summary = _run_launcher(argv, monkeypatch)
    assert summary["recipe"] == "numenta" and summary["variant"] == "dendrites_prototype" and summary["row"] == "ad_kwta"
    assert summary["units"] == "relu" and summary["kwta"] and summary["k"] == 2  # 5 % of 32
    config = summary["config"]
    assert (config["width"], config["weight_sparsity"], config["learning_rate"], config["context"]) == (
        32, 0.5, 5e-4, "prototype")
    assert config["infer_context"] and config["normalize"]
    assert [len(r) for r in summary["accuracy_matrix"]] == [1, 2]
    assert summary["final_accuracies"] == summary["accuracy_matrix"][-1]
    assert summary["mean_accuracy"] == pytest.approx(np.mean(summary["final_accuracies"]))
    assert summary["wall_seconds"] > 0 and summary["cpu_seconds"] > 0
    assert set(summary["machine"]) == {"cpu", "cores", "backend", "device"}
    assert "--recipe=numenta" in summary["command"] and summary["commit"]
    from flax import serialization
    saved = serialization.msgpack_restore((workdir / "params.msgpack").read_bytes())
    assert set(saved) == {"params", "masks"} and saved["masks"]["fc0"]["kernel"].shape == (pm.NUM_PIXELS, 32)
    from absl import flags
    with pytest.raises(flags.IllegalFlagValueError, match="variant"):
        _run_launcher(argv[:3] + ["--variant=xdg"], monkeypatch)


def test_launcher_resumes_after_a_kill_with_the_uninterrupted_result(data_dir, tmp_path, monkeypatch):
    from absl import app

    from experiments import permuted_mnist

    def argv(workdir, *extra):
        return ["permuted_mnist.py", f"--workdir={workdir}", f"--data_dir={data_dir}", "--recipe=numenta",
                "--nosave_params", *NUMENTA_TINY, *extra]

    whole = _run_launcher(argv(tmp_path / "whole"), monkeypatch)
    real_save = permuted_mnist.save_checkpoint

    def save_then_die(path, ckpt):  # the process dies right after task 0's checkpoint
        real_save(path, ckpt)
        raise KeyboardInterrupt

    monkeypatch.setattr(permuted_mnist, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run_launcher(argv(tmp_path / "cut"), monkeypatch)
    assert (tmp_path / "cut" / permuted_mnist.CHECKPOINT).exists()
    with pytest.raises(app.UsageError, match="another config"):
        _run_launcher(argv(tmp_path / "cut", "--learning_rate=1e-3"), monkeypatch)
    monkeypatch.setattr(permuted_mnist, "save_checkpoint", real_save)
    resumed = _run_launcher(argv(tmp_path / "cut"), monkeypatch)
    assert resumed["resumed_after_tasks"] == [1] and whole["resumed_after_tasks"] == []
    np.testing.assert_allclose(np.concatenate(resumed["accuracy_matrix"]),
                               np.concatenate(whole["accuracy_matrix"]), rtol=0, atol=1e-6)
    assert not (tmp_path / "cut" / permuted_mnist.CHECKPOINT).exists()
    cut_rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    whole_rows = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()
    strip_time = lambda rows: [r.split(",", 1)[1] for r in rows]  # noqa: E731
    assert strip_time(cut_rows) == strip_time(whole_rows)  # task 0's rows once, then task 1's
    assert len(resumed["load_average"]["start"]) == 3 and len(resumed["load_average"]["end"]) == 3
