"""Process-wide options that make our CPU programs faster.

Both options act on the whole process, so the library never sets them on
import. The launchers in ``experiments/`` apply them as their first step
(:func:`define_flag` / :func:`apply_flag`), and a notebook can call the two
functions itself.

1. :func:`use_fast_cpu_convolutions` (``--fast_cpu_convolutions``). jax 0.10's
   XLA:CPU sends every convolution to a YNNPACK fusion by default. Sending the
   convolutions back to XLA's Eigen kernels (the dots stay on YNNPACK) made the
   MTSpark_ADD train step (batch 32, T = 4) take 74.1 ms instead of 103.9 ms
   on the idle 2-core CPU, with bit-identical outputs on the benchmark batch
   (``docs/performance.md``, section 2.2). XLA reads ``XLA_FLAGS`` once, when
   JAX first creates a backend: call it before the first JAX computation.
   GPU and TPU compilations ignore the flag.
2. :func:`reuse_freed_host_memory` (``--reuse_host_memory``). XLA:CPU
   allocates the temporary buffer of every execution anew, and glibc's malloc
   gives buffers that large a fresh ``mmap`` each time. Keeping freed memory
   in malloc's heap took the same train step from 57.5 / 56.3 / 55.3 ms to
   45.2 / 44.0 / 45.0 ms (``docs/performance.md``, section 2.3). It takes effect for the
   allocations after the call.
"""

from __future__ import annotations

import ctypes
import os
from typing import MutableMapping, NamedTuple

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


M_TRIM_THRESHOLD = -1
"""glibc ``mallopt`` parameter: free memory at the heap's top above this is given back to the OS."""

M_MMAP_MAX = -4
"""glibc ``mallopt`` parameter: how many allocations malloc may serve with their own ``mmap``."""

KEEP_FREED_BYTES = 2**31 - 1
"""The trim threshold set by :func:`reuse_freed_host_memory` (the largest ``int``): ~2 GiB."""


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (it has ``mallopt``), else ``None``."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # not glibc: no such confstr name
        return None
    return ctypes.CDLL(None)


def reuse_freed_host_memory() -> bool:
    """Makes glibc's malloc keep freed memory in the process, for the next allocation to reuse.

    XLA:CPU allocates the temporary buffer of each execution anew and frees it
    afterwards (52 MB for the MTSpark_ADD train step at batch 32, T = 4).
    glibc serves an allocation above its mmap threshold (at most 32 MB) with
    its own ``mmap`` and unmaps it on ``free``, so every step faults in fresh
    pages (12,700 minor page faults per train step).

    This sets two ``mallopt`` parameters: ``M_MMAP_MAX = 0`` (no ``mmap`` for
    malloc) and ``M_TRIM_THRESHOLD`` = :data:`KEEP_FREED_BYTES` (the heap's
    top is kept), so each step reuses the pages of the steps before: no page
    faults in the steady state, and the train step took 57.5 / 56.3 / 55.3 ms
    -> 45.2 / 44.0 / 45.0 ms on the idle 2-core CPU (``docs/performance.md``,
    section 2.3, which also gives the limits and the alternatives tried).

    Limits: the arenas of threads other than the main one hold at most 64 MB
    each, so a larger buffer allocated by such a thread is still mapped anew;
    synchronous CPU dispatch (``jax.config.update(
    "jax_cpu_enable_async_dispatch", False)``) allocates from the main heap
    instead, at a cost to the RL python loop. The cost: the process keeps the
    heap of its peak use (malloc still falls back to ``mmap`` when the heap
    cannot grow). It is process-wide, like ``XLA_FLAGS``; it takes effect for
    the allocations after the call, and calling it again is harmless.

    Returns:
      ``True`` when applied; ``False`` when the C library is not glibc
      (macOS, musl) or refused a setting.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    return all([libc.mallopt(param, value) == 1 for param, value in settings])


FLAG_NAME = "fast_cpu_convolutions"
"""The launchers' absl flag (default on) that calls :func:`use_fast_cpu_convolutions` first."""

MEMORY_FLAG_NAME = "reuse_host_memory"
"""The launchers' absl flag (default on) that calls :func:`reuse_freed_host_memory` first."""


class Applied(NamedTuple):
    """What :func:`apply_flag` applied."""

    fast_cpu_convolutions: bool
    reuse_host_memory: bool


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the launchers' boolean absl flags (both default True).

    ``--fast_cpu_convolutions`` (:func:`use_fast_cpu_convolutions`) and
    ``--reuse_host_memory`` (:func:`reuse_freed_host_memory`). A flag that
    ``flag_values`` already has is left as it is (several launchers imported
    into one process share them).
    """
    if FLAG_NAME not in flag_values:
        flags.DEFINE_bool(FLAG_NAME, True, "Before JAX starts, set XLA's faster CPU convolution option "
                          "(mtspark_jax.xla_options; --nofast_cpu_convolutions: XLA's defaults).",
                          flag_values=flag_values)
    if MEMORY_FLAG_NAME not in flag_values:
        flags.DEFINE_bool(MEMORY_FLAG_NAME, True, "Keep freed host memory in malloc's heap, so that XLA's "
                          "per-step CPU buffers cause no page faults (glibc only; mtspark_jax.xla_options; "
                          "--noreuse_host_memory: glibc's defaults, freed memory goes back to the OS).",
                          flag_values=flag_values)


def apply_options(fast_cpu_convolutions: bool = True, reuse_host_memory: bool = True) -> Applied:
    """Applies the chosen process options (both by default), as the launchers run.

    Call it before any JAX computation. Returns which options are in effect afterwards.
    """
    return Applied(
        fast_cpu_convolutions=fast_cpu_convolutions and use_fast_cpu_convolutions(),
        reuse_host_memory=reuse_host_memory and reuse_freed_host_memory(),
    )


def apply_flag(flag_values: flags.FlagValues = flags.FLAGS) -> Applied:
    """:func:`apply_options` with the launcher's flags (:func:`define_flag`).

    Call it first in a launcher's ``main``, before any JAX computation.
    Returns which options are in effect afterwards.
    """
    return apply_options(bool(flag_values[FLAG_NAME].value), bool(flag_values[MEMORY_FLAG_NAME].value))
