"""Checkpoints: resume is bit-identical; corrupt checkpoints are refused and an older one is used;
a failed save stops the run with one line, and the same call resumes exactly."""

import csv
import errno
import json
import logging
import os
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtspark_jax import checkpoint as C
from mtspark_jax import workdir
from mtspark_jax.metrics_log import MetricsLogger
from mtspark_jax.rl import runner


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mtspark_jax.rl.training import TrainConfig
    from conftest import TINY

    # DQN compiles fastest; resume exactness does not depend on the network.
    cfg = TrainConfig(**{**TINY, "agent": "dqn", "games": ("Breakout", "Pong"), "chunk_iters": 50, "switch_interval": 100,
                         "switch_unit": "steps", "total_steps": 400, "eval_every": 10_000, "eval_on_switch": True,
                         "checkpoint_every": 100, "keep_checkpoints": 2})
    base = tmp_path_factory.mktemp("ckpt")
    full = runner.train_and_evaluate(cfg, str(base / "full"), progress=False, tensorboard=False)
    part = runner.train_and_evaluate(cfg, str(base / "resumed"), progress=False, tensorboard=False, max_chunks=2)
    rest = runner.train_and_evaluate(cfg, str(base / "resumed"), progress=False, tensorboard=False)
    return cfg, base, full, part, rest


def test_resume_is_bit_identical(runs):
    cfg, base, full, part, rest = runs
    assert part.global_step == 200 and not part.finished
    assert full.global_step == rest.global_step == 400
    s1, s2 = full.state, rest.state
    assert _same(s1.learner, s2.learner)
    assert _same(s1.replay, s2.replay)
    assert _same((s1.obs, s1.rng, s1.schedule, s1.task_steps), (s2.obs, s2.rng, s2.schedule, s2.task_steps))
    # Every task is evaluated after every switch (and at the end): forgetting can be read off.
    import csv
    rows = list(csv.DictReader(open(base / "full" / "eval.csv")))
    assert full.switches == 4  # one per chunk of 50 iterations x 2 envs
    # 4 switches, each at a chunk end; the last at step 400 doubles as the final evaluation.
    assert len(rows) == 2 * full.switches
    assert sorted({int(r["step"]) for r in rows}) == [100, 200, 300, 400]
    assert {r["game"] for r in rows} == {"Breakout", "Pong"}
    # keep_checkpoints=2: only the newest two remain.
    assert sorted(int(d) for d in os.listdir(base / "full" / "checkpoints") if d.isdigit()) == [300, 400]


def test_corrupt_latest_is_refused_and_older_used(runs, capsys):
    cfg, base, full, part, rest = runs
    d = base / "full" / "checkpoints"
    # Corrupt every data file of the newest checkpoint's state.
    for root, _, files in os.walk(d / "400" / "state"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    ck = C.Checkpointer(str(d), keep=2)
    template = full.state
    step, state, actions, meta = ck.restore_latest(template)
    assert step == 300
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "checkpoint 400" in warnings[0] and len(warnings[0]) < 400
    assert int(state.global_step) == 300
    assert [a.shape[1] for a in actions] == [2, 2]
    # A partial (temporary) save directory is not listed at all.
    os.makedirs(d / "500.orbax-checkpoint-tmp-1")
    assert ck.steps() == [300, 400]
    ck.close()


def test_refusal_line_is_one_short_line():
    spec = "Error opening \"zarr\" driver: {\n  \"driver\": \"zarr\",\n  \"kvstore\": " + "x" * 500 + "\n}"
    line = C.refusal_line(400, "/runs/a/checkpoints", ValueError(spec))
    assert "\n" not in line and len(line) < 300
    assert line.startswith("checkpoint 400 in /runs/a/checkpoints") and "ValueError" in line
    assert C.refusal_line(3, "/d", KeyError()).count("KeyError") == 1


def test_logger_without_tensorboardx_writes_the_csvs(tmp_path, monkeypatch, caplog):
    """Where tensorboardX is missing (the GPU image), the logger warns and still writes every scalar."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` raise ImportError
    log = MetricsLogger(str(tmp_path))
    log.scalar("charts/SPS", 12.5, 8)
    log.eval_row(8, 0, 0, 0, "Pong", [-21.0, -20.0])
    log.close()
    assert log.writer is None and "tensorboardX is not installed" in caplog.text
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,name,value", "8,charts/SPS,12.5"]
    assert (tmp_path / "eval.csv").read_text().splitlines()[1] == "8,0,0,0,Pong,-20.5,-21 -20"
    assert not (tmp_path / "tb").exists()


def _rows(path, drop=("charts/SPS", "charts/wall_s")):
    with open(path, newline="") as f:
        return [r for r in csv.reader(f) if not (len(r) > 1 and r[1] in drop)]


def test_failed_save_names_the_newest_checkpoint_and_the_same_call_resumes_exactly(runs, tmp_path, monkeypatch):
    """A full disk at checkpoint 300 (faked: Orbax's error with the ENOSPC chained, as TensorStore
    raises it) stops the run with one line naming checkpoint 200; the older checkpoints survive, and
    the same call then resumes from 200 and ends as the uninterrupted run. The workdir starts with
    the lock file of a process that died, which does not block."""
    cfg, base, full, _, _ = runs
    wd = tmp_path / "disk_full"
    wd.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (wd / workdir.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "crashed-host"}))
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 300:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:
                raise ValueError('Error writing "state/ocdbt.process_0/d/1" in OCDBT: {\n  "driver": "file"\n}') from e
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(workdir.WriteFailed) as err:
        runner.train_and_evaluate(cfg, str(wd), progress=False, tensorboard=False)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"writing checkpoint 300 in {wd / 'checkpoints'} failed: the disk is full (ValueError")
    assert line.endswith("the newest complete checkpoint is step 200: free space and run the same command again "
                         "to resume from it")
    assert sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit()) == [100, 200]

    monkeypatch.undo()
    rest = runner.train_and_evaluate(cfg, str(wd), progress=False, tensorboard=False)
    assert rest.global_step == full.global_step == 400
    assert _same(full.state.learner, rest.state.learner) and _same(full.state.replay, rest.state.replay)
    for name in ("eval.csv", "metrics.csv"):
        assert _rows(wd / name) == _rows(base / "full" / name), name


def _unraisable(message):
    """What TensorStore's write callbacks raise into a closed event loop (reported as unraisable)."""
    try:
        raise RuntimeError(message)
    except RuntimeError as e:
        return types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=e.__traceback__,
                                     err_msg=None, object=None)


def test_what_a_failed_save_prints_goes_to_the_debug_log(caplog, monkeypatch):
    """Orbax's threads log a failed write at ERROR with a traceback each, and TensorStore's pending
    writes raise unraisable errors; during a save both move to the debug log, so the one line of
    WriteFailed stands alone. After a save that succeeds, unraisable errors reach the previous hook."""
    caplog.set_level(logging.DEBUG)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    absl_logger = logging.getLogger("absl")  # Orbax logs through absl
    record = absl_logger.makeRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/future.py", 387,
                                    "_SignalingThread.run() raised an exception: %s", ("No space left",), None)
    with pytest.raises(workdir.WriteFailed, match="newest complete checkpoint is step 2"):
        with C.guard_save("checkpoint 3 in /d", lambda: 2):
            absl_logger.handle(record)
            sys.unraisablehook(_unraisable("Event loop is closed"))
            raise ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device [os_error_code='28']")
    assert [r.levelno for r in caplog.records if "raised an exception" in r.getMessage()] == [logging.DEBUG]
    assert "Event loop is closed" in caplog.text and reported == []
    caplog.clear()
    absl_logger.handle(record)  # outside a save, Orbax's logs are left alone
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    with C.guard_save("checkpoint 4 in /d", lambda: 2):
        sys.unraisablehook(_unraisable("not from a failed save"))
    assert [str(u.exc_value) for u in reported] == ["not from a failed save"]
    assert sys.unraisablehook == reported.append
