"""Clustering / self-distillation objectives: Sinkhorn-Knopp and SwAV, DINO and its center."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jssl.losses._common import _at_least_f32, _check_2d, _check_crops


def sinkhorn_knopp(scores: jax.Array, *, epsilon: float = 0.05, iters: int = 3) -> jax.Array:
    r"""Equal-partition soft assignments by Sinkhorn-Knopp (SwAV; Caron et al. 2020).

    Paper: arXiv 2006.09882.

    With scores :math:`S \in \mathbb{R}^{N \times K}` (samples against prototypes), start
    from :math:`Q = \exp(S/\epsilon)^\top` (K x N) and alternately rescale its rows so that
    every prototype holds mass 1/K and its columns so that every sample holds mass 1/N, for
    ``iters`` rounds; return :math:`N Q^\top`, whose rows (one per sample) sum to 1.

    Computed in the log domain (log-sum-exp rescalings instead of exp then divide), so
    scores / epsilon of several hundred stay finite in float32, which the official code's
    ``torch.exp(out / epsilon)`` does not. The official code also divides Q by its total
    first; in exact arithmetic the first row rescaling cancels that step, so it is omitted.
    The sums over samples run over the whole (global) batch: the official code's
    ``all_reduce`` of the row sums.

    The result is a target: it is returned under stop-gradient.

    Args:
      scores: prototype scores (cosine similarities in SwAV), shape (N, K).
      epsilon: entropic regularisation; 0.05 in the paper.
      iters: Sinkhorn rounds (>= 1); 3 in the paper.

    Returns:
      float32 assignments of shape (N, K), rows summing to 1, columns to about N/K
      (exactly as the number of rounds grows).
    """
    _check_2d("scores", scores)
    if iters < 1:
        raise ValueError(f"iters must be >= 1 Sinkhorn round, got {iters}")
    n, k = scores.shape
    log_q = _at_least_f32(jax.lax.stop_gradient(scores)).T / epsilon  # (K, N)

    def rescale(_, log_q):
        log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - math.log(k)
        return log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(n)

    # A loop, not unrolled: the compile time does not grow with `iters`.
    log_q = jax.lax.fori_loop(0, iters, rescale, log_q)
    return jax.lax.stop_gradient(jnp.exp(log_q + math.log(n)).T)


def swav(
    scores: Sequence[jax.Array],
    *,
    temperature: float = 0.1,
    sinkhorn_iters: int = 3,
    epsilon: float = 0.05,
    num_large_crops: int = 2,
) -> jax.Array:
    r"""SwAV swapped-prediction loss with multi-crop (Caron et al. 2020, arXiv 2006.09882).

    ``scores[v]`` holds the prototype scores of crop v (large crops first). For each large
    crop i the codes :math:`q_i` = :func:`sinkhorn_knopp` (scores[i]) (stop-gradient) are
    predicted from every other crop v through :math:`p_v = \operatorname{softmax}(s_v/\tau)`:

    .. math:: L = \frac{1}{C_\text{large}} \sum_{i < C_\text{large}} \frac{1}{C - 1}
              \sum_{v \ne i} \operatorname{mean}_n \Big(-\sum_k q_{i,nk} \log p_{v,nk}\Big),

    the official code's reduction (solo-learn's average over the same pairs is equal).
    The optional queue of the official code (earlier batches' scores prepended before
    Sinkhorn, for small batches) is not part of this function.

    Args:
      scores: list of C >= 2 arrays of shape (N, K), large crops first.
      temperature: tau of the prediction softmax; 0.1 in the paper.
      sinkhorn_iters: Sinkhorn rounds; 3 in the paper.
      epsilon: Sinkhorn regularisation; 0.05 in the paper.
      num_large_crops: how many leading crops get codes (the paper's crops_for_assign).

    Returns:
      Scalar float32 loss.
    """
    _check_crops("scores", scores, min_len=2)
    if not 1 <= num_large_crops <= len(scores):
        raise ValueError(
            f"num_large_crops must be in [1, {len(scores)}] (the number of crops), "
            f"got {num_large_crops}"
        )
    log_p = [jax.nn.log_softmax(_at_least_f32(s) / temperature, axis=-1) for s in scores]
    total = 0.0
    for i in range(num_large_crops):
        q = sinkhorn_knopp(scores[i], epsilon=epsilon, iters=sinkhorn_iters)
        per_crop = sum(
            -jnp.mean(jnp.sum(q * log_p[v], axis=-1)) for v in range(len(scores)) if v != i
        )
        total = total + per_crop / (len(scores) - 1)
    return total / num_large_crops


def _check_center(center: jax.Array, k: int) -> None:
    if jnp.shape(center) not in ((k,), (1, k)):
        raise ValueError(f"center must have shape ({k},) or (1, {k}), got {jnp.shape(center)}")


def dino(
    student: Sequence[jax.Array],
    teacher: Sequence[jax.Array],
    center: jax.Array,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> jax.Array:
    r"""DINO self-distillation loss (Caron et al. 2021, arXiv 2104.14294).

    Teacher targets are centred and sharpened,
    :math:`P_t = \operatorname{softmax}((g_t - c)/\tau_t)` under stop-gradient, and the
    student's :math:`\log P_s = \log\operatorname{softmax}(g_s/\tau_s)`; over every pair of a
    teacher crop t and a student crop s that is a different view (s != t):

    .. math:: L = \operatorname{mean}_{(t, s),\, s \ne t}\ \operatorname{mean}_n
              \Big(-\sum_k P_{t,nk} \log P_{s,nk}\Big),

    as the official ``DINOLoss`` (teacher crop t is student crop t: the large crops come
    first in both lists). The teacher temperature warm-up of the official code is a
    schedule: pass the scheduled value as ``teacher_temp``.

    Args:
      student: list of S arrays of shape (N, K), all crops, large crops first.
      teacher: list of T <= S arrays of shape (N, K), the large crops.
      center: running center, shape (K,) or (1, K) (stop-gradient inside).
      student_temp: tau_s; 0.1 in the paper.
      teacher_temp: tau_t; 0.04 in the paper (after warm-up).

    Returns:
      Scalar float32 loss.
    """
    _check_crops("student", student, min_len=2)
    _check_crops("teacher", teacher, min_len=1)
    if len(teacher) > len(student):
        raise ValueError(
            f"teacher must hold at most len(student) = {len(student)} crops, got {len(teacher)}"
        )
    if teacher[0].shape != student[0].shape:
        raise ValueError(
            f"teacher crops must have the student's shape {student[0].shape}, "
            f"got {teacher[0].shape}"
        )
    _check_center(center, student[0].shape[1])
    center = jax.lax.stop_gradient(_at_least_f32(center))
    targets = [jax.nn.softmax((_at_least_f32(t) - center) / teacher_temp, axis=-1) for t in teacher]
    targets = [jax.lax.stop_gradient(p) for p in targets]  # the teacher is a target
    log_p = [jax.nn.log_softmax(_at_least_f32(s) / student_temp, axis=-1) for s in student]
    terms = [
        -jnp.mean(jnp.sum(p_t * log_p[s], axis=-1))
        for t, p_t in enumerate(targets)
        for s in range(len(student))
        if s != t
    ]
    return sum(terms) / len(terms)


def dino_teacher_temp(
    step: jax.Array | int, *, teacher_temp: float, warmup_teacher_temp: float, warmup_steps: int
) -> jax.Array:
    r"""DINO's teacher temperature at `step`: linear from `warmup_teacher_temp` to
    `teacher_temp` over the first `warmup_steps` steps, then constant (the official code's
    ``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`` per epoch,
    here per step). `warmup_steps = 0` is `teacher_temp` from the start.

    .. math:: \tau_t(k) = \tau_w + (\tau - \tau_w) \min(k / K_w, 1)
    """
    if warmup_steps <= 0:
        return jnp.asarray(teacher_temp, jnp.float32)
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
    return warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * progress


def dino_center(
    center: jax.Array, teacher: Sequence[jax.Array] | jax.Array, *, momentum: float = 0.9
) -> jax.Array:
    r"""DINO's center update, an EMA of the teacher's mean output (Caron et al. 2021).

    .. math:: c \leftarrow m\, c + (1 - m) \operatorname{mean}_{t, n} g_{t, n}

    over every teacher crop t and every sample n of the (global) batch: the official
    ``update_center``'s sum, ``all_reduce`` and division by (crops x N x world size).

    Args:
      center: current center, shape (K,) or (1, K).
      teacher: list of (N, K) teacher logits per crop, or one (M, K) array of all of them.
      momentum: m; 0.9 in the paper.

    Returns:
      The new center, float32, with ``center``'s shape (no gradient flows through it).
    """
    if isinstance(teacher, (list, tuple)):
        _check_crops("teacher", teacher, min_len=1)
        logits = jnp.concatenate([_at_least_f32(t) for t in teacher], axis=0)
    else:
        _check_2d("teacher", teacher)
        logits = _at_least_f32(teacher)
    _check_center(center, logits.shape[1])
    batch_center = jnp.mean(jax.lax.stop_gradient(logits), axis=0)
    center = jax.lax.stop_gradient(_at_least_f32(center))
    return momentum * center + (1.0 - momentum) * batch_center.reshape(center.shape)
