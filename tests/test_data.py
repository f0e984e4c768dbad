"""Tests for mtspark_jax.vision.data: builders round-trip, loader coverage, missing data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtspark_jax.vision import data


def _random_split(rng, n, shape):
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _write_idx_dir(path, splits):
    path.mkdir()
    for split, (img_stem, lbl_stem) in data.IDX_FILES.items():
        x, y = splits[split]
        data.write_idx(path / f"{img_stem}.gz", x[..., 0])
        data.write_idx(path / f"{lbl_stem}.gz", y)


def _assert_roundtrip(name, source_dir, data_dir, expected):
    data.prepare(name, data_dir, source_dir)
    for split, (x, y) in expected.items():
        got_x, got_y = data.load_split(name, split, data_dir)
        assert got_x.dtype == np.uint8 and got_y.dtype == np.int64
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_builder_roundtrip(tmp_path, name):
    rng = np.random.default_rng(0)
    splits = {"train": _random_split(rng, 23, (28, 28, 1)), "test": _random_split(rng, 7, (28, 28, 1))}
    _write_idx_dir(tmp_path / "src", splits)
    _assert_roundtrip(name, tmp_path / "src", tmp_path / "tfds", splits)


def test_mnist_pickle_builder_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    parts = {s: _random_split(rng, n, (28, 28, 1)) for s, n in (("train", 13), ("valid", 5), ("test", 6))}
    (tmp_path / "src").mkdir()
    data.write_mnist_pickle(tmp_path / "src" / data.MNIST_PICKLE, parts)
    expected = {
        "train": (np.concatenate([parts["train"][0], parts["valid"][0]]),
                  np.concatenate([parts["train"][1], parts["valid"][1]])),
        "test": parts["test"],
    }
    # A file inside the source directory is accepted too.
    _assert_roundtrip("mnist", tmp_path / "src" / data.MNIST_PICKLE, tmp_path / "tfds", expected)


def test_cifar10_builder_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    splits = {"train": _random_split(rng, 17, (32, 32, 3)), "test": _random_split(rng, 4, (32, 32, 3))}
    (tmp_path / "src").mkdir()
    data.write_cifar10_tarball(tmp_path / "src" / data.CIFAR_TARBALL, splits)
    _assert_roundtrip("cifar10", tmp_path / "src", tmp_path / "tfds", splits)


@pytest.mark.parametrize("name", data.DATASETS)
def test_missing_source_fails_with_one_line(tmp_path, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError) as err:
        data.prepare(name, tmp_path / "tfds", tmp_path / "empty")
    msg = str(err.value)
    assert "\n" not in msg and name in msg and "--source_dir" in msg
    assert not (tmp_path / "tfds" / data.builder_name(name) / "1.0.0").exists()


def test_missing_prepared_data_names_the_command(tmp_path):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_split("fashion_mnist", "train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert data.prepare_command("fashion_mnist", tmp_path) in msg


def test_unknown_name_raises_value_error():
    with pytest.raises(ValueError, match="svhn"):
        data.context_id("svhn")


def test_to_common_shape_pads_and_repeats_grey():
    x = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28, 1).astype(np.uint8)
    y = data.to_common_shape(x)
    assert y.shape == (2, 32, 32, 3) and y.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(y[:, 2:30, 2:30, c], x[..., 0])
    assert y[:, :2].sum() == 0 and y[:, 30:].sum() == 0 and y[:, :, :2].sum() == 0


def test_to_common_shape_crops_and_greys_rgb():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    y = data.to_common_shape(x, (28, 28, 1))
    lum = x[:, 2:30, 2:30].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert y.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(y[..., 0], np.rint(lum), atol=1)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    batch=st.integers(1, 16),
    epoch=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_loader_covers_every_example_once_per_epoch(sizes, batch, epoch, seed):
    names = data.DATASETS[: len(sizes)]
    rng = np.random.default_rng(seed)
    sets = {n: _random_split(rng, s, (28, 28, 1)) for n, s in zip(names, sizes)}
    loader = data.Loader(sets, batch, seed=seed, shape=(28, 28, 1))
    seen = {n: [] for n in names}
    batches = list(loader.epoch(epoch))
    assert len(batches) == loader.num_batches()
    for b in batches:
        assert b["image"].shape == (batch, 28, 28, 1) and b["label"].shape == (batch,)
        ctx = int(b["context"][0])
        assert (b["context"] == ctx).all()
        name = data.DATASETS[ctx]
        real = b["mask"] > 0
        assert (b["index"][~real] == -1).all()
        idx = b["index"][real]
        np.testing.assert_array_equal(b["image"][real], sets[name][0][idx])
        np.testing.assert_array_equal(b["label"][real], sets[name][1][idx])
        seen[name] += idx.tolist()
    for n, s in zip(names, sizes):
        assert sorted(seen[n]) == list(range(s))


def test_loader_shuffles_per_epoch_deterministically():
    rng = np.random.default_rng(4)
    sets = {"mnist": _random_split(rng, 50, (28, 28, 1)), "fashion_mnist": _random_split(rng, 50, (28, 28, 1))}
    a = data.Loader(sets, 8, seed=7)
    b = data.Loader(sets, 8, seed=7)
    order = lambda ld, e: [(int(x["context"][0]), x["index"].tolist()) for x in ld.epoch(e)]
    assert order(a, 0) == order(b, 0)
    assert order(a, 0) != order(a, 1)
    assert order(a, 0) != order(data.Loader(sets, 8, seed=8), 0)
    contexts = [c for c, _ in order(a, 0)]
    assert contexts != sorted(contexts)  # the two data sets are interleaved
    unshuffled = data.Loader(sets, 8, shuffle=False)
    assert [i for _, idx in order(unshuffled, 0) for i in idx if i >= 0] == list(range(50)) * 2


def _shift_flip_of(out, src, max_shift):
    """The (dy, dx, flipped) that turns ``src`` [H, W, C] into ``out`` (zero padding), or None."""
    h, w = src.shape[:2]
    padded = np.pad(src, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    for flipped in (False, True):
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                crop = padded[dy : dy + h, dx : dx + w]
                if np.array_equal(crop[:, ::-1] if flipped else crop, out):
                    return dy - max_shift, dx - max_shift, flipped
    return None


def test_augment_shifts_within_bounds_and_flips_only_when_asked():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (64, 9, 7, 2), dtype=np.uint8)  # no zeros: every shift is identifiable
    for flip in (False, True):
        out = data.augment(images, np.random.default_rng(1), 2, flip)
        assert out.shape == images.shape and out.dtype == np.uint8
        found = [_shift_flip_of(o, x, 2) for o, x in zip(out, images)]
        assert all(f is not None for f in found)
        assert {f[2] for f in found} == ({False, True} if flip else {False})
        assert len({f[:2] for f in found}) > 10  # many different shifts
    np.testing.assert_array_equal(data.augment(images, np.random.default_rng(1), 2, True),
                                  data.augment(images, np.random.default_rng(1), 2, True))


def test_loader_augments_training_batches_but_keeps_labels_and_order():
    rng = np.random.default_rng(5)
    sets = {"mnist": _random_split(rng, 40, (12, 12, 1)), "fashion_mnist": _random_split(rng, 40, (12, 12, 1))}
    plain, aug = data.Loader(sets, 8, seed=3, shape=(12, 12, 1)), data.Loader(sets, 8, seed=3, shape=(12, 12, 1),
                                                                              max_shift=2)
    flips = {"mnist": set(), "fashion_mnist": set()}
    changed = 0
    for p, a in zip(plain.epoch(1), aug.epoch(1)):
        for k in ("label", "context", "mask", "index"):
            np.testing.assert_array_equal(p[k], a[k])
        name = data.DATASETS[int(p["context"][0])]
        for x, y in zip(p["image"], a["image"]):
            found = _shift_flip_of(y, x, 2)
            assert found is not None
            flips[name].add(found[2])
            changed += not np.array_equal(x, y)
    assert changed > 40 and flips == {"mnist": {False}, "fashion_mnist": {False, True}}  # digits never flipped
    with pytest.raises(ValueError, match="max_shift"):
        data.Loader(sets, 8, max_shift=-1)


def test_loader_augments_only_the_named_data_sets():
    rng = np.random.default_rng(6)
    sets = {"mnist": _random_split(rng, 40, (12, 12, 1)), "fashion_mnist": _random_split(rng, 40, (12, 12, 1))}
    plain = data.Loader(sets, 8, seed=3, shape=(12, 12, 1))
    only = data.Loader(sets, 8, seed=3, shape=(12, 12, 1), max_shift=2, augment_sets=["mnist"])
    changed = {"mnist": 0, "fashion_mnist": 0}
    for p, a in zip(plain.epoch(0), only.epoch(0)):
        name = data.DATASETS[int(p["context"][0])]
        changed[name] += sum(not np.array_equal(x, y) for x, y in zip(p["image"], a["image"]))
    assert changed["mnist"] > 20 and changed["fashion_mnist"] == 0
    with pytest.raises(ValueError, match="unknown"):
        data.Loader(sets, 8, max_shift=2, augment_sets=["mnsit"])


def test_rl_path_and_image_configs_import_without_tfds(tmp_path):
    """A machine without TFDS (e.g. a GPU image) still runs the RL launcher's imports and builds
    image configs; only preparing or loading image data needs TFDS."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "tensorflow_datasets"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('tensorflow_datasets is not installed here')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("from experiments.configs import get_preset, get_image_preset\n"
            "from mtspark_jax.vision import data\n"
            "get_image_preset('default').network()\n"
            "try:\n    data.builders()\nexcept ImportError as e:\n    print('builders:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "builders: tensorflow_datasets is not installed here" in proc.stdout
