"""Named starting points; command-line flags override single fields.

* ``enduro`` (default of ``experiments/train_atari.py``, the README's main
  job): MTSpark_ADD learns Enduro in about 10 minutes on a 2-core CPU. The
  ``pong`` settings on Enduro (its 9 actions) with a short exploration phase
  (5k warm-up steps, epsilon 1 -> 0.01 over 30k agent steps: Enduro pays
  nothing until the car is driven fast for a while, which a near-greedy
  policy finds sooner than a random one) and one update of 32 transitions
  per 8 agent steps (more agent steps per second on this CPU); 200k agent
  steps, greedy evaluation over 8 full episodes every 50k. The random policy
  scores 0 on Enduro (RESULTS.md, "Enduro, one task: the main job").
* ``cpu``: a few-minute multi-task pipeline check on a 2-core CPU, used by
  the tests (TrainConfig's small sizes: the three games, 4 envs each, 12k
  agent steps in total, a quarter-width trunk, hidden 64, batch 16) with
  round robin every 1,000 agent steps so that every game gets its turns in a
  short run (MTSpark's likely interval, 25 episodes, is the ``paper`` value),
  and evaluation every 4k steps instead of after every switch (each
  evaluation costs seconds here). It trains far too briefly to learn: it
  checks the whole pipeline.
* ``paper``: the authors' settings (docs/design.md section 4): nature trunk, 512 hidden,
  2^20 transitions per task, batch 256, 5k warm-up per task, epsilon 1 -> 0.1
  over 1M steps, target sync 10k, 12M agent steps, round robin every 25
  episodes. Needs an accelerator and about 22 GB of replay per task at 2^20
  (7062 bytes per transition).
* ``minatar``: the MinAtar backend (gymnax; breakout and space_invaders,
  the games that learn within this CPU's budget), MinAtar's reference trunk
  (conv 16 3x3/1, hidden 128), round robin in blocks of 20k agent steps,
  120k steps in all: MTSpark_ADD ends far above random on both games in
  103 s on an idle 2-core CPU (RESULTS.md, "MinAtar, two games").
  Every greedy evaluation episode starts with 0-5 random no-ops
  (``eval_noop_max``): gymnax's games reset from their seed, and without them
  breakout's 16 evaluation episodes are copies of at most two games.
* ``pong``: one game, Pong, on a 2-core CPU: Pong's 6 actions
  (``full_action_space=False``), 8 envs, one update of 32 transitions per 4
  agent steps, 3-step returns, lr 2.5e-4, clipped rewards, the atan
  surrogate, the dendritic gates at a tenth of the other parameters' step
  (``gate_lr_scale``) and a 5 % spike-rate floor on every spiking layer
  (``rate_floor``; without it the advantage stream falls silent,
  docs/design.md section 4). Evaluates greedily over 4 full
  episodes every 50k agent steps. Add ``--time_limit=SECONDS`` to stop by
  wall time (RESULTS.md, "Pong, one task, on the 2-core CPU").
* ``three_games``: ``pong`` on Pong, Breakout and Enduro, 16 envs per game
  (the authors' count), all 18 actions (one network, one Q head): round robin
  in blocks of 25k agent steps; every update learns from all three games'
  replay (``learn_from="all"``: one gradient step of 32 per game every 16
  agent steps, so no game is forgotten while another acts; each game's
  transitions are sampled 6 times on average, against 8 in ``pong``);
  epsilon decays over 300k agent steps (100k per game); greedy evaluation
  over 8 full episodes per game every 250k agent steps. The loop is bound by
  its gradient steps (docs/performance.md, section 1.3): one per 16 agent
  steps runs 2x the agent steps per second of one per 8. Stop it with
  ``--time_limit``.
* ``pong_gpu``: ``pong`` with 32 envs and 5M agent steps, for
  ``scripts/gpu_atari.sh`` (a time limit ends it).
* ``minatar_sweep``: the default of ``experiments/sweep.py --task=minatar``:
  MinAtar breakout, 8 envs, hidden 64, batch 64, 20k agent steps per
  member (a quick sweep; ``minatar`` is the longer setting).
* ``minatar_swap``: the ``minatar`` preset on two tasks that look the same:
  breakout, and breakout with left and right swapped (``action_perms``).
  Only the task context tells them apart. The envs take turns (round robin,
  20k-step blocks) and every update learns from both tasks' replay
  (``learn_from="all"``), so that a network able to tell the tasks apart has
  nothing to forget (RESULTS.md, "MinAtar context swap").
"""

import dataclasses

from mtspark_jax.rl.training import TrainConfig

PRESETS = {
    "cpu": TrainConfig(switch_interval=1000, switch_unit="steps", eval_on_switch=False),
    "paper": TrainConfig(
        num_envs=16, hidden=512, convs="nature", buffer_size=2**20, batch_size=256, warmup_steps=5000,
        target_update=10_000, eps_decay_steps=1_000_000, total_steps=12_000_000, switch_interval=25,
        switch_unit="episodes", chunk_iters=250, eval_every=250_000, eval_episodes=8, eval_max_steps=27000,
        checkpoint_every=500_000,
    ),
    "minatar": TrainConfig(
        backend="minatar", games=("breakout", "space_invaders"), num_envs=8, hidden=128,
        convs="16:3:1", buffer_size=50_000, batch_size=32, lr=1e-3, warmup_steps=2000, target_update=1000,
        eps_decay_steps=60_000, train_every=4, total_steps=120_000, switch_interval=20_000, switch_unit="steps",
        chunk_iters=250, eval_every=20_000, eval_episodes=16, eval_max_steps=1000, eval_noop_max=5, eval_on_switch=True,
        checkpoint_every=1_000_000, keep_checkpoints=1,
    ),
}
PRESETS["pong"] = dataclasses.replace(
    PRESETS["cpu"], games=("Pong",), full_action_space=False, num_envs=8, reward_clip=True, surrogate="atan",
    buffer_size=100_000, batch_size=32, lr=2.5e-4, gate_lr_scale=0.1, rate_floor=0.05, n_step=3, warmup_steps=10_000,
    target_update=2000, eps_end=0.01, eps_decay_steps=100_000, total_steps=1_000_000, switch_interval=10**9,
    eval_every=50_000, eval_episodes=4, eval_max_steps=27000, checkpoint_every=100_000, keep_checkpoints=1)
PRESETS["enduro"] = dataclasses.replace(
    PRESETS["pong"], games=("Enduro",), warmup_steps=5000, eps_decay_steps=30_000, train_every=8,
    total_steps=200_000, eval_every=50_000, eval_episodes=8, checkpoint_every=50_000)
PRESETS["three_games"] = dataclasses.replace(
    PRESETS["pong"], games=("Pong", "Breakout", "Enduro"), full_action_space=True, num_envs=16, switch_interval=25_000,
    switch_unit="steps", learn_from="all", train_every=16, eps_decay_steps=300_000, total_steps=12_000_000,
    eval_every=250_000, eval_episodes=8)
PRESETS["pong_gpu"] = dataclasses.replace(PRESETS["pong"], num_envs=32, total_steps=5_000_000, eval_every=100_000)
PRESETS["minatar_sweep"] = dataclasses.replace(
    TrainConfig(), backend="minatar", games=("breakout",), total_steps=20_000, num_envs=8, convs="16:3:1",
    hidden=64, time_steps=4, batch_size=64, warmup_steps=1000, eps_decay_steps=10_000, buffer_size=20_000,
    chunk_iters=250)
PRESETS["minatar_swap"] = dataclasses.replace(
    PRESETS["minatar"], games=("breakout", "breakout"), action_perms=("id", "0-3-2-1-4-5"), learn_from="all")


DEFAULT_PRESET = "enduro"
"""The preset of ``experiments/train_atari.py`` when neither ``--preset`` nor ``--backend=minatar`` is given."""


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
