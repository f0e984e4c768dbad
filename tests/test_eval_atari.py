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
from mtspark_jax.rl import runner
from mtspark_jax.rl.evaluation import make_evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "eval_atari.py")
TINY = dict(num_envs=2, batch_size=4, buffer_size=2000, warmup_steps=64, total_steps=320, chunk_iters=40,
            eval_every=10**9, eval_episodes=2, eval_max_steps=800, hidden=16, convs="4:8:4,8:4:2",
            checkpoint_every=10**9)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = dataclasses.replace(get_preset("pong"), **TINY)
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = runner.train_and_evaluate(config, workdir, progress=False, tensorboard=False)
    return config, workdir, summary, runner.restore_online_variables(config, workdir)


def _eval(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


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
    ([], "--workdir is required"),
    (["--workdir=/nonexistent/run", "--episodes=0"], "--episodes must be >= 1"),
    (["--workdir=/nonexistent/run"], "holds no config.json"),
])
def test_eval_script_bad_input_one_line(args, message):
    proc = _eval(*args)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]
