"""Atari sweeps: members sharing one EnvPool per game equal their solo runs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mtspark_jax.rl import atari_sweep as AS
from mtspark_jax.rl import runner

ROOT = Path(__file__).resolve().parents[1]


def _config(tiny_config, **kw):
    return tiny_config(games=("Pong",), total_steps=120, chunk_iters=10, warmup_steps=40, eval_every=10**6,
                       checkpoint_every=10**6, **kw)


def test_member_configs_and_refused_schedules(tiny_config):
    c = _config(tiny_config, env_seed=100)
    members = AS.member_configs(c, [5, 7, 7])
    assert [(m.seed, m.env_seed) for m in members] == [(5, 100), (7, 102), (7, 104)]
    assert c.training_env_seed == 100 and tiny_config().training_env_seed == 0
    with pytest.raises(ValueError, match="same task"):
        AS.validate_sweep_config(tiny_config(games=("Pong", "Breakout"), switch_unit="episodes"))
    with pytest.raises(ValueError, match="same task"):
        AS.validate_sweep_config(tiny_config(games=("Pong", "Breakout"), schedule="adaptive"))
    AS.validate_sweep_config(tiny_config(games=("Pong", "Breakout"), switch_unit="steps"))
    with pytest.raises(ValueError, match="backend='atari'"):
        AS.validate_sweep_config(tiny_config(backend="minatar", games=("breakout",), convs="4:3:1"))
    with pytest.raises(ValueError, match="env_seed"):
        AS.validate_sweep_config(_config(tiny_config, env_seed=-2))
    # Four members of 2 envs on two devices: 4 envs per device, seeded 100 and 104 (env j: 100 + j, as unsharded).
    pools = AS.device_pool_configs(c, 4, 2)
    assert [(p.num_envs, p.env_seed) for p in pools] == [(4, 100), (4, 104)]
    assert [(p.num_envs, p.env_seed) for p in AS.device_pool_configs(c, 3, 1)] == [(6, 100)]
    with pytest.raises(ValueError, match="divide"):
        AS.device_pool_configs(c, 3, 2)
    # Pool order <-> member order: member k owns envs [k N, (k + 1) N) of every task's pool.
    obs = np.arange(2 * 3 * 2 * 5).reshape(2, 6, 5)  # [tasks 2, M 3 x N 2, 5]
    per_member = np.asarray(AS.member_order(obs, 3))
    assert per_member.shape == (3, 2, 2, 5) and (per_member[1, 0] == obs[0, 2:4]).all()
    assert (np.asarray(AS.pool_order(per_member)) == obs).all()


def _read_returns(path):
    with open(path) as f:
        return [(r["step"], r["value"]) for r in csv.DictReader(f) if r["name"] == "charts/episodic_return"]


@pytest.mark.slow
def test_two_member_sweep_resumes_and_equals_solo_runs(tmp_path, tiny_config):
    """Two seeds on one shared pool, stopped after one chunk and resumed, against each seed's solo run.

    The envs match bit for bit: each member's observations and actions equal
    its solo run's. The parameters agree to 1e-5: XLA:CPU computes the
    stacked members' matmuls and convolutions in batched kernels whose float
    sums are ordered differently from one member's (about 1e-7 apart after
    these updates). Greedy evaluations, episodes and logged returns are equal.
    """
    config = _config(tiny_config, max_episode_steps=30)  # Pong episodes end inside the run
    workdir = str(tmp_path / "sweep")
    first = AS.AtariSweep(config, [0, 1])
    try:
        part = first.train(workdir, progress=False, max_chunks=1)
    finally:
        first.close()
    assert not part["finished"] and part["global_step"] == config.chunk_iters * config.num_envs
    second = AS.AtariSweep(config, [0, 1])
    try:
        result = second.train(workdir, progress=False)  # resumes from the checkpoint of the first call
    finally:
        second.close()
    assert result["finished"]
    for k, member in enumerate(AS.member_configs(config, [0, 1])):
        solo = runner.train_and_evaluate(member, str(tmp_path / f"solo{k}"), progress=False, tensorboard=False)
        row, mine = result["members"][k], jax.tree.map(lambda x: np.asarray(x[k]), result["state"])
        assert (row["seed"], row["env_seed"], row["diverged"]) == (member.seed, member.env_seed, False)
        np.testing.assert_array_equal(mine.obs, np.asarray(solo.state.obs))
        np.testing.assert_array_equal(mine.replay.actions, np.asarray(solo.state.replay.actions))
        for a, b in zip(jax.tree.leaves(mine.learner.variables), jax.tree.leaves(solo.state.learner.variables)):
            np.testing.assert_allclose(a, np.asarray(b), rtol=0, atol=1e-5)
        assert row["eval/Pong"] == solo.eval_mean_return[0]
        assert row["episodes"] == sum(solo.episodes) > 0
        mdir = tmp_path / "sweep" / f"member_{k:02d}"
        assert _read_returns(mdir / "metrics.csv") == _read_returns(tmp_path / f"solo{k}" / "metrics.csv")
        assert len(_read_returns(mdir / "metrics.csv")) == sum(solo.episodes)
    seeds = {(r["seed"], r["env_seed"]) for r in result["members"]}
    assert seeds == {(0, 0), (1, config.num_envs)}


@pytest.mark.slow
def test_sharded_sweep_equals_unsharded_sweep():
    """Four members on two forced CPU devices (tests/atari_sharded_check.py, in a subprocess) against the
    same members on one device: env data bit for bit, parameters to 1e-6 (batched float sums over 2 members
    per device instead of 4), and the finished sharded sweep resumes from its checkpoint (each device's pools
    replayed) to the same state."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(ROOT),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "atari_sharded_check.py")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["mesh_devices"] == report["state_devices"] == report["resumed_devices"] == 2
    assert report["members_per_device"] == 2
    assert report["finished"] == [True, True]
    for k in ("equal_obs", "equal_frames", "equal_actions", "equal_rewards", "returns_equal"):
        assert report[k] == [True] * 4, (k, report[k])
    assert report["rows_equal"] and min(report["episodes"]) > 0  # evaluations, episodes, training returns
    assert report["params_max_abs"] <= 1e-6 and report["params_members_apart"] > 0.1
    assert report["resumed_equal"]


@pytest.mark.slow
def test_sweep_launcher_atari_writes_table_and_member_logs(tmp_path):
    small = ("num_envs=2,hidden=16,convs=4:8:4,time_steps=2,batch_size=8,warmup_steps=20,buffer_size=200,"
             "total_steps=40,chunk_iters=10,eval_episodes=1,eval_max_steps=20,eval_random=False")
    two_devices = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--task=atari", f"--workdir={tmp_path}",
         "--grid=lr=1e-3", "--num_seeds=2", "--noprogress", "--shard", f"--set={small}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=two_devices)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "setting 0: 2 members on 2 devices" in out.stdout
    table = (tmp_path / "sweep.md").read_text()
    assert "| lr | members | diverged | return | final_td_loss | eval/Pong |" in table
    assert "| 0.001 | 2 | 0 |" in table
    with open(tmp_path / "members.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["env_seed"]) for r in rows] == [("0", "0"), ("1", "2")]
    for k in range(2):
        assert (tmp_path / "setting_00" / f"member_{k:02d}" / "eval.csv").exists()
    assert (tmp_path / "setting_00" / "members.json").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--task=atari",
                          "--set=games=Pong,Breakout,full_action_space=True,switch_unit=episodes"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "same task" in bad.stderr
