r"""The learner update as the library compiles it vs one variant, timed in one process.

Times one jitted Double DQN update (sample + forward/backward + Adam) of a
preset's network both ways, interleaved. ``--compare`` picks the variant:

* ``rolled_scans`` (default): the library unrolls every scan over the T time
  steps (``unroll=True``), so a compiled update holds no ``while`` loop over
  time; "rolled" traces the same code with ``jax.lax.scan`` forced to
  ``unroll=1`` (a ``while`` loop per scan, which on a GPU costs a
  device-to-host copy of the loop predicate per step).
* ``conv_nhwc``: the other choice of ``mtspark_jax.nn.ops`` for the
  convolutions' gradients. The library takes ``ops.conv_nhwc`` (gradients in
  the layout of XLA:CPU's Eigen kernel, the space-to-depth input gradient for
  the strided layers) on the CPU backend only; the variant turns it off on a
  CPU and on elsewhere (the way to measure it on a GPU).

``--in_cond`` runs both inside ``lax.cond`` (as the scan loop's updates run):
on a CPU, ``--compare=conv_nhwc --in_cond`` shows what XLA's own gradient
layouts cost in a nested computation.

    PYTHONPATH=. python benchmarks/scan_unroll.py [--preset=paper] [--batch_size=256] \
        [--compare=rolled_scans|conv_nhwc] [--in_cond]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import get_preset  # noqa: E402
from mtspark_jax.rl import envs as E  # noqa: E402
from mtspark_jax.rl import learner as L  # noqa: E402
from mtspark_jax.nn import ops  # noqa: E402
from mtspark_jax.rl import replay as R  # noqa: E402
from mtspark_jax.rl import training as T  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402

flags.DEFINE_string("preset", "paper", "config preset (network and batch)")
flags.DEFINE_string("agent", None, "override agent")
flags.DEFINE_integer("batch_size", None, "override the learner batch")
flags.DEFINE_integer("rounds", 5, "interleaved rounds")
flags.DEFINE_integer("reps", 20, "updates per round and variant")
flags.DEFINE_enum("compare", "rolled_scans", ["rolled_scans", "conv_nhwc"],
                  "the variant timed against the library's update (see the module docstring)")
flags.DEFINE_bool("in_cond", False, "run both updates inside lax.cond")
FLAGS = flags.FLAGS


@contextlib.contextmanager
def rolled_scans():
    """Within the block, every ``jax.lax.scan`` is traced with ``unroll=1``."""
    orig = jax.lax.scan

    def scan(*args, **kwargs):
        kwargs["unroll"] = 1
        return orig(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = orig


@contextlib.contextmanager
def flipped_conv_nhwc():
    """Within the block, ``ops`` makes the other choice of :func:`mtspark_jax.nn.ops.conv_nhwc`."""
    orig = ops._backend_uses_conv_nhwc
    library_choice = orig()
    ops._backend_uses_conv_nhwc = lambda: not library_choice
    try:
        yield
    finally:
        ops._backend_uses_conv_nhwc = orig


def main(_):
    xla_options.apply_options()  # as the launchers run
    cfg = get_preset(FLAGS.preset)
    over = {k: getattr(FLAGS, k) for k in ("agent", "batch_size") if getattr(FLAGS, k) is not None}
    cfg = dataclasses.replace(cfg, **over)
    n = 8
    rng = np.random.default_rng(0)
    rep = R.init_replay(1, 256, n, (84, 84, 1), 4)
    flags_ = R.initial_flags(n)
    for _ in range(64):
        rep = R.add(rep, 0, rng.integers(0, 255, (n, 84, 84, 1), dtype=np.uint8), rng.integers(0, 6, n),
                    rng.standard_normal(n).astype(np.float32), np.zeros(n, bool), np.zeros(n, bool),
                    flags_.first, ~flags_.terminal)
        flags_ = R.next_flags(flags_, np.zeros(n, bool), np.zeros(n, bool))
    spec = E.EnvSpec("bench", n, (84, 84, 1), 4, 18)
    net = T.build_network(cfg, spec, len(cfg.games))
    lc = T.learner_config(cfg)
    opt = L.make_optimizer(lc)
    obs = jnp.zeros((n, 84, 84, 4), jnp.uint8)
    ls = L.init_learner(net.init(jax.random.PRNGKey(0), obs, jnp.zeros((n,), jnp.int32), train=False), opt)
    update = L.make_update(net, opt, lc)

    def step(ls, key):
        if FLAGS.in_cond:
            zero = L.LossInfo(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            ok = key[0] >= 0  # always true, unknown to the compiler
            return jax.lax.cond(ok, lambda ls: update(ls, R.sample(rep, 0, key, cfg.batch_size)),
                                lambda ls: (ls, zero), ls)
        return update(ls, R.sample(rep, 0, key, cfg.batch_size))

    if FLAGS.compare == "rolled_scans":
        base, variant, flip = "unrolled", "rolled", rolled_scans
    else:
        uses = ops._backend_uses_conv_nhwc()
        base = "conv_nhwc" if uses else "XLA convs"
        variant, flip = ("XLA convs" if uses else "conv_nhwc"), flipped_conv_nhwc
    fns = {base: jax.jit(step), variant: jax.jit(lambda ls, key: step(ls, key))}
    states = {}
    for name, f in fns.items():
        ctx = flip() if name == variant else contextlib.nullcontext()
        with ctx:
            txt = f.lower(ls, jax.random.PRNGKey(0)).compile().as_text()
            states[name], info = f(ls, jax.random.PRNGKey(0))
        jax.block_until_ready(info)
        print(f"{name}: {len(re.findall(r' while[(]', txt))} while loops and "
              f"{len(re.findall(r' convolution[(]', txt))} convolutions in the compiled update")
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(*(jax.tree.leaves(states[k].variables) for k in fns)))
    print(f"largest parameter difference after one update, {variant} vs {base}: {diff:.1e}")
    times = {k: [] for k in fns}
    for r in range(FLAGS.rounds):
        for name, f in fns.items():
            s = states[name]
            t0 = time.perf_counter()
            for i in range(FLAGS.reps):
                s, info = f(s, jax.random.PRNGKey(r * 1000 + i))
            jax.block_until_ready((s, info))
            times[name].append((time.perf_counter() - t0) / FLAGS.reps)
            states[name] = s
    print(f"device {jax.devices()[0].device_kind}, agent {cfg.agent}, convs {cfg.convs}, hidden {cfg.hidden}, "
          f"T={cfg.time_steps}, batch {cfg.batch_size}{', inside lax.cond' if FLAGS.in_cond else ''}; ms per update (median of {FLAGS.rounds} rounds x "
          f"{FLAGS.reps} back-to-back updates):")
    for name, ts in times.items():
        print(f"  {name:9s} {np.median(ts) * 1e3:7.2f} ms (best {min(ts) * 1e3:.2f})")
    print(f"  {variant} / {base} (the library): {np.median(times[variant]) / np.median(times[base]):.2f}x")


if __name__ == "__main__":
    app.run(main)
