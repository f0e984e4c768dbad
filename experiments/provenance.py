"""Where a result came from: the command line, the commit and the machine, for ``summary.json`` files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Mapping

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit(root: str = ROOT) -> str:
    """HEAD of the repository at ``root``, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def command_line() -> str:
    """This process's command, as a shell would take it back."""
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def machine() -> dict[str, Any]:
    """The hardware a run used: CPU model and logical cores, JAX's backend and its first device's kind."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}


def write_summary(path: str, fields: Mapping[str, Any]) -> None:
    """Writes ``fields`` plus ``command`` and ``commit`` as JSON to ``path``."""
    with open(path, "w") as f:
        json.dump({**fields, "command": command_line(), "commit": git_commit()}, f, indent=1)
