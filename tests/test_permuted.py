"""Tests for permuted MNIST: the permuted data set, the dendritic spiking MLP, the continual loop."""

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
        pm.PermutedConfig(context="prototype")
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
        for layer in ("spike_rate0", "spike_rate1"):
            assert float(inter[layer][0].max()) <= 1.0
        # Layer 0 sees a constant current: the same k = 8 winners at every step, so at most 8 units fire.
        assert int((inter["spike_rate0"][0] > 0).sum(-1).max()) <= config.k
        assert float(inter["spike_rate0"][0].sum()) > 0  # the init gain makes the winners fire

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
    acts = [pm.layer_activity(config, state.params, images, jnp.int32(t)) for t in range(2)]
    for name in ("spike_rate0", "active0", "gate0_out", "spike_rate1", "active1", "gate1_out"):
        chex.assert_shape(acts[0][name], (32,))
    assert float(acts[0]["active0"].sum()) <= config.k + 1e-6  # layer 0: at most k winners per image
    # Scale 20 makes the initial gates nearly 0 or 1, different per task.
    gates = np.asarray(acts[0]["gate0_out"])
    assert np.mean((gates < 0.1) | (gates > 0.9)) > 0.8
    assert np.mean((gates > 0.5) != (np.asarray(acts[1]["gate0_out"]) > 0.5)) > 0.2
    assert pm.usage_overlap([1, 0, 2], [1, 0, 2]) == 1.0 and pm.usage_overlap([1, 0], [0, 1]) == 0.0
    assert pm.usage_overlap([1, 1], [1, 0]) == pytest.approx(0.5)


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
    state = pm.create_train_state(config, jax.random.key(0), 16)
    for task in range(2):
        for epoch in range(epochs):
            state, _ = pm.train_epoch(config, state, jnp.asarray(x), labels[task], jnp.int32(task),
                                      jax.random.key(100 * task + epoch))
    return [float(pm.evaluate(config, state.params, jnp.asarray(xt), jnp.asarray(yt if t == 0 else 1 - yt),
                              jnp.int32(t))) for t in range(2)]


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


def test_launcher_writes_metrics_and_summary(data_dir, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from experiments import permuted_mnist

    workdir = tmp_path / "run"
    argv = ["permuted_mnist.py", f"--workdir={workdir}", f"--data_dir={data_dir}", "--num_tasks=2",
            "--epochs_per_task=2", "--width=32", "--kwta_fraction=0.25", "--time_steps=2", "--batch_size=16",
            "--eval_batch_size=20", "--learning_rate=3e-3", "--context=zero", "--seed=3"]
    monkeypatch.setattr(sys, "argv", argv)
    from absl import flags
    flags.FLAGS(argv)
    permuted_mnist.main(argv[:1])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["experiment"] == "permuted_mnist" and summary["variant"] == "dendrites_zero"
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
