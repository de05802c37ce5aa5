"""Pretext classification losses: rotation prediction, jigsaw and Jigsaw++ permutations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jssl.losses._common import _at_least_f32, _check_2d, _check_labels


def _classification(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits = _at_least_f32(logits)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def rotation(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Rotation prediction, 4-way cross-entropy (Gidaris et al. 2018, arXiv 1803.07728).

    Each image is rotated by 0, 90, 180 or 270 degrees and the network predicts which:

    .. math:: L = -\operatorname{mean}_i \log \operatorname{softmax}(\text{logits}_i)_{y_i},
              \quad y_i \in \{0, 1, 2, 3\}.

    The paper feeds all four rotations of every image in the same batch; that batching is
    the caller's (``jssl.puzzles``), the loss is the mean over whatever rows it gets.

    Args:
      logits: shape (N, 4).
      labels: rotation index (multiples of 90 degrees), integers of shape (N,).

    Returns:
      Scalar float32 loss.
    """
    _check_2d("logits", logits)
    if logits.shape[1] != 4:
        raise ValueError(f"logits must have shape (N, 4) for the 4 rotations, got {logits.shape}")
    _check_labels("labels", labels, logits.shape[0])
    return _classification(logits, labels)


def jigsaw(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Jigsaw puzzle, P-way permutation classification (Noroozi & Favaro 2016, arXiv 1603.09246).

    The 9 tiles of a 3x3 grid are shuffled by one of P permutations of a fixed set (the
    released set has P = 1000 for Jigsaw, 701 for Jigsaw++) and the network predicts its
    index:

    .. math:: L = -\operatorname{mean}_i \log \operatorname{softmax}(\text{logits}_i)_{y_i},
              \quad y_i \in \{0, \dots, P-1\}.

    Args:
      logits: shape (N, P).
      labels: permutation index, integers of shape (N,).

    Returns:
      Scalar float32 loss.
    """
    _check_2d("logits", logits)
    _check_labels("labels", labels, logits.shape[0])
    return _classification(logits, labels)


def jigsaw_pp(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Jigsaw++ permutation classification (Noroozi et al. 2018, arXiv 1805.00385).

    Jigsaw++ replaces 0-2 tiles with tiles of another image; the label is still the index
    of the permutation applied, so the loss is :func:`jigsaw`'s P-way cross-entropy
    (mean over the batch). Kept as its own name so that configs and logs say which pretext
    ran.

    Args:
      logits: shape (N, P).
      labels: permutation index, integers of shape (N,).

    Returns:
      Scalar float32 loss.
    """
    _check_2d("logits", logits)
    _check_labels("labels", labels, logits.shape[0])
    return _classification(logits, labels)
