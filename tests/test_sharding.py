"""Sharded (4 CPU devices) vs single-device runs give the same numbers.

The device count must be set before JAX is imported, so the comparisons run
in a subprocess (tests/sharded_check.py) with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
Tolerance: absolute 1e-5 (parameters are O(1); float32 summation order is the
only difference between the runs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtspark_jax import sharding as sh

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_check.py")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_image_train_step_data_parallel_equals_single_device(report):
    assert report["image_batch_devices"] == 4 and report["image_shard_rows"] == 2  # 8 examples / 4 devices
    assert report["image_params_devices"] == 4
    for k in ("image_params", "image_batch_stats", "image_loss"):
        assert report[k]["max_abs"] <= ATOL, (k, report[k])
        assert report[k]["max_abs_ref"] > 0.1  # compared something non-trivial


def test_learner_update_data_parallel_equals_single_device(report):
    assert report["learner_params_devices"] == 4
    for k in ("learner_params", "learner_td_loss"):
        assert report[k]["max_abs"] <= ATOL, (k, report[k])


def test_sweep_members_across_devices_equal_unsharded_sweep(report):
    assert report["sweep_mesh_devices"] == 4 and report["sweep_state_devices"] == 4
    assert report["sweep_rows_per_device"] == 1  # one member per device
    assert report["sweep_members"]["max_abs"] <= ATOL


def test_initialize_distributed_validates_flags():
    assert sh.initialize_distributed("", 1, 0) is False  # single host: no-op
    with pytest.raises(ValueError, match="coordinator_address"):
        sh.initialize_distributed("", 2, 0)
    with pytest.raises(ValueError, match="process_id"):
        sh.initialize_distributed("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="num_processes"):
        sh.initialize_distributed("", 0, 0)


def test_shard_leading_rejects_indivisible_axis():
    mesh = sh.make_mesh()
    n = mesh.devices.size
    if n == 1:
        assert sh.shard_leading({"x": np.arange(3.0)}, mesh)["x"].shape == (3,)
    else:
        with pytest.raises(ValueError, match="multiple"):
            sh.shard_leading({"x": np.arange(n + 1.0)}, mesh)
