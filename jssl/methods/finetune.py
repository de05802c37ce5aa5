"""Full fine-tuning of an encoder on a labelled data set: MAE's evaluation protocol, and
the full-fine-tune arm of the FKT study.

The encoder comes from `config.model.init_from`: a jssl run's workdir (any method: its
latest checkpoint's backbone), or `torchvision:PATH` / `timm:PATH` weights; unset, the run
is supervised training from random initialisation (the baseline). A linear classifier on
the backbone's features is trained with it, every layer updated:

    L = CE(c(f(mix(aug(x)))), mix(smooth(y)))

one augmented view (`augment.view1`: random resized crop, flip, the config's jitter) per
labelled image, the head's input standardised by a BatchNorm without affine parameters
(`finetune.head_batchnorm`, MAE's linear-probe head: short runs on features whose spread is
small against their offset train the head at all), Mixup / CutMix of the batch
(`augment.mix_batch`, timm's batch mode), label smoothing (`augment.smooth_labels`),
stochastic depth on ViTs (`model.drop_path`), warm-up + cosine learning rate
(`config.optimizer`), and on ViTs layer-wise learning-rate decay: the update of a parameter
in layer l of L is scaled by decay^(L - l) (`ViT.layer_of`; MAE's `param_groups_lrd`; 0.65
for MAE's ViT-B). The training images are a seeded class-balanced `labelled_fraction` of the
train split (`subset_seed` fixes it across training seeds).

Evaluation is a pretraining run's (k-NN and linear probe of the fine-tuned backbone, the
random-init baseline: the starting encoder when `init_from` is set) plus the classifier's
own validation and test accuracy (`predict`). configs/finetune.py holds the presets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jssl import augment, models
from jssl.config import compute_dtype, config_group, eval_transform
from jssl.data import pipeline
from jssl.data.subsets import SubsetSource, labelled_split
from jssl.errors import ConfigError
from jssl.methods import puzzle
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    batch_view,
    check_labelled,
    check_view_sizes,
    dropout_key,
    init_state,
    load_init_from,
    method_of,
    refuse_unread,
    require_group,
    state_float_dtype,
    step_key,
    step_metrics,
    variables,
)
from jssl.optim import build_optimizer, scale_updates

# The model gets a "dropout" PRNG stream in training: model.drop_path works here.
STOCHASTIC_DEPTH = True
# The view's random resized crop may be cut on the host (`data.crop_on`).
HOST_CROPS = True

__all__ = [
    "finetune_config",
    "FinetuneModel",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "update",
    "predict",
    "layer_scales",
    "build",
    "validate",
]


def finetune_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.finetune` group (configs/finetune.py adds it). Defaults: label smoothing
    0.1, no Mixup / CutMix, no layer-wise decay, every labelled image."""
    return config_group(
        "finetune_config",
        dict(
            labelled_fraction=1.0,  # seeded class-balanced fraction of the train split
            subset_seed=0,  # the labelled subset's seed (fixed across training seeds)
            label_smoothing=0.1,
            mixup_alpha=0.0,  # > 0: Mixup with lam ~ Beta(alpha, alpha) (MAE: 0.8)
            cutmix_alpha=0.0,  # > 0: CutMix (MAE: 1.0)
            mix_prob=1.0,  # probability that a batch is mixed at all
            switch_prob=0.5,  # with both alphas > 0: probability of CutMix
            layer_decay=1.0,  # ViT layer-wise learning-rate decay (MAE ViT-B: 0.65); 1: off
            # BatchNorm without affine parameters between the features and the classifier
            # (MAE's linear-probe head): the head sees standardised features whatever
            # their scale and offset; False: the plain linear head of MAE's fine-tuning.
            head_batchnorm=True,
        ),
        overrides,
    )


class FinetuneModel(nn.Module):
    """Backbone and linear classifier: `__call__` gives the logits, `features` the
    backbone's output (what evaluation reads)."""

    backbone: nn.Module
    classifier: nn.Module
    head_batchnorm: bool = False

    def _head(self, h: jax.Array, train: bool) -> jax.Array:
        if self.head_batchnorm:
            h = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                use_bias=False,
                use_scale=False,
                name="head_norm",
            )(h)
        return self.classifier(h)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self._head(self.backbone(x, train=train), train)

    @nn.compact
    def logits_and_features(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = self.backbone(x, train=train)
        return self._head(h, train), h

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    require_group(config, "finetune", "jssl.methods.finetune.finetune_config")
    f = config.finetune
    if not 0.0 <= f.label_smoothing < 1.0:
        raise ConfigError(
            f"config.finetune.label_smoothing: must be in [0, 1), got {f.label_smoothing!r}"
        )
    for field in ("mixup_alpha", "cutmix_alpha"):
        if not f[field] >= 0:
            raise ConfigError(f"config.finetune.{field}: must be >= 0 (0 = off), got {f[field]!r}")
    for field in ("mix_prob", "switch_prob"):
        if not 0.0 <= f[field] <= 1.0:
            raise ConfigError(f"config.finetune.{field}: must be in [0, 1], got {f[field]!r}")
    if not 0.0 < f.layer_decay <= 1.0:
        raise ConfigError(
            f"config.finetune.layer_decay: must be in (0, 1] (1 = off), got {f.layer_decay!r}"
        )
    if f.layer_decay != 1.0:
        backbone = models.BACKBONES.get(config.model.backbone, (None,))[0]
        if not hasattr(backbone, "layer_of"):
            raise ConfigError(
                f"config.finetune.layer_decay: backbone {config.model.backbone!r} has no "
                "layers for layer-wise decay (ViTs have); set 1.0"
            )
    check_labelled(config, "finetune")
    refuse_unread(
        config,
        "finetune",
        {
            **puzzle.single_view_unread(config),
            "model.projector_hidden_dims": ((), "set () (a linear classifier, no projector)"),
            "model.projector_dim": (0, "set 0 (a linear classifier, no projector)"),
        },
    )
    check_view_sizes(config, ("view1",))


def layer_scales(backbone: nn.Module, decay: float):
    """`scale_updates`'s factor of a parameter path: decay^(L - l) for a backbone parameter
    of layer l (`backbone.layer_of`), 1 for the classifier (layer L = num_layers)."""
    if decay == 1.0:
        return None
    top = backbone.num_layers

    def scale(path: tuple) -> float:
        if path[0] != "backbone":
            return 1.0
        return float(decay ** (top - backbone.layer_of(path[1])))

    return scale


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of fine-tuning for one config (`setup(config, data)`)."""

    config: ml_collections.ConfigDict
    model: FinetuneModel
    num_classes: int
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    view: Mapping[str, Any]
    transform: Mapping[str, Any]
    loaded: tuple | None = None  # (params, batch_stats) of `model.init_from`'s backbone

    @property
    def drop_path(self) -> bool:
        return bool(self.config.model.get("drop_path", 0.0))


def setup(config: ml_collections.ConfigDict, data: DataInfo) -> Setup:
    validate(config)
    dtype = compute_dtype(config)
    backbone = models.backbone_from_config(config.model, dtype)
    model = FinetuneModel(
        backbone,
        models.Classifier(data.num_classes, dtype=dtype),
        head_batchnorm=bool(config.finetune.get("head_batchnorm", False)),
    )
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    scales = layer_scales(backbone, config.finetune.layer_decay)
    if scales is not None:
        tx = optax.chain(tx, scale_updates(scales))
    return Setup(
        config=config,
        model=model,
        num_classes=data.num_classes,
        tx=tx,
        schedule=schedule,
        view=config.augment.view1,
        transform=eval_transform(config),
        loaded=load_init_from(config),
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.config.data.image_size
    return init_state(
        s.model, s.tx, rng, jnp.zeros((2, size, size, 3), jnp.float32), backbone=s.loaded
    )


def make_inputs(s: Setup, state: TrainState, batch: dict) -> dict:
    """{"x": the augmented (and mixed) view, "targets": the smoothed (and mixed) soft
    labels (N, C), "labels": the integer labels, "lam": the batch's mixing ratio}."""
    f = s.config.finetune
    view_key, mix_key = jax.random.split(step_key(state))
    x = batch_view(view_key, batch, s.view, dtype=state_float_dtype(state))
    targets = augment.smooth_labels(batch["label"], s.num_classes, f.label_smoothing)
    x, targets, lam = augment.mix_batch(
        mix_key,
        x,
        targets,
        mixup_alpha=f.mixup_alpha,
        cutmix_alpha=f.cutmix_alpha,
        switch_prob=f.switch_prob,
        prob=f.mix_prob,
    )
    return {"x": x, "targets": targets, "labels": batch["label"], "lam": lam}


def update(s: Setup, state: TrainState, inputs: dict) -> tuple[TrainState, dict]:
    """One optimizer step on the soft-target cross-entropy, every layer trained."""
    rngs = {"dropout": dropout_key(state)} if s.drop_path else None

    def loss_fn(params):
        (logits, h), upd = s.model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            inputs["x"],
            train=True,
            mutable=["batch_stats"],
            rngs=rngs,
            method=FinetuneModel.logits_and_features,
        )
        loss = jnp.mean(optax.softmax_cross_entropy(logits, inputs["targets"]))
        return loss, (upd["batch_stats"], logits, h)

    (loss, (batch_stats, logits, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, s.schedule(state.step))
    metrics.update(
        train_accuracy=jnp.mean((jnp.argmax(logits, -1) == inputs["labels"]).astype(jnp.float32)),
        mix_lambda=inputs["lam"],
    )
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    ), metrics


def predict(s: Setup, state: TrainState, images: jax.Array) -> jax.Array:
    x = augment.center_view(images, **s.transform)
    return s.model.apply(variables(state), x, train=False).astype(jnp.float32)


def batches(s: Setup, source, mesh, cropper=None):
    """The labelled stream: `config.batch_size` per step from the seeded class-balanced
    fraction of the split, a function of (seed, step)."""
    f = s.config.finetune
    labelled, _ = labelled_split(source, f.labelled_fraction, f.subset_seed)
    return pipeline.TrainBatches(
        SubsetSource(source, labelled),
        batch_size=s.config.batch_size,
        seed=s.config.seed,
        mesh=mesh,
        cropper=cropper,
    )


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """Fine-tuning's pure functions for this config."""
    s = setup(config, data)
    return method_of(
        s,
        init=init,
        make_inputs=make_inputs,
        update=update,
        predict=predict,
        batches=batches,
        host_views=(s.view,),
    )
