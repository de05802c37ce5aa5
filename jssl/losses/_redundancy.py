"""Redundancy-reduction and whitening objectives: Barlow Twins, VICReg, W-MSE."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import _at_least_f32, _check_pair, _cosine_rows


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
        eps, as MetaMask's official code (and benchmarks/torch_barlow_step.py) does.
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
    _check_pair("z1", z1, "z2", z2)
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


def vicreg(
    z1: jax.Array,
    z2: jax.Array,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    variance_reduction: str = "mean",
) -> jax.Array:
    r"""VICReg variance-invariance-covariance loss (Bardes et al. 2022, arXiv 2105.04906).

    With N samples of D dimensions per view, unbiased per-dimension variances
    :math:`\operatorname{Var}_d` and unbiased covariance :math:`C(z) = \bar z^\top \bar z/(N-1)`
    of the centred :math:`\bar z`:

    .. math::
        s = \tfrac{1}{ND} \lVert z_1 - z_2 \rVert_F^2, \quad
        v(z) = \tfrac1D \sum_d \max\big(0, 1 - \sqrt{\operatorname{Var}_d(z) + \epsilon}\big), \quad
        c(z) = \tfrac1D \sum_{i \ne j} C(z)_{ij}^2,

    .. math:: L = \lambda\, s + \mu\, r\big(v(z_1), v(z_2)\big) + \nu\, \big(c(z_1) + c(z_2)\big),

    where r averages the two variance terms (``variance_reduction="mean"``, the official
    code's ``std_loss / 2 + ...``) or sums them (``"sum"``: solo-learn's
    ``variance_loss``). The covariance terms of the two views are summed, each divided by D,
    in the official code and in solo-learn.

    Args:
      z1, z2: expander outputs of the two views, shape (N, D), N >= 2.
      sim_weight: lambda, weight of the invariance (MSE) term; 25 in the paper.
      var_weight: mu, weight of the variance hinge; 25 in the paper.
      cov_weight: nu, weight of the covariance term; 1 in the paper.
      eps: added to the variance inside the square root; 1e-4 in the official code.
      variance_reduction: "mean" (official) or "sum" (solo-learn) over the two views.

    Returns:
      Scalar float32 loss.
    """
    if variance_reduction not in ("mean", "sum"):
        raise ValueError(f"variance_reduction must be 'mean' or 'sum', got {variance_reduction!r}")
    _check_pair("z1", z1, "z2", z2)
    n, d = z1.shape
    if n < 2:
        raise ValueError(
            f"z1 must have shape (N, D) with N >= 2 (unbiased variance), got {z1.shape}"
        )
    z1, z2 = _at_least_f32(z1), _at_least_f32(z2)
    invariance = jnp.mean(jnp.square(z1 - z2))

    def variance_and_covariance(z):
        centred = z - jnp.mean(z, axis=0)
        cov = centred.T @ centred / (n - 1)
        var = jnp.diagonal(cov)
        variance = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(var + eps)))
        off_diag_sq = jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(var))
        return variance, off_diag_sq / d

    v1, c1 = variance_and_covariance(z1)
    v2, c2 = variance_and_covariance(z2)
    variance = v1 + v2
    if variance_reduction == "mean":
        variance = variance / 2.0
    return sim_weight * invariance + var_weight * variance + cov_weight * (c1 + c2)


def wmse(z1: jax.Array, z2: jax.Array, *, eps: float = 0.0) -> jax.Array:
    r"""W-MSE: MSE between whitened embeddings (Ermolov et al. 2021, arXiv 2007.06346).

    Each view is whitened on its own over the batch (the paper's w_size = N, one whitening
    iteration): centre :math:`\bar z = z - \operatorname{mean}(z)`, covariance
    :math:`\Sigma = \bar z^\top \bar z / (N-1)` (unbiased, as the official ``Whitening2d``),
    shrunk as :math:`\Sigma_\epsilon = (1-\epsilon)\Sigma + \epsilon I` (the official code's
    shrinkage, eps = 0 by default), Cholesky :math:`\Sigma_\epsilon = L L^\top`, whitening
    :math:`W = L^{-1}` and :math:`w = \bar z W^\top`. Gradients flow through the whitening.
    Then the normalised MSE of the official code (its default; ``--no_norm`` would use a
    plain MSE, not offered here):

    .. math:: L = \operatorname{mean}_i \big\lVert \hat w^{(1)}_i - \hat w^{(2)}_i \big\rVert^2
              = 2 - 2 \operatorname{mean}_i \cos\big(w^{(1)}_i, w^{(2)}_i\big).

    The official code's random sub-batches (w_size < N) and repeated whitenings (w_iter > 1)
    are left to the caller (call this on slices and average).

    Args:
      z1, z2: embeddings of the two views, shape (N, D); with eps = 0 the covariance must
        be full rank, so N > D is required.
      eps: shrinkage of the covariance towards the identity, in [0, 1].

    Returns:
      Scalar float32 loss. The Cholesky factorisation runs in float32 (float64 under x64).
    """
    _check_pair("z1", z1, "z2", z2)
    n, d = z1.shape
    if n <= d and isinstance(eps, (int, float)) and eps == 0:
        raise ValueError(
            f"z1 must have shape (N, D) with N > D for an invertible covariance "
            f"(or pass eps > 0), got {z1.shape}"
        )

    def whiten(z):
        z = _at_least_f32(z)
        centred = z - jnp.mean(z, axis=0)
        cov = centred.T @ centred / (n - 1)
        eye = jnp.eye(d, dtype=z.dtype)
        chol = jnp.linalg.cholesky((1.0 - eps) * cov + eps * eye)
        # w = centred @ L^{-T}  <=>  L w^T = centred^T: one triangular solve, no inverse.
        return jax.scipy.linalg.solve_triangular(chol, centred.T, lower=True).T

    return 2.0 - 2.0 * jnp.mean(_cosine_rows(whiten(z1), whiten(z2)))
