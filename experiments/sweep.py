r"""Batch sweeps: many members (settings x seeds) trained at once with jax.vmap.

    # image task on generated data (no download), 2 learning rates x 2 taus x 4 seeds
    python experiments/sweep.py --task=images --synthetic --workdir=/tmp/sweep_img \
        --grid='learning_rate=1e-3,3e-3;tau=2,4' --num_seeds=4
    # image task on prepared MNIST / Fashion-MNIST (experiments/prepare_data.py)
    python experiments/sweep.py --task=images --set=image_shape=28,28,1,max_train_examples=0 ...
    # small RL benchmark: MinAtar (gymnax, pure JAX), 8 seeds per setting
    python experiments/sweep.py --task=minatar --set=games=breakout --grid='lr=1e-4,3e-4' --num_seeds=8
    # Atari: every setting's seeds share one EnvPool per game (mtspark_jax.rl.atari_sweep)
    python experiments/sweep.py --task=atari --preset=pong --grid='lr=1e-4,2.5e-4' --num_seeds=4 \
        --time_limit=3600 --workdir=runs/sweep_pong

Every member starts from ``--preset`` (images: an ImageConfig preset of
experiments/configs/images.py, ``sweep_small`` by default; MinAtar: a
TrainConfig preset of experiments/configs/presets.py, ``minatar_sweep`` by
default; Atari: ``pong``) with the ``--set`` overrides; values are written as for the
launchers' own flags (mtspark_jax.config_flags). The image grid may vary
learning_rate, tau, v_threshold and alpha (all members in one compiled step).
The MinAtar and Atari grids may vary any TrainConfig field (e.g. lr,
eps_end, eps_decay_steps, tau, v_threshold, surrogate_alpha); each setting
is compiled once and its seeds are vmapped. An Atari setting's members share
one EnvPool per game (member k owns envs k*num_envs...); each member's solo
twin is `train_atari.py --seed=S --env_seed=E` with S and E from
members.csv. Atari members write member_<i>/metrics.csv and eval.csv under
setting_<k>/ and checkpoint the whole setting: running the same command
again resumes the sweep.

While it runs, a progress bar on stderr shows the steps and the members'
mean training loss and accuracy (images), mean return and TD loss
(MinAtar) or steps per second (Atari); one bar per setting for MinAtar and
Atari; --noprogress hides it.

Writes sweep.md and sweep.csv (mean ± sample std per setting over the
members that did not diverge; diverged members are counted) and members.csv
under --workdir. --shard splits members over all visible devices (the
largest number that divides a setting's members; Atari: each device steps
EnvPools of its own members' envs, one process only);
--coordinator_address/--num_processes/--process_id start a multi-host run
(see BUILD.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import log_levels  # noqa: E402
from experiments.configs import get_image_preset, get_preset  # noqa: E402
from mtspark_jax import config_flags, sweeps, workdir, xla_options  # noqa: E402
from mtspark_jax import sharding as sh  # noqa: E402
from mtspark_jax.rl.atari_sweep import run_atari_sweep, validate_sweep_config  # noqa: E402
from mtspark_jax.rl.minatar_sweep import run_minatar_sweep  # noqa: E402
from mtspark_jax.rl.training import TrainConfig, validate_config  # noqa: E402
from mtspark_jax.vision import data as data_lib  # noqa: E402
from mtspark_jax.vision.image_sweep import parse_image_grid, run_image_sweep  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "images", ["images", "minatar", "atari"], "What to sweep.")
flags.DEFINE_string("preset", None, "Every member's starting config (unset: sweep_small for images, minatar_sweep "
                    "for minatar, pong for atari).")
flags.DEFINE_list("set", [], "Overrides of the preset for every member, key=value comma-separated "
                  "(tuple values keep their commas: games=breakout,space_invaders,lr=1e-4).")
flags.DEFINE_string("workdir", "runs/sweep", "Output directory.")
flags.DEFINE_string("grid", "", "Settings: 'name=v1,v2;name2=v3' (product of the lists); empty: defaults only.")
flags.DEFINE_integer("num_seeds", 8, "Seeds per setting (seed_offset, seed_offset + 1, ...).")
flags.DEFINE_integer("seed_offset", 0, "First seed.")
flags.DEFINE_bool("shard", False, "Split members over all visible devices (jax.sharding).")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0 (empty: single host).")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's id.")
flags.DEFINE_float("time_limit", 0.0, "Atari: stop each setting after this many seconds of training wall time "
                   "and evaluate (0: none).")
flags.DEFINE_bool("progress", True, "Progress bar on stderr: steps, and the members' mean training loss and "
                  "accuracy (images), mean return and TD loss (MinAtar) or steps per second (Atari).")
flags.DEFINE_bool("synthetic", False, "Images: generated bar-pattern data sets instead of prepared TFDS data.")


def grid_from_flags() -> dict[str, tuple]:
    """The ``--grid`` settings: image hyper-parameters, or TrainConfig fields (ValueError for a bad one)."""
    if FLAGS.task == "images":
        return parse_image_grid(FLAGS.grid)
    return config_flags.parse_grid(FLAGS.grid, config_flags.field_types(TrainConfig))


def config_from_flags():
    """The task's preset with the ``--set`` overrides (ValueError for a bad one)."""
    if FLAGS.task == "images":
        return config_flags.apply_overrides(get_image_preset(FLAGS.preset or "sweep_small"), FLAGS.set)
    default = "pong" if FLAGS.task == "atari" else "minatar_sweep"
    config = config_flags.apply_overrides(get_preset(FLAGS.preset or default), FLAGS.set)
    backend = "atari" if FLAGS.task == "atari" else "minatar"
    if config.backend != backend:
        raise ValueError(f"--task={FLAGS.task} needs a config with backend={backend}, got backend={config.backend!r}")
    if FLAGS.task == "atari":
        validate_sweep_config(config)
    else:
        validate_config(config)
    return config


def image_data(config) -> tuple[dict, dict]:
    """``(train_sets, test_sets)`` of ``config.datasets``: generated (``--synthetic``) or prepared TFDS
    data, cut to ``max_train_examples`` / ``max_eval_examples``; exits with the prepare command when
    a data set is missing."""
    if FLAGS.synthetic:
        return data_lib.synthetic_images(config.max_train_examples or 2048, config.max_eval_examples or 1024,
                                         config.image_shape, 0, tuple(config.datasets))
    try:
        train_sets = {n: data_lib.load_split(n, "train", config.data_dir) for n in config.datasets}
        test_sets = {n: data_lib.load_split(n, "test", config.data_dir) for n in config.datasets}
    except data_lib.DataNotFoundError as e:
        sys.exit(f"error: {e}")
    cut = lambda s, k: s if k <= 0 else (s[0][:k], s[1][:k])  # noqa: E731
    return ({n: cut(s, config.max_train_examples) for n, s in train_sets.items()},
            {n: cut(s, config.max_eval_examples) for n, s in test_sets.items()})


xla_options.define_flag()


@workdir.report_errors  # a workdir another sweep is writing, or a failed write: one line
def main(argv):
    log_levels.quiet()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_options.apply_flag()  # before the first JAX computation
    try:
        sh.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        grid = grid_from_flags()
        if FLAGS.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {FLAGS.num_seeds}")
        members = sweeps.make_members(grid, list(range(FLAGS.seed_offset, FLAGS.seed_offset + FLAGS.num_seeds)))
        config = config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e))
    workdir.claim(FLAGS.workdir)  # the writing process only (multi-host: process 0); held until exit

    mesh_fn = sh.largest_divisor_mesh if FLAGS.shard else None
    if FLAGS.task == "images":
        train_sets, test_sets = image_data(config)
        mesh = mesh_fn(members.size) if mesh_fn else None
        result = run_image_sweep(config, members, train_sets, test_sets, mesh, progress=FLAGS.progress)
        rates = sorted({k for r in result["members"] for k in r if k.startswith("spike_rate/")})
        metrics = ["accuracy", "final_loss", "energy/snn_uJ", "energy/ann_over_snn"] + rates
    elif FLAGS.task == "atari":
        if FLAGS.shard and FLAGS.num_processes > 1:
            raise app.UsageError("--shard with --task=atari runs in one process (each device's EnvPools live on "
                                 "this host); drop --num_processes")
        result = run_atari_sweep(config, members, FLAGS.workdir, FLAGS.progress, FLAGS.time_limit or None,
                                 mesh_fn=mesh_fn)
        metrics = ["return", "final_td_loss"] + sorted(k for k in result["members"][0] if k.startswith("eval/"))
        if not result["complete"]:
            print("the sweep stopped before its end; run the same command again to resume it")
    else:
        result = run_minatar_sweep(config, config.games, members, mesh_fn, progress=FLAGS.progress)
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
