"""Optimizers and learning-rate schedules from the config (optax only).

The recipes follow solo-learn: the base learning rate is given for a batch of 256 and
scaled linearly with the global batch; LARS (You et al. 2017) with biases and
normalisation parameters excluded from weight decay and from the trust-ratio adaptation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

__all__ = [
    "learning_rate_schedule",
    "weight_decay_schedule",
    "build_optimizer",
    "decay_mask",
    "scale_updates",
]


def decay_mask(params):
    """True for weights (ndim > 1: conv and dense kernels), False for biases and BN params."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(
    opt: ml_collections.ConfigDict, *, total_steps: int, batch_size: int
) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to 0 (or constant) over `total_steps`."""
    peak = opt.lr * (batch_size / 256 if opt.scale_lr_with_batch else 1.0)
    if opt.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(1, total_steps - opt.warmup_steps))
    if opt.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, opt.warmup_steps)
    return optax.join_schedules([warmup, after], [opt.warmup_steps])


def weight_decay_schedule(
    opt: ml_collections.ConfigDict, *, total_steps: int
) -> float | optax.Schedule:
    """`opt.weight_decay`, or with `opt.final_weight_decay` set, a cosine from it to that over
    `total_steps` (DINO's `cosine_scheduler(weight_decay, weight_decay_end)`):
    wd(k) = final + (wd - final) (1 + cos(pi k / K)) / 2."""
    final = opt.get("final_weight_decay", None)
    if final is None:
        return opt.weight_decay
    start = float(opt.weight_decay)

    def schedule(step):
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
        return final + (start - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return schedule


def build_optimizer(
    opt: ml_collections.ConfigDict, *, total_steps: int, batch_size: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation named by `opt.name`, and its schedule (for logging)."""
    schedule = learning_rate_schedule(opt, total_steps=total_steps, batch_size=batch_size)
    mask = decay_mask if opt.exclude_bias_and_norm else True
    wd = weight_decay_schedule(opt, total_steps=total_steps)
    if opt.name == "lars":
        tx = optax.lars(
            schedule,
            weight_decay=opt.weight_decay,
            weight_decay_mask=mask,
            trust_coefficient=opt.trust_coefficient,
            trust_ratio_mask=mask,
            momentum=opt.momentum,
        )
    elif opt.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(wd, mask),
            optax.sgd(schedule, momentum=opt.momentum),
        )
    elif opt.name == "adamw":
        tx = optax.adamw(schedule, b2=opt.get("b2", 0.999), weight_decay=wd, mask=mask)
    else:
        raise ValueError(
            f"config.optimizer.name: unknown optimizer {opt.name!r}; choose lars, sgd or adamw"
        )
    if opt.get("clip_grad_norm", 0.0):
        # Clip before everything else (DINO's clip_grad; solo-learn clips the raw gradients).
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_grad_norm), tx)
    return tx, schedule


def scale_updates(scales) -> optax.GradientTransformation:
    """Multiply each update by its parameter's constant factor: `scales(path) -> float`
    from the parameter's key path (a tuple of names). After an optimizer whose step is
    lr x (its direction + decoupled weight decay), this is a per-parameter learning rate:
    layer-wise learning-rate decay (`jssl.methods.finetune`)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * scales(tuple(getattr(k, "key", str(k)) for k in path)), updates
        )
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
