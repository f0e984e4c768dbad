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
  ``eval/energy/snn_uJ/<game>`` ...; :mod:`mtspark_jax.energy`);
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
``learning_curves.png`` and returns a summary.
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
from mtspark_jax import energy
from mtspark_jax import envs as E
from mtspark_jax import training as T
from mtspark_jax.evaluation import make_evaluator
from mtspark_jax.networks import NUM_ATARI_ACTIONS


def atari_config(c: T.TrainConfig) -> E.AtariConfig:
    """Training pools' settings from the run config."""
    return E.AtariConfig(num_envs=c.num_envs, seed=c.seed, noop_max=c.noop_max, reward_clip=c.reward_clip,
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
        from mtspark_jax import minatar

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

    Tasks with an action map are wrapped in :class:`mtspark_jax.envs.PermutedActions`.

    Evaluation envs hold ``eval_episodes`` envs (one episode each) and are
    seeded ``seed + 7919`` so they never replay training episodes.
    """
    games = [E.base_game(g) for g in games]
    if c.backend == "minatar":
        from mtspark_jax import minatar

        if is_eval:
            envs = minatar.make_minatar_envs(games, c.eval_episodes, c.seed + 7919)
        else:
            envs = minatar.make_minatar_envs(games, c.num_envs, c.seed)
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


def truncate_csv(path: str, last_step: int) -> None:
    """Drops the rows of a CSV with a ``step`` column past ``last_step``.

    A resumed run restarts from its checkpoint's step, so rows an interrupted
    run wrote after that checkpoint would otherwise appear twice.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index("step")
    keep = [r for r in body if r and int(r[col]) <= last_step]
    if len(keep) != len(body):
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + keep)
        os.replace(tmp, path)


class MetricsLogger:
    """TensorBoard + long-format CSV of scalars, and an eval CSV.

    ``resume_step``: the step a resumed run restarts from (-1: a run from
    scratch). Rows logged past it (by an interrupted run) are dropped from
    both CSVs, and TensorBoard purges its events past it, so that each step is
    logged once. ``None`` appends to whatever is there.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None):
        self.workdir = workdir
        self.writer = None
        if resume_step is not None:
            for name in ("metrics.csv", "eval.csv"):
                truncate_csv(os.path.join(workdir, name), resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)
        new = not os.path.exists(os.path.join(workdir, "metrics.csv"))
        self._csv = open(os.path.join(workdir, "metrics.csv"), "a", newline="")
        self._w = csv.writer(self._csv)
        if new:
            self._w.writerow(["step", "name", "value"])
        new_eval = not os.path.exists(os.path.join(workdir, "eval.csv"))
        self._eval = open(os.path.join(workdir, "eval.csv"), "a", newline="")
        self._ew = csv.writer(self._eval)
        if new_eval:
            self._ew.writerow(["step", "switches", "active_task", "task", "game", "mean_return", "returns"])

    def scalar(self, name: str, value: float, step: int) -> None:
        value = float(value)
        self._w.writerow([step, name, f"{value:.6g}"])
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def eval_row(self, step, switches, active, task, game, returns) -> None:
        self._ew.writerow([step, switches, active, task, game, f"{float(np.mean(returns)):.4g}",
                           " ".join(f"{r:.4g}" for r in returns)])

    def flush(self) -> None:
        self._csv.flush()
        self._eval.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        self._csv.close()
        self._eval.close()
        if self.writer is not None:
            self.writer.close()


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
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "learning_curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def train_and_evaluate(
    config: T.TrainConfig,
    workdir: str,
    resume: bool = True,
    progress: bool = True,
    max_chunks: int | None = None,
    tensorboard: bool = True,
    make_envs: Callable[[T.TrainConfig, bool], list] | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a run in ``workdir``; returns a summary dict.

    Args:
      config: the run.
      workdir: output directory (created); checkpoints in ``workdir/checkpoints``.
      resume: continue from the newest usable checkpoint if there is one.
      progress: tqdm progress bar.
      max_chunks: stop after this many chunks in THIS call (tests: "interrupt").
      time_limit_s: stop at the end of the first chunk after this many seconds
        of training wall time (summed over resumes, ``charts/wall_s``), then
        evaluate as at the end of a run; ``None``: no limit.
      make_envs: ``(config, eval) -> list[TaskEnv]``; default the config's
        backend (EnvPool Atari or gymnax MinAtar, :func:`make_task_envs`).
        Called for fresh pools (training pools must be reproducible by seed;
        evaluation pools are built afresh for every evaluation unless their
        reset restarts from the seed, :mod:`mtspark_jax.evaluation`).
    """
    games, workdir = validate_run(config, workdir)
    c = config
    if make_envs is None:
        def make_envs(cfg, is_eval):
            return make_task_envs(cfg, games, is_eval)
    envs = make_envs(c, False)
    trainer = T.make_train(c, envs)
    m, n = trainer.num_tasks, trainer.spec.num_envs
    key = jax.random.PRNGKey(c.seed)
    ckpt = C.Checkpointer(os.path.join(workdir, "checkpoints"), c.keep_checkpoints)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(c), f, indent=1)

    restored = None
    if resume and ckpt.steps():
        template = trainer.init(key, tuple(None for _ in range(m)), jnp.zeros((m,) + trainer.spec.obs_shape, jnp.uint8))
        restored = ckpt.restore_latest(template)
    if restored is not None:
        step0, state, action_logs, meta = restored
        env_states = C.restore_envs(envs, action_logs, state.obs)
        state = state.replace(env_states=env_states)
        action_logs = [[a] for a in action_logs]
        host = meta["host"]
        print(f"resumed from checkpoint at step {step0} ({sum(len(a[0]) for a in action_logs)} iterations of env steps replayed)")
    else:
        env_states, obs = T.reset_envs(envs)
        state = trainer.init(key, env_states, obs)
        action_logs = [[] for _ in range(m)]
        host = {"evals": 0, "last_eval_step": 0, "last_ckpt_step": 0, "switches": 0, "chunks": 0,
                "recent_returns": [[] for _ in range(m)], "episodes": [0] * m, "last_eval": None}

    evaluate = make_evaluator(trainer.net, lambda: make_envs(c, True), c.eval_max_steps, c.eval_epsilon)
    logger = MetricsLogger(workdir, tensorboard, resume_step=step0 if restored is not None else -1)
    forward = jax.jit(lambda v, o, t: trainer.net.apply(v, o, t, train=False))

    def log_energy(step: int) -> dict[str, dict[str, float]]:
        """Spike rate per layer and energy per decision on every task's current frames
        (``eval/spike_rate/<layer>/<game>``, ``eval/energy/<name>/<game>``; mtspark_jax.energy)."""
        result = {}
        for i, g in enumerate(games):
            obs = state.obs[i]
            out = forward(state.learner.variables, obs, jnp.full((n,), i, jnp.int32))
            result[g] = energy.summarize(energy.estimate_energy(out, trainer.net, obs.shape))
            for k, v in result[g].items():
                logger.scalar(f"eval/{k}/{g}", v, step)
        host["last_energy"] = result
        return result

    def run_eval(step: int, active: int, switches: int) -> np.ndarray:
        res = evaluate(state.learner.variables, jax.random.fold_in(jax.random.PRNGKey(c.seed + 1), host["evals"]))
        host["evals"] += 1
        means = res.mean_returns()
        for i, g in enumerate(games):
            logger.scalar(f"eval/return/{g}", means[i], step)
            logger.eval_row(step, switches, active, i, g, res.returns[i])
        host["last_eval"] = [float(x) for x in means]
        log_energy(step)
        return means

    def save(step: int) -> None:
        acts = [np.concatenate(a) if a else np.zeros((0, n), np.uint8) for a in action_logs]
        for i in range(m):
            action_logs[i] = [acts[i]]
        ckpt.save(step, state, acts, {"host": host, "config": dataclasses.asdict(c)})
        host["last_ckpt_step"] = step

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=c.total_steps, initial=int(state.global_step), unit="step", dynamic_ncols=True)
    chunks_here = 0
    sps = 0.0
    t_start = time.time()
    wall0 = host.get("wall_s", 0.0)  # training wall time of earlier calls (resumed runs)
    time_up = False
    while int(state.global_step) < c.total_steps and (max_chunks is None or chunks_here < max_chunks):
        t0 = time.time()
        state, log = trainer.run_chunk(state)
        log = jax.tree.map(np.asarray, log)
        dt = time.time() - t0
        chunks_here += 1
        host["chunks"] += 1
        step = int(log.global_step[-1])
        steps_done = int(log.acted.sum()) * n
        sps = steps_done / max(dt, 1e-9)
        for i in range(m):
            action_logs[i].append(log.actions[log.acted[:, i], i])
        ks, ts, es = np.nonzero(log.ended)
        for k, t, e in zip(ks, ts, es):
            s = int(log.global_step[k])
            r, ln = float(log.ep_return[k, t, e]), int(log.ep_length[k, t, e])
            logger.scalar("charts/episodic_return", r, s)
            logger.scalar(f"charts/episodic_return/{games[t]}", r, s)
            logger.scalar("charts/episodic_length", ln, s)
            host["recent_returns"][t] = (host["recent_returns"][t] + [r])[-20:]
            host["episodes"][t] += 1
        if np.isfinite(log.td_loss).any():
            logger.scalar("losses/td_loss", float(np.nanmean(log.td_loss)), step)
            logger.scalar("losses/q_values", float(np.nanmean(log.q_mean)), step)
        logger.scalar("charts/SPS", sps, step)
        host["wall_s"] = wall0 + time.time() - t_start
        logger.scalar("charts/wall_s", host["wall_s"], step)
        logger.scalar("charts/epsilon", float(log.epsilon[-1]), step)
        logger.scalar("charts/active_task", int(log.active[-1]), step)
        switches = int(log.switches[-1])
        switched = switches > host["switches"]
        host["switches"] = switches
        if (c.eval_on_switch and switched) or step - host["last_eval_step"] >= c.eval_every:
            run_eval(step, int(state.schedule.active), switches)
            host["last_eval_step"] = step
        if step - host["last_ckpt_step"] >= c.checkpoint_every:
            save(step)
        logger.flush()
        if bar is not None:
            bar.update(step - bar.n)
            recent = " ".join(
                f"{g}:{np.mean(host['recent_returns'][i]):.1f}" if host["recent_returns"][i] else f"{g}:-"
                for i, g in enumerate(games))
            bar.set_postfix_str(f"SPS {sps:.0f} task {games[int(log.active[-1])]} ret {recent}")
        if time_limit_s is not None and host["wall_s"] >= time_limit_s:
            time_up = True
            break
    if bar is not None:
        bar.close()
    step = int(state.global_step)
    finished = step >= c.total_steps
    means = None
    if finished or time_up:
        if host["last_eval_step"] == step and host["last_eval"] is not None:
            means = np.asarray(host["last_eval"])  # the last chunk already evaluated at this step
        else:
            means = run_eval(step, int(state.schedule.active), host["switches"])
            host["last_eval_step"] = step
    if host["last_ckpt_step"] != step:
        save(step)
    random_means = None
    if (finished or time_up) and c.eval_random:
        # The uniform random policy on the same evaluation protocol: the level "learned" must clear.
        rand = make_evaluator(trainer.net, lambda: make_envs(c, True), c.eval_max_steps, epsilon=1.0)
        random_means = rand(state.learner.variables, jax.random.PRNGKey(c.seed + 2)).mean_returns()
    logger.close()
    png = plot_learning_curves(workdir, games)
    ckpt.close()
    for env in envs:
        if hasattr(env, "close"):
            env.close()
    return {
        "global_step": step,
        "finished": finished,
        "time_up": time_up,
        "games": games,
        "eval_mean_return": None if means is None else [float(x) for x in means],
        "random_mean_return": None if random_means is None else [float(x) for x in random_means],
        "train_recent_return": [float(np.mean(r)) if r else float("nan") for r in host["recent_returns"]],
        "episodes": host["episodes"],
        "switches": host["switches"],
        "last_sps": sps,
        "wall_s": wall0 + time.time() - t_start,  # over resumes, final evaluations included
        "plot": png,
        "energy": host.get("last_energy"),
        "state": state,
    }
