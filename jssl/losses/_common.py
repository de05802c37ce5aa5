"""Helpers shared by the loss modules: dtype promotion, normalisation, shape checks."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _at_least_f32(x: jax.Array) -> jax.Array:
    """Upcast half precision to float32 (loss reductions in float32); keep float64."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along `axis` (PyTorch's F.normalize convention)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _cosine_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine similarity of two (N, D) arrays, shape (N,)."""
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def _check_2d(name: str, x: jax.Array) -> None:
    if jnp.ndim(x) != 2:
        raise ValueError(f"{name} must have shape (N, D), got {jnp.shape(x)}")


def _check_pair(name1: str, x1: jax.Array, name2: str, x2: jax.Array) -> None:
    """Both (N, D) and of the same shape."""
    _check_2d(name1, x1)
    _check_2d(name2, x2)
    if jnp.shape(x1) != jnp.shape(x2):
        raise ValueError(
            f"{name1} and {name2} must have the same shape, got {jnp.shape(x1)} and {jnp.shape(x2)}"
        )


def _check_crops(name: str, xs: Sequence[jax.Array], min_len: int = 1) -> None:
    """A non-empty list of (N, K) arrays that all share one shape."""
    if isinstance(xs, jax.Array) or not isinstance(xs, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of (N, K) arrays, one per crop, got {type(xs).__name__}"
        )
    if len(xs) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} crops, got {len(xs)}")
    for i, x in enumerate(xs):
        if jnp.ndim(x) != 2:
            raise ValueError(f"{name}[{i}] must have shape (N, K), got {jnp.shape(x)}")
        if jnp.shape(x) != jnp.shape(xs[0]):
            raise ValueError(
                f"all {name} must have the same shape (N, K), "
                f"got {jnp.shape(xs[0])} and {jnp.shape(x)} at index {i}"
            )


def _check_labels(name: str, labels: jax.Array, n: int) -> None:
    if jnp.shape(labels) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {jnp.asarray(labels).dtype}")
