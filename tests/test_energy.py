"""Energy accounting against a hand-computed small network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtspark_jax as mj
from mtspark_jax.nn import energy, networks


def _net():
    # 6x6x1 input -> conv0 2 ch 3x3/1 -> 4x4x2 -> conv1 3 ch 2x2/2 -> 2x2x3 = 12
    # -> a_fc/v_fc 5 units -> a_out 4 / v_out 1.
    return mj.MTSparkADD(num_actions=4, num_tasks=2, convs=((2, 3, 1), (3, 2, 2)), hidden=5)


def test_layer_costs_by_hand():
    costs = energy.layer_costs(_net(), (1, 6, 6, 1))
    # conv0: 4*4*2 = 32 units, MACs 32 * 3*3*1 = 288; consumer conv1 MACs = 12 * 2*2*2 = 96.
    assert costs["conv0"] == energy.LayerCost(32, 288, 96 / 32)
    # conv1: 12 units, 96 MACs; consumers: two dense layers 12*5 each = 120.
    assert costs["conv1"] == energy.LayerCost(12, 96, 120 / 12)
    assert costs["a_fc"] == energy.LayerCost(5, 60, 4.0)
    assert costs["v_fc"] == energy.LayerCost(5, 60, 1.0)
    assert costs["a_out"] == energy.LayerCost(4, 20, 0.0)
    assert costs["v_out"] == energy.LayerCost(1, 5, 0.0)
    # The no-context ablation wraps the same layers (a grid run crashed here once).
    assert energy.layer_costs(networks.NoContext(_net()), (1, 6, 6, 1)) == costs


def test_energy_by_hand_from_spike_counts():
    net = _net()
    counts = {
        "conv0": jnp.array([10.0, 0.0]),
        "conv1": jnp.array([4.0, 1.0]),
        "a_fc": jnp.array([3.0, 0.0]),
        "v_fc": jnp.array([2.0, 5.0]),
    }
    out = mj.NetworkOutput(q=jnp.zeros((2, 4)), spike_counts=counts, spike_rates={})
    report = energy.estimate_energy(out, net, (2, 6, 6, 1))
    sops = np.array([10 * 3 + 4 * 10 + 3 * 4 + 2 * 1, 0 + 1 * 10 + 0 + 5 * 1])
    np.testing.assert_allclose(report.sops, sops)
    np.testing.assert_allclose(report.snn_pj, 288 * 4.6 + sops * 0.9)
    assert report.ann_macs == 288 + 96 + 60 + 60 + 20 + 5
    assert report.ann_pj == pytest.approx(529 * 4.6)
    per_step = energy.estimate_energy(out, net, (2, 6, 6, 1), first_layer_steps=4)
    np.testing.assert_allclose(per_step.snn_pj - report.snn_pj, 3 * 288 * 4.6)


def test_energy_of_real_forward_pass_and_dqn():
    net = _net()
    obs = jax.random.randint(jax.random.PRNGKey(0), (3, 6, 6, 1), 0, 256).astype(jnp.uint8)
    variables = mj.init_network(net, jax.random.PRNGKey(1), obs.shape)
    out = net.apply(variables, obs, jnp.array([0, 1, 0]))
    report = energy.estimate_energy(out, net, obs.shape)
    assert report.sops.shape == (3,) and np.all(report.sops >= 0)
    summary = energy.summarize(report)
    assert summary["energy/ann_uJ"] == pytest.approx(529 * 4.6e-6)
    assert "spike_rate/conv0" in summary
    dqn = mj.DQN(num_actions=4, convs=((2, 3, 1), (3, 2, 2)), hidden=5)
    dqn_out = dqn.apply(mj.init_network(dqn, jax.random.PRNGKey(2), obs.shape), obs)
    dqn_report = energy.estimate_energy(dqn_out, dqn, obs.shape)
    assert dqn_report.ann_macs == 288 + 96 + 60 + 20
    np.testing.assert_allclose(dqn_report.snn_pj, dqn_report.ann_pj)


def test_bad_counts_raise():
    out = mj.NetworkOutput(q=jnp.zeros((2, 4)), spike_counts={"conv0": jnp.zeros(3)}, spike_rates={})
    with pytest.raises(ValueError, match=r"spike count of conv0 must be \[2\]"):
        energy.estimate_energy(out, _net(), (2, 6, 6, 1))
    with pytest.raises(ValueError, match=r"obs_shape must be \[B, H, W, C\]"):
        energy.layer_costs(_net(), (6, 6, 1))
