"""Self-supervised objectives as pure functions of embeddings (layer 1: no Flax, no config).

Every loss takes raw embeddings of the *global* batch and returns a float32 scalar mean.
Inside the sharded train step the batch axis is split over devices; because the losses are
written on the whole batch, XLA inserts the collectives (cross-device negatives, the
Barlow Twins cross-correlation over all devices) and the value equals the single-device one.
Never call collectives here.

Conventions follow the original papers by default; keyword arguments reproduce the peers'
(solo-learn, lightly) and the official codes' variants where they differ (METHODS.md, s. 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["barlow_twins", "nt_xent", "l2_normalize"]


def _check_2d(name: str, x: jax.Array) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}")


def _at_least_f32(x: jax.Array) -> jax.Array:
    """Upcast half precision to float32 (loss reductions in float32); keep float64."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along `axis` (PyTorch's F.normalize convention)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def barlow_twins(
    z1: jax.Array,
    z2: jax.Array,
    *,
    lambd: float = 0.0051,
    scale: float = 1.0,
    unbiased: bool = False,
    eps: float = 1e-5,
) -> jax.Array:
    r"""Barlow Twins redundancy-reduction loss (Zbontar et al. 2021, arXiv 2103.03230).

    Each embedding dimension is standardised over the batch, the cross-correlation matrix
    :math:`C = \tilde z_1^\top \tilde z_2 / N` is formed, and

    .. math:: L = s \Big(\sum_i (1 - C_{ii})^2 + \lambda \sum_{i \ne j} C_{ij}^2\Big).

    Conventions:
      * ``unbiased=False, eps=1e-5`` (default): the paper's code standardises with a
        ``BatchNorm1d(affine=False)``: biased variance plus eps (solo-learn and lightly too).
      * ``unbiased=True, eps=0``: ``(z - mean) / z.std(0)`` with the unbiased std and no
        eps, as MetaMask's official code (and the PyTorch step in shared/bench) does.
      * ``scale`` multiplies the whole loss (solo-learn's ``scale_loss``; 0.1 in its CIFAR
        recipe, 1.0 in the paper).

    Args:
      z1, z2: projector outputs of the two views, shape (N, D), N >= 2.
      lambd: weight of the off-diagonal (redundancy) term; 0.0051 in the paper.
      scale: overall factor.
      unbiased: standardise with the unbiased (N - 1) variance.
      eps: added to the variance before the square root.

    Returns:
      Scalar float32 loss.
    """
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {z1.shape} and {z2.shape}")
    n = z1.shape[0]
    ddof = 1 if unbiased else 0

    def standardise(z):
        z = _at_least_f32(z)
        mean = jnp.mean(z, axis=0)
        var = jnp.sum(jnp.square(z - mean), axis=0) / (n - ddof)
        return (z - mean) * jax.lax.rsqrt(var + eps)

    c = standardise(z1).T @ standardise(z2) / n
    diag = jnp.diagonal(c)
    on_diag = jnp.sum(jnp.square(1.0 - diag))
    off_diag = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
    return scale * (on_diag + lambd * off_diag)


def nt_xent(*views: jax.Array, temperature: float = 0.1, labels: jax.Array | None = None) -> jax.Array:
    r"""NT-Xent / InfoNCE of SimCLR (Chen et al. 2020, arXiv 2002.05709), multi-view and SupCon.

    All V views of shape (N, D) are L2-normalised and stacked into VN anchors. For anchor i
    with positive set P(i) (the other views of the same sample; with ``labels``, every other
    anchor of the same label) and all other anchors A(i) = {a != i}:

    .. math:: \ell_i = -\log \frac{\sum_{p \in P(i)} \exp(s_{ip}/\tau)}
                                   {\sum_{a \in A(i)} \exp(s_{ia}/\tau)}

    and the loss is the mean of :math:`\ell_i` over all VN anchors. With V = 2 and no labels
    this is SimCLR's NT-Xent exactly. Positives are summed inside the log (solo-learn's
    multi-positive convention; SupCon's "L_in" form). Computed with log-sum-exp, so it stays
    finite in float32 down to temperature 0.01.

    Args:
      *views: V >= 2 arrays of shape (N, D).
      temperature: softmax temperature tau.
      labels: optional (N,) integer class labels (supervised contrastive).

    Returns:
      Scalar float32 loss.
    """
    if len(views) < 2:
        raise ValueError(f"nt_xent needs at least 2 views, got {len(views)}")
    for v, z in enumerate(views):
        _check_2d(f"views[{v}]", z)
        if z.shape != views[0].shape:
            raise ValueError(f"all views must have the same shape, got {views[0].shape} and {z.shape}")
    n = views[0].shape[0]
    num_views = len(views)
    z = jnp.concatenate([l2_normalize(_at_least_f32(v)) for v in views], axis=0)
    logits = (z @ z.T) / temperature
    if labels is None:
        ids = jnp.arange(n)
    else:
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        ids = labels
    ids = jnp.tile(ids, num_views)
    self_mask = jnp.eye(num_views * n, dtype=bool)
    pos_mask = (ids[:, None] == ids[None, :]) & ~self_mask
    neg_inf = jnp.finfo(logits.dtype).min
    log_denominator = jax.nn.logsumexp(jnp.where(self_mask, neg_inf, logits), axis=1)
    log_numerator = jax.nn.logsumexp(jnp.where(pos_mask, logits, neg_inf), axis=1)
    return jnp.mean(log_denominator - log_numerator)
