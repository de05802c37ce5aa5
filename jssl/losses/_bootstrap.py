"""Bootstrap (non-contrastive) objectives with a stop-gradient target: BYOL, SimSiam."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import _at_least_f32, _check_pair, _cosine_rows


def byol(p: jax.Array, z: jax.Array) -> jax.Array:
    r"""BYOL regression loss, one direction (Grill et al. 2020, arXiv 2006.07733).

    .. math:: L = \operatorname{mean}_i \lVert \hat p_i - \hat z_i \rVert^2
              = 2 - 2 \operatorname{mean}_i \cos(p_i, \operatorname{sg}(z_i))

    with :math:`\hat x = x / \lVert x \rVert`. ``z`` is the target network's projection and
    is under stop-gradient. The paper symmetrises by adding the loss with the views swapped
    (``byol(p1, z2) + byol(p2, z1)``, range [0, 8]), as solo-learn's ``byol_loss_func``
    does; lightly's BYOL uses ``NegativeCosineSimilarity`` (``-mean cos``, averaged over the
    two directions), which is ``(byol(p, z) - 2) / 2``: the same minimiser, gradients
    smaller by a factor 2 per direction.

    Args:
      p: online predictions, shape (N, D).
      z: target projections, shape (N, D) (stop-gradient inside).

    Returns:
      Scalar float32 loss in [0, 4].

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(byol(jnp.ones((2, 3)), 2 * jnp.ones((2, 3)))), 6)
      0.0
    """
    _check_pair("p", p, "z", z)
    z = jax.lax.stop_gradient(_at_least_f32(z))
    return 2.0 - 2.0 * jnp.mean(_cosine_rows(_at_least_f32(p), z))


def simsiam(p: jax.Array, z: jax.Array) -> jax.Array:
    r"""SimSiam negative cosine similarity, one direction (Chen & He 2021, arXiv 2011.10566).

    .. math:: L = -\operatorname{mean}_i \cos(p_i, \operatorname{sg}(z_i))

    ``z`` (the other view's projection) is under stop-gradient: the stop-gradient is what
    prevents collapse in SimSiam. The paper's symmetric loss is
    ``0.5 * (simsiam(p1, z2) + simsiam(p2, z1))``; solo-learn and lightly use the same form.

    Args:
      p: predictions, shape (N, D).
      z: projections of the other view, shape (N, D) (stop-gradient inside).

    Returns:
      Scalar float32 loss in [-1, 1].
    """
    _check_pair("p", p, "z", z)
    z = jax.lax.stop_gradient(_at_least_f32(z))
    return -jnp.mean(_cosine_rows(_at_least_f32(p), z))
