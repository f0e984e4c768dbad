"""Run presets: ``experiments/train_atari.py --preset=NAME`` (presets.py) and
``experiments/train_images.py --preset=NAME`` (images.py)."""

from experiments.configs.images import IMAGE_PRESETS, get_image_preset
from experiments.configs.presets import DEFAULT_PRESET, PRESETS, get_preset
from mtspark_jax.config_flags import apply_overrides

__all__ = ["DEFAULT_PRESET", "IMAGE_PRESETS", "PRESETS", "apply_overrides", "get_image_preset", "get_preset"]
