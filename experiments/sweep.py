r"""Batch sweeps: many members (settings x seeds) trained at once with jax.vmap.

    # image task on generated data (no download), 2 learning rates x 2 taus x 4 seeds
    python experiments/sweep.py --task=images --synthetic --workdir=/tmp/sweep_img \
        --grid='learning_rate=1e-3,3e-3;tau=2,4' --num_seeds=4
    # image task on prepared MNIST / Fashion-MNIST (experiments/prepare_data.py)
    python experiments/sweep.py --task=images --datasets=mnist,fashion_mnist --image_shape=28,28,1 ...
    # small RL benchmark: MinAtar (gymnax, pure JAX), 8 seeds per setting
    python experiments/sweep.py --task=minatar --games=breakout --grid='lr=1e-4,3e-4' --num_seeds=8

Image task: every grid name must be one of learning_rate, tau, v_threshold,
alpha (all members in one compiled step). MinAtar: any TrainConfig field
(e.g. lr, eps_end, eps_decay_steps, tau, v_threshold); each setting is
compiled once and its seeds are vmapped. Atari (EnvPool) cannot be vmapped;
sweep it with one train_atari.py process per member.

Writes sweep.md and sweep.csv (mean ± sample std per setting over the
members that did not diverge; diverged members are counted) and members.csv
under --workdir. --shard splits members over all visible devices;
--coordinator_address/--num_processes/--process_id start a multi-host run
(see BUILD.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from mtspark_jax import xla_options  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "images", ["images", "minatar"], "What to sweep.")
flags.DEFINE_string("workdir", "runs/sweep", "Output directory.")
flags.DEFINE_string("grid", "", "Settings: 'name=v1,v2;name2=v3' (product of the lists); empty: defaults only.")
flags.DEFINE_integer("num_seeds", 8, "Seeds per setting (seed_offset, seed_offset + 1, ...).")
flags.DEFINE_integer("seed_offset", 0, "First seed.")
flags.DEFINE_bool("shard", False, "Split members over all visible devices (jax.sharding).")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0 (empty: single host).")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's id.")
# Image task.
flags.DEFINE_bool("synthetic", False, "Images: generated bar-pattern data sets instead of prepared TFDS data.")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Images: data sets (joint protocol).")
flags.DEFINE_string("data_dir", "data/tfds", "Images: TFDS data directory.")
flags.DEFINE_list("image_shape", ["16", "16", "1"], "Images: common shape H,W,C.")
flags.DEFINE_integer("epochs", 2, "Images: epochs.")
flags.DEFINE_integer("batch_size", 64, "Images / MinAtar: batch size.")
flags.DEFINE_integer("hidden", 64, "Images / MinAtar: width of the gated spiking layer.")
flags.DEFINE_integer("time_steps", 4, "Images / MinAtar: simulation steps T.")
flags.DEFINE_float("learning_rate", 1e-3, "Images: default Adam peak rate.")
flags.DEFINE_integer("max_train_examples", 2048, "Images: first N training examples per data set (0: all).")
flags.DEFINE_integer("max_eval_examples", 1024, "Images: first N test examples per data set (0: all).")
# MinAtar.
flags.DEFINE_list("games", ["breakout"], "MinAtar: games (tasks).")
flags.DEFINE_string("agent", "mtspark_add", "MinAtar: agent.")
flags.DEFINE_integer("total_steps", 20_000, "MinAtar: agent steps per member.")
flags.DEFINE_integer("num_envs", 8, "MinAtar: envs per task.")
flags.DEFINE_string("convs", "16:3:1", "MinAtar: trunk.")
flags.DEFINE_integer("warmup_steps", 1000, "MinAtar: random warm-up steps per task.")
flags.DEFINE_integer("eps_decay_steps", 10_000, "MinAtar: epsilon decay steps.")
flags.DEFINE_integer("buffer_size", 20_000, "MinAtar: replay size per task.")
flags.DEFINE_integer("chunk_iters", 250, "MinAtar: iterations per jitted chunk.")


xla_options.define_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_options.apply_flag()  # before the first JAX computation
    from mtspark_jax import sharding as sh
    from mtspark_jax import sweeps

    try:
        sh.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        grid = sweeps.parse_grid(FLAGS.grid)
        if FLAGS.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {FLAGS.num_seeds}")
        members = sweeps.make_members(grid, list(range(FLAGS.seed_offset, FLAGS.seed_offset + FLAGS.num_seeds)))
        if FLAGS.task == "images":
            from mtspark_jax import classification as cl
            from mtspark_jax import data as data_lib

            shape = tuple(int(v) for v in FLAGS.image_shape)
            config = cl.ImageConfig(datasets=tuple(FLAGS.datasets), epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                                    image_shape=shape, hidden=FLAGS.hidden, time_steps=FLAGS.time_steps,
                                    learning_rate=FLAGS.learning_rate, data_dir=FLAGS.data_dir)
            sweeps._check_image_grid(grid)
        else:
            from mtspark_jax.training import TrainConfig, validate_config

            config = TrainConfig(games=tuple(FLAGS.games), agent=FLAGS.agent, total_steps=FLAGS.total_steps,
                                 num_envs=FLAGS.num_envs, convs=FLAGS.convs, hidden=FLAGS.hidden,
                                 time_steps=FLAGS.time_steps, batch_size=FLAGS.batch_size,
                                 warmup_steps=FLAGS.warmup_steps, eps_decay_steps=FLAGS.eps_decay_steps,
                                 buffer_size=FLAGS.buffer_size, chunk_iters=FLAGS.chunk_iters, loop="scan")
            validate_config(config)
    except ValueError as e:
        raise app.UsageError(str(e))

    mesh_fn = sh.largest_divisor_mesh if FLAGS.shard else None
    if FLAGS.task == "images":
        if FLAGS.synthetic:
            train_sets, test_sets = sweeps.synthetic_images(
                FLAGS.max_train_examples or 2048, FLAGS.max_eval_examples or 1024, shape, 0, tuple(FLAGS.datasets))
        else:
            try:
                train_sets = {n: data_lib.load_split(n, "train", FLAGS.data_dir) for n in FLAGS.datasets}
                test_sets = {n: data_lib.load_split(n, "test", FLAGS.data_dir) for n in FLAGS.datasets}
            except data_lib.DataNotFoundError as e:
                sys.exit(f"error: {e}")
            cut = lambda s, k: s if k <= 0 else (s[0][:k], s[1][:k])  # noqa: E731
            train_sets = {n: cut(s, FLAGS.max_train_examples) for n, s in train_sets.items()}
            test_sets = {n: cut(s, FLAGS.max_eval_examples) for n, s in test_sets.items()}
        mesh = mesh_fn(members.size) if mesh_fn else None
        result = sweeps.run_image_sweep(config, members, train_sets, test_sets, mesh)
        rates = sorted({k for r in result["members"] for k in r if k.startswith("spike_rate/")})
        metrics = ["accuracy", "final_loss", "energy/snn_uJ", "energy/ann_over_snn"] + rates
    else:
        result = sweeps.run_minatar_sweep(config, FLAGS.games, members, mesh_fn)
        metrics = ["return", "final_td_loss"]
    rows = sweeps.summarize_members(result, metrics)
    table = sweeps.write_table(rows, metrics, FLAGS.workdir)
    sweeps.write_members(result, FLAGS.workdir)
    print(table)
    n_div = sum(r["diverged"] for r in result["members"])
    print(f"{len(result['members'])} members ({n_div} diverged) in {result['wall_s']:.1f} s; "
          f"per member {result['wall_s'] / len(result['members']):.2f} s; written to {FLAGS.workdir}/sweep.md")


if __name__ == "__main__":
    app.run(main)
