"""Writes the online network of a ``train_atari.py`` run's newest checkpoint to a small agent file.

    python experiments/export_params.py --workdir=runs/enduro --out=results/atari_main_job/agent.msgpack
    python experiments/eval_atari.py --params=results/atari_main_job/agent.msgpack --video=videos

The file (:mod:`mtspark_jax.rl.agent_file`) holds the network's variables and
the run's config, nothing else: no replay, no optimiser state, no target
network. ``eval_atari.py --params`` plays it without the workdir. Prints one
line: the file, its size, the agent, its tasks and the agent step.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import log_levels  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402
from mtspark_jax.rl import agent_file, runner  # noqa: E402
from mtspark_jax.rl.envs import close_envs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train_atari.py workdir (config.json and checkpoints/).")
flags.DEFINE_string("out", None, "The agent file to write (.msgpack).")
xla_options.define_flag()


def export(workdir: str, out: str) -> tuple[int, list[str], int, str]:
    """Writes ``workdir``'s newest checkpoint's online network to ``out``; returns ``(bytes, tasks, step, agent)``."""
    config = runner.load_config(workdir)
    tasks = runner.canonical_games(config)
    _, variables, step = runner.restore_online_variables(config, workdir)
    envs = runner.make_task_envs(dataclasses.replace(config, eval_episodes=1), tasks, is_eval=True)
    spec = envs[0].spec  # the network's observation and action shapes
    close_envs(envs)
    size = agent_file.save_agent(out, config, tasks, spec, variables, step)
    return size, tasks, step, config.agent


def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()
    if len(argv) > 1 or not FLAGS.workdir or not FLAGS.out:
        print(f"error: give --workdir and --out{f' (unexpected arguments {argv[1:]})' if len(argv) > 1 else ''}",
              file=sys.stderr)
        return 2
    try:
        size, tasks, step, agent = export(FLAGS.workdir, FLAGS.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {FLAGS.out} ({size / 1024:.0f} KB): {agent} on {', '.join(tasks)} at agent step {step}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
