"""Contrastive objectives: NT-Xent (SimCLR, SupCon), DCL/DCLW, MoCo v2 InfoNCE, MoCo v3."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import (
    _at_least_f32,
    _check_2d,
    _check_labels,
    _check_pair,
    l2_normalize,
)


def nt_xent(
    *views: jax.Array,
    temperature: float = 0.1,
    labels: jax.Array | None = None,
    normalize: bool = True,
) -> jax.Array:
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
      normalize: L2-normalise the views first (the paper). ``False`` uses raw dot products,
        as the official code of Functional Knowledge Transfer (Chhipa et al. 2023) does.

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.eye(2)
      >>> round(float(nt_xent(z, z, temperature=1.0)), 4)  # -log(e / (e + 2))
      0.5514
    """
    if len(views) < 2:
        raise ValueError(f"nt_xent needs at least 2 views, got {len(views)}")
    for v, z in enumerate(views):
        _check_2d(f"views[{v}]", z)
        if z.shape != views[0].shape:
            raise ValueError(
                f"all views must have the same shape, got {views[0].shape} and {z.shape}"
            )
    n = views[0].shape[0]
    num_views = len(views)
    if labels is None:
        ids = jnp.arange(n)
    else:
        _check_labels("labels", labels, n)
        ids = jnp.asarray(labels)
    prep = l2_normalize if normalize else (lambda x: x)
    z = jnp.concatenate([prep(_at_least_f32(v)) for v in views], axis=0)
    logits = (z @ z.T) / temperature
    ids = jnp.tile(ids, num_views)
    self_mask = jnp.eye(num_views * n, dtype=bool)
    pos_mask = (ids[:, None] == ids[None, :]) & ~self_mask
    neg_inf = jnp.finfo(logits.dtype).min
    log_denominator = jax.nn.logsumexp(jnp.where(self_mask, neg_inf, logits), axis=1)
    log_numerator = jax.nn.logsumexp(jnp.where(pos_mask, logits, neg_inf), axis=1)
    return jnp.mean(log_denominator - log_numerator)


def dcl(
    z1: jax.Array, z2: jax.Array, *, temperature: float = 0.1, sigma: float | None = None
) -> jax.Array:
    r"""Decoupled contrastive loss, DCL and DCLW (Yeh et al. 2022, arXiv 2110.06848).

    NT-Xent with the positive pair removed from the denominator (eq. 6 of the paper). With
    :math:`u, v` the L2-normalised rows of ``z1``, ``z2`` and anchor :math:`u_i`:

    .. math:: \ell_i(u, v) = -w_i \frac{u_i \cdot v_i}{\tau}
              + \log \sum_{k \ne i} \big(e^{u_i \cdot u_k / \tau} + e^{u_i \cdot v_k / \tau}\big),
              \qquad L = \tfrac12 \big(\operatorname{mean}_i \ell_i(u, v)
                                      + \operatorname{mean}_i \ell_i(v, u)\big).

    ``sigma=None`` gives DCL (:math:`w_i = 1`). A number gives DCLW, the negative von
    Mises-Fisher weighting of the positive term,
    :math:`w_i = 2 - e^{u_i \cdot v_i/\sigma} / \operatorname{mean}_j e^{u_j \cdot v_j/\sigma}
    = 2 - N \operatorname{softmax}_i(u_i \cdot v_i / \sigma)` (mean weight 1; the paper
    uses sigma = 0.5). The weights are treated as constants (stop-gradient), as lightly does.

    Conventions:
      * Mean of the two directions (lightly's ``DCLLoss``); the unofficial reference code
        that lightly cites sums them: multiply by 2 to reproduce it.
      * The negatives of one anchor sit in ONE log-sum-exp (the paper's eq. 6 and the
        reference code); lightly adds two separate log-sum-exps (same-view and cross-view
        negatives), which is not reproduced.
      * The weight carries the factor N (the paper's expectation over the batch, lightly);
        the reference code's ``2 - softmax`` omits it.

    Args:
      z1, z2: projections of the two views, shape (N, D), N >= 2 (raw: normalised inside).
      temperature: tau.
      sigma: None for DCL, the vMF weighting scale for DCLW.

    Returns:
      Scalar float32 loss.
    """
    _check_pair("z1", z1, "z2", z2)
    n = z1.shape[0]
    u = l2_normalize(_at_least_f32(z1))
    v = l2_normalize(_at_least_f32(z2))
    pos = jnp.sum(u * v, axis=-1)
    if sigma is None:
        weight = jnp.ones_like(pos)
    else:
        weight = jax.lax.stop_gradient(2.0 - n * jax.nn.softmax(pos / sigma))
    off_diag = ~jnp.eye(n, dtype=bool)
    neg_inf = jnp.finfo(pos.dtype).min

    neg_mask = jnp.concatenate([off_diag, off_diag], axis=1)

    def one_direction(a, b):
        sims = jnp.concatenate([a @ a.T, a @ b.T], axis=1) / temperature
        # Excluded entries get finfo.min: finite (no NaN in the gradient) and exp() -> 0.
        negatives = jnp.where(neg_mask, sims, neg_inf)
        return jnp.mean(-weight * pos / temperature + jax.nn.logsumexp(negatives, axis=1))

    return 0.5 * (one_direction(u, v) + one_direction(v, u))


def moco(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    *,
    temperature: float = 0.2,
    normalize: bool = True,
) -> jax.Array:
    r"""MoCo InfoNCE with a queue of negatives (He et al. 2020, arXiv 1911.05722; v2: 2003.04297).

    For query :math:`q_i`, its key :math:`k_i` (momentum encoder, same image) and the K queued
    keys :math:`n_j` of earlier batches:

    .. math:: \ell_i = -\log \frac{e^{q_i \cdot k_i/\tau}}
              {e^{q_i \cdot k_i/\tau} + \sum_{j=1}^{K} e^{q_i \cdot n_j/\tau}},
              \qquad L = \operatorname{mean}_i \ell_i,

    i.e. a (1 + K)-way cross-entropy with the positive at index 0. ``k`` and ``queue`` are
    targets: both are under stop-gradient.

    Conventions:
      * ``normalize=True`` (default): q and k are L2-normalised inside, as lightly's
        ``NTXentLoss(memory_bank_size=...)`` does. The queue is used as given in both
        modes: lightly and solo-learn (and the official code) enqueue keys that are already
        normalised, so the caller must enqueue the normalised k.
      * ``normalize=False``: q and k are used as given (solo-learn normalises outside its
        ``moco_loss_func``).
      * The queue has shape (K, D), one key per row; solo-learn and the official code
        store (D, K): pass ``queue.T``.
      * temperature 0.2 is MoCo v2's; MoCo v1 used 0.07.

    Args:
      q: queries, shape (N, D).
      k: positive keys, shape (N, D).
      queue: negative keys, shape (K, D).
      temperature: tau.
      normalize: L2-normalise q and k inside.

    Returns:
      Scalar float32 loss.
    """
    _check_pair("q", q, "k", k)
    _check_2d("queue", queue)
    if queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must have shape (K, {q.shape[1]}), got {queue.shape}")
    q = _at_least_f32(q)
    k = jax.lax.stop_gradient(_at_least_f32(k))
    queue = jax.lax.stop_gradient(_at_least_f32(queue))
    if normalize:
        q, k = l2_normalize(q), l2_normalize(k)
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ queue.T], axis=1) / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def mocov3(q: jax.Array, k: jax.Array, *, temperature: float = 0.2) -> jax.Array:
    r"""MoCo v3 contrastive loss, one direction (Chen, Xie & He 2021, arXiv 2104.02057).

    With :math:`\hat q, \hat k` the L2-normalised queries and keys (keys from the momentum
    encoder, under stop-gradient), the keys of the whole (global) batch are the negatives:

    .. math:: L = 2\tau \cdot \operatorname{mean}_i
              -\log \frac{e^{\hat q_i \cdot \hat k_i/\tau}}
                          {\sum_j e^{\hat q_i \cdot \hat k_j/\tau}}.

    The factor :math:`2\tau` is the official code's (it makes the gradient scale independent
    of tau); solo-learn keeps it. The caller sums both directions,
    ``mocov3(q1, k2) + mocov3(q2, k1)``, as the official code and solo-learn do.

    Args:
      q: queries from the online encoder + predictor, shape (N, D).
      k: keys from the momentum encoder, shape (N, D).
      temperature: tau (the official recipes set it per backbone: make it a config field).

    Returns:
      Scalar float32 loss.
    """
    _check_pair("q", q, "k", k)
    q = l2_normalize(_at_least_f32(q))
    k = jax.lax.stop_gradient(l2_normalize(_at_least_f32(k)))
    logits = q @ k.T / temperature
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
    return 2.0 * temperature * jnp.mean(nll)


def nearest_neighbour(z: jax.Array, support: jax.Array) -> jax.Array:
    r"""The row of `support` most cosine-similar to each row of `z` (NNCLR's NN operator).

    .. math:: \operatorname{NN}(z_i) = s_{j^*}, \qquad
              j^* = \arg\max_j \hat z_i \cdot \hat s_j

    with :math:`\hat{\ }` L2 normalisation of z (the support set is stored normalised, as
    NNCLR's queue is). The result is a lookup, so no gradient flows through it.

    Args:
      z: (N, D) embeddings.
      support: (K, D) support set (the queue of earlier embeddings).

    Returns:
      (N, D) float32 rows of `support`.
    """
    _check_2d("z", z)
    _check_2d("support", support)
    if support.shape[1] != z.shape[1]:
        raise ValueError(f"support must have shape (K, {z.shape[1]}), got {support.shape}")
    support = jax.lax.stop_gradient(_at_least_f32(support))
    sims = jax.lax.stop_gradient(l2_normalize(_at_least_f32(z))) @ support.T
    return support[jnp.argmax(sims, axis=1)]


def nnclr(p: jax.Array, nn: jax.Array, *, temperature: float = 0.1) -> jax.Array:
    r"""NNCLR's contrastive loss, one direction (Dwibedi et al. 2021, arXiv 2104.14548).

    The positive of sample i is the nearest neighbour :math:`\operatorname{NN}(z_i)` of its
    first view's projection in a support set (`nearest_neighbour`); its negatives are the
    nearest neighbours of the other samples of the (global) batch. With :math:`\hat{\ }`
    L2 normalisation and :math:`p` the predictions of the second view:

    .. math:: L = \operatorname{mean}_i -\log
              \frac{e^{\hat{n}_i \cdot \hat p_i/\tau}}{\sum_k e^{\hat n_i \cdot \hat p_k/\tau}},
              \qquad n_i = \operatorname{NN}(z^{(1)}_i).

    The caller symmetrises: ``(nnclr(p2, nn1) + nnclr(p1, nn2)) / 2`` (solo-learn's
    convention; the paper symmetrises too). `nn` is a target under stop-gradient. tau: the
    paper 0.1, solo-learn's CIFAR recipe 0.2.

    Args:
      p: predictions of the other view, shape (N, D).
      nn: nearest neighbours from the support set, shape (N, D).
      temperature: tau.

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(nnclr(jnp.eye(2), jnp.eye(2), temperature=1.0)), 4)  # -log(e/(e+1))
      0.3133
    """
    _check_pair("p", p, "nn", nn)
    n_hat = jax.lax.stop_gradient(l2_normalize(_at_least_f32(nn)))
    logits = n_hat @ l2_normalize(_at_least_f32(p)).T / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))
