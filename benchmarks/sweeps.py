r"""8 seeds vmapped vs 8 sequential runs, per member: image task, MinAtar and Atari.

Both modes use the same code (:mod:`mtspark_jax.vision.image_sweep`,
:mod:`mtspark_jax.rl.minatar_sweep`): "vmapped" trains
the 8 members as one stacked batch ``[8, ...]``; "sequential" trains one
member (``M = 1``) after another with the same compiled step (compiled once,
reused by the 8 runs). Reported per member: wall seconds of the whole job
(compilation included, once per mode) and the steady-state seconds (the
compiled step only: image: the second epoch; MinAtar: every chunk after the
first).

Atari (:mod:`mtspark_jax.rl.atari_sweep`): "vmapped" is one program of 8
members sharing one EnvPool of 8 x num_envs envs; "sequential" is one solo
run as ``train_atari.py`` runs it (:func:`mtspark_jax.rl.training.jitted`),
timed once and counted 8 times, because every solo run builds its own pools
and so compiles its own program.

    PYTHONPATH=. python benchmarks/sweeps.py [--task=images|minatar|atari|both] [--out=benchmarks/SWEEPS.md]
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import get_preset  # noqa: E402
from mtspark_jax import sweeps  # noqa: E402
from mtspark_jax.rl import atari_sweep, runner  # noqa: E402
from mtspark_jax.rl import training as T  # noqa: E402
from mtspark_jax.rl.minatar_sweep import MinAtarSweep  # noqa: E402
from mtspark_jax.vision import classification as cl  # noqa: E402
from mtspark_jax.vision import data as data_lib  # noqa: E402
from mtspark_jax.vision.image_sweep import ImageSweep  # noqa: E402

flags.DEFINE_enum("task", "both", ["images", "minatar", "atari", "both"],
                  "Which benchmark (both: images and MinAtar).")
flags.DEFINE_integer("atari_chunks", 3, "Atari: timed chunks after the first (compiling) one.")
flags.DEFINE_enum("image_size", "medium", ["medium", "small"], "Image network: medium (IMAGE) or small (IMAGE_SMALL).")
flags.DEFINE_integer("members", 8, "Seeds.")
flags.DEFINE_string("out", "", "Append the markdown section to this file.")
FLAGS = flags.FLAGS

IMAGE = dict(datasets=("mnist", "fashion_mnist"), epochs=2, batch_size=32, image_shape=(16, 16, 1),
             convs=((16, 5, 2), (32, 3, 2)), hidden=64, time_steps=4, learning_rate=1e-3, batch_norm=False)
IMAGE_SMALL = dict(IMAGE, batch_size=8, convs=((4, 5, 4),), hidden=16, time_steps=2)
MINATAR = dict(games=("breakout",), agent="mtspark_add", convs="16:3:1", hidden=64, time_steps=4, num_envs=8,
               batch_size=32, total_steps=4000, warmup_steps=500, buffer_size=4000, chunk_iters=100,
               eps_decay_steps=2000, target_update=1000)


def bench_images(k: int, spec: dict) -> dict:
    config = cl.ImageConfig(**spec)
    train, _ = data_lib.synthetic_images(256, 64, config.image_shape)
    loader = data_lib.Loader(train, config.batch_size, seed=0, shape=config.image_shape)
    steps = config.epochs * loader.num_batches()
    res = {"steps_per_member": steps}
    for mode, groups in (("vmapped", [list(range(k))]), ("sequential", [[s] for s in range(k)])):
        sweep = ImageSweep(config, steps)
        t0, warm = time.time(), 0.0
        for seeds in groups:
            state, h = sweep.init(sweeps.make_members({}, seeds))
            state, _ = sweep.train(state, h, loader.epoch(0))
            jax.block_until_ready(state)
            t1 = time.time()
            state, losses = sweep.train(state, h, loader.epoch(1))
            jax.block_until_ready(state)
            warm += time.time() - t1
        res[mode] = {"total_s": time.time() - t0, "steady_s": warm, "final_loss": float(np.mean(losses[-1]))}
    return res


def bench_minatar(k: int) -> dict:
    config = T.TrainConfig(**MINATAR)
    res = {"steps_per_member": config.total_steps}
    for mode, groups in (("vmapped", [list(range(k))]), ("sequential", [[s] for s in range(k)])):
        sweep = MinAtarSweep(config, config.games)
        t0, warm = time.time(), 0.0
        for seeds in groups:
            r = sweep.run(seeds)
            warm += r["wall_s"] - r["first_chunk_s"]
        res[mode] = {"total_s": time.time() - t0, "steady_s": warm,
                     "return": float(np.mean([m["return"] for m in r["members"]]))}
    return res


# The pong preset with a smaller replay (8 members x 100k frames would not fit beside the rest) and short chunks.
ATARI = dict(buffer_size=20_000, warmup_steps=400, chunk_iters=50)


def bench_atari(k: int, chunks: int) -> dict:
    """Agent steps per second of ``k`` members on shared pools vs one solo run."""
    config = dataclasses.replace(get_preset("pong"), **ATARI)
    steps = (chunks + 1) * config.chunk_iters * config.num_envs
    res = {"steps_per_member": steps, "config": config, "load": [round(x, 2) for x in os.getloadavg()]}
    for mode, m in (("vmapped", k), ("sequential", 1)):
        t0 = time.time()
        if mode == "vmapped":
            sweep = atari_sweep.AtariSweep(config, list(range(m)))
            handles, state = sweep.init()
            step = lambda h, s: sweep.run_chunk(h, s)  # noqa: E731
        else:
            envs = runner.make_task_envs(config, runner.canonical_games(config), is_eval=False)
            trainer = T.jitted(T.make_train(config, envs))
            handles, state = None, trainer.init(jax.random.PRNGKey(0), *T.reset_envs(envs))
            step = lambda h, s: (None,) + trainer.run_chunk(s)  # noqa: E731
        handles, state, _ = step(handles, state)
        jax.block_until_ready(state)
        t1 = time.time()
        for _ in range(chunks):
            handles, state, _ = step(handles, state)
        jax.block_until_ready(state)
        warm = time.time() - t1
        per = 1 if mode == "vmapped" else k  # the sequential job is k solo runs
        res[mode] = {"total_s": (time.time() - t0) * per, "steady_s": warm * per,
                     "sps": m * chunks * config.chunk_iters * config.num_envs / warm}
        if mode == "vmapped":
            sweep.close()
        else:
            for e in envs:
                e.close()
    res["load"] = f"{res['load']} / {[round(x, 2) for x in os.getloadavg()]}"
    return res


def section(name: str, res: dict, k: int, what: str) -> str:
    v, s = res["vmapped"], res["sequential"]
    lines = [f"### {name}", "", what, "",
             "| mode | job wall s (compile incl.) | per member s | steady-state s | per member s |",
             "|---|---|---|---|---|"]
    for mode, r in (("8 seeds vmapped", v), ("8 sequential runs", s)):
        lines.append(f"| {mode.replace('8', str(k))} | {r['total_s']:.1f} | {r['total_s'] / k:.2f} | "
                     f"{r['steady_s']:.1f} | {r['steady_s'] / k:.2f} |")
    lines += ["", f"Speed-up per member, vmapped over sequential: {s['total_s'] / v['total_s']:.2f}x with "
              f"compilation, {s['steady_s'] / max(v['steady_s'], 1e-9):.2f}x steady state.", ""]
    return "\n".join(lines)


def main(argv):
    del argv
    k = FLAGS.members
    header = ["## Sweeps", "",
              f"Measured with `PYTHONPATH=. python benchmarks/sweeps.py --task={FLAGS.task} "
              f"--image_size={FLAGS.image_size}` on "
              f"{platform.machine()} {jax.default_backend().upper()} ({os.cpu_count()} cores, "
              f"jax {jax.__version__}); one process, no other flags.", ""]
    parts = []
    if FLAGS.task in ("images", "both"):
        spec = IMAGE if FLAGS.image_size == "medium" else IMAGE_SMALL
        r = bench_images(k, spec)
        parts.append(section(f"Image task (SpikingClassifier, {FLAGS.image_size})", r, k,
                             f"{r['steps_per_member']} Adam steps per member (2 epochs, batch {spec['batch_size']}, "
                             f"16x16x1 generated images, convs {spec['convs']}, hidden {spec['hidden']}, "
                             f"T={spec['time_steps']}); steady state = the second epoch."))
        print(parts[-1], flush=True)
    if FLAGS.task in ("minatar", "both"):
        r = bench_minatar(k)
        parts.append(section("MinAtar (gymnax) training runs", r, k,
                             f"{r['steps_per_member']} agent steps per member ({MINATAR['agent']}, "
                             f"{MINATAR['games'][0]}, {MINATAR['num_envs']} envs, batch {MINATAR['batch_size']}, "
                             f"convs {MINATAR['convs']}, hidden {MINATAR['hidden']}, T={MINATAR['time_steps']}, "
                             f"loop=scan); steady state = every chunk after the first."))
        print(parts[-1], flush=True)
    if FLAGS.task == "atari":
        r = bench_atari(k, FLAGS.atari_chunks)
        c = r["config"]
        parts.append(section("Atari (EnvPool) training runs, members sharing one pool per game", r, k,
                             f"{r['steps_per_member']} agent steps per member (the `pong` preset with "
                             f"buffer_size {c.buffer_size}, warmup_steps {c.warmup_steps}, chunk_iters "
                             f"{c.chunk_iters}: {c.agent}, Pong, {c.num_envs} envs, batch {c.batch_size}, "
                             f"convs {c.convs}, hidden {c.hidden}, T={c.time_steps}); steady state = every chunk "
                             f"after the first. Agent steps/s in steady state: {r['vmapped']['sps']:.0f} for all "
                             f"{k} members together, {r['sequential']['sps']:.0f} for one solo run. Load average "
                             f"before / after: {r['load']}."))
        print(parts[-1], flush=True)
    text = "\n".join(header + parts)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
