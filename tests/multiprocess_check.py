"""One process of a 2-process data-parallel job on localhost; executed by tests/test_multiprocess.py.

Usage: ``python tests/multiprocess_check.py PROCESS_ID NUM_PROCESSES PORT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (set before JAX is
imported). The processes join through ``jax.distributed.initialize`` with CPU
collectives over gloo, so the mesh spans 2 x 2 devices. Each process feeds
only its own rows of every batch (``sharding.shard_batch``); the learner update
and the image train step run data parallel over the 4 devices. Every process
also runs the same steps on the whole batch on one local device, without any
collective, and prints one JSON object comparing the two.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mtspark_jax.vision import classification as cl  # noqa: E402
from mtspark_jax import sharding as sh  # noqa: E402
from sharded_check import image_problem, learner_problem  # noqa: E402  (same directory)


def local(tree):
    """Host copy of a replicated (possibly multi-process) array tree."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
                        tree)


def on_one_device(tree):
    dev = jax.local_devices()[0]
    return jax.tree.map(lambda x: jax.device_put(jnp.asarray(np.asarray(x)), dev), tree)


def diff(a, b):
    la, lb = jax.tree.leaves(local(a)), jax.tree.leaves(local(b))
    assert len(la) == len(lb)
    absd = max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(la, lb))
    scale = max(float(np.max(np.abs(y.astype(np.float64)))) for y in lb)
    return {"max_abs": absd, "max_abs_ref": scale}


def my_rows(tree, pid, nproc):
    """This process's share of every leaf's leading axis."""
    def take(x):
        n = x.shape[0] // nproc
        return x[pid * n:(pid + 1) * n]
    return jax.tree.map(take, tree)


def learner_update(report, pid, nproc):
    update, state0, batch = learner_problem()
    state0 = local(state0)
    single = on_one_device(state0)
    for _ in range(2):
        single, info1 = jax.jit(update)(single, on_one_device(batch))
    mesh = sh.make_mesh()
    step = sh.data_parallel_jit(update, mesh)
    dp = sh.replicate(state0, mesh)
    for _ in range(2):
        dp, info2 = step(dp, sh.shard_batch(my_rows(batch, pid, nproc), mesh))
    report["learner_params"] = diff(dp.variables["params"], single.variables["params"])
    report["learner_td_loss"] = diff(info2.td_loss, info1.td_loss)
    report["learner_params_devices"] = len(jax.tree.leaves(dp.variables["params"])[0].sharding.device_set)


def image_step(report, pid, nproc):
    """The image train step with BatchNorm (plain SGD: see tests/sharded_check.py)."""
    state0, batches = image_problem()
    state0 = local(state0)
    mesh = sh.make_mesh()
    single, dp = on_one_device(state0), sh.replicate(state0, mesh)
    for b in batches:
        single, m1 = cl.train_step(single, on_one_device(b))
        sb = sh.shard_batch(my_rows(b, pid, nproc), mesh)
        report["image_batch_devices"] = len(sb["image"].sharding.device_set)
        report["image_local_rows"] = int(sb["image"].addressable_shards[0].data.shape[0])
        dp, m2 = cl.train_step(dp, sb)
    report["image_params"] = diff(dp.params, single.params)
    report["image_batch_stats"] = diff(dp.batch_stats, single.batch_stats)
    report["image_loss"] = diff(m2["loss"], m1["loss"])


if __name__ == "__main__":
    pid, nproc, port = (int(a) for a in sys.argv[1:4])
    sh.initialize_distributed(f"localhost:{port}", nproc, pid)
    report = {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
              "local_devices": jax.local_device_count()}
    learner_update(report, pid, nproc)
    image_step(report, pid, nproc)
    print(json.dumps(report), flush=True)
    jax.distributed.shutdown()
