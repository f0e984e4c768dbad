"""Sweeps: vmapped members equal solo runs, divergence is masked, the table and the launcher."""

import csv
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax.vision import classification as cl
from mtspark_jax import sweeps
from mtspark_jax.nn.networks import SpikingClassifier
from mtspark_jax.nn.spiking import NeuronConfig

ROOT = Path(__file__).resolve().parents[1]


def test_parse_grid_and_members():
    grid = sweeps.parse_grid("learning_rate=1e-3,3e-3; tau=2,4")
    assert grid == {"learning_rate": (1e-3, 3e-3), "tau": (2.0, 4.0)}
    m = sweeps.make_members(grid, [5, 6])
    assert m.size == 8 and len(m.settings) == 4
    np.testing.assert_array_equal(m.setting, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(m.seed, [5, 6] * 4)
    np.testing.assert_allclose(m.values("tau", 9.0), [2, 2, 4, 4, 2, 2, 4, 4])
    assert sweeps.make_members({}, [0]).settings == ({},)
    with pytest.raises(ValueError, match="name=v1"):
        sweeps.parse_grid("tau")
    with pytest.raises(ValueError, match="cannot sweep 'hidden'"):
        sweeps.parse_grid("hidden=8")
    with pytest.raises(ValueError, match="tau must be >= 1"):
        sweeps.parse_grid("tau=0.5")
    minatar = sweeps.parse_grid("lr=1e-4,3e-4;eps_decay_steps=1e4;games=breakout", "minatar")
    assert minatar == {"lr": (1e-4, 3e-4), "eps_decay_steps": (10_000,), "games": (("breakout",),)}


def test_traced_neuron_constants_match_python_constants():
    net = SpikingClassifier(hidden=8, convs=((4, 5, 4),), time_steps=3, batch_norm=False)
    x = (jax.random.uniform(jax.random.key(1), (2, 16, 16, 1)) * 255).astype(jnp.uint8)
    ctx = jnp.array([0, 1])
    v = net.init(jax.random.key(0), x, ctx)
    taus, ths, alphas = jnp.array([2.0, 3.0]), jnp.array([1.0, 0.5]), jnp.array([4.0, 8.0])

    def q(tau, th, a):
        return net.clone(neuron=NeuronConfig(tau=tau, v_threshold=th, alpha=a)).apply(v, x, ctx).q

    got = jax.jit(jax.vmap(q))(taus, ths, alphas)
    for i in range(2):
        want = q(float(taus[i]), float(ths[i]), float(alphas[i]))
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def _image_config(**kw):
    base = dict(datasets=("mnist", "fashion_mnist"), epochs=1, batch_size=16, image_shape=(16, 16, 1),
                convs=((4, 5, 4),), hidden=16, time_steps=2, learning_rate=1e-2, eval_batch_size=32)
    base.update(kw)
    return cl.ImageConfig(**base)


def test_image_sweep_members_are_independent_and_divergence_is_masked():
    train, test = sweeps.synthetic_images(48, 32, (16, 16, 1))
    config = _image_config()
    # Setting 1 (lr 1e38) overflows to NaN; setting 0 must not notice.
    members = sweeps.make_members({"learning_rate": [1e-2, 1e38], "tau": [3.0]}, [0, 1])
    res = sweeps.run_image_sweep(config, members, train, test, conv_impl="xla")
    rows = res["members"]
    assert [r["diverged"] for r in rows] == [False, False, True, True]
    assert all(np.isfinite(r["accuracy"]) and np.isfinite(r["energy/snn_uJ"]) for r in rows[:2])
    assert all(np.isnan(r["accuracy"]) for r in rows[2:])
    assert rows[0]["final_loss"] != rows[1]["final_loss"]  # seeds differ
    # The same member alone (M = 1) gives the same numbers.
    solo = sweeps.run_image_sweep(config, sweeps.make_members({"learning_rate": [1e-2], "tau": [3.0]}, [1]),
                                  train, test, conv_impl="xla")["members"][0]
    np.testing.assert_allclose(solo["final_loss"], rows[1]["final_loss"], rtol=1e-4)
    # Spike counts are step functions of the membrane: a float-rounding difference
    # between the vmapped and the solo program (XLA fuses the unrolled time steps
    # differently) can flip a spike at the threshold, and so one test image.
    n_test = sum(len(labels) for _, labels in test.values())
    assert abs(solo["accuracy"] - rows[1]["accuracy"]) <= 1 / n_test + 1e-9
    for k in ("energy/sops", "spike_rate/q_fc"):
        np.testing.assert_allclose(solo[k], rows[1][k], rtol=1e-2, err_msg=k)
    table = sweeps.summarize_members(res, ["accuracy"])
    assert table[0]["diverged"] == 0 and table[1]["diverged"] == 2 and table[1]["members"] == 2
    np.testing.assert_allclose(table[0]["accuracy_mean"], np.mean([r["accuracy"] for r in rows[:2]]))
    np.testing.assert_allclose(table[0]["accuracy_std"], np.std([r["accuracy"] for r in rows[:2]], ddof=1))
    assert np.isnan(table[1]["accuracy_mean"])


def test_image_sweep_member_trains_like_the_solo_classifier():
    """A member runs the solo run's step, with its own learning rate in the optimiser state."""
    from mtspark_jax.vision import data as data_lib

    train, _ = sweeps.synthetic_images(48, 32, (16, 16, 1))
    config = _image_config(tau=3.0)
    loader = data_lib.Loader(train, config.batch_size, seed=config.seed, shape=config.image_shape)
    steps = loader.num_batches()
    sweep = sweeps.ImageSweep(config, steps, conv_impl="xla")
    state, h = sweep.init(sweeps.make_members({"learning_rate": [1e-2, 3e-3]}, [0]))
    np.testing.assert_allclose(np.asarray(state.state.opt_state.hyperparams["learning_rate"]), [1e-2, 3e-3])
    state, losses = sweep.train(state, h, loader.epoch(0))

    solo = cl.create_train_state(jax.random.key(0), config.network(), config.image_shape,
                                 cl.image_optimizer(3e-3, steps))
    solo_losses = []
    for batch in loader.epoch(0):
        solo, m = cl.train_step(solo, cl.device_batch(batch))
        solo_losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses[:, 1], solo_losses, rtol=1e-5)
    assert not np.allclose(losses[:, 0], solo_losses, rtol=1e-5)  # the other member's rate differs
    # conv0's bias feeds BatchNorm, which removes it: its gradient is float noise, which
    # Adam scales up to learning-rate-sized steps; every other parameter agrees.
    member = jax.tree.map(lambda x: x[1], state.state.params)
    member["trunk"]["conv0"].pop("bias")
    solo_params = jax.tree.map(lambda x: x, solo.params)
    solo_params["trunk"]["conv0"].pop("bias")
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(solo_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow
def test_minatar_sweep_vmapped_seed_equals_solo_run(tiny_config):
    config = tiny_config(agent="dqn", convs="4:3:1", hidden=8, total_steps=120, chunk_iters=20, warmup_steps=20,
                         eps_decay_steps=100, batch_size=4, buffer_size=100)
    sweep = sweeps.MinAtarSweep(config, ["breakout"])
    both = sweep.run([0, 1])
    solo = sweep.run([1])
    assert not any(r["diverged"] for r in both["members"])
    assert all(r["episodes"] > 0 and np.isfinite(r["final_td_loss"]) for r in both["members"])
    for k in ("return", "episodes", "final_td_loss"):
        np.testing.assert_allclose(solo["members"][0][k], both["members"][1][k], rtol=1e-5, err_msg=k)
    p0 = jax.tree.leaves(both["state"].learner.variables["params"])
    assert any(not np.allclose(a[0], a[1]) for a in p0)  # different seeds, different runs


def test_sweep_launcher_writes_table_with_diverged_setting(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--task=images", "--synthetic",
         f"--workdir={tmp_path}", "--grid=learning_rate=1e-2,1e38", "--num_seeds=1",
         "--set=epochs=1,batch_size=8,hidden=4,time_steps=1,max_train_examples=16,max_eval_examples=8"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "sweep.md").read_text()
    assert "| 1e+38 | 1 | 1 |" in md and "| 0.01 | 1 | 0 |" in md
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [r["diverged"] for r in rows] == ["0", "1"]
    assert np.isfinite(float(rows[0]["accuracy_mean"])) and np.isfinite(float(rows[0]["energy/snn_uJ_mean"]))
    assert len(list(csv.DictReader(open(tmp_path / "members.csv")))) == 2
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--grid=hidden=8"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "cannot sweep 'hidden'" in bad.stderr


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 15, 15, 2), (5, 5, 2, 4), (2, 2), "SAME"), ((3, 10, 10, 7), (3, 3, 7, 16), (1, 1), "VALID")])
def test_slice_conv_equals_xla_conv(shape, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    want = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(sweeps.slice_conv(x, w, strides, padding), want, rtol=1e-4, atol=1e-4)


def test_slice_conv_interceptor_leaves_network_output_unchanged():
    import flax.linen as nn

    net = SpikingClassifier(hidden=8, convs=((4, 5, 2), (8, 3, 2)), time_steps=2, batch_norm=False)
    x = (jax.random.uniform(jax.random.key(1), (2, 16, 16, 1)) * 255).astype(jnp.uint8)
    v = net.init(jax.random.key(0), x, jnp.array([0, 1]))
    plain = net.apply(v, x, jnp.array([0, 1]))
    with nn.intercept_methods(sweeps.slice_conv_interceptor):
        sliced = net.apply(v, x, jnp.array([0, 1]))
    np.testing.assert_allclose(sliced.q, plain.q, rtol=1e-4, atol=1e-5)


def test_chunk_td_health_flags_non_finite_updates_only():
    nan = np.nan
    td = np.array([[nan, 1.0, 3.0], [nan, nan, nan], [2.0, np.inf, 4.0], [nan, nan, nan]])
    updates = np.array([[0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    diverged, mean = sweeps.chunk_td_health(td, updates)
    # Member 0: NaN only where it did not update (warm-up); member 3 updated once with a NaN loss.
    assert diverged.tolist() == [False, False, True, True]
    assert mean[0] == 2.0 and mean[2] == np.inf
    assert np.isnan(mean[1]) and np.isnan(mean[3])
