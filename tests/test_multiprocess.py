"""Two processes on localhost, 2 CPU devices each, train data parallel and match one process.

Each process (tests/multiprocess_check.py) joins through
``jax.distributed.initialize`` with gloo CPU collectives and feeds only its own
rows of every batch. Tolerance: absolute 1e-5, as in tests/test_sharding.py
(float32 summation order is the only difference).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(ROOT),
           "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "multiprocess_check.py"), str(i), "2", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_two_processes_form_one_four_device_job(reports):
    assert sorted(r["process"] for r in reports) == [0, 1]
    for r in reports:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 4, 2)


@pytest.mark.parametrize("check", ["learner_params", "learner_td_loss", "image_params", "image_batch_stats",
                                   "image_loss"])
def test_data_parallel_over_two_processes_equals_one_process(reports, check):
    for r in reports:
        assert r[check]["max_abs"] <= ATOL, (check, r[check])
        assert r[check]["max_abs_ref"] > 0.05  # compared something non-trivial
    for r in reports:
        assert r["learner_params_devices"] == 4 and r["image_batch_devices"] == 4
        assert r["image_local_rows"] == 2  # 8 examples over 4 devices: each process fed 4, 2 per device
