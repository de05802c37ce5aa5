"""What every method shares: the TrainState pytree and the Method record the loop runs."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jssl import losses

__all__ = ["TrainState", "Method", "DataInfo", "classifier_update", "step_metrics"]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed whole.

    `rng` is a raw uint32 key (jax.random.PRNGKey) so that orbax stores it as a plain array;
    each step folds the step number into it, so batches of randomness depend on (seed, step)
    only and a resumed run draws exactly what an uninterrupted one would.
    `extras` holds method state (EMA targets, queues, masks, their optimizer states ...).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    extras: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about the data to build its models."""

    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) as stored, before augmentation


@dataclasses.dataclass(frozen=True)
class Method:
    """The pure functions the one train loop (jssl/train.py) runs for a method.

    init(rng) -> TrainState                     parameters, BN stats, optimizer state
    train_step(state, batch) -> (state, metrics)  batch: {"image": uint8 (B,H,W,C), "label": (B,)}
    embed(state, images) -> (B, F) float32        frozen features of uint8 images (eval mode)
    calibrate(state, images) -> state             update BN statistics only (train-mode forward,
                                                  no gradient); used for the random-init baseline
    predict(state, images) -> (B, C) logits       optional: a trained classifier (joint methods);
                                                  evaluation adds its val/test accuracy
    batches(source, mesh) -> TrainBatches-like    optional: the training stream (default: one
                                                  stream of config.batch_size from the train split)
    """

    init: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    embed: Callable[[TrainState, jax.Array], jax.Array]
    calibrate: Callable[[TrainState, jax.Array], TrainState]
    predict: Callable[[TrainState, jax.Array], jax.Array] | None = None
    batches: Callable[[Any, Any], Any] | None = None


def global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def step_metrics(loss, grads, params, h, lr) -> dict:
    """The metrics every train step logs: loss, lr, grad_norm, param_norm and feature_std,
    the mean per-dimension std of the L2-normalised features h (~1/sqrt(F) when healthy, 0
    when the representation has collapsed)."""
    return {"loss": loss, "lr": lr, "grad_norm": global_norm(grads),
            "param_norm": global_norm(params),
            "feature_std": jnp.mean(jnp.std(losses.l2_normalize(h.astype(jnp.float32)), axis=0))}


def compute_dtype(config):
    """The computation dtype of `config.dtype` (parameters stay float32)."""
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def backbone_from_config(config, dtype=None):
    """The backbone `config.model` describes (name, width, stem for ResNets, conv_impl)."""
    from jssl import models

    m = config.model
    overrides = {"num_filters": m.num_filters}
    if m.backbone.startswith("resnet"):
        overrides["stem"] = m.stem
    return models.build_backbone(m.backbone, dtype=compute_dtype(config) if dtype is None else dtype,
                                 conv_impl=m.get("conv_impl", "auto"), **overrides)


def eval_transform(config) -> dict:
    """Keywords of `augment.center_view` for evaluation-time features of this config: the
    data's image size and the first view's normalisation."""
    v = config.augment.view1
    return {"size": int(config.data.image_size), "mean": tuple(v.mean), "std": tuple(v.std)}


def classifier_update(model, tx, schedule, loss_fn, state: TrainState, x: jax.Array,
                      labels: jax.Array, *, accuracy_name: str) -> tuple[TrainState, dict]:
    """One optimizer step of a classification method (pretext puzzles, cluster pseudo-labels).

    `model.apply(variables, x, train=True)` returns (features h, logits); the loss is
    `loss_fn(logits, labels)`; BatchNorm statistics are updated from this batch. Metrics:
    loss, `accuracy_name` (top-1 on these labels), lr, grad_norm, param_norm, feature_std
    (the collapse monitor on normalised h)."""
    def objective(params):
        (h, logits), upd = model.apply({"params": params, "batch_stats": state.batch_stats},
                                       x, train=True, mutable=["batch_stats"])
        return loss_fn(logits, labels), (upd["batch_stats"], logits, h)

    (loss, (batch_stats, logits, h)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, schedule(state.step))
    metrics[accuracy_name] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics
