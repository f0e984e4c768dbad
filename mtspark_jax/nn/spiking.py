"""Spiking neurons as pure functions (docs/design.md section 1).

Conventions
-----------
* Time-major: a sequence is ``[T, ...]``; the trailing axes are any batch/unit
  shape.
* The membrane starts at ``v_reset`` (0 by default) for every forward pass.
* The spike is ``Heaviside(H - v_threshold)`` with ``Heaviside(0) = 1``
  (SpikingJelly fires when ``H >= v_th``). Its backward pass is a named
  surrogate (:data:`SURROGATES`).

LIF, "decay input" form (SpikingJelly ``LIFNode(decay_input=True)``)::

    H[t] = V[t-1] + (X[t] - (V[t-1] - v_reset)) / tau
    S[t] = Heaviside(H[t] - v_threshold)
    V[t] = H[t] * (1 - S[t]) + v_reset * S[t]          (hard reset)
    V[t] = H[t] - v_threshold * S[t]                   (soft reset)

With ``v_reset = 0`` the charge is the design's ``V + (X - V) / tau``. IF is the
same without leak: ``H[t] = V[t-1] + X[t]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
NeuronKind = Literal["lif", "if"]
Decode = Literal["max", "mean", "last"]


# --------------------------------------------------------------------------
# Surrogate gradients.
# --------------------------------------------------------------------------


def sigmoid_grad(x: Array, alpha: Array | float = 4.0) -> Array:
    """d/dx sigmoid(alpha x) = alpha * s * (1 - s). Shape of ``x``.

    Written as ``sigmoid(ax) * sigmoid(-ax)``, which avoids the float32
    cancellation of ``1 - s`` where ``s`` is close to 1.
    """
    return alpha * jax.nn.sigmoid(alpha * x) * jax.nn.sigmoid(-alpha * x)


def atan_grad(x: Array, alpha: Array | float = 2.0) -> Array:
    """d/dx of SpikingJelly's ATan: alpha / 2 / (1 + (pi/2 alpha x)^2)."""
    return alpha / 2.0 / (1.0 + (math.pi / 2.0 * alpha * x) ** 2)


def fast_sigmoid_grad(x: Array, alpha: Array | float = 25.0) -> Array:
    """Fast sigmoid (SuperSpike / snnTorch): 1 / (1 + k |x|)^2, slope k=alpha."""
    return 1.0 / (1.0 + alpha * jnp.abs(x)) ** 2


SURROGATES: dict[str, Callable[[Array, Array | float], Array]] = {
    "sigmoid": sigmoid_grad,
    "atan": atan_grad,
    "fast_sigmoid": fast_sigmoid_grad,
}
"""Surrogate derivative by name: ``fn(x, alpha) -> dS/dx``, same shape as x."""

DEFAULT_ALPHA: dict[str, float] = {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}
"""Default sharpness per surrogate (SpikingJelly's sigmoid/atan, snnTorch's k)."""


def check_surrogate(name: str) -> str:
    """Returns ``name`` if it is a known surrogate, else raises ``ValueError``."""
    if name not in SURROGATES:
        raise ValueError(
            f"unknown surrogate {name!r}; expected one of {sorted(SURROGATES)}"
        )
    return name


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _spike(surrogate: str, x: Array, alpha: Array) -> Array:
    return (x >= 0).astype(x.dtype)


def _spike_fwd(surrogate: str, x: Array, alpha: Array):
    return _spike(surrogate, x, alpha), (x, alpha)


def _spike_bwd(surrogate: str, residuals, g: Array):
    x, alpha = residuals
    return g * SURROGATES[surrogate](x, alpha).astype(g.dtype), jnp.zeros_like(alpha)


_spike.defvjp(_spike_fwd, _spike_bwd)


def spike(x: Array, surrogate: str = "sigmoid", alpha: Array | float | None = None) -> Array:
    """Heaviside step with a surrogate gradient.

    Args:
      x: any shape, float; typically ``H - v_threshold``.
      surrogate: name in :data:`SURROGATES`.
      alpha: surrogate sharpness (may be a traced scalar, e.g. in a sweep);
        ``None`` takes :data:`DEFAULT_ALPHA`.

    Returns:
      ``(x >= 0)`` as ``x.dtype``, same shape as ``x``. Its gradient is
      ``SURROGATES[surrogate](x, alpha)``.
    """
    check_surrogate(surrogate)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"spike expects a floating input, got dtype {x.dtype}")
    if alpha is None:
        alpha = DEFAULT_ALPHA[surrogate]
    return _spike(surrogate, x, jnp.asarray(alpha, x.dtype))


# --------------------------------------------------------------------------
# Neuron constants.
# --------------------------------------------------------------------------


def _any_traced(*values) -> bool:
    """Whether any value is a JAX tracer (e.g. a per-member constant under ``vmap``)."""
    return any(isinstance(v, jax.core.Tracer) for v in values)


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """Constants of a spiking neuron. Defaults are docs/design.md section 1.

    Attributes:
      tau: membrane time constant of LIF (ignored by IF); must be >= 1.
      v_threshold: firing threshold.
      v_reset: hard-reset value; ``None`` selects soft reset (subtract the
        threshold), as in Spyx.
      surrogate: surrogate gradient name (``sigmoid``, ``atan``, ``fast_sigmoid``).
      alpha: surrogate sharpness; ``None`` takes the surrogate's default.
      detach_reset: stop the gradient through the reset path (SpikingJelly's
        ``detach_reset=True``); the default keeps it.

    ``tau``, ``v_threshold``, ``v_reset`` and ``alpha`` may be traced scalars
    (one value per member of a ``vmap``-ped sweep, :mod:`mtspark_jax.vision.image_sweep`);
    range checks are then skipped here and done by the sweep on concrete values.
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    surrogate: str = "sigmoid"
    alpha: float | None = None
    detach_reset: bool = False

    def __post_init__(self):
        check_surrogate(self.surrogate)
        if self.has_traced_constants:
            return  # traced constants (a vmapped sweep): validated where they were made
        if not self.tau >= 1.0:
            raise ValueError(f"tau must be >= 1 (decay-input LIF), got {self.tau}")
        if self.v_reset is not None and not self.v_reset < self.v_threshold:
            raise ValueError(
                f"v_reset ({self.v_reset}) must be below v_threshold ({self.v_threshold})"
            )
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"surrogate alpha must be > 0, got {self.alpha}")

    @property
    def has_traced_constants(self) -> bool:
        """Whether ``tau``, ``v_threshold``, ``v_reset`` or ``alpha`` is a tracer (a vmapped sweep)."""
        return _any_traced(self.tau, self.v_threshold, self.v_reset, self.alpha)

    @property
    def surrogate_alpha(self) -> float:
        """The sharpness in use: ``alpha`` or the surrogate's default."""
        return DEFAULT_ALPHA[self.surrogate] if self.alpha is None else self.alpha

    @property
    def initial_v(self) -> float:
        """Membrane value at t = 0 (``v_reset``, or 0 for soft reset)."""
        return 0.0 if self.v_reset is None else self.v_reset


def _check_kind(kind: str) -> None:
    if kind not in ("lif", "if"):
        raise ValueError(f"unknown neuron kind {kind!r}; expected 'lif' or 'if'")


# --------------------------------------------------------------------------
# Single step and time unroll.
# --------------------------------------------------------------------------


def _charge(v: Array, x: Array, cfg: NeuronConfig, kind: NeuronKind) -> Array:
    """``H[t]`` from ``V[t-1]`` and ``X[t]`` (module docstring), any matching shapes."""
    return v + (x - (v - cfg.initial_v)) / cfg.tau if kind == "lif" else v + x


def _reset(h: Array, s: Array, cfg: NeuronConfig) -> Array:
    """``V[t]`` from ``H[t]`` and the spikes ``S[t]``: hard reset to ``v_reset``, or soft (``v_reset=None``)."""
    return h - cfg.v_threshold * s if cfg.v_reset is None else h * (1.0 - s) + cfg.v_reset * s


def neuron_step(
    v: Array, x: Array, cfg: NeuronConfig = NeuronConfig(), kind: NeuronKind = "lif"
) -> tuple[Array, Array]:
    """One time step of a LIF or IF neuron.

    Args:
      v: membrane potential ``V[t-1]``, any shape.
      x: input current ``X[t]``, same shape as ``v``.
      cfg: neuron constants.
      kind: ``"lif"`` (decay input) or ``"if"``.

    Returns:
      ``(V[t], S[t])``, both shaped like ``v``; spikes are 0/1.
    """
    _check_kind(kind)
    h = _charge(v, x, cfg, kind)
    s = spike(h - cfg.v_threshold, cfg.surrogate, cfg.surrogate_alpha)
    return _reset(h, jax.lax.stop_gradient(s) if cfg.detach_reset else s, cfg), s


def lif_step(v: Array, x: Array, cfg: NeuronConfig = NeuronConfig()) -> tuple[Array, Array]:
    """LIF step: ``(V[t-1], X[t]) -> (V[t], S[t])``; see :func:`neuron_step`."""
    return neuron_step(v, x, cfg, "lif")


def if_step(v: Array, x: Array, cfg: NeuronConfig = NeuronConfig()) -> tuple[Array, Array]:
    """IF step: ``(V[t-1], X[t]) -> (V[t], S[t])``; see :func:`neuron_step`."""
    return neuron_step(v, x, cfg, "if")


class NeuronTrace(NamedTuple):
    """Output of a time unroll: spikes and membrane, both ``[T, ...]``."""

    spikes: Array
    membrane: Array


def _check_time_major(x_seq: Array, name: str = "x_seq") -> None:
    if x_seq.ndim < 1 or x_seq.shape[0] < 1:
        raise ValueError(
            f"{name} must be time-major [T, ...] with T >= 1, got shape {x_seq.shape}"
        )


def neuron_unroll(
    x_seq: Array,
    cfg: NeuronConfig = NeuronConfig(),
    kind: NeuronKind = "lif",
    v0: Array | None = None,
) -> NeuronTrace:
    """Runs a neuron over a time-major input with ``jax.lax.scan``.

    Args:
      x_seq: input currents ``[T, ...]``, T >= 1.
      cfg: neuron constants.
      kind: ``"lif"`` or ``"if"``.
      v0: initial membrane ``[...]``; default ``cfg.initial_v`` everywhere.

    Returns:
      :class:`NeuronTrace` with spikes and post-reset membrane, each ``[T, ...]``.
    """
    _check_kind(kind)
    _check_time_major(x_seq)
    if v0 is None:
        v0 = jnp.full(x_seq.shape[1:], cfg.initial_v, x_seq.dtype)

    def body(v, x):
        v, s = neuron_step(v, x, cfg, kind)
        return v, (s, v)

    _, (spikes, membrane) = jax.lax.scan(body, v0, x_seq, unroll=True)
    return NeuronTrace(spikes, membrane)


def _forward_sweep(cfg: NeuronConfig, kind: NeuronKind, x_seq: Array) -> tuple[list[Array], list[Array]]:
    """Spikes ``S[t]`` and charged membranes ``H[t]``, ``T`` lists of ``x_seq.shape[1:]`` arrays."""
    v = jnp.full(x_seq.shape[1:], cfg.initial_v, x_seq.dtype)
    hs, ss = [], []
    for t in range(x_seq.shape[0]):
        h = _charge(v, x_seq[t], cfg, kind)
        s = (h - cfg.v_threshold >= 0).astype(x_seq.dtype)
        v = _reset(h, s, cfg)
        hs.append(h)
        ss.append(s)
    return ss, hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _multistep(cfg: NeuronConfig, kind: NeuronKind, x_seq: Array) -> Array:
    return jnp.stack(_forward_sweep(cfg, kind, x_seq)[0])


def _multistep_fwd(cfg: NeuronConfig, kind: NeuronKind, x_seq: Array) -> tuple[Array, Array]:
    """Spikes ``[T, ...]``, and the charged membranes ``H [T, ...]`` the backward pass needs."""
    ss, hs = _forward_sweep(cfg, kind, x_seq)
    return jnp.stack(ss), jnp.stack(hs)


def _multistep_bwd(cfg: NeuronConfig, kind: NeuronKind, hs: Array, g: Array) -> tuple[Array]:
    """Backpropagation through time of :func:`_multistep`: ``dL/dS [T, ...] -> (dL/dX [T, ...],)``.

    Per step, from the last: ``dH = dS * sg + dV * dV/dH`` with ``sg`` the
    surrogate at ``H - v_th`` and ``dV/dH = (1 - S) + (v_reset - H) * sg``
    (hard reset) or ``1 - v_th * sg`` (soft), without the ``sg`` term under
    ``detach_reset``; then ``dX = dH / tau`` and ``dV[t-1] = dH * (1 - 1/tau)``
    for LIF, ``dX = dV[t-1] = dH`` for IF.
    """
    alpha = jnp.asarray(cfg.surrogate_alpha, g.dtype)
    dxs = [None] * g.shape[0]
    dv = None
    for t in reversed(range(g.shape[0])):
        u = hs[t] - cfg.v_threshold
        sg = SURROGATES[cfg.surrogate](u, alpha).astype(g.dtype)
        dh = g[t] * sg
        if dv is not None:
            if cfg.v_reset is None:
                dvdh = 1.0 if cfg.detach_reset else 1.0 - cfg.v_threshold * sg
            else:
                dvdh = 1.0 - (u >= 0).astype(g.dtype)
                if not cfg.detach_reset:
                    dvdh = dvdh + (cfg.v_reset - hs[t]) * sg
            dh = dh + dv * dvdh
        if kind == "lif":
            dxs[t] = dh / cfg.tau
            dv = dh * (1.0 - 1.0 / cfg.tau)
        else:
            dxs[t] = dh
            dv = dh
    return (jnp.stack(dxs),)


_multistep.defvjp(_multistep_fwd, _multistep_bwd)


def multistep_spikes(x_seq: Array, cfg: NeuronConfig = NeuronConfig(), kind: NeuronKind = "lif") -> Array:
    """Spikes ``[T, ...]`` of a neuron driven by ``x_seq [T, ...]`` from rest.

    Equal to ``neuron_unroll(x_seq, cfg, kind).spikes``, values and gradient,
    but with a hand-written backward pass through time: one element-wise
    sweep over the charged membranes it keeps, instead of the per-step
    pieces autodiff makes of the unrolled scan (fewer, larger XLA fusions;
    the membrane trace is not kept). Neuron constants that are traced (a
    ``vmap``-ped sweep) take :func:`neuron_unroll` instead.
    """
    _check_kind(kind)
    _check_time_major(x_seq)
    if cfg.has_traced_constants:
        return neuron_unroll(x_seq, cfg, kind).spikes
    if not jnp.issubdtype(x_seq.dtype, jnp.floating):
        raise ValueError(f"neuron inputs must be floating, got dtype {x_seq.dtype}")
    return _multistep(cfg, kind, x_seq)


def lif(x_seq: Array, cfg: NeuronConfig = NeuronConfig()) -> Array:
    """Multi-step LIF: currents ``[T, ...]`` -> spikes ``[T, ...]`` (:func:`multistep_spikes`)."""
    return multistep_spikes(x_seq, cfg, "lif")


def if_neuron(x_seq: Array, cfg: NeuronConfig = NeuronConfig()) -> Array:
    """Multi-step IF: currents ``[T, ...]`` -> spikes ``[T, ...]`` (:func:`multistep_spikes`)."""
    return multistep_spikes(x_seq, cfg, "if")


# --------------------------------------------------------------------------
# Non-spiking read-outs.
# --------------------------------------------------------------------------


def identity_readout(x_seq: Array) -> Array:
    """Authors' read-out: returns its input at every step, ``[T, ...]``."""
    _check_time_major(x_seq)
    return x_seq


def leaky_membrane(x_seq: Array, tau: float = 2.0) -> Array:
    """Leaky non-spiking membrane ``V[t] = V[t-1] + (X[t] - V[t-1]) / tau``.

    Args:
      x_seq: ``[T, ...]`` input currents. V starts at 0.
      tau: time constant, >= 1.

    Returns:
      membrane trace ``[T, ...]``.
    """
    _check_time_major(x_seq)
    if not _any_traced(tau) and not tau >= 1.0:
        raise ValueError(f"tau must be >= 1, got {tau}")

    def body(v, x):
        v = v + (x - v) / tau
        return v, v

    _, vs = jax.lax.scan(body, jnp.zeros(x_seq.shape[1:], x_seq.dtype), x_seq, unroll=True)
    return vs


def decode_time(trace: Array, decode: Decode = "max") -> Array:
    """Reduces a ``[T, ...]`` trace over time by ``max``, ``mean`` or ``last``."""
    _check_time_major(trace, "trace")
    if decode == "max":
        return trace.max(axis=0)
    if decode == "mean":
        return trace.mean(axis=0)
    if decode == "last":
        return trace[-1]
    raise ValueError(f"unknown decode {decode!r}; expected 'max', 'mean' or 'last'")


def leaky_readout(x_seq: Array, tau: float = 2.0, decode: Decode = "max") -> Array:
    """DSQN read-out: leaky membrane decoded over time. ``[T, ...] -> [...]``."""
    return decode_time(leaky_membrane(x_seq, tau), decode)
