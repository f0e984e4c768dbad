"""Learner: Double DQN target by hand, masked loss, update, sync, epsilon."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtspark_jax as mj
from mtspark_jax.rl import learner
from mtspark_jax.rl.replay import Batch


def test_double_dqn_target_by_hand():
    q_online = jnp.array([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    q_target = jnp.array([[10.0, 20.0, 30.0], [7.0, 8.0, 9.0]])
    reward = jnp.array([1.0, -2.0])
    term = jnp.array([0.0, 1.0])
    got = learner.double_dqn_target(q_online, q_target, reward, term, 0.9)
    # row 0: online argmax = 1 -> target 20 -> 1 + 0.9 * 20; row 1: terminal -> -2.
    np.testing.assert_allclose(np.asarray(got), [1.0 + 0.9 * 20.0, -2.0])


def _tiny_net():
    return mj.make_network("mtspark_add", convs=((4, 8, 4),), hidden=16, time_steps=2, num_tasks=2)


def _batch(key, b=6):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.randint(k1, (b, 84, 84, 4), 0, 255).astype(jnp.uint8)
    nxt = jax.random.randint(k2, (b, 84, 84, 4), 0, 255).astype(jnp.uint8)
    return Batch(obs, jax.random.randint(k3, (b,), 0, 18), jnp.arange(b, dtype=jnp.float32),
                 nxt, (jnp.arange(b) % 2).astype(jnp.float32), jnp.ones((b,)), jnp.arange(b) % 2)


def test_td_loss_matches_manual_huber():
    net = _tiny_net()
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    cfg = learner.LearnerConfig(gamma=0.5)
    state = learner.init_learner(variables, learner.make_optimizer(cfg))
    state = state.replace(target_variables=mj.init_network(net, jax.random.PRNGKey(1), (1, 84, 84, 4)))
    batch = _batch(jax.random.PRNGKey(2))
    loss_fn = jax.jit(learner.td_loss, static_argnums=(2, 4))
    loss, _ = loss_fn(variables["params"], state, net, batch, cfg)
    apply = jax.jit(lambda v, o, t: net.apply(v, o, t).q)
    q = np.asarray(apply(variables, batch.obs, batch.task))
    qn = np.asarray(apply(variables, batch.next_obs, batch.task))
    qt = np.asarray(apply(state.target_variables, batch.next_obs, batch.task))
    a = np.asarray(batch.action)
    y = np.asarray(batch.reward) + 0.5 * (1 - np.asarray(batch.terminated)) * qt[np.arange(6), qn.argmax(1)]
    d = q[np.arange(6), a] - y
    huber = np.where(np.abs(d) <= 1, 0.5 * d**2, np.abs(d) - 0.5)
    np.testing.assert_allclose(float(loss), huber.mean(), rtol=1e-5)
    # Masked samples do not count.
    masked = batch._replace(mask=jnp.array([1.0, 1, 0, 0, 0, 0]))
    loss2, _ = loss_fn(variables["params"], state, net, masked, cfg)
    np.testing.assert_allclose(float(loss2), huber[:2].mean(), rtol=1e-5)
    # An n-step batch's per-sample discount replaces gamma.
    disc = np.array([0.9, 0.81, 0.729, 1.0, 0.5, 0.25], np.float32)
    loss3, _ = loss_fn(variables["params"], state, net, batch._replace(discount=jnp.asarray(disc)), cfg)
    y3 = np.asarray(batch.reward) + disc * (1 - np.asarray(batch.terminated)) * qt[np.arange(6), qn.argmax(1)]
    d3 = q[np.arange(6), a] - y3
    np.testing.assert_allclose(float(loss3), np.where(np.abs(d3) <= 1, 0.5 * d3**2, np.abs(d3) - 0.5).mean(),
                               rtol=1e-5)


def test_update_changes_params_and_empty_batch_does_not():
    net = _tiny_net()
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    cfg = learner.LearnerConfig(lr=1e-3)
    opt = learner.make_optimizer(cfg)
    state = learner.init_learner(variables, opt)
    update = jax.jit(learner.make_update(net, opt, cfg))
    batch = _batch(jax.random.PRNGKey(2))
    new, info = update(state, batch)
    assert int(new.updates) == 1 and np.isfinite(float(info.td_loss))
    assert float(learner.relative_change(new.variables["params"], state.variables["params"])) > 0
    same, _ = update(state, batch._replace(mask=jnp.zeros(6)))
    assert int(same.updates) == 0
    chex_equal = jax.tree.map(lambda a, b: bool((a == b).all()), same.variables, state.variables)
    assert all(jax.tree.leaves(chex_equal))
    synced = learner.sync_target(new, True)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), synced.target_variables, new.variables)))
    kept = learner.sync_target(new, False)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), kept.target_variables, state.variables)))


def test_given_target_q_is_used_and_matches_the_update_s_own():
    """update(state, batch, target_q(...)) is the update that computes it; another target Q moves the loss."""
    net = _tiny_net()
    cfg = learner.LearnerConfig(lr=1e-3)
    opt = learner.make_optimizer(cfg)
    state = learner.init_learner(mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4)), opt)
    state = state.replace(target_variables=mj.init_network(net, jax.random.PRNGKey(1), (1, 84, 84, 4)))
    update = jax.jit(learner.make_update(net, opt, cfg))
    batch = _batch(jax.random.PRNGKey(2))
    qt = jax.jit(lambda v, o, t: learner.target_q(net, v, o, t))(state.target_variables, batch.next_obs, batch.task)
    assert qt.shape == (6, 18)
    own, info_own = update(state, batch)
    given, info_given = update(state, batch, qt)
    np.testing.assert_allclose(float(info_given.td_loss), float(info_own.td_loss), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
                 given.variables, own.variables)
    _, info_other = update(state, batch, qt + 5.0)
    assert abs(float(info_other.td_loss) - float(info_own.td_loss)) > 1e-3
    with pytest.raises(AssertionError, match="shape"):
        update(state, batch, qt[:3])


def test_batchnorm_network_updates_batch_stats():
    net = mj.make_network("mtspark_add", convs=((4, 8, 4),), hidden=8, time_steps=2, num_tasks=2, batch_norm=True)
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    cfg = learner.LearnerConfig()
    opt = learner.make_optimizer(cfg)
    new, _ = jax.jit(learner.make_update(net, opt, cfg))(learner.init_learner(variables, opt), _batch(jax.random.PRNGKey(1)))
    # The running statistics moved towards the batch's (they start at mean 0, variance 1), and only the
    # online network's: the target keeps its own until the next sync.
    before, after = variables["batch_stats"], new.variables["batch_stats"]
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    assert all(jax.tree.leaves(moved))
    kept = jax.tree.map(lambda a, b: np.array_equal(a, b), before, new.target_variables["batch_stats"])
    assert all(jax.tree.leaves(kept))


def test_epsilon_schedule_and_greedy():
    assert float(learner.linear_epsilon(0, 1.0, 0.1, 100)) == 1.0
    assert float(learner.linear_epsilon(50, 1.0, 0.1, 100)) == pytest.approx(0.55)
    assert float(learner.linear_epsilon(1000, 1.0, 0.1, 100)) == pytest.approx(0.1)
    q = jnp.array([[0.0, 5.0, 1.0]] * 100)
    assert (learner.epsilon_greedy(jax.random.PRNGKey(0), q, 0.0) == 1).all()
    acts = learner.epsilon_greedy(jax.random.PRNGKey(0), q, 1.0)
    assert len(set(np.asarray(acts).tolist())) == 3


def test_bad_config():
    with pytest.raises(ValueError, match="update_mode"):
        learner.validate_learner_config(learner.LearnerConfig(update_mode="both"))
    with pytest.raises(ValueError, match="lr"):
        learner.validate_learner_config(learner.LearnerConfig(lr=0.0))
    with pytest.raises(ValueError, match="optimizer_per_task"):
        learner.validate_learner_config(learner.LearnerConfig(update_mode="mixed", optimizer_per_task=True))


def test_optimizer_per_task_steps_each_task_with_its_own_adam_state():
    """A step on task 1's batch reads and writes task 1's Adam state only, and moves the
    parameters exactly as a fresh unshared optimiser would; the shared state differs after
    another task's step."""
    net = _tiny_net()
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    b0, b1 = _batch(jax.random.PRNGKey(2)), _batch(jax.random.PRNGKey(3))
    b0, b1 = b0._replace(task=jnp.zeros(6, jnp.int32)), b1._replace(task=jnp.ones(6, jnp.int32))
    cfg = learner.LearnerConfig(lr=1e-3, optimizer_per_task=True)
    shared_cfg = learner.LearnerConfig(lr=1e-3)
    opt = learner.make_optimizer(cfg)
    per_task = jax.jit(learner.make_update(net, opt, cfg))
    shared = jax.jit(learner.make_update(net, opt, shared_cfg))
    state = learner.init_learner(variables, opt, num_states=2)
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(state.opt_state))

    after0, _ = per_task(state, b0)
    leaves = lambda s, i: [np.asarray(x[i]) for x in jax.tree.leaves(s.opt_state)]  # noqa: E731
    assert any((a != b).any() for a, b in zip(leaves(after0, 0), leaves(state, 0)))
    assert all((a == b).all() for a, b in zip(leaves(after0, 1), leaves(state, 1)))

    # Task 1's step after task 0's: the same parameter step as a fresh optimiser's first step.
    after1, _ = per_task(after0, b1)
    fresh, _ = shared(learner.init_learner(after0.variables, opt), b1)
    step = lambda a, b: jax.tree.map(lambda x, y: np.asarray(x - y), a.variables["params"], b.variables["params"])  # noqa: E731
    for got, want in zip(jax.tree.leaves(step(after1, after0)), jax.tree.leaves(step(fresh, after0))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    # One shared state carries task 0's moments into task 1's step.
    mixed, _ = shared(shared(learner.init_learner(variables, opt), b0)[0], b1)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(step(mixed, after0)),
                                                       jax.tree.leaves(step(after1, after0))))


def test_gate_lr_scale_scales_only_the_gate_steps():
    net = _tiny_net()
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    batch = _batch(jax.random.PRNGKey(2))
    moved = {}
    for scale in (1.0, 0.1, 0.0):
        cfg = learner.LearnerConfig(gate_lr_scale=scale)
        opt = learner.make_optimizer(cfg)
        state, _ = jax.jit(learner.make_update(net, opt, cfg))(learner.init_learner(variables, opt), batch)
        moved[scale] = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.variables["params"],
                                    variables["params"])
    for stream in ("a", "v"):
        gate, fc = f"{stream}_gate", f"{stream}_fc"
        assert moved[1.0][gate]["segments"] > 0 and moved[0.0][gate]["segments"] == 0.0
        np.testing.assert_allclose(moved[0.1][gate]["segments"], 0.1 * moved[1.0][gate]["segments"], rtol=1e-2)
        assert moved[0.1][fc]["kernel"] == moved[1.0][fc]["kernel"] > 0  # the rest takes the same step


def test_rate_floor_adds_the_penalty_of_the_layers_below_it():
    net = _tiny_net()
    variables = mj.init_network(net, jax.random.PRNGKey(0), (1, 84, 84, 4))
    batch = _batch(jax.random.PRNGKey(2))
    base = learner.LearnerConfig(gamma=0.5)
    state = learner.init_learner(variables, learner.make_optimizer(base))
    loss_fn = jax.jit(learner.td_loss, static_argnums=(2, 4))
    td, (info, _) = loss_fn(variables["params"], state, net, batch, base)
    rates = {k: float(np.mean(v)) for k, v in net.apply(variables, batch.obs, batch.task).spike_rates.items()}
    floor = 0.5 * (min(rates.values()) + max(rates.values()))  # some layers below it, some above
    cfg = learner.LearnerConfig(gamma=0.5, rate_floor=floor, rate_weight=3.0)
    loss, (info2, _) = loss_fn(variables["params"], state, net, batch, cfg)
    want = 3.0 * sum(max(floor - r, 0.0) ** 2 for r in rates.values())
    assert want > 0 and any(r > floor for r in rates.values())
    np.testing.assert_allclose(float(loss), float(td) + want, rtol=1e-5)
    np.testing.assert_allclose(float(info2.td_loss), float(td), rtol=1e-6)  # logged without the penalty
    # The penalty's gradient raises the rates of the layers below the floor.
    grads = jax.grad(lambda p: learner.rate_penalty(
        net.apply({"params": p}, batch.obs, batch.task, train=True).spike_rates, batch.mask, floor))(variables["params"])
    low = min(rates, key=rates.get)
    stream = low.split("_")[0] if low.endswith("_fc") else "trunk"
    assert float(optax_norm(grads[f"{stream}_fc"] if stream != "trunk" else grads["trunk"])) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
