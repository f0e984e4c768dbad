"""Where a result came from: the command line and the commit, for ``summary.json`` files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import Any, Mapping

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


def write_summary(path: str, fields: Mapping[str, Any]) -> None:
    """Writes ``fields`` plus ``command`` and ``commit`` as JSON to ``path``."""
    with open(path, "w") as f:
        json.dump({**fields, "command": command_line(), "commit": git_commit()}, f, indent=1)
