"""Multi-device and multi-host placement with ``jax.sharding`` (a ``Mesh`` and ``NamedSharding``).

Two layouts, both on a 1-D mesh over every visible device:

* **data parallel** (one run): the batch's leading axis is split over the
  ``"data"`` axis, parameters and optimiser state are replicated. The jitted
  step is unchanged: ``jit`` reads the input shardings and XLA inserts the
  gradient all-reduce (the mean over the global batch is the same number as
  on one device, up to float summation order).
* **members** (sweeps): every leaf of the stacked member state ``[M, ...]`` is
  split over the ``"members"`` axis, so each device trains ``M / D`` members;
  the batch is replicated.

Multi-host: call :func:`initialize_distributed` first (one process per host,
``jax.distributed.initialize``); ``jax.devices()`` then lists every host's
devices and the mesh spans them. Each process feeds its own slice of the
batch (:func:`shard_batch` uses ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MEMBERS = "members"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0) -> bool:
    """Starts JAX's multi-host runtime when a coordinator is given.

    Args:
      coordinator_address: ``host:port`` of process 0 (empty: single host, no-op).
      num_processes: processes in the job (>= 1).
      process_id: this process, in ``[0, num_processes)``.

    Returns:
      Whether ``jax.distributed.initialize`` was called.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if not coordinator_address:
        if num_processes > 1:
            raise ValueError("num_processes > 1 needs a coordinator_address (host:port of process 0)")
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def make_mesh(axis_name: str = DATA, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``axis_name`` over ``devices`` (default: all visible devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.array(devices), (axis_name,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def leading(mesh: Mesh) -> NamedSharding:
    """The leading axis split over the mesh's (only) axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() > 1 and not isinstance(x, jax.Array):
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh``."""
    return jax.tree.map(lambda x: jax.device_put(x, replicated(mesh)), tree)


def shard_leading(tree: Any, mesh: Mesh) -> Any:
    """Splits the leading axis of every leaf over the mesh (scalars are replicated).

    Raises:
      ValueError: a leading axis is not a multiple of the mesh size.
    """
    size = mesh.devices.size

    def put(x):
        shape = np.shape(x)
        if not shape:
            return _put(x, replicated(mesh))
        if shape[0] % (size // jax.process_count() if jax.process_count() > 1 else size):
            raise ValueError(f"leading axis {shape[0]} is not a multiple of the {size} devices of the mesh")
        return _put(x, leading(mesh))

    return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Data parallel: a batch's leading (example) axis split over the devices."""
    return shard_leading(batch, mesh)


def largest_divisor_mesh(count: int, axis_name: str = MEMBERS) -> Mesh:
    """A mesh over the most devices (of all visible ones) that evenly divide ``count`` members."""
    devices = jax.devices()
    d = max(k for k in range(1, len(devices) + 1) if count % k == 0)
    return make_mesh(axis_name, devices[:d])


def data_parallel_jit(fn: Callable, mesh: Mesh, batch_argnums: Sequence[int] = (1,), num_args: int = 2,
                      **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` with batch arguments split over ``mesh`` and everything else replicated.

    Args:
      fn: e.g. a learner ``update(state, batch) -> (state, info)``.
      mesh: a 1-D mesh.
      batch_argnums: positions of the batch arguments (leading axis = examples).
      num_args: number of positional arguments of ``fn``.

    Returns:
      The jitted function; its outputs are replicated.
    """
    in_sh = tuple(leading(mesh) if i in batch_argnums else replicated(mesh) for i in range(num_args))
    return jax.jit(fn, in_shardings=in_sh, out_shardings=replicated(mesh), **jit_kwargs)
