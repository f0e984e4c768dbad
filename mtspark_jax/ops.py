"""Fast kernels behind the networks' layer-by-layer path (SPEC section 7).

Nothing here changes what a network computes; each function is a cheaper
formulation of an expression ``networks.py`` used to write directly, checked
against it in ``tests/test_ops.py``.

* :func:`neuron_constant_input`: a neuron driven by the same current at every
  step (direct encoding's first layer). The old form broadcast the current to
  ``[T, ...]`` and scanned over it; XLA then materialised the broadcast in the
  forward pass and reduced the ``[T, ...]`` cotangent in the backward pass
  (on 2 CPU cores about 13 % of the MTSpark_ADD train step). Here the current
  is a loop invariant of the scan, so its cotangent is accumulated in the
  loop carry, element-wise, and nothing ``[T, ...]``-sized is built for it.
  Same arithmetic per step, so the outputs are identical.
* :func:`conv_general_dilated`: a drop-in for ``lax.conv_general_dilated``
  (``nn.Conv(conv_general_dilated=...)``). For a strided VALID convolution
  whose kernel the stride divides (the nature trunk's 8x8/4 and 4x4/2), the
  input gradient is computed as a stride-1 convolution in the space-to-depth
  layout instead of XLA's input-dilated transposed convolution. Same forward
  pass and weight gradient; the input gradient differs only in summation
  order. On 2 CPU cores the input gradient of the trunk's 4x4/2 layer (batch
  T x B = 128) takes 3.6 ms instead of 7.4 ms (benchmarks/NOTES.md, section 9).
  Only on the CPU backend: it was not measured on accelerators.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtspark_jax import spiking
from mtspark_jax.spiking import NeuronConfig, NeuronKind

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
    v0 = jnp.full(current.shape, cfg.initial_v, current.dtype)

    def body(v, _):
        v, s = spiking.neuron_step(v, current, cfg, kind)
        return v, s

    _, spikes = jax.lax.scan(body, v0, None, length=time_steps, unroll=True)
    return spikes


_NHWC = ("NHWC", "HWIO", "NHWC")


def _direct_conv(x: Array, w: Array, stride: int) -> Array:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=_NHWC)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def strided_conv(x: Array, w: Array, stride: int) -> Array:
    """VALID convolution ``x [N, H, W, C]`` (NHWC) by ``w [k, k, C, F]`` (HWIO), stride ``stride``.

    Requires ``k % stride == 0``. Returns ``[N, (H-k)//stride+1, (W-k)//stride+1, F]``.
    The forward pass and the weight gradient are XLA's; the input gradient is a
    stride-1 convolution in the space-to-depth layout (see module docstring).
    """
    return _direct_conv(x, w, stride)


def _strided_conv_fwd(x, w, stride):
    return _direct_conv(x, w, stride), (x, w)


def _strided_conv_bwd(stride, residuals, g):
    x, w = residuals
    b, k = stride, w.shape[0]
    dw = jax.vjp(lambda w: _direct_conv(x, w, stride), w)[1](g)[0]
    # y = conv(s2d(x), s2d(w), stride 1): its input gradient is the full
    # correlation of g with the flipped s2d kernel, input and output channels swapped.
    kb = k // b
    wt = jnp.flip(_kernel_space_to_depth(w, b), (0, 1)).transpose(0, 1, 3, 2)
    dxs = jax.lax.conv_general_dilated(g, wt, (1, 1), ((kb - 1, kb - 1), (kb - 1, kb - 1)),
                                       dimension_numbers=_NHWC)
    dx = _depth_to_space(dxs, b)  # rows / columns the convolution reads: b * (out - 1) + k
    dx = jnp.pad(dx, ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0)))
    return dx.astype(x.dtype), dw


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def _backend_uses_space_to_depth() -> bool:
    """Whether this backend takes :func:`strided_conv` where it applies: XLA:CPU, the only one measured.

    Accelerators keep their own convolution kernels (``benchmarks/scan_unroll.py
    --compare=space_to_depth`` times both on a device).
    """
    return jax.default_backend() == "cpu"


def _space_to_depth_applies(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, precision, extra) -> bool:
    def ones(d):
        return d is None or tuple(d) == (1, 1)

    if not _backend_uses_space_to_depth():
        return False
    if extra or precision is not None or feature_group_count != 1 or jnp.ndim(lhs) != 4:
        return False
    if not (ones(lhs_dilation) and ones(rhs_dilation)):
        return False
    if not (padding == "VALID" or (not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding))):
        return False
    dn = jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    if dn != jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _NHWC):
        return False
    kh, kw = jnp.shape(rhs)[:2]
    s = tuple(strides)
    return len(s) == 2 and s[0] == s[1] > 1 and kh == kw and kh % s[0] == 0


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None, **kwargs) -> Array:
    """``lax.conv_general_dilated`` with the cheaper input gradient of :func:`strided_conv`
    where it applies (CPU backend, NHWC / HWIO, VALID, no dilation, one group, square
    kernel that the equal strides divide); every other case, and every GPU or TPU
    (where it was not measured), goes to ``lax.conv_general_dilated``.
    """
    if _space_to_depth_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                               dimension_numbers, feature_group_count, precision, kwargs):
        return strided_conv(lhs, rhs, int(window_strides[0]))
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)
