"""Joint SSL + supervised optimisation through one backbone: Functional Knowledge Transfer
(Chhipa et al., ICIP 2023, arXiv 2304.01354; docs/methods.md section 2).

One shared backbone f, a projector g for a pretext loss of the zoo, a linear classifier c on
a clean (un-augmented: resized and centre-cropped) view of the labelled images:

    L = CE(c(f(x_clean)), y) + lambda * L_SSL(g(f(aug1(u))), g(f(aug2(u))))

one backward pass and one optimizer step per train step, nothing frozen. The labelled batch
(`config.joint.labelled_batch_size`) comes from a seeded, class-balanced
`config.joint.labelled_fraction` of the train split; the unlabelled batch
(`config.batch_size`) from the rest of it (the whole split when the fraction is 1).
`config.joint.ssl_on = "labelled"` puts the pretext on the labelled batch instead, the same
images as the cross-entropy (the paper's setting, with every label). `lambda = 0` is
supervised training alone. The pretext is any `pretrain.PRETEXTS` entry that
needs no method state (no momentum target, queue or prototypes); the paper's is SimCLR's
NT-Xent at temperature 0.5, and `config.loss.normalize=False` feeds raw projections as the
official code does. Evaluation adds the classifier's validation and test accuracy
(`predict`) to the frozen-feature k-NN and linear probe.
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
from jssl.methods import pretrain
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    check_labelled,
    check_view_sizes,
    init_state,
    load_init_from,
    make_views,
    method_of,
    refuse_unread,
    require_group,
    step_metrics,
    variables,
)
from jssl.optim import build_optimizer

__all__ = [
    "JointModel",
    "PRETEXTS",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "loss_terms",
    "update",
    "build",
    "joint_config",
    "validate",
]

PRETEXTS = {name: p for name, p in pretrain.PRETEXTS.items() if not p.needs}
SSL_ON = ("unlabelled", "labelled")  # config.joint.ssl_on


def joint_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.joint` group (configs/fkt.py adds it); defaults are the paper's."""
    return config_group(
        "joint_config",
        dict(
            ssl_weight=1.0,  # lambda
            labelled_fraction=1.0,  # 0.01, 0.1, 1.0: seeded class-balanced subset of train
            labelled_batch_size=64,  # global
            subset_seed=0,  # the labelled subset's seed (fixed across training seeds)
            # "unlabelled": the pretext on the unlabelled batch (the rest of the split);
            # "labelled": on the labelled batch, the same images as the cross-entropy (the
            # paper's setting, with every label)
            ssl_on="unlabelled",
        ),
        overrides,
    )


class JointModel(nn.Module):
    """Backbone, projector and classifier. `__call__` gives {"h", "z"} (the SSL branch),
    `classify` the logits of the classifier on the backbone's features."""

    backbone: nn.Module
    projector: nn.Module
    classifier: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> dict:
        h = self.backbone(x, train=train)
        return {"h": h, "z": self.projector(h, train=train)}

    def classify(self, x: jax.Array, train: bool) -> jax.Array:
        return self.classifier(self.backbone(x, train=train))

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)

    def init_all(self, x: jax.Array, train: bool) -> tuple[dict, jax.Array]:
        return self(x, train), self.classify(x, train)


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    require_group(config, "joint", "jssl.methods.joint.joint_config")
    name = config.loss.name
    if name not in pretrain.PRETEXTS:
        raise ConfigError(
            f"config.loss.name: unknown loss {name!r}; choose one of {', '.join(sorted(PRETEXTS))}"
        )
    if name not in PRETEXTS:
        raise ConfigError(
            f"config.loss.name: {name!r} needs "
            f"{', '.join(sorted(pretrain.PRETEXTS[name].needs))}, which the joint "
            "method does not keep; choose a stateless pretext (nt_xent, "
            "barlow_twins, vicreg, ...)"
        )
    refuse_unread(
        config,
        "joint",
        {
            "ema.base_momentum": (0.0, "set 0 (no momentum target)"),
            "queue_size": (0, "set 0 (no queue)"),
            "model.predictor_dim": (0, "set 0 (no predictor)"),
            "model.num_prototypes": (0, "set 0 (no prototypes)"),
            "augment.num_small_crops": (0, "set 0 (two views)"),
        },
    )
    j = config.joint
    if j.ssl_weight < 0:
        raise ConfigError(f"config.joint.ssl_weight: must be >= 0, got {j.ssl_weight!r}")
    b = j.labelled_batch_size
    if not (isinstance(b, int) and b > 0 and b % num_devices == 0):
        raise ConfigError(
            f"config.joint.labelled_batch_size: {b!r} must be a positive multiple "
            f"of the {num_devices} devices"
        )
    if j.get("ssl_on", "unlabelled") not in SSL_ON:
        raise ConfigError(
            f"config.joint.ssl_on: must be one of {', '.join(SSL_ON)}, got {j.ssl_on!r}"
        )
    check_labelled(config, "joint")
    check_view_sizes(config, ("view1", "view2"))


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of the joint method for one config (`setup(config, data)`)."""

    config: ml_collections.ConfigDict
    model: JointModel
    pretext: pretrain.Pretext
    loss_kw: Mapping[str, Any]
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    views: tuple
    transform: Mapping[str, Any]
    loaded: tuple | None  # (params, batch_stats) of `model.init_from`'s backbone

    @property
    def ssl_weight(self) -> float:
        return float(self.config.joint.ssl_weight)


def setup(config: ml_collections.ConfigDict, data: DataInfo) -> Setup:
    validate(config)
    ssl_model = pretrain.build_model(config)
    model = JointModel(
        backbone=ssl_model.backbone,
        projector=ssl_model.projector,
        classifier=models.Classifier(data.num_classes, dtype=compute_dtype(config)),
    )
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    return Setup(
        config=config,
        model=model,
        pretext=PRETEXTS[config.loss.name],
        loss_kw=pretrain.loss_kwargs(config),
        tx=tx,
        schedule=schedule,
        views=(config.augment.view1, config.augment.view2),
        transform=eval_transform(config),
        loaded=load_init_from(config),
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.config.data.image_size
    return init_state(
        s.model,
        s.tx,
        rng,
        jnp.zeros((2, size, size, 3), jnp.float32),
        backbone=s.loaded,
        method=JointModel.init_all,
    )


def make_inputs(s: Setup, state: TrainState, batch: dict) -> dict:
    """{"views": the two augmented views of the unlabelled batch, or of the labelled one
    (`joint.ssl_on`; [] when lambda = 0), "clean": the labelled images in the evaluation
    transform, "labels"}."""
    clean = augment.center_view(batch["labelled_image"], **s.transform)
    ssl_images = batch["labelled_image" if s.config.joint.get("ssl_on") == "labelled" else "image"]
    views = make_views(state, ssl_images, s.views) if s.ssl_weight else []
    return {"views": views, "clean": clean, "labels": batch["labelled_label"]}


def loss_terms(s: Setup, params, batch_stats, inputs: dict):
    """(CE, L_SSL, aux): the objective's two terms, separately differentiable in params."""
    online = []
    for x in inputs["views"]:
        out, upd = s.model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        batch_stats = upd["batch_stats"]
        online.append(out)
    # Without views (lambda = 0) the step is supervised training exactly: no SSL forward
    # touches the BatchNorm statistics.
    ssl = s.pretext.loss(online, None, {}, None, **s.loss_kw)[0] if online else jnp.zeros(())
    logits, upd = s.model.apply(
        {"params": params, "batch_stats": batch_stats},
        inputs["clean"],
        train=True,
        mutable=["batch_stats"],
        method=JointModel.classify,
    )
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, inputs["labels"]))
    return (
        ce,
        ssl,
        {
            "batch_stats": upd["batch_stats"],
            "logits": logits,
            "h": online[0]["h"] if online else logits,
        },
    )


def update(s: Setup, state: TrainState, inputs: dict) -> tuple[TrainState, dict]:
    """One optimizer step on CE + lambda * L_SSL: one backward pass, nothing frozen."""

    def loss_fn(params):
        ce, ssl, aux = loss_terms(s, params, state.batch_stats, inputs)
        return ce + s.ssl_weight * ssl, (aux["batch_stats"], ce, ssl, aux["logits"], aux["h"])

    (loss, (batch_stats, ce, ssl, logits, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, s.schedule(state.step))
    metrics.update(
        ce_loss=ce,
        ssl_loss=ssl,
        train_accuracy=jnp.mean((jnp.argmax(logits, -1) == inputs["labels"]).astype(jnp.float32)),
    )
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    ), metrics


def predict(s: Setup, state: TrainState, images: jax.Array) -> jax.Array:
    x = augment.center_view(images, **s.transform)
    return s.model.apply(variables(state), x, train=False, method=JointModel.classify).astype(
        jnp.float32
    )


def batches(s: Setup, source, mesh):
    """Per step: the unlabelled batch (the rest of the split) and the labelled batch (the
    seeded class-balanced fraction), each a function of (seed, step)."""
    j = s.config.joint
    validate(s.config, mesh.size)
    labelled, unlabelled = labelled_split(source, j.labelled_fraction, j.subset_seed)
    return pipeline.JointBatches(
        SubsetSource(source, unlabelled),
        SubsetSource(source, labelled),
        batch_size=s.config.batch_size,
        labelled_batch_size=j.labelled_batch_size,
        seed=s.config.seed,
        mesh=mesh,
    )


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """The joint method's pure functions for this config."""
    return method_of(
        setup(config, data),
        init=init,
        make_inputs=make_inputs,
        update=update,
        predict=predict,
        batches=batches,
    )
