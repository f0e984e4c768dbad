"""experiments/compare_runs.py on run folders written by the runner's own logger."""

import json
import os
import subprocess
import sys

import pytest

from mtspark_jax.metrics_log import MetricsLogger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import compare_runs  # noqa: E402


def _run_folder(path, agent, context, evals, recent, random):
    os.makedirs(path)
    log = MetricsLogger(str(path), tensorboard=False)
    for step, game, returns in evals:
        log.eval_row(step, 0, 0, ["Pong", "Enduro"].index(game), game, returns)
    log.close()
    with open(path / "summary.json", "w") as f:
        json.dump({"games": ["Pong", "Enduro"], "agent": agent, "context": context, "agent_steps": 2000,
                   "wall_s": 61.4, "train_recent_return": recent, "random_mean_return": random,
                   "load_avg_before": [1.5, 1.0, 1.0], "load_avg_after": [2.25, 1.0, 1.0],
                   "commit": "abcdef0123"}, f)


def test_table_lists_every_run_per_game_with_final_and_earlier_evaluations(tmp_path):
    _run_folder(tmp_path / "a", "mtspark_add", "task",
                [(1000, "Pong", [-21, -20]), (1000, "Enduro", [0, 0]), (2000, "Pong", [-19, -18]),
                 (2000, "Enduro", [96, 97.5])], [-20.5, 12.0], [-20.75, 0.0])
    _run_folder(tmp_path / "b", "dqn", "task", [(2000, "Pong", [-21, -21]), (2000, "Enduro", [0.625, 0])],
                [-21.0, 0.0], [-20.75, 0.0])
    runs = [compare_runs.load_run(*compare_runs.parse_arg(f"with_context={tmp_path / 'a'}")),
            compare_runs.load_run(*compare_runs.parse_arg(str(tmp_path / "b")))]
    lines = compare_runs.table(runs).splitlines()
    assert "| Pong | with_context | **-18.5** (2) | -20.5 (1k) | -20.5 | -20.75 |" in lines
    assert "| Enduro | with_context | **96.75** (2) | 0 (1k) | 12 | 0 |" in lines
    assert "| Enduro | b | **0.312** (2) | - | 0 | 0 |" in lines
    assert "| b | dqn | task | 2000 | 61 | 1.50 / 2.25 | abcdef0 |" in lines


def test_missing_run_and_bad_argument_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="has the run ended"):
        compare_runs.load_run("x", str(tmp_path))
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        compare_runs.parse_arg("name=")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "compare_runs.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "name at least one run folder" in proc.stderr


def test_targets_table_gives_first_pass_per_game_and_for_all_games_with_training_hours(tmp_path):
    m = 1_000_000
    _run_folder(tmp_path / "a", "mtspark_add", "task",
                [(m, "Pong", [-21, -20]), (m, "Enduro", [400, 380]), (2 * m, "Pong", [-4, -5]),
                 (2 * m, "Enduro", [300, 200]), (3 * m, "Pong", [-3, -2]), (3 * m, "Enduro", [390, 380])],
                [-3.0, 380.0], [-20.75, 0.0])
    log = MetricsLogger(str(tmp_path / "a"), tensorboard=False)
    for step, wall in ((m, 1800.0), (2 * m, 3600.0), (3 * m, 9000.0)):
        log.scalar("charts/wall_s", wall, step)
    log.close()
    run = compare_runs.load_run("a", str(tmp_path / "a"))
    targets = compare_runs.parse_targets("Pong=-5.4, Enduro=371.2")
    assert compare_runs.first_passed(run, targets) == {"Pong": 2 * m, "Enduro": m, "all": 3 * m}
    lines = compare_runs.targets_table([run], targets).splitlines()
    assert lines[0] == "| run | Pong > -5.4 | Enduro > 371.2 | all games |"
    assert lines[2] == "| a | 2.00M steps, 1.00 h | 1.00M steps, 0.50 h | 3.00M steps, 2.50 h |"
    never = compare_runs.first_passed(run, {"Pong": 0.0, "Enduro": 0.0})
    assert never == {"Pong": None, "Enduro": m, "all": None}
    assert "| a | not yet | 1.00M steps, 0.50 h | not yet |" in compare_runs.targets_table([run], {"Pong": 0.0, "Enduro": 0.0})
    with pytest.raises(ValueError, match="GAME=SCORE"):
        compare_runs.parse_targets("Pong=high")
