"""``jax.jit`` for programs that run once per process: state initialisation.

Initialising a network draws every parameter with ``jax.random``, and XLA:CPU
spends most of such a program's compile time in LLVM's optimisation of the
unrolled threefry rounds. On the CPU, :func:`jit_once` compiles at
``xla_backend_optimization_level`` 1 instead of XLA's default 2:

* the outputs are bit-identical (``tests/test_training.py`` checks a small
  MTSpark_ADD train state, ``benchmarks/init_compile.py`` any preset's);
* the ``three_games`` train state (``--optimizer_per_task --hidden=128``)
  compiled in 17.9 s instead of 77.8 s and ran in the same time (16 s: its
  replay buffers are large), measured beside another job on the 2-core CPU
  (``docs/performance.md``, section 2.12). Level 0 compiles faster still, but
  its unoptimised loops filled those buffers in 42 s.

Programs on other backends, and the programs that run many times (the
training chunk, the evaluator), keep XLA's default optimisation.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

ONCE_OPTIONS = {"xla_backend_optimization_level": 1}
"""XLA compile options of :func:`jit_once` on the CPU."""


def jit_once(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)``, compiled with :data:`ONCE_OPTIONS` on the CPU.

    For programs that run once per process (a state's initialisation). The
    backend is read at the first call, so the launchers' XLA flags
    (:mod:`mtspark_jax.xla_options`) still take effect. Called with traced
    arguments (inside another ``jit`` or ``vmap``), it calls ``fn`` itself:
    the enclosing program compiles it, with that program's options.
    """
    jitted: dict[bool, Callable[..., Any]] = {}

    def call(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)
        cpu = jax.default_backend() == "cpu"
        if cpu not in jitted:
            jitted[cpu] = jax.jit(fn, **jit_kwargs, **({"compiler_options": ONCE_OPTIONS} if cpu else {}))
        return jitted[cpu](*args, **kwargs)

    return call
