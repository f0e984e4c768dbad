"""What every sweep shares: members, settings, the progress text, the table; and the launcher."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtspark_jax import config_flags, sweeps
from mtspark_jax.rl.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_make_members_is_grid_product_times_seeds():
    m = sweeps.make_members({"learning_rate": (1e-3, 3e-3), "tau": (2.0, 4.0)}, [5, 6])
    assert m.size == 8 and len(m.settings) == 4
    assert m.settings[1] == {"learning_rate": 1e-3, "tau": 4.0}
    np.testing.assert_array_equal(m.setting, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(m.seed, [5, 6] * 4)
    np.testing.assert_allclose(m.values("tau", 9.0), [2, 2, 4, 4, 2, 2, 4, 4])
    np.testing.assert_allclose(m.values("alpha", 9.0), [9.0] * 8)
    assert sweeps.make_members({}, [0]).settings == ({},)
    with pytest.raises(ValueError, match="at least one seed"):
        sweeps.make_members({"tau": (2.0,)}, [])


def test_train_grid_settings_give_typed_configs():
    grid = config_flags.parse_grid("lr=1e-4,3e-4;eps_decay_steps=1e4;games=breakout",
                                   config_flags.field_types(TrainConfig))
    assert grid == {"lr": (1e-4, 3e-4), "eps_decay_steps": (10_000,), "games": (("breakout",),)}
    members = sweeps.make_members(grid, [0])
    config = sweeps.setting_config(TrainConfig(), members.settings[1])
    assert (config.lr, config.eps_decay_steps, config.games) == (3e-4, 10_000, ("breakout",))
    # A whole float for an int field (a hand-written grid) becomes an int.
    assert sweeps.setting_config(TrainConfig(), {"eps_decay_steps": 2e3}).eps_decay_steps == 2000
    assert isinstance(sweeps.setting_config(TrainConfig(), {"eps_decay_steps": 2e3}).eps_decay_steps, int)
    with pytest.raises(ValueError, match="'hidden_size' is not a TrainConfig field"):
        sweeps.setting_config(TrainConfig(), {"hidden_size": 8})
    assert sweeps.setting_label(members.settings[0]) == "lr=0.0001,eps_decay_steps=10000,games=breakout"
    assert sweeps.setting_label({}) == ""


def test_member_progress_means_over_members_that_did_not_diverge():
    nan = np.nan
    text = sweeps.member_progress({"ret": np.array([1.0, 3.0, 100.0, nan]), "td": np.array([nan, nan, 5.0, nan])},
                                  np.array([False, False, True, False]))
    # ret: mean of 1 and 3 (member 2 diverged, member 3 has no episode yet); td: no member has one.
    assert text == "ret 2 td - (1 of 4 diverged)"
    assert sweeps.member_progress({"loss": np.array([0.25, 0.5])}, np.zeros(2, bool)) == "loss 0.375"


def test_progress_bar_prints_only_when_enabled(capsys):
    with sweeps.progress_bar(10, False, "off") as bar:
        bar.update(10)
        bar.set_postfix_str("ret 1")
    assert capsys.readouterr().err == ""
    with sweeps.progress_bar(10, True, "on") as bar:
        bar.update(4)
        bar.set_postfix_str("ret 1.5")
    err = capsys.readouterr().err
    assert "on" in err and "4/10" in err and "ret 1.5" in err


def test_chunk_td_health_flags_non_finite_updates_only():
    nan = np.nan
    td = np.array([[nan, 1.0, 3.0], [nan, nan, nan], [2.0, np.inf, 4.0], [nan, nan, nan]])
    updates = np.array([[0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    diverged, mean = sweeps.chunk_td_health(td, updates)
    # Member 0: NaN only where it did not update (warm-up); member 3 updated once with a NaN loss.
    assert diverged.tolist() == [False, False, True, True]
    assert mean[0] == 2.0 and mean[2] == np.inf
    assert np.isnan(mean[1]) and np.isnan(mean[3])


def test_summarize_and_write_table(tmp_path):
    result = {"settings": ({"lr": 1e-3}, {"lr": 1e38}),
              "members": [dict(setting=0, seed=0, diverged=False, accuracy=0.5),
                          dict(setting=0, seed=1, diverged=False, accuracy=0.7),
                          dict(setting=1, seed=0, diverged=True, accuracy=float("nan"))]}
    rows = sweeps.summarize_members(result, ["accuracy"])
    assert rows[0]["members"] == 2 and rows[0]["diverged"] == 0 and rows[1]["diverged"] == 1
    np.testing.assert_allclose([rows[0]["accuracy_mean"], rows[0]["accuracy_std"]], [0.6, np.std([0.5, 0.7], ddof=1)])
    assert np.isnan(rows[1]["accuracy_mean"])
    md = sweeps.write_table(rows, ["accuracy"], tmp_path)
    assert md.splitlines()[0] == "| lr | members | diverged | accuracy |"
    assert "| 0.001 | 2 | 0 | 0.6 ± 0.1414 |" in md and "| 1e+38 | 1 | 1 | nan ± nan |" in md
    assert (tmp_path / "sweep.md").read_text() == md + "\n"
    sweeps.write_members(result, tmp_path)
    assert [r["seed"] for r in csv.DictReader(open(tmp_path / "members.csv"))] == ["0", "1", "0"]


def test_sweep_launcher_writes_table_with_diverged_setting(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--task=images", "--synthetic",
         f"--workdir={tmp_path}", "--grid=learning_rate=1e-2,1e38", "--num_seeds=1",
         "--set=epochs=1,batch_size=8,hidden=4,time_steps=1,max_train_examples=16,max_eval_examples=8"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "sweep.md").read_text()
    assert "| 1e+38 | 1 | 1 |" in md and "| 0.01 | 1 | 0 |" in md
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [r["diverged"] for r in rows] == ["0", "1"]
    assert np.isfinite(float(rows[0]["accuracy_mean"])) and np.isfinite(float(rows[0]["energy/snn_uJ_mean"]))
    assert len(list(csv.DictReader(open(tmp_path / "members.csv")))) == 2
    # The progress bar: 2 data sets x 16 examples / batch 8 = 4 steps, the mean of the healthy member.
    assert "epoch 1/1" in out.stderr and "4/4" in out.stderr and "(1 of 2 diverged)" in out.stderr
    assert " loss " in out.stderr and " acc " in out.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--grid=hidden=8"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "cannot sweep 'hidden'" in bad.stderr
