"""Agent files: a run's online network and what rebuilds it, in one small file to ship and play.

A checkpoint holds the whole training state (replay, optimiser state, target
network: tens to hundreds of MB). An agent file holds only the online
network's variables, plus the run's :class:`~mtspark_jax.rl.training.TrainConfig`,
its task names, the observation and action shapes, and the agent step it was
taken at: 100-500 KB for the presets' networks. It is one msgpack map
(``flax.serialization``):

* ``format``: :data:`FORMAT`;
* ``meta``: a JSON string: ``config`` (the TrainConfig as a dict), ``tasks``,
  ``num_actions``, ``frame_shape`` ``[H, W, C]``, ``stack``, ``agent_steps``;
* ``variables``: the Flax variables (``{"params": ...}`` plus
  ``{"batch_stats": ...}`` with batch norm), arrays stored bit for bit.

``experiments/export_params.py`` writes one from a ``train_atari.py``
workdir; ``experiments/eval_atari.py --params=FILE`` plays it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from mtspark_jax.rl import training as T
from mtspark_jax.rl.envs import EnvSpec
from mtspark_jax.rl.runner import canonical_games

FORMAT = "mtspark_jax.agent_file/1"
"""The ``format`` entry of the files this version writes and reads."""


class Agent(NamedTuple):
    """What an agent file gives back: the config the network is built from, the task names
    (network task ``i`` is ``tasks[i]``), the network, its variables and the agent step."""

    config: T.TrainConfig
    tasks: list[str]
    spec: EnvSpec
    net: nn.Module
    variables: Any
    agent_steps: int


def save_agent(path: str, config: T.TrainConfig, tasks: Sequence[str], spec: EnvSpec, variables: Any,
               agent_steps: int) -> int:
    """Writes the agent file ``path``; returns its size in bytes.

    Args:
      config: the run's config.
      tasks: task names in network task order (``runner.canonical_games(config)``).
      spec: any of the run's env specs: the network's ``num_actions``, ``frame_shape`` and ``stack``.
      variables: the online network's variables.
      agent_steps: the agent step they were taken at.
    """
    meta = {"config": dataclasses.asdict(config), "tasks": list(tasks), "num_actions": spec.num_actions,
            "frame_shape": list(spec.frame_shape), "stack": spec.stack, "agent_steps": int(agent_steps)}
    blob = serialization.msgpack_serialize({"format": FORMAT, "meta": json.dumps(meta),
                                            "variables": jax.device_get(dict(variables))})
    with open(path, "wb") as f:
        f.write(blob)
    return len(blob)


def network_for(config: T.TrainConfig, spec: EnvSpec, num_tasks: int) -> tuple[nn.Module, Any]:
    """``(net, shapes)``: the network of ``config`` and its variables' shapes (``jax.ShapeDtypeStruct`` leaves)."""
    net = T.build_network(config, spec, num_tasks)
    obs = jnp.zeros((1,) + spec.obs_shape[1:], jnp.uint8)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), obs, jnp.zeros((1,), jnp.int32), train=False))
    return net, dict(shapes)


def check_fits(variables: Any, shapes: Any, what: str) -> None:
    """ValueError unless ``variables`` has the tree, shapes and dtypes of ``shapes``; ``what`` names the network."""
    got, want = jax.tree_util.tree_flatten_with_path(variables)[0], jax.tree_util.tree_flatten_with_path(shapes)[0]
    got_paths = [jax.tree_util.keystr(p) for p, _ in got]
    want_paths = [jax.tree_util.keystr(p) for p, _ in want]
    if got_paths != want_paths:
        missing, extra = sorted(set(want_paths) - set(got_paths)), sorted(set(got_paths) - set(want_paths))
        raise ValueError(f"the file's variables do not fit {what}: missing {missing[:3]}, unexpected {extra[:3]}")
    for path, (_, a), (_, b) in zip(got_paths, got, want):
        if tuple(np.shape(a)) != tuple(b.shape) or np.asarray(a).dtype != b.dtype:
            raise ValueError(f"the file's variables do not fit {what}: {path} is {np.shape(a)} "
                             f"{np.asarray(a).dtype}, the network wants {tuple(b.shape)} {b.dtype}")


def load_agent(path: str, config: T.TrainConfig | None = None) -> Agent:
    """Reads the agent file ``path`` and rebuilds its network.

    Args:
      path: an agent file written by :func:`save_agent`.
      config: a config to build the network from instead of the file's (e.g. a preset with
        another evaluation protocol); its network must fit the file's variables.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: not an agent file of this version, or the variables do not fit the network.
    """
    with open(path, "rb") as f:
        blob = f.read()
    try:
        raw = serialization.msgpack_restore(blob)
    except Exception:  # msgpack raises several types for bytes that are not msgpack
        raw = None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ValueError(f"{path!r} is not an agent file of format {FORMAT!r} (found {found!r}): write one with "
                         "experiments/export_params.py")
    meta = json.loads(raw["meta"])
    run_config = T.config_from_dict(meta["config"])
    tasks = meta["tasks"]
    if config is None:
        config = run_config
    elif canonical_games(config) != tasks:
        raise ValueError(f"the given config plays {canonical_games(config)}, the file's network was trained "
                         f"on {tasks}")
    spec = EnvSpec(name=tasks[0], num_envs=1, frame_shape=tuple(meta["frame_shape"]), stack=meta["stack"],
                   num_actions=meta["num_actions"])
    net, shapes = network_for(config, spec, len(tasks))
    what = "the file's config" if config is run_config else "the given config"
    check_fits(raw["variables"], shapes, f"{what} ({config.agent}, hidden {config.hidden}, convs {config.convs!r}, "
                                         f"{len(tasks)} tasks)")
    return Agent(config, tasks, spec, net, raw["variables"], meta["agent_steps"])
