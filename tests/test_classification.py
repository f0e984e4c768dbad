"""Tests for the spiking classifier and its train / eval steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtspark_jax.vision import classification as cl
from mtspark_jax.nn import networks
from mtspark_jax.nn.spiking import NeuronConfig

SHAPE = (8, 8, 1)


def _quadrant_task(rng, n, context=None):
    """8x8 noise with one bright quadrant; label = (quadrant + context) % 4."""
    quadrant = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n,) + SHAPE).astype(np.uint8)
    for i, q in enumerate(quadrant):
        r, c = divmod(int(q), 2)
        x[i, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 230
    ctx = np.zeros(n, np.int32) if context is None else context
    return x, ((quadrant + ctx) % 4).astype(np.int32), ctx


def _batch(x, y, ctx, mask=None):
    mask = np.ones(len(y), np.float32) if mask is None else mask
    return cl.device_batch({"image": x, "label": y, "context": ctx, "mask": mask})


def _tiny_net(**kw):
    return networks.SpikingClassifier(num_actions=4, convs=((8, 3, 2),), hidden=32, time_steps=2, **kw)


def _train(net, rng, steps, use_context=True, contextual=False, lr=3e-3):
    state = cl.create_train_state(jax.random.key(0), net, SHAPE, optax.adam(lr))
    for _ in range(steps):
        ctx = rng.integers(0, 2, 32).astype(np.int32) if contextual else None
        state, metrics = cl.train_step(state, _batch(*_quadrant_task(rng, 32, ctx)), use_context)
    return state, metrics


def _accuracy(state, rng, use_context=True, contextual=False):
    ctx = rng.integers(0, 2, 256).astype(np.int32) if contextual else None
    x, y, c = _quadrant_task(rng, 256, ctx)
    m = cl.eval_step(state, _batch(x, y, c), use_context)
    return float(m["correct"] / m["count"])


@pytest.mark.parametrize("batch_norm", [False, True])
def test_tiny_classifier_learns_generated_task(batch_norm):
    rng = np.random.default_rng(0)
    net = _tiny_net(batch_norm=batch_norm, neuron=NeuronConfig(v_threshold=0.5))
    state, metrics = _train(net, rng, 60)
    assert np.isfinite(float(metrics["loss"]))
    assert _accuracy(state, rng) >= 0.9


def test_context_is_needed_for_context_dependent_labels():
    """Label = (quadrant + data-set id) % 4: only the gated network can tell."""
    rng = np.random.default_rng(1)
    net = _tiny_net(batch_norm=True)
    with_ctx, _ = _train(net, rng, 120, use_context=True, contextual=True)
    without, _ = _train(net, rng, 120, use_context=False, contextual=True)
    assert _accuracy(with_ctx, rng, True, True) >= 0.85
    assert _accuracy(without, rng, False, True) <= 0.65


def test_padding_is_masked_out():
    rng = np.random.default_rng(2)
    net = _tiny_net()
    state = cl.create_train_state(jax.random.key(0), net, SHAPE, optax.sgd(0.1))
    x, y, c = _quadrant_task(rng, 8)
    padded_x = np.concatenate([x, np.full((4,) + SHAPE, 255, np.uint8)])
    padded = _batch(padded_x, np.concatenate([y, [3, 3, 3, 3]]).astype(np.int32),
                    np.zeros(12, np.int32), np.r_[np.ones(8), np.zeros(4)].astype(np.float32))
    m_full = cl.eval_step(state, _batch(x, y, c))
    m_pad = cl.eval_step(state, padded)
    assert float(m_pad["count"]) == 8
    np.testing.assert_allclose(float(m_pad["loss_sum"]), float(m_full["loss_sum"]), rtol=1e-5)
    np.testing.assert_allclose(float(m_pad["correct"]), float(m_full["correct"]))


def test_classifier_is_mtspark_ad_with_image_defaults():
    images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    ctx = jnp.array([0, 2])
    clf = networks.SpikingClassifier(convs=((8, 3, 2),), hidden=16)
    ad = networks.MTSparkAD(num_actions=10, convs=((8, 3, 2),), hidden=16, padding="SAME")
    variables = clf.init(jax.random.key(0), images, ctx)
    np.testing.assert_array_equal(clf.apply(variables, images, ctx).q, ad.apply(variables, images, ctx).q)
    assert clf.apply(variables, images, ctx).q.shape == (2, 10)


def test_context_input_ablation_is_zero():
    ids = jnp.array([0, 1, 2])
    np.testing.assert_array_equal(cl.context_input(ids, 3), np.eye(3))
    np.testing.assert_array_equal(cl.context_input(ids, 3, use_context=False), np.zeros((3, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"protocol": "sequential"}, "protocol"), ({"datasets": ("mnist", "svhn")}, "svhn"),
     ({"epochs": 0}, "epochs"), ({"image_shape": (28, 28, 2)}, "image_shape"),
     ({"datasets": ("mnist", "mnist")}, "repeat")],
)
def test_config_validates_at_the_edge(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl.ImageConfig(**kwargs)


def test_stages():
    assert cl.ImageConfig(protocol="joint").stages() == [("mnist", "fashion_mnist")]
    assert cl.ImageConfig(protocol="continual", datasets=("fashion_mnist", "mnist")).stages() == [
        ("fashion_mnist",), ("mnist",)]


def test_memory_subset_is_seeded_and_sized():
    images, labels = np.arange(50).reshape(50, 1) * np.ones((1, 3)), np.arange(50)
    a, b, c = (cl.memory_subset((images, labels), 10, s) for s in (0, 0, 1))
    assert a[0].shape == (10, 3) and len(a[1]) == 10 and len(set(a[1].tolist())) == 10
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(a[0][:, 0], a[1])  # images stay paired with their labels
    assert len(cl.memory_subset((images, labels), 80, 0)[1]) == 50


def test_rehearsal_sets_make_up_the_share_of_a_stage():
    memory = {"mnist": (np.zeros((7, 2, 2, 1), np.uint8), np.arange(7)),
              "fashion_mnist": (np.zeros((3, 2, 2, 1), np.uint8), np.arange(3))}
    sets = cl.rehearsal_sets(memory, new_examples=600, share=0.25)  # 200 memory examples, 100 per set
    assert {n: len(y) for n, (_, y) in sets.items()} == {"mnist": 100, "fashion_mnist": 100}
    np.testing.assert_array_equal(np.bincount(sets["fashion_mnist"][1]), [34, 33, 33])  # cycled in order
    assert cl.rehearsal_sets({}, 600, 0.25) == {}
    with pytest.raises(ValueError, match="share"):
        cl.rehearsal_sets(memory, 600, 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_size": 10}, "continual"), ({"protocol": "continual", "memory_size": -1}, "memory_size"),
    ({"protocol": "continual", "memory_share": 0.0}, "memory_share"), ({"max_shift": -1}, "max_shift"),
    ({"augment_datasets": ("cifar10",)}, "augment_datasets")])
def test_rehearsal_config_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl.ImageConfig(**kwargs)


def test_recalibrated_statistics_are_the_data_sets_own():
    net = _tiny_net(batch_norm=True)
    state = cl.create_train_state(jax.random.key(0), net, SHAPE, optax.adam(1e-3))
    rng = np.random.default_rng(0)
    bright = _batch(*_quadrant_task(rng, 32))
    dark = _batch(np.zeros((32,) + SHAPE, np.uint8) + 20, np.zeros(32, np.int32), np.zeros(32, np.int32))
    # One train-mode pass from zeroed statistics gives 0.1 * the batch's own mean (momentum 0.9).
    zeroed = jax.tree.map(jnp.zeros_like, state.batch_stats)
    one = cl._train_mode_stats(state, zeroed, bright, True)
    own = cl.recalibrate_batch_stats(state.replace(batch_stats=zeroed), [bright] * 100, max_batches=80)
    np.testing.assert_allclose(own["trunk"]["bn0"]["mean"], one["trunk"]["bn0"]["mean"] / 0.1, rtol=1e-3, atol=1e-6)
    other = cl.recalibrate_batch_stats(state.replace(batch_stats=own), [dark] * 80)
    assert not np.allclose(other["trunk"]["bn0"]["mean"], own["trunk"]["bn0"]["mean"], atol=1e-3)
    assert cl.recalibrate_batch_stats(state.replace(batch_stats={}), [bright]) == {}
