r"""MinAtar comparison: MTSpark_ADD (with and without context), DSQN, DQN; two schedules.

Every run uses the ``minatar`` preset (experiments/configs/presets.py) with
only the agent, the context, the schedule and the seed changed, so all agents
get the same agent steps, seeds, evaluation envs and evaluation points. Runs
go through :func:`mtspark_jax.rl.runner.train_and_evaluate` (the launcher's loop)
into ``<workdir>/<schedule>/<agent>/seed<k>/`` (``summary.json`` marks a
finished run; finished runs are skipped, so a cut-off grid can be resumed or
split over processes with ``--shard``). Then the report step reads every
finished run and writes to ``--out``:

* ``results.md`` / ``results.csv``: per schedule and agent, the mean over
  seeds of the final evaluation return per task with its 95 % t-interval
  (:func:`t_interval`), the number of distinct episodes (distinct (return,
  length) pairs, :meth:`mtspark_jax.rl.evaluation.EvalResult.distinct_episodes`)
  in each seed's final evaluation, the mean +- std of the forgetting per task
  (round robin: a task's return at the switch that ends its block minus its
  return at the switch that gives it its next block, i.e. the drop while the
  other tasks train; positive = forgotten), wall time per run; and the
  random-policy returns measured with the same evaluator (epsilon 1); then
  every run's final returns and distinct episodes, one row per seed.
* ``switch_returns.csv``: every task's return at every switch.
* ``curves_<schedule>.png``: evaluation return over agent steps, mean over
  seeds (shaded: min-max), random policy dashed.
* ``runs/<schedule>/<agent>/seed<k>/``: every finished run's ``summary.json``,
  ``eval.csv`` and ``config.json``, copied from the workdir.

Example (RESULTS.md has the commands that produced the committed table)::

    python experiments/minatar_results.py --total_steps=90000 --seeds=0,1,2 \
        --schedules=round_robin --workdir=runs/minatar_results
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from experiments import log_levels, provenance  # noqa: E402
from experiments.configs import apply_overrides, get_preset  # noqa: E402
from mtspark_jax import config_flags, workdir, xla_options  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl.training import TrainConfig  # noqa: E402

AGENT_SETTINGS = {
    "mtspark_add": dict(agent="mtspark_add", context="task"),
    "mtspark_add_nocontext": dict(agent="mtspark_add", context="zero"),
    "dsqn": dict(agent="dsqn"),
    "dqn": dict(agent="dqn"),
    "dsqn_task_input": dict(agent="dsqn", context="task_input"),
    "dqn_task_input": dict(agent="dqn", context="task_input"),
}
"""Agent names in the table -> TrainConfig fields."""

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/minatar_results", "Where the runs go (one folder per run).")
flags.DEFINE_string("out", "results/minatar", "Where the table, CSVs and PNGs go.")
flags.DEFINE_list("agents", ["mtspark_add", "mtspark_add_nocontext", "dsqn", "dqn"],
                  f"Agents, from {list(AGENT_SETTINGS)} (*_task_input: the one-hot task id appended to the "
                  "trunk's features).")
flags.DEFINE_list("schedules", ["round_robin", "simultaneous"], "Schedules: round_robin, simultaneous.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (every agent and schedule runs every seed).")
flags.DEFINE_string("preset", "minatar", "Starting config (experiments/configs/presets.py): minatar, or "
                    "minatar_swap (breakout and breakout with left/right swapped).")
flags.DEFINE_list("games", None, "MinAtar games (preset's if unset).")
flags.DEFINE_integer("total_steps", None, "Agent steps per run over all tasks (preset's if unset).")
flags.DEFINE_integer("switch_interval", None,
                     "Round robin: agent steps per block; also the evaluation interval of every run.")
config_flags.define_set_flag(TrainConfig)
flags.DEFINE_bool("run", True, "Train the runs that are not finished yet.")
flags.DEFINE_bool("report", True, "Write the table, CSVs and PNGs from the finished runs.")
flags.DEFINE_string("shard", "0/1", "i/k: train only every k-th run starting at i (parallel processes).")
flags.DEFINE_integer("random_episodes", 64, "Episodes per game for the random-policy return.")


def base_config() -> TrainConfig:
    c = get_preset(FLAGS.preset)
    if c.backend != "minatar":
        raise ValueError(f"preset {FLAGS.preset!r} is not a MinAtar preset")
    kw = {}
    if FLAGS.games:
        kw["games"] = tuple(FLAGS.games)
    if FLAGS.total_steps:
        kw["total_steps"] = FLAGS.total_steps
    if FLAGS.switch_interval:
        kw["switch_interval"] = FLAGS.switch_interval
    c = apply_overrides(dataclasses.replace(c, **kw), FLAGS.set)
    # Same evaluation points for every run: at every round-robin switch and every
    # switch_interval steps (simultaneous has no switches).
    return dataclasses.replace(c, switch_unit="steps", eval_every=c.switch_interval, eval_on_switch=True)


def run_config(base: TrainConfig, agent: str, schedule: str, seed: int) -> TrainConfig:
    return dataclasses.replace(base, schedule=schedule, seed=seed, **AGENT_SETTINGS[agent])


def run_dir(schedule: str, agent: str, seed: int) -> str:
    return os.path.join(FLAGS.workdir, schedule, agent, f"seed{seed}")


def grid() -> list[tuple[str, str, int]]:
    return [(s, a, int(k)) for s in FLAGS.schedules for k in FLAGS.seeds for a in FLAGS.agents]


def validate() -> None:
    for a in FLAGS.agents:
        if a not in AGENT_SETTINGS:
            raise ValueError(f"unknown agent {a!r}; expected some of {list(AGENT_SETTINGS)}")
    for s in FLAGS.schedules:
        if s not in ("round_robin", "simultaneous"):
            raise ValueError(f"unknown schedule {s!r}; expected round_robin or simultaneous")
    try:
        i, k = (int(v) for v in FLAGS.shard.split("/"))
        assert 0 <= i < k
    except (ValueError, AssertionError):
        raise ValueError(f"shard must be 'i/k' with 0 <= i < k, got {FLAGS.shard!r}") from None
    base = base_config()
    for s, a, k in grid():
        runner.validate_run(run_config(base, a, s, k), run_dir(s, a, k))


def train_all() -> None:
    base = base_config()
    i, k = (int(v) for v in FLAGS.shard.split("/"))
    for n, (schedule, agent, seed) in enumerate(grid()):
        if n % k != i:
            continue
        wd = run_dir(schedule, agent, seed)
        if os.path.exists(os.path.join(wd, "summary.json")):
            continue
        c = run_config(base, agent, schedule, seed)
        t0 = time.time()
        s = runner.train_and_evaluate(c, wd, resume=False, progress=False, tensorboard=False)
        wall = time.time() - t0
        summary = {k_: getattr(s, k_) for k_ in ("global_step", "games", "eval_mean_return", "eval_distinct_episodes",
                                                 "episodes", "switches", "wall_s", "last_sps")}
        summary.update(process_wall_s=wall, agent=agent, schedule=schedule, seed=seed, preset=FLAGS.preset,
                       context=c.context, action_perms=list(c.action_perms), eval_episodes=c.eval_episodes,
                       eval_noop_max=c.eval_noop_max)
        provenance.write_summary(os.path.join(wd, "summary.json"), summary)
        print(f"{schedule} {agent} seed {seed}: eval {summary['eval_mean_return']} in {wall:.0f} s", flush=True)


def read_evals(wd: str) -> list[dict]:
    with open(os.path.join(wd, "eval.csv")) as f:
        return [dict(step=int(r["step"]), active=int(r["active_task"]), task=int(r["task"]),
                     ret=float(r["mean_return"])) for r in csv.DictReader(f)]


def eval_points(rows: list[dict]) -> list[tuple[int, int, np.ndarray]]:
    """``[(step, active task after this eval, returns [M])]`` in step order."""
    steps = sorted({r["step"] for r in rows})
    m = max(r["task"] for r in rows) + 1
    out = []
    for s in steps:
        here = [r for r in rows if r["step"] == s]
        rets = np.full(m, np.nan)
        for r in here:
            rets[r["task"]] = r["ret"]
        out.append((s, here[0]["active"], rets))
    return out


def forgetting(points, m: int) -> tuple[np.ndarray, list[tuple[int, int, int, float]]]:
    """Round robin: mean drop per task between the end of its block and the start of its next.

    Returns (``[M]`` mean drop, nan where a task never came back; rows
    ``(step, trained_task, task, return)`` for every eval).
    """
    drops = [[] for _ in range(m)]
    last_end = [None] * m
    rows = []
    trained = 0  # the first block trains task 0
    for step, active, rets in points:
        for t in range(m):
            rows.append((step, trained, t, float(rets[t])))
        if active != trained or step == points[-1][0]:
            last_end[trained] = rets[trained]
        if active != trained and last_end[active] is not None:
            drops[active].append(last_end[active] - rets[active])
        trained = active
    return np.array([np.mean(d) if d else np.nan for d in drops]), rows


def random_returns(base: TrainConfig, seeds: list[int], episodes: int) -> np.ndarray:
    """``[M]`` mean return of uniform random actions (evaluator with epsilon 1), over seeds."""
    import jax
    import jax.numpy as jnp

    from mtspark_jax.rl import training as T
    from mtspark_jax.rl.evaluation import make_evaluator

    out = []
    for seed in seeds:
        c = dataclasses.replace(base, seed=seed, eval_episodes=episodes)
        games = runner.canonical_games(c)
        envs = runner.make_task_envs(c, games, is_eval=True)
        net = T.build_network(c, envs[0].spec, len(envs))
        variables = net.init(jax.random.PRNGKey(0), jnp.zeros(envs[0].spec.obs_shape, jnp.uint8),
                             jnp.zeros((episodes,), jnp.int32))
        res = make_evaluator(net, envs, c.eval_max_steps, epsilon=1.0, noop_max=c.eval_noop_max)(
            variables, jax.random.PRNGKey(seed + 1))
        out.append(res.mean_returns())
    return np.mean(out, axis=0)


def t_interval(values) -> tuple[float, float, float]:
    """``(mean, low, high)``: the 95 % Student-t interval of the mean of ``values`` (finite ones; at
    least 2 for an interval, else low = high = nan)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def fmt_interval(values) -> str:
    """``"mean [low, high]"`` (:func:`t_interval`), ``"mean"`` for one value, ``"-"`` for none."""
    mean, low, high = t_interval(values)
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" if np.isfinite(low) else f"{mean:.2f}"


def fmt_range(values) -> str:
    """``"min-max"`` of the finite ``values`` (one value: itself; none: ``"-"``)."""
    v = [int(x) for x in values if np.isfinite(x)]
    if not v:
        return "-"
    return f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"


def final_distinct(summary: dict, m: int) -> np.ndarray:
    """``[M]`` distinct episodes of a run's final evaluation (nan where its summary has none)."""
    d = summary.get("eval_distinct_episodes")
    return np.array(d, float) if d else np.full(m, np.nan)


def fmt(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if not len(v):
        return "-"
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def report() -> None:
    base = base_config()
    games = runner.canonical_games(base)
    m = len(games)
    os.makedirs(FLAGS.out, exist_ok=True)
    runs = {}
    for schedule, agent, seed in grid():
        wd = run_dir(schedule, agent, seed)
        if not os.path.exists(os.path.join(wd, "summary.json")):
            continue
        with open(os.path.join(wd, "summary.json")) as f:
            summary = json.load(f)
        points = eval_points(read_evals(wd))
        forget, rows = forgetting(points, m)
        runs[(schedule, agent, seed)] = dict(summary=summary, points=points, forget=forget, rows=rows)
    seeds_all = [int(k) for k in FLAGS.seeds]
    cache = os.path.join(FLAGS.out, "random_returns.json")
    key = dict(games=games, seeds=seeds_all, episodes=FLAGS.random_episodes, max_steps=base.eval_max_steps,
               noop_max=base.eval_noop_max)
    cached = json.load(open(cache)) if os.path.exists(cache) else {}
    if cached.get("key") == key:
        rand = np.array(cached["returns"])
    else:
        rand = random_returns(base, seeds_all, FLAGS.random_episodes)
        with open(cache, "w") as f:
            json.dump(dict(key=key, returns=[float(x) for x in rand]), f, indent=1)
    print("random-policy returns:", dict(zip(games, np.round(rand, 3))))
    if not runs:
        print("no finished runs to report")
        return
    seeds_done = sorted({k[2] for k in runs})

    header = ["schedule", "agent", "seeds"] + [f"final {g}" for g in games] + [
        f"distinct episodes {g}" for g in games] + [f"forgetting {g}" for g in games] + ["wall s / run"]
    seed_header = ["schedule", "agent", "seed"] + [f"final {g}" for g in games] + [
        f"distinct episodes {g}" for g in games]
    table, csv_rows, seed_rows = [], [], []
    for schedule in FLAGS.schedules:
        for agent in FLAGS.agents:
            rs = [runs[(schedule, agent, k)] for k in seeds_done if (schedule, agent, k) in runs]
            if not rs:
                continue
            finals = np.array([r["summary"]["eval_mean_return"] for r in rs])
            distinct = np.array([final_distinct(r["summary"], m) for r in rs])
            forgets = np.array([r["forget"] for r in rs])
            walls = [r["summary"]["process_wall_s"] for r in rs]
            seeds = ",".join(str(r["summary"]["seed"]) for r in rs)
            table.append([schedule, agent, seeds] + [fmt_interval(finals[:, t]) for t in range(m)] + [
                fmt_range(distinct[:, t]) for t in range(m)] + [
                fmt(forgets[:, t]) if schedule == "round_robin" else "n/a" for t in range(m)] + [f"{np.mean(walls):.0f}"])
            for r, d in zip(rs, distinct):
                s = r["summary"]
                csv_rows.append([schedule, agent, s["seed"], s["global_step"]] + list(s["eval_mean_return"]) +
                                [fmt_range([x]) for x in d] + [float(x) for x in r["forget"]] +
                                [round(s["process_wall_s"], 1)])
                seed_rows.append([schedule, agent, str(s["seed"])] + [f"{x:.2f}" for x in s["eval_mean_return"]] +
                                 [fmt_range([x]) for x in d])
    table.append(["random policy", "uniform actions", ",".join(map(str, seeds_all))] +
                 [f"{x:.2f}" for x in rand] + ["-"] * (2 * m) + ["-"])
    steps = sorted({r["summary"]["global_step"] for r in runs.values()})
    noops = f", each starting with 0-{base.eval_noop_max} random no-ops" if base.eval_noop_max else ""
    lines = [f"Agent steps per run (all tasks): {steps}; final = greedy evaluation of {base.eval_episodes} "
             f"episodes per game at the end{noops}: mean over seeds [95 % t-interval]; distinct episodes: "
             f"distinct (return, length) pairs of the final evaluation, min-max over seeds; forgetting: "
             f"mean ± std over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += ["", "Per seed:", "", "| " + " | ".join(seed_header) + " |", "|" + "---|" * len(seed_header)]
    lines += ["| " + " | ".join(row) + " |" for row in seed_rows]
    with open(os.path.join(FLAGS.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(FLAGS.out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["schedule", "agent", "seed", "steps"] + [f"final_{g}" for g in games] +
                   [f"distinct_{g}" for g in games] + [f"forgetting_{g}" for g in games] + ["wall_s"])
        w.writerows(csv_rows)
        w.writerow(["random", "random", "-", "-"] + [float(x) for x in rand] + [""] * (2 * m) + [""])
    with open(os.path.join(FLAGS.out, "switch_returns.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["schedule", "agent", "seed", "step", "trained_task", "game", "return"])
        for (schedule, agent, seed), r in sorted(runs.items()):
            for step, trained, t, ret in r["rows"]:
                w.writerow([schedule, agent, seed, step, games[trained], games[t], ret])
    plot(runs, games, rand)
    copy_run_files(list(runs))
    print("\n".join(lines))


def copy_run_files(keys: list[tuple[str, str, int]]) -> None:
    """Copies every finished run's ``summary.json``, ``eval.csv`` and ``config.json`` to
    ``<out>/runs/<schedule>/<agent>/seed<k>/``."""
    import shutil

    for schedule, agent, seed in keys:
        dst = os.path.join(FLAGS.out, "runs", schedule, agent, f"seed{seed}")
        os.makedirs(dst, exist_ok=True)
        for name in ("summary.json", "eval.csv", "config.json"):
            src = os.path.join(run_dir(schedule, agent, seed), name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(dst, name))


def plot(runs, games, rand) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for schedule in FLAGS.schedules:
        keys = [k for k in runs if k[0] == schedule]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.2), squeeze=False)
        for t, (ax, g) in enumerate(zip(axes[0], games)):
            for agent in FLAGS.agents:
                curves = [runs[k]["points"] for k in keys if k[1] == agent]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                steps = [p[0] for p in curves[0][:n]]
                vals = np.array([[p[2][t] for p in c[:n]] for c in curves])
                line, = ax.plot(steps, vals.mean(0), label=agent)
                ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15)
            ax.axhline(rand[t], color="k", ls="--", lw=1, label="random")
            ax.set_title(f"{g} ({schedule})")
            ax.set_xlabel("agent steps (all tasks)")
            ax.set_ylabel("eval return")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(FLAGS.out, f"curves_{schedule}.png"), dpi=70)
        plt.close(fig)


xla_options.define_flag()


@workdir.report_errors  # a run folder another process is writing, or a failed write: one line
def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()  # before the first JAX computation
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    try:
        validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    if FLAGS.run:
        train_all()
    if FLAGS.report:
        report()
    print(f"total wall time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
