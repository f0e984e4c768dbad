"""The multi-task training loop: pure step functions that advance actors, replay and learner.

Data flow (one *iteration* = one env step of every acting task's N envs)::

    obs --net(train=False)--> epsilon-greedy actions --env.send--> (envs step)
        replay.add (the observation's uint8 frame and the action, per env)
        every train_every agent steps per task: replay.sample --> learner.update --> params
    (envs done) --env.recv--> EnvStep --> replay.set_outcome (reward, done flags)
        --> schedule.update (episodes ended, steps, params) --> acting task

The updates run between ``send`` and ``recv``, while EnvPool steps the envs
on its own threads. They sample the same batches as they would after the
step: the step's reward and done flags belong to the newest record, which no
sampleable transition reads (:func:`mtspark_jax.rl.replay.set_outcome`).

``make_train(config, envs) -> Trainer`` returns two pure, un-jitted functions
(callers add ``jit``, ``vmap`` and sharding):

* ``trainer.init(key, env_states, obs) -> TrainState`` (``env_states, obs`` from
  ``[env.reset() for env in envs]``, see :func:`reset_envs`);
* ``trainer.run_chunk(state) -> (state, ChunkLog)``: ``config.chunk_iters``
  iterations in one ``lax.scan``. The host only logs, evaluates and
  checkpoints between chunks.

Each is built from module-level step functions over a static :class:`Loop`
(config, envs, network, update) and the :class:`TrainState`:
:func:`act_all` (epsilon-greedy actions, replay record, env send),
:func:`update_all` (the updates owed, while the envs step),
:func:`observe_all` (env receive, rewards and episode ends) and
:func:`finish` (target sync, schedule, the iteration's log), chained by
:func:`iteration`. Acting and observing each have a part that touches no env
(:func:`choose_all`, :func:`absorb_all`), so that agents sharing one EnvPool
can be vmapped around the pool's step (:mod:`mtspark_jax.rl.atari_sweep`).

Sequential schedules (round robin, adaptive) decide the acting task inside
the scan; the env step of the acting task is chosen with ``lax.switch`` over
the per-task pools (EnvPool's XLA step works inside ``lax.switch``). Paused
tasks keep their emulator state and continue their episode when they come
back. With ``simultaneous`` every task steps at every iteration.

Counters: ``global_step`` counts agent steps (env steps of single envs) over
all tasks; epsilon decays with it; warm-up (random actions, no learning) is
per task (``task_steps``); the target network syncs when ``global_step``
crosses a multiple of ``target_update``. Updates: a task that acted does one
update every ``train_every`` of its agent steps (N envs per iteration); with
``learn_from="all"`` every warmed-up task learns at each update (sequential
schedules), ``"acting"`` (default) only the acting ones; ``update_mode``
``per_task`` = one gradient step per task, ``mixed`` = one step on all their
samples. The target network only changes at a sync, so with ``batch_targets``
(default) an iteration that owes several updates computes the target Q of all
their batches in one forward pass before the first of them (the same batches
and targets as one pass per update, up to float rounding).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from mtspark_jax.init_jit import jit_once
from mtspark_jax.rl import envs as E
from mtspark_jax.rl import learner as L
from mtspark_jax.rl import replay as R
from mtspark_jax.rl import schedules as S
from mtspark_jax.rl.envs import EnvSpec, TaskEnv, check_same_specs
from mtspark_jax.nn.networks import NATURE_CONVS, NoContext, compute_dtype, make_network
from mtspark_jax.nn.spiking import NeuronConfig

Array = jax.Array

AGENTS = ("mtspark_add", "mtspark_ad", "dsqn", "dqn")
BACKENDS = ("atari", "minatar")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; the launchers' flags map one to one onto these fields.

    Defaults are the authors' (docs/design.md section 4) for the algorithm; sizes are small so that a
    run fits a 2-core CPU in minutes (paper values in brackets). ``experiments/configs`` holds the
    presets (``cpu``, ``paper``, ``minatar``, ``pong``, ...).

    Attributes:
      backend: ``atari`` (EnvPool) or ``minatar`` (gymnax MinAtar,
        :mod:`mtspark_jax.rl.minatar`; ``reward_clip``, ``episodic_life``,
        ``noop_max`` and ``max_episode_steps`` are then ignored).
      games: the tasks, one per game, in schedule order (``Pong,Breakout,Enduro``).
      num_envs: envs per task [16].
      reward_clip: clip training rewards to their sign (evaluation reports raw scores).
      episodic_life: end a training episode at every lost life (evaluation plays full games).
      noop_max: up to this many no-op actions at the start of every episode.
      max_episode_steps: agent steps after which an Atari episode is cut (truncated, not terminated).
      action_perms: empty, or one action map per game (``id`` or a ``-``-separated
        permutation such as ``0-3-2-1-4-5``): the task's agent action ``a``
        reaches the env as ``perm[a]`` (:class:`mtspark_jax.rl.envs.PermutedActions`).
        A game may then appear more than once, as tasks that differ only in
        their action map; a mapped task is named ``<game>@<map>``.
      full_action_space: Atari: the 18 actions every game shares (the authors;
        several games in one network need it), or ``False`` for one game on
        its minimal action set (Pong 6).
      agent: ``mtspark_add`` (dendrites and dueling head), ``mtspark_ad``
        (dendrites, one head), ``dsqn`` (spiking, no dendrites) or ``dqn``
        (not spiking).
      time_steps: LIF simulation steps T per decision.
      tau, v_threshold, v_reset: LIF time constant, threshold and reset potential.
      surrogate: surrogate gradient of the spike: ``sigmoid``, ``atan`` or ``fast_sigmoid``.
      surrogate_alpha: the surrogate's slope (0: its default, sigmoid 4, atan 2, fast_sigmoid 25).
      detach_reset: stop the gradient through the reset path (SpikingJelly's ``detach_reset=True``).
      hidden: units of each hidden (dendrite-gated) layer [512].
      convs: the trunk, ``features:kernel:stride`` comma-separated, or
        ``nature`` (32:8:4,64:4:2,64:3:1) [nature].
      dendrites: ``per_neuron`` (one segment per unit and task) or ``layer_shared``.
      kwta: keep only the ``kwta`` largest gated currents of each dendritic
        layer at every time step (0: off; MTSpark_AD/ADD only).
      out_init_scale: MTSpark_AD/ADD: scale of the read-outs' initial weights
        (:class:`mtspark_jax.nn.networks.MTSparkADD`; 1: Flax's default).
      batch_norm: BatchNorm after each convolution of a spiking trunk.
      dtype: compute type of the network's convolutions and dense layers,
        ``float32`` or ``bfloat16`` (mixed precision: parameters, optimiser
        state, membranes, Q and the loss stay float32;
        :class:`mtspark_jax.nn.networks.MTSparkADD`).
      context: ``task`` (one-hot task id; DQN and DSQN ignore it), ``zero``
        (the no-context ablation: an all-zeros context when acting, learning
        and evaluating; :class:`mtspark_jax.nn.networks.NoContext`) or
        ``task_input`` (DQN and DSQN only: the one-hot task id appended to the
        trunk's features).
      total_steps: agent steps (env steps of single envs) over all tasks [12M].
      buffer_size: replay transitions per task [2^20].
      batch_size: transitions per gradient step per task [256].
      lr: Adam's learning rate.
      adam_eps: Adam's epsilon (Optax's 1e-8; Rainbow's Atari setting is 1.5e-4).
      gate_lr_scale: the dendritic gates' step relative to every other
        parameter's (:class:`mtspark_jax.rl.learner.LearnerConfig`).
      optimizer_per_task: one Adam state per task, so that each task's
        gradient step is normalised by its own gradient scale
        (:class:`mtspark_jax.rl.learner.LearnerConfig`; ``per_task`` updates only).
      rate_floor: keep every spiking layer's mean spike rate on a batch above
        this with a quadratic penalty (:func:`mtspark_jax.rl.learner.rate_penalty`; 0: off).
      rate_weight: weight of that penalty.
      gamma: discount factor of the returns.
      n_step: learn from n-step returns (1: one-step Double DQN, the authors'):
        the target is ``sum_j gamma^j r_{t+j} + gamma^k Q(s_{t+k})`` with
        ``k = n_step``, or fewer when the episode ends first
        (:func:`mtspark_jax.rl.replay.n_step_return`).
      max_grad_norm: gradients are clipped to this global norm.
      train_every: one gradient update per this many agent steps of a task.
      warmup_steps: random actions and no learning for a task's first steps [5000].
      target_update: agent steps between target-network syncs [10k].
      eps_start, eps_end, eps_decay_steps: epsilon-greedy, linear from
        ``eps_start`` to ``eps_end`` over ``eps_decay_steps`` agent steps [1M].
      update_mode: ``per_task`` (one gradient step per task, the authors) or
        ``mixed`` (one step on all the tasks' samples).
      learn_from: ``acting`` (only the acting task learns) or ``all`` (every
        warmed-up task learns at each update, with a sequential schedule).
      batch_targets: an iteration that owes several updates computes the
        target Q of all their batches in one forward pass (same result up to
        float rounding; the target network only changes at a sync).
      schedule: ``round_robin`` (MTSpark), ``adaptive`` (SwitchMT) or
        ``simultaneous`` (:mod:`mtspark_jax.rl.schedules`).
      switch_interval, switch_unit: round robin moves to the next task after
        this many ``episodes`` or ``steps`` of the current one.
      min_episodes, switch_window, switch_threshold: adaptive: after at least
        ``min_episodes`` episodes, switch when the mean relative parameter
        change over the last ``switch_window`` episode ends is below
        ``switch_threshold``.
      chunk_iters: loop iterations per compiled chunk, one ``lax.scan``
        (logging, checkpoints and the time limit are checked between chunks).
      eval_every: agent steps between greedy evaluations of every task.
      eval_episodes: full episodes per task and evaluation.
      eval_epsilon: epsilon of the evaluation policy.
      eval_max_steps: agent steps after which an evaluation episode is cut.
      eval_noop_max: every evaluation episode starts with a random number of
        no-op actions (action 0), ``0..eval_noop_max``, drawn per episode
        from the evaluation's key (:func:`mtspark_jax.rl.evaluation.make_evaluator`),
        so that the greedy episodes of games that restart from their seed
        (MinAtar) differ. 0: none (the default; Atari's evaluation pools
        already start with up to ``noop_max`` no-ops). The MinAtar presets use 5:
        in Breakout a ball that starts at a corner still reaches the paddle's row
        after 5 no-ops at one move's distance, so no start is lost before the
        policy acts.
      eval_on_switch: also evaluate at every task switch.
      eval_random: at the end of a run, evaluate the uniform random policy with
        the same protocol, for comparison.
      checkpoint_every: agent steps between Orbax checkpoints.
      keep_checkpoints: checkpoints kept on disk.
      seed: parameters, exploration, replay sampling and env seeds.
      env_seed: seed of the training envs instead of ``seed`` (-1: ``seed``).
        EnvPool seeds env ``j`` of a pool ``pool_seed + j``; an Atari sweep's
        member ``k`` owns envs ``k * num_envs ...`` of one shared pool, so
        its solo twin is the run with its ``seed`` and this ``env_seed``
        (``members.csv`` lists it).
    """

    # Tasks and environments.
    backend: str = "atari"
    games: tuple[str, ...] = ("Pong", "Breakout", "Enduro")
    num_envs: int = 4
    reward_clip: bool = False
    episodic_life: bool = False
    noop_max: int = 30
    max_episode_steps: int = 27000
    action_perms: tuple[str, ...] = ()
    full_action_space: bool = True
    # Network.
    agent: str = "mtspark_add"
    time_steps: int = 4
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float = 0.0
    surrogate: str = "sigmoid"
    surrogate_alpha: float = 0.0
    detach_reset: bool = False
    hidden: int = 64
    convs: str = "8:8:4,16:4:2,16:3:1"
    dendrites: str = "per_neuron"
    kwta: int = 0
    out_init_scale: float = 1.0
    batch_norm: bool = False
    context: str = "task"
    dtype: str = "float32"
    # RL.
    total_steps: int = 12_000
    buffer_size: int = 20_000
    batch_size: int = 16
    lr: float = 1e-4
    adam_eps: float = 1e-8
    optimizer_per_task: bool = False
    gate_lr_scale: float = 1.0
    rate_floor: float = 0.0
    rate_weight: float = 1.0
    gamma: float = 0.99
    n_step: int = 1
    max_grad_norm: float = 10.0
    train_every: int = 4
    warmup_steps: int = 500
    target_update: int = 2000
    eps_start: float = 1.0
    eps_end: float = 0.1
    eps_decay_steps: int = 10_000
    update_mode: str = "per_task"
    learn_from: str = "acting"
    batch_targets: bool = True
    # Schedule.
    schedule: str = "round_robin"
    switch_interval: int = 25
    switch_unit: str = "episodes"
    min_episodes: int = 25
    switch_window: int = 5
    switch_threshold: float = 0.1
    # Loop, evaluation, checkpoints.
    chunk_iters: int = 250
    eval_every: int = 4_000
    eval_episodes: int = 2
    eval_epsilon: float = 0.0
    eval_max_steps: int = 1000
    eval_noop_max: int = 0
    eval_on_switch: bool = True
    eval_random: bool = True
    checkpoint_every: int = 4_000
    keep_checkpoints: int = 3
    seed: int = 0
    env_seed: int = -1

    @property
    def training_env_seed(self) -> int:
        """The training envs' seed: ``env_seed``, or ``seed`` when ``env_seed`` is -1."""
        return self.seed if self.env_seed < 0 else self.env_seed


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of ``dataclasses.asdict(config)`` read back from JSON (lists back to tuples).

    Raises ValueError naming the fields this version does not know.
    """
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}: written by another version of mtspark_jax")
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def updates_owed(iteration, num_envs: int, train_every: int):
    """Gradient updates due at ``iteration`` (0-based): one per ``train_every`` agent steps, ``num_envs`` per iteration.

    Works on Python ints and traced JAX scalars alike.
    """
    return ((iteration + 1) * num_envs) // train_every - (iteration * num_envs) // train_every


def parse_convs(spec: str) -> tuple[tuple[int, int, int], ...]:
    """``"nature"`` or ``"F:K:S,F:K:S,..."`` -> conv triples."""
    if spec == "nature":
        return tuple(NATURE_CONVS)
    try:
        convs = tuple(tuple(int(v) for v in part.split(":")) for part in spec.split(","))
    except ValueError:
        convs = ()
    if not convs or any(len(c) != 3 or min(c) < 1 for c in convs):
        raise ValueError(f"convs must be 'nature' or 'F:K:S,F:K:S,...' with positive ints, got {spec!r}")
    return convs


def neuron_config(c: TrainConfig) -> NeuronConfig:
    if c.surrogate_alpha < 0:
        raise ValueError(f"surrogate_alpha must be > 0 (0: the surrogate's default), got {c.surrogate_alpha}")
    return NeuronConfig(tau=c.tau, v_threshold=c.v_threshold, v_reset=c.v_reset, surrogate=c.surrogate,
                        alpha=c.surrogate_alpha or None, detach_reset=c.detach_reset)


def learner_config(c: TrainConfig) -> L.LearnerConfig:
    return L.LearnerConfig(lr=c.lr, adam_eps=c.adam_eps, gamma=c.gamma, max_grad_norm=c.max_grad_norm,
                           batch_size=c.batch_size, update_mode=c.update_mode, gate_lr_scale=c.gate_lr_scale,
                           optimizer_per_task=c.optimizer_per_task,
                           rate_floor=c.rate_floor, rate_weight=c.rate_weight)


def schedule_config(c: TrainConfig) -> S.ScheduleConfig:
    return S.ScheduleConfig(kind=c.schedule, interval=c.switch_interval, interval_unit=c.switch_unit,
                            min_episodes=c.min_episodes, window=c.switch_window, threshold=c.switch_threshold)


def capacity_per_env(c: TrainConfig) -> int:
    """Replay records per env: ``buffer_size // num_envs`` (buffer_size is per task)."""
    return c.buffer_size // c.num_envs


def validate_config(c: TrainConfig) -> None:
    """Raises ValueError naming the first impossible value (before any work starts)."""
    if c.agent not in AGENTS:
        raise ValueError(f"unknown agent {c.agent!r}; expected one of {list(AGENTS)}")
    if not c.games:
        raise ValueError("games must name at least one game")
    if c.action_perms and len(c.action_perms) != len(c.games):
        raise ValueError(f"action_perms needs one entry per game ({len(c.games)}), got {list(c.action_perms)}")
    positive = ("num_envs", "total_steps", "batch_size", "train_every", "target_update", "chunk_iters",
                "eval_every", "eval_episodes", "eval_max_steps", "checkpoint_every", "keep_checkpoints",
                "hidden", "time_steps", "max_episode_steps", "n_step")
    for name in positive:
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.warmup_steps < 0 or c.eps_decay_steps < 0 or c.noop_max < 0 or c.eval_noop_max < 0:
        raise ValueError("warmup_steps, eps_decay_steps, noop_max and eval_noop_max must be >= 0")
    if c.env_seed < -1:
        raise ValueError(f"env_seed must be >= 0 (or -1: the run's seed), got {c.env_seed}")
    if capacity_per_env(c) < 4 + c.n_step:
        raise ValueError(f"buffer_size {c.buffer_size} is too small for {c.num_envs} envs and n_step {c.n_step}: "
                         f"need >= {(4 + c.n_step) * c.num_envs}")
    for name in ("eps_start", "eps_end", "eval_epsilon"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(c, name)}")
    if c.backend not in BACKENDS:
        raise ValueError(f"unknown backend {c.backend!r}; expected one of {list(BACKENDS)}")
    if c.context not in ("task", "zero", "task_input"):
        raise ValueError(f"context must be 'task', 'zero' or 'task_input', got {c.context!r}")
    if c.context == "task_input" and c.agent not in ("dsqn", "dqn"):
        raise ValueError(f"context='task_input' is for dsqn and dqn (the dendritic agents take the task through "
                         f"their gates: context='task'), not {c.agent}")
    if not 0 <= c.kwta <= c.hidden:
        raise ValueError(f"kwta must be in [0, hidden={c.hidden}] (0: off), got {c.kwta}")
    if c.kwta and c.agent not in ("mtspark_add", "mtspark_ad"):
        raise ValueError(f"kwta applies to the dendritic agents (mtspark_add, mtspark_ad), not {c.agent}")
    if c.backend == "atari" and not c.full_action_space and (len(c.games) > 1 or c.action_perms):
        raise ValueError("full_action_space=False (each game's minimal action set) is for one Atari game without "
                         "action_perms: several games share one network and its 18 actions (set "
                         "full_action_space=True, e.g. --full_action_space, or start from a multi-game preset such as "
                         "three_games)")
    if c.learn_from not in ("acting", "all"):
        raise ValueError(f"learn_from must be 'acting' or 'all', got {c.learn_from!r}")
    parse_convs(c.convs)
    compute_dtype(c.dtype)
    neuron_config(c)
    L.validate_learner_config(learner_config(c))
    S.validate_schedule_config(schedule_config(c))


def build_network(c: TrainConfig, spec: EnvSpec, num_tasks: int):
    """The agent's Q-network for ``num_tasks`` tasks and the env's action space."""
    kw: dict[str, Any] = dict(num_actions=spec.num_actions, num_tasks=num_tasks, hidden=c.hidden,
                              convs=parse_convs(c.convs), dtype=compute_dtype(c.dtype))
    if c.agent != "dqn":
        kw.update(time_steps=c.time_steps, neuron=neuron_config(c), batch_norm=c.batch_norm)
    if c.agent in ("mtspark_add", "mtspark_ad"):
        kw.update(dendrites=c.dendrites, kwta=c.kwta or None, out_init_scale=c.out_init_scale)
    elif c.context == "task_input":
        kw.update(task_input=True)
    net = make_network(c.agent, **kw)
    return NoContext(net) if c.context == "zero" else net


@flax.struct.dataclass
class TrainState:
    """All training state in one pytree (``M`` tasks, ``N`` envs per task).

    Attributes:
      learner: online/target variables, optimiser state.
      replay: stacked per-task buffers.
      env_states: per-task env states (EnvPool handles; not checkpointed).
      obs: current observations ``[M, N, H, W, S*C]`` uint8.
      first, terminal: :class:`EpisodeFlags` of ``obs``, ``[M, N]`` bool.
      ep_return, ep_length: running raw return / length ``[M, N]``.
      schedule: :class:`ScheduleState`.
      task_steps: agent steps per task ``[M]``; ``task_iters``: iterations per task.
      global_step: agent steps over all tasks; ``iteration``: loop iterations.
      rng: PRNG key.
    """

    learner: L.LearnerState
    replay: R.ReplayState
    env_states: Any
    obs: Array
    first: Array
    terminal: Array
    ep_return: Array
    ep_length: Array
    schedule: S.ScheduleState
    task_steps: Array
    global_step: Array
    iteration: Array
    rng: Array


class ChunkLog(NamedTuple):
    """Per-iteration outputs of a chunk (leading ``[K]``)."""

    acted: Array        # [K, M] bool
    actions: Array      # [K, M, N] uint8 (only meaningful where acted)
    ended: Array        # [K, M, N] bool: an episode ended
    ep_return: Array    # [K, M, N] raw return of the ended episodes
    ep_length: Array    # [K, M, N]
    td_loss: Array      # [K] mean over this iteration's updates (nan: none)
    q_mean: Array       # [K]
    num_updates: Array  # [K]
    epsilon: Array      # [K]
    active: Array       # [K]
    switches: Array     # [K]
    global_step: Array  # [K]


class Acted(NamedTuple):
    """What acting hands to the rest of an iteration."""

    k_learn: Array  # key for the iteration's updates
    epsilon: Array  # exploration rate used to act
    acted: Array    # [M] bool, the tasks that acted
    sent: Array     # [len(acting tasks), N] actions sent to the acting tasks' envs


class UpdateStats(NamedTuple):
    """Sums over an iteration's updates."""

    td_loss: Array  # sum of the updates' TD losses
    q_mean: Array   # sum of their mean Q
    count: Array    # number of updates


class Outcome(NamedTuple):
    """What the env step returned, per task and env (``[M, N]``; zeros for tasks that did not act)."""

    actions: Array    # uint8 actions taken
    ended: Array      # bool: an episode ended
    ep_return: Array  # raw return of the ended episodes
    ep_length: Array  # length of the ended episodes


class Loop(NamedTuple):
    """What every step of the loop reads and nothing changes (static under ``jit``).

    Built by :func:`make_loop`; the step functions below take it first.
    """

    config: TrainConfig
    envs: tuple[TaskEnv, ...]
    spec: EnvSpec
    net: Any
    optimizer: Any
    update: Callable  # (LearnerState, Batch, q_target | None) -> (LearnerState, LossInfo)
    schedule: S.ScheduleConfig

    @property
    def num_tasks(self) -> int:
        return len(self.envs)

    @property
    def num_envs(self) -> int:
        return self.spec.num_envs

    @property
    def sequential(self) -> bool:
        """One task acts at a time (round robin, adaptive)."""
        return self.schedule.kind != "simultaneous"


class Trainer(NamedTuple):
    """:func:`make_train`'s result: the static parts and two pure, un-jitted functions.

    ``init(key, env_states, obs) -> TrainState`` and ``run_chunk(state) ->
    (state, ChunkLog)``; callers add ``jit`` (donating the state to
    ``run_chunk``), ``vmap`` or sharding.
    """

    config: TrainConfig
    net: Any
    spec: EnvSpec
    num_tasks: int
    init: Callable[[Array, Sequence[Any], Array], TrainState]
    run_chunk: Callable[[TrainState], tuple[TrainState, ChunkLog]]
    optimizer: Any


def reset_envs(envs: Sequence[TaskEnv]) -> tuple[tuple, Array]:
    """Resets every task (host side): ``(env_states, obs [M, N, H, W, S*C])``."""
    states, obs = zip(*[env.reset() for env in envs])
    return tuple(states), jnp.stack(obs)


def make_loop(config: TrainConfig, envs: Sequence[TaskEnv]) -> Loop:
    """Validates ``config`` and builds the network, optimiser and update for ``envs`` (one per task)."""
    validate_config(config)
    spec = check_same_specs(envs)
    net = build_network(config, spec, len(envs))
    lc = learner_config(config)
    optimizer = L.make_optimizer(lc)
    return Loop(config, tuple(envs), spec, net, optimizer, L.make_update(net, optimizer, lc),
                schedule_config(config))


def init_state(loop: Loop, key: Array, env_states: Sequence[Any], obs: Array) -> TrainState:
    """Fresh training state: network and learner, empty replay, schedule at its first task.

    ``env_states, obs`` from :func:`reset_envs` (``obs [M, N, H, W, S*C]`` uint8).
    """
    c, m, n = loop.config, loop.num_tasks, loop.num_envs
    k_net, k_run = jax.random.split(key)
    variables = loop.net.init(k_net, obs[0], jnp.zeros((n,), jnp.int32), train=False)
    variables = jax.tree.map(jnp.asarray, dict(variables))
    zeros_b = jnp.zeros((m, n), bool)
    return strongly_typed(TrainState(
        learner=L.init_learner(variables, loop.optimizer, m if c.optimizer_per_task else 0),
        replay=R.init_replay(m, capacity_per_env(c), n, loop.spec.frame_shape, loop.spec.stack,
                             loop.spec.num_actions),
        env_states=tuple(env_states), obs=obs, first=jnp.ones((m, n), bool), terminal=zeros_b,
        ep_return=jnp.zeros((m, n), jnp.float32), ep_length=jnp.zeros((m, n), jnp.int32),
        schedule=S.init_schedule(loop.schedule, variables["params"]),
        task_steps=jnp.zeros((m,), jnp.int32), global_step=jnp.zeros((), jnp.int32),
        iteration=jnp.zeros((), jnp.int32), rng=k_run,
    ))


def strongly_typed(tree: Any) -> Any:
    """``tree`` with every weakly typed array made strongly typed (same values and dtypes).

    Env resets can hand back weakly typed scalars (gymnax's MinAtar state),
    and ``run_chunk`` returns them strongly typed; a state that mixed the two
    would make the second chunk compile ``run_chunk`` again.
    """
    return jax.tree.map(lambda x: jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x, tree)


def distinct_buffers(state: TrainState) -> TrainState:
    """A copy of every small leaf, so that no two leaves share a device buffer.

    ``jit`` may hand back one buffer for equal outputs, and a jitted
    ``run_chunk`` that donates its state cannot donate a buffer twice. The big
    replay arrays are distinct already and are not copied.
    """
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if x.size < 2**20 else x, state)


# ---------------------------------------------------------------------------
# The env step of one task, chosen statically or by a traced task index.

def _on_task(branches: Sequence[Callable], task, *args):
    """``branches[task](*args)``: called directly for a static task, by ``lax.switch`` for a traced one."""
    return branches[task](*args) if isinstance(task, int) else jax.lax.switch(task, branches, *args)


def env_send(loop: Loop, env_states: tuple, task, actions: Array) -> tuple:
    """Starts task ``task``'s env step with ``actions [N]``; the other tasks' states pass through."""
    def branch(i):
        def f(states, a):
            return tuple(E.send(loop.envs[i], states[i], a) if j == i else states[j] for j in range(len(states)))
        return f
    return _on_task([branch(i) for i in range(loop.num_tasks)], task, env_states, actions)


def env_recv(loop: Loop, env_states: tuple, task, actions: Array) -> tuple[tuple, E.EnvStep]:
    """Completes task ``task``'s env step. Returns ``(env_states, EnvStep)``."""
    def branch(i):
        def f(states, a):
            new, out = E.recv(loop.envs[i], states[i], a)
            return tuple(new if j == i else states[j] for j in range(len(states))), out
        return f
    return _on_task([branch(i) for i in range(loop.num_tasks)], task, env_states, actions)


# ---------------------------------------------------------------------------
# Acting and storing.

def acting_tasks(loop: Loop, state: TrainState) -> list:
    """The tasks that act this iteration: the schedule's active one (traced), or all."""
    return [state.schedule.active] if loop.sequential else list(range(loop.num_tasks))


def choose(loop: Loop, state: TrainState, task, key: Array, epsilon: Array) -> tuple[TrainState, Array]:
    """Epsilon-greedy actions for task ``task`` (static int or traced scalar), and their replay record.

    Stores the record of the observation acted on (its reward and done flags
    follow in :func:`absorb`). Touches no env, so it can be vmapped over
    agents that share one pool (:mod:`mtspark_jax.rl.atari_sweep`). Returns
    ``(state, actions [N])``.
    """
    c, n = loop.config, loop.num_envs
    obs = state.obs[task]
    q = loop.net.apply(state.learner.variables, obs, jnp.full((n,), task, jnp.int32), train=False).q
    eps = jnp.where(state.task_steps[task] < c.warmup_steps, 1.0, epsilon)
    actions = L.epsilon_greedy(key, q, eps)
    flags = R.EpisodeFlags(state.first[task], state.terminal[task])
    none = jnp.zeros((n,), bool)
    frame = obs[..., -loop.spec.frame_shape[-1]:]
    rep = R.add(state.replay, task, frame, actions, jnp.zeros((n,), jnp.float32), none, none,
                flags.first, ~flags.terminal)
    return state.replace(replay=rep, task_steps=state.task_steps.at[task].add(n)), actions


def act(loop: Loop, state: TrainState, task, key: Array, epsilon: Array) -> tuple[TrainState, Array]:
    """:func:`choose`, then starts task ``task``'s env step. Returns ``(state, actions [N])``."""
    state, actions = choose(loop, state, task, key, epsilon)
    return state.replace(env_states=env_send(loop, state.env_states, task, actions)), actions


def absorb(loop: Loop, state: TrainState, task, actions: Array, out: E.EnvStep) -> tuple[TrainState, Outcome]:
    """Task ``task``'s env step result ``out`` (``[N]`` fields): replay outcome, observations,
    episode flags and returns. Touches no env. Returns ``(state, Outcome)`` with ``[N]`` fields."""
    flags = R.EpisodeFlags(state.first[task], state.terminal[task])
    rep = R.set_outcome(state.replay, task, out.reward, out.terminated, out.truncated)
    new_flags = R.next_flags(flags, out.terminated, out.truncated)
    ended = new_flags.terminal
    ret = state.ep_return[task] + out.raw_reward
    length = state.ep_length[task] + (~flags.terminal).astype(jnp.int32)
    state = state.replace(
        replay=rep,
        obs=state.obs.at[task].set(out.obs),
        first=state.first.at[task].set(new_flags.first),
        terminal=state.terminal.at[task].set(new_flags.terminal),
        ep_return=state.ep_return.at[task].set(jnp.where(ended, 0.0, ret)),
        ep_length=state.ep_length.at[task].set(jnp.where(ended, 0, length)),
    )
    return state, Outcome(actions.astype(jnp.uint8), ended, jnp.where(ended, ret, 0.0), jnp.where(ended, length, 0))


def observe(loop: Loop, state: TrainState, task, actions: Array) -> tuple[TrainState, Outcome]:
    """Completes task ``task``'s env step started by :func:`act`, then :func:`absorb`."""
    env_states, out = env_recv(loop, state.env_states, task, actions)
    return absorb(loop, state.replace(env_states=env_states), task, actions, out)


def _each_acting(loop: Loop, state: TrainState, pick: Callable) -> tuple[TrainState, Acted]:
    """Draws this iteration's keys and epsilon, then ``pick(state, task, key, epsilon)`` for every
    acting task in turn; returns the state and the :class:`Acted` of their actions."""
    c = loop.config
    rng, k_act, k_learn = jax.random.split(state.rng, 3)
    state = state.replace(rng=rng)
    epsilon = L.linear_epsilon(state.global_step, c.eps_start, c.eps_end, c.eps_decay_steps)
    acted = S.acting_mask(loop.schedule, state.schedule, loop.num_tasks)
    keys = jax.random.split(k_act, loop.num_tasks)
    sent = []
    for j, task in enumerate(acting_tasks(loop, state)):
        state, a = pick(state, task, keys[j], epsilon)
        sent.append(a)
    return state, Acted(k_learn, epsilon, acted, jnp.stack(sent))


def choose_all(loop: Loop, state: TrainState) -> tuple[TrainState, Acted]:
    """Every acting task's actions and replay record (:func:`choose`); no env is touched."""
    return _each_acting(loop, state, functools.partial(choose, loop))


def act_all(loop: Loop, state: TrainState) -> tuple[TrainState, Acted]:
    """Every acting task acts (:func:`act`): its envs start stepping while the next task chooses."""
    return _each_acting(loop, state, functools.partial(act, loop))


def absorb_all(loop: Loop, state: TrainState, acted: Acted, steps: Sequence[E.EnvStep]) -> tuple[TrainState, Outcome]:
    """Every acting task's env step result (``steps``, one per :func:`acting_tasks` entry) via
    :func:`absorb`. Returns the ``[M, N]`` :class:`Outcome`."""
    m, n = loop.num_tasks, loop.num_envs
    out = Outcome(jnp.zeros((m, n), jnp.uint8), jnp.zeros((m, n), bool), jnp.zeros((m, n), jnp.float32),
                  jnp.zeros((m, n), jnp.int32))
    for j, task in enumerate(acting_tasks(loop, state)):
        state, o = absorb(loop, state, task, acted.sent[j], steps[j])
        out = jax.tree.map(lambda whole, row: whole.at[task].set(row), out, o)
    return state, out


def observe_all(loop: Loop, state: TrainState, acted: Acted) -> tuple[TrainState, Outcome]:
    """Every acting task's env step completes (:func:`absorb_all`). Returns the ``[M, N]`` :class:`Outcome`."""
    env_states, steps = state.env_states, []
    for j, task in enumerate(acting_tasks(loop, state)):
        env_states, o = env_recv(loop, env_states, task, acted.sent[j])
        steps.append(o)
    return absorb_all(loop, state.replace(env_states=env_states), acted, steps)


# ---------------------------------------------------------------------------
# Learning.

def learning_tasks(loop: Loop, state: TrainState) -> list:
    """The tasks an update samples: the schedule's active one (traced), or all."""
    if loop.sequential and loop.config.learn_from == "acting":
        return [state.schedule.active]  # one traced task: the network is compiled once
    return list(range(loop.num_tasks))


def draw(loop: Loop, state: TrainState, key: Array) -> list[R.Batch]:
    """One update's batches, one per task of :func:`learning_tasks`."""
    c = loop.config
    tasks = learning_tasks(loop, state)
    keys = jax.random.split(key, len(tasks))
    return [R.sample(state.replay, t, keys[j], c.batch_size, n_step=c.n_step, gamma=c.gamma)
            for j, t in enumerate(tasks)]


def ready_tasks(loop: Loop, state: TrainState, learn_mask: Array) -> list[Array]:
    """Per task of :func:`learning_tasks`: whether it learns (``[]`` bool scalars)."""
    return [learn_mask[t] & (state.task_steps[t] >= loop.config.warmup_steps) for t in learning_tasks(loop, state)]


def batched_targets(loop: Loop, state: TrainState, drawn: list[list[R.Batch]]) -> list[list[Array]]:
    """The target network's Q for every batch of ``drawn`` (a list of :func:`draw` lists) in one pass.

    The target network does not change between target syncs, so an
    iteration's updates can share one forward pass of ``U * tasks * B``
    samples instead of one per update (a shorter chain of small kernels on an
    accelerator). Returns ``drawn``'s nesting with ``[B, A]`` leaves.
    """
    flat = [b for batches in drawn for b in batches]
    next_obs = jnp.concatenate([b.next_obs for b in flat])
    task = jnp.concatenate([b.task for b in flat])
    q = L.target_q(loop.net, state.learner.target_variables, next_obs, task)
    parts = iter(jnp.split(q, len(flat)))
    return [[next(parts) for _ in batches] for batches in drawn]


def learn(loop: Loop, lstate: L.LearnerState, state: TrainState, batches: list[R.Batch], q_targets: list,
          learn_mask: Array) -> tuple[L.LearnerState, UpdateStats]:
    """One update: ``per_task`` (a gradient step per learning task) or ``mixed`` (one step).

    ``batches`` from :func:`draw`; ``q_targets`` their target Q from
    :func:`batched_targets`, or a None per batch (each step computes its
    own). A task still warming up skips its step (``lax.cond``). Only the
    learner state is carried; the replay is read from ``state``.
    """
    c = loop.config
    ready = ready_tasks(loop, state, learn_mask)
    zero = L.LossInfo(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    stats = UpdateStats(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    if c.update_mode == "mixed" and len(batches) > 1:
        batch = jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)
        weights = jnp.concatenate([jnp.full((c.batch_size,), r, jnp.float32) for r in ready])
        batch = batch._replace(mask=batch.mask * weights)
        q_target = None if q_targets[0] is None else jnp.concatenate(q_targets)
        batches, q_targets, ready = [batch], [q_target], [jnp.stack(ready).any()]
    for batch, q_target, ok in zip(batches, q_targets, ready):
        lstate, info = jax.lax.cond(ok, lambda ls, b=batch, qt=q_target: loop.update(ls, b, qt),
                                    lambda ls: (ls, zero), lstate)
        stats = UpdateStats(stats.td_loss + jnp.where(ok, info.td_loss, 0.0),
                            stats.q_mean + jnp.where(ok, info.q_mean, 0.0), stats.count + ok.astype(jnp.float32))
    return lstate, stats


def _add_stats(a: UpdateStats, b: UpdateStats) -> UpdateStats:
    return UpdateStats(*(x + y for x, y in zip(a, b)))


def update_all(loop: Loop, state: TrainState, acted: Acted) -> tuple[TrainState, UpdateStats]:
    """The updates owed for this iteration: one per ``train_every`` agent steps of an acting task.

    When ``num_envs`` is a multiple of ``train_every`` every iteration owes
    the same number, and the updates are unrolled with their batches drawn
    first (with ``batch_targets``, their target Q in one forward pass);
    otherwise a ``fori_loop`` runs the traced number owed.
    """
    c, n = loop.config, loop.num_envs
    learn_mask = acted.acted if c.learn_from == "acting" else jnp.ones((loop.num_tasks,), bool)
    none = UpdateStats(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    if n % c.train_every == 0:
        count = n // c.train_every
        keys, key = [], acted.k_learn
        for _ in range(count):
            key, k = jax.random.split(key)
            keys.append(k)
        drawn = [draw(loop, state, k) for k in keys]
        if c.batch_targets and count > 1:  # nothing to compute while every learning task is warming up
            nothing = [[jnp.zeros((c.batch_size, loop.spec.num_actions)) for _ in b] for b in drawn]
            q_targets = jax.lax.cond(jnp.stack(ready_tasks(loop, state, learn_mask)).any(),
                                     lambda: batched_targets(loop, state, drawn), lambda: nothing)
        else:
            q_targets = [[None] * len(b) for b in drawn]
        lstate, stats = state.learner, none
        for batches, qt in zip(drawn, q_targets):
            lstate, s = learn(loop, lstate, state, batches, qt, learn_mask)
            stats = _add_stats(stats, s)
    else:
        def body(_, carry):
            lstate, stats, key = carry
            key, k = jax.random.split(key)
            batches = draw(loop, state, k)
            lstate, s = learn(loop, lstate, state, batches, [None] * len(batches), learn_mask)
            return lstate, _add_stats(stats, s), key

        owed = updates_owed(state.iteration, n, c.train_every)
        lstate, stats, _ = jax.lax.fori_loop(0, owed, body, (state.learner, none, acted.k_learn))
    return state.replace(learner=lstate), stats


def finish(loop: Loop, state: TrainState, acted: Acted, stats: UpdateStats,
           outcome: Outcome) -> tuple[TrainState, ChunkLog]:
    """After the updates and the env step: target sync, schedule, counters and the iteration's log."""
    c, n = loop.config, loop.num_envs
    old_gs = state.global_step
    new_gs = old_gs + n * acted.acted.sum().astype(jnp.int32)
    lstate = L.sync_target(state.learner, (new_gs // c.target_update) > (old_gs // c.target_update))
    active = state.schedule.active
    sched = S.update_schedule(loop.schedule, state.schedule, loop.num_tasks,
                              outcome.ended[active].sum().astype(jnp.int32), jnp.int32(n), lstate.variables["params"])
    state = state.replace(learner=lstate, schedule=sched, global_step=new_gs, iteration=state.iteration + 1)
    mean = lambda total: jnp.where(stats.count > 0, total / jnp.maximum(stats.count, 1), jnp.nan)  # noqa: E731
    log = ChunkLog(
        acted=acted.acted, actions=outcome.actions, ended=outcome.ended, ep_return=outcome.ep_return,
        ep_length=outcome.ep_length, td_loss=mean(stats.td_loss), q_mean=mean(stats.q_mean),
        num_updates=stats.count, epsilon=acted.epsilon, active=active, switches=sched.switches, global_step=new_gs,
    )
    return state, log


def iteration(loop: Loop, state: TrainState) -> tuple[TrainState, ChunkLog]:
    """One iteration: act, learn while EnvPool's threads step the envs, observe, finish.

    The barriers only order the work: the updates read the replay after the
    envs were sent their actions, and the envs' results are received after
    the updates. The updates sample the same batches either way: the step's
    reward and done flags belong to the newest record, which no sampleable
    transition reads (:func:`mtspark_jax.rl.replay.set_outcome`).
    """
    state, acted = act_all(loop, state)
    env_states, count = jax.lax.optimization_barrier((state.env_states, state.replay.count))
    state = state.replace(env_states=env_states, replay=state.replay.replace(count=count))
    state, stats = update_all(loop, state, acted)
    learner, env_states = jax.lax.optimization_barrier((state.learner, state.env_states))
    state = state.replace(learner=learner, env_states=env_states)
    state, outcome = observe_all(loop, state, acted)
    return finish(loop, state, acted, stats, outcome)


def run_chunk(loop: Loop, state: TrainState) -> tuple[TrainState, ChunkLog]:
    """``config.chunk_iters`` iterations in one ``lax.scan``; the log has a leading ``[K]`` axis."""
    return jax.lax.scan(lambda s, _: iteration(loop, s), state, None, length=loop.config.chunk_iters)


def make_train(config: TrainConfig, envs: Sequence[TaskEnv]) -> Trainer:
    """The training functions for ``envs`` (one :class:`TaskEnv` per task), pure and un-jitted.

    The host loop (:func:`mtspark_jax.rl.runner.train_and_evaluate`) jits
    ``run_chunk`` with the state donated; :class:`mtspark_jax.rl.minatar_sweep.MinAtarSweep`
    vmaps both over seeds.
    """
    loop = make_loop(config, envs)
    return Trainer(config, loop.net, loop.spec, loop.num_tasks, functools.partial(init_state, loop),
                   functools.partial(run_chunk, loop), loop.optimizer)


def jitted(trainer: Trainer) -> Trainer:
    """``trainer`` with ``init`` and ``run_chunk`` jitted for a host loop on one device.

    ``run_chunk`` donates its state (the replay buffers are updated in
    place); ``init``'s state has a buffer of its own for every leaf
    (:func:`distinct_buffers`), as donation needs.
    """
    init = jit_once(trainer.init)
    return trainer._replace(init=lambda key, env_states, obs: distinct_buffers(init(key, env_states, obs)),
                            run_chunk=jax.jit(trainer.run_chunk, donate_argnums=0))
