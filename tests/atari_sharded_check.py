"""A sharded Atari sweep vs the unsharded one; executed by tests/test_atari_sweep.py in a subprocess.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (set before
JAX is imported). Four members on two devices (two per device) against the
same four members on one device. The finished sharded sweep is then resumed
from its checkpoint: every device's pools are replayed from the logged
actions (a CheckpointError if they do not reproduce the checkpointed
observations) and nothing is left to train, so no second chunk compiles.
Prints one JSON object: whether each member's env data (observations,
replayed frames, actions, rewards, logged returns, evaluations) are equal,
the largest parameter difference, and facts showing that the sharded state
used both devices.
"""

import csv
import json
import os
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import TINY  # noqa: E402

from mtspark_jax.rl import atari_sweep as AS  # noqa: E402
from mtspark_jax import sharding as sh  # noqa: E402
from mtspark_jax.rl.training import TrainConfig  # noqa: E402

SEEDS = [0, 1, 2, 3]


def returns(path):
    """The logged ``(step, episodic return)`` rows of one member's metrics.csv."""
    with open(path) as f:
        return [(r["step"], r["value"]) for r in csv.DictReader(f) if r["name"] == "charts/episodic_return"]


def run(config, workdir, mesh):
    """Trains the sweep (or resumes it from ``workdir``); its result."""
    sweep = AS.AtariSweep(config, SEEDS, mesh=mesh)
    try:
        return sweep.train(workdir, progress=False)
    finally:
        sweep.close()


def main():
    config = TrainConfig(**{**TINY, "games": ("Pong",), "total_steps": 120, "chunk_iters": 10,
                            "max_episode_steps": 30, "eval_every": 10**6, "checkpoint_every": 10**6})
    mesh = sh.largest_divisor_mesh(len(SEEDS))
    report = {"devices": jax.device_count(), "mesh_devices": int(mesh.devices.size)}
    with tempfile.TemporaryDirectory() as tmp:
        a = run(config, os.path.join(tmp, "sharded"), mesh)
        b = run(config, os.path.join(tmp, "single"), None)
        resumed = run(config, os.path.join(tmp, "sharded"), mesh)
        report["resumed_equal"] = all(bool(np.array_equal(x, y)) for x, y in zip(
            jax.tree.leaves(resumed["state"]), jax.tree.leaves(a["state"])))
        report["resumed_devices"] = len(resumed["state"].obs.sharding.device_set)
        leaf = a["state"].learner.variables["params"]
        leaf = jax.tree.leaves(leaf)[0]
        report["state_devices"] = len(leaf.sharding.device_set)
        report["members_per_device"] = int(leaf.addressable_shards[0].data.shape[0])
        sa, sb = (jax.tree.map(np.asarray, r["state"]) for r in (a, b))
        for name, x, y in [("obs", sa.obs, sb.obs), ("frames", sa.replay.frames, sb.replay.frames),
                           ("actions", sa.replay.actions, sb.replay.actions),
                           ("rewards", sa.replay.rewards, sb.replay.rewards)]:
            report[f"equal_{name}"] = [bool(np.array_equal(x[k], y[k])) for k in range(len(SEEDS))]
        report["rows_equal"] = a["members"] == b["members"]
        report["episodes"] = [r["episodes"] for r in a["members"]]
        report["returns_equal"] = [
            returns(os.path.join(tmp, "sharded", f"member_{k:02d}", "metrics.csv"))
            == returns(os.path.join(tmp, "single", f"member_{k:02d}", "metrics.csv")) for k in range(len(SEEDS))]
        report["finished"] = [a["finished"], b["finished"]]
        pa, pb = jax.tree.leaves(sa.learner.variables), jax.tree.leaves(sb.learner.variables)
        report["params_max_abs"] = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(pa, pb))
        # Members differ (seeds), so equal members would be no accident.
        report["params_members_apart"] = max(float(np.max(np.abs(y[0] - y[1]))) for y in pb)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
