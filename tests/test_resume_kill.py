"""A run killed with SIGKILL and started again writes the same files as a run never interrupted.

Each backend runs the launcher three times in subprocesses: once to the end,
once killed (SIGKILL) after it has logged rows past its first checkpoint, and
once more with the same command, which resumes. ``eval.csv``, ``metrics.csv``
without its wall-clock columns (``charts/SPS``, ``charts/wall_s``) and the final parameters must
equal the uninterrupted run's.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "train_atari.py")
WALL_CLOCK = {"charts/SPS", "charts/wall_s"}

# Small networks; several chunks between checkpoints so that the killed run
# has logged rows (and evaluations) past the checkpoint it resumes from. Every
# Atari evaluation builds its pools and compiles its loop anew (so that each
# starts as the first did): the Atari runs evaluate every 200 agent steps.
COMMON = ["--preset=cpu", "--agent=dqn", "--num_envs=2", "--hidden=16", "--time_steps=2", "--batch_size=8", "--warmup_steps=40",
          "--buffer_size=400", "--target_update=100", "--eval_episodes=2", "--chunk_iters=25", "--switch_unit=steps",
          "--switch_interval=100", "--eval_on_switch=false", "--keep_checkpoints=5", "--noprogress"]
BACKENDS = {
    "atari": ["--games=Pong,Breakout", "--convs=4:8:4", "--eval_every=200", "--eval_max_steps=60",
              "--checkpoint_every=200", "--total_steps=600"],
    "minatar": ["--backend=minatar", "--games=breakout,space_invaders", "--convs=4:3:1", "--eval_every=100",
                "--eval_max_steps=60", "--checkpoint_every=200", "--total_steps=600"],
}


def _command(workdir, backend):
    return [sys.executable, SCRIPT, f"--workdir={workdir}", *COMMON, *BACKENDS[backend]]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _rows(path, drop=()):
    with open(path, newline="") as f:
        return [r for r in csv.reader(f) if not (len(r) > 1 and r[1] in drop)]


def _checkpoints(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _logged_past(workdir, step):
    path = os.path.join(workdir, "metrics.csv")
    if not os.path.exists(path):
        return False
    with open(path, newline="") as f:
        return any(r[0].isdigit() and int(r[0]) > step for r in csv.reader(f))


def _kill_after_checkpoint(workdir, backend, timeout=300):
    """Starts the run and SIGKILLs it once it has logged rows past its first checkpoint; returns that step."""
    proc = subprocess.Popen(_command(workdir, backend), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = _checkpoints(workdir)
            if steps and _logged_past(workdir, steps[0]):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return steps[0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed after a checkpoint")


def _final_params(workdir):
    import orbax.checkpoint as ocp

    step = _checkpoints(workdir)[-1]
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
        out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, out["state"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, backend):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # The uninterrupted run goes alongside the killed and resumed ones (the runs are independent; on 2
    # cores the compilations overlap).
    uninterrupted = subprocess.Popen(_command(full, backend), env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    try:
        ckpt = _kill_after_checkpoint(resumed, backend)
        assert ckpt < 600
        killed_rows = len(_rows(resumed / "metrics.csv"))
        r = subprocess.run(_command(resumed, backend), env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"resumed from checkpoint at step {ckpt}" in r.stdout
        out, err = uninterrupted.communicate(timeout=600)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    assert uninterrupted.returncode == 0, err[-2000:]
    # The launcher prints the random policy's return beside each evaluation and writes summary.json.
    assert out.count("(random policy") == 2
    summary = json.loads((full / "summary.json").read_text())
    assert summary["agent_steps"] == 600 and summary["finished"] and summary["seed"] == 0
    assert len(summary["eval_mean_return"]) == len(summary["random_mean_return"]) == 2
    assert summary["command"].startswith("experiments/train_atari.py --workdir=") and summary["commit"]

    # The interrupted run had written rows past the checkpoint; none of them is duplicated.
    assert killed_rows > len([x for x in _rows(full / "metrics.csv") if x[0].isdigit() and int(x[0]) <= ckpt]) + 1
    assert _rows(resumed / "eval.csv") == _rows(full / "eval.csv")
    assert len(_rows(full / "eval.csv")) > 4  # several evaluations, some after the checkpoint
    assert _rows(resumed / "metrics.csv", WALL_CLOCK) == _rows(full / "metrics.csv", WALL_CLOCK)

    step_a, state_a = _final_params(full)
    step_b, state_b = _final_params(resumed)
    assert step_a == step_b == 600
    import jax

    leaves_a, leaves_b = jax.tree.leaves(state_a["learner"]), jax.tree.leaves(state_b["learner"])
    assert len(leaves_a) == len(leaves_b) > 0
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves_a, leaves_b))
