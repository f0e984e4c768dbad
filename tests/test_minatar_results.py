"""experiments/minatar_results.py's report on hand-made run folders: t-intervals, distinct episodes, copies."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
from scipy import stats

from mtspark_jax.metrics_log import MetricsLogger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAMES = ["breakout", "breakout@0-3-2-1-4-5"]
FINALS = {0: [9.0, 8.0], 1: [7.5, 8.5], 2: [10.0, 6.0]}  # seed -> final return per task
DISTINCT = {0: [5, 7], 1: [9, 9], 2: [6, 4]}


def _run_folder(path, seed):
    os.makedirs(path)
    log = MetricsLogger(str(path), tensorboard=False)
    for task, game in enumerate(GAMES):
        log.eval_row(120_000, 5, 1, task, game, [FINALS[seed][task]] * 4)
    log.close()
    with open(path / "summary.json", "w") as f:
        json.dump({"global_step": 120_000, "games": GAMES, "eval_mean_return": FINALS[seed],
                   "eval_distinct_episodes": DISTINCT[seed], "seed": seed, "process_wall_s": 300.0}, f)
    (path / "config.json").write_text("{}")


def test_report_gives_t_intervals_distinct_episodes_and_run_copies(tmp_path):
    workdir, out = tmp_path / "runs", tmp_path / "out"
    for seed in FINALS:
        _run_folder(workdir / "round_robin" / "mtspark_add" / f"seed{seed}", seed)
    os.makedirs(out)
    # The random-policy returns, cached under the key the report computes (so no evaluation runs here).
    key = dict(games=GAMES, seeds=[0, 1, 2], episodes=64, max_steps=1000, noop_max=5)
    (out / "random_returns.json").write_text(json.dumps(dict(key=key, returns=[0.5, 0.6])))
    cmd = [sys.executable, "experiments/minatar_results.py", "--preset=minatar_swap", "--agents=mtspark_add",
           "--schedules=round_robin", "--seeds=0,1,2", f"--workdir={workdir}", f"--out={out}", "--norun"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    table = (out / "results.md").read_text()
    for task in range(2):
        v = np.array([FINALS[s][task] for s in FINALS])
        half = stats.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
        assert f"{v.mean():.2f} [{v.mean() - half:.2f}, {v.mean() + half:.2f}]" in table
    assert "| 5-9 | 4-9 |" in table  # distinct episodes, min-max over seeds per task
    assert "| round_robin | mtspark_add | 2 | 10.00 | 6.00 | 6 | 4 |" in table  # a per-seed row
    with open(out / "results.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert rows["1"]["distinct_breakout"] == "9" and float(rows["1"]["final_breakout"]) == 7.5
    copied = json.loads((out / "runs" / "round_robin" / "mtspark_add" / "seed2" / "summary.json").read_text())
    assert copied["eval_distinct_episodes"] == DISTINCT[2]
    assert (out / "runs" / "round_robin" / "mtspark_add" / "seed0" / "eval.csv").exists()
