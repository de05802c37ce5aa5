"""Pretraining with one pretext loss on augmented views (Barlow Twins, SimCLR, ...).

The method: backbone -> projector on each augmented view, the pretext loss of
`jssl.losses` on the projections, one optax update. A new two-view objective needs one
entry in `PRETEXTS` and a config file.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jssl import augment, losses, models
from jssl.methods.common import DataInfo, Method, TrainState, global_norm
from jssl.optim import build_optimizer

__all__ = ["SSLModel", "PRETEXTS", "build", "build_parts", "build_model"]


def _barlow_twins(projections: Sequence[jax.Array], **kw) -> jax.Array:
    return losses.barlow_twins(projections[0], projections[1], **kw)


def _nt_xent(projections: Sequence[jax.Array], **kw) -> jax.Array:
    return losses.nt_xent(*projections, **kw)


# loss name -> fn(list of view projections, **config.loss fields except name) -> scalar
PRETEXTS: dict[str, Callable[..., jax.Array]] = {
    "barlow_twins": _barlow_twins,
    "nt_xent": _nt_xent,
}


class SSLModel(nn.Module):
    """Backbone and projector; `features` gives the backbone output alone (for evaluation)."""

    backbone: nn.Module
    projector: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = self.backbone(x, train=train)
        return h, self.projector(h, train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def build_model(config: ml_collections.ConfigDict) -> SSLModel:
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    overrides = {"num_filters": config.model.num_filters}
    if config.model.backbone.startswith("resnet"):
        overrides["stem"] = config.model.stem
    backbone = models.build_backbone(config.model.backbone, dtype=dtype,
                                     conv_impl=config.model.conv_impl, **overrides)
    projector = models.Projector(hidden_dims=tuple(config.model.projector_hidden_dims),
                                 out_dim=config.model.projector_dim,
                                 use_bn=config.model.projector_bn, dtype=dtype)
    return SSLModel(backbone=backbone, projector=projector)


def loss_kwargs(config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in config.loss.to_dict().items() if k != "name"}


def build_parts(config: ml_collections.ConfigDict, data: DataInfo):
    """(Method, update(state, views), make_views(state, images)): the step in its two parts,
    so that benchmarks can time the update on device-resident views alone."""
    model = build_model(config)
    pretext = functools.partial(PRETEXTS[config.loss.name], **loss_kwargs(config))
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    views = [config.augment.view1, config.augment.view2]
    size = config.data.image_size
    mean, std = tuple(views[0].mean), tuple(views[0].std)

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        variables = model.init(init_rng, dummy, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=state_rng)

    def update(state: TrainState, inputs: Sequence[jax.Array]) -> tuple[TrainState, dict]:
        """One optimizer step on already augmented views (float32, normalised)."""

        def loss_fn(params):
            batch_stats = state.batch_stats
            features, projections = [], []
            # One forward pass per view, each with its own BatchNorm batch statistics
            # (as the peers do; a single pass over both views measured slower on CPU too).
            for x in inputs:
                (h, z), updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                              train=True, mutable=["batch_stats"])
                batch_stats = updates["batch_stats"]
                features.append(h)
                projections.append(z.astype(jnp.float32))
            loss = pretext(projections)
            return loss, (batch_stats, features[0])

        (loss, (batch_stats, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "lr": schedule(state.step),
            "grad_norm": global_norm(grads),
            "param_norm": global_norm(params),
            # Mean per-dimension std of L2-normalised features: ~1/sqrt(F) when healthy,
            # 0 when the representation has collapsed.
            "feature_std": jnp.mean(jnp.std(losses.l2_normalize(h.astype(jnp.float32)), axis=0)),
        }
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    def make_views(state: TrainState, images: jax.Array) -> list[jax.Array]:
        """The augmented views of a uint8 batch; keys depend on (state.rng, state.step) only."""
        rng = jax.random.fold_in(state.rng, state.step)
        keys = jax.random.split(rng, len(views))
        return [augment.augment_view(k, images, v) for k, v in zip(keys, views)]

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(state, make_views(state, batch["image"]))

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        h = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                        train=False, method=SSLModel.features)
        return h.astype(jnp.float32)

    def calibrate(state: TrainState, images: jax.Array) -> TrainState:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        _, updates = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                                 train=True, mutable=["batch_stats"])
        return state.replace(batch_stats=updates["batch_stats"])

    method = Method(init=init, train_step=train_step, embed=embed, calibrate=calibrate)
    return method, update, make_views


def build(config: ml_collections.ConfigDict, data: DataInfo) -> Method:
    """The pretrain method's pure functions for this config."""
    return build_parts(config, data)[0]
