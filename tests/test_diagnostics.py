"""mtspark_jax.rl.diagnostics and experiments/inspect_agent.py: Q per context and gate ranges."""

import jax
import jax.numpy as jnp
import numpy as np

import mtspark_jax as mj
from mtspark_jax.rl import diagnostics


def _net_and_vars():
    net = mj.make_network("mtspark_add", convs=((4, 8, 4),), hidden=16, time_steps=2, num_tasks=3, num_actions=5)
    return net, mj.init_network(net, jax.random.PRNGKey(0), (1, 36, 36, 4))


def test_q_by_context_matches_the_network_under_each_context():
    net, variables = _net_and_vars()
    obs = jax.random.randint(jax.random.PRNGKey(1), (6, 36, 36, 4), 0, 255).astype(jnp.uint8)
    r = diagnostics.q_by_context(net, variables, obs, 3)
    apply = jax.jit(lambda o, t: net.apply(variables, o, t, train=False).q)
    for m in range(3):
        q = np.asarray(apply(obs, jnp.full((6,), m, jnp.int32)))
        np.testing.assert_allclose(r.mean_q[m], q.mean(), rtol=1e-5)
        np.testing.assert_allclose(r.spread[m], (q.max(1) - q.min(1)).mean(), rtol=1e-5)
        np.testing.assert_array_equal(r.greedy[m], np.bincount(q.argmax(1), minlength=5))


def test_gate_ranges_are_each_task_s_gates_and_move_with_its_segments():
    _, variables = _net_and_vars()
    params = jax.tree.map(np.asarray, dict(variables["params"]))
    ranges = diagnostics.gate_ranges(params)
    assert set(ranges) == {"a_gate", "v_gate"}
    seg = params["a_gate"]["segments"]  # [units, s, tasks]
    for t in range(3):
        act = seg[:, :, t]
        gate = 1 / (1 + np.exp(-act[np.arange(act.shape[0]), np.abs(act).argmax(1)]))
        np.testing.assert_allclose([ranges["a_gate"].mean[t], ranges["a_gate"].low[t], ranges["a_gate"].high[t]],
                                   [gate.mean(), gate.min(), gate.max()], rtol=1e-5)
    # Pushing task 1's segments far positive opens its gates and leaves the others'.
    params["a_gate"] = {"segments": seg + 10.0 * (np.arange(3) == 1)}
    moved = diagnostics.gate_ranges(params)["a_gate"]
    assert moved.low[1] > 0.99 and np.allclose(moved.mean[[0, 2]], ranges["a_gate"].mean[[0, 2]])
