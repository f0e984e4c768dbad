"""Named starting points of ``experiments/train_images.py`` (``--preset=NAME``); flags override fields.

* ``default``: :class:`mtspark_jax.vision.classification.ImageConfig`'s defaults
  (32x32x3 inputs, trunk 32:5:2,64:3:2, hidden 256, 3 epochs).
* ``mnist_fashion``: the configuration of RESULTS.md's image summary table,
  joint protocol: MNIST and Fashion-MNIST at 28x28x1, the wider trunk
  64:5:2,128:3:2 with BatchNorm, hidden 512, T = 4, batch 128, Adam 1e-3
  with cosine decay, 4 epochs, every data set evaluated with BatchNorm
  statistics of its own.
* ``mnist_fashion_continual``: the same, continual protocol (MNIST, then
  Fashion-MNIST), with a rehearsed memory of 10k MNIST images (25 % of the
  later stage's batches) and random shifts of up to 2 pixels for MNIST only.

* ``sweep_small``: the default of ``experiments/sweep.py --task=images``:
  MNIST and Fashion-MNIST at 16x16x1 (or generated bar patterns with
  ``--synthetic``), hidden 64, batch 64, 2 epochs on the first 2,048
  training and 1,024 test images of each data set.

``scripts/image_results.sh`` runs ``mnist_fashion`` and
``mnist_fashion_continual`` with the context on and off.
"""

import dataclasses

from mtspark_jax.vision.classification import ImageConfig

IMAGE_PRESETS = {"default": ImageConfig()}
IMAGE_PRESETS["mnist_fashion"] = ImageConfig(
    datasets=("mnist", "fashion_mnist"), protocol="joint", image_shape=(28, 28, 1),
    convs=((64, 5, 2), (128, 3, 2)), hidden=512, time_steps=4, batch_size=128, learning_rate=1e-3, epochs=4,
    task_bn_stats=True)
IMAGE_PRESETS["mnist_fashion_continual"] = dataclasses.replace(
    IMAGE_PRESETS["mnist_fashion"], protocol="continual", memory_size=10_000, memory_share=0.25, max_shift=2,
    augment_datasets=("mnist",))
IMAGE_PRESETS["sweep_small"] = ImageConfig(
    datasets=("mnist", "fashion_mnist"), image_shape=(16, 16, 1), hidden=64, time_steps=4, batch_size=64,
    learning_rate=1e-3, epochs=2, max_train_examples=2048, max_eval_examples=1024)


def get_image_preset(name: str) -> ImageConfig:
    """The named preset; ValueError lists the names for an unknown one."""
    if name not in IMAGE_PRESETS:
        raise ValueError(f"unknown image preset {name!r}; expected one of {sorted(IMAGE_PRESETS)}")
    return IMAGE_PRESETS[name]
