"""Sharded vs single-device runs; executed by tests/test_sharding.py in a subprocess.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before
JAX is imported). Prints one JSON object: for each check the maximum absolute
and relative difference between the sharded and the single-device result, and
facts showing that the sharded run really used every device.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtspark_jax.vision import classification as cl
from mtspark_jax.rl import learner as L
from mtspark_jax import sharding as sh
from mtspark_jax import sweeps
from mtspark_jax.nn.networks import MTSparkADD, SpikingClassifier
from mtspark_jax.rl.replay import Batch
from mtspark_jax.vision import data as data_lib
from mtspark_jax.vision.image_sweep import run_image_sweep


def diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    absd = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))
    scale = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in lb)
    return {"max_abs": absd, "max_abs_ref": scale}


def copy(tree):
    """A fresh copy on the first device, committed there as the outputs of a step are (so that the second
    step runs the program the first one compiled)."""
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), tree)


def image_problem():
    """A small BatchNorm classifier's train state (plain SGD) and two NumPy batches of 8 (one padded row)."""
    net = SpikingClassifier(hidden=16, convs=((4, 5, 2), (8, 3, 2)), time_steps=2, batch_norm=True)
    # Initialised in one jitted program (one compilation instead of one per initialiser op).
    state0 = jax.jit(lambda key: cl.create_train_state(key, net, (16, 16, 1), optax.sgd(0.1)))(jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 255, (8, 16, 16, 1)).astype(np.uint8),
                "label": rng.integers(0, 10, 8).astype(np.int32),
                "context": np.full(8, k % 2, np.int32),
                "mask": np.array([1] * 7 + [0], np.float32)} for k in range(2)]
    return state0, batches


def learner_problem():
    """A small MTSpark_ADD learner: ``(update, initial state, NumPy batch of 8)``."""
    net = MTSparkADD(num_actions=6, num_tasks=2, hidden=16, convs=((8, 3, 1),), time_steps=2)
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 2, (8, 10, 10, 7)).astype(np.uint8) * 255
    variables = jax.jit(net.init)(jax.random.key(0), jnp.asarray(obs), jnp.zeros((8,), jnp.int32))
    c = L.LearnerConfig(lr=1e-3, batch_size=8)
    opt = L.make_optimizer(c)
    batch = Batch(obs=obs, action=rng.integers(0, 6, 8).astype(np.int32), reward=rng.normal(size=8).astype(np.float32),
                  next_obs=rng.integers(0, 2, (8, 10, 10, 7)).astype(np.uint8) * 255,
                  terminated=(rng.random(8) < 0.2).astype(np.float32), mask=np.ones(8, np.float32),
                  task=rng.integers(0, 2, 8).astype(np.int32))
    return L.make_update(net, opt, c), L.init_learner(variables, opt), batch


def image_step(report):
    """Data parallel: the image train step (BatchNorm on) on a batch split over 4 devices.

    Plain SGD, so that parameters compare gradients: with Adam the conv biases
    in front of BatchNorm (gradient exactly 0 in exact arithmetic, ~1e-10
    float noise that depends on summation order) move by +-lr either way.
    """
    state0, batches = image_problem()
    mesh = sh.make_mesh()
    single, dp = copy(state0), sh.replicate(copy(state0), mesh)
    for b in batches:
        single, m1 = cl.train_step(single, {k: jnp.asarray(v) for k, v in b.items()})
        sb = sh.shard_batch(b, mesh)
        report["image_batch_devices"] = len(sb["image"].sharding.device_set)
        report["image_shard_rows"] = int(sb["image"].addressable_shards[0].data.shape[0])
        dp, m2 = cl.train_step(dp, sb)
    report["image_params"] = diff(dp.params, single.params)
    report["image_batch_stats"] = diff(dp.batch_stats, single.batch_stats)
    report["image_loss"] = diff(m2["loss"], m1["loss"])
    report["image_params_devices"] = len(jax.tree.leaves(dp.params)[0].sharding.device_set)


def learner_update(report):
    """Data parallel: one Double-DQN update of MTSpark_ADD with the batch split over 4 devices."""
    update, state0, batch = learner_problem()
    single, info1 = jax.jit(update)(copy(state0), jax.tree.map(jnp.asarray, batch))
    single, info1 = jax.jit(update)(single, jax.tree.map(jnp.asarray, batch))
    mesh = sh.make_mesh()
    dp_update = sh.data_parallel_jit(update, mesh)
    dp, info2 = dp_update(sh.replicate(copy(state0), mesh), batch)
    dp, info2 = dp_update(dp, batch)
    report["learner_params"] = diff(dp.variables["params"], single.variables["params"])
    report["learner_td_loss"] = diff(info2.td_loss, info1.td_loss)
    report["learner_params_devices"] = len(jax.tree.leaves(dp.variables["params"])[0].sharding.device_set)


def sweep_members(report):
    """Members across devices: a 4-member image sweep, one member per device, vs unsharded."""
    train, test = data_lib.synthetic_images(32, 16, (16, 16, 1))
    config = cl.ImageConfig(epochs=1, batch_size=16, image_shape=(16, 16, 1), convs=((4, 5, 4),), hidden=8,
                            time_steps=2, learning_rate=1e-2, eval_batch_size=16, batch_norm=False)
    members = sweeps.make_members({"tau": [2.0, 4.0]}, [0, 1])
    mesh = sh.largest_divisor_mesh(members.size)
    report["sweep_mesh_devices"] = int(mesh.devices.size)
    ra = run_image_sweep(config, members, train, test, mesh, progress=False)
    leaf = jax.tree.leaves(ra["state"].state.params)[0]
    report["sweep_state_devices"] = len(leaf.sharding.device_set)
    report["sweep_rows_per_device"] = int(leaf.addressable_shards[0].data.shape[0])
    a = ra["members"]
    b = run_image_sweep(config, members, train, test, None, progress=False)["members"]
    report["sweep_members"] = diff([[r["final_loss"], r["accuracy"], r["energy/sops"]] for r in a],
                                   [[r["final_loss"], r["accuracy"], r["energy/sops"]] for r in b])


if __name__ == "__main__":
    report = {"devices": jax.device_count()}
    for check in sys.argv[1:] or ["image_step", "learner_update", "sweep_members"]:
        globals()[check](report)
    print(json.dumps(report))
