"""Evaluates a ``train_atari.py`` run's agent over as many episodes as asked, and films it.

    python experiments/eval_atari.py --workdir=runs/pong --episodes=16
    python experiments/eval_atari.py --params=results/atari_main_job/agent.msgpack --video=videos

The agent is the newest checkpoint of ``--workdir``, or the agent file
``--params`` (experiments/export_params.py: the online network and the
run's config, no workdir needed; ``--preset`` plays it under a preset's
config instead, which must build the same network for the same games).

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
lengths, step, command, commit) into the workdir, or to ``--out`` (with
``--params``: only to ``--out``).

``--video=DIR`` also plays one episode per game with the same policy and
writes it to ``DIR/<game>_return_<return>.gif`` (``--video_format=mp4``
needs ``pip install -e '.[video]'``): every ``--video_every``-th agent step,
at most ``--video_max_frames`` frames, while the return is the whole
episode's. Atari videos show the colour screen; with the greedy policy the
episode is the evaluation's first.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import log_levels, provenance  # noqa: E402
from experiments.configs import get_preset  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402
from mtspark_jax.rl import agent_file, runner, video  # noqa: E402
from mtspark_jax.rl.envs import close_envs  # noqa: E402
from mtspark_jax.rl.evaluation import distinct_episodes, make_evaluator  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train_atari.py workdir (config.json and checkpoints/).")
flags.DEFINE_string("params", None, "An agent file (experiments/export_params.py) to play instead of a workdir.")
flags.DEFINE_string("preset", None, "With --params: build the network and the evaluation from this preset of "
                    "experiments/configs/presets.py instead of the file's config.")
flags.DEFINE_integer("episodes", 16, "Full episodes per task.")
flags.DEFINE_float("epsilon", 0.0, "Exploration rate of the evaluated policy (0: greedy).")
flags.DEFINE_bool("random", True, "Also evaluate the uniform random policy on the same pools.")
flags.DEFINE_integer("seed", None, "Seed of the evaluation (pools seed + 7919, policy key); default: the run's.")
flags.DEFINE_string("out", None, "JSON output path (default: <workdir>/eval_checkpoint.json; none with --params).")
flags.DEFINE_string("video", None, "Also write one episode per game as a video into this directory.")
flags.DEFINE_enum("video_format", "gif", list(video.FORMATS), "gif (Pillow) or mp4 (the video extra).")
flags.DEFINE_integer("video_every", 2, "Keep the screen of every n-th agent step (4 Atari frames each).")
flags.DEFINE_integer("video_max_frames", 1000, "At most this many frames per video (the episode still plays out).")
flags.DEFINE_float("video_fps", 15.0, "Frames per second of the video.")
xla_options.define_flag()


def describe(returns: np.ndarray, lengths: np.ndarray) -> dict:
    """Mean, spread and the number of distinct episodes of one task's ``[E]`` returns and lengths."""
    return {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "distinct_episodes": distinct_episodes(returns, lengths),
            "returns": returns.tolist(), "lengths": lengths.tolist()}


def command_line_problem(argv: list[str]) -> str | None:
    """The first thing wrong with the command line, or None."""
    if len(argv) > 1:
        return f"unexpected arguments {argv[1:]}"
    if bool(FLAGS.workdir) == bool(FLAGS.params):
        return "give one of --workdir and --params"
    if FLAGS.preset and not FLAGS.params:
        return "--preset goes with --params (a workdir plays under its own config)"
    for name in ("episodes", "video_every", "video_max_frames"):
        if FLAGS[name].value < 1:
            return f"--{name} must be >= 1, got {FLAGS[name].value}"
    if FLAGS.video_fps <= 0:
        return f"--video_fps must be > 0, got {FLAGS.video_fps}"
    if FLAGS.video:
        try:
            video.check_format(FLAGS.video_format)
        except ImportError as e:
            return str(e)
    return None


def agent_from_flags() -> tuple[str, Any, Any, Any, int]:
    """``(source, config, net, variables, step)`` of ``--params`` or of ``--workdir``'s newest checkpoint."""
    if FLAGS.params:
        agent = agent_file.load_agent(FLAGS.params, get_preset(FLAGS.preset) if FLAGS.preset else None)
        return "agent file", agent.config, agent.net, agent.variables, agent.agent_steps
    run = runner.load_config(FLAGS.workdir)
    net, variables, step = runner.restore_online_variables(run, FLAGS.workdir)
    return "checkpoint", run, net, variables, step


def write_videos(config, games: list[str], net, variables, key) -> dict:
    """Plays one episode per game into ``--video`` (one file each); returns ``{game: {path, return, length,
    complete}}``."""
    os.makedirs(FLAGS.video, exist_ok=True)
    envs = video.recording_envs(config, games)
    written = {}
    try:
        for i, (game, env) in enumerate(zip(games, envs)):
            ep = video.record_episode(net, variables, env, i, config.eval_max_steps, jax.random.fold_in(key, i),
                                      FLAGS.epsilon, FLAGS.video_every, FLAGS.video_max_frames)
            name = video.video_name(game, ep.episode_return, FLAGS.video_format)
            path = video.write_video(os.path.join(FLAGS.video, name), ep.frames, FLAGS.video_fps)
            cut = "" if ep.complete else f", cut at eval_max_steps={config.eval_max_steps}"
            print(f"video: {path} (return {ep.episode_return:g} in {ep.length} agent steps{cut}; "
                  f"{len(ep.frames)} frames, {os.path.getsize(path) / 1024:.0f} KB)")
            written[game] = {"path": path, "return": ep.episode_return, "length": ep.length, "complete": ep.complete}
    finally:
        close_envs(envs)
    return written


def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()
    problem = command_line_problem(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        source, run, net, variables, step = agent_from_flags()
        config = dataclasses.replace(run, eval_episodes=FLAGS.episodes,
                                     seed=run.seed if FLAGS.seed is None else FLAGS.seed)
        games = runner.canonical_games(config)

        def eval_envs():
            return runner.make_task_envs(config, games, is_eval=True)

        evaluate = make_evaluator(net, eval_envs, config.eval_max_steps, FLAGS.epsilon, config.eval_noop_max)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = jax.random.PRNGKey(config.seed + 3)
    policy = evaluate(variables, key)
    rand = None
    if FLAGS.random:
        rand = make_evaluator(net, eval_envs, config.eval_max_steps, epsilon=1.0,
                              noop_max=config.eval_noop_max)(variables, key)
    label = "greedy" if FLAGS.epsilon == 0 else f"epsilon {FLAGS.epsilon:g}"
    print(f"{source} at agent step {step}, {FLAGS.episodes} episodes per game, {label} policy")
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
    if FLAGS.video:
        result["videos"] = write_videos(config, games, net, variables, key)
    out = FLAGS.out or (FLAGS.workdir and os.path.join(FLAGS.workdir, "eval_checkpoint.json"))
    if out:
        provenance.write_summary(out, result)
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
