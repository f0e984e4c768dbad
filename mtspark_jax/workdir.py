"""A run's output folder: one writer at a time, and one line when writing to it fails.

One writer. Every entry point that writes a workdir (``rl.runner``, the
Atari sweep, the image path, the launchers that write files of their own)
holds an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` while it writes:

* a second process on a live workdir gets :class:`WorkdirLocked` before it
  writes anything, naming the holder's pid and host (recorded in the lock
  file) and what to do;
* the kernel drops the lock when its holder exits, however it exits, so a
  lock file left by a dead process never blocks (the next holder overwrites
  the pid and host it records);
* within one process the lock is re-entrant (a launcher and the library
  function it calls both hold it), counted per lock file;
* on a multi-host run only the process that writes (``jax.process_index() ==
  0``) takes it.

``flock`` on NFS is emulated by POSIX record locks (Linux >= 2.6.12), which
NFS carries between clients.

Write failures. :func:`guard_writes` turns an error while writing a
checkpoint or a log into :class:`WriteFailed`, whose message is one line:
what failed, that the disk is full where that is the cause (``ENOSPC`` or
"No space left" anywhere in the exception's chain, as Orbax and TensorStore
wrap it), the newest complete checkpoint and that the same command resumes
from it. The full exception goes to the debug log, as the corrupt-checkpoint
warning does (:mod:`mtspark_jax.checkpoint`).

Launchers wrap ``main`` in :func:`report_errors`: either error becomes that
one ``error:`` line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import threading
from typing import Callable, Iterator

import jax

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Lock file (real path) -> [open file descriptor, holds]: this process's locks.
_held: dict[str, list[int]] = {}
_held_guard = threading.Lock()


class WorkdirError(RuntimeError):
    """A workdir cannot be written; ``str()`` is the one line for the user, ``exit_status`` the launcher's."""

    exit_status = 1


class WorkdirLocked(WorkdirError):
    """Another live process holds the workdir."""

    exit_status = 2  # as the launchers' other refusals before any work


class WriteFailed(WorkdirError):
    """Writing a checkpoint or a log failed."""


def _holder(fd: int) -> str:
    """``pid P on host H`` from a held lock file (``an unknown process`` before the holder wrote it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def _acquire(path: str) -> None:
    """Takes (or re-enters) the lock on ``path``; WorkdirLocked if another process holds it."""
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated before the lock is ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            workdir = os.path.dirname(path)
            raise WorkdirLocked(f"workdir {workdir} is in use by {holder}: wait for that run to end, "
                                "or pass another --workdir") from None
        except BaseException:
            os.close(fd)
            raise
        _held[path] = [fd, 1]
        try:  # who holds it, for the message of a refused second process; best effort on a full disk
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
        except OSError:
            log.debug("could not record the holder in %s", path, exc_info=True)


def _release(path: str) -> None:
    with _held_guard:
        entry = _held[path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            os.close(entry[0])  # closing the last descriptor drops the flock; the file stays (harmless)


def _lock_path(workdir: str | os.PathLike) -> str:
    """Creates ``workdir`` if needed; the real path of its lock file."""
    path = os.path.realpath(os.fspath(workdir))
    os.makedirs(path, exist_ok=True)
    return os.path.join(path, LOCK_NAME)


def is_writer() -> bool:
    """Whether this process writes the run's files (the first process of a multi-host run).

    A process outside ``jax.distributed`` is alone and writes; it is answered
    without starting JAX's backends (which log their own lines).
    """
    return not jax.distributed.is_initialized() or jax.process_index() == 0


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, writer: bool | None = None) -> Iterator[None]:
    """Holds ``workdir``'s lock for the ``with`` block (creating the folder if needed).

    Args:
      workdir: the folder.
      writer: whether this process writes it (None: :func:`is_writer`); a
        process that does not write takes no lock.

    Raises:
      WorkdirLocked: another process holds it; nothing has been written.
    """
    if not (is_writer() if writer is None else writer):
        yield
        return
    path = _lock_path(workdir)
    _acquire(path)
    try:
        yield
    finally:
        _release(path)


def claim(workdir: str | os.PathLike, writer: bool | None = None) -> None:
    """Takes ``workdir``'s lock until this process exits (launchers that write files of their own).

    Same arguments and error as :func:`hold`.
    """
    if is_writer() if writer is None else writer:
        _acquire(_lock_path(workdir))


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or any exception in its chain is ENOSPC (or says "No space left")."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "no space left" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def error_summary(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut at ``limit`` characters.

    Orbax and TensorStore errors carry multi-line specs; the first line says what happened.
    """
    first = (str(error).strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[:limit - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def write_failure_line(what: str, error: BaseException, newest_checkpoint: int | None,
                       resumes: bool = True) -> str:
    """The one line for a failed write of ``what`` (e.g. ``checkpoint 4000 in /run/checkpoints``).

    Args:
      what: what was being written, and where.
      error: the exception.
      newest_checkpoint: the step of the newest complete checkpoint, None if there is none.
      resumes: the same command resumes from that checkpoint (False: the run starts over).
    """
    cause = f"the disk is full ({error_summary(error)})" if is_disk_full(error) else error_summary(error)
    if not resumes:
        after = "this run does not resume: free space and run the same command again to start it over"
    elif newest_checkpoint is None:
        after = "no checkpoint is complete yet: the same command starts the run over"
    else:
        after = (f"the newest complete checkpoint is step {newest_checkpoint}: "
                 "free space and run the same command again to resume from it")
    return f"writing {what} failed: {cause}; {after}"


@contextlib.contextmanager
def guard_writes(what: str, newest_checkpoint: Callable[[], int | None] | None,
                 catch: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[None]:
    """Turns an error of type ``catch`` in the block into :class:`WriteFailed` (:func:`write_failure_line`).

    Args:
      what: what the block writes, and where.
      newest_checkpoint: returns the newest complete checkpoint's step (None:
        none yet); called only after a failure (it reads the disk). None: the
        run does not resume.
      catch: the errors that mean the write failed (a checkpoint: any error,
        as Orbax and TensorStore wrap the OSError in their own).

    The full exception goes to the debug log and stays chained; a
    :class:`WriteFailed` from an inner guard passes through unchanged.
    """
    try:
        yield
    except WriteFailed:
        raise
    except catch as e:
        log.debug("writing %s failed", what, exc_info=True)
        newest = None
        if newest_checkpoint is not None:
            try:
                newest = newest_checkpoint()
            except Exception:  # noqa: BLE001 - the listing is best effort on a failing disk
                log.debug("listing the checkpoints after the failure failed", exc_info=True)
        raise WriteFailed(write_failure_line(what, e, newest, resumes=newest_checkpoint is not None)) from e


def close_after_failure(*closes: Callable[[], None]) -> None:
    """Calls every ``close`` after a failure, best effort: a second error (the disk is still full)
    goes to the debug log and must not hide the first."""
    for close in closes:
        try:
            close()
        except Exception:  # noqa: BLE001
            log.debug("closing after a failure failed", exc_info=True)


def report_errors(main: Callable) -> Callable:
    """A launcher's ``main`` that reports :class:`WorkdirError` as one ``error:`` line on stderr
    and exits with its ``exit_status``."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except WorkdirError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_status)

    return wrapped
