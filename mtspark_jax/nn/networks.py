"""Q-networks (docs/design.md section 3): MTSpark_ADD, MTSpark_AD, DSQN and DQN.

Every network is called as ``net.apply(variables, obs, context, train=False)``:

* ``obs``: frames ``[B, H, W, C]`` (channels last; Atari is ``[B, 84, 84, 4]``
  uint8). uint8 input is scaled by 1/255; float input is used as it is.
  EnvPool returns ``[N, 4, 84, 84]``: :func:`mtspark_jax.rl.envs` transposes.
* ``context``: the task, either integer ids ``[B]`` or a float context
  ``[B, num_tasks]`` (one-hot; all zeros is the "no task signal" ablation).
  DQN and DSQN accept it and ignore it, as in the papers.
* returns :class:`NetworkOutput`: ``q`` ``[B, num_actions]`` plus the spike
  count and rate of every spiking layer, each ``[B]``.

Spiking networks run layer by layer over time (docs/design.md section 7, "speed
levers"): with direct encoding the first convolution sees the same frame at
every step, so it runs once; every later convolution / dense layer runs once
over all ``T * B`` inputs and only the element-wise membrane update is
scanned; the linear read-out after the last spiking layer is applied once to
the mean spike rate, which equals averaging the per-step Q-values.
``unroll="naive"`` runs the whole network step by step instead (the
reference the fast path is tested against).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mtspark_jax.nn import dendrites, ops, spiking
from mtspark_jax.nn.spiking import NeuronConfig

Array = jax.Array
ConvSpec = tuple[int, int, int]
Unroll = Literal["layerwise", "naive"]

NATURE_CONVS: tuple[ConvSpec, ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
"""DQN "Nature" trunk: (features, kernel, stride) per conv; 84x84 -> 7x7x64 = 3136."""

NUM_ATARI_ACTIONS = 18


@flax.struct.dataclass
class NetworkOutput:
    """What every network returns.

    Attributes:
      q: Q-values ``[B, num_actions]``.
      spike_counts: layer name -> spikes summed over time and units, ``[B]``.
      spike_rates: layer name -> spikes per unit per step, ``[B]``.
    """

    q: Array
    spike_counts: dict[str, Array]
    spike_rates: dict[str, Array]


def prepare_inputs(obs: Array, context: Array | None, num_tasks: int) -> tuple[Array, Array]:
    """Validates and converts network inputs.

    Args:
      obs: ``[B, H, W, C]`` frames, uint8 (scaled by 1/255) or float.
      context: task ids ``[B]`` (integer) or float ``[B, num_tasks]``; ``None``
        means task 0 for every sample.
      num_tasks: context length.

    Returns:
      ``(x float32 [B, H, W, C], c float32 [B, num_tasks])``.
    """
    obs = jnp.asarray(obs)
    if obs.ndim != 4:
        raise ValueError(f"obs must be [B, H, W, C], got shape {obs.shape}")
    batch = obs.shape[0]
    x = obs.astype(jnp.float32)
    if obs.dtype == jnp.uint8:
        x = x / 255.0
    if context is None:
        context = jnp.zeros((batch,), jnp.int32)
    context = jnp.asarray(context)
    if context.ndim == 1 and jnp.issubdtype(context.dtype, jnp.integer):
        if context.shape[0] != batch:
            raise ValueError(f"task ids must be [{batch}], got shape {context.shape}")
        c = jax.nn.one_hot(context, num_tasks, dtype=jnp.float32)
    elif context.ndim == 2:
        if context.shape != (batch, num_tasks):
            raise ValueError(
                f"context must be [{batch}, {num_tasks}] (batch, num_tasks), "
                f"got shape {context.shape}"
            )
        c = context.astype(jnp.float32)
    else:
        raise ValueError(
            f"context must be integer task ids [B] or a float context [B, {num_tasks}], "
            f"got shape {context.shape} dtype {context.dtype}"
        )
    return x, c


def _check_common(time_steps: int, unroll: str) -> None:
    if time_steps < 1:
        raise ValueError(f"time_steps (T) must be >= 1, got {time_steps}")
    if unroll not in ("layerwise", "naive"):
        raise ValueError(f"unknown unroll {unroll!r}; expected 'layerwise' or 'naive'")


DEFAULT_INIT_GAIN = 5.0
"""Gain of the layers that drive spiking neurons (see :func:`spiking_init`)."""


def spiking_init(gain: float) -> nn.initializers.Initializer:
    """Truncated-normal fan-in init with std ``gain / sqrt(fan_in)``.

    ``gain = 1`` is Flax's ``lecun_normal``. Frames scaled to [0, 1] and binary
    spike inputs give currents whose spread is well below the LIF threshold
    with ``gain = 1``: the untrained Nature trunk then fires no spike at all on
    Atari frames (measured: conv0 rate 0.0015, deeper layers 0), so no layer
    after it can learn. With binary inputs of rate ``r`` the current's spread
    is about ``gain * sqrt(r)``, so rates propagate through depth when
    ``gain ~ 1 / sqrt(r)``. ``DEFAULT_INIT_GAIN = 5`` (measured with
    ``experiments/forward_atari.py``, seed 0, T=4) gives every layer of the
    untrained MTSpark_ADD 2-16 % spike rates on Pong, Breakout and Enduro
    frames (gain 3: deeper layers silent; gain 6: up to 27 %).
    """
    if not gain > 0:
        raise ValueError(f"init_gain must be > 0, got {gain}")
    return nn.initializers.variance_scaling(gain**2, "fan_in", "truncated_normal")


def _readout_init(scale: float) -> nn.initializers.Initializer:
    """``lecun_normal`` scaled by ``scale`` (1: Flax's default Dense init; 0: zeros)."""
    if scale < 0:
        raise ValueError(f"out_init_scale must be >= 0, got {scale}")
    return nn.initializers.zeros if scale == 0 else spiking_init(scale)


def merge_time(x: Array) -> Array:
    """``[T, B, ...] -> [T * B, ...]``."""
    return x.reshape((-1,) + x.shape[2:])


def split_time(x: Array, time_steps: int) -> Array:
    """``[T * B, ...] -> [T, B, ...]``."""
    return x.reshape((time_steps, -1) + x.shape[1:])


def _count(spikes: Array) -> Array:
    """``[T, B, ...]`` spikes -> total per sample ``[B]``."""
    return spikes.reshape(spikes.shape[0], spikes.shape[1], -1).sum(axis=(0, 2))


def _rate(count: Array, time_steps: int, units: int) -> Array:
    return count / (time_steps * units)


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
"""Compute types a config may name, and the networks' ``dtype`` for each (None: float32)."""


def compute_dtype(name: str) -> Any:
    """``"float32"`` -> None, ``"bfloat16"`` -> ``jnp.bfloat16``; ValueError for anything else."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _f32(x: Array) -> Array:
    """Currents and outputs back to float32 (membranes, gates, Q and the loss stay float32 under ``dtype``)."""
    return x.astype(jnp.float32)


class SpikingTrunk(nn.Module):
    """Spiking conv trunk: conv -> (BatchNorm) -> LIF per layer, then flatten.

    ``__call__`` maps frames ``[B, H, W, C]`` (float) to spikes ``[T, B, F]``
    layer by layer; ``step`` advances every layer by one time step for the naive
    unroll. Both return per-layer spike counts ``[B]`` (``__call__``) or spikes.
    ``dtype``: compute type of the convolutions (None: float32; see
    :class:`MTSparkADD`).
    """

    convs: Sequence[ConvSpec] = NATURE_CONVS
    neuron: NeuronConfig = NeuronConfig()
    time_steps: int = 4
    batch_norm: bool = False
    padding: str = "VALID"
    init_gain: float = 1.0
    dtype: Any = None

    def setup(self):
        self.conv_layers = [
            nn.Conv(
                f, (k, k), (s, s), padding=self.padding, kernel_init=spiking_init(self.init_gain),
                conv_general_dilated=ops.conv_general_dilated, dtype=self.dtype, name=f"conv{i}",
            )
            for i, (f, k, s) in enumerate(self.convs)
        ]
        if self.batch_norm:
            self.norms = [
                nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=f"bn{i}")
                for i in range(len(self.convs))
            ]

    def _layer(self, i: int, x: Array, train: bool) -> Array:
        h = _f32(self.conv_layers[i](x))
        if self.batch_norm:
            h = self.norms[i](h, use_running_average=not train)
        return h

    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Frames ``[B, H, W, C]`` -> (spikes ``[T, B, F]``, counts name -> ``[B]``)."""
        t = self.time_steps
        counts = {}
        # Direct encoding: the first layer's current is the same at every step.
        current = self._layer(0, x, train)
        s = ops.neuron_constant_input(current, t, self.neuron, "lif")
        counts["conv0"] = _count(s)
        for i in range(1, len(self.convs)):
            current = split_time(self._layer(i, merge_time(s), train), t)
            s = spiking.lif(current, self.neuron)
            counts[f"conv{i}"] = _count(s)
        return s.reshape(t, s.shape[1], -1), counts

    def step(
        self, x: Array, membranes: list[Array | None], train: bool = False
    ) -> tuple[Array, list[Array], list[Array]]:
        """One time step. ``x`` ``[B, H, W, C]`` -> (spikes ``[B, F]``, membranes, spikes per layer)."""
        new_membranes, layer_spikes = [], []
        h = x
        for i in range(len(self.convs)):
            current = self._layer(i, h, train)
            v = membranes[i]
            if v is None:
                v = jnp.full_like(current, self.neuron.initial_v)
            v, h = spiking.lif_step(v, current, self.neuron)
            new_membranes.append(v)
            layer_spikes.append(h)
        return h.reshape(h.shape[0], -1), new_membranes, layer_spikes


class _SpikingQBase(nn.Module):
    """Shared attributes of the spiking Q-networks (see module docstring).

    Attributes:
      num_actions: size of the action space (18 for full Atari).
      num_tasks: context length.
      time_steps: T.
      neuron: LIF/IF constants (shared by every spiking layer).
      hidden: width of the dense spiking layer(s).
      convs: trunk as (features, kernel, stride) triples.
      padding: conv padding.
      batch_norm: BatchNorm after each conv (train/eval via ``train``).
      dendrites: ``per_neuron`` (Numenta; default: a gate per unit gives each
        task its own sub-network, which the paper describes) or
        ``layer_shared`` (the authors' released code).
      num_segments: dendritic segments; ``None`` means one per task.
      selection: ``abs_max`` or ``max`` (per-neuron segments).
      kwta: keep only the k largest gated currents per step (``None``: off).
      unroll: ``layerwise`` (fast) or ``naive`` (step-by-step reference).
      init_gain: gain of the layers that drive spiking neurons
        (:func:`spiking_init`); 1.0 is Flax's default ``lecun_normal``.
      out_init_scale: gain of the dense read-outs after the gated streams
        (``lecun_normal`` times this; 0: zeros). A small value starts the
        dueling advantage ``A`` near zero for every action. On Pong it did
        not keep the advantage stream's units firing (probe B6 in
        results/atari_pong_probes/README.md).
      dtype: compute type of the convolutions and dense layers, e.g.
        ``jnp.bfloat16`` (mixed precision; None: float32). Parameters stay
        float32 (each layer casts them), and so do the membranes, the
        dendritic gates, the outputs and hence the loss: every layer's
        current is cast back to float32 before its neurons. Spikes are 0/1,
        exact in bfloat16; only weights and currents round.
    """

    num_actions: int = NUM_ATARI_ACTIONS
    num_tasks: int = 3
    time_steps: int = 4
    neuron: NeuronConfig = NeuronConfig()
    hidden: int = 512
    convs: Sequence[ConvSpec] = NATURE_CONVS
    padding: str = "VALID"
    batch_norm: bool = False
    dendrites: str = "per_neuron"
    num_segments: int | None = None
    selection: str = "abs_max"
    kwta: int | None = None
    unroll: str = "layerwise"
    init_gain: float = DEFAULT_INIT_GAIN
    out_init_scale: float = 1.0
    dtype: Any = None

    def _trunk(self) -> SpikingTrunk:
        return SpikingTrunk(
            self.convs, self.neuron, self.time_steps, self.batch_norm, self.padding,
            self.init_gain, self.dtype, name="trunk",
        )

    def _gated_stream(self, name: str, out_dim: int):
        """Dense -> dendritic gate -> (kWTA) -> IF -> Dense(out_dim), as modules."""
        segments = self.num_segments or self.num_tasks
        return (
            nn.Dense(self.hidden, kernel_init=spiking_init(self.init_gain), dtype=self.dtype, name=f"{name}_fc"),
            dendrites.DendriticGate(
                self.hidden, segments, self.dendrites, self.selection, name=f"{name}_gate"
            ),
            nn.Dense(out_dim, kernel_init=_readout_init(self.out_init_scale), dtype=self.dtype, name=f"{name}_out"),
        )

    def _gate_current(self, current: Array, gate: Array) -> Array:
        current = current * gate
        if self.kwta is not None:
            current = dendrites.kwta(current, self.kwta)
        return current

    def _run_streams(self, obs, context, train, streams: dict[str, int]):
        """Runs the trunk and the named gated streams.

        Returns (per-stream read-out summed over time / T ``[B, out]``, counts).
        """
        _check_common(self.time_steps, self.unroll)
        x, c = prepare_inputs(obs, context, self.num_tasks)
        trunk = self._trunk()
        mods = {name: self._gated_stream(name, out) for name, out in streams.items()}
        gates = {name: m[1](c) for name, m in mods.items()}
        t = self.time_steps
        if self.unroll == "layerwise":
            feats, counts = trunk(x, train)
            outs = {}
            for name, (fc, _, out) in mods.items():
                current = self._gate_current(split_time(_f32(fc(merge_time(feats))), t), gates[name][None])
                s = spiking.if_neuron(current, self.neuron)
                counts[f"{name}_fc"] = _count(s)
                outs[name] = _f32(out(s.mean(axis=0)))
            return outs, counts
        # Naive: the whole network, one time step after another.
        trunk_v = [None] * len(self.convs)
        head_v = {name: None for name in mods}
        sums = {name: 0.0 for name in mods}
        counts = {}
        for _ in range(t):
            feat, trunk_v, layer_spikes = trunk.step(x, trunk_v, train)
            for i, s in enumerate(layer_spikes):
                counts[f"conv{i}"] = counts.get(f"conv{i}", 0.0) + s.reshape(s.shape[0], -1).sum(1)
            for name, (fc, _, out) in mods.items():
                current = self._gate_current(_f32(fc(feat)), gates[name])
                v = head_v[name]
                if v is None:
                    v = jnp.full_like(current, self.neuron.initial_v)
                head_v[name], s = spiking.if_step(v, current, self.neuron)
                counts[f"{name}_fc"] = counts.get(f"{name}_fc", 0.0) + s.sum(1)
                sums[name] = sums[name] + _f32(out(s))
        return {name: sums[name] / t for name in mods}, counts

    def _output(self, q: Array, counts: dict[str, Array], sizes: dict[str, int]) -> NetworkOutput:
        rates = {k: _rate(v, self.time_steps, sizes[k]) for k, v in counts.items()}
        return NetworkOutput(q=q, spike_counts=counts, spike_rates=rates)

    def _sizes(self, obs_shape: tuple[int, ...], heads: Sequence[str]) -> dict[str, int]:
        return layer_sizes(obs_shape, self.convs, self.padding, self.hidden, heads)


def layer_sizes(
    obs_shape: tuple[int, ...],
    convs: Sequence[ConvSpec],
    padding: str,
    hidden: int,
    heads: Sequence[str],
) -> dict[str, int]:
    """Number of units of every spiking layer, by the names networks report.

    Args:
      obs_shape: ``[B, H, W, C]`` (B ignored).
      convs, padding: the trunk.
      hidden: width of each dense spiking layer.
      heads: names of the dense spiking layers (e.g. ``("a_fc", "v_fc")``).
    """
    h, w = obs_shape[1], obs_shape[2]
    sizes = {}
    for i, (f, k, s) in enumerate(convs):
        if padding == "VALID":
            h, w = (h - k) // s + 1, (w - k) // s + 1
        else:
            h, w = -(-h // s), -(-w // s)
        sizes[f"conv{i}"] = h * w * f
    for name in heads:
        sizes[name] = hidden
    return sizes


class MTSparkADD(_SpikingQBase):
    """MTSpark with active dendrites and a dueling head (docs/design.md section 3).

    Trunk -> two streams, each Dense(hidden) -> dendrite-gated IF -> Dense to
    the advantage ``A`` (num_actions) or the value ``V`` (1). Per step
    ``Q_t = V_t + A_t - mean(A_t)``; ``Q = mean_t Q_t``.
    """

    @nn.compact
    def __call__(self, obs: Array, context: Array | None = None, train: bool = False) -> NetworkOutput:
        """obs ``[B, H, W, C]``, context ``[B]`` ids or ``[B, num_tasks]`` -> Q ``[B, A]``."""
        outs, counts = self._run_streams(obs, context, train, {"a": self.num_actions, "v": 1})
        adv, val = outs["a"], outs["v"]
        q = val + adv - adv.mean(axis=-1, keepdims=True)
        return self._output(q, counts, self._sizes(jnp.shape(obs), ("a_fc", "v_fc")))


class MTSparkAD(_SpikingQBase):
    """MTSpark without the dueling split: one gated stream to ``num_actions``."""

    @nn.compact
    def __call__(self, obs: Array, context: Array | None = None, train: bool = False) -> NetworkOutput:
        """obs ``[B, H, W, C]``, context ``[B]`` ids or ``[B, num_tasks]`` -> Q ``[B, A]``."""
        outs, counts = self._run_streams(obs, context, train, {"q": self.num_actions})
        return self._output(outs["q"], counts, self._sizes(jnp.shape(obs), ("q_fc",)))


class DSQN(nn.Module):
    """Deep spiking Q-network baseline (Chen et al. 2022).

    LIF trunk -> Dense(hidden) -> LIF -> Dense(num_actions) -> non-spiking leaky
    membrane (tau = ``neuron.tau``), Q = max over time of the membrane
    (``decode``). No dendrites, no dueling. The context is ignored unless
    ``task_input``: then the one-hot context ``[B, num_tasks]`` is appended to
    the trunk's features at every time step (the plain way to give a network
    the task).
    """

    num_actions: int = NUM_ATARI_ACTIONS
    num_tasks: int = 3
    time_steps: int = 4
    neuron: NeuronConfig = NeuronConfig()
    hidden: int = 512
    convs: Sequence[ConvSpec] = NATURE_CONVS
    padding: str = "VALID"
    batch_norm: bool = False
    decode: str = "max"
    unroll: str = "layerwise"
    init_gain: float = DEFAULT_INIT_GAIN
    task_input: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, obs: Array, context: Array | None = None, train: bool = False) -> NetworkOutput:
        """obs ``[B, H, W, C]`` -> Q ``[B, num_actions]`` (context used only with ``task_input``)."""
        _check_common(self.time_steps, self.unroll)
        spiking.decode_time(jnp.zeros((1,)), self.decode)  # validates the name
        x, c = prepare_inputs(obs, context, self.num_tasks)
        t = self.time_steps
        trunk = SpikingTrunk(
            self.convs, self.neuron, t, self.batch_norm, self.padding, self.init_gain, self.dtype, name="trunk"
        )
        dense_fc = nn.Dense(self.hidden, kernel_init=spiking_init(self.init_gain), dtype=self.dtype, name="fc")
        dense_out = nn.Dense(self.num_actions, dtype=self.dtype, name="out")
        fc = lambda x: _f32(dense_fc(x))  # noqa: E731
        out = lambda x: _f32(dense_out(x))  # noqa: E731
        if self.unroll == "layerwise":
            feats, counts = trunk(x, train)
            if self.task_input:
                feats = jnp.concatenate([feats, jnp.broadcast_to(c, (t,) + c.shape)], axis=-1)
            s = spiking.lif(split_time(fc(merge_time(feats)), t), self.neuron)
            counts["fc"] = _count(s)
            currents = split_time(out(merge_time(s)), t)
        else:
            trunk_v, v, counts, steps = [None] * len(self.convs), None, {}, []
            for _ in range(t):
                feat, trunk_v, layer_spikes = trunk.step(x, trunk_v, train)
                for i, ls in enumerate(layer_spikes):
                    counts[f"conv{i}"] = counts.get(f"conv{i}", 0.0) + ls.reshape(ls.shape[0], -1).sum(1)
                cur = fc(jnp.concatenate([feat, c], axis=-1) if self.task_input else feat)
                v = jnp.full_like(cur, self.neuron.initial_v) if v is None else v
                v, s = spiking.lif_step(v, cur, self.neuron)
                counts["fc"] = counts.get("fc", 0.0) + s.sum(1)
                steps.append(out(s))
            currents = jnp.stack(steps)
        q = spiking.leaky_readout(currents, self.neuron.tau, self.decode)
        sizes = layer_sizes(jnp.shape(obs), self.convs, self.padding, self.hidden, ("fc",))
        rates = {k: _rate(c, t, sizes[k]) for k, c in counts.items()}
        return NetworkOutput(q=q, spike_counts=counts, spike_rates=rates)


class DQN(nn.Module):
    """Non-spiking DQN baseline: ReLU trunk -> Dense(hidden) ReLU -> Dense(A).

    The context is ignored unless ``task_input``: then the one-hot context
    ``[B, num_tasks]`` is appended to the flattened trunk features. ``dtype``:
    compute type of every layer (None: float32); Q is float32.
    """

    num_actions: int = NUM_ATARI_ACTIONS
    num_tasks: int = 3
    hidden: int = 512
    convs: Sequence[ConvSpec] = NATURE_CONVS
    padding: str = "VALID"
    task_input: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, obs: Array, context: Array | None = None, train: bool = False) -> NetworkOutput:
        """obs ``[B, H, W, C]`` -> Q ``[B, num_actions]`` (context used only with ``task_input``)."""
        x, c = prepare_inputs(obs, context, self.num_tasks)
        for i, (f, k, s) in enumerate(self.convs):
            conv = nn.Conv(f, (k, k), (s, s), padding=self.padding, conv_general_dilated=ops.conv_general_dilated,
                           dtype=self.dtype, name=f"conv{i}")
            x = nn.relu(conv(x))
        x = x.reshape(x.shape[0], -1)
        if self.task_input:
            x = jnp.concatenate([x, c], axis=-1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc")(x))
        q = _f32(nn.Dense(self.num_actions, dtype=self.dtype, name="out")(x))
        return NetworkOutput(q=q, spike_counts={}, spike_rates={})


NETWORKS: dict[str, type[nn.Module]] = {
    "mtspark_add": MTSparkADD,
    "mtspark_ad": MTSparkAD,
    "dsqn": DSQN,
    "dqn": DQN,
}
"""Network classes by agent name."""


def make_network(name: str, **kwargs: Any) -> nn.Module:
    """Builds a network by agent name (``mtspark_add``, ``mtspark_ad``, ``dsqn``, ``dqn``).

    Keyword arguments are the module's attributes; ones a network does not have
    (e.g. ``time_steps`` for DQN) raise ``ValueError``.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(NETWORKS)}")
    cls = NETWORKS[name]
    fields = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"{name} has no option(s) {sorted(unknown)}; it takes {sorted(fields)}")
    return cls(**kwargs)


class NoContext(nn.Module):
    """The no-context ablation: ``net`` always sees an all-zeros float context.

    Whatever context the caller passes (task ids ``[B]`` or ``[B, num_tasks]``)
    is replaced by zeros ``[B, net.num_tasks]``, so acting, learning and
    evaluation all run without a task signal. For the dendritic networks a zero
    context makes every segment activation 0 (gate sigmoid(0) = 0.5 for every
    task); DSQN and DQN ignore the context anyway. Parameters live under
    ``params["net"]``.
    """

    net: nn.Module

    @property
    def num_tasks(self) -> int:
        return self.net.num_tasks

    @nn.compact
    def __call__(self, obs: Array, context: Array | None = None, train: bool = False) -> NetworkOutput:
        """obs ``[B, H, W, C]`` (context ignored) -> the wrapped network's output."""
        zeros = jnp.zeros((obs.shape[0], self.net.num_tasks), jnp.float32)
        return self.net(obs, zeros, train=train)


def init_network(net: nn.Module, key: Array, obs_shape: tuple[int, ...]):
    """Initialises ``net`` on zeros of ``obs_shape`` ``[B, H, W, C]`` (uint8); returns variables."""
    obs = jnp.zeros(obs_shape, jnp.uint8)
    ctx = jnp.zeros((obs_shape[0],), jnp.int32)
    return net.init(key, obs, ctx, train=False)


IMAGE_CONVS: tuple[ConvSpec, ...] = ((32, 5, 2), (64, 3, 2))
"""Small trunk for small images (SAME padding): 32x32 -> 16x16x32 -> 8x8x64 = 4096 features,
28x28 -> 14x14x32 -> 7x7x64 = 3136. Chosen for speed on CPUs: the first conv runs
once (direct encoding), only the second runs over all T steps."""


class SpikingClassifier(MTSparkAD):
    """Multi-task spiking image classifier: MTSpark_AD with image defaults.

    Shared spiking conv trunk (LIF) -> Dense(hidden) -> dendrite-gated IF layer
    driven by the data-set context -> Dense read-out averaged over the T steps.
    The same computation as :class:`MTSparkAD`; only the defaults differ
    (``num_actions`` is the number of classes, 10; the small SAME-padded
    :data:`IMAGE_CONVS` trunk, hidden 256). ``NetworkOutput.q`` holds the class logits ``[B, classes]``.

    Call as ``net.apply(variables, images [B, H, W, C], context, train=...)``
    with context ids ``[B]`` (data set index, :data:`mtspark_jax.vision.data.DATASETS`)
    or a float context ``[B, num_tasks]`` (all zeros: the no-context ablation).
    """

    num_actions: int = 10
    num_tasks: int = 3
    hidden: int = 256
    convs: Sequence[ConvSpec] = IMAGE_CONVS
    padding: str = "SAME"
