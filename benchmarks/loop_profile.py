r"""Where one iteration of the RL loop spends its time, part by part.

Times each part of a training iteration on its own, jitted at the config's
shapes (default: the ``three_games`` preset), then the whole fused iteration
(``training.run_chunk`` past warm-up), and prints one table in milliseconds
per iteration:

* act: the online network's forward pass on the acting task's ``[N]``
  observations and the epsilon-greedy choice;
* env step: EnvPool's XLA step of one pool of ``N`` envs (random actions);
* replay gather: the update's batches (one per learning task, n-step returns);
* target forward: the target network on every batch's ``next_obs`` in one pass
  (``batch_targets``);
* double-DQN forward: the online network on ``next_obs`` (argmax, no gradient);
* online forward and backward: the loss gradient of the online network on
  ``obs``;
* Adam: the clipped Adam step on the gradients;
* the rest: the measured iteration minus the sum of the parts (replay writes,
  the target sync, the schedule, counters, and the parts' own overlap: the
  env step runs on EnvPool's threads while the updates run).

A gradient-step part counts as many times per iteration as the loop does
gradient steps (``gradient steps / iteration``). It also prints the
gradient step's floating-point operations from XLA's cost analysis and the
rate they run at.

    PYTHONPATH=. python benchmarks/loop_profile.py [--preset=three_games] [--set=update_mode=mixed,batch_size=11]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import apply_overrides, get_preset  # noqa: E402
from mtspark_jax import config_flags, xla_options  # noqa: E402
from mtspark_jax.rl import envs as E  # noqa: E402
from mtspark_jax.rl import learner as L  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl import training as T  # noqa: E402
from benchmarks.loop_parts import filled_replay, gradient_steps  # noqa: E402

flags.DEFINE_string("preset", "three_games", "config preset")
flags.DEFINE_integer("chunk_iters", 50, "iterations of the timed fused chunk")
flags.DEFINE_integer("reps", 20, "calls per timed part (median of 3 rounds)")
config_flags.define_set_flag(T.TrainConfig)
xla_options.define_flag()
FLAGS = flags.FLAGS


def median_ms(fn, *args, reps: int) -> float:
    """Median over 3 rounds of the mean ms of ``reps`` calls of ``fn(*args)`` (compiled first)."""
    jax.block_until_ready(fn(*args))
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - t0) / reps * 1e3)
    return float(np.median(rounds))


def main(_):
    xla_options.apply_flag()
    c = apply_overrides(dataclasses.replace(get_preset(FLAGS.preset), chunk_iters=FLAGS.chunk_iters), FLAGS.set)
    envs = E.make_atari_envs(c.games, runner.atari_config(c))
    loop = T.make_loop(c, envs)
    m, n, reps = loop.num_tasks, loop.num_envs, FLAGS.reps
    per_update, samples = gradient_steps(c)
    steps = per_update * c.num_envs / c.train_every
    print(f"{c.agent}, {m} games x {n} envs, T={c.time_steps}, hidden {c.hidden}, convs {c.convs}, "
          f"update_mode {c.update_mode}, learn_from {c.learn_from}, train_every {c.train_every}: "
          f"{steps:g} gradient steps of {samples} samples per iteration of {n} agent steps")

    env_states, obs = T.reset_envs(envs)
    state = T.init_state(loop, jax.random.PRNGKey(0), env_states, obs)
    variables = state.learner.variables
    rep = filled_replay(m, n, loop.spec)
    key = jax.random.PRNGKey(1)
    parts: list[tuple[str, float, float]] = []  # (name, ms per call, calls per iteration)

    @jax.jit
    def act(variables, obs, key):
        q = loop.net.apply(variables, obs, jnp.zeros((n,), jnp.int32), train=False).q
        return L.epsilon_greedy(key, q, jnp.float32(0.01))
    parts.append(("act (forward on N obs, epsilon-greedy)", median_ms(act, variables, obs[0], key, reps=reps), 1))

    pool = envs[0]

    @jax.jit
    def env_step(hs, key):
        a = jax.random.randint(key, (n,), 0, loop.spec.num_actions)
        hs, out = E.recv(pool, E.send(pool, hs, a), a)
        return hs, out.obs
    hs = [env_states[0]]

    def step_env(key):
        hs[0], o = env_step(hs[0], key)
        return o
    parts.append(("env step (EnvPool, one pool)", median_ms(step_env, key, reps=reps), 1))

    gather = jax.jit(lambda rep, key: T.draw(loop, state.replace(replay=rep), key))  # the loop's own sampling
    batches = gather(rep, key)
    tasks = len(batches)
    parts.append((f"replay gather ({tasks} x {c.batch_size})", median_ms(gather, rep, key, reps=reps),
                  n / c.train_every))
    batch = batches[0] if c.update_mode == "per_task" else jax.tree.map(lambda *x: jnp.concatenate(x), *batches)

    target = jax.jit(lambda v, o, t: L.target_q(loop.net, v, o, t))
    per_iter = steps * samples
    tb = jax.tree.map(lambda x: jnp.concatenate([x] * int(round(per_iter / samples))), batch)
    parts.append((f"target forward ({int(per_iter)} samples, one pass)",
                  median_ms(target, variables, tb.next_obs, tb.task, reps=reps), 1))
    q_target = target(variables, batch.next_obs, batch.task)

    @jax.jit
    def ddqn_forward(variables, obs, task):
        return loop.net.apply(jax.lax.stop_gradient(variables), obs, task, train=False).q
    parts.append((f"double-DQN forward ({samples})", median_ms(ddqn_forward, variables, batch.next_obs, batch.task,
                                                             reps=reps), steps))

    lc = T.learner_config(c)
    lstate = state.learner
    grad = jax.jit(jax.grad(lambda p, b, qt: L.td_loss(p, lstate, loop.net, b, lc, qt)[0]))
    t_grad = median_ms(grad, variables["params"], batch, q_target, reps=reps)
    parts.append((f"online forward and backward ({samples})", t_grad - parts[-1][1], steps))
    grads = grad(variables["params"], batch, q_target)

    @jax.jit
    def adam(grads, opt_state, params):
        updates, opt_state = loop.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    parts.append(("Adam (clipped)", median_ms(adam, grads, lstate.opt_state, variables["params"], reps=reps), steps))

    trainer = T.jitted(T.make_train(dataclasses.replace(c, warmup_steps=0), envs))
    env_states, obs = T.reset_envs(envs)
    box = [trainer.init(jax.random.PRNGKey(0), env_states, obs)]

    def chunk():
        box[0], log = trainer.run_chunk(box[0])
        return log
    iteration = median_ms(chunk, reps=1) / c.chunk_iters

    print(f"\n| part | ms per call | calls per iteration | ms per iteration | share |\n|---|---:|---:|---:|---:|")
    total = 0.0
    for name, ms, calls in parts:
        total += ms * calls
        print(f"| {name} | {ms:.2f} | {calls:g} | {ms * calls:.2f} | {ms * calls / iteration:.0%} |")
    print(f"| the rest (measured minus parts) | | | {iteration - total:.2f} | {(iteration - total) / iteration:.0%} |")
    print(f"| **fused iteration, measured** | | | **{iteration:.2f}** | 100% |")
    print(f"\n{n / iteration * 1e3:.0f} agent steps/s")

    cost = grad.lower(variables["params"], batch, q_target).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    print(f"gradient step (double-DQN forward, online forward and backward, {samples} samples): "
          f"{flops / 1e9:.3f} GFLOP by XLA's cost analysis, {flops / t_grad / 1e6:.1f} GFLOP/s at {t_grad:.2f} ms")


if __name__ == "__main__":
    app.run(main)
