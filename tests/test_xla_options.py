"""The process-wide options the launchers set (mtspark_jax.xla_options)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from absl import flags

from mtspark_jax import xla_options

ROOT = Path(__file__).resolve().parents[1]

_PROGRAM = textwrap.dedent("""
    import os, sys
    from absl import flags
    from mtspark_jax import xla_options
    xla_options.define_flag()  # as the launchers do: --fast_cpu_convolutions, default on
    flags.FLAGS(["launcher"] + (["--nofast_cpu_convolutions"] if sys.argv[1] == "off" else []))
    applied = xla_options.apply_flag().fast_cpu_convolutions
    import jax, jax.numpy as jnp
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    x, w = jnp.arange(8 * 20 * 20 * 32.0).reshape(8, 20, 20, 32) % 7, jnp.ones((4, 4, 32, 64)) / 64
    compiled = conv.lower(x, w).compile().as_text()
    print(applied, "ynn_fusion" in compiled, float(conv(x, w).sum()))
    if sys.argv[1] == "off":
        print("late call applied:", xla_options.use_fast_cpu_convolutions(), os.environ.get("XLA_FLAGS", ""))
""")


def _run(mode: str, xla_flags: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags}
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if mode == "off":
        assert "not applied: JAX has already started" in proc.stderr  # the warning
    return proc.stdout


def test_the_flag_moves_convolutions_off_ynnpack_with_the_same_result():
    on, off = _run("on").splitlines(), _run("off").splitlines()
    applied, ynn, total = on[0].split()
    assert applied == "True" and ynn == "False"  # the convolution is no longer a YNNPACK fusion
    assert off[0].split()[:2] == ["False", "True"]  # XLA's default: a YNNPACK fusion
    assert float(total) == pytest.approx(float(off[0].split()[2]), rel=1e-6)
    assert off[1].split() == ["late", "call", "applied:", "False"]  # too late to apply: left out


def test_a_users_own_choice_of_fusion_types_is_kept():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_options.use_fast_cpu_convolutions(env) is False
    assert env == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_options.use_fast_cpu_convolutions(env) is True
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", xla_options.FAST_CPU_CONVOLUTIONS]
    assert xla_options.use_fast_cpu_convolutions(env) is True and env["XLA_FLAGS"].count("ynn") == 1  # idempotent


_STEPS_PROGRAM = textwrap.dedent("""
    import resource, sys
    from absl import flags
    from mtspark_jax import xla_options
    xla_options.define_flag()
    flags.FLAGS(["launcher"] + sys.argv[1:])
    applied = xla_options.apply_flag()
    import jax, jax.numpy as jnp
    # two cumulative sums: a 52 MB temporary buffer per call, above glibc's largest mmap threshold (32 MB)
    f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(x, axis=0), axis=1).sum())
    x = jnp.arange(1536 * 4096, dtype=jnp.float32).reshape(1536, 4096) % 1000
    temp_mb = f.lower(x).compile().memory_analysis().temp_size_in_bytes / 2**20
    faults = []
    for _ in range(24):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        value = float(f(x).block_until_ready())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied.reuse_host_memory, temp_mb, sorted(faults[4:])[10], value)
""")


def _steps(*args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    proc = subprocess.run([sys.executable, "-c", _STEPS_PROGRAM, *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(xla_options._glibc() is None, reason="the option concerns glibc's malloc")
def test_reusing_freed_host_memory_ends_the_page_faults_of_every_step():
    applied, temp_mb, faults, value = _steps()
    applied_off, temp_mb_off, faults_off, value_off = _steps("--noreuse_host_memory")
    assert (applied, applied_off) == ("True", "False")
    assert float(temp_mb) == float(temp_mb_off) > 40
    # glibc's default: the temporary buffer is mapped anew, a fault per 4 KiB page (13,000) every call
    assert int(faults_off) > 0.8 * float(temp_mb_off) * 256
    # with the option: the median call (of the last 20) reuses the pages of the calls before; the
    # heap still grows by a buffer now and then, in a few bursts, until it holds enough free blocks
    assert int(faults) < 100
    assert value == value_off


def test_define_flag_gives_both_options_and_apply_flag_says_what_took_effect():
    fv = flags.FlagValues()
    xla_options.define_flag(fv)
    xla_options.define_flag(fv)  # idempotent
    fv(["launcher", "--nofast_cpu_convolutions", "--noreuse_host_memory"])
    assert xla_options.apply_flag(fv) == xla_options.Applied(False, False)
    assert fv[xla_options.MEMORY_FLAG_NAME].default is True and fv[xla_options.FLAG_NAME].default is True


def test_other_c_libraries_are_left_alone(monkeypatch):
    def no_such_name(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(xla_options.os, "confstr", no_such_name)  # musl, macOS: no CS_GNU_LIBC_VERSION
    assert xla_options._glibc() is None
    assert xla_options.reuse_freed_host_memory() is False
