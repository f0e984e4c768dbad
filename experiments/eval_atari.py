"""Evaluates the newest checkpoint of a ``train_atari.py`` run over as many episodes as asked.

    python experiments/eval_atari.py --workdir=runs/pong --episodes=16

Every task of the run is played for ``--episodes`` full episodes on the run's
evaluation protocol (raw, unclipped returns; no episodic life; up to
``noop_max`` random no-ops at the start; episodes cut only at
``eval_max_steps``), by the greedy policy (``--epsilon`` to change it) and,
with ``--random``, by the uniform random policy on the same pools. The pools
are seeded ``seed + 7919`` like the run's own evaluations, so their first
``eval_episodes`` envs start as the in-run evaluations' do.

ALE without sticky actions is deterministic: an episode is fixed by the
policy and its no-op count, so at most ``noop_max + 1`` episodes differ. The
table gives the number of distinct episodes beside the mean.

Prints one row per game and writes ``eval_checkpoint.json`` (returns,
lengths, step, command, commit) into the workdir, or to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import log_levels, provenance  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl.evaluation import make_evaluator  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train_atari.py workdir (config.json and checkpoints/).")
flags.DEFINE_integer("episodes", 16, "Full episodes per task.")
flags.DEFINE_float("epsilon", 0.0, "Exploration rate of the evaluated policy (0: greedy).")
flags.DEFINE_bool("random", True, "Also evaluate the uniform random policy on the same pools.")
flags.DEFINE_integer("seed", None, "Seed of the evaluation (pools seed + 7919, policy key); default: the run's.")
flags.DEFINE_string("out", None, "JSON output path (default: <workdir>/eval_checkpoint.json).")
xla_options.define_flag()


def describe(returns: np.ndarray, lengths: np.ndarray) -> dict:
    """Mean, spread and the number of distinct episodes of one task's ``[E]`` returns and lengths."""
    return {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "distinct_episodes": len(set(zip(returns.tolist(), lengths.tolist()))),
            "returns": returns.tolist(), "lengths": lengths.tolist()}


def command_line_problem(argv: list[str]) -> str | None:
    """The first thing wrong with the command line, or None."""
    if len(argv) > 1:
        return f"unexpected arguments {argv[1:]}"
    if not FLAGS.workdir:
        return "--workdir is required"
    if FLAGS.episodes < 1:
        return f"--episodes must be >= 1, got {FLAGS.episodes}"
    return None


def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()
    problem = command_line_problem(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        run = runner.load_config(FLAGS.workdir)
        config = dataclasses.replace(run, eval_episodes=FLAGS.episodes,
                                     seed=run.seed if FLAGS.seed is None else FLAGS.seed)
        games = runner.canonical_games(config)
        net, variables, step = runner.restore_online_variables(run, FLAGS.workdir)
        def eval_envs():
            return runner.make_task_envs(config, games, is_eval=True)

        evaluate = make_evaluator(net, eval_envs, config.eval_max_steps, FLAGS.epsilon)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = jax.random.PRNGKey(config.seed + 3)
    policy = evaluate(variables, key)
    rand = None
    if FLAGS.random:
        rand = make_evaluator(net, eval_envs, config.eval_max_steps, epsilon=1.0)(variables, key)
    label = "greedy" if FLAGS.epsilon == 0 else f"epsilon {FLAGS.epsilon:g}"
    print(f"checkpoint at agent step {step}, {FLAGS.episodes} episodes per game, {label} policy")
    print("| game | mean | std | min | max | distinct episodes | complete | random policy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    result = {"agent_steps": step, "episodes": FLAGS.episodes, "epsilon": FLAGS.epsilon, "seed": config.seed,
              "eval_max_steps": config.eval_max_steps, "games": {}}
    for i, game in enumerate(games):
        row = describe(policy.returns[i], policy.lengths[i])
        row["complete"] = int(policy.complete[i].sum())
        if rand is not None:
            row["random"] = describe(rand.returns[i], rand.lengths[i])
        result["games"][game] = row
        random_mean = f"{row['random']['mean']:.2f}" if rand is not None else "-"
        print(f"| {game} | {row['mean']:.2f} | {row['std']:.2f} | {row['min']:g} | {row['max']:g} | "
              f"{row['distinct_episodes']} | {row['complete']}/{FLAGS.episodes} | {random_mean} |")
    out = FLAGS.out or os.path.join(FLAGS.workdir, "eval_checkpoint.json")
    provenance.write_summary(out, result)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
