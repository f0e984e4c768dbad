"""Permuted MNIST, continual: an MLP with active dendrites and kWTA, spiking or ReLU.

The protocol of Iyer et al. 2022 ("Avoiding catastrophe: active dendrites
enable multi-task learning in dynamic environments"): task ``t`` is MNIST with
its pixels shuffled by one fixed random permutation; the tasks are trained one
after another (``epochs_per_task`` epochs each, no replay), and after the last
task the test accuracy is averaged over all tasks.

Data flow: ``load_split("mnist", ...)`` (uint8 ``[N, 28, 28, 1]``) ->
:func:`task_permutations` (``[tasks, 784]`` from a seed) ->
:func:`permute_images` (uint8 ``[N, 784]`` per task) -> :func:`task_contexts`
(one context vector per task, ``[tasks, d_c]``) -> :func:`train_epoch` (one
jitted ``lax.scan`` over the shuffled batches of an epoch) -> :func:`evaluate`
(one jitted scan over the test set) -> :func:`run_continual`.

Every task is permuted, task 0 included (no identity task), as in Numenta's
``PermutedMNIST``. The labels are never touched.

Network (:class:`DendriticSpikingMLP`), ``L`` hidden layers of ``width`` units
and a linear read-out::

    x [B, 784] = pixel / 255 (normalize: then (x - 0.1306) / 0.3081, Numenta's PermutedMNIST)
    layer l:  I = Dense(width)(input)             kernel * a fixed 0/1 mask (weight_sparsity)
              I = I * sigmoid(segment activation) (dendritic gate; context [C, d_c])
              I = kWTA(I, k)                      (k winners per sample and step)
              units="spiking": S = LIF(I), spikes [T, B, width]; the same current at each of the T steps
              units="relu":    h = I after kWTA (the winners pass unchanged, as nupic.torch's
                               KWinners in Numenta's DendriticMLP), ReLU(I) without kWTA
    logits = Dense(10)(mean_t S_L, or h_L)        (spiking: the per-step read-out averaged over T)

``dendrites=False`` drops the gate (kWTA only), ``kwta=False`` the kWTA. The
context (``context``):

* ``task``: the one-hot task id (``d_c = tasks``). Segment ``j`` of unit ``i``
  then has activation ``U_ij[t]`` for task ``t``; only those weights receive
  gradient during task ``t``, so the gates of a task stop changing once its
  training is over.
* ``zero``: all zeros, so every gate is sigmoid(0) = 0.5 for every task (the
  no-context ablation).
* ``prototype``: the task's prototype, the mean of its permuted training images
  (``d_c = 784``): Numenta's prototype context. With ``infer_context`` the
  evaluation gives each test image the prototype nearest to it (Euclidean)
  among the tasks trained so far, as Numenta's evaluation does; training uses
  the task's own.

Every unit has one dendritic segment per task (``num_tasks`` segments of
``d_c`` weights). :data:`RECIPES` and :data:`VARIANTS` name whole settings;
:func:`preset` builds one (``experiments/permuted_mnist.py --recipe=numenta
--variant=kwta_only``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, get_args

import chex
import flax.linen as nn
import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mtspark_jax.init_jit import jit_once
from mtspark_jax.nn import dendrites, spiking
from mtspark_jax.nn import energy as energy_lib
from mtspark_jax.nn.networks import merge_time, split_time, spiking_init
from mtspark_jax.nn.spiking import NeuronConfig

Array = jax.Array
CONTEXTS = ("task", "zero", "prototype")
UNITS = ("spiking", "relu")
NEURON_KINDS = get_args(spiking.NeuronKind)  # ("lif", "if")
SPIKING_INITS = ("gain", "fan_in")
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10
MNIST_MEAN, MNIST_STD = 0.13062755, 0.30810780
"""Pixel mean and std of MNIST's training set (of x / 255), as Numenta's ``PermutedMNIST`` normalises."""


# ---------------------------------------------------------------------------
# The data set.


def task_permutations(seed: int, num_tasks: int, num_pixels: int = NUM_PIXELS) -> np.ndarray:
    """One random pixel permutation per task, from ``seed`` alone.

    Args:
      seed: any non-negative integer; the same seed gives the same permutations
        on every platform (NumPy's ``PCG64`` generator).
      num_tasks: number of tasks, >= 1.
      num_pixels: pixels per image (784 for MNIST).

    Returns:
      int32 ``[num_tasks, num_pixels]``; row ``t`` is task ``t``'s permutation
      (every task is permuted, task 0 included).
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(num_pixels) for _ in range(num_tasks)]).astype(np.int32)


def permute_images(images: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Flattens ``images [N, ...]`` to ``[N, P]`` and reorders the pixels.

    ``out[:, j] = flat[:, permutation[j]]``; dtype kept (uint8 for MNIST).
    """
    flat = np.asarray(images).reshape(len(images), -1)
    permutation = np.asarray(permutation)
    if permutation.shape != (flat.shape[1],):
        raise ValueError(f"permutation must be [{flat.shape[1]}], got shape {permutation.shape}")
    return flat[:, permutation]


def permuted_splits(split: tuple[np.ndarray, np.ndarray], permutations: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(images [N, P], labels [N])`` per task; the labels are the same array for all."""
    images, labels = split
    return [(permute_images(images, p), labels) for p in permutations]


def pixels(config: PermutedConfig, images: Array) -> Array:
    """uint8 ``[N, P]`` -> float32 ``[N, P]``: ``x / 255``, standardised when ``config.normalize``.

    Works on NumPy and JAX arrays alike (the result has the input's array type).
    """
    x = images.astype(np.float32) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD if config.normalize else x


def task_contexts(config: PermutedConfig, images: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """Every task's context vector, unscaled (:func:`train_epoch` multiplies by ``context_scale``).

    Args:
      config: the run; ``config.context`` picks the kind.
      images: the unpermuted training images, uint8 ``[N, ...]`` with ``P`` pixels each.
      permutations: ``[num_tasks, P]`` (:func:`task_permutations`).

    Returns:
      float32 ``[num_tasks, d_c]``: the identity (``task``), zeros (``zero``),
      both ``d_c = num_tasks``; or (``prototype``, ``d_c = P``) row ``t`` =
      the mean over the training images of :func:`pixels` of task ``t``'s
      permuted images, computed as the permuted mean image (pixels are an
      affine map of the bytes, so the mean commutes with them and with the
      permutation).
    """
    num_tasks = len(permutations)
    if config.context == "task":
        return np.eye(num_tasks, dtype=np.float32)
    if config.context == "zero":
        return np.zeros((num_tasks, num_tasks), np.float32)
    flat = np.asarray(images).reshape(len(images), -1)
    mean_bytes = flat.mean(axis=0, dtype=np.float64)
    return np.asarray(pixels(config, mean_bytes), np.float32)[np.asarray(permutations)]


def nearest_context(x: Array, contexts: Array, valid: Array) -> Array:
    """Index of the row of ``contexts [C, P]`` nearest to each ``x [B, P]`` (Euclidean), among ``valid [C]`` rows.

    Returns int ``[B]``. Numenta's ``infer_prototype``: at test time each image
    gets the prototype closest to it.
    """
    d2 = (x * x).sum(-1, keepdims=True) - 2.0 * x @ contexts.T + (contexts * contexts).sum(-1)
    return jnp.argmin(jnp.where(valid[None, :], d2, jnp.inf), axis=-1)


# ---------------------------------------------------------------------------
# The network.


def weight_mask(key: Array, shape: tuple[int, int], sparsity: float) -> Array:
    """A fixed 0/1 float32 mask ``[fan_in, units]`` with ``round(sparsity * fan_in)`` zeros per unit.

    Each unit (column) gets its own random set of zeroed inputs, as
    nupic.torch's ``SparseWeights`` draws them.
    """
    fan_in, _ = shape
    num_zeros = round(sparsity * fan_in)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, shape), axis=0), axis=0)
    return (ranks >= num_zeros).astype(jnp.float32)


class SparseDense(nn.Module):
    """Dense layer whose kernel is multiplied by a fixed random mask (``sparsity`` > 0).

    The mask lives in the ``masks`` collection (drawn at init from the
    ``params`` RNG, never trained) and the kernel starts zero where the mask
    is: the forward pass uses ``kernel * mask``, so the masked entries get a
    zero gradient and Adam (no weight decay) leaves them at zero.

    Attributes:
      features: output units.
      sparsity: fraction of each unit's inputs cut, in [0, 1); 0 is a plain Dense.
      kernel_init, bias_init: initialisers of ``kernel [fan_in, features]`` and ``bias [features]``.
    """

    features: int
    sparsity: float = 0.0
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1], self.features)
        if self.sparsity > 0:
            mask = self.variable("masks", "kernel",
                                 lambda: weight_mask(self.make_rng("params"), shape, self.sparsity)).value
            kernel = self.param("kernel", lambda key, s: self.kernel_init(key, s) * mask, shape) * mask
        else:
            kernel = self.param("kernel", self.kernel_init, shape)
        return x @ kernel + self.param("bias", self.bias_init, (self.features,))


class DendriticSpikingMLP(nn.Module):
    """MLP: per layer masked Dense -> dendritic gate -> kWTA -> LIF or ReLU; linear read-out.

    Call as ``net.apply(variables, x [B, P] float, context [C, d_c])`` or
    ``net.apply(variables, x, context [C, d_c], context_index [B] int)``;
    returns logits ``[B, num_classes]``. Without ``context_index``, ``C`` is
    1 (one context for the whole batch, as in training: the gates are then
    computed once, ``[1, width]``) or ``B``; with it, sample ``b`` uses row
    ``context_index[b]`` and the gates are computed once per row. The
    ``variables`` hold ``params`` and, with ``weight_sparsity``, ``masks``.
    With ``mutable=["intermediates"]`` it also records per layer the gate
    ``gate{l}_out`` ``[C or B, width]`` and ``activity{l}`` ``[B, width]``
    (spiking: spikes per step; relu: the unit's output).

    Initialisation: ``units="spiking"`` draws the hidden kernels with
    :func:`mtspark_jax.nn.networks.spiking_init` (``init_gain``), biases 0,
    read-out Flax's default. ``units="relu"`` uses Numenta's ``DendriticMLP``
    rule: every kernel ``U(-b, b)``, ``b = 1 / sqrt(input density * weight
    density * fan_in)`` (input density ``k / width`` after a kWTA layer, else
    1; weight density ``1 - weight_sparsity``), biases ``U(+-1/sqrt(fan_in))``
    (PyTorch's ``nn.Linear``).

    Attributes:
      width: units per hidden layer.
      k: kWTA winners per layer (and per sample and step).
      num_tasks: segments per unit (one per task).
      time_steps: T (spiking only); the input is the same current at every step.
      num_layers: hidden layers.
      num_classes: read-out size.
      dendrites: gate each layer's current by its dendrites (``False``: no gates).
      kwta: keep the ``k`` largest currents per layer (``False``: no kWTA).
      units: ``spiking`` (LIF) or ``relu``.
      weight_sparsity: fraction of each unit's feed-forward inputs (hidden and
        read-out) cut by a fixed mask.
      context_density: the dendrites' init (:class:`mtspark_jax.nn.dendrites.DendriticGate`).
      neuron: the spiking units' constants.
      relu_density: the input density the ReLU init assumes after a hidden
        layer without kWTA (Numenta's ``DendriticMLP``: 1; their
        ``ModifiedInitStandardMLP`` baseline: 0.5, half the units active).
      init_gain: std ``gain / sqrt(fan_in)`` of the spiking hidden weights;
        large enough that the kWTA winners reach the threshold at initialisation.
      neuron_kind: ``lif`` or ``if`` (no leak), the spiking units' dynamics.
      spiking_init: ``gain`` (:func:`mtspark_jax.nn.networks.spiking_init` for the
        hidden kernels) or ``fan_in`` (the ReLU units' rule above for every layer,
        with the input density after a kWTA layer taken as ``k / width *
        init_spike_rate``: the fraction of inputs that spike at a step).
      init_spike_rate: ``spiking_init="fan_in"``: the rate at which a kWTA winner
        is assumed to fire, in (0, 1].
      kwta_on_mean: spiking units: pick each layer's winners once per image, from
        its current averaged over the T steps, and keep them at every step
        (default: per step; the same for the first layer, whose current is constant).
    """

    width: int = 1024
    k: int = 51
    num_tasks: int = 10
    time_steps: int = 4
    num_layers: int = 2
    num_classes: int = NUM_CLASSES
    dendrites: bool = True
    kwta: bool = True
    units: str = "spiking"
    weight_sparsity: float = 0.0
    context_density: float = 1.0
    neuron: NeuronConfig = NeuronConfig()
    init_gain: float = 5.0
    relu_density: float = 1.0
    neuron_kind: str = "lif"
    spiking_init: str = "gain"
    kwta_on_mean: bool = False
    init_spike_rate: float = 1.0

    def _dense(self, features: int, fan_in: int, input_density: float, hidden: bool, name: str) -> SparseDense:
        """The layer's masked Dense with the initialisation of :attr:`units` (class docstring)."""
        if self.units == "relu" or self.spiking_init == "fan_in":
            return SparseDense(features, self.weight_sparsity, name=name,
                               kernel_init=dendrites.uniform_fan_in(fan_in, input_density * (1 - self.weight_sparsity)),
                               bias_init=dendrites.uniform_fan_in(fan_in))
        if hidden:
            return SparseDense(features, self.weight_sparsity, kernel_init=spiking_init(self.init_gain), name=name)
        return SparseDense(features, self.weight_sparsity, name=name)

    @nn.compact
    def __call__(self, x: Array, context: Array, context_index: Array | None = None) -> Array:
        chex.assert_rank([x, context], 2)
        if self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; expected one of {UNITS}")
        if context_index is None and context.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"context must be [1 or {x.shape[0]}, d_c] without context_index, "
                             f"got shape {context.shape}")
        if context_index is not None:
            chex.assert_shape(context_index, (x.shape[0],))
        spiking_units = self.units == "spiking"
        h = x[None] if spiking_units else x  # spiking: [1, B, P], the same input current at every step
        density = 1.0
        for layer in range(self.num_layers):
            dense = self._dense(self.width, h.shape[-1], density, True, f"fc{layer}")
            current = split_time(dense(merge_time(h)), h.shape[0]) if spiking_units else dense(h)
            if self.dendrites:
                gate = dendrites.DendriticGate(self.width, self.num_tasks, context_density=self.context_density,
                                               name=f"gate{layer}")(context)
                self.sow("intermediates", f"gate{layer}_out", gate)
                if context_index is not None:
                    gate = gate[context_index]
                current = current * gate
            if self.kwta and spiking_units and self.kwta_on_mean:
                current = current * dendrites.kwta_mask(current.mean(axis=0), self.k)[None]
            elif self.kwta:
                current = dendrites.kwta(current, self.k)
            if spiking_units:
                h = spiking.multistep_spikes(jnp.broadcast_to(current, (self.time_steps,) + current.shape[1:]),
                                             self.neuron, self.neuron_kind)
                self.sow("intermediates", f"activity{layer}", h.mean(axis=0))
            else:
                h = current if self.kwta else jax.nn.relu(current)
                self.sow("intermediates", f"activity{layer}", h)
            density = self.k / self.width if self.kwta else self.relu_density
            if spiking_units:  # the next layer's inputs are spikes: a unit fires at some of the steps
                density *= self.init_spike_rate
        features = h.mean(axis=0) if spiking_units else h
        return self._dense(self.num_classes, features.shape[-1], density, False, "readout")(features)


# ---------------------------------------------------------------------------
# Config, presets, state, steps.


@dataclasses.dataclass(frozen=True)
class PermutedConfig:
    """One permuted-MNIST continual run; ``experiments/permuted_mnist.py`` maps flags 1:1.

    The defaults are the setting of the reported spiking runs, picked for a
    2-core CPU (a 10-task run in about 5-8 minutes) by short tuning runs on 3
    tasks: width 512 (Numenta: 2048) and T = 2 for time; kWTA 15 % (Numenta:
    5 %), because a spiking unit passes on only whether and how often it
    fired, and with 5 % of 512 units (26 winners) one epoch reached 70-75 % on
    one task against 85-90 % with 15 %; Adam 2e-3 (1e-3 and 5e-4 learned
    slower, 4e-3 forgot more); context scale 20 (see below). Numenta's own
    setting is ``RECIPES["numenta"]``.

    Attributes:
      num_tasks: permutations, trained one after another.
      epochs_per_task: passes over the training set per task.
      width: units per hidden layer.
      kwta_fraction: kWTA winners as a fraction of ``width`` (k = round(fraction * width), >= 1).
      time_steps: LIF steps T per image (spiking units only).
      num_layers: hidden layers.
      learning_rate: Adam's rate, constant; the optimiser state carries over tasks.
      batch_size: examples per step; an epoch drops the last partial batch
        (a new shuffle each epoch).
      eval_batch_size: examples per evaluation step.
      seed: parameters, weight masks, shuffling and the permutations (:func:`task_permutations`).
      context: ``task`` (one-hot task id), ``zero`` (ablation) or ``prototype``
        (the task's mean training image, :func:`task_contexts`).
      context_scale: the dendrites see ``context_scale`` times the context. With a
        one-hot context, segment activations start in ``U(-1/sqrt(tasks),
        1/sqrt(tasks))`` (:class:`mtspark_jax.nn.dendrites.DendriticGate`), and the
        largest-magnitude of ``tasks`` segments lies near the bound: for 10
        tasks the initial gates are about sigmoid(+-0.29) = 0.43 or 0.57, too
        alike for kWTA to pick different units per task. The scale widens the
        initial gates (scale 10: about 0.05 or 0.95, a random half of the units
        per task, as in XdG) and multiplies the segments' effective learning rate.
      dendrites: dendritic gates on (``False``: no gates; ``context`` is then unused).
      kwta: kWTA on every hidden layer (``False``: spiking units fire freely,
        ReLU units are plain ReLU).
      units: ``spiking`` (LIF, T = ``time_steps``) or ``relu`` (non-spiking).
      weight_sparsity: fraction of every feed-forward kernel (hidden layers and
        read-out, as Numenta's ``DendriticMLP``) cut by a fixed random mask per
        unit, in [0, 1) (:class:`SparseDense`).
      context_density: the segments start in ``U(-b, b)``, ``b = 1 /
        sqrt(context_density * d_c)``; Numenta's ``context_percent_on``.
      normalize: standardise the pixels with MNIST's mean and std (:func:`pixels`).
      infer_context: with ``context=prototype``, evaluate each test image with
        the prototype nearest to it among the tasks trained so far (Numenta's
        protocol) instead of its task's; no effect with other contexts.
      tau, v_threshold, surrogate: neuron constants and surrogate gradient.
      neuron_kind: ``lif`` (leaky, ``tau``) or ``if`` (no leak) spiking units.
      soft_reset: after a spike subtract the threshold (``False``: reset to 0).
        An IF unit with soft reset driven by a constant current ``I`` for ``T``
        steps fires ``min(T, floor(T * I / v_threshold))`` times: a clipped
        ReLU quantised to ``T`` levels. A LIF unit with hard reset (tau 2, T 4)
        fires 0, 1, 2 or 4 times and saturates from ``I = 2 * v_threshold``.
      spiking_init: ``gain`` (``init_gain``) or ``fan_in`` (Numenta's rule, as the ReLU units).
      init_spike_rate: with ``spiking_init="fan_in"``, the spike rate of a kWTA
        winner that sizes the next layer's init (:class:`DendriticSpikingMLP`).
      kwta_on_mean: spiking units: each layer's kWTA winners picked once per
        image from its current averaged over T (:class:`DendriticSpikingMLP`).
      detach_reset: no gradient through the reset (:class:`mtspark_jax.nn.spiking.NeuronConfig`).
      surrogate_alpha: the surrogate's sharpness; 0 takes its default
        (:data:`mtspark_jax.nn.spiking.DEFAULT_ALPHA`; sigmoid: 4).
      init_gain: hidden-layer init gain of spiking units (:class:`DendriticSpikingMLP`).
      relu_density: input density the ReLU init assumes after a hidden layer
        without kWTA (:class:`DendriticSpikingMLP`).
    """

    num_tasks: int = 10
    epochs_per_task: int = 3
    width: int = 512
    kwta_fraction: float = 0.15
    time_steps: int = 2
    num_layers: int = 2
    learning_rate: float = 2e-3
    batch_size: int = 256
    eval_batch_size: int = 1000
    seed: int = 0
    context: str = "task"
    context_scale: float = 20.0
    dendrites: bool = True
    kwta: bool = True
    units: str = "spiking"
    weight_sparsity: float = 0.0
    context_density: float = 1.0
    normalize: bool = False
    infer_context: bool = False
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "sigmoid"
    neuron_kind: str = "lif"
    soft_reset: bool = False
    spiking_init: str = "gain"
    kwta_on_mean: bool = False
    detach_reset: bool = False
    surrogate_alpha: float = 0.0
    init_spike_rate: float = 1.0
    init_gain: float = 5.0
    relu_density: float = 1.0

    def __post_init__(self):
        for name in ("num_tasks", "epochs_per_task", "width", "time_steps", "num_layers", "batch_size",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; expected one of {CONTEXTS}")
        if self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; expected one of {UNITS}")
        if self.neuron_kind not in NEURON_KINDS:
            raise ValueError(f"unknown neuron_kind {self.neuron_kind!r}; expected one of {NEURON_KINDS}")
        if not 0.0 < self.init_spike_rate <= 1.0:
            raise ValueError(f"init_spike_rate must be in (0, 1], got {self.init_spike_rate}")
        if self.surrogate_alpha < 0:
            raise ValueError(f"surrogate_alpha must be >= 0 (0: the surrogate's default), got {self.surrogate_alpha}")
        if self.spiking_init not in SPIKING_INITS:
            raise ValueError(f"unknown spiking_init {self.spiking_init!r}; expected one of {SPIKING_INITS}")
        if not 0.0 < self.kwta_fraction <= 1.0:
            raise ValueError(f"kwta_fraction must be in (0, 1], got {self.kwta_fraction}")
        if not 0.0 <= self.weight_sparsity < 1.0:
            raise ValueError(f"weight_sparsity must be in [0, 1), got {self.weight_sparsity}")
        if not 0.0 < self.relu_density <= 1.0:
            raise ValueError(f"relu_density must be in (0, 1], got {self.relu_density}")
        if not 0.0 < self.context_density <= 1.0:
            raise ValueError(f"context_density must be in (0, 1], got {self.context_density}")
        if not self.context_scale > 0:
            raise ValueError(f"context_scale must be > 0, got {self.context_scale}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self.neuron  # validates the neuron constants

    @property
    def k(self) -> int:
        """kWTA winners per layer."""
        return max(1, round(self.kwta_fraction * self.width))

    @property
    def variant(self) -> str:
        """Short name of the architecture: ``dendrites_<context>`` (``_nokwta`` appended
        without kWTA), ``kwta_only`` or ``mlp`` (neither dendrites nor kWTA)."""
        if self.dendrites:
            return f"dendrites_{self.context}" + ("" if self.kwta else "_nokwta")
        return "kwta_only" if self.kwta else "mlp"

    @property
    def infers_context(self) -> bool:
        """Whether evaluation picks each test image's context (:func:`nearest_context`)."""
        return self.infer_context and self.context == "prototype" and self.dendrites

    def context_dim(self, num_pixels: int = NUM_PIXELS) -> int:
        """``d_c``: ``num_pixels`` for prototypes, ``num_tasks`` for the one-hot (or zero) context."""
        return num_pixels if self.context == "prototype" else self.num_tasks

    def network(self) -> DendriticSpikingMLP:
        return DendriticSpikingMLP(
            width=self.width, k=self.k, num_tasks=self.num_tasks, time_steps=self.time_steps,
            num_layers=self.num_layers, dendrites=self.dendrites, kwta=self.kwta, units=self.units,
            weight_sparsity=self.weight_sparsity, context_density=self.context_density,
            neuron=self.neuron, init_gain=self.init_gain, relu_density=self.relu_density,
            neuron_kind=self.neuron_kind, spiking_init=self.spiking_init, kwta_on_mean=self.kwta_on_mean,
            init_spike_rate=self.init_spike_rate,
        )

    @property
    def neuron(self) -> NeuronConfig:
        return NeuronConfig(tau=self.tau, v_threshold=self.v_threshold, surrogate=self.surrogate,
                            v_reset=None if self.soft_reset else 0.0, detach_reset=self.detach_reset,
                            alpha=self.surrogate_alpha or None)


RECIPES: dict[str, PermutedConfig] = {
    "default": PermutedConfig(),
    # Numenta's prototype experiment for 10 tasks (nupic.research,
    # projects/dendrites/permutedMNIST/experiments/prototype.py, PROTOTYPE_10;
    # Iyer et al. 2022): 784-2048-2048-10 ReLU network, one output head; kWTA
    # 5 % (102 of 2048); 50 % static weight sparsity; one segment per task on
    # the 784-d prototype context, dendrite init for a 10 %-dense context;
    # normalised pixels; the nearest prototype at test time; Adam 5e-4, batch
    # 256, 3 epochs per task. Their 50-task setting (PROTOTYPE_50) differs
    # only in Adam 3e-4: --num_tasks=50 --learning_rate=3e-4.
    "numenta": PermutedConfig(
        num_tasks=10, epochs_per_task=3, width=2048, kwta_fraction=0.05, learning_rate=5e-4, batch_size=256,
        context="prototype", context_scale=1.0, units="relu", weight_sparsity=0.5, context_density=0.1,
        normalize=True, infer_context=True,
    ),
}
"""Named settings: ``default`` (the spiking runs in RESULTS.md) and ``numenta``."""

VARIANTS: dict[str, dict[str, Any]] = {
    "ad_kwta": {},
    "kwta_only": {"dendrites": False},
    "ad_only": {"kwta": False},
    # Numenta's MLP baseline is dense (no_dendrites.py, DENSE_CL: weight_sparsity 0, no kWTA).
    "mlp": {"dendrites": False, "kwta": False, "weight_sparsity": 0.0},
    # Numenta's MLP row as they ran it (mlp.py, THREE_LAYER_MLP_10): the dense
    # MLP with the optimiser their search picked for the best final accuracy,
    # Adam 3e-6 for 5 epochs per task, and ModifiedInitStandardMLP's init
    # (hidden inputs taken as half dense).
    "mlp_tuned": {"dendrites": False, "kwta": False, "weight_sparsity": 0.0, "learning_rate": 3e-6,
                  "epochs_per_task": 5, "relu_density": 0.5},
}
"""The rows of Numenta's table as changes to a recipe: active dendrites + kWTA (the
recipe as it is), kWTA only (no dendrites), dendrites only (no kWTA), MLP (no
dendrites, no kWTA, dense; the recipe's optimiser), and ``mlp_tuned``, the
MLP with Numenta's own optimiser and init for that row."""


def preset(recipe: str = "default", variant: str = "ad_kwta") -> PermutedConfig:
    """``RECIPES[recipe]`` with ``VARIANTS[variant]`` applied; ValueError names unknown names."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return dataclasses.replace(RECIPES[recipe], **VARIANTS[variant])


class PermutedState(train_state.TrainState):
    """Flax's TrainState plus the fixed weight masks (``{}`` without weight sparsity)."""

    masks: Any = flax.struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """What ``apply_fn`` takes: ``{"params", "masks"}``."""
        return {"params": self.params, "masks": self.masks}


def create_train_state(config: PermutedConfig, key: Array, num_pixels: int = NUM_PIXELS) -> PermutedState:
    """Parameters and weight masks (both drawn from ``key``) and Adam, as one pytree."""
    net = config.network()
    variables = jit_once(net.init)(key, jnp.zeros((1, num_pixels)), jnp.zeros((1, config.context_dim(num_pixels))))
    return PermutedState.create(apply_fn=net.apply, params=variables["params"], tx=optax.adam(config.learning_rate),
                                masks=variables.get("masks", {}))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(1,))
def train_epoch(config: PermutedConfig, state: PermutedState, images: Array, labels: Array,
                context: Array, key: Array) -> tuple[PermutedState, dict[str, Array]]:
    """One epoch of one task: shuffle with ``key``, then a ``lax.scan`` of Adam steps.

    Args:
      config: the run (static).
      state: training state (donated).
      images: uint8 ``[N, P]`` (the task's permuted images), N >= batch_size.
      labels: int ``[N]``.
      context: the task's context ``[d_c]``, unscaled (a row of :func:`task_contexts`).
      key: shuffling key.

    Returns:
      ``(state, {"loss", "accuracy"})``, the means over the epoch's batches.
    """
    chex.assert_rank([images, context], [2, 1])
    n, b = images.shape[0], config.batch_size
    if n < b:
        raise ValueError(f"an epoch needs at least batch_size={b} examples, got {n}")
    order = jax.random.permutation(key, n)[: (n // b) * b].reshape(n // b, b)
    ctx = context[None] * config.context_scale

    def step(state, idx):
        x, y = pixels(config, images[idx]), labels[idx]

        def loss_fn(params):
            logits = state.apply_fn({"params": params, "masks": state.masks}, x, ctx)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), (loss, (logits.argmax(-1) == y).mean())

    state, (loss, acc) = jax.lax.scan(step, state, order)
    return state, {"loss": loss.mean(), "accuracy": acc.mean()}


def _padded_batches(config: PermutedConfig, images: Array, labels: Array) -> tuple[Array, Array, Array]:
    """``[N, P]``, ``[N]`` -> ``[nb, eb, P]``, ``[nb, eb]`` and a 0/1 mask ``[nb, eb]`` (0 on padding)."""
    n, eb = images.shape[0], config.eval_batch_size
    nb = max(1, math.ceil(n / eb))
    pad = nb * eb - n
    mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)])
    images = jnp.concatenate([images, jnp.zeros((pad, images.shape[1]), images.dtype)])
    labels = jnp.concatenate([labels, jnp.zeros(pad, labels.dtype)])
    return images.reshape(nb, eb, -1), labels.reshape(nb, eb), mask.reshape(nb, eb)


def logits_on(config: PermutedConfig, variables: Any, x: Array, contexts: Array, task: Array,
              num_seen: Array) -> Array:
    """Logits ``[B, classes]`` of pixels ``x [B, P]`` of task ``task``, as the evaluation sees them.

    ``contexts [C, d_c]`` is :func:`task_contexts`' table, unscaled. With
    :attr:`PermutedConfig.infers_context` each image gets its nearest row
    among the first ``num_seen`` (the tasks trained so far); otherwise every
    image gets row ``task``.
    """
    net, scaled = config.network(), contexts * config.context_scale
    if config.infers_context:
        index = nearest_context(x, contexts, jnp.arange(contexts.shape[0]) < num_seen)
        return net.apply(variables, x, scaled, index)
    return net.apply(variables, x, scaled[task][None])


@functools.partial(jax.jit, static_argnames=("config",))
def evaluate(config: PermutedConfig, variables: Any, images: Array, labels: Array, contexts: Array, task: Array,
             num_seen: Array) -> Array:
    """Test accuracy (scalar) on one task's images ``[N, P]`` uint8 and labels ``[N]``.

    ``variables``: :attr:`PermutedState.variables`; ``contexts``, ``task``,
    ``num_seen``: as :func:`logits_on`.
    """
    chex.assert_rank([images, contexts], 2)

    def step(correct, batch):
        x_u8, y, m = batch
        logits = logits_on(config, variables, pixels(config, x_u8), contexts, task, num_seen)
        return correct + ((logits.argmax(-1) == y) * m).sum(), None

    correct, _ = jax.lax.scan(step, jnp.zeros(()), _padded_batches(config, images, labels))
    return correct / images.shape[0]


@functools.partial(jax.jit, static_argnames=("config",))
def layer_activity(config: PermutedConfig, variables: Any, images: Array, context: Array) -> dict[str, Array]:
    """What the network does on one task, given its context ``[d_c]`` (unscaled): per hidden layer ``l``, ``[width]``.

    Returns ``activity{l}`` (mean over the images: spikes per step, or the ReLU
    output), ``active{l}`` (fraction of the images on which the unit was
    active: fired at all, or output > 0) and, with dendrites, ``gate{l}_out``
    (the task's gate). For the overlap of the units two tasks use, compare
    their ``active{l}`` (:func:`usage_overlap`).
    """
    x, ctx = pixels(config, images), context[None] * config.context_scale
    _, inter = config.network().apply(variables, x, ctx, mutable=["intermediates"])
    out = {}
    for name, (value,) in inter["intermediates"].items():
        out[name] = value.mean(axis=0)
        if name.startswith("activity"):
            out["active" + name[len("activity"):]] = (value > 0).mean(axis=0)
    return out


def usage_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Weighted Jaccard ``sum(min(a, b)) / sum(max(a, b))`` of two non-negative usage vectors ``[width]``.

    1 when two tasks use the same units equally often, 0 when they share none.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-12))


def _kernel_synapses(variables: Any, name: str) -> np.ndarray:
    """Synapses each input unit of layer ``name`` drives: non-zeros per row of its mask, ``[fan_in]``."""
    fan_in, fan_out = np.shape(variables["params"][name]["kernel"])
    mask = variables.get("masks", {}).get(name, {}).get("kernel")
    return np.full(fan_in, float(fan_out)) if mask is None else np.asarray(mask).sum(axis=1)


def energy_per_image(config: PermutedConfig, variables: Any, activity: dict[str, Array]) -> dict[str, float]:
    """Operations and estimated energy per image of one task, from :func:`layer_activity` on its images.

    Counting (the conventions of :mod:`mtspark_jax.nn.energy`; Horowitz's
    45 nm figures, 4.6 pJ per MAC, 0.9 pJ per AC):

    * ``first_layer_macs``: the first layer reads the analog pixels; its
      current is the same at every step, so it costs its synapses
      (non-zeros of ``fc0``) once per image, as MACs.
    * ``event_ops``: every later layer is driven by events. Spiking: each
      spike of a hidden unit costs its outgoing synapses as accumulates
      (SynOps). ReLU: each non-zero output costs its outgoing synapses as
      MACs (a ReLU network that skips zeros; with kWTA 5 % of the units are
      non-zero).
    * ``dense_macs``: every synapse once, the ReLU network without zero
      skipping.
    * ``dendrite_macs``: the segments, ``layers * width * tasks * d_c``, as
      if each image computed its own gates (a one-hot context makes them a
      lookup; the launcher computes them once per batch). Not in the energies.

    Args:
      config, variables: the network.
      activity: :func:`layer_activity` of the task's images ``[N, P]`` with its
        own context (``activity{l}`` and ``active{l}``, ``[width]`` each).

    Returns:
      ``spike_rate/fc{l}`` (spiking: spikes per unit per step; ReLU: the
      fraction of units with a non-zero output), the four counts above, and
      ``energy_uJ`` (spiking: first-layer MACs + SynOps as ACs; ReLU: first
      layer + event ops, both MACs) and ``dense_energy_uJ`` (dense MACs).
    """
    spiking_units = config.units == "spiking"
    names = [f"fc{l}" for l in range(config.num_layers)] + ["readout"]
    synapses = {name: _kernel_synapses(variables, name) for name in names}
    first_macs = float(synapses["fc0"].sum())
    events, rates = 0.0, {}
    for layer in range(config.num_layers):
        # Spiking: spikes per step per unit (times T: per image); ReLU: the fraction of images a unit was non-zero.
        rate = np.asarray(activity[f"activity{layer}" if spiking_units else f"active{layer}"], np.float64)
        chex.assert_shape(rate, (config.width,))
        events += float(rate * (config.time_steps if spiking_units else 1) @ synapses[names[layer + 1]])
        rates[f"spike_rate/fc{layer}"] = float(rate.mean())
    context_dim = config.context_dim(len(synapses["fc0"]))
    dendrite_macs = float(config.num_layers * config.width * config.num_tasks * context_dim if config.dendrites else 0)
    dense_macs = float(sum(s.sum() for s in synapses.values()))
    e_event = energy_lib.E_AC_PJ if spiking_units else energy_lib.E_MAC_PJ
    return {
        **rates,
        "first_layer_macs": first_macs,
        "event_ops": events,
        "dense_macs": dense_macs,
        "dendrite_macs": dendrite_macs,
        "energy_uJ": (first_macs * energy_lib.E_MAC_PJ + events * e_event) * 1e-6,
        "dense_energy_uJ": dense_macs * energy_lib.E_MAC_PJ * 1e-6,
    }


def run_continual(
    config: PermutedConfig,
    train_split: tuple[np.ndarray, np.ndarray],
    test_split: tuple[np.ndarray, np.ndarray],
    log: Callable[[dict[str, Any]], None] | None = None,
    after_task: Callable[[int, PermutedState, list[list[float]]], None] | None = None,
    resume: tuple[Any, list[list[float]]] | None = None,
) -> dict[str, Any]:
    """Trains the tasks one after another and tests every task seen so far after each.

    Args:
      config: the run.
      train_split, test_split: ``(images uint8 [N, 28, 28, 1] (any shape with
        P pixels per image), labels int [N])``, unpermuted.
      log: called with one row dict per event: ``{"kind": "train", "task",
        "epoch", "loss", "accuracy"}`` after each epoch and ``{"kind": "test",
        "task" (just trained), "eval_task", "accuracy"}`` after each task.
      after_task: called as ``after_task(task, state, accuracy_matrix)`` after
        each task's tests (the launcher writes its checkpoint there).
      resume: ``(state_dict, accuracy_matrix)`` of an earlier run of the same
        config that stopped after ``len(accuracy_matrix)`` tasks
        (``flax.serialization.to_state_dict`` of the state ``after_task`` got);
        training goes on from the next task. Every epoch's shuffle depends on
        the seed, the task and the epoch only, so a resumed run trains on the
        same batches as an uninterrupted one.

    Returns:
      ``{"accuracy_matrix": [[acc of task j after task i, j <= i]],
      "final_accuracies": [acc of every task after the last], "mean_accuracy",
      "contexts": the unscaled context table [tasks, d_c] (:func:`task_contexts`),
      "state"}``.
    """
    log = log or (lambda row: None)
    perms = task_permutations(config.seed, config.num_tasks, int(np.prod(train_split[0].shape[1:])))
    key = jax.random.key(config.seed)
    init_key, shuffle_key = jax.random.split(key)
    state = create_train_state(config, init_key, perms.shape[1])
    contexts = jnp.asarray(task_contexts(config, train_split[0], perms))
    test_sets = [(jnp.asarray(x), jnp.asarray(y)) for x, y in permuted_splits(test_split, perms)]
    train_labels = jnp.asarray(train_split[1])
    matrix = []
    if resume is not None:
        state = flax.serialization.from_state_dict(state, resume[0])
        matrix = [list(row) for row in resume[1]]
        if not 0 < len(matrix) <= config.num_tasks:
            raise ValueError(f"resume needs an accuracy matrix of 1 to {config.num_tasks} rows, got {len(matrix)}")
    for task in range(len(matrix), config.num_tasks):
        images = jnp.asarray(permute_images(train_split[0], perms[task]))
        for epoch in range(config.epochs_per_task):
            epoch_key = jax.random.fold_in(shuffle_key, task * config.epochs_per_task + epoch)
            state, m = train_epoch(config, state, images, train_labels, contexts[task], epoch_key)
            log({"kind": "train", "task": task, "epoch": epoch, **{k: float(v) for k, v in m.items()}})
        row = [float(evaluate(config, state.variables, x, y, contexts, jnp.int32(j), jnp.int32(task + 1)))
               for j, (x, y) in enumerate(test_sets[: task + 1])]
        for j, acc in enumerate(row):
            log({"kind": "test", "task": task, "eval_task": j, "accuracy": acc})
        matrix.append(row)
        if after_task is not None:
            after_task(task, state, matrix)
    return {"accuracy_matrix": matrix, "final_accuracies": matrix[-1],
            "mean_accuracy": float(np.mean(matrix[-1])), "contexts": np.asarray(contexts), "state": state}
