"""Tests of the four Q-networks: shapes, jit, gradients, naive-unroll equality."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtspark_jax as mj

SPIKING = ["mtspark_add", "mtspark_ad", "dsqn"]
ALL = SPIKING + ["dqn"]
SMALL = dict(convs=((8, 4, 2), (8, 3, 1)), hidden=32)  # 16x16 input -> 7x7 -> 5x5
SMALL_OBS = (6, 16, 16, 4)


def _small(name, **kw):
    kw = {**SMALL, **kw}
    if name == "dqn":
        kw = {k: v for k, v in kw.items() if k in ("convs", "hidden", "num_tasks", "num_actions", "task_input", "dtype")}
    return mj.make_network(name, **kw)


def _obs(shape=SMALL_OBS, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, 256).astype(jnp.uint8)


TASKS = jnp.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("name", ALL)
def test_atari_shapes(name):
    net = mj.make_network(name)
    obs = _obs((2, 84, 84, 4))
    variables = mj.init_network(net, jax.random.PRNGKey(0), obs.shape)
    out = jax.jit(net.apply)(variables, obs, jnp.array([0, 2]))
    chex.assert_shape(out.q, (2, 18))
    chex.assert_tree_all_finite(out.q)
    if name == "dqn":
        assert out.spike_counts == {}
    else:
        expected = {"conv0": 20 * 20 * 32, "conv1": 9 * 9 * 64, "conv2": 7 * 7 * 64}
        heads = {"mtspark_add": ["a_fc", "v_fc"], "mtspark_ad": ["q_fc"], "dsqn": ["fc"]}[name]
        assert set(out.spike_counts) == set(expected) | set(heads)
        for layer, count in out.spike_counts.items():
            chex.assert_shape(count, (2,))
            units = expected.get(layer, 512)
            np.testing.assert_allclose(out.spike_rates[layer], count / (4 * units), rtol=1e-6)


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_identical_under_jit_and_without(self):
        for name in ALL:
            net = _small(name)
            variables = mj.init_network(net, jax.random.PRNGKey(1), SMALL_OBS)
            reference = jax.jit(net.apply)(variables, _obs(), TASKS)
            out = self.variant(net.apply)(variables, _obs(), TASKS)
            np.testing.assert_allclose(out.q, reference.q, rtol=1e-6, atol=1e-6, err_msg=name)
            for layer in reference.spike_counts:
                np.testing.assert_array_equal(out.spike_counts[layer], reference.spike_counts[layer])


@pytest.mark.parametrize("name", ALL)
def test_gradients_finite_and_nonzero_for_every_parameter(name):
    net = _small(name)
    variables = mj.init_network(net, jax.random.PRNGKey(2), SMALL_OBS)
    obs = _obs()

    def loss(params):
        q = net.apply({"params": params}, obs, TASKS).q
        return jnp.sum(q * jnp.linspace(-1.0, 1.0, q.shape[-1]))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    names = [jax.tree_util.keystr(path) for path, _ in flat]
    if name.startswith("mtspark"):
        assert any("segments" in n for n in names), names
    for path, g in flat:
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.any(g != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", SPIKING)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_norm": True},
        {"neuron": mj.NeuronConfig(tau=3.0, v_reset=None, surrogate="atan")},
        {"dendrites": "layer_shared", "kwta": 8},
    ],
    ids=["default", "batchnorm", "soft_reset", "layer_shared_kwta"],
)
def test_layerwise_equals_naive_unroll(name, options):
    if name == "dsqn":
        options = {k: v for k, v in options.items() if k not in ("dendrites", "kwta")}
    fast, naive = _small(name, **options), _small(name, unroll="naive", **options)
    variables = mj.init_network(fast, jax.random.PRNGKey(3), SMALL_OBS)
    out_fast = jax.jit(fast.apply)(variables, _obs(), TASKS)
    out_naive = jax.jit(naive.apply)(variables, _obs(), TASKS)
    total = sum(float(c.sum()) for c in out_fast.spike_counts.values())
    assert total > 0, "the comparison must involve spikes"
    np.testing.assert_allclose(out_fast.q, out_naive.q, rtol=1e-4, atol=1e-5)
    for layer, count in out_fast.spike_counts.items():
        np.testing.assert_allclose(count, out_naive.spike_counts[layer], err_msg=layer)

    def loss(net, params):
        return net.apply({**variables, "params": params}, _obs(), TASKS).q.sum()

    g_fast = jax.grad(lambda p: loss(fast, p))(variables["params"])
    g_naive = jax.grad(lambda p: loss(naive, p))(variables["params"])
    chex.assert_trees_all_close(g_fast, g_naive, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mtspark_add", "mtspark_ad"])
def test_context_changes_q_values(name):
    net = _small(name)
    variables = mj.init_network(net, jax.random.PRNGKey(4), SMALL_OBS)
    obs = jnp.broadcast_to(_obs()[:1], SMALL_OBS)
    q = net.apply(variables, obs, TASKS).q
    assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])
    np.testing.assert_allclose(q[0], q[3], rtol=1e-6)  # same frame, same task
    one_hot = jax.nn.one_hot(TASKS, 3)
    np.testing.assert_allclose(net.apply(variables, obs, one_hot).q, q, rtol=1e-6)
    zero = net.apply(variables, obs, jnp.zeros((6, 3))).q  # no task signal: all rows equal
    np.testing.assert_allclose(zero, jnp.broadcast_to(zero[:1], zero.shape), rtol=1e-6)


def test_baselines_ignore_context():
    for name in ["dsqn", "dqn"]:
        net = _small(name)
        variables = mj.init_network(net, jax.random.PRNGKey(5), SMALL_OBS)
        a = net.apply(variables, _obs(), TASKS).q
        b = net.apply(variables, _obs(), jnp.zeros_like(TASKS)).q
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["dsqn", "dqn"])
def test_baselines_with_task_input_tell_tasks_apart(name):
    net = _small(name, task_input=True)
    variables = mj.init_network(net, jax.random.PRNGKey(5), SMALL_OBS)
    obs = jnp.broadcast_to(_obs()[:1], SMALL_OBS)  # one frame, three tasks
    q = net.apply(variables, obs, TASKS).q
    assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])
    np.testing.assert_allclose(q[0], q[3], rtol=1e-6)
    # The task enters the first dense layer only: 3 more input rows than without it.
    plain = mj.init_network(_small(name), jax.random.PRNGKey(5), SMALL_OBS)
    assert variables["params"]["fc"]["kernel"].shape[0] == plain["params"]["fc"]["kernel"].shape[0] + 3
    if name == "dsqn":
        naive = _small(name, task_input=True, unroll="naive")
        np.testing.assert_allclose(naive.apply(variables, obs, TASKS).q, q, rtol=1e-4, atol=1e-5)


def test_batchnorm_train_and_eval_behaviour():
    net = _small("mtspark_add", batch_norm=True)
    variables = mj.init_network(net, jax.random.PRNGKey(6), SMALL_OBS)
    assert "batch_stats" in variables
    obs = _obs()
    _, updates = net.apply(variables, obs, TASKS, train=True, mutable=["batch_stats"])
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "train mode must update stats"
    # Eval mode: a sample's Q does not depend on the rest of the batch.
    full = net.apply(variables, obs, TASKS).q
    single = net.apply(variables, obs[:1], TASKS[:1]).q
    np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-6)
    # Eval mode never asks for mutable state.
    net.apply(variables, obs, TASKS, train=False)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: _small("mtspark_add").init(jax.random.PRNGKey(0), jnp.zeros((16, 16, 4)), jnp.zeros(1, int)),
         r"obs must be \[B, H, W, C\]"),
        (lambda: _small("mtspark_add").init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 4)), jnp.zeros((2, 5))),
         r"context must be \[2, 3\]"),
        (lambda: _small("mtspark_ad").init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 4)), jnp.zeros(3, int)),
         r"task ids must be \[2\]"),
        (lambda: _small("mtspark_add", time_steps=0).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 4))),
         r"time_steps \(T\) must be >= 1"),
        (lambda: _small("dsqn", time_steps=0).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 4))),
         r"time_steps \(T\) must be >= 1"),
        (lambda: _small("mtspark_add", neuron=mj.NeuronConfig(surrogate="sign")), "unknown surrogate"),
        (lambda: mj.make_network("rainbow"), "unknown network 'rainbow'"),
        (lambda: mj.make_network("dqn", time_steps=4), r"dqn has no option\(s\) \['time_steps'\]"),
    ],
)
def test_bad_input_raises_with_expectation(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_default_init_fires_and_gain_one_is_flax_default():
    net = _small("mtspark_add")
    out = net.apply(mj.init_network(net, jax.random.PRNGKey(7), SMALL_OBS), _obs(), TASKS)
    for layer, rate in out.spike_rates.items():
        assert 0.0 < float(rate.mean()) < 0.5, (layer, float(rate.mean()))
    flax_default = mj.make_network("mtspark_add", init_gain=1.0, **SMALL)
    k = jax.random.PRNGKey(0)
    kernel = flax_default.init(k, _obs(), TASKS)["params"]["a_fc"]["kernel"]
    import flax.linen as nn

    ref = nn.Dense(32).init(jax.random.PRNGKey(1), jnp.zeros((1, kernel.shape[0])))["params"]["kernel"]
    np.testing.assert_allclose(np.std(kernel), np.std(ref), rtol=0.1)
    with pytest.raises(ValueError, match="init_gain must be > 0"):
        mj.make_network("dsqn", init_gain=0.0).init(k, _obs((1, 84, 84, 4)))


def test_no_context_ablation_ignores_the_task():
    from mtspark_jax.nn.networks import NoContext

    inner = mj.make_network("mtspark_add", num_actions=6, num_tasks=3, hidden=16, convs=((4, 3, 1),), time_steps=2)
    net = NoContext(inner)
    obs = jax.random.randint(jax.random.PRNGKey(0), (5, 10, 10, 7), 0, 2).astype(jnp.uint8) * 255
    variables = net.init(jax.random.PRNGKey(1), obs, jnp.zeros((5,), jnp.int32))
    q0 = net.apply(variables, obs, jnp.zeros((5,), jnp.int32)).q
    q2 = net.apply(variables, obs, jnp.full((5,), 2, jnp.int32)).q
    np.testing.assert_array_equal(q0, q2)
    zeros = inner.apply({"params": variables["params"]["net"]}, obs, jnp.zeros((5, 3), jnp.float32)).q
    np.testing.assert_array_equal(q0, zeros)
    onehot = inner.apply({"params": variables["params"]["net"]}, obs, jnp.full((5,), 2, jnp.int32)).q
    assert not np.allclose(q0, onehot), "the context must matter for the unablated network"


def _compute_ops(jaxpr) -> list:
    """Every dot_general and convolution in a jaxpr, nested jaxprs (scans, custom VJPs, jit) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append(eqn)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _compute_ops(inner)
    return found


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_reaches_every_layer_and_keeps_float32_outside(name):
    """dtype=bfloat16: every matmul and convolution of the forward pass takes bf16 operands, while the
    parameters, their gradients and Q stay float32."""
    obs = _obs()
    net = _small(name, dtype=jnp.bfloat16)
    v = mj.init_network(net, jax.random.PRNGKey(0), obs.shape)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
    ops = _compute_ops(jax.make_jaxpr(lambda v: net.apply(v, obs, TASKS).q)(v).jaxpr)
    bf16 = [e for e in ops if [x.aval.dtype for x in e.invars] == [jnp.bfloat16] * 2]
    dense = {"mtspark_add": 4, "mtspark_ad": 2, "dsqn": 2, "dqn": 2}[name]  # hidden layers and read-outs
    assert len(bf16) == len(SMALL["convs"]) + dense, [e.primitive.name for e in bf16]
    assert sum(e.primitive.name == "conv_general_dilated" for e in bf16) == len(SMALL["convs"])
    for eqn in ops:  # the rest: the dendritic segments against the context [B, tasks], kept float32
        if eqn not in bf16:
            assert name.startswith("mtspark") and 3 in eqn.invars[1].aval.shape, eqn
    q = net.apply(v, obs, TASKS).q
    assert q.dtype == jnp.float32
    grads = jax.grad(lambda v: net.apply(v, obs, TASKS).q.sum())(v)
    assert all(g.dtype == jnp.float32 and bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", SPIKING)
def test_bfloat16_q_is_as_close_to_float32_as_rounding_the_weights(name):
    """Tolerance: a spiking net's Q moves whenever a membrane near threshold flips, so the bar is the
    float32 net itself with bf16-rounded weights (the same rounding of the parameters, currents in
    float32). Mixed precision may add at most half again that difference, and changes fewer than 2 %
    of the first layer's spikes (its current is rounded once)."""
    obs = _obs((64, 16, 16, 4), seed=3)
    tasks = jnp.arange(64) % 3
    f32, b16 = _small(name), _small(name, dtype=jnp.bfloat16)
    v = mj.init_network(f32, jax.random.PRNGKey(0), obs.shape)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), v)
    ref, mixed, weights_only = (net.apply(p, obs, tasks) for net, p in ((f32, v), (b16, v), (f32, rounded)))
    d_mixed = float(jnp.abs(mixed.q - ref.q).mean())
    d_weights = float(jnp.abs(weights_only.q - ref.q).mean())
    assert d_mixed <= 1.5 * d_weights + 1e-3, (d_mixed, d_weights)
    c_ref, c_mixed = np.asarray(ref.spike_counts["conv0"]), np.asarray(mixed.spike_counts["conv0"])
    assert np.abs(c_ref - c_mixed).sum() <= 0.02 * c_ref.sum()


def test_dtype_names_in_configs():
    from mtspark_jax.nn.networks import compute_dtype
    from mtspark_jax.rl.envs import EnvSpec
    from mtspark_jax.rl.training import TrainConfig, build_network, validate_config
    from mtspark_jax.vision.classification import ImageConfig

    assert compute_dtype("bfloat16") == jnp.bfloat16 and compute_dtype("float32") is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        validate_config(TrainConfig(dtype="float16"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        ImageConfig(dtype="fp8")
    assert ImageConfig(dtype="bfloat16").network().dtype == jnp.bfloat16
    spec = EnvSpec(name="x", num_envs=2, frame_shape=(84, 84, 1), stack=4, num_actions=6, seed=0)
    assert build_network(TrainConfig(dtype="bfloat16", agent="dqn"), spec, 3).dtype == jnp.bfloat16
