"""Image sweeps: vmapped members equal solo runs, divergence is masked, the grid and the bar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtspark_jax import sweeps
from mtspark_jax.nn.networks import SpikingClassifier
from mtspark_jax.nn.spiking import NeuronConfig
from mtspark_jax.vision import classification as cl
from mtspark_jax.vision import data as data_lib
from mtspark_jax.vision import image_sweep


def test_parse_image_grid():
    grid = image_sweep.parse_image_grid("learning_rate=1e-3,3e-3; tau=2,4")
    assert grid == {"learning_rate": (1e-3, 3e-3), "tau": (2.0, 4.0)}
    with pytest.raises(ValueError, match="name=v1"):
        image_sweep.parse_image_grid("tau")
    with pytest.raises(ValueError, match="cannot sweep 'hidden'"):
        image_sweep.parse_image_grid("hidden=8")
    with pytest.raises(ValueError, match="tau must be >= 1"):
        image_sweep.parse_image_grid("tau=0.5")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        image_sweep.parse_image_grid("alpha=0")


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


def test_image_sweep_members_are_independent_and_divergence_is_masked(capsys):
    train, test = data_lib.synthetic_images(48, 32, (16, 16, 1))
    config = _image_config()
    # Setting 1 (lr 1e38) overflows to NaN; setting 0 must not notice.
    members = sweeps.make_members({"learning_rate": [1e-2, 1e38], "tau": [3.0]}, [0, 1])
    res = image_sweep.run_image_sweep(config, members, train, test, conv_impl="xla", progress=True)
    # The bar: 2 data sets x 48 examples / batch 16 = 6 steps; loss and accuracy of the healthy members.
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "6/6" in err and "(2 of 4 diverged)" in err
    assert " loss " in err and " acc " in err and "loss nan" not in err
    rows = res["members"]
    assert [r["diverged"] for r in rows] == [False, False, True, True]
    assert all(np.isfinite(r["accuracy"]) and np.isfinite(r["energy/snn_uJ"]) for r in rows[:2])
    assert all(np.isnan(r["accuracy"]) for r in rows[2:])
    assert rows[0]["final_loss"] != rows[1]["final_loss"]  # seeds differ
    # The same member alone (M = 1) gives the same numbers.
    solo = image_sweep.run_image_sweep(config, sweeps.make_members({"learning_rate": [1e-2], "tau": [3.0]}, [1]),
                                       train, test, conv_impl="xla", progress=False)["members"][0]
    assert capsys.readouterr().err == ""  # no bar
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
    train, _ = data_lib.synthetic_images(48, 32, (16, 16, 1))
    config = _image_config(tau=3.0)
    loader = data_lib.Loader(train, config.batch_size, seed=config.seed, shape=config.image_shape)
    steps = loader.num_batches()
    sweep = image_sweep.ImageSweep(config, steps, conv_impl="xla")
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
