"""The multi-task training loop: one jitted function advances actors, replay and learner.

Data flow (one *iteration* = one env step of every acting task's N envs)::

    obs --net(train=False)--> epsilon-greedy actions --env.send--> (envs step)
        replay.add (the observation's uint8 frame and the action, per env)
        every train_every agent steps per task: replay.sample --> learner.update --> params
    (envs done) --env.recv--> EnvStep --> replay.set_outcome (reward, done flags)
        --> schedule.update (episodes ended, steps, params) --> acting task

In the scan loop (the default) the updates run between ``send`` and
``recv``, while EnvPool steps the envs on its own threads; the python loop
completes the step before the updates. Both sample exactly the same batches:
the step's reward and done flags belong to the newest record, which no
sampleable transition reads (:func:`mtspark_jax.replay.set_outcome`).

``make_train(config, envs) -> Trainer``:

* ``trainer.init(key, env_states, obs) -> TrainState`` (``env_states, obs`` from
  ``[env.reset() for env in envs]``, see :func:`reset_envs`);
* ``trainer.run_chunk(state) -> (state, ChunkLog)``: ``config.chunk_iters``
  iterations in one ``lax.scan`` under ``jit`` (state donated). The host only
  logs, evaluates and checkpoints between chunks. ``loop="auto"`` (default)
  is that scan on every backend; ``loop="python"`` calls each iteration from
  Python as two jitted halves (acting and the env step, with EnvPool inside
  ``jit``; the updates and bookkeeping). The python loop was the CPU default
  while XLA:CPU ran the gradient convolutions of a loop body as naive loops
  (an MTSpark_ADD update 24x slower inside ``lax.scan`` or ``lax.cond``);
  :func:`mtspark_jax.ops.conv_nhwc` writes them in the layout XLA's fast
  kernel takes, and the scan loop then ran the ``cpu`` preset 1.31-1.47x as
  fast as the host loop, the python loop about 1.0x (docs/performance.md,
  section 2.8).

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

from mtspark_jax import envs as E
from mtspark_jax import learner as L
from mtspark_jax import replay as R
from mtspark_jax import schedules as S
from mtspark_jax.envs import EnvSpec, TaskEnv, check_same_specs
from mtspark_jax.networks import NATURE_CONVS, NoContext, make_network
from mtspark_jax.spiking import NeuronConfig

Array = jax.Array

AGENTS = ("mtspark_add", "mtspark_ad", "dsqn", "dqn")
BACKENDS = ("atari", "minatar")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; the launcher's flags map one to one onto these fields.

    Defaults are the authors' (docs/design.md section 4) for the algorithm; SIZES are small so that a
    run fits this 2-core CPU in minutes (paper values in brackets):
    ``num_envs`` 4, ``buffer_size`` 20k [2^20], ``batch_size`` 16 [256-1024],
    ``hidden`` 64 [512], ``convs`` quarter-width 8/16/16 filters [nature
    32/64/64], ``warmup_steps`` 500 [5000], ``target_update`` 2000
    [10k-25k], ``eps_decay_steps`` 10k [1M], ``total_steps`` 12k [12M].
    ``experiments/configs`` holds the ``cpu``, ``paper`` and ``minatar`` presets.

    ``backend``: ``atari`` (EnvPool; ``reward_clip``, ``episodic_life``,
    ``noop_max`` and ``max_episode_steps`` apply) or ``minatar`` (gymnax
    MinAtar, :mod:`mtspark_jax.minatar`; those four fields are ignored).
    ``action_perms``: empty, or one action map per game (``id`` or a
    ``-``-separated permutation such as ``0-3-2-1-4-5``, MinAtar's left and
    right swapped): the task's agent action ``a`` reaches the env as
    ``perm[a]`` (:class:`mtspark_jax.envs.PermutedActions`). A game may then
    appear more than once, as tasks that look the same and differ only in
    their action map; a mapped task is named ``<game>@<map>``.
    ``n_step``: learn from n-step returns (``1``: one-step Double DQN, the
    authors'): the target is ``sum_j gamma^j r_{t+j} + gamma^k Q(s_{t+k})``
    with ``k = n_step``, or fewer when the episode ends first
    (:func:`mtspark_jax.replay.n_step_return`).
    ``adam_eps``: Adam's epsilon (Optax's 1e-8 by default; Rainbow's Atari
    setting is 1.5e-4, which shrinks the steps of parameters whose gradients
    are that small or smaller).
    ``gate_lr_scale``: the dendritic gates' step size relative to the other
    parameters' (:class:`mtspark_jax.learner.LearnerConfig`).
    ``rate_floor``, ``rate_weight``: keep every spiking layer's mean rate on a
    batch above ``rate_floor`` with a quadratic penalty
    (:func:`mtspark_jax.learner.rate_penalty`; 0: off).
    ``full_action_space`` (Atari): the 18 actions every game shares (the
    authors; a network over several games needs it), or False for one game
    on its minimal action set (Pong 6: fewer outputs to learn).
    ``eval_random``: at the end of a run, evaluate the uniform random policy
    with the same protocol, for comparison.
    ``out_init_scale`` (MTSpark_AD/ADD): scale of the read-outs' initial
    weights (:class:`mtspark_jax.networks.MTSparkADD`; 1: Flax's default).
    ``kwta``: keep only the ``kwta`` largest gated currents of each dendritic
    layer at every time step (0: off; MTSpark_AD/ADD only).
    ``context``: ``task`` (one-hot task id; DQN and DSQN ignore it),
    ``zero`` (the no-context ablation: an all-zeros ``[B, num_tasks]``
    context when acting, learning and evaluating;
    :class:`mtspark_jax.networks.NoContext`) or ``task_input`` (DQN and DSQN
    only: the one-hot task id appended to the trunk's features).
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
    detach_reset: bool = False
    hidden: int = 64
    convs: str = "8:8:4,16:4:2,16:3:1"
    dendrites: str = "per_neuron"
    kwta: int = 0
    out_init_scale: float = 1.0
    batch_norm: bool = False
    context: str = "task"
    # RL.
    total_steps: int = 12_000
    buffer_size: int = 20_000
    batch_size: int = 16
    lr: float = 1e-4
    adam_eps: float = 1e-8
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
    loop: str = "auto"
    eval_every: int = 4_000
    eval_episodes: int = 2
    eval_epsilon: float = 0.0
    eval_max_steps: int = 1000
    eval_on_switch: bool = True
    eval_random: bool = True
    checkpoint_every: int = 4_000
    keep_checkpoints: int = 3
    seed: int = 0


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
    return NeuronConfig(tau=c.tau, v_threshold=c.v_threshold, v_reset=c.v_reset, surrogate=c.surrogate,
                        detach_reset=c.detach_reset)


def learner_config(c: TrainConfig) -> L.LearnerConfig:
    return L.LearnerConfig(lr=c.lr, adam_eps=c.adam_eps, gamma=c.gamma, max_grad_norm=c.max_grad_norm,
                           batch_size=c.batch_size, update_mode=c.update_mode, gate_lr_scale=c.gate_lr_scale,
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
    if c.warmup_steps < 0 or c.eps_decay_steps < 0 or c.noop_max < 0:
        raise ValueError("warmup_steps, eps_decay_steps and noop_max must be >= 0")
    if capacity_per_env(c) < 4 + c.n_step:
        raise ValueError(f"buffer_size {c.buffer_size} is too small for {c.num_envs} envs and n_step {c.n_step}: "
                         f"need >= {(4 + c.n_step) * c.num_envs}")
    for name in ("eps_start", "eps_end", "eval_epsilon"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(c, name)}")
    if c.loop not in ("auto", "scan", "python"):
        raise ValueError(f"loop must be 'auto', 'scan' or 'python', got {c.loop!r}")
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
                         "action_perms: several games share one network and its 18 actions")
    if c.learn_from not in ("acting", "all"):
        raise ValueError(f"learn_from must be 'acting' or 'all', got {c.learn_from!r}")
    parse_convs(c.convs)
    neuron_config(c)
    L.validate_learner_config(learner_config(c))
    S.validate_schedule_config(schedule_config(c))


def build_network(c: TrainConfig, spec: EnvSpec, num_tasks: int):
    """The agent's Q-network for ``num_tasks`` tasks and the env's action space."""
    kw: dict[str, Any] = dict(num_actions=spec.num_actions, num_tasks=num_tasks, hidden=c.hidden,
                              convs=parse_convs(c.convs))
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


class _Acted(NamedTuple):
    """What the first part of an iteration hands to the later parts."""

    k_learn: Array  # key for the iteration's updates
    epsilon: Array  # exploration rate used to act
    acted: Array  # [M] bool, the tasks that acted
    sent: Array  # [len(acting tasks), N] actions sent to the acting tasks' envs


class Trainer(NamedTuple):
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


def make_train(config: TrainConfig, envs: Sequence[TaskEnv]) -> Trainer:
    """Builds the jitted training chunk for ``envs`` (one :class:`TaskEnv` per task)."""
    validate_config(config)
    c = config
    spec = check_same_specs(envs)
    m, n = len(envs), spec.num_envs
    fc = spec.frame_shape[-1]
    net = build_network(c, spec, m)
    lc = learner_config(c)
    sc = schedule_config(c)
    optimizer = L.make_optimizer(lc)
    update = L.make_update(net, optimizer, lc)
    sequential = sc.kind != "simultaneous"

    @jax.jit
    def _init(key: Array, obs: Array) -> TrainState:
        k_net, k_run = jax.random.split(key)
        variables = net.init(k_net, obs[0], jnp.zeros((n,), jnp.int32), train=False)
        variables = jax.tree.map(jnp.asarray, dict(variables))
        lstate = L.init_learner(variables, optimizer)
        rep = R.init_replay(m, capacity_per_env(c), n, spec.frame_shape, spec.stack, spec.num_actions)
        zeros_b = jnp.zeros((m, n), bool)
        state = TrainState(
            learner=lstate, replay=rep, env_states=None, obs=obs,
            first=jnp.ones((m, n), bool), terminal=zeros_b,
            ep_return=jnp.zeros((m, n), jnp.float32), ep_length=jnp.zeros((m, n), jnp.int32),
            schedule=S.init_schedule(sc, variables["params"]),
            task_steps=jnp.zeros((m,), jnp.int32), global_step=jnp.zeros((), jnp.int32),
            iteration=jnp.zeros((), jnp.int32), rng=k_run,
        )
        return state

    def init(key: Array, env_states: Sequence[Any], obs: Array) -> TrainState:
        """Fresh state (jitted: one compilation instead of many eager ops)."""
        state = _init(key, obs)
        # Distinct buffers for every leaf (run_chunk donates its input); the big
        # replay arrays are distinct already and are not copied.
        state = jax.tree.map(lambda x: jnp.array(x, copy=True) if x.size < 2**20 else x, state)
        return state.replace(env_states=tuple(env_states))

    def send_branch(i: int):
        def f(env_states, actions):
            new = E.send(envs[i], env_states[i], actions)
            return tuple(new if j == i else env_states[j] for j in range(m))
        return f

    def recv_branch(i: int):
        def f(env_states, actions):
            new, out = E.recv(envs[i], env_states[i], actions)
            return tuple(new if j == i else env_states[j] for j in range(m)), out
        return f

    sends = [send_branch(i) for i in range(m)]
    recvs = [recv_branch(i) for i in range(m)]

    def on_task(branches, task, *args):
        """``branches[task](*args)``: called directly for a static task, by ``lax.switch`` for a traced one."""
        return branches[task](*args) if isinstance(task, int) else jax.lax.switch(task, branches, *args)

    def act_send(state: TrainState, task, key: Array, epsilon: Array) -> tuple[TrainState, Array]:
        """Acts in task ``task`` (static int or traced scalar) and starts its envs' step.

        Writes the replay record of the observation acted on (its reward and
        done flags follow at :func:`act_recv`). Returns ``(state, actions [N])``.
        """
        obs = state.obs[task]
        q = net.apply(state.learner.variables, obs, jnp.full((n,), task, jnp.int32), train=False).q
        eps = jnp.where(state.task_steps[task] < c.warmup_steps, 1.0, epsilon)
        actions = L.epsilon_greedy(key, q, eps)
        env_states = on_task(sends, task, state.env_states, actions)
        flags = R.EpisodeFlags(state.first[task], state.terminal[task])
        none = jnp.zeros((n,), bool)
        rep = R.add(state.replay, task, obs[..., -fc:], actions, jnp.zeros((n,), jnp.float32), none, none,
                    flags.first, ~flags.terminal)
        state = state.replace(env_states=env_states, replay=rep, task_steps=state.task_steps.at[task].add(n))
        return state, actions

    def act_recv(state: TrainState, task, actions: Array):
        """Completes task ``task``'s env step started by :func:`act_send`. Returns (state, log pieces)."""
        env_states, out = on_task(recvs, task, state.env_states, actions)
        flags = R.EpisodeFlags(state.first[task], state.terminal[task])
        rep = R.set_outcome(state.replay, task, out.reward, out.terminated, out.truncated)
        new_flags = R.next_flags(flags, out.terminated, out.truncated)
        ended = new_flags.terminal
        ret = state.ep_return[task] + out.raw_reward
        length = state.ep_length[task] + (~flags.terminal).astype(jnp.int32)
        state = state.replace(
            env_states=env_states, replay=rep,
            obs=state.obs.at[task].set(out.obs),
            first=state.first.at[task].set(new_flags.first),
            terminal=state.terminal.at[task].set(new_flags.terminal),
            ep_return=state.ep_return.at[task].set(jnp.where(ended, 0.0, ret)),
            ep_length=state.ep_length.at[task].set(jnp.where(ended, 0, length)),
        )
        return state, actions.astype(jnp.uint8), ended, jnp.where(ended, ret, 0.0), jnp.where(ended, length, 0)

    def learning_tasks(state: TrainState) -> list:
        """The tasks an update samples: the schedule's active one (traced), or all."""
        if sequential and c.learn_from == "acting":
            return [state.schedule.active]  # one traced task: the network is compiled once
        return list(range(m))

    def draw(state: TrainState, key: Array) -> list:
        """One update's batches, one per task of :func:`learning_tasks`."""
        tasks = learning_tasks(state)
        keys = jax.random.split(key, len(tasks))
        return [R.sample(state.replay, t, keys[j], c.batch_size, n_step=c.n_step, gamma=c.gamma)
                for j, t in enumerate(tasks)]

    def ready_tasks(state: TrainState, learn_mask: Array) -> list:
        """Per task of :func:`learning_tasks`: whether it learns (``[]`` bool scalars)."""
        return [learn_mask[t] & (state.task_steps[t] >= c.warmup_steps) for t in learning_tasks(state)]

    def batched_targets(state: TrainState, drawn: list) -> list:
        """The target network's Q for every batch of ``drawn`` (a list of :func:`draw` lists) in one pass.

        The target network does not change between target syncs, so an
        iteration's updates can share one forward pass of ``U * tasks * B``
        samples instead of one per update (a shorter chain of small kernels
        on an accelerator). Returns ``drawn``'s nesting with ``[B, A]`` leaves.
        """
        flat = [b for batches in drawn for b in batches]
        next_obs = jnp.concatenate([b.next_obs for b in flat])
        task = jnp.concatenate([b.task for b in flat])
        q = L.target_q(net, state.learner.target_variables, next_obs, task)
        parts = iter(jnp.split(q, len(flat)))
        return [[next(parts) for _ in batches] for batches in drawn]

    def learn(lstate: L.LearnerState, state: TrainState, batches: list, q_targets: list,
              learn_mask: Array, gate: bool = True):
        """One update: per_task (a gradient step per learning task) or mixed (one step).

        ``batches`` from :func:`draw`; ``q_targets`` their target Q from
        :func:`batched_targets`, or a None per batch (each step computes its own).
        Only the learner state is carried through the update loop; the replay
        is read from ``state`` (carrying it would copy the buffers).
        """
        ready = ready_tasks(state, learn_mask)
        zero = L.LossInfo(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
        losses, qs, count = jnp.zeros(()), jnp.zeros(()), jnp.zeros(())
        if c.update_mode == "mixed" and len(batches) > 1:
            batch = jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)
            weights = jnp.concatenate([jnp.full((c.batch_size,), r, jnp.float32) for r in ready])
            batch = batch._replace(mask=batch.mask * weights)
            q_target = None if q_targets[0] is None else jnp.concatenate(q_targets)
            batches, q_targets, ready = [batch], [q_target], [jnp.stack(ready).any()]
        for batch, q_target, ok in zip(batches, q_targets, ready):
            if gate:
                lstate, info = jax.lax.cond(ok, lambda ls, b=batch, qt=q_target: update(ls, b, qt),
                                            lambda ls: (ls, zero), lstate)
            else:  # no control flow (XLA:CPU); a zero mask leaves the learner unchanged
                lstate, info = update(lstate, batch._replace(mask=batch.mask * ok), q_target)
            losses += jnp.where(ok, info.td_loss, 0.0)
            qs += jnp.where(ok, info.q_mean, 0.0)
            count += ok.astype(jnp.float32)
        return lstate, losses, qs, count

    def acting_tasks(state: TrainState) -> list:
        """The tasks that act this iteration: the schedule's active one (traced), or all."""
        return [state.schedule.active] if sequential else list(range(m))

    def act_part(state: TrainState) -> tuple[TrainState, _Acted]:
        """First part of an iteration: every acting task acts, writes its replay record and
        starts its envs' step. Returns ``(state, pieces)``; ``pieces`` feed the other parts.
        """
        rng, k_act, k_learn = jax.random.split(state.rng, 3)
        state = state.replace(rng=rng)
        epsilon = L.linear_epsilon(state.global_step, c.eps_start, c.eps_end, c.eps_decay_steps)
        acted = S.acting_mask(sc, state.schedule, m)
        akeys = jax.random.split(k_act, m)
        sent = []
        for j, task in enumerate(acting_tasks(state)):
            state, a = act_send(state, task, akeys[j], epsilon)
            sent.append(a)
        return state, _Acted(k_learn, epsilon, acted, jnp.stack(sent))

    def update_part(state: TrainState, pieces, n_static: int | None = None):
        """Second part: the updates owed for this iteration (in the scan, while the envs step).

        ``n_static``: number of updates fixed at trace time, run without
        ``lax.cond`` (the CPU path; the host checks warm-up). Returns
        ``(state, (loss sum, Q sum, update count))``.
        """
        k_learn, acted = pieces.k_learn, pieces.acted
        # Updates owed for this iteration: every train_every agent steps per acting task.
        it = state.iteration
        n_updates = updates_owed(it, n, c.train_every)
        learn_mask = acted if c.learn_from == "acting" else jnp.ones((m,), bool)

        def learn_and_add(sums, batches, q_targets, gate):
            """:func:`learn` on ``batches``; ``sums`` is ``(learner, loss sum, Q sum, update count)``."""
            ls, lsum, qsum, cnt = sums
            ls, l, q, k_count = learn(ls, state, batches, q_targets, learn_mask, gate)
            return ls, lsum + l, qsum + q, cnt + k_count

        def upd(_, carry):
            """The ``fori_loop`` body (a traced number of updates): draws its batches from the carried key."""
            *sums, key = carry
            key, k = jax.random.split(key)
            batches = draw(state, k)
            return (*learn_and_add(tuple(sums), batches, [None] * len(batches), True), key)

        def static_updates(sums, count: int, gate: bool):
            """``count`` updates unrolled, their batches drawn first with the keys :func:`upd` would
            split; with ``batch_targets`` and several updates, their target Q in one forward pass."""
            keys, key = [], k_learn
            for _ in range(count):
                key, k = jax.random.split(key)
                keys.append(k)
            drawn = [draw(state, k) for k in keys]
            if not (c.batch_targets and count > 1):
                q_targets = [[None] * len(b) for b in drawn]
            elif gate:  # nothing to compute while every learning task is warming up
                nothing = [[jnp.zeros((c.batch_size, spec.num_actions)) for _ in b] for b in drawn]
                q_targets = jax.lax.cond(jnp.stack(ready_tasks(state, learn_mask)).any(),
                                         lambda: batched_targets(state, drawn), lambda: nothing)
            else:
                q_targets = batched_targets(state, drawn)
            for batches, qt in zip(drawn, q_targets):
                sums = learn_and_add(sums, batches, qt, gate)
            return sums

        sums = (state.learner, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
        if n_static is not None:
            lstate, lsum, qsum, cnt = static_updates(sums, n_static, gate=False)
        elif n % c.train_every == 0:  # a static number of updates per iteration: no loop
            lstate, lsum, qsum, cnt = static_updates(sums, n // c.train_every, gate=True)
        else:
            lstate, lsum, qsum, cnt, _ = jax.lax.fori_loop(0, n_updates, upd, (*sums, k_learn))
        return state.replace(learner=lstate), (lsum, qsum, cnt)

    def recv_part(state: TrainState, pieces):
        """Third part: the envs' step completes; replay outcomes, episode flags and returns.

        Returns ``(state, outcome)``; ``outcome`` (actions, ended, returns, lengths,
        each ``[M, N]``) feeds :func:`finish_part`.
        """
        sent = pieces.sent
        actions = jnp.zeros((m, n), jnp.uint8)
        ended = jnp.zeros((m, n), bool)
        rets = jnp.zeros((m, n), jnp.float32)
        lens = jnp.zeros((m, n), jnp.int32)
        for j, task in enumerate(acting_tasks(state)):
            state, a, e, r, ln = act_recv(state, task, sent[j])
            actions, ended = actions.at[task].set(a), ended.at[task].set(e)
            rets, lens = rets.at[task].set(r), lens.at[task].set(ln)
        return state, (actions, ended, rets, lens)

    def finish_part(state: TrainState, pieces, stats, outcome):
        """Last part, after the updates and the step: target sync, schedule, the iteration's log."""
        epsilon, acted = pieces.epsilon, pieces.acted
        lsum, qsum, cnt = stats
        actions, ended, rets, lens = outcome
        old_gs = state.global_step
        new_gs = old_gs + n * acted.sum().astype(jnp.int32)
        lstate = L.sync_target(state.learner, (new_gs // c.target_update) > (old_gs // c.target_update))
        active = state.schedule.active
        sched = S.update_schedule(sc, state.schedule, m, ended[active].sum().astype(jnp.int32),
                                  jnp.int32(n), lstate.variables["params"])
        state = state.replace(learner=lstate, schedule=sched, global_step=new_gs, iteration=state.iteration + 1)
        log = ChunkLog(
            acted=acted, actions=actions, ended=ended, ep_return=rets, ep_length=lens,
            td_loss=jnp.where(cnt > 0, lsum / jnp.maximum(cnt, 1), jnp.nan),
            q_mean=jnp.where(cnt > 0, qsum / jnp.maximum(cnt, 1), jnp.nan),
            num_updates=cnt, epsilon=epsilon, active=active, switches=sched.switches, global_step=new_gs,
        )
        return state, log

    def iteration(state: TrainState, _):
        """One iteration in one program; the updates run while EnvPool's threads step the envs.

        The barriers only order the work: the updates read the replay after
        the envs were sent their actions, and the envs' results are received
        after the updates.
        """
        state, pieces = act_part(state)
        env_states, count = jax.lax.optimization_barrier((state.env_states, state.replay.count))
        state = state.replace(env_states=env_states, replay=state.replay.replace(count=count))
        state, stats = update_part(state, pieces)
        learner, env_states = jax.lax.optimization_barrier((state.learner, state.env_states))
        state = state.replace(learner=learner, env_states=env_states)
        state, outcome = recv_part(state, pieces)
        return finish_part(state, pieces, stats, outcome)

    def env_half(state: TrainState):
        """The CPU loop's first program: act, and the whole env step (no overlap)."""
        state, pieces = act_part(state)
        state, outcome = recv_part(state, pieces)
        return state, pieces, outcome

    def learn_half(state: TrainState, pieces, outcome, n_static: int):
        """The CPU loop's second program: ``n_static`` updates, then :func:`finish_part`."""
        state, stats = update_part(state, pieces, n_static)
        return finish_part(state, pieces, stats, outcome)

    use_scan = c.loop in ("scan", "auto")
    if use_scan:
        @functools.partial(jax.jit, donate_argnums=0)
        def run_chunk(state: TrainState) -> tuple[TrainState, ChunkLog]:
            return jax.lax.scan(iteration, state, None, length=c.chunk_iters)
    else:
        # Two jitted halves per iteration (the CPU default before ops.conv_nhwc).
        # The env step is not overlapped with the updates here: on the 2-core CPU,
        # three programs per iteration with the overlap ran about 10 % slower than
        # these two without it (docs/performance.md, section 2.9).
        # The updates sample the same batches either way (replay.set_outcome).
        one_env = jax.jit(env_half, donate_argnums=0)
        one_learn = jax.jit(learn_half, donate_argnums=0, static_argnums=3)

        @jax.jit
        def warm(state: TrainState) -> Array:
            """Whether a task that learns this iteration is past its warm-up (after acting)."""
            acted = S.acting_mask(sc, state.schedule, m)
            learners = acted if c.learn_from == "acting" else jnp.ones((m,), bool)
            steps_after = state.task_steps + n * acted.astype(jnp.int32)
            return (learners & (steps_after >= c.warmup_steps)).any()

        def run_chunk(state: TrainState) -> tuple[TrainState, ChunkLog]:
            logs = []
            it = int(state.iteration)
            # Once every task is past its warm-up, every iteration's learners are (step counts
            # only grow, and some task always acts): no per-iteration check, so no host sync,
            # and Python dispatches the next programs while the updates run.
            all_warm = bool((state.task_steps >= c.warmup_steps).all())
            for _ in range(c.chunk_iters):
                owed = updates_owed(it, n, c.train_every)
                k = owed if owed and (all_warm or bool(warm(state))) else 0
                state, pieces, outcome = one_env(state)
                state, log = one_learn(state, pieces, outcome, k)
                logs.append(log)
                it += 1
            return state, jax.tree.map(lambda *x: jnp.stack(x), *logs)

    return Trainer(c, net, spec, m, init, run_chunk, optimizer)
