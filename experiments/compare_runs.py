r"""Side-by-side table of finished (or time-limited) training runs.

Reads each run folder that ``experiments/train_atari.py`` wrote
(``summary.json`` and ``eval.csv``) and prints one markdown table: per game,
every run's final greedy return (mean over the evaluation episodes, with their
count), its greedy returns at the earlier evaluations, its recent training
return and the random policy's return on the same protocol; then one line per
run with agent steps, wall seconds, load average and commit.

    python experiments/compare_runs.py mtspark_add=runs/three_games/mtspark_add \
        no_context=runs/three_games/context_zero dqn=runs/three_games/dqn

Each argument is ``NAME=FOLDER`` (or a folder, named by its last part).
``--out=FILE`` also writes the table there. ``--targets=Pong=-5.4,Breakout=0.6,Enduro=371.2``
adds a table of where each run first passed each score (a greedy mean above
it): the agent steps and the training wall hours at that evaluation (from
``metrics.csv``, earlier evaluations included), and the first evaluation at
which every game passed.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "", "Also write the markdown table to this file.")
flags.DEFINE_string("targets", "", "GAME=SCORE,...: also tabulate where each run's greedy mean first passed SCORE.")


@dataclass(frozen=True)
class Run:
    """One run folder: its summary and its evaluations ``{game: [(step, mean, n)]}``."""

    name: str
    folder: str
    summary: dict
    evals: dict[str, list[tuple[int, float, int]]]
    wall: dict[int, float]  # agent step -> training wall seconds (metrics.csv ``charts/wall_s``)


def parse_arg(arg: str) -> tuple[str, str]:
    """``NAME=FOLDER`` or ``FOLDER`` -> ``(name, folder)``."""
    name, sep, folder = arg.partition("=")
    if not sep:
        folder = arg
        name = os.path.basename(os.path.normpath(arg))
    if not name or not folder:
        raise ValueError(f"expected NAME=FOLDER or FOLDER, got {arg!r}")
    return name, folder


def load_run(name: str, folder: str) -> Run:
    """Reads ``folder/summary.json`` and ``folder/eval.csv``; a clear error if either is missing."""
    paths = [os.path.join(folder, f) for f in ("summary.json", "eval.csv")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"run {name!r}: {', '.join(missing)} not found (has the run ended?)")
    with open(paths[0]) as f:
        summary = json.load(f)
    evals: dict[str, list[tuple[int, float, int]]] = {}
    with open(paths[1], newline="") as f:
        for row in csv.DictReader(f):
            n = len(row["returns"].split())
            evals.setdefault(row["game"], []).append((int(row["step"]), float(row["mean_return"]), n))
    wall: dict[int, float] = {}
    metrics = os.path.join(folder, "metrics.csv")
    if os.path.exists(metrics):
        with open(metrics, newline="") as f:
            wall = {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["name"] == "charts/wall_s"}
    return Run(name, folder, summary, evals, wall)


def parse_targets(text: str) -> dict[str, float]:
    """``Pong=-5.4,Breakout=0.6`` -> ``{"Pong": -5.4, "Breakout": 0.6}``; ValueError names a bad item."""
    targets = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        game, sep, score = item.partition("=")
        try:
            targets[game.strip()] = float(score)
        except ValueError:
            sep = ""
        if not sep or not game.strip():
            raise ValueError(f"expected GAME=SCORE in --targets, got {item!r}")
    return targets


def first_passed(run: Run, targets: dict[str, float]) -> dict[str, int | None]:
    """Per game of ``targets`` the first evaluation step whose mean is above its score (None: never);
    under ``"all"`` the first step at which every game's evaluation was above its score."""
    firsts: dict[str, int | None] = {}
    passed_at: dict[str, set[int]] = {}
    for game, score in targets.items():
        steps = [step for step, mean, _ in run.evals.get(game, []) if mean > score]
        firsts[game] = steps[0] if steps else None
        passed_at[game] = set(steps)
    common = set.intersection(*passed_at.values()) if passed_at else set()
    firsts["all"] = min(common) if common else None
    return firsts


def targets_table(runs: list[Run], targets: dict[str, float]) -> str:
    """Markdown: per run, where each game (and all at once) first passed its target score."""
    cols = list(targets) + ["all"]
    head = " | ".join(f"{g} > {_num(targets[g])}" for g in targets) + " | all games"
    lines = [f"| run | {head} |", "|---|" + "---:|" * len(cols)]
    for run in runs:
        firsts = first_passed(run, targets)
        cells = []
        for col in cols:
            step = firsts[col]
            hours = run.wall.get(step) if step is not None else None
            cells.append("not yet" if step is None else
                         f"{step / 1e6:.2f}M steps" + (f", {hours / 3600:.2f} h" if hours is not None else ""))
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    """Up to 3 decimals, trailing zeros dropped: -20.75, 0.625, 123.8."""
    return f"{x:.3f}".rstrip("0").rstrip(".") if abs(x) < 1000 else f"{x:.0f}"


def table(runs: list[Run]) -> str:
    """The markdown comparison (see the module docstring)."""
    games = list(runs[0].summary["games"])
    lines = ["| game | run | final greedy (episodes) | earlier greedy evaluations (agent steps) | "
             "training return, recent | random policy |", "|---|---|---:|---|---:|---:|"]
    for game in games:
        for run in runs:
            s = run.summary
            if game not in s["games"]:
                lines.append(f"| {game} | {run.name} | - | not in this run | - | - |")
                continue
            k = s["games"].index(game)
            points = run.evals.get(game, [])
            final = points[-1] if points else None
            earlier = ", ".join(f"{_num(m)} ({step // 1000}k)" for step, m, _ in points[:-1]) or "-"
            final_s = f"**{_num(final[1])}** ({final[2]})" if final else "-"
            random_s = _num(s["random_mean_return"][k]) if s.get("random_mean_return") else "-"
            lines.append(f"| {game} | {run.name} | {final_s} | {earlier} | {_num(s['train_recent_return'][k])} | "
                         f"{random_s} |")
    lines += ["", "| run | agent | context | agent steps | wall s | load average before / after | commit |",
              "|---|---|---|---:|---:|---|---|"]
    for run in runs:
        s = run.summary
        load = " / ".join(", ".join(f"{x:.2f}" for x in s.get(key, [])[:1]) or "-"
                          for key in ("load_avg_before", "load_avg_after"))
        lines.append(f"| {run.name} | {s['agent']} | {s['context']} | {s['agent_steps']} | {s['wall_s']:.0f} | "
                     f"{load} | {str(s.get('commit', '-'))[:7]} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name at least one run folder: NAME=FOLDER ...")
    runs = [load_run(*parse_arg(a)) for a in argv[1:]]
    games = runs[0].summary["games"]
    for run in runs[1:]:
        if run.summary["games"] != games:
            print(f"note: {run.name} played {run.summary['games']}, {runs[0].name} played {games}",
                  file=sys.stderr)
    text = table(runs)
    if FLAGS.targets:
        try:
            targets = parse_targets(FLAGS.targets)
        except ValueError as e:
            raise app.UsageError(str(e))
        text += "\n" + targets_table(runs, targets)
    print(text, end="")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    app.run(main)
