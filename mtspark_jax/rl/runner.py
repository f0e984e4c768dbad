"""Host-side driver: chunks of jitted training, logging, evaluation, checkpoints, plots.

``train_and_evaluate(config, workdir)`` is what ``experiments/train_atari.py``
calls. Between two calls of the jitted chunk the host:

* appends the chunk's actions to the per-task action logs (for exact resume);
* writes TensorBoard scalars (tensorboardX) and ``metrics.csv``
  (``step,name,value``) with CleanRL names: ``charts/episodic_return``
  (+ ``/<game>``), ``charts/episodic_length``, ``charts/SPS``,
  ``charts/wall_s`` (training wall time so far, evaluations included),
  ``charts/epsilon``, ``losses/td_loss``, ``losses/q_values``,
  ``charts/active_task``, ``eval/return/<game>``, and at every evaluation the
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
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax import checkpoint as C
from mtspark_jax.metrics_log import MetricsLogger
from mtspark_jax.nn import energy
from mtspark_jax.rl import envs as E
from mtspark_jax.rl import training as T
from mtspark_jax.rl.evaluation import make_evaluator
from mtspark_jax.nn.networks import NUM_ATARI_ACTIONS

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


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and checks it is writable; ValueError otherwise."""
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
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
        for env in envs:
            if hasattr(env, "close"):
                env.close()
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
                     games: Sequence[str], step: int, switches: int) -> np.ndarray:
    """Greedy evaluation of every task (``eval/return/<game>``, a row per task in ``eval.csv``);
    returns the ``[M]`` mean returns."""
    res = evaluate(state.learner.variables, key)
    means = res.mean_returns()
    active = int(state.schedule.active)
    for i, g in enumerate(games):
        logger.scalar(f"eval/return/{g}", means[i], step)
        logger.eval_row(step, switches, active, i, g, res.returns[i])
    return means


def progress_text(host: HostState, games: Sequence[str], sps: float, active: int) -> str:
    recent = " ".join(f"{g}:{np.mean(host.recent_returns[i]):.1f}" if host.recent_returns[i] else f"{g}:-"
                      for i, g in enumerate(games))
    return f"SPS {sps:.0f} task {games[active]} ret {recent}"


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
    """
    games, workdir = validate_run(config, workdir)
    c = config
    envs = make_task_envs(c, games, is_eval=False)
    trainer = T.jitted(T.make_train(c, envs))
    m, n = trainer.num_tasks, trainer.spec.num_envs
    key = jax.random.PRNGKey(c.seed)
    ckpt = C.Checkpointer(os.path.join(workdir, "checkpoints"), c.keep_checkpoints)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(c), f, indent=1)

    restored = None
    if resume and ckpt.steps():
        restored = ckpt.restore_latest(state_template(trainer, key))
    if restored is not None:
        step0, state, action_logs, meta = restored
        state = state.replace(env_states=C.restore_envs(envs, action_logs, state.obs))
        action_logs = [[a] for a in action_logs]
        host = HostState.from_json(meta["host"])
        print(f"resumed from checkpoint at step {step0} ({sum(len(a[0]) for a in action_logs)} iterations of env steps replayed)")
    else:
        state = trainer.init(key, *T.reset_envs(envs))
        action_logs = [[] for _ in range(m)]
        host = HostState.fresh(m)
    # Fresh and restored states committed to the same device: one compiled run_chunk serves both (a
    # restored state is committed, a fresh one is not, and jit compiles each placement once).
    state = jax.device_put(state, jax.devices()[0])

    evaluate = make_evaluator(trainer.net, lambda: make_task_envs(c, games, is_eval=True), c.eval_max_steps,
                              c.eval_epsilon)
    logger = MetricsLogger(workdir, tensorboard, resume_step=step0 if restored is not None else -1)
    forward = jax.jit(lambda v, o, t: trainer.net.apply(v, o, t, train=False))

    def run_eval(state: T.TrainState, step: int) -> None:
        """Evaluation and energy at ``step``, recorded in ``host``."""
        eval_key = jax.random.fold_in(jax.random.PRNGKey(c.seed + 1), host.evals)
        means = evaluate_and_log(evaluate, state, eval_key, logger, games, step, host.switches)
        host.evals += 1
        host.last_eval, host.last_eval_step = [float(x) for x in means], step
        host.last_energy = energy_on_frames(forward, trainer.net, state, games, logger, step)

    def save(state: T.TrainState, step: int) -> None:
        acts = [np.concatenate(a) if a else np.zeros((0, n), np.uint8) for a in action_logs]
        for i in range(m):
            action_logs[i] = [acts[i]]
        host.last_ckpt_step = step
        ckpt.save(step, state, acts, {"host": dataclasses.asdict(host), "config": dataclasses.asdict(c)})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=c.total_steps, initial=int(state.global_step), unit="step", dynamic_ncols=True)
    chunks_here, sps, time_up = 0, 0.0, False
    t_start, wall0 = time.time(), host.wall_s  # wall0: training wall time of earlier calls (resumed runs)
    while int(state.global_step) < c.total_steps and (max_chunks is None or chunks_here < max_chunks):
        t0 = time.time()
        state, log = trainer.run_chunk(state)
        log = jax.tree.map(np.asarray, log)
        dt = time.time() - t0
        chunks_here += 1
        host.chunks += 1
        step = int(log.global_step[-1])
        sps = int(log.acted.sum()) * n / max(dt, 1e-9)
        for i in range(m):
            action_logs[i].append(log.actions[log.acted[:, i], i])
        log_episodes(logger, host, log, games)
        host.wall_s = wall0 + time.time() - t_start
        log_chunk(logger, log, step, sps, host.wall_s)
        switches = int(log.switches[-1])
        switched, host.switches = switches > host.switches, switches
        if (c.eval_on_switch and switched) or step - host.last_eval_step >= c.eval_every:
            run_eval(state, step)
        if step - host.last_ckpt_step >= c.checkpoint_every:
            save(state, step)
        logger.flush()
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix_str(progress_text(host, games, sps, int(log.active[-1])))
        if time_limit_s is not None and host.wall_s >= time_limit_s:
            time_up = True
            break
    if bar is not None:
        bar.close()
    step = int(state.global_step)
    finished = step >= c.total_steps
    means = None
    if finished or time_up:
        if host.last_eval_step != step or host.last_eval is None:  # else the last chunk evaluated at this step
            run_eval(state, step)
        means = host.last_eval
    if host.last_ckpt_step != step:
        save(state, step)
    random_means = None
    if (finished or time_up) and c.eval_random:
        # The uniform random policy on the same evaluation protocol: the level "learned" must clear.
        rand = make_evaluator(trainer.net, lambda: make_task_envs(c, games, is_eval=True), c.eval_max_steps,
                              epsilon=1.0)
        random_means = [float(x) for x in rand(state.learner.variables, jax.random.PRNGKey(c.seed + 2)).mean_returns()]
    logger.close()
    png = plot_learning_curves(workdir, games)
    ckpt.close()
    for env in envs:
        if hasattr(env, "close"):
            env.close()
    return RunSummary(
        games=list(games), global_step=step, finished=finished, time_up=time_up,
        eval_mean_return=means, random_mean_return=random_means,
        train_recent_return=[float(np.mean(r)) if r else float("nan") for r in host.recent_returns],
        episodes=list(host.episodes), switches=host.switches, last_sps=sps,
        wall_s=wall0 + time.time() - t_start, plot=png, energy=host.last_energy, state=state)
