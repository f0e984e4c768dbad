"""MinAtar sweeps: one training setting's seeds trained at once with ``jax.vmap``.

MinAtar in gymnax is pure JAX, so a whole training run (env, replay,
learner, schedule) is one pytree and the pure ``init`` and ``run_chunk`` of
:func:`mtspark_jax.rl.training.make_train` are vmapped over seeds. Settings
of the grid (any :class:`~mtspark_jax.rl.training.TrainConfig` field, e.g.
``lr``, ``eps_end``, ``eps_decay_steps``, ``tau``, ``v_threshold``) are
compiled once each and their seeds vmapped: ``make_train`` closes over
Python constants. EnvPool (Atari) cannot be vmapped (its XLA ``step``
raises ``NotImplementedError`` under ``vmap``): Atari members share one pool
per game instead (:mod:`mtspark_jax.rl.atari_sweep`).

A member whose TD loss or parameters become non-finite is marked
``diverged`` (:mod:`mtspark_jax.sweeps` for members, the table and the
progress bar).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax import sharding as sh
from mtspark_jax.init_jit import jit_once
from mtspark_jax.nn.ops import default_conv_impl, with_conv_impl
from mtspark_jax.rl import minatar
from mtspark_jax.rl import training as T
from mtspark_jax.sweeps import (Members, all_finite, chunk_td_health, member_progress, progress_bar, setting_config,
                                setting_label)


class MinAtarSweep:
    """One MinAtar training setting, vmapped over seeds (see module docstring).

    Args:
      config: a :class:`mtspark_jax.rl.training.TrainConfig` (MinAtar backend).
      games: MinAtar games (tasks).
      conv_impl: ``xla`` or ``slices`` (:func:`mtspark_jax.nn.ops.slice_conv`);
        default :func:`~mtspark_jax.nn.ops.default_conv_impl`.
    """

    def __init__(self, config: T.TrainConfig, games: Sequence[str], conv_impl: str | None = None):
        self.config = dataclasses.replace(config, games=tuple(games))
        self.envs = minatar.make_minatar_envs(games, self.config.num_envs, 0)
        self.trainer = T.make_train(self.config, self.envs)
        trainer, envs = self.trainer, self.envs

        def init_member(key):
            k_env, k_train = jax.random.split(key)
            resets = [env.reset_from(jax.random.fold_in(k_env, i)) for i, env in enumerate(envs)]
            states = tuple(r[0] for r in resets)
            obs = jnp.stack([r[1] for r in resets])
            return trainer.init(k_train, states, obs)

        self._init = jit_once(jax.vmap(init_member))
        chunk = trainer.run_chunk  # traced here, with conv_impl
        self._chunk = jax.jit(with_conv_impl(jax.vmap(chunk), conv_impl or default_conv_impl()),
                              donate_argnums=0)

    def run(self, seeds: Sequence[int], mesh=None, progress: bool = False, desc: str | None = None) -> dict[str, Any]:
        """Trains one member per seed to ``config.total_steps``.

        ``progress``: a bar of the agent steps (``desc`` in front) with the
        steps per second of all members together, the members' mean return
        of the episodes that ended in their latest chunk that ended one, and
        their mean TD loss.

        Returns ``{"members": [...], "wall_s", "chunks", "first_chunk_s"}``;
        per member: ``seed``, ``diverged``, ``return`` (mean return of the
        episodes that ended in the second half of training; all episodes if
        none did), ``episodes``, ``final_td_loss``.
        """
        t0 = time.time()
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
        if mesh is not None:
            keys = sh.shard_leading(keys, mesh)
        state = self._init(keys)
        m = len(seeds)
        half = self.config.total_steps // 2
        sums, counts = np.zeros(m), np.zeros(m)
        all_sums, all_counts = np.zeros(m), np.zeros(m)
        bad = np.zeros(m, bool)
        last_loss, recent = np.full(m, np.nan), np.full(m, np.nan)
        chunks, first, prev_step = 0, None, 0
        with progress_bar(self.config.total_steps, progress, desc) as bar:
            while int(np.max(np.asarray(state.global_step))) < self.config.total_steps:
                t_chunk = time.time()
                state, log = self._chunk(state)
                log = jax.tree.map(np.asarray, log)
                if first is None:
                    first = time.time() - t0
                chunks += 1
                ended = log.ended.reshape(m, log.ended.shape[1], -1)
                rets = log.ep_return.reshape(ended.shape)
                late = (log.global_step > half)[:, :, None]
                sums += (rets * ended * late).sum((1, 2))
                counts += (ended * late).sum((1, 2))
                chunk_sums, chunk_counts = (rets * ended).sum((1, 2)), ended.sum((1, 2))
                all_sums += chunk_sums
                all_counts += chunk_counts
                recent = np.where(chunk_counts > 0, chunk_sums / np.maximum(chunk_counts, 1), recent)
                chunk_bad, chunk_loss = chunk_td_health(log.td_loss, log.num_updates)
                bad |= chunk_bad
                last_loss = np.where(np.isfinite(chunk_loss) | bad, chunk_loss, last_loss)
                step = int(np.max(log.global_step[:, -1]))
                sps = (step - prev_step) * m / max(time.time() - t_chunk, 1e-9)
                bar.update(step - prev_step)
                prev_step = step
                bar.set_postfix_str(f"SPS {sps:.0f} " + member_progress({"ret": recent, "td": last_loss}, bad))
        params = state.learner.variables["params"]
        finite = np.asarray(jax.vmap(all_finite)(params))
        bad |= ~finite
        rows = []
        for i, s in enumerate(seeds):
            ret = sums[i] / counts[i] if counts[i] else (all_sums[i] / all_counts[i] if all_counts[i] else np.nan)
            rows.append(dict(seed=int(s), diverged=bool(bad[i]), **{"return": float("nan") if bad[i] else float(ret)},
                             episodes=int(all_counts[i]), final_td_loss=float(last_loss[i])))
        return {"members": rows, "wall_s": time.time() - t0, "chunks": chunks, "first_chunk_s": first or 0.0,
                "state": state}


def run_minatar_sweep(config: T.TrainConfig, games: Sequence[str], members: Members,
                      mesh_fn: Callable[[int], Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Every setting of ``members`` (TrainConfig fields) compiled once, its seeds vmapped.

    ``mesh_fn(count)`` (e.g. :func:`mtspark_jax.sharding.largest_divisor_mesh`)
    shards a setting's seeds; None: one device. ``progress``: one bar per
    setting (:meth:`MinAtarSweep.run`), on process 0.
    """
    rows, t0 = [], time.time()
    n = len(members.settings)
    for k, setting in enumerate(members.settings):
        cfg = setting_config(config, setting)
        seeds = [int(s) for s in members.seed[members.setting == k]]
        mesh = mesh_fn(len(seeds)) if mesh_fn else None
        desc = " ".join(x for x in (f"setting {k + 1}/{n}", setting_label(setting)) if x)
        res = MinAtarSweep(cfg, games).run(seeds, mesh, progress and jax.process_index() == 0, desc)
        for r in res["members"]:
            rows.append({"setting": k, **r})
    return {"members": rows, "wall_s": time.time() - t0, "settings": members.settings}
