"""Atari sweeps: many agents in one program, sharing one EnvPool per game.

EnvPool cannot be vmapped (its XLA ``step`` raises under ``vmap``), and it
does not need to be. One pool of ``M * N`` envs per game steps every
member's envs in one call; member ``k`` (of ``M``) owns envs
``[k N, (k + 1) N)``. The agents' states (network, learner, replay,
schedule) are stacked ``[M, ...]`` and every part of an iteration that
touches no env is vmapped:

    vmap(choose_all) -> actions [M, N] -> flatten -> pool.send          (the pools step ...)
    vmap(update_all)                                                    (... while the members learn)
    pool.recv -> [M * N] -> [M, N] -> vmap(absorb_all) -> vmap(finish)

with the same barriers as :func:`mtspark_jax.rl.training.iteration`.

Members are the seeds of one setting: every setting of a grid (any
:class:`~mtspark_jax.rl.training.TrainConfig` field) is compiled once and its
seeds run together, as :class:`mtspark_jax.rl.minatar_sweep.MinAtarSweep` does. The
members must agree on the acting task at every iteration, because one pool
step serves them all: one game, ``schedule="simultaneous"``, or round robin
with ``switch_unit="steps"`` (the adaptive schedule and switches counted in
episodes depend on each member's own play, and are refused).

Env seeds: EnvPool seeds env ``j`` of a pool seeded ``s`` with ``s + j``,
so member ``k``'s envs are those of a solo run with ``env_seed = base + k N``
(``base``: the setting's :attr:`~mtspark_jax.rl.training.TrainConfig.training_env_seed`).
That solo run (``train_atari.py --seed=<seed> --env_seed=<env_seed>``, both
in ``members.csv``) reaches the member's parameters and returns
(tests/test_atari_sweep.py). Evaluation uses each member's own evaluation
pools and key, exactly as its solo run would.

Sharding (``mesh``, :func:`mtspark_jax.sharding.largest_divisor_mesh`): with
``D`` devices each device trains ``M / D`` members on pools of its own
(``M N / D`` envs per game, seeded so that their envs are the unsharded
pools' envs, :func:`device_pool_configs`) inside ``shard_map``, so members
see the same envs as unsharded. EnvPool's XLA functions name their pool
(an FFI attribute; the handle operand does not choose it), so each device
calls its own pool's functions, chosen by ``lax.switch`` on its mesh index
(:class:`DevicePools`). One process only: every device must be addressable.

Outputs per setting ``setting_<k>/``: ``member_<i>/metrics.csv`` and
``eval.csv`` (the solo run's columns), checkpoints of the whole setting
(every member's state and the shared pools' action logs; resume replays the
actions, as a single run does: :mod:`mtspark_jax.rl.action_log`). A member whose
loss or parameters become non-finite is marked ``diverged`` and left out of
the table's mean, as in the other sweeps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from mtspark_jax import checkpoint as C
from mtspark_jax import sharding as sh
from mtspark_jax.init_jit import jit_once
from mtspark_jax.metrics_log import MetricsLogger
from mtspark_jax.rl import envs as E
from mtspark_jax.rl import runner as RN
from mtspark_jax.rl import training as T
from mtspark_jax.rl.action_log import ActionLog, restore_envs
from mtspark_jax.rl.evaluation import make_evaluator
from mtspark_jax.nn.ops import default_conv_impl, with_conv_impl
from mtspark_jax.sweeps import Members, all_finite, chunk_td_health, setting_config
from mtspark_jax.workdir import guard_writes, hold

Array = jax.Array


class SpecOnly(NamedTuple):
    """A task's :class:`~mtspark_jax.rl.envs.EnvSpec` without an env: what a member's loop needs
    to build its network and replay (the shared pools do the stepping)."""

    spec: E.EnvSpec


def validate_sweep_config(c: T.TrainConfig) -> None:
    """ValueError unless ``c`` is an Atari config whose members always act on the same task."""
    T.validate_config(c)
    if c.backend != "atari":
        raise ValueError(f"an Atari sweep needs backend='atari', got {c.backend!r} (MinAtar: --task=minatar)")
    shared = len(c.games) == 1 or c.schedule == "simultaneous" or (
        c.schedule == "round_robin" and c.switch_unit == "steps")
    if not shared:
        raise ValueError("the members of an Atari sweep share one env step, so they must act on the same task: "
                         "use one game, schedule=simultaneous, or round_robin with switch_unit=steps "
                         f"(got schedule={c.schedule!r}, switch_unit={c.switch_unit!r})")


def member_configs(c: T.TrainConfig, seeds: Sequence[int]) -> list[T.TrainConfig]:
    """Each member's solo twin: its ``seed`` and the ``env_seed`` of its slice of the pools."""
    base = c.training_env_seed
    return [dataclasses.replace(c, seed=int(s), env_seed=base + k * c.num_envs) for k, s in enumerate(seeds)]


def device_pool_configs(c: T.TrainConfig, m: int, d: int) -> list[T.TrainConfig]:
    """The training pools' configs of ``d`` devices sharing ``m`` members (``d`` divides ``m``).

    Device ``i`` holds members ``[i m/d, (i + 1) m/d)``: ``m N / d`` envs per
    game seeded ``base + i m N / d``, which are envs ``[i m N / d, ...)`` of the
    unsharded pool (EnvPool seeds env ``j`` with ``seed + j``).
    """
    if m < 1 or d < 1 or m % d:
        raise ValueError(f"{d} devices cannot share {m} members evenly: the device count must divide the members")
    envs = m // d * c.num_envs
    return [dataclasses.replace(c, num_envs=envs, env_seed=c.training_env_seed + i * envs) for i in range(d)]


class DevicePools:
    """One task's pools, one per device along mesh axis ``axis``; under ``shard_map`` each device
    sends to and receives from its own pool (``lax.switch`` on ``lax.axis_index``).

    EnvPool's XLA ``send``/``recv`` step the pool that made them, whatever
    handle operand they are given, so the per-device choice must pick the
    function, not only the handle. ``spec`` is one pool's (``[M N / D]`` envs).
    """

    def __init__(self, pools: Sequence[Any], axis: str):
        self.pools, self.axis, self.spec = tuple(pools), axis, pools[0].spec

    def send(self, state: Array, actions: Array) -> Array:
        """This device's pool starts stepping on ``actions [M N / D]``."""
        return jax.lax.switch(jax.lax.axis_index(self.axis), [p.send for p in self.pools], state, actions)

    def recv(self, state: Array) -> tuple[Array, E.EnvStep]:
        """This device's pool completes its step: ``(state, EnvStep [M N / D])``."""
        return jax.lax.switch(jax.lax.axis_index(self.axis), [p.recv for p in self.pools], state)


def shard_chunk(chunk, mesh: Mesh):
    """``chunk(handles, states [M/D]) -> (handles, states, log [M/D])`` of one device, run on every
    device of the 1-D ``mesh`` (``shard_map``): handles ``[D, ...]`` per task, states and log ``[M, ...]``."""
    spec = P(mesh.axis_names[0])

    def local(handles, states):
        handles, states, log = chunk(tuple(h[0] for h in handles), states)
        return tuple(h[None] for h in handles), states, log

    # Every output varies over the devices and nothing is communicated, so the
    # varying-axis check (which trips on the learner's lax.cond with constant branches) has nothing to find.
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec, spec), check_vma=False)


def _split_members(x: Array, m: int) -> Array:
    """``[M * N, ...]`` -> ``[M, N, ...]``."""
    return x.reshape((m, x.shape[0] // m) + x.shape[1:])


def member_order(obs: Array, m: int) -> Array:
    """The pools' observations ``[tasks, M * N, ...]`` -> per member ``[M, tasks, N, ...]``."""
    return jnp.swapaxes(jax.vmap(lambda o: _split_members(o, m))(obs), 0, 1)


def pool_order(obs: Array) -> Array:
    """Members' observations ``[M, tasks, N, ...]`` -> the pools' order ``[tasks, M * N, ...]``
    (the inverse of :func:`member_order`)."""
    m, tasks, n = obs.shape[:3]
    return jnp.swapaxes(obs, 0, 1).reshape((tasks, m * n) + obs.shape[3:])


def sweep_iteration(loop: T.Loop, pools: T.Loop, m: int, carry: tuple) -> tuple[tuple, T.ChunkLog]:
    """One iteration of ``m`` members (see module docstring); ``carry`` is ``(handles, states [M])``.

    ``loop`` is one member's loop (``N`` envs per task, used under ``vmap``);
    ``pools`` the same loop over the shared pools (``M * N`` envs), used
    for the env step only. Returns the new carry and the ``[M]`` logs.
    """
    handles, states = carry
    states, acted = jax.vmap(functools.partial(T.choose_all, loop))(states)
    lead = jax.tree.map(lambda x: x[0], states)  # every member acts on the same task (validate_sweep_config)
    tasks = T.acting_tasks(loop, lead)
    flat = [acted.sent[:, j].reshape(-1) for j in range(len(tasks))]
    for task, actions in zip(tasks, flat):
        handles = T.env_send(pools, handles, task, actions)
    handles, count = jax.lax.optimization_barrier((handles, states.replay.count))
    states = states.replace(replay=states.replay.replace(count=count))
    states, stats = jax.vmap(functools.partial(T.update_all, loop))(states, acted)
    learner, handles = jax.lax.optimization_barrier((states.learner, handles))
    states = states.replace(learner=learner)
    steps = []
    for task, actions in zip(tasks, flat):
        handles, out = T.env_recv(pools, handles, task, actions)
        steps.append(jax.tree.map(lambda x: _split_members(x, m), out))
    states, outcome = jax.vmap(functools.partial(T.absorb_all, loop))(states, acted, steps)
    states, log = jax.vmap(functools.partial(T.finish, loop))(states, acted, stats, outcome)
    return (handles, states), log


def sweep_chunk(loop: T.Loop, pools: T.Loop, m: int, handles: tuple, states: T.TrainState):
    """``chunk_iters`` iterations in one ``lax.scan``. Returns ``(handles, states, log)`` with
    ``[M, K, ...]`` log leaves."""
    (handles, states), log = jax.lax.scan(lambda c, _: sweep_iteration(loop, pools, m, c), (handles, states), None,
                                          length=loop.config.chunk_iters)
    return handles, states, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), log)


@dataclasses.dataclass
class MemberRecord:
    """One member's host-side bookkeeping (its :class:`~mtspark_jax.rl.runner.HostState` and divergence)."""

    host: RN.HostState
    diverged: bool = False
    last_td_loss: float = float("nan")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "MemberRecord":
        return cls(RN.HostState.from_json(d["host"]), bool(d["diverged"]), float(d["last_td_loss"]))


class AtariSweep:
    """One setting's seeds trained together on shared pools (see module docstring).

    Args:
      config: the setting (Atari backend; :func:`validate_sweep_config`).
      seeds: one member per seed.
      conv_impl: ``xla`` or ``slices`` (:func:`mtspark_jax.nn.ops.slice_conv`);
        default :func:`mtspark_jax.nn.ops.default_conv_impl`.
      mesh: a 1-D mesh of this process's devices, whose size divides the
        member count (see module docstring); None: every member on the first device.
    """

    def __init__(self, config: T.TrainConfig, seeds: Sequence[int], conv_impl: str | None = None,
                 mesh: Mesh | None = None):
        validate_sweep_config(config)
        if not seeds:
            raise ValueError("an Atari sweep needs at least one seed")
        if mesh is not None and any(dev.process_index != jax.process_index() for dev in mesh.devices.flat):
            raise ValueError("a sharded Atari sweep runs in one process: its mesh must hold this process's devices "
                             "only (the pools live on this host)")
        self.config, self.seeds, self.m = config, [int(s) for s in seeds], len(seeds)
        self.mesh = mesh
        d = 1 if mesh is None else mesh.devices.size
        self.members = member_configs(config, self.seeds)
        self.games = RN.canonical_games(config)
        n = config.num_envs
        # groups[i]: device i's pools, one per task ([M N / D] envs each).
        pool_configs = device_pool_configs(config, self.m, d)
        self.envs_per_device = pool_configs[0].num_envs
        self.groups = [RN.make_task_envs(dc, self.games, is_eval=False) for dc in pool_configs]
        self.loop = T.make_loop(config, [SpecOnly(p.spec._replace(num_envs=n)) for p in self.groups[0]])
        impl = conv_impl or default_conv_impl()
        member_init = functools.partial(T.init_state, self.loop)
        none = tuple(None for _ in self.games)
        self._init = jit_once(jax.vmap(lambda key, obs: member_init(key, none, obs)))
        if mesh is None:
            chunk = functools.partial(sweep_chunk, self.loop, self.loop._replace(envs=tuple(self.groups[0])), self.m)
        else:
            envs = tuple(DevicePools(task_pools, mesh.axis_names[0]) for task_pools in zip(*self.groups))
            chunk = shard_chunk(functools.partial(sweep_chunk, self.loop, self.loop._replace(envs=envs), self.m // d),
                                mesh)
        self._chunk = jax.jit(with_conv_impl(chunk, impl), donate_argnums=(0, 1))

    @property
    def net(self):
        return self.loop.net

    def init(self) -> tuple[tuple, T.TrainState]:
        """Resets the pools; returns ``(handles, states [M])``."""
        handles, obs = zip(*[T.reset_envs(g) for g in self.groups])
        obs = jnp.concatenate(obs, axis=1)  # [tasks, M * N, ...], the unsharded pools' env order
        return self._place(handles, T.distinct_buffers(self._init(self._keys(), member_order(obs, self.m))))

    def _restore_envs(self, logs: Sequence[np.ndarray], flat_obs: Array) -> list[tuple]:
        """Every device's pools replayed from the action logs ``[steps, M * N]`` per task; their handles."""
        k = self.envs_per_device
        return [restore_envs(g, [a[:, i * k:(i + 1) * k] for a in logs], flat_obs[:, i * k:(i + 1) * k])
                for i, g in enumerate(self.groups)]

    def _place(self, handles: Sequence[tuple], states: T.TrainState) -> tuple[tuple, T.TrainState]:
        """Committed placement, so that fresh and restored states share one compiled chunk.

        ``handles``: one tuple (per task) per device. Unsharded: everything on
        the first device. Sharded: handles ``[D, ...]`` per task and the
        states' member axis split over the mesh.
        """
        if self.mesh is None:
            return jax.device_put((handles[0], states), jax.devices()[0])
        stacked = tuple(np.stack([np.asarray(h) for h in task]) for task in zip(*handles))
        return sh.shard_leading(stacked, self.mesh), sh.shard_leading(states, self.mesh)

    def _keys(self) -> Array:
        return jnp.stack([jax.random.PRNGKey(s) for s in self.seeds])

    def template(self) -> T.TrainState:
        """A state of the right shapes, for restoring a checkpoint."""
        shape = (len(self.games), self.m * self.config.num_envs) + self.groups[0][0].spec.obs_shape[1:]
        return self._init(self._keys(), member_order(jnp.zeros(shape, jnp.uint8), self.m))

    def run_chunk(self, handles: tuple, states: T.TrainState):
        """``(handles, states, log)`` after one chunk (the inputs are donated)."""
        return self._chunk(handles, states)

    def close(self) -> None:
        for p in (p for g in self.groups for p in g):
            if hasattr(p, "close"):
                p.close()

    # -- the host loop ---------------------------------------------------------

    def train(self, workdir: str, resume: bool = True, progress: bool = True, time_limit_s: float | None = None,
              max_chunks: int | None = None) -> dict[str, Any]:
        """Trains every member to ``total_steps`` (or the time limit), with per-member logs,
        evaluations and checkpoints under ``workdir``. Returns ``{"members": [...], "wall_s", ...}``;
        per member: ``seed``, ``env_seed``, ``diverged``, ``return`` (final greedy evaluation, mean
        over games), ``eval/<game>``, ``train/<game>`` (last <= 20 training episodes),
        ``episodes``, ``final_td_loss``. ``finished`` says whether training reached its end.

        Raises :class:`mtspark_jax.workdir.WorkdirLocked` when another process
        writes ``workdir``, :class:`mtspark_jax.workdir.WriteFailed` when a
        checkpoint or a log cannot be written."""
        with hold(workdir):
            run, handles, states = self._open(workdir, resume)
            try:
                states, time_up = self._run_chunks(run, handles, states, progress, time_limit_s, max_chunks)
                return self._finish(run, states, time_up)
            except BaseException:
                run.out.abandon()
                raise

    def _open(self, workdir: str, resume: bool) -> tuple[SweepRun, tuple, T.TrainState]:
        """Writes every member's ``config.json``, restores the setting's newest checkpoint (or starts
        afresh) and opens the members' logs; returns ``(run, handles, states)``."""
        c, m = self.config, self.m
        dirs = [os.path.join(workdir, f"member_{k:02d}") for k in range(m)]
        ckpt = C.Checkpointer(os.path.join(workdir, "checkpoints"), c.keep_checkpoints)
        with guard_writes(f"the members' config.json in {workdir}", ckpt.newest_on_disk):
            for d, mc in zip(dirs, self.members):
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "config.json"), "w") as f:
                    json.dump(dataclasses.asdict(mc), f, indent=1)
        restored = ckpt.restore_latest(self.template()) if resume and ckpt.steps() else None
        if restored is not None:
            step0, states, logs, meta = restored
            handles, states = self._place(self._restore_envs(logs, pool_order(states.obs)), states)
            actions = ActionLog(len(self.games), m * c.num_envs, logs)
            records = [MemberRecord.from_json(d) for d in meta["members"]]
            print(f"resumed the sweep from its checkpoint at step {step0}")
        else:
            handles, states = self.init()
            actions = ActionLog(len(self.games), m * c.num_envs)
            records = [MemberRecord(RN.HostState.fresh(len(self.games))) for _ in range(m)]
        with guard_writes(f"the members' logs in {workdir}", ckpt.newest_on_disk):
            loggers = [MetricsLogger(d, tensorboard=False, resume_step=step0 if restored is not None else -1)
                       for d in dirs]
        evaluators = [make_evaluator(self.net, functools.partial(RN.make_task_envs, mc, self.games, True),
                                     c.eval_max_steps, c.eval_epsilon) for mc in self.members]
        return SweepRun(RN.RunOutputs(workdir, ckpt, loggers, actions), dirs, evaluators, records), handles, states

    def _run_eval(self, run: SweepRun, states: T.TrainState, step: int) -> None:
        """Every member's greedy evaluation at ``step``, logged and recorded."""
        with run.out.logs_guard():
            for k, (mc, rec) in enumerate(zip(self.members, run.records)):
                # On one device: the evaluator's pools step in a one-device program.
                member = jax.device_put(jax.tree.map(lambda x: x[k], states), jax.devices()[0])
                key = jax.random.fold_in(jax.random.PRNGKey(mc.seed + 1), rec.host.evals)
                means, distinct = RN.evaluate_and_log(run.evaluators[k], member, key, run.out.loggers[k],
                                                      self.games, step, rec.host.switches)
                rec.host.evals += 1
                rec.host.last_eval, rec.host.last_eval_step = [float(x) for x in means], step
                rec.host.last_eval_distinct = [int(x) for x in distinct]

    def _save(self, run: SweepRun, states: T.TrainState, step: int) -> None:
        for rec in run.records:
            rec.host.last_ckpt_step = step
        run.out.checkpoint(step, states, {"members": [dataclasses.asdict(r) for r in run.records],
                                          "config": dataclasses.asdict(self.config), "seeds": self.seeds})

    def _record_chunk(self, run: SweepRun, states: T.TrainState, log: T.ChunkLog, dt: float) -> float:
        """The host side of one chunk (``log``: numpy ``[M, K, ...]``): action logs, every member's
        episodes, losses and divergence, an evaluation and a checkpoint when due. Returns agent
        steps per second (all members)."""
        c, m, n, games = self.config, self.m, self.config.num_envs, self.games
        host0 = run.records[0].host
        step = int(log.global_step[0, -1])
        acted = log.acted[0]  # [K, tasks]: the same for every member
        for i in range(len(games)):
            run.out.actions.append(i, log.actions[:, acted[:, i], i].transpose(1, 0, 2).reshape(-1, m * n))
        sps = int(acted.sum()) * n * m / max(dt, 1e-9)
        wall = run.wall_s()
        chunk_bad, chunk_loss = chunk_td_health(log.td_loss, log.num_updates)
        with run.out.logs_guard():
            for k, rec in enumerate(run.records):
                member_log = jax.tree.map(lambda x: x[k], log)
                RN.log_episodes(run.out.loggers[k], rec.host, member_log, games)
                RN.log_chunk(run.out.loggers[k], member_log, step, sps / m, wall)
                rec.diverged |= bool(chunk_bad[k])
                if (member_log.num_updates > 0).any():
                    rec.last_td_loss = float(chunk_loss[k])
                rec.host.chunks += 1
                rec.host.wall_s = wall
                rec.host.switches = int(member_log.switches[-1])
        if step - host0.last_eval_step >= c.eval_every:
            self._run_eval(run, states, step)
        if step - host0.last_ckpt_step >= c.checkpoint_every:
            self._save(run, states, step)
        run.out.flush()
        return sps

    def _run_chunks(self, run: SweepRun, handles: tuple, states: T.TrainState, progress: bool,
                    time_limit_s: float | None, max_chunks: int | None) -> tuple[T.TrainState, bool]:
        """Chunks until ``total_steps``, ``max_chunks`` of this call or the time limit; returns
        ``(states, time up)``."""
        c, m = self.config, self.m
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=c.total_steps, initial=int(states.global_step[0]), unit="step", dynamic_ncols=True)
        run.t_start, run.wall0 = time.time(), run.records[0].host.wall_s
        chunks_here, time_up = 0, False
        while int(states.global_step[0]) < c.total_steps and (max_chunks is None or chunks_here < max_chunks):
            t0 = time.time()
            handles, states, log = self.run_chunk(handles, states)
            log = jax.tree.map(np.asarray, log)
            sps = self._record_chunk(run, states, log, time.time() - t0)
            chunks_here += 1
            if bar is not None:
                bar.update(int(log.global_step[0, -1]) - bar.n)
                bar.set_postfix_str(f"SPS {sps:.0f} ({sps / m:.0f} per member)")
            if time_limit_s is not None and run.records[0].host.wall_s >= time_limit_s:
                time_up = True
                break
        if bar is not None:
            bar.close()
        return states, time_up

    def _finish(self, run: SweepRun, states: T.TrainState, time_up: bool) -> dict[str, Any]:
        """The final evaluation (when training ended), the last checkpoint, every member's row and
        curves; closes the logs and the checkpointer."""
        c, games, host0 = self.config, self.games, run.records[0].host
        step = int(states.global_step[0])
        finished = step >= c.total_steps
        if (finished or time_up) and (host0.last_eval_step != step or host0.last_eval is None):
            self._run_eval(run, states, step)
        if host0.last_ckpt_step != step:
            self._save(run, states, step)
        finite = np.asarray(jax.vmap(all_finite)(states.learner.variables["params"]))
        rows = []
        for k, (mc, rec) in enumerate(zip(self.members, run.records)):
            rec.diverged |= not bool(finite[k])
            evals = rec.host.last_eval if (finished or time_up) else None
            row = dict(seed=mc.seed, env_seed=mc.env_seed, diverged=rec.diverged)
            row["return"] = float("nan") if rec.diverged or evals is None else float(np.mean(evals))
            for i, g in enumerate(games):
                row[f"eval/{g}"] = float("nan") if evals is None else evals[i]
                r = rec.host.recent_returns[i]
                row[f"train/{g}"] = float(np.mean(r)) if r else float("nan")
            row["episodes"] = int(sum(rec.host.episodes))
            row["final_td_loss"] = rec.last_td_loss
            rows.append(row)
        run.out.close_logs()
        with run.out.logs_guard():
            for d in run.dirs:
                RN.plot_learning_curves(d, games)
        run.out.ckpt.close()
        return {"members": rows, "wall_s": host0.wall_s, "finished": finished, "time_up": time_up,
                "global_step": step, "state": states}


@dataclasses.dataclass
class SweepRun:
    """What :meth:`AtariSweep.train` threads between chunks: the outputs (checkpoints, action logs,
    one logger per member), the members' folders, evaluators and records, and the clock."""

    out: RN.RunOutputs
    dirs: list[str]
    evaluators: list[Any]
    records: list[MemberRecord]
    wall0: float = 0.0
    t_start: float = 0.0

    def wall_s(self) -> float:
        """Training wall time over resumes."""
        return self.wall0 + time.time() - self.t_start


def run_atari_sweep(config: T.TrainConfig, members: Members, workdir: str, progress: bool = True,
                    time_limit_s: float | None = None, max_chunks: int | None = None,
                    mesh_fn=None) -> dict[str, Any]:
    """Every setting of ``members`` (TrainConfig fields) in turn, its seeds in one :class:`AtariSweep`,
    under ``workdir/setting_<k>``. A setting whose run finished is read back, not rerun, so a
    stopped sweep resumes where it was. ``time_limit_s`` applies per setting. ``mesh_fn(count)``
    (e.g. :func:`mtspark_jax.sharding.largest_divisor_mesh`) shards a setting's seeds; None: one device.
    Raises :class:`mtspark_jax.workdir.WorkdirLocked` when another process writes ``workdir``."""
    with hold(workdir):  # the settings lock their own folders too (AtariSweep.train)
        rows, t0, done = [], time.time(), True
        for k, setting in enumerate(members.settings):
            cfg = setting_config(config, setting)
            seeds = [int(s) for s in members.seed[members.setting == k]]
            sub = os.path.join(workdir, f"setting_{k:02d}")
            finished_file = os.path.join(sub, "members.json")
            if os.path.exists(finished_file):
                with open(finished_file) as f:
                    res = {"members": json.load(f)}
            else:
                mesh = mesh_fn(len(seeds)) if mesh_fn else None
                if mesh is not None:
                    print(f"setting {k}: {len(seeds)} members on {mesh.devices.size} devices")
                sweep = AtariSweep(cfg, seeds, mesh=mesh)
                try:
                    res = sweep.train(sub, progress=progress, time_limit_s=time_limit_s, max_chunks=max_chunks)
                finally:
                    sweep.close()
                if res["finished"] or res["time_up"]:
                    with open(finished_file, "w") as f:
                        json.dump(res["members"], f, indent=1)
                else:
                    done = False
            rows += [{"setting": k, **r} for r in res["members"]]
            if not done:
                break
        return {"members": rows, "wall_s": time.time() - t0, "settings": members.settings, "complete": done}

