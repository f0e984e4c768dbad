"""Train and evaluate the spiking image classifier (Flax-examples style).

``create_train_state`` -> ``train_step`` (jitted, one batch) -> ``eval_step``
(jitted, summed counts) -> ``evaluate`` (a whole :class:`mtspark_jax.vision.data.Loader`).
``gradient_step`` and ``eval_sums`` are the same steps un-jitted, for callers
that add ``vmap`` (:class:`mtspark_jax.vision.image_sweep.ImageSweep`).
Batches are the loader's dicts: ``image`` uint8 ``[B, H, W, C]``, ``label``
int ``[B]``, ``context`` int ``[B]``, ``mask`` float ``[B]`` (0 on padding).

The context reaches the dendritic gates as a one-hot ``[B, num_tasks]``; with
``use_context=False`` the gates see all zeros instead (the no-context ablation:
every data set gets the same gate).
"""

from __future__ import annotations

import functools
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from mtspark_jax.checkpoint import guard_save
from mtspark_jax.init_jit import jit_once
from mtspark_jax.metrics_log import MetricsLogger
from mtspark_jax.nn.networks import IMAGE_CONVS, compute_dtype
from mtspark_jax.workdir import close_after_failure, guard_writes, hold

Array = jax.Array
Batch = Mapping[str, Any]


class TrainState(train_state.TrainState):
    """Params, optimiser state, step, BatchNorm statistics (``{}`` without BatchNorm).

    ``num_tasks`` (static) is the context length the network expects.
    """

    batch_stats: Any = None
    num_tasks: int = flax.struct.field(pytree_node=False, default=3)


def create_train_state(
    rng: Array,
    net: nn.Module,
    image_shape: tuple[int, int, int],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initialises ``net`` on zeros ``[1, *image_shape]`` and the optimiser.

    Args:
      rng: PRNG key.
      net: a classifier called as ``net.apply(variables, images, context, train=...)``
        returning :class:`mtspark_jax.nn.networks.NetworkOutput` (logits in ``.q``);
        it must have a ``num_tasks`` attribute.
      image_shape: ``(H, W, C)``.
      optimizer: an Optax transformation.
    """
    variables = jit_once(functools.partial(net.init, train=False))(
        rng, jnp.zeros((1,) + tuple(image_shape), jnp.uint8), jnp.zeros((1,), jnp.int32)
    )
    return TrainState.create(
        apply_fn=net.apply,
        params=variables["params"],
        tx=optimizer,
        batch_stats=variables.get("batch_stats", {}),
        num_tasks=net.num_tasks,
    )


def context_input(context: Array, num_tasks: int, use_context: bool = True) -> Array:
    """Data-set ids ``[B]`` -> the float context ``[B, num_tasks]`` the gates see.

    One-hot when ``use_context``; all zeros otherwise (the ablation).
    """
    onehot = jax.nn.one_hot(context, num_tasks, dtype=jnp.float32)
    return onehot if use_context else jnp.zeros_like(onehot)


def apply_with_stats(apply_fn, params, batch_stats, image: Array, ctx: Array, train: bool):
    """Runs a classifier; in train mode with BatchNorm also returns the updated statistics.

    Returns ``(NetworkOutput, batch_stats)`` (the input statistics when nothing updates them).
    """
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        if train:
            out, updates = apply_fn(variables, image, ctx, train=True, mutable=["batch_stats"])
            return out, updates["batch_stats"]
    return apply_fn(variables, image, ctx, train=train), batch_stats


def masked_metrics(logits: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """Summed loss / correct / count over the real examples of a batch."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": (ce * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


def batch_loss(apply_fn, params, batch_stats, batch: Batch, num_tasks: int, use_context: bool, train: bool):
    """The masked mean cross-entropy of a classifier on ``batch``: the one loss of
    :func:`train_step` and of every member of :class:`mtspark_jax.vision.image_sweep.ImageSweep`.

    Returns ``(loss, (sums, out, batch_stats))``: ``sums`` from :func:`masked_metrics`,
    the :class:`~mtspark_jax.nn.networks.NetworkOutput` and the (updated) BatchNorm statistics.
    """
    ctx = context_input(batch["context"], num_tasks, use_context)
    out, stats = apply_with_stats(apply_fn, params, batch_stats, batch["image"], ctx, train)
    sums = masked_metrics(out.q, batch["label"], batch["mask"].astype(jnp.float32))
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), (sums, out, stats)


def image_optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    """Adam on a cosine decay from ``learning_rate`` to 0 over ``steps``.

    The peak rate is a hyper-parameter held in the optimiser state
    (``optax.inject_hyperparams``), so that the members of a vmapped sweep
    share this transformation and each keep a rate of their own
    (:func:`set_learning_rate`).
    """
    return optax.inject_hyperparams(_cosine_adam, static_args="steps")(learning_rate=learning_rate, steps=steps)


def _cosine_adam(learning_rate, steps: int) -> optax.GradientTransformation:
    return optax.adam(optax.cosine_decay_schedule(learning_rate, max(int(steps), 1)))


def set_learning_rate(state: TrainState, learning_rate) -> TrainState:
    """``state`` with the peak learning rate of its :func:`image_optimizer` replaced (traceable)."""
    hyper = dict(state.opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def gradient_step(state: TrainState, batch: Batch, use_context: bool = True,
                  apply_fn=None) -> tuple[TrainState, dict[str, Array]]:
    """One gradient step on the masked mean cross-entropy (not jitted: :func:`train_step` is).

    Args:
      state: the training state.
      batch: a loader batch (``image`` ``[B, H, W, C]``, ``label``, ``context``, ``mask`` ``[B]``).
      use_context: feed the data-set context to the gates (``False``: ablation).
      apply_fn: the network to run instead of ``state.apply_fn`` (a sweep
        member's network, which has the same parameters and neuron constants
        of its own).

    Returns:
      ``(new state, metrics)`` with scalar ``loss``, ``accuracy`` and the mean
      spike rate ``spike_rate/<layer>`` of every spiking layer.
    """
    chex.assert_rank(batch["image"], 4)
    apply_fn = apply_fn or state.apply_fn
    mask = batch["mask"].astype(jnp.float32)

    def loss_fn(params):
        return batch_loss(apply_fn, params, state.batch_stats, batch, state.num_tasks, use_context, True)

    (loss, (m, out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    n = jnp.maximum(m["count"], 1.0)
    metrics = {"loss": loss, "accuracy": m["correct"] / n}
    for name, rate in out.spike_rates.items():
        metrics[f"spike_rate/{name}"] = (rate * mask).sum() / n
    return state, metrics


@functools.partial(jax.jit, static_argnames=("use_context",), donate_argnums=(0,))
def train_step(state: TrainState, batch: Batch, use_context: bool = True) -> tuple[TrainState, dict[str, Array]]:
    """:func:`gradient_step`, jitted; ``state`` is donated."""
    return gradient_step(state, batch, use_context)


def eval_sums(state: TrainState, batch: Batch, use_context: bool = True, apply_fn=None) -> dict[str, Array]:
    """Sums over the real examples of ``batch`` (not jitted: :func:`eval_step` is).

    Returns:
      ``loss_sum``, ``correct``, ``count`` and ``spikes/<layer>`` (spikes
      summed over T, units and examples), all scalars.
    """
    _, (sums, out, _) = batch_loss(apply_fn or state.apply_fn, state.params, state.batch_stats, batch,
                                   state.num_tasks, use_context, False)
    mask = batch["mask"].astype(jnp.float32)
    return {**sums, **{f"spikes/{name}": (c * mask).sum() for name, c in out.spike_counts.items()}}


@functools.partial(jax.jit, static_argnames=("use_context",))
def eval_step(state: TrainState, batch: Batch, use_context: bool = True) -> dict[str, Array]:
    """:func:`eval_sums`, jitted."""
    return eval_sums(state, batch, use_context)


def evaluate(state: TrainState, batches: Iterable[Batch], use_context: bool = True) -> dict[str, float]:
    """Accuracy and mean loss over ``batches`` (e.g. ``Loader(...).epoch(0)``)."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        m = eval_step(state, {k: batch[k] for k in ("image", "label", "context", "mask")}, use_context)
        for k in totals:
            totals[k] += float(m[k])
    n = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / n, "loss": totals["loss_sum"] / n, "count": int(totals["count"])}


def recalibrate_batch_stats(state: TrainState, batches: Iterable[Batch], use_context: bool = True,
                            max_batches: int = 80) -> Any:
    """BatchNorm running statistics recomputed from ``batches`` (e.g. one data set's training data).

    Runs the network in train mode (no gradient, parameters unchanged) over up
    to ``max_batches`` batches, starting from ``state.batch_stats``; with the
    trunk's momentum 0.9, 80 batches leave 0.9^80 = 2e-4 of the starting
    statistics. Used for per-data-set statistics (``ImageConfig.task_bn_stats``).

    Returns:
      The new ``batch_stats`` tree (``state.batch_stats`` itself without BatchNorm).
    """
    stats = state.batch_stats
    if not stats:
        return stats
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        stats = _train_mode_stats(state, stats, device_batch(batch), use_context)
    return stats


@functools.partial(jax.jit, static_argnames=("use_context",))
def _train_mode_stats(state: TrainState, stats, batch: Batch, use_context: bool):
    ctx = context_input(batch["context"], state.num_tasks, use_context)
    return apply_with_stats(state.apply_fn, state.params, stats, batch["image"], ctx, train=True)[1]


def energy_per_image(state: TrainState, net: nn.Module, batches: Iterable[Batch],
                     image_shape: tuple[int, int, int], use_context: bool = True) -> dict[str, float]:
    """Spike rate per layer and estimated energy per image over ``batches``.

    Returns :func:`mtspark_jax.nn.energy.summarize` of the mean spike counts per
    image (``spike_rate/<layer>``, ``energy/sops``, ``energy/snn_uJ``,
    ``energy/ann_uJ``, ``energy/ann_over_snn``).
    """
    from mtspark_jax.nn import energy as energy_lib

    totals: dict[str, float] = {}
    for batch in batches:
        m = eval_step(state, {k: batch[k] for k in ("image", "label", "context", "mask")}, use_context)
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    n = max(totals["count"], 1.0)
    return energy_lib.per_example_summary(
        net, image_shape, {k[len("spikes/"):]: v / n for k, v in totals.items() if k.startswith("spikes/")})


def energy_table(energies: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown: one row per data set, spike rate per layer and energy per image."""
    if not energies:
        return ""
    first = next(iter(energies.values()))
    layers = [k for k in first if k.startswith("spike_rate/")]
    head = ["data set"] + [f"rate {k.split('/', 1)[1]}" for k in layers] + [
        "SOPs / image", "SNN uJ / image", "ANN uJ / image", "ANN / SNN"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in energies.items():
        cells = [f"{e[k]:.4f}" for k in layers] + [
            f"{e['energy/sops']:.4g}", f"{e['energy/snn_uJ']:.4g}", f"{e['energy/ann_uJ']:.4g}",
            f"{e['energy/ann_over_snn']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_batch(batch: Batch) -> dict[str, Array]:
    """The arrays a step needs, moved to the default device."""
    return {k: jnp.asarray(np.asarray(batch[k])) for k in ("image", "label", "context", "mask")}



# ---------------------------------------------------------------------------
# Protocols: joint and continual training over several data sets.

PROTOCOLS = ("joint", "continual")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """One image-classification run; ``experiments/train_images.py`` maps flags 1:1.

    Attributes:
      datasets: data sets to train on; for ``continual`` also the stage order.
      protocol: ``joint`` (batches of all data sets interleaved, one stage) or
        ``continual`` (one data set per stage, in ``datasets`` order).
      use_context: feed the data-set context to the dendrites (``False``: the
        ablation, the gates see an all-zero context).
      epochs: epochs per stage (joint: passes over every data set).
      batch_size: examples per step (each batch is from one data set).
      learning_rate: Adam peak rate; cosine decay to 0 over each stage.
      image_shape: common input shape (see :func:`mtspark_jax.vision.data.to_common_shape`).
      time_steps: LIF simulation steps T per image
        (:class:`mtspark_jax.nn.networks.SpikingClassifier`).
      hidden: units of the dendrite-gated spiking layer.
      convs: the trunk, ``features:kernel:stride`` per convolution,
        comma-separated on the command line (``64:5:2,128:3:2``).
      batch_norm: BatchNorm after each convolution.
      dendrites: ``per_neuron`` or ``layer_shared`` dendrite formulation.
      kwta: k-winners-take-all in the gated layer (0: off).
      tau, v_threshold, surrogate: LIF time constant, firing threshold and
        surrogate gradient (``sigmoid``, ``atan`` or ``fast_sigmoid``).
      seed: parameters and shuffling.
      data_dir: TFDS data directory with the prepared data sets.
      max_train_examples / max_eval_examples: keep only the first N examples of
        every split (0: all); for smoke tests.
      eval_batch_size: batch for evaluation.
      log_every: steps between training-metric logs.
      checkpoint: save an Orbax checkpoint after every epoch.
      data_parallel: split every training batch over all visible devices
        (:mod:`mtspark_jax.sharding`; ``batch_size`` must be a multiple of
        the device count); parameters are replicated.
      memory_size: continual only: after each stage keep this many training
        examples (a seeded random subset) of the data set just learned, and
        rehearse them in every later stage (experience replay; 0: off, the
        plain sequential protocol).
      memory_share: fraction of a later stage's batches drawn from the memory
        (the memory is repeated as needed, split evenly over earlier data sets).
      task_bn_stats: evaluate every data set with BatchNorm statistics of its
        own (:func:`recalibrate_batch_stats` on its training data, or on its
        rehearsal memory once its stage is over; the running statistics when
        neither is available) instead of the running statistics, which mix
        all data sets trained so far. The context picks the statistics.
      max_shift: training augmentation (0: off): random translations by up to
        this many pixels, plus left-right flips for data sets where a flip keeps
        the label (:data:`mtspark_jax.vision.data.FLIP_SAFE`: Fashion-MNIST, CIFAR-10).
      augment_datasets: the data sets ``max_shift`` applies to (empty: all);
        a rehearsed memory is augmented like its data set.
      dtype: compute type of the network's convolutions and dense layers,
        ``float32`` or ``bfloat16`` (parameters, optimiser state, membranes
        and the loss stay float32; :class:`mtspark_jax.nn.networks.MTSparkADD`).
    """

    datasets: tuple[str, ...] = ("mnist", "fashion_mnist")
    protocol: str = "joint"
    use_context: bool = True
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    image_shape: tuple[int, int, int] = (32, 32, 3)
    time_steps: int = 4
    hidden: int = 256
    convs: tuple[tuple[int, int, int], ...] = IMAGE_CONVS
    batch_norm: bool = True
    dendrites: str = "per_neuron"
    kwta: int = 0
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "sigmoid"
    seed: int = 0
    data_dir: str = "data/tfds"
    max_train_examples: int = 0
    max_eval_examples: int = 0
    eval_batch_size: int = 500
    log_every: int = 50
    checkpoint: bool = True
    data_parallel: bool = False
    memory_size: int = 0
    memory_share: float = 0.25
    max_shift: int = 0
    augment_datasets: tuple[str, ...] = ()
    task_bn_stats: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        from mtspark_jax.vision import data as data_lib

        compute_dtype(self.dtype)  # validates the name
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if not self.datasets:
            raise ValueError("datasets must name at least one data set")
        for name in self.datasets:
            data_lib.check_name(name)
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets must not repeat, got {self.datasets}")
        for field in ("epochs", "batch_size", "time_steps", "hidden", "eval_batch_size", "log_every"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if len(self.image_shape) != 3 or self.image_shape[-1] not in (1, 3):
            raise ValueError(f"image_shape must be (H, W, 1 or 3), got {self.image_shape}")
        if not self.convs or any(len(c) != 3 for c in self.convs):
            raise ValueError(f"convs must be (features, kernel, stride) triples, got {self.convs}")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")
        for name in self.augment_datasets:
            if name not in self.datasets:
                raise ValueError(f"augment_datasets names {name!r}, which is not in datasets {self.datasets}")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}")
        if not 0.0 < self.memory_share < 1.0:
            raise ValueError(f"memory_share must be in (0, 1), got {self.memory_share}")
        if self.memory_size and self.protocol != "continual":
            raise ValueError("memory_size (rehearsal) only applies to the continual protocol")

    def network(self):
        """The :class:`mtspark_jax.nn.networks.SpikingClassifier` this config describes."""
        from mtspark_jax.vision import data as data_lib
        from mtspark_jax.nn.networks import SpikingClassifier
        from mtspark_jax.nn.spiking import NeuronConfig

        return SpikingClassifier(
            num_actions=data_lib.NUM_CLASSES,
            num_tasks=len(data_lib.DATASETS),
            time_steps=self.time_steps,
            neuron=NeuronConfig(tau=self.tau, v_threshold=self.v_threshold, surrogate=self.surrogate),
            hidden=self.hidden,
            convs=tuple(tuple(c) for c in self.convs),
            batch_norm=self.batch_norm,
            dendrites=self.dendrites,
            kwta=self.kwta or None,
            dtype=compute_dtype(self.dtype),
        )

    def stages(self) -> list[tuple[str, ...]]:
        """Data sets trained in each stage."""
        if self.protocol == "joint":
            return [tuple(self.datasets)]
        return [(name,) for name in self.datasets]


def _take(split: tuple[np.ndarray, np.ndarray], limit: int) -> tuple[np.ndarray, np.ndarray]:
    return split if limit <= 0 else (split[0][:limit], split[1][:limit])


def memory_subset(split: tuple[np.ndarray, np.ndarray], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of ``size`` examples (all of them if fewer) of ``(images [N, ...], labels [N])``."""
    images, labels = split
    idx = np.sort(np.random.default_rng(seed).permutation(len(labels))[: min(size, len(labels))])
    return images[idx], labels[idx]


def rehearsal_sets(memory: Mapping[str, tuple[np.ndarray, np.ndarray]], new_examples: int,
                   share: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The memory, repeated so that it makes up ``share`` of a stage with ``new_examples`` new ones.

    Every earlier data set gets ``share / (1 - share) * new_examples / len(memory)``
    examples per epoch (rounded), its memory cycled in order; the
    :class:`mtspark_jax.vision.data.Loader` then shuffles them with the new data.

    Args:
      memory: data set name -> ``(images [M, ...], labels [M])``, M >= 1.
      new_examples: training examples of the stage's own data set(s).
      share: fraction in (0, 1) of the stage's examples that come from memory.

    Returns:
      name -> ``(images [R, ...], labels [R])`` with the same R for every name.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if not memory:
        return {}
    per_set = max(1, int(round(share / (1.0 - share) * new_examples / len(memory))))
    out = {}
    for name, (images, labels) in memory.items():
        if len(labels) == 0:
            raise ValueError(f"memory of {name} is empty")
        idx = np.arange(per_set) % len(labels)
        out[name] = (images[idx], labels[idx])
    return out


def stage_memory(config: ImageConfig, split: tuple[np.ndarray, np.ndarray], stage: int) -> tuple[np.ndarray, np.ndarray]:
    """The rehearsal memory a continual run keeps of ``split`` after stage ``stage`` (seeded by the run's seed)."""
    return memory_subset(split, config.memory_size, config.seed + 1000 * stage)


def with_own_batch_stats(state: TrainState, config: ImageConfig, name: str,
                         source: tuple[np.ndarray, np.ndarray]) -> TrainState:
    """``state`` with BatchNorm statistics recomputed from data set ``name``'s ``source`` examples.

    ``source`` is ``(images [N, ...], labels [N])``: the data set's training
    split, or its rehearsal memory once its stage is over
    (:func:`recalibrate_batch_stats`; unchanged without BatchNorm).
    """
    from mtspark_jax.vision import data as data_lib

    if not state.batch_stats:
        return state
    batches = data_lib.Loader({name: source}, config.batch_size, seed=config.seed + 7,
                              shape=config.image_shape).epoch(0)
    return state.replace(batch_stats=recalibrate_batch_stats(state, batches, config.use_context))


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A finished image run, as :func:`load_run` restores it.

    Attributes:
      config: the run's :class:`ImageConfig`.
      state: the saved parameters and (running) BatchNorm statistics; its
        optimiser state is fresh.
      step: the checkpoint's step (the run's global epoch index).
      task_batch_stats: data set name -> the BatchNorm statistics of its own
        that the run evaluated it with at that checkpoint (``task_bn_stats``
        runs; empty otherwise). Apply one with ``state.replace(batch_stats=...)``.
    """

    config: ImageConfig
    state: TrainState
    step: int
    task_batch_stats: Mapping[str, Any]


def load_run(workdir: str | os.PathLike) -> LoadedRun:
    """The config and newest checkpoint of a :func:`train_and_evaluate` workdir.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
    """
    import orbax.checkpoint as ocp

    workdir = Path(workdir).absolute()
    raw = json.loads((workdir / "config.json").read_text())
    raw.update(datasets=tuple(raw["datasets"]), image_shape=tuple(raw["image_shape"]),
               augment_datasets=tuple(raw.get("augment_datasets", ())),
               convs=tuple(tuple(c) for c in raw["convs"]))
    config = ImageConfig(**raw)
    state = create_train_state(jax.random.key(0), config.network(), config.image_shape,
                               image_optimizer(config.learning_rate, 1))
    mgr = ocp.CheckpointManager(workdir / "checkpoints", item_handlers=ocp.StandardCheckpointHandler())
    step = mgr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {workdir / 'checkpoints'}")
    # Restored as saved, without a target: only the weights and statistics are kept, so runs
    # saved with another optimiser state layout (plain Adam, before inject_hyperparams) still load.
    saved = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()

    try:
        params = _fit(state.params, saved["params"], "parameters")
        batch_stats = _fit(state.batch_stats, saved.get("batch_stats"), "BatchNorm statistics")
        task_stats = {name: _fit(state.batch_stats, stats, f"statistics of {name!r}")
                      for name, stats in (saved.get("task_batch_stats") or {}).items()}
    except ValueError as err:
        raise ValueError(f"{workdir}: {err}") from err
    return LoadedRun(config, state.replace(params=params, batch_stats=batch_stats), step, task_stats)


def _fit(target: Any, saved: Any, what: str) -> Any:
    """``saved`` (a restored state dict) as arrays in ``target``'s tree; ValueError if it does not fit."""
    try:
        restored = serialization.from_state_dict(target, saved or {})
    except (ValueError, KeyError) as err:
        raise ValueError(f"the saved {what} do not fit the network in config.json: {err}") from err
    if [np.shape(x) for x in jax.tree.leaves(restored)] != [np.shape(x) for x in jax.tree.leaves(target)]:
        raise ValueError(f"the saved {what} do not fit the network in config.json: shapes differ")
    return jax.tree.map(jnp.asarray, restored)


def _checkpoint_item(state: TrainState, task_batch_stats: Mapping[str, Any]) -> dict[str, Any]:
    """What an image run saves per epoch (and :func:`load_run` restores).

    ``task_batch_stats`` (name -> BatchNorm statistics a data set was last
    evaluated with) is saved only when there are any.
    """
    item = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}
    kept = {n: stats for n, stats in task_batch_stats.items() if stats}  # empty without BatchNorm
    if kept:
        item["task_batch_stats"] = kept
    return item


def results_table(config: ImageConfig, rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per stage, test accuracy (%) of every data set seen so far."""
    header = "| stage | trained on | " + " | ".join(config.datasets) + " | wall s |"
    lines = [header, "|" + "---|" * (len(config.datasets) + 3)]
    for row in rows:
        cells = [f"{100 * row['accuracy'][n]:.2f}" if n in row["accuracy"] else "-" for n in config.datasets]
        lines.append(f"| {row['stage']} | {'+'.join(row['trained_on'])} | " + " | ".join(cells) + f" | {row['wall_s']:.0f} |")
    return "\n".join(lines)


@dataclasses.dataclass
class ImageRun:
    """What the steps of :func:`train_and_evaluate` share: the run's outputs, evaluation loaders and counters.

    Attributes:
      config, workdir: the run.
      net: the network (``config.network()``).
      logger: ``metrics.csv`` and TensorBoard.
      ckpt: Orbax manager of ``workdir/checkpoints`` (None: ``config.checkpoint`` off).
      eval_loaders: data set name -> its test set's loader.
      mesh: the data-parallel mesh (None: one device).
      start: the run's start (``time.time()``).
      step: batches trained; epoch_global: epochs over all stages.
    """

    config: ImageConfig
    workdir: Path
    net: nn.Module
    logger: MetricsLogger
    ckpt: Any
    eval_loaders: dict[str, Any]
    mesh: Any
    start: float
    step: int = 0
    epoch_global: int = 0

    def guard(self, what: str):
        """Context: an OSError while writing ``what`` becomes one line
        (:func:`mtspark_jax.workdir.guard_writes`; image runs do not resume)."""
        return guard_writes(f"{what} in {self.workdir}", None)

    def log(self, metrics: Mapping[str, float], stage: int) -> None:
        """One row per metric at the current step, flushed."""
        with self.guard("the logs (metrics.csv, tb/)"):
            self.logger.scalars(metrics, self.step, time=f"{time.time() - self.start:.1f}", stage=stage,
                                epoch=self.epoch_global)
            self.logger.flush()


def load_image_sets(config: ImageConfig) -> tuple[dict, dict]:
    """``(train sets, test sets)``: name -> ``(images, labels)``, cut to ``max_*_examples``.

    Raises mtspark_jax.vision.data.DataNotFoundError for a data set that is not prepared.
    """
    from mtspark_jax.vision import data as data_lib

    train_sets, test_sets = {}, {}
    for name in config.datasets:  # every data set is loaded (or reported missing) first
        train_sets[name] = _take(data_lib.load_split(name, "train", config.data_dir), config.max_train_examples)
        test_sets[name] = _take(data_lib.load_split(name, "test", config.data_dir), config.max_eval_examples)
    return train_sets, test_sets


def open_image_run(config: ImageConfig, workdir: Path, test_sets: Mapping[str, Any], start: float) -> ImageRun:
    """Checks the data-parallel batch, writes ``config.json`` and opens the logs and checkpoints."""
    import orbax.checkpoint as ocp

    from mtspark_jax.vision import data as data_lib

    mesh = None
    if config.data_parallel:
        from mtspark_jax import sharding

        mesh = sharding.make_mesh()
        if config.batch_size % mesh.devices.size:
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {mesh.devices.size} devices")
    with guard_writes(f"{workdir / 'config.json'}", None):
        (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        logger = MetricsLogger(workdir, columns=("time", "stage", "epoch"), eval_csv=False)
    ckpt = None
    if config.checkpoint:
        ckpt = ocp.CheckpointManager(
            workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )
    eval_loaders = {
        n: data_lib.Loader({n: test_sets[n]}, config.eval_batch_size, shape=config.image_shape, shuffle=False)
        for n in config.datasets
    }
    return ImageRun(config, workdir, config.network(), logger, ckpt, eval_loaders, mesh, start)


def train_epoch(run: ImageRun, state: TrainState, loader: Any, epoch: int, stage: int, names: Sequence[str],
                progress: bool) -> TrainState:
    """One epoch of ``loader``; logs the training metrics every ``log_every`` batches."""
    from tqdm import tqdm

    from mtspark_jax import sharding

    config = run.config
    bar = tqdm(loader.epoch(epoch), total=loader.num_batches(), disable=not progress,
               desc=f"stage {stage} ({'+'.join(names)}) epoch {epoch + 1}/{config.epochs}")
    for batch in bar:
        batch = device_batch(batch) if run.mesh is None else sharding.shard_batch(device_batch(batch), run.mesh)
        state, metrics = train_step(state, batch, config.use_context)
        run.step += 1
        if run.step % config.log_every == 0:
            metrics = {f"train/{k}": float(v) for k, v in metrics.items()}
            run.log(metrics, stage)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/accuracy']:.3f}")
    return state


def evaluate_seen(run: ImageRun, state: TrainState, seen: Sequence[str], names: Sequence[str],
                  train_sets: Mapping[str, Any], memory: Mapping[str, Any]) -> tuple[dict, dict]:
    """Test metrics of every data set seen so far: ``(name -> metrics, name -> own BatchNorm statistics)``.

    Each data set's own statistics come from the stage's data, else the memory, else none.
    """
    accs, task_stats = {}, {}
    for n in seen:
        source = train_sets[n] if n in names else memory.get(n)
        evaluated = state
        if run.config.task_bn_stats and source is not None:
            evaluated = with_own_batch_stats(state, run.config, n, source)
            task_stats[n] = evaluated.batch_stats
        accs[n] = evaluate(evaluated, run.eval_loaders[n].epoch(0), run.config.use_context)
    return accs, task_stats


def train_stage(run: ImageRun, state: TrainState | None, key: Array, stage: int, names: Sequence[str],
                train_sets: Mapping[str, Any], memory: Mapping[str, Any], seen: Sequence[str], progress: bool
                ) -> tuple[TrainState, dict[str, Any]]:
    """Trains stage ``stage`` on ``names`` (plus rehearsal from ``memory``), evaluating every data set
    in ``seen``, logging and checkpointing after every epoch; returns the state and the stage's results
    row. ``state`` None: a fresh network (the first stage)."""
    import orbax.checkpoint as ocp

    from mtspark_jax import sharding
    from mtspark_jax.vision import data as data_lib

    config = run.config
    sets = {n: train_sets[n] for n in names}
    sets.update(rehearsal_sets(memory, sum(len(y) for _, y in sets.values()), config.memory_share))
    loader = data_lib.Loader(sets, config.batch_size, seed=config.seed + 1000 * stage, shape=config.image_shape,
                             max_shift=config.max_shift, augment_sets=config.augment_datasets or None)
    tx = image_optimizer(config.learning_rate, config.epochs * loader.num_batches())
    if state is None:
        state = create_train_state(key, run.net, config.image_shape, tx)
    else:  # a fresh optimiser and schedule for the new stage; weights carried over
        state = state.replace(step=0, tx=tx, opt_state=tx.init(state.params))
    if run.mesh is not None:
        state = sharding.replicate(state, run.mesh)
    for epoch in range(config.epochs):
        state = train_epoch(run, state, loader, epoch, stage, names, progress)
        accs, task_stats = evaluate_seen(run, state, seen, names, train_sets, memory)
        run.log({f"test/{n}/accuracy": m["accuracy"] for n, m in accs.items()}, stage)
        print(f"stage {stage} epoch {epoch + 1}: step {run.step}, "
              + ", ".join(f"{n} {100 * m['accuracy']:.2f}%" for n, m in accs.items())
              + f", {time.time() - run.start:.0f} s", flush=True)
        if run.ckpt is not None:
            with guard_save(f"checkpoint {run.epoch_global} in {run.workdir / 'checkpoints'}", None):
                run.ckpt.save(run.epoch_global, args=ocp.args.StandardSave(_checkpoint_item(state, task_stats)))
        run.epoch_global += 1
    return state, {"stage": stage, "trained_on": list(names),
                   "accuracy": {n: m["accuracy"] for n, m in accs.items()}, "wall_s": time.time() - run.start}


def write_results(run: ImageRun, state: TrainState, rows: Sequence[Mapping[str, Any]], seen: Sequence[str]) -> None:
    """``results.md``, ``energy.md`` and ``results.json``: the stages' accuracies and the final network's
    spike rates and energy on every test set (Horowitz 45 nm constants)."""
    config = run.config
    energies = {n: energy_per_image(state, run.net, run.eval_loaders[n].epoch(0), config.image_shape,
                                    config.use_context) for n in seen}
    with run.guard("the results (results.md, energy.md, results.json)"):
        (run.workdir / "results.md").write_text(results_table(config, rows) + "\n")
        (run.workdir / "energy.md").write_text(energy_table(energies) + "\n")
        (run.workdir / "results.json").write_text(json.dumps(
            {"config": dataclasses.asdict(config), "stages": rows, "energy": energies}, indent=2))


def train_and_evaluate(config: ImageConfig, workdir: str | os.PathLike, progress: bool = True) -> list[dict[str, Any]]:
    """Runs ``config``'s protocol; logs, checkpoints and writes the results table.

    After each stage the test accuracy of every data set seen so far is
    measured (continual: the forgetting of earlier stages shows here).

    Writes under ``workdir``: ``tb/`` (TensorBoard), ``metrics.csv``,
    ``checkpoints/`` (Orbax, one per epoch, the last 2 kept), ``config.json``,
    ``results.md``, ``energy.md`` (spike rate per layer and estimated energy
    per image of the final network on every test set, :func:`energy_per_image`)
    and ``results.json`` (with the energy under ``"energy"``).

    Returns:
      One dict per stage: ``stage``, ``trained_on``, ``accuracy`` (name -> test
      accuracy in [0, 1]), ``wall_s`` (seconds since the start).

    Raises:
      mtspark_jax.vision.data.DataNotFoundError: a data set is not prepared (one line
        naming the command that prepares it), before any training.
      mtspark_jax.workdir.WorkdirLocked: another process writes ``workdir`` (nothing written).
      mtspark_jax.workdir.WriteFailed: a checkpoint, a log or a result could not be written (one line).
    """
    workdir = Path(workdir).absolute()
    start = time.time()
    train_sets, test_sets = load_image_sets(config)
    with hold(workdir):
        run = open_image_run(config, workdir, test_sets, start)
        key = jax.random.key(config.seed)
        state, rows, seen = None, [], []
        memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # continual rehearsal (memory_size > 0)
        try:
            for stage, names in enumerate(config.stages()):
                seen += [n for n in names if n not in seen]
                state, row = train_stage(run, state, key, stage, names, train_sets, memory, seen, progress)
                rows.append(row)
                if config.memory_size:
                    memory.update({n: stage_memory(config, train_sets[n], stage) for n in names})
            if run.ckpt is not None:
                with guard_save(f"the checkpoints in {run.workdir / 'checkpoints'}", None):
                    run.ckpt.wait_until_finished()
                run.ckpt.close()
            with run.guard("the logs (metrics.csv, tb/)"):
                run.logger.close()
        except BaseException:
            close_after_failure(run.logger.close, *((run.ckpt.close,) if run.ckpt is not None else ()))
            raise
        write_results(run, state, rows, seen)
    return rows

