"""mtspark_jax.rl.agent_file: the online network and its config in one small file, read back bit for bit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import get_preset
from mtspark_jax.rl import agent_file, runner
from mtspark_jax.rl import training as T
from mtspark_jax.rl.envs import EnvSpec

SPEC = EnvSpec("Pong", 1, (84, 84, 1), 4, 18)


def _agent(config, seed=0):
    """A freshly initialised network of ``config`` (values that are not all zeros)."""
    tasks = runner.canonical_games(config)
    net = T.build_network(config, SPEC, len(tasks))
    init = jax.jit(net.init, static_argnames="train")
    variables = init(jax.random.PRNGKey(seed), jnp.zeros(SPEC.obs_shape, jnp.uint8), jnp.zeros((1,), jnp.int32),
                     train=False)
    return tasks, net, dict(variables)


@pytest.mark.parametrize("changes", [{}, {"batch_norm": True}, {"agent": "dqn"}])
def test_round_trip_is_bit_for_bit_and_plays_the_same(tiny_config, tmp_path, changes):
    config = tiny_config(games=("Pong", "Breakout"), **changes)
    tasks, net, variables = _agent(config)
    path = str(tmp_path / "agent.msgpack")
    size = agent_file.save_agent(path, config, tasks, SPEC, variables, agent_steps=1234)
    agent = agent_file.load_agent(path)
    assert size == (tmp_path / "agent.msgpack").stat().st_size
    assert agent.config == config and agent.tasks == tasks == ["Pong", "Breakout"] and agent.agent_steps == 1234
    assert agent.spec.obs_shape == SPEC.obs_shape and agent.spec.num_actions == 18
    assert jax.tree.structure(agent.variables) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(agent.variables), jax.tree.leaves(variables), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    obs = jax.random.randint(jax.random.PRNGKey(1), (3,) + SPEC.obs_shape[1:], 0, 256).astype(jnp.uint8)
    task = jnp.array([0, 1, 1])
    apply = jax.jit(lambda net, v: net.apply(v, obs, task, train=False).q, static_argnums=0)
    np.testing.assert_array_equal(apply(agent.net, agent.variables), apply(net, variables))


def test_a_preset_network_is_a_few_hundred_kilobytes(tmp_path):
    config = get_preset("three_games")
    tasks = runner.canonical_games(config)
    _, shapes = agent_file.network_for(config, SPEC, len(tasks))
    variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)  # the size depends on the shapes only
    size = agent_file.save_agent(str(tmp_path / "a.msgpack"), config, tasks, SPEC, variables, 0)
    params = sum(x.size for x in jax.tree.leaves(variables))
    assert 100 * 1024 < size < 500 * 1024 and size < 4 * params + 20 * 1024  # float32 weights and little else


def test_another_config_must_build_the_same_network_for_the_same_games(tiny_config, tmp_path):
    config = tiny_config(games=("Pong",))
    tasks, _, variables = _agent(config)
    path = str(tmp_path / "agent.msgpack")
    agent_file.save_agent(path, config, tasks, SPEC, variables, 0)
    same = dataclasses.replace(config, eval_max_steps=77)
    assert agent_file.load_agent(path, same).config.eval_max_steps == 77
    with pytest.raises(ValueError, match=r"do not fit the given config .*\['params'\]"):
        agent_file.load_agent(path, dataclasses.replace(config, hidden=32))
    with pytest.raises(ValueError, match=r"plays \['Breakout'\], the file's network was trained on \['Pong'\]"):
        agent_file.load_agent(path, dataclasses.replace(config, games=("Breakout",)))


@pytest.mark.parametrize("content", [b"not msgpack at all \xc1", b"\x81\xa6format\xa3old"])
def test_other_files_are_refused_with_the_format_named(tmp_path, content):
    path = tmp_path / "x.msgpack"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not an agent file of format 'mtspark_jax.agent_file/1'"):
        agent_file.load_agent(str(path))


def test_config_from_dict_refuses_unknown_fields():
    raw = dataclasses.asdict(T.TrainConfig())
    assert T.config_from_dict(raw) == T.TrainConfig()
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['new_field'\]"):
        T.config_from_dict({**raw, "new_field": 1})
