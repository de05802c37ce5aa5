"""A 2-D convolution whose weight gradient is one matmul per kernel tap (fast on CPU).

XLA's CPU backend lowers a convolution's weight gradient as a convolution with a window
as large as the feature map, which runs several times slower than the forward
convolution and took 63% of a ResNet-18 step (docs/performance.md). `conv2d` keeps
XLA's forward convolution and input gradient, and computes the weight gradient directly:
for each tap (i, j) of a kh x kw kernel,

    dW[i, j]^T = G^T @ Xpad[:, i::s, j::s, :]      (D x N*Ho*Wo) @ (N*Ho*Wo x C)

where G is the output gradient flattened to (N*Ho*Wo, D) and the right factor is the
strided window of the padded input that tap (i, j) sees, flattened the same way.

Why this order: XLA:CPU hands a dot to its fast GEMM library (YNNPACK) only in the
canonical layout (left factor M x K, right K x N, both row-major). The window slices
are already (K, C) row-major; G^T is transposed once per convolution (and kept
materialised with `optimization_barrier`, otherwise XLA folds the transpose into the dot
and falls back to a slower non-canonical GEMM) instead of once per tap. Measured
variants (im2col with one big GEMM, channel-major copies of the input, col2im input
gradients, tap-sum forwards) were slower on these CPUs: the extra copies cost more than
the larger GEMMs save.

Only reverse mode has the custom rule (a `jax.custom_vjp`): forward-mode differentiation
(`jax.jvp`) needs `Conv(custom_vjp=False)`, the same forward computation with JAX's own
rules (`jssl.models.conv_module(forward_mode=True)`; MetaMask's exact hypergradient runs its
tangent pass through it, and XLA then computes the shared forward pass once). Float64
inputs stay float64.

On GPUs and TPUs XLA's own convolutions are the fast ones:
`jssl.models.build_backbone(conv_impl="auto")` uses this module only on CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d", "Conv"]

_DN = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]
PaddingLike = Union[str, int, Sequence[Union[int, tuple[int, int]]]]


def _xla_conv(x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: Pads) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        w,
        stride,
        padding,
        dimension_numbers=_DN,
        preferred_element_type=jnp.promote_types(x.dtype, jnp.float32),
    ).astype(x.dtype)


def _canonical(x_shape, w_shape, stride, padding) -> tuple[tuple[int, int], Pads]:
    """(stride pair, explicit ((lo, hi), (lo, hi)) padding) from the user-facing forms."""
    if isinstance(stride, int):
        stride = (stride, stride)
    stride = tuple(int(s) for s in stride)
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride must be a positive int or a pair of them, got {stride!r}")
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], stride, padding.upper())
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        raise ValueError(
            f"padding must be 'SAME', 'VALID', an int >= 0 or two (lo, hi) pairs, got {padding!r}"
        )
    return stride, pads


def conv2d(
    x: jax.Array, w: jax.Array, *, stride: int | Sequence[int] = 1, padding: PaddingLike = 0
) -> jax.Array:
    """NHWC x HWIO -> NHWC cross-correlation (what `nn.Conv` and PyTorch compute).

    Same value as `lax.conv_general_dilated(x, w, stride, padding)`; the weight gradient is
    computed tap by tap (see the module docstring). Differentiable in `x` and `w`.

    Args:
      x: (N, H, W, C) input.
      w: (kh, kw, C, D) kernel, same dtype as `x`.
      stride: an int or (sh, sw).
      padding: "SAME", "VALID", an int p (p zeros on every side, as PyTorch's
        `padding=p`) or ((top, bottom), (left, right)).

    Returns:
      (N, Ho, Wo, D) output in `x.dtype`.
    """
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(
            f"conv2d needs x (N, H, W, C) and w (kh, kw, C, D); got x {x.shape}, w {w.shape}"
        )
    stride, pads = _canonical(x.shape, w.shape, stride, padding)
    return _conv2d(x, w, stride, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, stride, pads):
    return _xla_conv(x, w, stride, pads)


def _conv2d_fwd(x, w, stride, pads):
    return _xla_conv(x, w, stride, pads), (x, w)


def _weight_grad(x: jax.Array, g: jax.Array, kernel_shape, stride, pads) -> jax.Array:
    """dW (kh, kw, C, D) in float32 (float64 for float64 inputs): one canonical
    (D x K) @ (K x C) GEMM per tap."""
    kh, kw, c, d = kernel_shape
    n, ho, wo, _ = g.shape
    sh, sw = stride
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    gt = lax.optimization_barrier(g.reshape(n * ho * wo, d).T)
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                (1, sh, sw, 1),
            )
            taps.append(
                jnp.dot(
                    gt,
                    window.reshape(n * ho * wo, c),
                    preferred_element_type=jnp.promote_types(x.dtype, jnp.float32),
                )
            )
    return jnp.stack(taps).reshape(kh, kw, d, c).transpose(0, 1, 3, 2)


def _conv2d_bwd(stride, pads, residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    # The input gradient is XLA's own (a transposed convolution), traced without the
    # forward recomputation a jax.vjp would add.
    input_transpose = jax.linear_transpose(
        lambda x_: _xla_conv(x_, w, stride, pads), jax.ShapeDtypeStruct(x.shape, x.dtype)
    )
    (dx,) = input_transpose(g)
    dw = _weight_grad(x, g, w.shape, stride, pads)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """Drop-in for 2-D `flax.linen.Conv` (NHWC) built on `conv2d`.

    Same fields, defaults, parameter names, shapes and initialisers as `nn.Conv`, and named
    `Conv` so that parents give it the same automatic names (`Conv_0`, ...): parameters and
    checkpoints move freely between conv_impl="tapped" and "xla". No dilation, groups or
    masks (ResNets use none).
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()
    # False: the same forward computation differentiated by JAX's own rules (forward mode
    # works; the weight gradient is then XLA's, slow on CPU).
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C) -> (N, Ho, Wo, features)."""
        kernel_size = tuple(self.kernel_size)
        if len(kernel_size) != 2:
            raise ValueError(f"Conv.kernel_size must have 2 entries (kh, kw), got {kernel_size}")
        kernel = self.param(
            "kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.custom_vjp:
            y = conv2d(x, kernel, stride=self.strides, padding=self.padding)
        else:
            stride, pads = _canonical(x.shape, kernel.shape, self.strides, self.padding)
            y = _xla_conv(x, kernel, stride, pads)
        if bias is not None:
            y = y + bias
        return y
