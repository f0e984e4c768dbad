"""The launchers' energy reports: per-image spike rates and energy of the image classifier, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtspark_jax.vision import classification as cl
from mtspark_jax.nn.networks import SpikingClassifier


def test_energy_per_image_matches_hand_computation():
    # 6x6x1 images -> conv 2 filters 3x3 stride 2 SAME -> 3x3x2 = 18 units (162 MACs: 18 outputs x 9 weights)
    # -> dense 18 -> 4 (72 MACs; fan-out of a conv0 neuron 72 / 18 = 4) -> read-out 4 -> 10 (fan-out 10).
    net = SpikingClassifier(hidden=4, convs=((2, 3, 2),), time_steps=2, batch_norm=False, init_gain=8.0)
    state = cl.create_train_state(jax.random.key(3), net, (6, 6, 1), optax.sgd(0.1))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (3, 6, 6, 1)).astype(np.uint8), "label": np.zeros(3, np.int32),
             "context": np.array([0, 1, 0], np.int32), "mask": np.array([1, 1, 0], np.float32)}
    summary = cl.energy_per_image(state, net, [batch, batch], (6, 6, 1))

    out = net.apply({"params": state.params}, jnp.asarray(batch["image"]),
                    jax.nn.one_hot(batch["context"], 3))
    c0 = np.asarray(out.spike_counts["conv0"])[:2].mean()   # padding example excluded
    cfc = np.asarray(out.spike_counts["q_fc"])[:2].mean()
    assert c0 > 0 and cfc > 0
    sops = c0 * 4 + cfc * 10
    np.testing.assert_allclose(summary["energy/sops"], sops, rtol=1e-6)
    np.testing.assert_allclose(summary["energy/snn_uJ"], (162 * 4.6 + sops * 0.9) * 1e-6, rtol=1e-6)
    np.testing.assert_allclose(summary["energy/ann_uJ"], (162 + 72 + 40) * 4.6 * 1e-6, rtol=1e-6)
    np.testing.assert_allclose(summary["spike_rate/conv0"], c0 / (2 * 18), rtol=1e-6)
    np.testing.assert_allclose(summary["spike_rate/q_fc"], cfc / (2 * 4), rtol=1e-6)
    table = cl.energy_table({"mnist": summary})
    assert table.splitlines()[0].startswith("| data set | rate conv0 | rate q_fc | SOPs / image |")
    assert table.splitlines()[2].startswith("| mnist | ")
