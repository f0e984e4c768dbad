"""Fast kernels behind the networks' layer-by-layer path (docs/design.md section 7).

Nothing here changes what a network computes; each function is a cheaper
formulation of a plain JAX expression, checked against that expression in
``tests/test_ops.py``.

* :func:`neuron_constant_input`: a neuron driven by the same current at every
  step (direct encoding's first layer). The current is broadcast to
  ``[T, ...]`` inside the multi-step neuron (:func:`mtspark_jax.nn.spiking.multistep_spikes`),
  whose hand-written backward pass lets XLA fuse the broadcast into the
  forward sweep and its transpose, a sum over time, into the backward sweep,
  so no ``[T, ...]`` copy of the current is kept (docs/performance.md,
  section 2.1).
* :func:`conv_general_dilated`: a drop-in for ``lax.conv_general_dilated``
  (``nn.Conv(conv_general_dilated=...)``) that sends every NHWC / HWIO
  convolution on the CPU backend to :func:`conv_nhwc`. Same forward pass;
  the gradients are the same XLA operations written in the layout of
  XLA:CPU's Eigen kernel. XLA rewrites its own gradient convolutions into
  that layout only in a program's top-level computation: inside
  ``lax.cond`` or a ``lax.scan`` body it ran them as naive loops, and an
  MTSpark_ADD update took 1636 ms inside ``lax.cond`` instead of 69.0 ms
  (docs/performance.md, section 2.6). For a strided VALID convolution whose
  kernel the stride divides (the nature trunk's 8x8/4 and 4x4/2), the input
  gradient is a stride-1 convolution in the space-to-depth layout instead of
  an input-dilated one: on 2 CPU cores the 4x4/2 layer's input gradient (batch
  T x B = 128) took 3.57 ms instead of 7.42 ms (section 2.7); it differs from
  XLA's only in summation order. Only on the CPU backend: accelerators keep
  their own kernels (not measured there). Being a ``custom_vjp``, it has no
  forward-mode derivative (``jax.jvp``), like the spike function.
* :func:`slice_conv` (and :func:`with_conv_impl`, which routes a function's
  ``nn.Conv`` calls to it): a convolution as strided slices and one matmul,
  for the members of a vmapped sweep, whose per-member kernels XLA:CPU would
  otherwise run as a slow grouped convolution.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtspark_jax.nn import spiking
from mtspark_jax.nn.spiking import NeuronConfig, NeuronKind

Array = jax.Array


def neuron_constant_input(
    current: Array,
    time_steps: int,
    cfg: NeuronConfig = NeuronConfig(),
    kind: NeuronKind = "lif",
) -> Array:
    """Spikes of a neuron fed the same ``current`` at each of ``time_steps`` steps.

    Equal to ``neuron_unroll(broadcast_to(current, (T,) + current.shape)).spikes``.

    Args:
      current: input current ``[...]`` (any shape), the same at every step.
      time_steps: T >= 1.
      cfg: neuron constants.
      kind: ``"lif"`` or ``"if"``.

    Returns:
      spikes ``[T, ...]``.
    """
    if time_steps < 1:
        raise ValueError(f"time_steps (T) must be >= 1, got {time_steps}")
    # XLA fuses the broadcast into the forward sweep, and its transpose (a sum
    # over time) into the backward one.
    return spiking.multistep_spikes(jnp.broadcast_to(current, (time_steps,) + current.shape), cfg, kind)


_NHWC = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


def _direct_conv(x: Array, w: Array, strides: tuple[int, int], pads: Pads) -> Array:
    return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _depth_to_space(x: Array, b: int) -> Array:
    """``[N, h, w, b*b*C] -> [N, h*b, w*b, C]``: channel block ``(i, j)`` goes to pixel offset ``(i, j)``."""
    n, h, w, bbc = x.shape
    c = bbc // (b * b)
    return x.reshape(n, h, w, b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * b, w * b, c)


def _kernel_space_to_depth(w: Array, b: int) -> Array:
    """``[k, k, C, F] -> [k/b, k/b, b*b*C, F]``, channel blocks ordered as in :func:`_depth_to_space`."""
    k, _, c, f = w.shape
    w = w.reshape(k // b, b, k // b, b, c, f).transpose(0, 2, 1, 3, 4, 5)
    return w.reshape(k // b, k // b, b * b * c, f)


def _weight_grad(x: Array, g: Array, kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    """Weight gradient of ``y = conv(x, w)``: ``x [N, H, W, C]``, ``g = dL/dy [N, H', W', F]`` -> ``[kh, kw, C, F]``.

    Written in the layout XLA:CPU's Eigen kernel takes (``b01f_01io->b01f``):
    the images' channels as the batch, the images as the input features, the
    output gradient as the kernel, dilated by the stride. XLA emits the same
    operation for its own weight gradient, but only rewrites it into this form
    in a program's top-level computation; inside ``lax.cond`` or a
    ``lax.scan`` body its naive loop took 50 to 150 times as long.
    """
    kh, kw = kernel_hw
    xt = x.transpose(3, 1, 2, 0)  # [C, H, W, N]
    gt = g.transpose(1, 2, 0, 3)  # [H', W', N, F]
    dw = jax.lax.conv_general_dilated(xt, gt, (1, 1), pads, rhs_dilation=strides, dimension_numbers=_NHWC)
    return dw[:, :kh, :kw, :].transpose(1, 2, 0, 3)  # rows past the last window position are not weights


def _input_grad(g: Array, w: Array, in_hw: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    """Input gradient of ``y = conv(x, w)``: ``g [N, H', W', F]``, ``w [kh, kw, C, F]`` -> ``[N, H, W, C]``.

    The full correlation of the stride-dilated ``g`` with the flipped kernel,
    input and output channels swapped, in the Eigen layout for the same reason
    as :func:`_weight_grad` (2 to 7 times XLA's own form inside ``lax.cond``).
    """
    k = w.shape[:2]
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, F, C]
    dilated = [(o - 1) * s + 1 for o, s in zip(g.shape[1:3], strides)]  # g with stride - 1 zeros between
    before = [kk - 1 - lo for kk, (lo, _) in zip(k, pads)]
    # After: whatever makes the output exactly in_hw (rows the forward pass never read get 0).
    p = [(b, size + kk - 1 - d - b) for b, kk, size, d in zip(before, k, in_hw, dilated)]
    return jax.lax.conv_general_dilated(g, wt, (1, 1), p, lhs_dilation=strides, dimension_numbers=_NHWC)


def _space_to_depth_input_grad(g: Array, w: Array, in_hw: tuple[int, int], b: int) -> Array:
    """:func:`_input_grad` for a VALID convolution whose stride ``b`` divides its square kernel.

    ``y = conv(s2d(x), s2d(w), stride 1)``: its input gradient is a padded
    stride-1 convolution followed by depth-to-space, with no dilated input.
    """
    kb = w.shape[0] // b
    wt = jnp.flip(_kernel_space_to_depth(w, b), (0, 1)).transpose(0, 1, 3, 2)
    dxs = jax.lax.conv_general_dilated(g, wt, (1, 1), ((kb - 1, kb - 1), (kb - 1, kb - 1)), dimension_numbers=_NHWC)
    dx = _depth_to_space(dxs, b)  # rows / columns the convolution reads: b * (out - 1) + k
    return jnp.pad(dx, ((0, 0), (0, in_hw[0] - dx.shape[1]), (0, in_hw[1] - dx.shape[2]), (0, 0)))


def _uses_space_to_depth(kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads) -> bool:
    (kh, kw), (sh, sw) = kernel_hw, strides
    return sh == sw > 1 and kh == kw and kh % sh == 0 and pads == ((0, 0), (0, 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: Array, w: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """Convolution ``x [N, H, W, C]`` (NHWC) by ``w [kh, kw, C, F]`` (HWIO) with explicit padding.

    Args:
      strides: ``(sh, sw)``.
      pads: ``((top, bottom), (left, right))``, non-negative.

    Returns:
      ``[N, H', W', F]``: XLA's forward convolution. The gradients are XLA's
      operations too, in the layout its CPU kernel takes
      (:func:`_weight_grad`, :func:`_input_grad`), so they stay fast inside
      ``lax.cond`` and ``lax.scan``; a VALID convolution whose stride divides
      its square kernel takes the space-to-depth input gradient
      (:func:`_space_to_depth_input_grad`).
    """
    return _direct_conv(x, w, strides, pads)


def _conv_nhwc_fwd(x, w, strides, pads):
    return _direct_conv(x, w, strides, pads), (x, w)


def _conv_nhwc_bwd(strides, pads, residuals, g):
    x, w = residuals
    in_hw, k = x.shape[1:3], w.shape[:2]
    dw = _weight_grad(x, g, k, strides, pads)
    if _uses_space_to_depth(k, strides, pads):
        dx = _space_to_depth_input_grad(g, w, in_hw, strides[0])
    else:
        dx = _input_grad(g, w, in_hw, strides, pads)
    return dx.astype(x.dtype), dw.astype(w.dtype)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def _backend_uses_conv_nhwc() -> bool:
    """Whether this backend takes :func:`conv_nhwc` where it applies: XLA:CPU, the only one measured.

    Accelerators keep their own convolution kernels (``benchmarks/scan_unroll.py
    --compare=conv_nhwc`` times both on a device).
    """
    return jax.default_backend() == "cpu"


def _conv_nhwc_args(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, precision, extra) -> tuple[tuple[int, int], Pads] | None:
    """``(strides, pads)`` for :func:`conv_nhwc` when it computes this convolution, else None."""

    def ones(d):
        return d is None or tuple(d) == (1, 1)

    if not _backend_uses_conv_nhwc():
        return None
    if extra or precision is not None or feature_group_count != 1 or jnp.ndim(lhs) != 4 or jnp.ndim(rhs) != 4:
        return None
    if not (ones(lhs_dilation) and ones(rhs_dilation)) or len(tuple(strides)) != 2:
        return None
    dn = jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    if dn != jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _NHWC):
        return None
    strides = tuple(int(v) for v in strides)
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(jnp.shape(lhs)[1:3], jnp.shape(rhs)[:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        return None
    return strides, pads


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None, **kwargs) -> Array:
    """``lax.conv_general_dilated`` through :func:`conv_nhwc` where it applies (CPU backend,
    NHWC / HWIO, any strides and non-negative padding, no dilation, one group); every
    other case, and every GPU or TPU (where it was not measured), goes to
    ``lax.conv_general_dilated``.
    """
    args = _conv_nhwc_args(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count, precision, kwargs)
    if args is not None:
        return conv_nhwc(lhs, rhs, *args)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)


# ---------------------------------------------------------------------------
# Convolutions of many vmapped members.


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

    def wrapped(*args, **kwargs):
        with nn.intercept_methods(slice_conv_interceptor):
            return fn(*args, **kwargs)

    return wrapped
