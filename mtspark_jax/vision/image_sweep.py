"""Image sweeps: many spiking classifiers ("members") trained at once with ``jax.vmap``.

Sweepable: ``learning_rate`` (Adam peak, cosine decay), ``tau``,
``v_threshold`` and the surrogate slope ``alpha`` (:data:`IMAGE_HPARAMS`).
All are traced per member, so every setting and seed trains in one compiled
step: the learning rate is a hyper-parameter in the optimiser state
(:func:`mtspark_jax.vision.classification.image_optimizer`), the neuron
constants go into a :class:`~mtspark_jax.nn.spiking.NeuronConfig` of traced
scalars. Every member trains with the solo run's own step
(:func:`mtspark_jax.vision.classification.gradient_step`). Every member sees
the same batches (the loader's seed is the sweep's ``config.seed``); seeds
change the initial parameters.

A member whose loss or parameters become non-finite is marked ``diverged``
and its state is frozen (:mod:`mtspark_jax.sweeps` for members, the table
and the progress bar). With ``mesh``
(:func:`mtspark_jax.sharding.largest_divisor_mesh`) the member axis is split
over devices.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtspark_jax import config_flags
from mtspark_jax import sharding as sh
from mtspark_jax.init_jit import jit_once
from mtspark_jax.nn import energy as energy_lib
from mtspark_jax.nn.ops import default_conv_impl, with_conv_impl
from mtspark_jax.nn.spiking import DEFAULT_ALPHA, NeuronConfig
from mtspark_jax.sweeps import Members, all_finite, member_progress, progress_bar
from mtspark_jax.vision import classification as cl
from mtspark_jax.vision import data as data_lib

Array = jax.Array

IMAGE_HPARAMS = ("learning_rate", "tau", "v_threshold", "alpha")
"""Image-task hyper-parameters swept inside one compiled step."""

PROGRESS_EVERY_S = 1.0
"""Seconds between two updates of the bar's loss and accuracy (each waits for the step)."""


def _check_image_grid(grid: Mapping[str, Sequence[float]]) -> None:
    for name, values in grid.items():
        if name not in IMAGE_HPARAMS:
            raise ValueError(f"cannot sweep {name!r} in the image task; sweepable: {IMAGE_HPARAMS}")
        for v in values:
            if name == "tau" and not v >= 1.0:
                raise ValueError(f"tau must be >= 1, got {v}")
            if name in ("learning_rate", "alpha", "v_threshold") and not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")


def parse_image_grid(spec: str) -> dict[str, tuple]:
    """``"learning_rate=1e-3,3e-3;tau=2,4"`` -> ``{"learning_rate": (1e-3, 3e-3), "tau": (2.0, 4.0)}``.

    ValueError for a name the image task cannot sweep (:data:`IMAGE_HPARAMS`)
    or an impossible value.
    """
    grid = config_flags.parse_grid(spec, {n: float for n in IMAGE_HPARAMS})
    _check_image_grid(grid)
    return grid


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


def _device_batch(batch: Mapping[str, Any], mesh) -> dict[str, Array]:
    b = {k: jnp.asarray(np.asarray(batch[k])) for k in ("image", "label", "context", "mask")}
    return sh.replicate(b, mesh) if mesh is not None else b


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
      conv_impl: ``xla`` or ``slices`` (:func:`mtspark_jax.nn.ops.slice_conv`);
        default :func:`~mtspark_jax.nn.ops.default_conv_impl`.
    """

    def __init__(self, config: cl.ImageConfig, steps: int, conv_impl: str | None = None):
        self.conv_impl = conv_impl or default_conv_impl()
        with_conv_impl(None, self.conv_impl)  # validates
        self.config = config
        self.steps = int(steps)
        self.net = config.network()
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
        state = cl.create_train_state(key, self.net, self.config.image_shape,
                                      cl.image_optimizer(self.config.learning_rate, self.steps))
        return ImageMember(cl.set_learning_rate(state, h["learning_rate"]), jnp.zeros((), bool))

    def member_step(self, member: ImageMember, h: Mapping[str, Array], batch) -> tuple[ImageMember, dict]:
        """One Adam step of one member on ``batch``; a diverged member is left unchanged."""
        state, m = cl.gradient_step(member.state, batch, self.config.use_context, self._member_apply(h))
        bad = member.diverged | ~(jnp.isfinite(m["loss"]) & all_finite(state.params))
        state = jax.tree.map(lambda new, old: jnp.where(bad, old, new), state, member.state)
        return ImageMember(state, bad), {"loss": m["loss"], "accuracy": m["accuracy"]}

    def member_eval(self, member: ImageMember, h: Mapping[str, Array], batch) -> dict[str, Array]:
        """:func:`~mtspark_jax.vision.classification.eval_sums` of one member."""
        return cl.eval_sums(member.state, batch, self.config.use_context, self._member_apply(h))

    # -- stacked members --------------------------------------------------
    def _jit(self, name: str):
        if name not in self._jits:
            if name == "init":
                fn = jit_once(jax.vmap(self.init_member))
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

    def train(self, state: ImageMember, h, batches: Iterable, mesh=None,
              bar: tqdm | None = None) -> tuple[ImageMember, np.ndarray]:
        """Runs every batch of ``batches``; returns the state and losses ``[steps, M]``.

        ``bar`` (:func:`mtspark_jax.sweeps.progress_bar`) shows the finished
        steps and the members' mean loss and accuracy on the latest batch,
        every :data:`PROGRESS_EVERY_S` seconds and at the end. Steps run
        asynchronously: the bar waits for a step before it counts it, so it
        never runs ahead of the computation.
        """
        step = self._jit("step")
        losses = []
        show = bar is not None and not bar.disable
        shown, pending, m = time.monotonic(), 0, None
        for batch in batches:
            state, m = step(state, h, _device_batch(batch, mesh))
            losses.append(m["loss"])
            pending += 1
            if show and time.monotonic() - shown >= PROGRESS_EVERY_S:
                bar.set_postfix_str(_progress_text(state, m), refresh=False)  # waits for this step
                bar.update(pending)
                shown, pending = time.monotonic(), 0
        if show and pending:
            bar.set_postfix_str(_progress_text(state, m), refresh=False)
            bar.update(pending)
        return state, np.asarray(jnp.stack(losses)) if losses else np.zeros((0, len(state.diverged)))

    def evaluate(self, state: ImageMember, h, batches: Iterable, mesh=None) -> dict[str, np.ndarray]:
        """``accuracy`` ``[M]``, ``loss`` ``[M]`` and ``spikes/<layer>`` per image ``[M]``."""
        ev = self._jit("eval")
        tot: dict[str, np.ndarray] = {}
        for batch in batches:
            m = jax.tree.map(np.asarray, ev(state, h, _device_batch(batch, mesh)))
            for k, v in m.items():
                tot[k] = tot.get(k, 0.0) + v.astype(np.float64)
        n = np.maximum(tot["count"], 1.0)
        res = {"accuracy": tot["correct"] / n, "loss": tot["loss_sum"] / n}
        for k, v in tot.items():
            if k.startswith("spikes/"):
                res[k] = v / n
        return res


def _progress_text(state: ImageMember, metrics: Mapping[str, Array]) -> str:
    """The members' mean training loss and accuracy on one batch (waits for that step)."""
    return member_progress({"loss": np.asarray(metrics["loss"]), "acc": np.asarray(metrics["accuracy"])},
                           np.asarray(state.diverged))


def run_image_sweep(config: cl.ImageConfig, members: Members, train_sets, test_sets, mesh=None,
                    conv_impl: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains every member on ``train_sets`` (name -> (images, labels)) and tests it.

    ``conv_impl``: see :class:`ImageSweep`. With ``slices`` the members' matmuls
    are batched, so a member's numbers can differ from its solo run by float
    summation order (a spike or an argmax may flip); ``xla`` reproduces them.
    ``progress``: a bar of the training steps (on process 0) with the
    members' mean loss and accuracy.

    Returns:
      ``{"members": [per-member dict], "wall_s", "steps", "settings", "state"}``
      (``state``: the final stacked :class:`ImageMember`); each
      member dict has ``setting``, ``seed``, ``diverged``, ``final_loss``
      (mean of the last 10 % of steps), ``accuracy`` (mean over data sets),
      ``accuracy/<name>`` and the energy summary keys.
    """
    t0 = time.time()
    loader = data_lib.Loader(train_sets, config.batch_size, seed=config.seed, shape=config.image_shape)
    steps = config.epochs * loader.num_batches()
    sweep = ImageSweep(config, steps, conv_impl)
    state, h = sweep.init(members, mesh)
    losses = []
    with progress_bar(steps, progress and jax.process_index() == 0) as bar:
        for epoch in range(config.epochs):
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            state, l = sweep.train(state, h, loader.epoch(epoch), mesh, bar)
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
