"""Batch sweeps: many training runs ("members") at once with ``jax.vmap``.

A sweep is the product of a grid of *settings* (hyper-parameters that keep
every array shape fixed) and a list of seeds; every member is one
(setting, seed) pair. Members are stacked along a leading axis ``[M, ...]``
and trained by one vmapped, jitted step, so the per-member cost of dispatch,
compilation and small kernels is shared.

Image task (:class:`ImageSweep`): sweepable ``learning_rate`` (Adam peak,
cosine decay), ``tau``, ``v_threshold`` and the surrogate slope ``alpha``.
All are traced per member: the learning rate is a hyper-parameter in the
optimiser state (:func:`mtspark_jax.vision.classification.image_optimizer`),
the neuron constants go into a :class:`~mtspark_jax.nn.spiking.NeuronConfig`
of traced scalars. Every member trains with the solo run's own step
(:func:`mtspark_jax.vision.classification.gradient_step`). Every member sees the same batches (the loader's seed is the sweep's
``config.seed``); seeds change the initial parameters.

Small RL benchmark (:class:`MinAtarSweep`): MinAtar in gymnax is pure JAX, so
a whole training run (env, replay, learner, schedule) is one pytree and the
pure ``init`` and ``run_chunk`` of :func:`mtspark_jax.rl.training.make_train`
are vmapped over seeds.
Settings of the grid (any :class:`~mtspark_jax.rl.training.TrainConfig` field,
e.g. ``lr``, ``eps_end``, ``eps_decay_steps``, ``tau``, ``v_threshold``)
are compiled once each and their seeds vmapped: ``make_train`` closes over
Python constants. EnvPool (Atari) cannot be vmapped (its XLA ``step``
raises ``NotImplementedError`` under ``vmap``): Atari members share one pool
per game instead (:mod:`mtspark_jax.rl.atari_sweep`).

Divergence: a member whose loss or parameters become non-finite is marked
``diverged``; its state is frozen (image task) and it is left out of the
table's mean and spread, which reports it by count. Other members are
computed independently under ``vmap`` and are not affected.

With ``mesh`` (:func:`mtspark_jax.sharding.largest_divisor_mesh`) the member
axis is split over devices.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mtspark_jax import config_flags
from mtspark_jax.nn import energy as energy_lib
from mtspark_jax import sharding as sh
from mtspark_jax.nn.spiking import DEFAULT_ALPHA, NeuronConfig

Array = jax.Array

IMAGE_HPARAMS = ("learning_rate", "tau", "v_threshold", "alpha")
"""Image-task hyper-parameters swept inside one compiled step."""


# ---------------------------------------------------------------------------
# Members: settings x seeds.


@dataclasses.dataclass(frozen=True)
class Members:
    """The members of a sweep.

    Attributes:
      settings: one dict (hyper-parameter -> value) per grid point, in grid order.
      setting: ``[M]`` index into ``settings`` of each member.
      seed: ``[M]`` seed of each member.
    """

    settings: tuple[dict[str, float], ...]
    setting: np.ndarray
    seed: np.ndarray

    @property
    def size(self) -> int:
        return len(self.seed)

    def values(self, name: str, default: float) -> np.ndarray:
        """``[M]`` float32 value of ``name`` per member (``default`` where not swept)."""
        return np.array([self.settings[s].get(name, default) for s in self.setting], np.float32)


def grid_types(task: str) -> dict[str, Any]:
    """What a ``task`` sweep may vary, and each name's type: ``images`` the
    traced hyper-parameters (:data:`IMAGE_HPARAMS`), ``minatar`` and ``atari`` any
    :class:`mtspark_jax.rl.training.TrainConfig` field."""
    if task == "images":
        return {n: float for n in IMAGE_HPARAMS}
    if task in ("minatar", "atari"):
        from mtspark_jax.rl.training import TrainConfig

        return config_flags.field_types(TrainConfig)
    raise ValueError(f"unknown sweep task {task!r}; expected 'images', 'minatar' or 'atari'")


def parse_grid(spec: str, task: str = "images") -> dict[str, tuple]:
    """``"learning_rate=1e-3,3e-3;tau=2,4"`` -> ``{"learning_rate": (1e-3, 3e-3), "tau": (2.0, 4.0)}``.

    Values are read as their field's type (:func:`mtspark_jax.config_flags.parse_grid`);
    ValueError for a name the task cannot sweep or an impossible value.
    """
    grid = config_flags.parse_grid(spec, grid_types(task))
    if task == "images":
        _check_image_grid(grid)
    return grid


def make_members(grid: Mapping[str, Sequence[float]], seeds: Sequence[int]) -> Members:
    """Every grid point (product of the value lists, in order) times every seed."""
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    names = list(grid)
    settings = tuple(dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names)))
    setting = np.repeat(np.arange(len(settings)), len(seeds))
    seed = np.tile(np.asarray(seeds, np.int64), len(settings))
    return Members(settings, setting, seed)


def _check_image_grid(grid: Mapping[str, Sequence[float]]) -> None:
    for name, values in grid.items():
        if name not in IMAGE_HPARAMS:
            raise ValueError(f"cannot sweep {name!r} in the image task; sweepable: {IMAGE_HPARAMS}")
        for v in values:
            if name == "tau" and not v >= 1.0:
                raise ValueError(f"tau must be >= 1, got {v}")
            if name in ("learning_rate", "alpha", "v_threshold") and not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")


# ---------------------------------------------------------------------------
# Convolutions of many members.


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def slice_conv(x: Array, kernel: Array, strides: tuple[int, int], padding: str) -> Array:
    """2-D convolution as ``kh * kw`` strided slices and one matmul (``NHWC``, ``HWIO``).

    Equals ``lax.conv_general_dilated`` (no dilation, one feature group).
    Under ``vmap`` with per-member inputs *and* kernels, XLA turns a
    convolution into a grouped convolution, which XLA:CPU runs far slower
    than the members one by one (measured here: 8 members of a 3x3/2 conv,
    batch 128: 59 ms vmapped vs 8.8 ms looped, forward; forward + backward
    222 ms vs 73 ms). Slices and a batched matmul vmap without that cost
    (forward + backward 59 ms).
    """
    kh, kw, c, o = kernel.shape
    sh_, sw_ = strides
    if padding == "SAME":
        ph, pw = _same_pads(x.shape[1], kh, sh_), _same_pads(x.shape[2], kw, sw_)
    else:
        ph, pw = (0, 0), (0, 0)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh_ + 1, (xp.shape[2] - kw) // sw_ + 1
    cols = [xp[:, i:i + sh_ * (ho - 1) + 1:sh_, j:j + sw_ * (wo - 1) + 1:sw_, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1) @ kernel.reshape(kh * kw * c, o)


def slice_conv_interceptor(next_fun, args, kwargs, context):
    """Flax method interceptor: ``nn.Conv`` calls run as :func:`slice_conv` (others unchanged)."""
    import flax.linen as nn

    mod = context.module
    if (not isinstance(mod, nn.Conv) or context.method_name != "__call__"
            or not mod.has_variable("params", "kernel") or mod.padding not in ("SAME", "VALID")
            or mod.feature_group_count != 1 or mod.kernel_dilation not in (None, 1, (1, 1))
            or mod.input_dilation not in (None, 1, (1, 1)) or jnp.ndim(args[0]) != 4):
        return next_fun(*args, **kwargs)
    kernel = mod.get_variable("params", "kernel")
    strides = mod.strides or 1
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    y = slice_conv(jnp.asarray(args[0], kernel.dtype), kernel, strides, mod.padding)
    if mod.use_bias:
        y = y + mod.get_variable("params", "bias")
    return y


def default_conv_impl() -> str:
    """``slices`` on CPU (see :func:`slice_conv`), ``xla`` elsewhere."""
    return "slices" if jax.default_backend() == "cpu" else "xla"


def with_conv_impl(fn, conv_impl: str):
    """``fn`` with its ``nn.Conv`` calls run as ``conv_impl`` (``xla`` or ``slices``: :func:`slice_conv`)."""
    if conv_impl not in ("xla", "slices"):
        raise ValueError(f"conv_impl must be 'xla' or 'slices', got {conv_impl!r}")
    if conv_impl == "xla":
        return fn
    import flax.linen as nn

    def wrapped(*args, **kwargs):
        with nn.intercept_methods(slice_conv_interceptor):
            return fn(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------
# Image task.


@flax.struct.dataclass
class ImageMember:
    """One member of an image sweep (stacked ``[M, ...]``).

    Attributes:
      state: its :class:`mtspark_jax.vision.classification.TrainState`, the
        same type a solo run trains; the peak learning rate is in the
        optimiser state (:func:`~mtspark_jax.vision.classification.image_optimizer`).
      diverged: scalar bool; once set, the state stays frozen.
    """

    state: Any
    diverged: Array


def all_finite(tree: Any) -> Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def chunk_td_health(td_loss: np.ndarray, num_updates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per member, from one chunk's RL logs ``[M, K]`` (K loop iterations).

    Returns:
      ``(diverged [M], mean_td_loss [M])``: whether an iteration that updated
      had a non-finite TD loss, and the mean TD loss over the iterations that
      updated and logged a loss (NaN for a member without any).
    """
    updated = np.asarray(num_updates) > 0
    td_loss = np.asarray(td_loss)
    diverged = (updated & ~np.isfinite(td_loss)).any(-1)
    losses = np.where(updated, td_loss, np.nan)
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(losses)).sum(-1)
        mean = np.where(counts > 0, np.nansum(losses, -1) / np.maximum(counts, 1), np.nan)
    return diverged, mean


class ImageSweep:
    """Vmapped training of spiking image classifiers (see module docstring).

    Every member runs :func:`mtspark_jax.vision.classification.gradient_step`
    and :func:`~mtspark_jax.vision.classification.eval_sums`, the steps of a
    solo run, with its network's neuron constants and its learning rate.

    Args:
      config: a :class:`mtspark_jax.vision.classification.ImageConfig`; its network,
        batch size, epochs, data sets and loader seed are shared by all members,
        and its ``learning_rate``/``tau``/``v_threshold`` are the defaults of
        hyper-parameters the grid does not set.
      steps: total training steps (for the cosine schedule).
      conv_impl: ``xla`` or ``slices`` (:func:`slice_conv`); default
        :func:`default_conv_impl`.
    """

    def __init__(self, config, steps: int, conv_impl: str | None = None):
        from mtspark_jax.vision import classification as cl

        self.conv_impl = conv_impl or default_conv_impl()
        with_conv_impl(None, self.conv_impl)  # validates
        self.config = config
        self.steps = int(steps)
        self.net = config.network()
        self._cl = cl
        self.defaults = {"learning_rate": config.learning_rate, "tau": config.tau,
                         "v_threshold": config.v_threshold, "alpha": DEFAULT_ALPHA[config.surrogate]}
        self._jits: dict[Any, Any] = {}

    # -- one member -------------------------------------------------------
    def _member_apply(self, h: Mapping[str, Array]):
        """``apply`` of the shared network with the member's traced neuron constants."""
        neuron = NeuronConfig(tau=h["tau"], v_threshold=h["v_threshold"], surrogate=self.config.surrogate,
                              alpha=h["alpha"])
        return self.net.clone(neuron=neuron).apply

    def init_member(self, key: Array, h: Mapping[str, Array]) -> ImageMember:
        state = self._cl.create_train_state(key, self.net, self.config.image_shape,
                                            self._cl.image_optimizer(self.config.learning_rate, self.steps))
        return ImageMember(self._cl.set_learning_rate(state, h["learning_rate"]), jnp.zeros((), bool))

    def member_step(self, member: ImageMember, h: Mapping[str, Array], batch) -> tuple[ImageMember, dict]:
        """One Adam step of one member on ``batch``; a diverged member is left unchanged."""
        state, m = self._cl.gradient_step(member.state, batch, self.config.use_context, self._member_apply(h))
        bad = member.diverged | ~(jnp.isfinite(m["loss"]) & all_finite(state.params))
        state = jax.tree.map(lambda new, old: jnp.where(bad, old, new), state, member.state)
        return ImageMember(state, bad), {"loss": m["loss"], "accuracy": m["accuracy"]}

    def member_eval(self, member: ImageMember, h: Mapping[str, Array], batch) -> dict[str, Array]:
        """:func:`~mtspark_jax.vision.classification.eval_sums` of one member."""
        return self._cl.eval_sums(member.state, batch, self.config.use_context, self._member_apply(h))

    # -- stacked members --------------------------------------------------
    def _jit(self, name: str):
        if name not in self._jits:
            if name == "init":
                fn = jax.jit(jax.vmap(self.init_member))
            elif name == "step":
                fn = jax.jit(with_conv_impl(jax.vmap(self.member_step, in_axes=(0, 0, None)), self.conv_impl),
                             donate_argnums=0)
            else:
                fn = jax.jit(with_conv_impl(jax.vmap(self.member_eval, in_axes=(0, 0, None)), self.conv_impl))
            self._jits[name] = fn
        return self._jits[name]

    def hparams(self, members: Members) -> dict[str, np.ndarray]:
        """``name -> [M]`` values of every image hyper-parameter."""
        for s in members.settings:
            _check_image_grid({k: [v] for k, v in s.items()})
        return {n: members.values(n, self.defaults[n]) for n in IMAGE_HPARAMS}

    def init(self, members: Members, mesh=None) -> tuple[ImageMember, dict[str, Array]]:
        """Stacked initial states ``[M, ...]`` and hyper-parameters (sharded over ``mesh``)."""
        h = self.hparams(members)
        keys = jax.vmap(jax.random.key)(jnp.asarray(members.seed, jnp.uint32))
        if mesh is not None:
            keys, h = sh.shard_leading((keys, h), mesh)
        return self._jit("init")(keys, h), h

    def train(self, state: ImageMember, h, batches, mesh=None) -> tuple[ImageMember, np.ndarray]:
        """Runs every batch of ``batches``; returns the state and losses ``[steps, M]``."""
        step = self._jit("step")
        losses = []
        for batch in batches:
            b = {k: jnp.asarray(np.asarray(batch[k])) for k in ("image", "label", "context", "mask")}
            if mesh is not None:
                b = sh.replicate(b, mesh)
            state, m = step(state, h, b)
            losses.append(m["loss"])
        return state, np.asarray(jnp.stack(losses)) if losses else np.zeros((0, len(state.diverged)))

    def evaluate(self, state: ImageMember, h, batches, mesh=None) -> dict[str, np.ndarray]:
        """``accuracy`` ``[M]``, ``loss`` ``[M]`` and ``spikes/<layer>`` per image ``[M]``."""
        ev = self._jit("eval")
        tot: dict[str, np.ndarray] = {}
        for batch in batches:
            b = {k: jnp.asarray(np.asarray(batch[k])) for k in ("image", "label", "context", "mask")}
            if mesh is not None:
                b = sh.replicate(b, mesh)
            m = jax.tree.map(np.asarray, ev(state, h, b))
            for k, v in m.items():
                tot[k] = tot.get(k, 0.0) + v.astype(np.float64)
        n = np.maximum(tot["count"], 1.0)
        res = {"accuracy": tot["correct"] / n, "loss": tot["loss_sum"] / n}
        for k, v in tot.items():
            if k.startswith("spikes/"):
                res[k] = v / n
        return res

def run_image_sweep(config, members: Members, train_sets, test_sets, mesh=None,
                    conv_impl: str | None = None) -> dict[str, Any]:
    """Trains every member on ``train_sets`` (name -> (images, labels)) and tests it.

    ``conv_impl``: see :class:`ImageSweep`. With ``slices`` the members' matmuls
    are batched, so a member's numbers can differ from its solo run by float
    summation order (a spike or an argmax may flip); ``xla`` reproduces them.

    Returns:
      ``{"members": [per-member dict], "wall_s", "steps", "settings", "state"}``
      (``state``: the final stacked :class:`ImageMember`); each
      member dict has ``setting``, ``seed``, ``diverged``, ``final_loss``
      (mean of the last 10 % of steps), ``accuracy`` (mean over data sets),
      ``accuracy/<name>`` and the energy summary keys.
    """
    from mtspark_jax.vision import data as data_lib

    t0 = time.time()
    loader = data_lib.Loader(train_sets, config.batch_size, seed=config.seed, shape=config.image_shape)
    steps = config.epochs * loader.num_batches()
    sweep = ImageSweep(config, steps, conv_impl)
    state, h = sweep.init(members, mesh)
    losses = []
    for epoch in range(config.epochs):
        state, l = sweep.train(state, h, loader.epoch(epoch), mesh)
        losses.append(l)
    losses = np.concatenate(losses)
    tail = losses[-max(1, len(losses) // 10):]
    diverged = np.asarray(state.diverged)
    rows = [dict(setting=int(members.setting[i]), seed=int(members.seed[i]), diverged=bool(diverged[i]),
                 final_loss=float(np.mean(tail[:, i]))) for i in range(members.size)]
    accs = []
    for name, split in test_sets.items():
        ev = data_lib.Loader({name: split}, config.eval_batch_size, shape=config.image_shape, shuffle=False)
        res = sweep.evaluate(state, h, ev.epoch(0), mesh)
        accs.append(res["accuracy"])
        for i, row in enumerate(rows):
            row[f"accuracy/{name}"] = float(res["accuracy"][i])
            spikes = {k[len("spikes/"):]: float(v[i]) for k, v in res.items() if k.startswith("spikes/")}
            for k, v in energy_lib.per_example_summary(sweep.net, config.image_shape, spikes).items():
                # mean over data sets below
                row[k] = row.get(k, 0.0) + v / len(test_sets)
    for i, row in enumerate(rows):
        row["accuracy"] = float(np.mean([a[i] for a in accs]))
        if row["diverged"]:
            for k in list(row):
                if k.startswith(("accuracy", "energy/", "spike_rate/")) or k == "final_loss":
                    row[k] = float("nan")
    return {"members": rows, "wall_s": time.time() - t0, "steps": steps, "settings": members.settings,
            "state": state}


def synthetic_images(num_train: int = 256, num_test: int = 128, shape=(16, 16, 1), seed: int = 0,
                     names: Sequence[str] = ("mnist", "fashion_mnist")) -> tuple[dict, dict]:
    """Small generated data sets (no download): 10 classes of noisy bar patterns.

    Class ``y`` of data set ``k`` lights the horizontal band ``(y + 3 k) % 10`` of
    the image (plus noise), so each data set maps bands to labels differently
    and the context matters. Returns ``(train_sets, test_sets)``, each
    name -> ``(uint8 [N, H, W, C], int32 [N])``.
    """
    rng = np.random.default_rng(seed)
    h, w, c = shape
    band = max(1, h // 10)
    train, test = {}, {}
    for k, name in enumerate(names):
        for out, n in ((train, num_train), (test, num_test)):
            labels = rng.integers(0, 10, n).astype(np.int32)
            images = rng.integers(0, 60, (n, h, w, c)).astype(np.uint8)
            for i, y in enumerate(labels):
                row = ((int(y) + 3 * k) % 10) * band
                images[i, row:row + band] = 230
            out[name] = (images, labels)
    return train, test


# ---------------------------------------------------------------------------
# Small RL benchmark: MinAtar.


class MinAtarSweep:
    """One MinAtar training setting, vmapped over seeds (see module docstring).

    Args:
      config: a :class:`mtspark_jax.rl.training.TrainConfig` (MinAtar backend).
      games: MinAtar games (tasks).
      conv_impl: ``xla`` or ``slices`` (:func:`slice_conv`); default
        :func:`default_conv_impl`.
    """

    def __init__(self, config, games: Sequence[str], conv_impl: str | None = None):
        from mtspark_jax.rl import minatar
        from mtspark_jax.rl import training as T

        self.config = dataclasses.replace(config, games=tuple(games))
        self.envs = minatar.make_minatar_envs(games, self.config.num_envs, 0)
        self.trainer = T.make_train(self.config, self.envs)
        trainer, envs = self.trainer, self.envs

        def init_member(key):
            k_env, k_train = jax.random.split(key)
            resets = [env.reset_from(jax.random.fold_in(k_env, i)) for i, env in enumerate(envs)]
            states = tuple(r[0] for r in resets)
            obs = jnp.stack([r[1] for r in resets])
            return trainer.init(k_train, states, obs)

        self._init = jax.jit(jax.vmap(init_member))
        chunk = trainer.run_chunk  # traced here, with conv_impl
        self._chunk = jax.jit(with_conv_impl(jax.vmap(chunk), conv_impl or default_conv_impl()),
                              donate_argnums=0)

    def run(self, seeds: Sequence[int], mesh=None) -> dict[str, Any]:
        """Trains one member per seed to ``config.total_steps``.

        Returns ``{"members": [...], "wall_s", "chunks", "first_chunk_s"}``;
        per member: ``seed``, ``diverged``, ``return`` (mean return of the
        episodes that ended in the second half of training; all episodes if
        none did), ``episodes``, ``final_td_loss``.
        """
        t0 = time.time()
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
        if mesh is not None:
            keys = sh.shard_leading(keys, mesh)
        state = self._init(keys)
        m = len(seeds)
        half = self.config.total_steps // 2
        sums, counts = np.zeros(m), np.zeros(m)
        all_sums, all_counts = np.zeros(m), np.zeros(m)
        bad = np.zeros(m, bool)
        last_loss = np.full(m, np.nan)
        chunks, first = 0, None
        while int(np.max(np.asarray(state.global_step))) < self.config.total_steps:
            state, log = self._chunk(state)
            log = jax.tree.map(np.asarray, log)
            if first is None:
                first = time.time() - t0
            chunks += 1
            ended = log.ended.reshape(m, log.ended.shape[1], -1)
            rets = log.ep_return.reshape(ended.shape)
            late = (log.global_step > half)[:, :, None]
            sums += (rets * ended * late).sum((1, 2))
            counts += (ended * late).sum((1, 2))
            all_sums += (rets * ended).sum((1, 2))
            all_counts += ended.sum((1, 2))
            chunk_bad, chunk_loss = chunk_td_health(log.td_loss, log.num_updates)
            bad |= chunk_bad
            last_loss = np.where(np.isfinite(chunk_loss) | bad, chunk_loss, last_loss)
        params = state.learner.variables["params"]
        finite = np.asarray(jax.vmap(all_finite)(params))
        bad |= ~finite
        rows = []
        for i, s in enumerate(seeds):
            ret = sums[i] / counts[i] if counts[i] else (all_sums[i] / all_counts[i] if all_counts[i] else np.nan)
            rows.append(dict(seed=int(s), diverged=bool(bad[i]), **{"return": float("nan") if bad[i] else float(ret)},
                             episodes=int(all_counts[i]), final_td_loss=float(last_loss[i])))
        return {"members": rows, "wall_s": time.time() - t0, "chunks": chunks, "first_chunk_s": first or 0.0,
                "state": state}


def setting_config(config, setting: Mapping[str, Any]):
    """``config`` (a TrainConfig) with one grid point's values; ValueError for a name that is not a field.

    Grids from :func:`parse_grid` hold typed values; a float for an int field is a whole number.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    for name in setting:
        if name not in fields:
            raise ValueError(f"{name!r} is not a TrainConfig field")
    cast = {n: (int(v) if isinstance(v, float) and isinstance(getattr(config, n), int) else v)
            for n, v in setting.items()}
    return dataclasses.replace(config, **cast)


def run_minatar_sweep(config, games: Sequence[str], members: Members, mesh_fn=None) -> dict[str, Any]:
    """Every setting of ``members`` (TrainConfig fields) compiled once, its seeds vmapped."""
    rows, t0 = [], time.time()
    for k, setting in enumerate(members.settings):
        cfg = setting_config(config, setting)
        seeds = [int(s) for s in members.seed[members.setting == k]]
        mesh = mesh_fn(len(seeds)) if mesh_fn else None
        res = MinAtarSweep(cfg, games).run(seeds, mesh)
        for r in res["members"]:
            rows.append({"setting": k, **r})
    return {"members": rows, "wall_s": time.time() - t0, "settings": members.settings}


# ---------------------------------------------------------------------------
# The table.


def _spread(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize_members(result: Mapping[str, Any], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per setting: its values, ``members``, ``diverged`` and ``<metric>_mean`` / ``_std``.

    Mean and sample standard deviation (ddof = 1) are over the members of the
    setting that did not diverge.
    """
    out = []
    for k, setting in enumerate(result["settings"]):
        rows = [r for r in result["members"] if r["setting"] == k]
        ok = [r for r in rows if not r["diverged"]]
        row: dict[str, Any] = dict(setting)
        row["members"] = len(rows)
        row["diverged"] = len(rows) - len(ok)
        for m in metrics:
            mean, std = _spread(np.array([r[m] for r in ok], np.float64))
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        out.append(row)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return config_flags.format_value(v)


def write_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], workdir: str | Path,
                stem: str = "sweep") -> str:
    """Writes ``<stem>.md`` (mean ± std per setting) and ``<stem>.csv``; returns the markdown."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not rows:
        return ""
    hp = [k for k in rows[0] if k not in ("members", "diverged") and not k.endswith(("_mean", "_std"))]
    header = hp + ["members", "diverged"] + list(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_fmt(r[k]) for k in hp] + [str(r["members"]), str(r["diverged"])]
        cells += [f"{_fmt(r[m + '_mean'])} ± {_fmt(r[m + '_std'])}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    (workdir / f"{stem}.md").write_text(md + "\n")
    with open(workdir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return md


def write_members(result: Mapping[str, Any], workdir: str | Path, stem: str = "members") -> None:
    """Per-member CSV (one row per member)."""
    rows = result["members"]
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(workdir) / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
