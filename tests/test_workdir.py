"""One writer per workdir (a second process is refused with one line, a stale lock never blocks),
and the one line a failed write gives."""

import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from mtspark_jax import workdir
from mtspark_jax.rl import runner
from mtspark_jax.rl.atari_sweep import AtariSweep


def _listing(path):
    """Every file under ``path`` with its size and content hash: what a refused process must not change."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hash(fh.read())
    return out


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_is_free(path):
    """Whether another open file description could take ``path``'s lock now (flock conflicts between
    descriptions, even in one process)."""
    fd = os.open(os.path.join(path, workdir.LOCK_NAME), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_held_workdir_is_refused_with_one_line(tmp_path, workdir_holder):
    pid = workdir_holder(tmp_path / "run")
    before = _listing(tmp_path / "run")
    with pytest.raises(workdir.WorkdirLocked) as err:
        with workdir.hold(tmp_path / "run", writer=True):
            pytest.fail("the lock of a live process was taken")
    line = str(err.value)
    assert "\n" not in line and str(tmp_path / "run") in line
    assert f"pid {pid} on host {socket.gethostname()}" in line and "another --workdir" in line
    assert err.value.exit_status == 2
    assert _listing(tmp_path / "run") == before


def test_library_entry_points_refuse_a_held_workdir_and_write_nothing(tmp_path, tiny_config, workdir_holder):
    """The RL runner and the Atari sweep take the lock before they write anything."""
    wd = tmp_path / "run"
    workdir_holder(wd)
    before = _listing(wd)
    config = tiny_config(games=("Pong",), total_steps=100)
    with pytest.raises(workdir.WorkdirLocked, match="is in use by pid"):
        runner.train_and_evaluate(config, str(wd), progress=False, tensorboard=False)
    sweep = AtariSweep(config, [0])
    try:
        with pytest.raises(workdir.WorkdirLocked, match="is in use by pid"):
            sweep.train(str(wd), progress=False)
    finally:
        sweep.close()
    assert _listing(wd) == before


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    with workdir.hold(tmp_path, writer=True):
        with workdir.hold(tmp_path, writer=True):  # a launcher and the library function it calls
            assert not _lock_is_free(tmp_path)
        assert not _lock_is_free(tmp_path)
    assert _lock_is_free(tmp_path)
    with open(tmp_path / workdir.LOCK_NAME) as f:
        assert json.load(f) == {"pid": os.getpid(), "host": socket.gethostname()}


def test_a_stale_lock_file_of_a_dead_process_never_blocks(tmp_path):
    dead = _dead_pid()
    (tmp_path / workdir.LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with workdir.hold(tmp_path, writer=True):
        with open(tmp_path / workdir.LOCK_NAME) as f:
            assert json.load(f)["pid"] == os.getpid()


def test_a_process_that_does_not_write_takes_no_lock(tmp_path):
    with workdir.hold(tmp_path / "run", writer=False):
        pass
    workdir.claim(tmp_path / "other", writer=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "other").exists()


def _wrapped(error):
    """An error as Orbax/TensorStore raise a full disk: their own type, the OSError chained."""
    try:
        raise error
    except OSError as e:
        try:
            raise ValueError('Error writing "state/d/0.0" in OCDBT: {\n  "driver": "file"\n}') from e
        except ValueError as wrapped:
            return wrapped


def test_the_write_failure_line_says_disk_full_and_where_to_resume():
    full = _wrapped(OSError(errno.ENOSPC, "No space left on device"))
    assert workdir.is_disk_full(full)
    assert workdir.is_disk_full(RuntimeError("write failed: No space left on device"))
    assert not workdir.is_disk_full(_wrapped(OSError(errno.EACCES, "Permission denied")))
    line = workdir.write_failure_line("checkpoint 4000 in /r/checkpoints", full, 3000)
    assert "\n" not in line and len(line) < 400
    assert line.startswith("writing checkpoint 4000 in /r/checkpoints failed: the disk is full (ValueError")
    assert "newest complete checkpoint is step 3000" in line and "same command again to resume" in line
    assert "no checkpoint is complete yet" in workdir.write_failure_line("the logs", full, None)
    assert "does not resume" in workdir.write_failure_line("the logs", full, None, resumes=False)
    denied = workdir.write_failure_line("the logs", OSError(errno.EACCES, "Permission denied"), 5)
    assert "disk is full" not in denied and "Permission denied" in denied


def test_guard_writes_gives_one_line_and_logs_the_traceback(caplog):
    caplog.set_level(logging.DEBUG, logger="mtspark_jax.workdir")
    with pytest.raises(workdir.WriteFailed) as err:
        with workdir.guard_writes("metrics.csv in /r", lambda: 200):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value) == ("writing metrics.csv in /r failed: the disk is full (OSError: [Errno 28] No space "
                              "left on device); the newest complete checkpoint is step 200: free space and run the "
                              "same command again to resume from it")
    assert isinstance(err.value.__cause__, OSError)
    assert "Traceback" in caplog.text and "No space left on device" in caplog.text
    with pytest.raises(KeyError):  # not a write failure: passes unchanged
        with workdir.guard_writes("metrics.csv in /r", lambda: 200):
            raise KeyError("x")


@pytest.mark.parametrize("error,status", [(workdir.WorkdirLocked("workdir /r is in use"), 2),
                                          (workdir.WriteFailed("writing /r failed"), 1)])
def test_launchers_report_the_error_as_one_line(capsys, error, status):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exited:
        workdir.report_errors(main)(["prog"])
    assert exited.value.code == status
    assert capsys.readouterr().err == f"error: {error}\n"
