"""Host-side driver: chunks of jitted training, logging, evaluation, checkpoints, plots.

``train_and_evaluate(config, workdir)`` is what ``experiments/train_atari.py``
calls. Between two calls of the jitted chunk the host:

* appends the chunk's actions to the per-task action logs (for exact resume);
* writes TensorBoard scalars (tensorboardX) and ``metrics.csv``
  (``step,name,value``) with CleanRL names: ``charts/episodic_return``
  (+ ``/<game>``), ``charts/episodic_length``, ``charts/SPS``,
  ``charts/wall_s`` (training wall time so far, evaluations included),
  ``charts/epsilon``, ``losses/td_loss``, ``losses/q_values``,
  ``charts/active_task``, ``eval/return/<game>``,
  ``eval/distinct_episodes/<game>`` (distinct (return, length) pairs among
  the evaluation's episodes), and at every evaluation the
  spike rate per layer and estimated energy per decision on each task's
  current frames (``eval/spike_rate/<layer>/<game>``,
  ``eval/energy/snn_uJ/<game>`` ...; :mod:`mtspark_jax.nn.energy`);
* evaluates every task on its own pools (fresh for every evaluation, so an
  evaluation depends only on the parameters, seed and step) every ``eval_every`` agent steps and
  after every task switch (``eval_on_switch``), appending to ``eval.csv``
  (``step,switches,active_task,task,game,mean_return,returns``) so forgetting
  can be read off. Switches happen inside the jitted chunk, so the evaluation
  runs at the chunk boundary that follows a switch; keep ``chunk_iters * N``
  well below the switch interval (two switches in one chunk get one
  evaluation; the ``switches`` column shows it);
* checkpoints every ``checkpoint_every`` agent steps and at the end. A
  resumed run drops what the interrupted run logged past the restored step
  (CSV rows, TensorBoard events), so its files equal an uninterrupted run's
  apart from wall-clock columns (``charts/SPS``, ``charts/wall_s``).

At the end it evaluates the uniform random policy the same way
(``eval_random``: the level a run must clear to have learned anything), writes
``learning_curves.png`` and returns a :class:`RunSummary`.
Training stops at the first chunk boundary with ``global_step >= total_steps``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax import checkpoint as C
from mtspark_jax.metrics_log import MetricsLogger
from mtspark_jax.nn import energy
from mtspark_jax.nn.networks import NUM_ATARI_ACTIONS
from mtspark_jax.rl import envs as E
from mtspark_jax.rl import training as T
from mtspark_jax.rl.action_log import ActionLog, restore_envs
from mtspark_jax.rl.evaluation import make_evaluator
from mtspark_jax.workdir import close_after_failure, guard_writes, hold

Array = jax.Array


def atari_config(c: T.TrainConfig) -> E.AtariConfig:
    """Training pools' settings from the run config."""
    return E.AtariConfig(num_envs=c.num_envs, seed=c.training_env_seed, noop_max=c.noop_max, reward_clip=c.reward_clip,
                         episodic_life=c.episodic_life, max_episode_steps=c.max_episode_steps,
                         full_action_space=c.full_action_space)


def eval_atari_config(c: T.TrainConfig) -> E.AtariConfig:
    """Evaluation pools: one env per episode, never episodic-life, other seeds."""
    return E.AtariConfig(num_envs=c.eval_episodes, seed=c.seed + 7919, noop_max=c.noop_max,
                         max_episode_steps=c.max_episode_steps, full_action_space=c.full_action_space)


def canonical_games(c: T.TrainConfig) -> list[str]:
    """Task names: ``c.games`` in the backend's canonical spelling, ``<game>@<map>`` for a task
    with an action map (``c.action_perms``). Unknown names and bad maps raise ValueError."""
    if c.backend == "minatar":
        from mtspark_jax.rl import minatar

        games, num_actions = [minatar.canonical_game(g) for g in c.games], minatar.NUM_ACTIONS
    else:
        games, num_actions = [E.canonical_game(g) for g in c.games], NUM_ATARI_ACTIONS
    perms = c.action_perms or (E.IDENTITY_PERM,) * len(games)
    return [E.task_name(g, p, num_actions) for g, p in zip(games, perms)]


def frame_size(c: T.TrainConfig) -> int:
    """Side of the backend's square frames (Atari 84, MinAtar 10)."""
    return 10 if c.backend == "minatar" else 84


def check_trunk_fits(c: T.TrainConfig) -> None:
    """The conv trunk (VALID padding) must leave at least 1x1 of the backend's frames."""
    size = frame_size(c)
    for f, k, s in T.parse_convs(c.convs):
        if size < k:
            raise ValueError(f"convs {c.convs!r} do not fit {c.backend} frames ({frame_size(c)}x{frame_size(c)}): "
                             f"a {k}x{k} kernel meets a {size}x{size} map; MinAtar uses e.g. '16:3:1'")
        size = (size - k) // s + 1


def make_task_envs(c: T.TrainConfig, games: Sequence[str], is_eval: bool) -> list:
    """The backend's training (or evaluation) envs, one per task (``games``: :func:`canonical_games`).

    Tasks with an action map are wrapped in :class:`mtspark_jax.rl.envs.PermutedActions`.

    Evaluation envs hold ``eval_episodes`` envs (one episode each) and are
    seeded ``seed + 7919`` so they never replay training episodes.
    """
    games = [E.base_game(g) for g in games]
    if c.backend == "minatar":
        from mtspark_jax.rl import minatar

        if is_eval:
            envs = minatar.make_minatar_envs(games, c.eval_episodes, c.seed + 7919)
        else:
            envs = minatar.make_minatar_envs(games, c.num_envs, c.training_env_seed)
    else:
        envs = E.make_atari_envs(games, eval_atari_config(c) if is_eval else atari_config(c))
    return E.with_action_perms(envs, c.action_perms)


def close_envs(envs: Sequence[Any]) -> None:
    """Closes the envs that hold resources (EnvPool pools)."""
    for env in envs:
        if hasattr(env, "close"):
            env.close()


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and checks it is writable; ValueError otherwise."""
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as f:  # unlinked at once: nothing left, no name to race on
            f.write(b"ok")
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None
    return path


def validate_run(c: T.TrainConfig, workdir: str) -> tuple[list[str], str]:
    """All checks that must pass before any work: config, game names, workdir."""
    T.validate_config(c)
    check_trunk_fits(c)
    games = canonical_games(c)
    if len(set(games)) != len(games):
        raise ValueError(f"games must be distinct (or differ in action_perms), got {list(c.games)}")
    return games, check_workdir(workdir)


def load_config(workdir: str) -> T.TrainConfig:
    """The :class:`TrainConfig` a run wrote to ``workdir/config.json``; FileNotFoundError if none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} holds no config.json: not a train_atari.py workdir")
    with open(path) as f:
        return T.config_from_dict(json.load(f))


def state_template(trainer: T.Trainer, key: Array) -> T.TrainState:
    """A state of ``trainer``'s shapes without envs, for a checkpoint to be restored onto."""
    m = trainer.num_tasks
    return trainer.init(key, (None,) * m, jnp.zeros((m,) + trainer.spec.obs_shape, jnp.uint8))


def restore_online_variables(config: T.TrainConfig, workdir: str) -> tuple[Any, Any, int]:
    """``(net, variables, step)``: the online network of the newest usable checkpoint in ``workdir``.

    The training state is restored as a resume restores it (onto a template
    built from ``config``), without replaying the environments.
    Raises FileNotFoundError when there is no checkpoint.
    """
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):  # checked first: the Checkpointer would create it
        raise FileNotFoundError(f"no checkpoint under {directory}")
    ckpt = C.Checkpointer(directory, config.keep_checkpoints)
    envs = []
    try:
        if not ckpt.steps():
            raise FileNotFoundError(f"no checkpoint under {directory}")
        envs = make_task_envs(config, canonical_games(config), is_eval=False)
        trainer = T.jitted(T.make_train(config, envs))
        step, state, _, _ = ckpt.restore_latest(state_template(trainer, jax.random.PRNGKey(config.seed)))
    finally:
        ckpt.close()
        close_envs(envs)
    return trainer.net, state.learner.variables, step


def plot_learning_curves(workdir: str, games: Sequence[str]) -> str:
    """PNG of per-task training returns (episodes) and evaluation returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = {g: [] for g in games}
    evals = {g: [] for g in games}
    wall = []
    with open(os.path.join(workdir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            if row["name"] == "charts/wall_s":
                wall.append((int(row["step"]), float(row["value"])))
            for g in games:
                if row["name"] == f"charts/episodic_return/{g}":
                    train[g].append((int(row["step"]), float(row["value"])))
    with open(os.path.join(workdir, "eval.csv")) as f:
        for row in csv.DictReader(f):
            if row["game"] in evals:
                evals[row["game"]].append((int(row["step"]), float(row["mean_return"])))
    # Second row: the same curves against training wall time (steps mapped through charts/wall_s).
    xs = [("agent steps (all tasks)", lambda s: s)]
    if len(wall) > 1:
        ws, wv = map(np.asarray, zip(*sorted(wall)))
        xs.append(("training wall time (min)", lambda s: np.interp(s, ws, wv) / 60.0))
    fig, axes = plt.subplots(len(xs), len(games), figsize=(4.5 * len(games), 3.5 * len(xs)), squeeze=False)
    for row_axes, (xlabel, to_x) in zip(axes, xs):
        for ax, g in zip(row_axes, games):
            if train[g]:
                s, v = zip(*sorted(train[g]))
                ax.plot(to_x(np.asarray(s)), v, ".", alpha=0.4, label="train episodes")
            if evals[g]:
                s, v = zip(*sorted(evals[g]))
                ax.plot(to_x(np.asarray(s)), v, "o-", label="eval (mean)")
            ax.set_title(g)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("episode return (raw)")
            if ax.get_legend_handles_labels()[0]:  # a game with no episode and no evaluation yet has none
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "learning_curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclasses.dataclass
class HostState:
    """The host loop's bookkeeping between chunks; saved as JSON with every checkpoint.

    Attributes:
      recent_returns: per task, the raw returns of its last (at most 20)
        training episodes.
      episodes: per task, training episodes ended.
      evals: evaluations run (each draws its key from this count).
      last_eval_step, last_ckpt_step: agent step of the latest evaluation / checkpoint.
      switches: task switches so far.
      chunks: chunks run, over resumes.
      wall_s: training wall time, over resumes (the time limit counts it).
      last_eval: every task's mean return at the latest evaluation.
      last_eval_distinct: every task's number of distinct episodes at the latest evaluation.
      last_energy: per game, spike rates and energy at the latest evaluation.
    """

    recent_returns: list[list[float]]
    episodes: list[int]
    evals: int = 0
    last_eval_step: int = 0
    last_ckpt_step: int = 0
    switches: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    last_eval: list[float] | None = None
    last_eval_distinct: list[int] | None = None
    last_energy: dict[str, dict[str, float]] | None = None

    @classmethod
    def fresh(cls, num_tasks: int) -> "HostState":
        return cls(recent_returns=[[] for _ in range(num_tasks)], episodes=[0] * num_tasks)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "HostState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What :func:`train_and_evaluate` returns.

    Attributes:
      games: the task names.
      global_step: agent steps trained, over resumes.
      finished: ``global_step`` reached ``total_steps``.
      time_up: the time limit ended training.
      eval_mean_return: per task, the final greedy evaluation's mean return
        (None when the run neither finished nor ran out of time).
      eval_distinct_episodes: per task, the distinct (return, length) pairs
        among that evaluation's episodes (None with ``eval_mean_return``).
      random_mean_return: per task, the uniform random policy's, same protocol
        (None unless ``eval_random`` and the run ended).
      train_recent_return: per task, mean of the last <= 20 training returns (nan: none).
      episodes: per task, training episodes ended.
      switches: task switches.
      last_sps: agent steps per second of the last chunk.
      wall_s: wall time over resumes, final evaluations included.
      plot: path of ``learning_curves.png``.
      energy: per game, spike rates and energy at the last evaluation.
      state: the final :class:`mtspark_jax.rl.training.TrainState`.
    """

    games: list[str]
    global_step: int
    finished: bool
    time_up: bool
    eval_mean_return: list[float] | None
    eval_distinct_episodes: list[int] | None
    random_mean_return: list[float] | None
    train_recent_return: list[float]
    episodes: list[int]
    switches: int
    last_sps: float
    wall_s: float
    plot: str
    energy: dict[str, dict[str, float]] | None
    state: Any


def log_episodes(logger: MetricsLogger, host: HostState, log: T.ChunkLog, games: Sequence[str]) -> None:
    """Every episode that ended in the chunk: its return and length (``charts/episodic_*``)."""
    for k, t, e in zip(*np.nonzero(log.ended)):
        s = int(log.global_step[k])
        r, ln = float(log.ep_return[k, t, e]), int(log.ep_length[k, t, e])
        logger.scalar("charts/episodic_return", r, s)
        logger.scalar(f"charts/episodic_return/{games[t]}", r, s)
        logger.scalar("charts/episodic_length", ln, s)
        host.recent_returns[t] = (host.recent_returns[t] + [r])[-20:]
        host.episodes[t] += 1


def log_chunk(logger: MetricsLogger, log: T.ChunkLog, step: int, sps: float, wall_s: float) -> None:
    """The chunk's losses, speed, wall time, epsilon and active task at ``step``."""
    if np.isfinite(log.td_loss).any():
        logger.scalar("losses/td_loss", float(np.nanmean(log.td_loss)), step)
        logger.scalar("losses/q_values", float(np.nanmean(log.q_mean)), step)
    logger.scalar("charts/SPS", sps, step)
    logger.scalar("charts/wall_s", wall_s, step)
    logger.scalar("charts/epsilon", float(log.epsilon[-1]), step)
    logger.scalar("charts/active_task", int(log.active[-1]), step)


def energy_on_frames(forward: Callable, net: Any, state: T.TrainState, games: Sequence[str],
                     logger: MetricsLogger, step: int) -> dict[str, dict[str, float]]:
    """Spike rate per layer and energy per decision on every task's current frames
    (``eval/spike_rate/<layer>/<game>``, ``eval/energy/<name>/<game>``; :mod:`mtspark_jax.nn.energy`)."""
    result = {}
    for i, g in enumerate(games):
        obs = state.obs[i]
        out = forward(state.learner.variables, obs, jnp.full((obs.shape[0],), i, jnp.int32))
        result[g] = energy.summarize(energy.estimate_energy(out, net, obs.shape))
        for k, v in result[g].items():
            logger.scalar(f"eval/{k}/{g}", v, step)
    return result


def evaluate_and_log(evaluate: Callable, state: T.TrainState, key: Array, logger: MetricsLogger,
                     games: Sequence[str], step: int, switches: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy evaluation of every task (``eval/return/<game>``, ``eval/distinct_episodes/<game>``,
    a row per task in ``eval.csv``); returns the ``[M]`` mean returns and ``[M]`` distinct episodes."""
    res = evaluate(state.learner.variables, key)
    means, distinct = res.mean_returns(), res.distinct_episodes()
    active = int(state.schedule.active)
    for i, g in enumerate(games):
        logger.scalar(f"eval/return/{g}", means[i], step)
        logger.scalar(f"eval/distinct_episodes/{g}", int(distinct[i]), step)
        logger.eval_row(step, switches, active, i, g, res.returns[i])
    return means, distinct


def progress_text(host: HostState, games: Sequence[str], sps: float, active: int) -> str:
    recent = " ".join(f"{g}:{np.mean(host.recent_returns[i]):.1f}" if host.recent_returns[i] else f"{g}:-"
                      for i, g in enumerate(games))
    return f"SPS {sps:.0f} task {games[active]} ret {recent}"


@dataclasses.dataclass
class RunOutputs:
    """What a host loop writes into its workdir: checkpoints (with the action logs) and run logs.

    Shared by a run (:func:`train_and_evaluate`, one logger) and an Atari
    sweep (:class:`mtspark_jax.rl.atari_sweep.AtariSweep`, one logger per member).
    """

    workdir: str
    ckpt: C.Checkpointer
    loggers: list[MetricsLogger]
    actions: ActionLog

    def logs_guard(self):
        """Context: a failed write of the logs becomes one line (:func:`mtspark_jax.workdir.guard_writes`)."""
        return guard_writes(f"the logs in {self.workdir} (metrics.csv, eval.csv)", self.ckpt.newest_on_disk)

    def flush(self) -> None:
        with self.logs_guard():
            for lg in self.loggers:
                lg.flush()

    def checkpoint(self, step: int, state: Any, meta: dict) -> None:
        """Flushes the logs, then checkpoints ``state`` and the action logs at ``step`` (logs first: a
        resume keeps only the rows up to its checkpoint, so every row it keeps must be whole on disk)."""
        self.flush()
        self.ckpt.save(step, state, self.actions.arrays(), meta)

    def close_logs(self) -> None:
        with self.logs_guard():
            for lg in self.loggers:
                lg.close()

    def abandon(self, *more: Callable[[], None]) -> None:
        """Closes the logs, the checkpointer and ``more`` after a failure (best effort)."""
        close_after_failure(*(lg.close for lg in self.loggers), self.ckpt.close, *more)


@dataclasses.dataclass
class RunParts:
    """What the host loop of one run threads between chunks (:func:`train_and_evaluate`'s steps).

    Attributes:
      config, games: the run.
      envs: the training envs, one per task.
      trainer: the jitted :class:`mtspark_jax.rl.training.Trainer`.
      out: checkpoints, action log and the logger (``metrics.csv``, ``eval.csv``, TensorBoard).
      evaluate: greedy evaluation on fresh pools (:func:`mtspark_jax.rl.evaluation.make_evaluator`).
      forward: jitted ``net.apply(variables, obs, task, train=False)``, for the energy estimate.
      host: the bookkeeping saved with every checkpoint.
      wall0: training wall time of earlier calls (a resumed run); t_start: this call's start.
    """

    config: T.TrainConfig
    games: list[str]
    envs: list
    trainer: T.Trainer
    out: RunOutputs
    evaluate: Callable
    forward: Callable
    host: HostState
    wall0: float = 0.0
    t_start: float = 0.0

    @property
    def logger(self) -> MetricsLogger:
        return self.out.loggers[0]

    def wall_s(self) -> float:
        """Training wall time over resumes."""
        return self.wall0 + time.time() - self.t_start

    def run_eval(self, state: T.TrainState, step: int) -> None:
        """Evaluation and energy at ``step``, recorded in ``host``."""
        c, host = self.config, self.host
        eval_key = jax.random.fold_in(jax.random.PRNGKey(c.seed + 1), host.evals)
        means, distinct = evaluate_and_log(self.evaluate, state, eval_key, self.logger, self.games, step,
                                           host.switches)
        host.evals += 1
        host.last_eval, host.last_eval_step = [float(x) for x in means], step
        host.last_eval_distinct = [int(x) for x in distinct]
        host.last_energy = energy_on_frames(self.forward, self.trainer.net, state, self.games, self.logger, step)

    def save(self, state: T.TrainState, step: int) -> None:
        self.host.last_ckpt_step = step
        self.out.checkpoint(step, state, {"host": dataclasses.asdict(self.host),
                                          "config": dataclasses.asdict(self.config)})


def restore_or_start(trainer: T.Trainer, envs: Sequence[Any], ckpt: C.Checkpointer, key: Array,
                     resume: bool) -> tuple[T.TrainState, ActionLog, HostState, int | None]:
    """``(state, action log, host state, restored step)``: the newest usable checkpoint with its envs
    replayed (``resume`` and one exists), else a fresh state (restored step None)."""
    restored = ckpt.restore_latest(state_template(trainer, key)) if resume and ckpt.steps() else None
    if restored is None:
        state = trainer.init(key, *T.reset_envs(envs))
        return state, ActionLog(trainer.num_tasks, trainer.spec.num_envs), HostState.fresh(trainer.num_tasks), None
    step0, state, logs, meta = restored
    state = state.replace(env_states=restore_envs(envs, logs, state.obs))
    actions = ActionLog(trainer.num_tasks, trainer.spec.num_envs, logs)
    print(f"resumed from checkpoint at step {step0} ({actions.steps()} iterations of env steps replayed)")
    return state, actions, HostState.from_json(meta["host"]), step0


def open_run(config: T.TrainConfig, games: list[str], workdir: str, resume: bool,
             tensorboard: bool) -> tuple[RunParts, T.TrainState]:
    """Builds the run's envs and trainer, writes ``config.json``, restores or starts the state and
    opens the logs (which drop what an interrupted run logged past the restored step)."""
    c = config
    envs = make_task_envs(c, games, is_eval=False)
    trainer = T.jitted(T.make_train(c, envs))
    key = jax.random.PRNGKey(c.seed)
    ckpt = C.Checkpointer(os.path.join(workdir, "checkpoints"), c.keep_checkpoints)
    with guard_writes(f"{workdir}/config.json", ckpt.newest_on_disk):
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(c), f, indent=1)
    state, actions, host, step0 = restore_or_start(trainer, envs, ckpt, key, resume)
    # Fresh and restored states committed to the same device: one compiled run_chunk serves both (a
    # restored state is committed, a fresh one is not, and jit compiles each placement once).
    state = jax.device_put(state, jax.devices()[0])
    evaluate = make_evaluator(trainer.net, lambda: make_task_envs(c, games, is_eval=True), c.eval_max_steps,
                              c.eval_epsilon, c.eval_noop_max)
    with guard_writes(f"the logs in {workdir}", ckpt.newest_on_disk):
        logger = MetricsLogger(workdir, tensorboard, resume_step=-1 if step0 is None else step0)
    forward = jax.jit(lambda v, o, t: trainer.net.apply(v, o, t, train=False))
    out = RunOutputs(workdir, ckpt, [logger], actions)
    return RunParts(c, games, envs, trainer, out, evaluate, forward, host), state


def record_chunk(run: RunParts, state: T.TrainState, log: T.ChunkLog, dt: float) -> float:
    """The host side of one chunk (``log``: numpy, ``dt``: its seconds): action logs, episodes,
    losses, an evaluation and a checkpoint when due. Returns the chunk's agent steps per second."""
    c, host, n = run.config, run.host, run.trainer.spec.num_envs
    host.chunks += 1
    step = int(log.global_step[-1])
    sps = int(log.acted.sum()) * n / max(dt, 1e-9)
    for i in range(run.trainer.num_tasks):
        run.out.actions.append(i, log.actions[log.acted[:, i], i])
    with run.out.logs_guard():
        log_episodes(run.logger, host, log, run.games)
        host.wall_s = run.wall_s()
        log_chunk(run.logger, log, step, sps, host.wall_s)
        switches = int(log.switches[-1])
        switched, host.switches = switches > host.switches, switches
        if (c.eval_on_switch and switched) or step - host.last_eval_step >= c.eval_every:
            run.run_eval(state, step)
    if step - host.last_ckpt_step >= c.checkpoint_every:
        run.save(state, step)
    run.out.flush()
    return sps


def run_chunks(run: RunParts, state: T.TrainState, progress: bool, time_limit_s: float | None,
               max_chunks: int | None) -> tuple[T.TrainState, float, bool]:
    """Chunks until ``total_steps``, ``max_chunks`` of this call or the time limit;
    returns ``(state, agent steps per second of the last chunk, time up)``."""
    c, host = run.config, run.host
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=c.total_steps, initial=int(state.global_step), unit="step", dynamic_ncols=True)
    chunks_here, sps, time_up = 0, 0.0, False
    run.t_start, run.wall0 = time.time(), host.wall_s
    while int(state.global_step) < c.total_steps and (max_chunks is None or chunks_here < max_chunks):
        t0 = time.time()
        state, log = run.trainer.run_chunk(state)
        log = jax.tree.map(np.asarray, log)
        sps = record_chunk(run, state, log, time.time() - t0)
        chunks_here += 1
        if bar is not None:
            bar.update(int(log.global_step[-1]) - bar.n)
            bar.set_postfix_str(progress_text(host, run.games, sps, int(log.active[-1])))
        if time_limit_s is not None and host.wall_s >= time_limit_s:
            time_up = True
            break
    if bar is not None:
        bar.close()
    return state, sps, time_up


def finish_run(run: RunParts, state: T.TrainState, sps: float, time_up: bool) -> RunSummary:
    """The final evaluation (when the run ended), the last checkpoint, the random policy's returns,
    the plot; closes the run and returns its :class:`RunSummary`."""
    c, host, games = run.config, run.host, run.games
    step = int(state.global_step)
    finished = step >= c.total_steps
    means = distinct = None
    if finished or time_up:
        if host.last_eval_step != step or host.last_eval is None:  # else the last chunk evaluated at this step
            with run.out.logs_guard():
                run.run_eval(state, step)
        means, distinct = host.last_eval, host.last_eval_distinct
    if host.last_ckpt_step != step:
        run.save(state, step)
    random_means = None
    if (finished or time_up) and c.eval_random:
        # The uniform random policy on the same evaluation protocol: the level "learned" must clear.
        rand = make_evaluator(run.trainer.net, lambda: make_task_envs(c, games, is_eval=True), c.eval_max_steps,
                              epsilon=1.0, noop_max=c.eval_noop_max)
        random_means = [float(x) for x in rand(state.learner.variables, jax.random.PRNGKey(c.seed + 2)).mean_returns()]
    run.out.close_logs()
    with run.out.logs_guard():
        png = plot_learning_curves(run.out.workdir, games)
    run.out.ckpt.close()
    close_envs(run.envs)
    return RunSummary(
        games=list(games), global_step=step, finished=finished, time_up=time_up,
        eval_mean_return=means, eval_distinct_episodes=distinct, random_mean_return=random_means,
        train_recent_return=[float(np.mean(r)) if r else float("nan") for r in host.recent_returns],
        episodes=list(host.episodes), switches=host.switches, last_sps=sps,
        wall_s=run.wall_s(), plot=png, energy=host.last_energy, state=state)


def train_and_evaluate(
    config: T.TrainConfig,
    workdir: str,
    resume: bool = True,
    progress: bool = True,
    tensorboard: bool = True,
    time_limit_s: float | None = None,
    max_chunks: int | None = None,
) -> RunSummary:
    """Trains (or resumes) a run in ``workdir``; returns its :class:`RunSummary`.

    Args:
      config: the run.
      workdir: output directory (created); checkpoints in ``workdir/checkpoints``.
      resume: continue from the newest usable checkpoint if there is one.
      progress: tqdm progress bar.
      tensorboard: also write TensorBoard events (``workdir/tb``).
      time_limit_s: stop at the end of the first chunk after this many seconds
        of training wall time (summed over resumes, ``charts/wall_s``), then
        evaluate as at the end of a run; ``None``: no limit.
      max_chunks: stop after this many chunks of this call and checkpoint
        (e.g. a job slot shorter than the run); calling again resumes.

    Raises:
      mtspark_jax.workdir.WorkdirLocked: another process is writing ``workdir``
        (nothing written).
      mtspark_jax.workdir.WriteFailed: a checkpoint or a log could not be
        written (one line naming the checkpoint the same call resumes from).
    """
    games, workdir = validate_run(config, workdir)
    with hold(workdir):
        run, state = open_run(config, games, workdir, resume, tensorboard)
        try:
            state, sps, time_up = run_chunks(run, state, progress, time_limit_s, max_chunks)
            return finish_run(run, state, sps, time_up)
        except BaseException:
            run.out.abandon(lambda: close_envs(run.envs))
            raise
