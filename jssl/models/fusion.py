"""Fusion heads over the features of K frozen pretext encoders (docs/methods.md section 4).

Yao, Wu, Feng & Chen 2022, "Learning Downstream Task by Selectively Capturing Complementary
Knowledge from Multiple Self-supervisedly Learning Pretexts" (arXiv 2204.05248). No official
code exists and only the abstract could be read: the layers below are jssl's design, named
as our choice. Input: K feature arrays r_k of shapes (N, F_k) (widths may differ); each is
projected to a common width d by its own trainable W_k, h_k = W_k r_k + b_k. Modes:

* "task_query": attention over the pretext axis with one learned task query q (d,):
  alpha_k = softmax_k(q . Key(h_k) / sqrt(d)), z = sum_k alpha_k Value(h_k); Key and Value
  are shared linear maps. alpha still depends on the input, through the keys.
* "input_query": the same attention with an input-conditioned query
  q(x) = Query(mean_k h_k).
* "se_gate": squeeze-and-excitation style channel gating of the concatenation
  c = [h_1, ..., h_K]: z = c * sigmoid(Excite(relu(Squeeze(c)))); the reported per-pretext
  weight is the mean gate of that pretext's d channels (gates do not sum to 1).
* "average": the attention layers with alpha fixed to 1/K (uniform average of Value(h_k)).
* "concat": no projection; a linear head on the concatenation of the r_k.
* "single": a linear head on r_{single_index} alone (a linear probe on one encoder).

Projections (`projection`): "free" gives every encoder its own W_k (above); "tied" gives
all K encoders one shared W (equal widths needed). With free projections a weight alpha_k
is not identifiable: W_k can shrink (or blank out) encoder k whatever alpha_k says, so the
attention weights need not show which encoder the head relies on. Tied, the only
per-encoder freedom left is alpha_k (Key, Value and W are shared), so a down-weighted
encoder shows up in alpha. `normalize` rescales every projected h_k to norm sqrt(d) (a norm
constraint: no encoder can be silenced or amplified through the size of its projection).

Every mode ends with a linear classifier on z. With K = 1, alpha = 1 exactly and the
attention, average, concat and single modes are affine maps of r_1: a linear probe on that
encoder (se_gate's gates stay input-dependent, so it is not).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ATTENTION_MODES", "MODES", "PROJECTIONS", "WEIGHTED_MODES", "FusionHead"]

PROJECTIONS = ("free", "tied")  # per-encoder W_k, or one W shared by all encoders
MODES = ("task_query", "input_query", "se_gate", "average", "concat", "single")
ATTENTION_MODES = ("task_query", "input_query")  # softmax weights over the pretexts
WEIGHTED_MODES = ATTENTION_MODES + ("se_gate", "average")  # modes that report per-pretext weights


class FusionHead(nn.Module):
    """K feature arrays (N, F_k) -> {"logits" (N, C), "fused" (N, D), "weights" (N, K) or None}.

    "weights" are the attention weights alpha (attention modes; rows sum to 1), 1/K
    ("average"), or each pretext's mean channel gate ("se_gate"); None for "concat" and
    "single". Logits, weights and fused features are float32; `dtype` is the compute dtype.
    """

    num_classes: int
    mode: str = "task_query"
    dim: int = 64
    se_reduction: int = 4
    single_index: int = 0
    projection: str = "free"
    normalize: bool = False
    dtype: Any = jnp.float32

    def _dense(self, width: int, name: str, **kw) -> nn.Dense:
        return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=name, **kw)

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict:
        if self.mode not in MODES:
            raise ValueError(
                f"FusionHead.mode must be one of {', '.join(MODES)}, got {self.mode!r}"
            )
        k = len(features)
        if k == 0:
            raise ValueError("FusionHead needs at least one feature array")
        weights = None
        if self.mode == "single":
            if not 0 <= self.single_index < k:
                raise ValueError(f"FusionHead.single_index {self.single_index} is not in [0, {k})")
            z = features[self.single_index].astype(self.dtype)
        elif self.mode == "concat":
            z = jnp.concatenate([f.astype(self.dtype) for f in features], axis=-1)
        else:
            # Projections to the common width: (N, K, d).
            if self.projection == "tied":
                if len({f.shape[-1] for f in features}) != 1:
                    raise ValueError(
                        "FusionHead.projection 'tied' needs encoders of one feature width, "
                        f"got {[f.shape[-1] for f in features]}"
                    )
                shared = self._dense(self.dim, "project")
                h = jnp.stack([shared(f.astype(self.dtype)) for f in features], axis=1)
            elif self.projection == "free":
                h = jnp.stack(
                    [
                        self._dense(self.dim, f"project_{i}")(f.astype(self.dtype))
                        for i, f in enumerate(features)
                    ],
                    axis=1,
                )
            else:
                raise ValueError(
                    f"FusionHead.projection must be one of {', '.join(PROJECTIONS)}, "
                    f"got {self.projection!r}"
                )
            if self.normalize:  # every h_k on the sphere of radius sqrt(d)
                h32 = h.astype(jnp.float32)
                norm = jnp.sqrt(jnp.sum(h32 * h32, axis=-1, keepdims=True) + 1e-12)
                h = (h32 * (jnp.sqrt(float(self.dim)) / norm)).astype(self.dtype)
            if self.mode == "se_gate":
                c = h.reshape(h.shape[0], k * self.dim)
                squeeze = self._dense(max(1, (k * self.dim) // self.se_reduction), "squeeze")
                gates = nn.sigmoid(
                    self._dense(k * self.dim, "excite")(nn.relu(squeeze(c))).astype(jnp.float32)
                )
                z = c * gates.astype(self.dtype)
                weights = gates.reshape(-1, k, self.dim).mean(axis=-1)
            else:
                values = self._dense(self.dim, "value")(h)  # shared over the pretext axis
                if self.mode == "average":
                    weights = jnp.full(h.shape[:2], 1.0 / k, jnp.float32)
                else:
                    # The query starts at zero: uniform weights, the "average" head, from
                    # which the attention learns to depart (our choice).
                    if self.mode == "task_query":
                        q = self.param("query", nn.initializers.zeros, (self.dim,), jnp.float32)
                        q = jnp.broadcast_to(q.astype(self.dtype), (h.shape[0], self.dim))
                    else:  # input_query
                        q = self._dense(self.dim, "query", kernel_init=nn.initializers.zeros)(
                            jnp.mean(h, axis=1)
                        )
                    keys = self._dense(self.dim, "key")(h)
                    scores = jnp.einsum(
                        "nkd,nd->nk", keys.astype(jnp.float32), q.astype(jnp.float32)
                    ) / jnp.sqrt(float(self.dim))
                    weights = jax.nn.softmax(scores, axis=-1)  # over the pretexts
                z = jnp.einsum("nk,nkd->nd", weights.astype(self.dtype), values)
        logits = self._dense(self.num_classes, "classifier")(z)
        return {
            "logits": logits.astype(jnp.float32),
            "fused": z.astype(jnp.float32),
            "weights": weights,
        }
