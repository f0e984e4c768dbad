"""Prints what a multi-task agent does per task: its action preference, its use of the context, its gates.

    python experiments/inspect_agent.py --params=results/atari_main_job/agent.msgpack
    python experiments/export_params.py --workdir=runs/three_games --out=/tmp/a.msgpack && \\
        python experiments/inspect_agent.py --params=/tmp/a.msgpack --steps=400

Each task's evaluation pool (``eval_episodes`` envs, seeded as the run's
evaluations) takes ``--steps`` uniform random actions; every ``--every``-th
step its observations are kept. On those states of each task the table gives
the network's Q under every task's one-hot context: the mean Q, the mean
spread of Q over the actions (a flat advantage stream gives every action the
same Q: the greedy policy then repeats one action whatever the screen) and
the most frequent greedy action. Then, for every per-neuron dendritic stream,
the range of its gates per task (they start in about [0.27, 0.73]).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import log_levels  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402
from mtspark_jax.rl import agent_file, diagnostics, runner  # noqa: E402
from mtspark_jax.rl.envs import close_envs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("params", None, "An agent file (experiments/export_params.py).")
flags.DEFINE_integer("steps", 400, "Random-action steps per task.")
flags.DEFINE_integer("every", 20, "Keep the observations of every this many steps.")
flags.DEFINE_integer("seed", 0, "Seed of the random actions.")
xla_options.define_flag()


def observed_states(env, steps: int, every: int, rng: np.random.Generator) -> jnp.ndarray:
    """``[steps // every * N, H, W, C]`` observations of ``env`` (N envs) under uniform random actions."""
    handle, obs = env.reset()
    kept = []
    for s in range(steps):
        if s % every == 0:
            kept.append(obs)
        actions = rng.integers(0, env.spec.num_actions, env.spec.num_envs)
        handle, out = env.step(handle, jnp.asarray(actions, jnp.int32))
        obs = out.obs
    return jnp.concatenate(kept)


def main(argv):
    del argv
    log_levels.quiet()
    xla_options.apply_flag()
    if not FLAGS.params:
        raise app.UsageError("--params is required (an agent file: experiments/export_params.py)")
    if FLAGS.steps < 1 or not 1 <= FLAGS.every <= FLAGS.steps:
        raise app.UsageError(f"need --steps >= 1 and 1 <= --every <= --steps, got {FLAGS.steps}, {FLAGS.every}")
    agent = agent_file.load_agent(FLAGS.params)
    tasks = agent.tasks
    envs = runner.make_task_envs(agent.config, tasks, is_eval=True)
    rng = np.random.default_rng(FLAGS.seed)
    print(f"{FLAGS.params}: {agent.config.agent} at agent step {agent.agent_steps}")
    print("| states of | context | mean Q | spread of Q over actions | most frequent greedy action (share) |")
    print("|---|---|---:|---:|---|")
    try:
        for i, (task, env) in enumerate(zip(tasks, envs)):
            obs = observed_states(env, FLAGS.steps, FLAGS.every, rng)
            r = diagnostics.q_by_context(agent.net, agent.variables, obs, len(tasks))
            for m, context in enumerate(tasks):
                top = int(r.greedy[m].argmax())
                own = " (own)" if m == i else ""
                print(f"| {task} | {context}{own} | {r.mean_q[m]:.3f} | {r.spread[m]:.4f} | "
                      f"{top} ({r.greedy[m, top] / r.greedy[m].sum():.0%}) |")
    finally:
        close_envs(envs)
    gates = diagnostics.gate_ranges(agent.variables["params"])
    if gates:
        print("\n| gate | task | mean | min | max |\n|---|---|---:|---:|---:|")
        for name, g in gates.items():
            for m, task in enumerate(tasks):
                print(f"| {name} | {task} | {g.mean[m]:.3f} | {g.low[m]:.3f} | {g.high[m]:.3f} |")


if __name__ == "__main__":
    app.run(main)
