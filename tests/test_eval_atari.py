"""experiments/eval_atari.py: the newest checkpoint's policy over as many episodes as asked."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import get_preset
from PIL import Image

from mtspark_jax.rl import agent_file, runner, video
from mtspark_jax.rl.evaluation import make_evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "eval_atari.py")
EXPORT = os.path.join(ROOT, "experiments", "export_params.py")
TINY = dict(num_envs=2, batch_size=4, buffer_size=2000, warmup_steps=64, total_steps=320, chunk_iters=40,
            eval_every=10**9, eval_episodes=2, eval_max_steps=800, hidden=16, convs="4:8:4,8:4:2",
            checkpoint_every=10**9)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = dataclasses.replace(get_preset("pong"), **TINY)
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = runner.train_and_evaluate(config, workdir, progress=False, tensorboard=False)
    return config, workdir, summary, runner.restore_online_variables(config, workdir)


def _run(script, *args):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _eval(*args):
    return _run(SCRIPT, *args)


def test_restore_gives_the_final_online_network_and_the_saved_config(finished_run):
    config, workdir, summary, (_, variables, step) = finished_run
    assert runner.load_config(workdir) == config
    assert step == summary.global_step == 320
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(summary.state.learner.variables), strict=True):
        np.testing.assert_array_equal(got, want)


def test_eval_script_plays_the_asked_episodes_and_starts_like_the_run_evaluations(finished_run, tmp_path):
    config, workdir, summary, (net, _, _) = finished_run
    proc = _eval(f"--workdir={workdir}", "--episodes=3", f"--out={tmp_path / 'e.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint at agent step 320, 3 episodes per game, greedy policy" in proc.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    pong = result["games"]["Pong"]
    assert result["agent_steps"] == 320 and len(pong["returns"]) == len(pong["lengths"]) == 3
    assert all(n <= 800 for n in pong["lengths"]) and len(pong["random"]["returns"]) == 3
    assert pong["mean"] == pytest.approx(np.mean(pong["returns"]))
    # Pool env j is seeded seed + 7919 + j: the first 2 episodes are those of the run's own 2-episode evaluation.
    games = runner.canonical_games(config)
    evaluate = make_evaluator(net, lambda: runner.make_task_envs(config, games, is_eval=True), config.eval_max_steps)
    own = evaluate(summary.state.learner.variables, jax.random.PRNGKey(0))
    assert own.returns[0].tolist() == pong["returns"][:2] and own.lengths[0].tolist() == pong["lengths"][:2]
    assert "eval_atari.py" in result["command"] and result["commit"]


@pytest.mark.parametrize("args,message", [
    ([], "give one of --workdir and --params"),
    (["--workdir=/nonexistent/run", "--preset=pong"], "--preset goes with --params"),
    (["--workdir=/nonexistent/run", "--episodes=0"], "--episodes must be >= 1"),
    (["--workdir=/nonexistent/run"], "holds no config.json"),
    (["--params=/nonexistent/agent.msgpack"], "No such file"),
])
def test_eval_script_bad_input_one_line(args, message):
    proc = _eval(*args)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    _, workdir, _, _ = finished_run
    path = str(tmp_path_factory.mktemp("agent") / "agent.msgpack")
    proc = _run(EXPORT, f"--workdir={workdir}", f"--out={path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path, proc


def test_export_writes_the_final_online_network_bit_for_bit(finished_run, exported):
    config, _, _, (_, variables, step) = finished_run
    path, proc = exported
    assert proc.stdout.startswith(f"wrote {path} (") and "mtspark_add on Pong at agent step 320" in proc.stdout
    agent = agent_file.load_agent(path)
    assert agent.config == config and agent.tasks == ["Pong"] and agent.agent_steps == step == 320
    assert jax.tree.structure(agent.variables) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(agent.variables), jax.tree.leaves(variables), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_params_play_as_the_workdir_and_the_video_shows_the_first_episode(finished_run, exported, tmp_path):
    config, _, _, (net, variables, _) = finished_run
    proc = _eval(f"--params={exported[0]}", "--episodes=2", "--norandom", f"--out={tmp_path / 'e.json'}",
                 f"--video={tmp_path / 'videos'}", "--video_every=3", "--video_max_frames=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "agent file at agent step 320, 2 episodes per game, greedy policy" in proc.stdout
    # Quiet logs: no INFO line (absl's "I1207 ..." prefix) and no TPU-backend line.
    assert not [line for line in proc.stderr.splitlines() if line[:1] == "I" and line[1:5].isdigit()]
    assert "Unable to initialize backend" not in proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    games = runner.canonical_games(config)
    evaluate = make_evaluator(net, lambda: runner.make_task_envs(dataclasses.replace(config, eval_episodes=2), games,
                                                                 is_eval=True), config.eval_max_steps)
    own = evaluate(variables, jax.random.PRNGKey(config.seed + 3))
    assert result["games"]["Pong"]["returns"] == own.returns[0].tolist()
    assert result["games"]["Pong"]["lengths"] == own.lengths[0].tolist()
    clip = result["videos"]["Pong"]
    assert (clip["return"], clip["length"]) == (own.returns[0][0], own.lengths[0][0])
    assert os.path.basename(clip["path"]) == video.video_name("Pong", own.returns[0][0], "gif")
    with Image.open(clip["path"]) as gif:
        assert gif.size == (160, 210) and gif.n_frames > 1  # EnvPool's colour screen, width x height
        gif.seek(gif.n_frames - 1)
        assert len(np.unique(np.asarray(gif.convert("RGB")).reshape(-1, 3), axis=0)) > 2
    assert f"video: {clip['path']} (return {clip['return']:g} in {clip['length']} agent steps" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--workdir=/nonexistent/run"], "give --workdir and --out"),
    (["--workdir=/nonexistent/run", "--out=a.msgpack"], "holds no config.json"),
])
def test_export_bad_input_one_line(args, message):
    proc = _run(EXPORT, *args)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]


def test_params_under_a_preset_that_builds_another_network_is_refused(exported):
    proc = _eval(f"--params={exported[0]}", "--preset=pong")
    assert proc.returncode == 2 and "do not fit the given config" in proc.stderr.strip().splitlines()[-1]
