"""MAE (He et al. 2022): masked-image modelling on a ViT.

One augmented view per image (the paper: random resized crop and horizontal flip only); a
random 75% of its patches is removed (`losses.random_masking`, a pure function of the
step's key); the ViT encoder sees the visible patches only; a small decoder
(`models.MAEDecoder`, 8 blocks 512 wide by default) reconstructs every patch from them and
the mask token; the loss is the mean squared error on the removed patches, against
per-patch normalised pixels (`losses.mae`, `norm_pix_loss`). The encoder's features
(its pooled output on the whole image) are what evaluation reads, as for every method.

Config: `config.mae` (`mae_config`): mask_ratio, norm_pix_loss, decoder_width,
decoder_depth, decoder_heads. The backbone must be a ViT with `model.pool="token"` (the
encoder's final norm over its tokens). configs/mae.py holds the presets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jssl import losses, models
from jssl.config import compute_dtype, config_group, eval_transform
from jssl.errors import ConfigError
from jssl.methods import puzzle
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    batch_view,
    check_view_sizes,
    dropout_key,
    init_state,
    load_init_from,
    method_of,
    refuse_unread,
    require_group,
    step_key,
    step_metrics,
)
from jssl.optim import build_optimizer

# The model gets a "dropout" PRNG stream in training: model.drop_path works here.
STOCHASTIC_DEPTH = True
# The view's random resized crop may be cut on the host (`data.crop_on`).
HOST_CROPS = True

__all__ = ["mae_config", "MAEModel", "Setup", "setup", "init", "make_inputs", "update", "build"]


def mae_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.mae` group (configs/mae.py adds it); defaults are the paper's."""
    return config_group(
        "mae_config",
        dict(
            mask_ratio=0.75,
            norm_pix_loss=True,
            decoder_width=512,
            decoder_depth=8,
            decoder_heads=16,
        ),
        overrides,
    )


class MAEModel(nn.Module):
    """The ViT encoder (`backbone`) and the decoder: (images, ids_keep, ids_restore) ->
    (reconstructions (N, L, p * p * C), the class token's features (N, D))."""

    backbone: nn.Module
    decoder: nn.Module

    def __call__(self, x, ids_keep, ids_restore, train: bool):
        p = self.backbone.patch_size
        tokens = self.backbone(x, train=train, ids_keep=ids_keep, return_tokens=True)
        grid = (x.shape[1] // p, x.shape[2] // p)
        return self.decoder(tokens, ids_restore, grid, train), tokens[:, 0]

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def validate(config: ml_collections.ConfigDict) -> None:
    require_group(config, "mae", "jssl.methods.mae.mae_config")
    m = config.mae
    cls = models.BACKBONES.get(config.model.backbone, (None,))[0]
    if cls is not models.ViT:
        raise ConfigError(
            f"config.model.backbone: MAE masks patches of a ViT; got {config.model.backbone!r}, "
            "choose one of "
            + ", ".join(n for n, (c, _) in models.BACKBONES.items() if c is models.ViT)
        )
    if config.model.pool != "token":
        raise ConfigError(
            "config.model.pool: MAE's encoder normalises all its tokens (a class token); "
            "set 'token'"
        )
    if not 0.0 <= m.mask_ratio < 1.0:
        raise ConfigError(f"config.mae.mask_ratio: must be in [0, 1), got {m.mask_ratio!r}")
    if m.decoder_width % m.decoder_heads or m.decoder_width % 4:
        raise ConfigError(
            f"config.mae.decoder_width: {m.decoder_width} must be divisible by decoder_heads "
            f"({m.decoder_heads}) and by 4 (sine-cosine positions)"
        )
    refuse_unread(
        config,
        "mae",
        {
            **puzzle.single_view_unread(config),
            "model.projector_hidden_dims": ((), "set () (MAE has a decoder, no projector)"),
            "model.projector_dim": (0, "set 0 (MAE has a decoder, no projector)"),
        },
    )
    check_view_sizes(config, ("view1",))


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of MAE for one config (`setup(config)`)."""

    config: ml_collections.ConfigDict
    model: MAEModel
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    view: Mapping[str, Any]
    transform: Mapping[str, Any]
    loaded: tuple | None = None  # (params, batch_stats) of `model.init_from`'s backbone

    @property
    def patch_size(self) -> int:
        return self.model.backbone.patch_size


def setup(config: ml_collections.ConfigDict) -> Setup:
    validate(config)
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    dtype = compute_dtype(config)
    backbone = models.backbone_from_config(config.model, dtype)
    m = config.mae
    decoder = models.MAEDecoder(
        patch_dim=backbone.patch_size**2 * 3,
        width=m.decoder_width,
        depth=m.decoder_depth,
        num_heads=m.decoder_heads,
        dtype=dtype,
    )
    return Setup(
        config=config,
        model=MAEModel(backbone=backbone, decoder=decoder),
        tx=tx,
        schedule=schedule,
        view=config.augment.view1,
        transform=eval_transform(config),
        loaded=load_init_from(config),
    )


def _num_patches(s: Setup, size: int) -> int:
    return (size // s.patch_size) ** 2


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.view.crop_size
    ids_keep, _, ids_restore = losses.random_masking(
        jax.random.PRNGKey(0), 2, _num_patches(s, size), s.config.mae.mask_ratio
    )
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    return init_state(s.model, s.tx, rng, x, ids_keep, ids_restore, backbone=s.loaded)


def make_inputs(s: Setup, state: TrainState, batch: dict) -> dict:
    """{"x": the augmented view (normalised), "ids_keep", "mask", "ids_restore"}: the view
    and the mask from the step's key (one mask per example)."""
    view_key, mask_key = jax.random.split(step_key(state))
    x = batch_view(view_key, batch, s.view)
    ids_keep, mask, ids_restore = losses.random_masking(
        mask_key, x.shape[0], _num_patches(s, x.shape[1]), s.config.mae.mask_ratio
    )
    return {"x": x, "ids_keep": ids_keep, "mask": mask, "ids_restore": ids_restore}


def update(s: Setup, state: TrainState, inputs: dict) -> tuple[TrainState, dict]:
    """One AdamW (or the config's optimizer) step on the MAE loss; the target is the
    patchified view the encoder saw (the official code's)."""
    target = losses.patchify(inputs["x"], s.patch_size)
    dropout = dropout_key(state)

    def loss_fn(params):
        pred, h = s.model.apply(
            {"params": params},
            inputs["x"],
            inputs["ids_keep"],
            inputs["ids_restore"],
            train=True,
            rngs={"dropout": dropout},
        )
        loss = losses.mae(pred, target, inputs["mask"], norm_pix_loss=s.config.mae.norm_pix_loss)
        return loss, h

    (loss, h), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, s.schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """MAE's pure functions for this config."""
    s = setup(config)
    return method_of(s, init=init, make_inputs=make_inputs, update=update, host_views=(s.view,))
