"""Checkpoints: resume is bit-identical; corrupt checkpoints are refused and an older one is used."""

import os

import jax
import numpy as np
import pytest

from mtspark_jax import checkpoint as C
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
