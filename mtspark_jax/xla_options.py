"""Process-wide XLA options that make our CPU programs faster (issue 6).

XLA reads ``XLA_FLAGS`` once, when JAX first creates a backend, and applies
them to the whole process. The library therefore never sets them on import;
the launchers in ``experiments/`` call :func:`use_fast_cpu_convolutions` as
their first step (``--nofast_cpu_convolutions`` turns it off), and a notebook
can call it before its first JAX computation.

What the option does: jax 0.10's XLA:CPU sends every convolution to a YNNPACK
fusion by default. Sending the convolutions back to XLA's Eigen kernels (the
dots stay on YNNPACK) made the MTSpark_ADD train step (batch 32, T = 4) take
74 ms instead of 104 ms on the idle 2-core CPU, with bit-identical outputs on
the benchmark batch (``benchmarks/NOTES.md`` section 2, BENCHMARKS.md). The
flag only concerns CPU programs; GPU and TPU compilations ignore it.
"""

from __future__ import annotations

import os
from typing import MutableMapping

from absl import flags, logging

FAST_CPU_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
"""The XLA flag: YNNPACK fusions minus the individual convolutions."""

TESTED_JAX = ("0.10.",)
"""JAX version prefixes whose XLA knows the flag (an unknown XLA flag aborts the process)."""


def use_fast_cpu_convolutions(environ: MutableMapping[str, str] | None = None) -> bool:
    """Adds :data:`FAST_CPU_CONVOLUTIONS` to ``XLA_FLAGS`` if it can still take effect.

    Args:
      environ: the environment to edit (default ``os.environ``).

    Returns:
      ``True`` when the flag is in ``XLA_FLAGS`` afterwards (added now or
      already there); ``False`` when it was left out: the user's
      ``XLA_FLAGS`` already chooses the YNNPACK fusion types, this JAX
      version is not one the flag was checked with, or ``environ`` is the
      process environment and JAX has already created its backends (the
      flag could no longer take effect, e.g. a launcher's ``main`` called
      from a notebook after other JAX work; a warning says so).
    """
    import jax
    from jax._src import xla_bridge

    live = environ is None or environ is os.environ
    environ = os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "")
    if FAST_CPU_CONVOLUTIONS in current.split():
        return True
    if "--xla_cpu_experimental_ynn_fusion_type" in current or not jax.__version__.startswith(TESTED_JAX):
        return False
    if live and xla_bridge.backends_are_initialized():
        logging.warning("XLA's CPU convolution option is not applied: JAX has already started, and XLA reads "
                        "XLA_FLAGS only once (call mtspark_jax.xla_options.use_fast_cpu_convolutions() first)")
        return False
    environ["XLA_FLAGS"] = f"{current} {FAST_CPU_CONVOLUTIONS}".strip()
    return True


FLAG_NAME = "fast_cpu_convolutions"
"""The launchers' absl flag (default on) that calls :func:`use_fast_cpu_convolutions` first."""


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the boolean absl flag ``--fast_cpu_convolutions`` (default True) for a launcher.

    Does nothing when ``flag_values`` already has it (several launchers imported
    into one process share it).
    """
    if FLAG_NAME in flag_values:
        return
    flags.DEFINE_bool(FLAG_NAME, True, "Before JAX starts, set XLA's faster CPU convolution option "
                      "(mtspark_jax.xla_options; --nofast_cpu_convolutions: XLA's defaults).",
                      flag_values=flag_values)


def apply_flag(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
    """Calls :func:`use_fast_cpu_convolutions` if the flag of :func:`define_flag` is on.

    Call it first in a launcher's ``main``, before any JAX computation.
    Returns whether the option is in ``XLA_FLAGS`` afterwards.
    """
    return bool(flag_values[FLAG_NAME].value) and use_fast_cpu_convolutions()
