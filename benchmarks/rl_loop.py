r"""Where the time of the RL loop goes: raw EnvPool, learner update, full jitted loop.

Prints, for the given config (default: the ``cpu`` preset of
experiments/configs/presets.py):

1. raw EnvPool ceiling: the three pools stepped with random actions in one
   jitted ``lax.scan`` (acting task chosen with ``lax.switch`` as in training),
   env-steps/s;
2. one update as the loop runs it: for every learning task (``learn_from``)
   a jitted Double DQN gradient step (sample + fwd/bwd + Adam) on the
   config's network and batch, or one step on their concatenated samples
   (``update_mode="mixed"``), ms;
3. acting only: the training chunk during warm-up (network forward, replay
   writes, no updates), env-steps/s;
4. the full loop after warm-up (one update per ``train_every`` agent steps),
   env-steps/s, as the library runs it: the whole chunk one jitted
   ``lax.scan``, the updates running while EnvPool steps the envs;
5. the same agent driven from a Python host loop: EnvPool's NumPy API stepped
   on the host, jitted act, replay write and the same updates as 2. (the
   usual PyTorch-style loop), env-steps/s;
6. the loop's own bound ``1 / (t_env + t_update / train_every)`` from 1. and
   2., and the ratios fused / host and fused / bound.

The fused loop, the host loop and the bound all do the same gradient steps
per agent step, for every ``learn_from`` and ``update_mode``.

    PYTHONPATH=. python benchmarks/rl_loop.py [--chunk_iters=100] [--preset=cpu] [--agent=...] \
        [--buffer_size=...] [--batch_size=...]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import apply_overrides, get_preset  # noqa: E402
from mtspark_jax import config_flags  # noqa: E402
from mtspark_jax.rl import envs as E  # noqa: E402
from mtspark_jax.rl import learner as L  # noqa: E402
from mtspark_jax.rl import replay as R  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl import training as T  # noqa: E402
from benchmarks.loop_parts import filled_replay, gradient_steps, loop_update  # noqa: E402
from mtspark_jax import xla_options  # noqa: E402

flags.DEFINE_string("preset", "cpu", "config preset")
flags.DEFINE_string("agent", None, "override agent")
flags.DEFINE_integer("num_envs", None, "override envs per task")
flags.DEFINE_integer("buffer_size", None, "override replay capacity per task (the paper preset's 2^20 is ~22 GB)")
flags.DEFINE_integer("batch_size", None, "override the learner batch")
flags.DEFINE_integer("chunk_iters", 100, "iterations per timed chunk")
flags.DEFINE_integer("repeats", 3, "timed repetitions (best of)")
flags.DEFINE_bool("host", True, "time the host loop (5.)")
config_flags.define_set_flag(T.TrainConfig)
xla_options.define_flag()  # --fast_cpu_convolutions, as the launchers have it
FLAGS = flags.FLAGS


def best_time(fn, repeats):
    fn()  # compile / warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(_):
    xla_options.apply_flag()  # before the first JAX computation
    cfg = get_preset(FLAGS.preset)
    over = {k: getattr(FLAGS, k) for k in ("agent", "num_envs", "buffer_size", "batch_size") if getattr(FLAGS, k) is not None}
    cfg = apply_overrides(dataclasses.replace(cfg, chunk_iters=FLAGS.chunk_iters, **over), FLAGS.set)
    k = cfg.chunk_iters
    print(f"device {jax.devices()[0].device_kind}, agent {cfg.agent}, {len(cfg.games)} games x {cfg.num_envs} envs, "
          f"T={cfg.time_steps}, hidden {cfg.hidden}, convs {cfg.convs}, batch {cfg.batch_size}, chunk {k} iterations, "
          f"{T.updates_owed(0, cfg.num_envs, cfg.train_every)} updates per iteration, batch_targets {cfg.batch_targets}")

    # 1. Raw EnvPool ceiling.
    envs = E.make_atari_envs(cfg.games, runner.atari_config(cfg))
    m, n = len(envs), cfg.num_envs
    states, _ = T.reset_envs(envs)
    branches = []
    for i in range(m):
        def f(hs, a, i=i):
            h, out = envs[i].step(hs[i], a)
            return tuple(h if j == i else hs[j] for j in range(m)), out.obs[:, 0, 0, 0].sum()
        branches.append(f)

    @jax.jit
    def raw(hs, key):
        def body(c, t):
            hs, key = c
            key, sub = jax.random.split(key)
            a = jax.random.randint(sub, (n,), 0, 18)
            hs, x = jax.lax.switch(t % m, branches, hs, a)
            return (hs, key), x
        return jax.lax.scan(body, (hs, key), jnp.arange(k))

    box = [states]

    def run_raw():
        (hs, _), x = raw(box[0], jax.random.PRNGKey(0))
        jax.block_until_ready(x)
        box[0] = hs

    t_raw = best_time(run_raw, FLAGS.repeats)
    print(f"1. raw EnvPool (random actions, lax.switch over {m} pools, jitted scan): {k * n / t_raw:8.0f} env-steps/s")

    # 2. One update as the loop does it: every learning task's gradient step (or one mixed step).
    loop = T.make_loop(dataclasses.replace(cfg, warmup_steps=0), envs)
    states, obs = T.reset_envs(envs)
    state = T.init_state(loop, jax.random.PRNGKey(0), states, obs)
    state = state.replace(replay=filled_replay(m, n, loop.spec))
    owed_update = jax.jit(functools.partial(loop_update, loop))
    sbox = [state]

    def run_update():
        sbox[0] = sbox[0].replace(learner=owed_update(sbox[0], jax.random.PRNGKey(1)))
        jax.block_until_ready(sbox[0].learner)

    t_up = best_time(run_update, FLAGS.repeats)
    steps, samples = gradient_steps(cfg)
    print(f"2. one update ({steps} gradient step(s) of {samples}: sample + fwd/bwd + Adam):  {t_up * 1e3:8.1f} ms "
          f"({t_up / steps * 1e3:.1f} ms per gradient step)")

    # 3./4. The training chunk: warm-up (acting only) then learning.
    warm_iters = -(-cfg.warmup_steps // n)
    def time_chunk(c):
        """Best seconds of one training chunk of config ``c``, and the state after the last one."""
        trainer = T.jitted(T.make_train(c, envs))
        states, obs = T.reset_envs(envs)
        box = [trainer.init(jax.random.PRNGKey(0), states, obs)]

        def run():
            s, log = trainer.run_chunk(box[0])
            jax.block_until_ready(log)
            box[0] = s

        return best_time(run, FLAGS.repeats), box[0]

    t, _ = time_chunk(dataclasses.replace(cfg, warmup_steps=10**9))
    print(f"3. training chunk, acting only (fwd + env + replay):      {k * n / t:8.0f} env-steps/s")
    ups = k * n / cfg.train_every
    t, last = time_chunk(dataclasses.replace(cfg, warmup_steps=0))
    fused = k * n / t
    print(f"4. training chunk, learning (+{ups:.0f} updates of {steps} gradient step(s) / {k * n} steps): "
          f"{fused:8.0f} env-steps/s (updates alone would take {ups * t_up / t * 100:.0f}% of it)")
    print(f"   warm-up is {warm_iters} iterations per task; replay {R.bytes_per_transition(last.replay):.0f} "
          "bytes/transition")

    # 5. Host loop: task 0's pool stepped through EnvPool's NumPy API, the rest jitted.
    raw_rate = k * n / t_raw
    bound = 1.0 / (1.0 / raw_rate + t_up / cfg.train_every)
    if FLAGS.host:
        host_rate = host_loop_rate(cfg, loop, last)
        print(f"5. host loop (NumPy EnvPool step, jitted act / replay add / update): {host_rate:8.0f} env-steps/s")
    print(f"6. bound 1/(t_env + t_update/{cfg.train_every}) = {bound:.0f} env-steps/s; fused loop: "
          + (f"{fused / host_rate:.2f}x the host loop, " if FLAGS.host else "")
          + f"{fused / bound:.2f} of the bound")


def host_loop_rate(cfg, loop: T.Loop, fused_state: T.TrainState) -> float:
    """Env-steps/s of the agent driven from Python with EnvPool's NumPy API (task 0 acting, learning).

    Starts from ``fused_state`` (past warm-up); does per iteration what the
    fused loop's iteration does: act (forward + epsilon greedy), env step,
    replay write, and the owed updates, each the same gradient steps as the
    fused loop's (:func:`loop_update`).
    """
    n, k = cfg.num_envs, cfg.chunk_iters
    pool = E.make_atari_envs(cfg.games[:1], runner.atari_config(cfg))[0].pool
    fc = loop.spec.frame_shape[-1]

    @jax.jit
    def act(variables, obs, key):
        q = loop.net.apply(variables, obs, jnp.zeros((n,), jnp.int32), train=False).q
        return L.epsilon_greedy(key, q, jnp.float32(cfg.eps_end))

    @functools.partial(jax.jit, donate_argnums=0)
    def add(rep, obs, actions, reward, terminated, truncated, flags):
        reward = jnp.sign(reward) if cfg.reward_clip else reward
        return R.add(rep, 0, obs[..., -fc:], actions, reward, terminated, truncated, flags.first, ~flags.terminal)

    learn = jax.jit(functools.partial(loop_update, loop))
    box = {"state": fused_state, "flags": R.initial_flags(n), "obs": pool.reset()[0], "it": 0,
           "key": jax.random.PRNGKey(2)}

    def run():
        b = box
        for _ in range(k):
            b["key"], k_act, k_learn = jax.random.split(b["key"], 3)
            st = b["state"]
            obs = jnp.asarray(np.transpose(b["obs"], (0, 2, 3, 1)))
            actions = act(st.learner.variables, obs, k_act)
            next_obs, reward, term, trunc, _ = pool.step(np.asarray(actions))
            term, trunc = jnp.asarray(term), jnp.asarray(trunc)
            st = st.replace(replay=add(st.replay, obs, actions, jnp.asarray(reward, jnp.float32), term, trunc,
                                       b["flags"]))
            b["flags"] = R.next_flags(b["flags"], term, trunc)
            it = b["it"]
            for j in range(T.updates_owed(it, n, cfg.train_every)):
                st = st.replace(learner=learn(st, jax.random.fold_in(k_learn, j)))
            b["state"], b["obs"], b["it"] = st, next_obs, it + 1
        jax.block_until_ready(b["state"].learner)

    t = best_time(run, FLAGS.repeats)
    pool.close()
    return k * n / t


if __name__ == "__main__":
    app.run(main)
