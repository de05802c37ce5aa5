"""A 2-D convolution whose weight gradient is one contraction per kernel tap (fast on CPU).

XLA's CPU backend lowers a convolution's weight gradient as a convolution with a window
as large as the feature map, which ran at 3.5-6 GFLOP/s and took 63% of a ResNet-18 step
(shared/PERFORMANCE.md). Here the weight gradient is computed directly: for each tap
(i, j) of a kh x kw kernel,

    dW[i, j] = sum_{n, h, w} Xpad[n, i + s*h, j + s*w, :]^T  dY[n, h, w, :]

a (Cin x NHW) @ (NHW x Cout) matmul, which XLA runs as a GEMM. The forward pass and the
input gradient stay XLA's. On GPUs and TPUs XLA's own convolutions are the fast ones:
`jssl.models.build_backbone(conv_impl="auto")` uses this only on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d", "Conv"]

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding), (padding, padding)),
                                    dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution with symmetric integer padding."""
    return _conv(x, w, stride, padding)


def _fwd(x, w, stride, padding):
    return _conv(x, w, stride, padding), (x, w)


def _bwd(stride, padding, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, stride, padding), x)
    (dx,) = input_vjp(g)
    kh, kw = w.shape[0], w.shape[1]
    ho, wo = g.shape[1], g.shape[2]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    taps = []
    for i in range(kh):
        for j in range(kw):
            patch = lax.slice(xp, (0, i, j, 0),
                              (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1,
                               xp.shape[3]), (1, stride, stride, 1))
            taps.append(jnp.einsum("nhwc,nhwd->cd", patch, g,
                                   preferred_element_type=jnp.float32))
    dw = jnp.stack(taps).reshape(kh, kw, w.shape[2], w.shape[3]).astype(w.dtype)
    return dx.astype(x.dtype), dw


conv2d.defvjp(_fwd, _bwd)


class Conv(nn.Module):
    """Drop-in for the `nn.Conv` uses in jssl's backbones, built on `conv2d`.

    Named `Conv` like flax's module so that parameters get the same automatic names
    (`Conv_0`, ...) and shapes: checkpoints move freely between conv_impl="tapped" and "xla".

    Supports square kernels given as (k, k), an integer stride, integer symmetric padding,
    no bias by default, no groups or dilation.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int = 1
    padding: int = 0
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        stride = self.strides if isinstance(self.strides, int) else self.strides[0]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                            self.param_dtype)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), stride, self.padding)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
