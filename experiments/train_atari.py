r"""Multi-task Atari training (MTSpark and baselines). Thin absl launcher.

Every field of :class:`mtspark_jax.rl.training.TrainConfig` is a flag of the same
name; an unset flag keeps the ``--preset`` value (``enduro`` by default, see
experiments/configs/presets.py). Example (the README's main job: MTSpark_ADD
learns Enduro in about 10 minutes on 2 CPU cores)::

    python experiments/train_atari.py --workdir=/tmp/mtspark_run

The 12k-step pipeline check on Pong, Breakout and Enduro (the tests' preset)::

    python experiments/train_atari.py --preset=cpu --workdir=/tmp/pipeline_check

The same loop on MinAtar (gymnax; ``minatar`` preset, see RESULTS.md)::

    python experiments/train_atari.py --backend=minatar --workdir=/tmp/minatar_run

Bad values (unknown game or agent, impossible sizes, unwritable workdir)
print one line and exit with status 2 before any work starts; so does a
workdir another run is writing (mtspark_jax.workdir: one writer per
workdir). A checkpoint or log that cannot be written (a full disk) prints
one line naming the checkpoint the same command resumes from, and exits
with status 1.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import log_levels, provenance  # noqa: E402
from experiments.configs import DEFAULT_PRESET, get_preset  # noqa: E402
from mtspark_jax import config_flags, workdir, xla_options  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl.training import TrainConfig  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (metrics, TensorBoard, checkpoints, plot).")
flags.DEFINE_string("preset", None, "Starting config, one of experiments/configs/presets.py (unset: minatar with "
                    f"--backend=minatar, else {DEFAULT_PRESET}).")
flags.DEFINE_bool("resume", True, "Resume from the newest usable checkpoint in workdir.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_float("time_limit", 0.0, "Stop training after this many seconds of wall time (checked after every chunk, "
                   "summed over resumes) and evaluate as at the end of the run; 0: run to total_steps.")

config_flags.define_flags(TrainConfig, base=get_preset(DEFAULT_PRESET), base_label=f"{DEFAULT_PRESET} preset")


def config_from_flags() -> TrainConfig:
    """The preset with every set flag applied."""
    base = get_preset(FLAGS.preset or ("minatar" if FLAGS.backend == "minatar" else DEFAULT_PRESET))
    return config_flags.config_from_flags(base)


xla_options.define_flag()


@workdir.report_errors
def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()  # before the first JAX computation
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if not FLAGS.workdir:
        print("error: --workdir is required", file=sys.stderr)
        return 2
    try:
        config = config_from_flags()
        runner.validate_run(config, FLAGS.workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir.claim(FLAGS.workdir)  # held until exit: summary.json below is written under the lock too
    load_before = os.getloadavg()
    summary = runner.train_and_evaluate(config, FLAGS.workdir, resume=FLAGS.resume, progress=FLAGS.progress,
                                        time_limit_s=FLAGS.time_limit or None)
    if summary.time_up:
        print(f"time limit of {FLAGS.time_limit:.0f} s reached at agent step {summary.global_step} "
              f"of {config.total_steps}")
    print(f"agent {config.agent}, schedule {config.schedule}, {summary.global_step} agent steps, "
          f"{summary.switches} switches, {summary.wall_s:.0f} s, last chunk {summary.last_sps:.0f} steps/s")
    nan = [float("nan")] * len(summary.games)
    evals, rand = summary.eval_mean_return or nan, summary.random_mean_return or nan
    for game, ev, rv, tr, ep in zip(summary.games, evals, rand, summary.train_recent_return,
                                    summary.episodes):
        print(f"  {game:<12} eval return {ev:8.1f} (random policy {rv:7.1f})   "
              f"train return (last <=20 episodes) {tr:8.1f}   episodes {ep}")
    for game, e in (summary.energy or {}).items():
        rates = " ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in e.items() if k.startswith("spike_rate/"))
        print(f"  {game:<12} energy per decision {e['energy/snn_uJ']:.4g} uJ (ANN {e['energy/ann_uJ']:.4g} uJ, "
              f"{e['energy/ann_over_snn']:.2f}x)   spike rates: {rates or '-'}")
    provenance.write_summary(os.path.join(FLAGS.workdir, "summary.json"), {
        "games": summary.games, "seed": config.seed, "agent": config.agent, "context": config.context,
        "agent_steps": summary.global_step, "finished": summary.finished, "wall_s": summary.wall_s,
        "eval_mean_return": summary.eval_mean_return, "eval_episodes": config.eval_episodes,
        "random_mean_return": summary.random_mean_return, "train_recent_return": summary.train_recent_return,
        "train_episodes": summary.episodes, "time_limit_s": FLAGS.time_limit or None,
        "time_up": summary.time_up, "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg())})
    print(f"metrics: {FLAGS.workdir}/metrics.csv, eval.csv, summary.json, tb/; plot: {summary.plot}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
