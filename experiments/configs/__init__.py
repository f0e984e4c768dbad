"""Run presets for experiments/train_atari.py (``--preset=NAME``)."""

from experiments.configs.presets import PRESETS, apply_overrides, get_preset

__all__ = ["PRESETS", "apply_overrides", "get_preset"]
