"""Shared pieces of the benchmarks: shapes, inputs, weights, timing.

Every framework gets the same inputs and the same weights: ours are
initialised with Flax, scaled so that every spiking layer fires (see
:func:`parity_params`), saved as NumPy arrays and copied into each peer
(NHWC/HWIO -> NCHW/OIHW for torch, flatten order (h, w, c) -> (c, h, w)).
"""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np

OBS_SHAPE = (84, 84, 4)  # H, W, C (channels last, as our networks take it)
NUM_ACTIONS = 18
NUM_TASKS = 3
TIME_STEPS = 4
TAU = 2.0
V_TH = 1.0
ALPHA = 4.0  # sigmoid surrogate
LR = 1e-4


def make_batch(batch: int, seed: int = 0):
    """uint8 frames [B, 84, 84, 4], task ids [B], Huber targets [B, 18]."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (batch,) + OBS_SHAPE, dtype=np.uint8)
    tasks = (np.arange(batch) % NUM_TASKS).astype(np.int32)
    target = rng.normal(size=(batch, NUM_ACTIONS)).astype(np.float32)
    return obs, tasks, target


def flatten_params(tree, prefix="") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {'a/b/c': np.ndarray}."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten_params(dict(v), name))
        else:
            out[name] = np.asarray(v, np.float32)
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        node = tree
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def minor_page_faults() -> int:
    """Minor page faults of this process so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_calls(fn, n: int) -> list[tuple[float, float, int]]:
    """Runs ``fn()`` (which must block until done) n times: [(wall_s, cpu_s, minor page faults)]."""
    out = []
    for _ in range(n):
        w0, c0, f0 = time.perf_counter(), cpu_seconds(), minor_page_faults()
        fn()
        out.append((time.perf_counter() - w0, cpu_seconds() - c0, minor_page_faults() - f0))
    return out


_OUT_FD = None


def protect_stdout() -> None:
    """Keeps the real stdout for :func:`send`; anything else printed goes to stderr."""
    global _OUT_FD
    _OUT_FD = os.dup(1)
    os.dup2(2, 1)


def send(msg: dict) -> None:
    """Worker -> coordinator: one JSON line on the protected stdout."""
    os.write(_OUT_FD if _OUT_FD is not None else 1, (json.dumps(msg) + "\n").encode())
