"""Pretraining with one pretext loss on augmented views: the embedding zoo.

One method for every objective that compares embeddings of augmented views: Barlow Twins,
SimCLR, SupCon, DCL, VICReg, W-MSE (symmetric), BYOL, MoCo v3 (momentum target and
predictor), SimSiam (predictor, no target), MoCo v2 (momentum target and a queue), NNCLR
(predictor and a support queue), SwAV (prototypes, multi-crop) and DINO (momentum teacher,
centre, multi-crop). The network is

    backbone -> projector -> [predictor]   (online, trained)
                          -> [prototypes]
    EMA copy of the same  (target / teacher, config.ema, no gradient)

and the loss is a pure function of `jssl.losses`. Method state that is not a parameter (the
target network, a queue, the DINO centre) lives in `TrainState.extras`, so it is sharded,
donated and checkpointed with everything else. A new embedding objective is one loss in
`jssl.losses`, one entry in `PRETEXTS` and a config file (docs/adding_a_method.md).

The step's pieces are top-level pure functions of a `Setup` (the static parts built from
the config by `setup`): `init`, `make_inputs` (the augmented crops) and `update` (one
optimizer step on them), which tests and benchmarks call directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jssl import losses, models
from jssl.config import compute_dtype, eval_transform
from jssl.errors import ConfigError
from jssl.methods.common import (
    ONLINE_PROBE_KEY,
    DataInfo,
    Method,
    TrainState,
    batch_views,
    check_view_sizes,
    dropout_key,
    embed_features,
    init_state,
    load_init_from,
    method_of,
    online_probe_init,
    online_probe_logits,
    online_probe_tx,
    online_probe_update,
    step_metrics,
)
from jssl.optim import build_optimizer

# `model.freeze_patch_embed` (a ViT's patch embedding kept as initialised) is honoured here.
FREEZE_PATCH_EMBED = True
# The online network gets a "dropout" PRNG stream: `model.drop_path` (a ViT's stochastic
# depth) works here; the momentum target runs without it (DINO's teacher, MoCo v3's key
# encoder).
STOCHASTIC_DEPTH = True
# `config.online_probe` (a linear classifier on the stop-gradient features of the two large
# crops, its own optimizer) is trained here when the data has labels.
ONLINE_PROBE = True
# Every view's random resized crop may be cut on the host (`data.crop_on`, images of
# varying size): batch["crops"] then holds one array per entry of `Setup.views`.
HOST_CROPS = True

__all__ = [
    "SSLModel",
    "Pretext",
    "PRETEXTS",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "update",
    "build",
    "build_model",
    "probe",
    "ema_momentum",
    "validate",
    "loss_kwargs",
]


@dataclasses.dataclass(frozen=True)
class Pretext:
    """How one objective turns the forward outputs into a loss.

    `loss(online, target, extras, labels, **kw) -> (loss, new_extras)`: `online` is a list
    over crops (large first) of dicts with "z" (projection), and "p" (predictor) / "s"
    (prototype scores) when the model has them; `target` the same for the large crops from
    the momentum network (None without one); `kw` the config.loss fields except `name`.
    `needs` lists what the model must have ("predictor", "prototypes", "target", "queue").
    `extras(config, key) -> dict` is the objective's initial state (a queue, a centre);
    `validate(config)` raises ConfigError for settings the objective cannot run.
    `at_step(kw, step) -> kw` gives the loss keywords of one step from the config's (the
    objective's own schedules, e.g. DINO's teacher temperature warm-up); None: constant.
    """

    loss: Callable[..., tuple[jax.Array, dict]]
    needs: frozenset = frozenset()
    extras: Callable[[ml_collections.ConfigDict, jax.Array], dict] | None = None
    validate: Callable[[ml_collections.ConfigDict], None] | None = None
    at_step: Callable[[Mapping[str, Any], jax.Array], dict] | None = None


def _views_2(online):
    if len(online) < 2:
        raise ValueError("this objective needs two views")
    return online[0], online[1]


def _symmetric(fn):
    """A loss of the two large views' projections (extras unchanged)."""

    def loss(online, target, extras, labels, **kw):
        a, b = _views_2(online)
        return fn(a["z"], b["z"], **kw), {}

    return loss


def _nt_xent(online, target, extras, labels, **kw):
    return losses.nt_xent(*[o["z"] for o in online], **kw), {}


def _supcon(online, target, extras, labels, **kw):
    return losses.nt_xent(*[o["z"] for o in online], labels=labels, **kw), {}


def _byol(online, target, extras, labels, **kw):
    # Each view's prediction regresses the target projection of the other view; the two
    # directions are summed (BYOL's symmetrised loss, as solo-learn).
    return (
        losses.byol(online[0]["p"], target[1]["z"], **kw)
        + losses.byol(online[1]["p"], target[0]["z"], **kw)
    ), {}


def _simsiam(online, target, extras, labels, **kw):
    # L = D(p1, z2) / 2 + D(p2, z1) / 2 (Chen & He 2021, eq. 2); stop-gradient inside.
    return 0.5 * (
        losses.simsiam(online[0]["p"], online[1]["z"], **kw)
        + losses.simsiam(online[1]["p"], online[0]["z"], **kw)
    ), {}


def _mocov3(online, target, extras, labels, **kw):
    # ctr(q1, k2) + ctr(q2, k1) (Chen et al. 2021, Algorithm 1).
    return (
        losses.mocov3(online[0]["p"], target[1]["z"], **kw)
        + losses.mocov3(online[1]["p"], target[0]["z"], **kw)
    ), {}


# --- Queues (MoCo's negatives, NNCLR's support set) ---------------------------------------


def _queue_extras(config, key) -> dict:
    """A queue of `queue_size` random unit rows of the projection width, and its pointer."""
    queue = jax.random.normal(key, (config.queue_size, config.model.projector_dim))
    return {"queue": losses.l2_normalize(queue), "queue_ptr": jnp.zeros((), jnp.int32)}


def _enqueue(extras: dict, keys: jax.Array) -> dict:
    """The queue with `keys` (L2-normalised, no gradient) written over its oldest rows."""
    queue, ptr = extras["queue"], extras["queue_ptr"]
    keys = jax.lax.stop_gradient(losses.l2_normalize(keys)).astype(queue.dtype)
    return {
        "queue": jax.lax.dynamic_update_slice_in_dim(queue, keys, ptr, axis=0),
        "queue_ptr": (ptr + keys.shape[0]) % queue.shape[0],
    }


def _queue_rule(per_step: int, what: str):
    """validate hook: the queue holds a whole number of steps' keys (each step writes
    `per_step` x batch_size rows at the pointer, which must never wrap mid-write)."""

    def check(config):
        rows = per_step * config.batch_size
        if config.queue_size % rows:
            raise ConfigError(
                f"config.queue_size: {config.queue_size} is not a multiple of "
                f"{rows} ({what}); use {rows * max(1, config.queue_size // rows)}"
            )

    return check


def _mocov2(online, target, extras, labels, **kw):
    # Symmetrised InfoNCE against one queue of past keys (solo-learn's mocov2plus is
    # symmetric too); the keys of both views are enqueued afterwards, oldest overwritten.
    queue = extras["queue"]
    loss = 0.5 * (
        losses.moco(online[0]["z"], target[1]["z"], queue, **kw)
        + losses.moco(online[1]["z"], target[0]["z"], queue, **kw)
    )
    keys = jnp.concatenate([target[0]["z"], target[1]["z"]], axis=0)
    return loss, _enqueue(extras, keys)


def _nnclr(online, target, extras, labels, **kw):
    # Each view's nearest neighbour in the support queue is the positive of the other view's
    # prediction, symmetrised (Dwibedi et al. 2021; solo-learn). The first view's
    # projections are enqueued afterwards (solo-learn enqueues z1 only).
    support = extras["queue"]
    nn1 = losses.nearest_neighbour(online[0]["z"], support)
    nn2 = losses.nearest_neighbour(online[1]["z"], support)
    loss = 0.5 * (losses.nnclr(online[1]["p"], nn1, **kw) + losses.nnclr(online[0]["p"], nn2, **kw))
    return loss, _enqueue(extras, online[0]["z"])


def _swav(online, target, extras, labels, **kw):
    return losses.swav([o["s"] for o in online], **kw), {}


def _dino(online, target, extras, labels, *, center_momentum: float = 0.9, **kw):
    teacher = [t["s"] for t in target]
    loss = losses.dino([o["s"] for o in online], teacher, extras["center"], **kw)
    center = losses.dino_center(extras["center"], teacher, momentum=center_momentum)
    return loss, {"center": center}


def _dino_extras(config, key) -> dict:
    return {"center": jnp.zeros((1, config.model.num_prototypes), jnp.float32)}


def _dino_at_step(kw, step) -> dict:
    """The teacher temperature of this step (`loss.warmup_teacher_temp` ->
    `loss.teacher_temp` over `loss.warmup_teacher_temp_steps`, `losses.dino_teacher_temp`)."""
    kw = dict(kw)
    start = kw.pop("warmup_teacher_temp", None)
    steps = kw.pop("warmup_teacher_temp_steps", 0)
    if steps:
        kw["teacher_temp"] = losses.dino_teacher_temp(
            step, teacher_temp=kw["teacher_temp"], warmup_teacher_temp=start, warmup_steps=steps
        )
    return kw


def _dino_rules(config) -> None:
    loss = config.loss
    steps = loss.get("warmup_teacher_temp_steps", 0)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ConfigError(
            f"config.loss.warmup_teacher_temp_steps: must be an integer >= 0, got {steps!r}"
        )
    if steps and not loss.get("warmup_teacher_temp", 0) > 0:
        raise ConfigError(
            "config.loss.warmup_teacher_temp: the teacher temperature warm-up needs a start "
            f"temperature > 0, got {loss.get('warmup_teacher_temp')!r}; e.g. 0.04"
        )


# loss name (config.loss.name) -> Pretext
PRETEXTS: dict[str, Pretext] = {
    "barlow_twins": Pretext(_symmetric(losses.barlow_twins)),
    "nt_xent": Pretext(_nt_xent),
    "supcon": Pretext(_supcon),
    "dcl": Pretext(_symmetric(losses.dcl)),
    "vicreg": Pretext(_symmetric(losses.vicreg)),
    "wmse": Pretext(_symmetric(losses.wmse)),
    "byol": Pretext(_byol, frozenset({"predictor", "target"})),
    "simsiam": Pretext(_simsiam, frozenset({"predictor"})),
    "mocov3": Pretext(_mocov3, frozenset({"predictor", "target"})),
    "moco": Pretext(
        _mocov2,
        frozenset({"target", "queue"}),
        _queue_extras,
        _queue_rule(2, "each step enqueues the keys of both views"),
    ),
    "nnclr": Pretext(
        _nnclr,
        frozenset({"predictor", "queue"}),
        _queue_extras,
        _queue_rule(1, "each step enqueues the first view's projections"),
    ),
    "swav": Pretext(_swav, frozenset({"prototypes"})),
    "dino": Pretext(
        _dino, frozenset({"prototypes", "target"}), _dino_extras, _dino_rules, _dino_at_step
    ),
}


class SSLModel(nn.Module):
    """Backbone, projector and the optional predictor and prototypes.

    `__call__` returns a dict: "h" backbone features, "z" projection, "p" prediction (with a
    predictor, unless `predict=False`), "s" prototype scores (with prototypes). `features`
    gives the backbone output alone (for evaluation).
    """

    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None
    prototypes: nn.Module | None = None

    def __call__(self, x: jax.Array, train: bool, predict: bool = True) -> dict:
        h = self.backbone(x, train=train)
        out = {"h": h, "z": self.projector(h, train=train)}
        if self.predictor is not None and predict:
            out["p"] = self.predictor(out["z"], train=train)
        if self.prototypes is not None:
            out["s"] = self.prototypes(out["z"])
        return out

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def build_model(config: ml_collections.ConfigDict) -> SSLModel:
    dtype = compute_dtype(config)
    m = config.model
    projector = models.Projector(
        hidden_dims=tuple(m.projector_hidden_dims),
        out_dim=m.projector_dim,
        use_bn=m.projector_bn,
        last_bn=m.projector_last_bn,
        activation=m.projector_activation,
        dtype=dtype,
    )
    predictor = None
    if m.predictor_dim:
        predictor = models.Projector(
            hidden_dims=tuple(m.predictor_hidden_dims),
            out_dim=m.predictor_dim,
            use_bn=True,
            dtype=dtype,
        )
    prototypes = None
    if m.num_prototypes:
        prototypes = models.Prototypes(m.num_prototypes, normalize_weights=m.normalize_prototypes)
    return SSLModel(
        backbone=models.backbone_from_config(m, dtype),
        projector=projector,
        predictor=predictor,
        prototypes=prototypes,
    )


def ema_momentum(step: jax.Array, total_steps: int, base: float, final: float) -> jax.Array:
    """BYOL's target decay: tau = final - (final - base) (cos(pi k / K) + 1) / 2."""
    progress = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
    return final - (final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def loss_kwargs(config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in config.loss.to_dict().items() if k != "name"}


_HAS = {
    "predictor": ("model.predictor_dim", lambda c: c.model.predictor_dim > 0),
    "prototypes": ("model.num_prototypes", lambda c: c.model.num_prototypes > 0),
    "target": ("ema.base_momentum", lambda c: c.ema.base_momentum > 0),
    "queue": ("queue_size", lambda c: c.queue_size > 0),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """The pretext exists, the model has what it needs, and the pretext's own rules hold."""
    name = config.loss.name
    if name not in PRETEXTS:
        raise ConfigError(
            f"config.loss.name: unknown loss {name!r}; choose one of {', '.join(sorted(PRETEXTS))}"
        )
    pretext = PRETEXTS[name]
    for need in sorted(pretext.needs):
        field, has = _HAS[need]
        if not has(config):
            raise ConfigError(f"config.{field}: loss {name!r} needs a {need}; set {field} > 0")
    for need, (field, has) in _HAS.items():
        if need not in pretext.needs and has(config) and need != "predictor":
            # A predictor is optional for any objective (it only adds "p"); the rest would be
            # built and never used.
            raise ConfigError(f"config.{field}: loss {name!r} has no {need}; set it to 0")
    if pretext.validate is not None:
        pretext.validate(config)
    small = ("small_view",) if config.augment.num_small_crops else ()
    check_view_sizes(config, ("view1", "view2", *small))


def _normalize_prototypes(params):
    """Unit-norm prototype columns (SwAV normalises them before every step)."""
    if "prototypes" not in params:
        return params
    w = losses.l2_normalize(params["prototypes"]["kernel"], axis=0)
    return {**params, "prototypes": {**params["prototypes"], "kernel": w}}


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of the pretrain method for one config (`setup(config)`)."""

    config: ml_collections.ConfigDict
    model: SSLModel
    pretext: Pretext
    loss_kw: Mapping[str, Any]
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    views: tuple  # augmentation views, large crops first
    transform: Mapping[str, Any]  # the evaluation transform (`center_view` keywords)
    loaded: tuple | None = None  # (params, batch_stats) of `model.init_from`'s backbone
    target_model: SSLModel | None = None  # the momentum network: `model` without drop path
    # The online linear probe's classes and optimizer; 0 / None: no probe (switched off, or
    # `setup` was given no class count).
    num_classes: int = 0
    probe_tx: optax.GradientTransformation | None = None

    @property
    def probe(self) -> bool:
        return self.probe_tx is not None

    @property
    def drop_path(self) -> bool:
        return bool(self.config.model.get("drop_path", 0.0))

    @property
    def has_target(self) -> bool:
        return self.config.ema.base_momentum > 0

    @property
    def renormalize(self) -> bool:
        m = self.config.model
        return m.num_prototypes > 0 and not m.normalize_prototypes


def setup(config: ml_collections.ConfigDict, num_classes: int = 0) -> Setup:
    """The static parts of `config`; `num_classes` > 0 (the data's classes) with
    `config.online_probe.enabled` adds the online linear probe."""
    validate(config)
    probe = bool(config.online_probe.enabled) and num_classes > 0
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    a = config.augment
    views = (a.view1, a.view2) + (a.small_view,) * a.num_small_crops
    target_model = None
    if config.ema.base_momentum > 0:
        no_drop = ml_collections.ConfigDict(config.to_dict())
        no_drop.model.drop_path = 0.0
        target_model = build_model(no_drop)
    return Setup(
        config=config,
        model=build_model(config),
        target_model=target_model,
        pretext=PRETEXTS[config.loss.name],
        loss_kw=loss_kwargs(config),
        tx=tx,
        schedule=schedule,
        views=views,
        transform=eval_transform(config),
        loaded=load_init_from(config),
        num_classes=int(num_classes) if probe else 0,
        probe_tx=online_probe_tx(config) if probe else None,
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.config.data.image_size

    def extras(params, batch_stats, keys):
        out: dict[str, Any] = {}
        if s.has_target:  # the target starts as a copy of the online network
            out["target"] = {"params": params, "batch_stats": batch_stats}
        if s.pretext.extras is not None:
            out.update(s.pretext.extras(s.config, keys[0]))
        if s.probe:
            out[ONLINE_PROBE_KEY] = online_probe_init(
                s.probe_tx, s.model.backbone.num_features, s.num_classes
            )
        return out

    return init_state(
        s.model,
        s.tx,
        rng,
        jnp.zeros((2, size, size, 3), jnp.float32),
        num_keys=1,
        extras=extras,
        params=_normalize_prototypes if s.renormalize else None,
        backbone=s.loaded,
    )


def make_inputs(s: Setup, state: TrainState, batch: dict) -> dict:
    """{"views": the augmented crops (float32, normalised; large first), "labels"}."""
    return {"views": batch_views(state, batch, s.views), "labels": batch.get("label")}


def update(s: Setup, state: TrainState, inputs: dict) -> tuple[TrainState, dict]:
    """One optimizer step on already augmented crops (`make_inputs`)."""
    crops, labels = inputs["views"], inputs.get("labels")
    c = s.config
    extras = state.extras
    loss_kw = s.loss_kw if s.pretext.at_step is None else s.pretext.at_step(s.loss_kw, state.step)
    dropout = dropout_key(state) if s.drop_path else None
    target = None
    target_stats = None
    if s.has_target:
        # The momentum network sees the large crops only, in train mode (its BatchNorm
        # uses batch statistics, as the online one), and never gets a gradient.
        t_vars = extras["target"]
        target, target_stats = [], t_vars["batch_stats"]
        for x in crops[:2]:
            out, upd = s.target_model.apply(
                {"params": t_vars["params"], "batch_stats": target_stats},
                x,
                train=True,
                predict=False,
                mutable=["batch_stats"],
            )
            target_stats = upd["batch_stats"]
            target.append(jax.tree_util.tree_map(jax.lax.stop_gradient, out))

    def loss_fn(params):
        batch_stats = state.batch_stats
        online = []
        # One forward pass per crop, each with its own BatchNorm batch statistics
        # (as the peers do; a single pass over both views measured slower on CPU too).
        for i, x in enumerate(crops):
            rngs = {"dropout": jax.random.fold_in(dropout, i)} if s.drop_path else None
            out, upd = s.model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs=rngs,
            )
            batch_stats = upd["batch_stats"]
            online.append(out)
        loss, new_extras = s.pretext.loss(online, target, extras, labels, **loss_kw)
        return loss, (batch_stats, new_extras, [o["h"] for o in online[:2]])

    (loss, (batch_stats, new_extras, hs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    h = hs[0]
    freeze_steps = c.model.freeze_prototypes_steps
    keep = None
    if freeze_steps and "prototypes" in grads:
        # SwAV freezes the prototypes for the first epochs (freeze_prototypes_epochs), DINO
        # its last layer for the first one (freeze_last_layer): the peers drop the gradient
        # (p.grad = None), so the optimizer skips the layer, weight decay included.
        keep = (state.step >= freeze_steps).astype(jnp.float32)
        grads = {
            **grads,
            "prototypes": jax.tree_util.tree_map(lambda g: g * keep, grads["prototypes"]),
        }
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    if keep is not None:
        frozen = jax.tree_util.tree_map(lambda u: u * keep, updates["prototypes"])
        updates = {**updates, "prototypes": frozen}
    if c.model.get("freeze_patch_embed", False):
        # MoCo v3 keeps the random patch projection: no update at all (weight decay too).
        backbone = {
            k: jax.tree_util.tree_map(jnp.zeros_like, v) if k.startswith("patch_embed") else v
            for k, v in updates["backbone"].items()
        }
        updates = {**updates, "backbone": backbone}
    params = optax.apply_updates(state.params, updates)
    if s.renormalize:
        params = _normalize_prototypes(params)
    extras = {**extras, **new_extras}
    metrics = step_metrics(loss, grads, params, h, s.schedule(state.step))
    if "teacher_temp" in loss_kw:
        metrics["teacher_temp"] = jnp.asarray(loss_kw["teacher_temp"], jnp.float32)
    if s.has_target:
        tau = ema_momentum(state.step, c.total_steps, c.ema.base_momentum, c.ema.final_momentum)
        t_params = jax.tree_util.tree_map(
            lambda t, o: tau * t + (1.0 - tau) * o, extras["target"]["params"], params
        )
        extras = {**extras, "target": {"params": t_params, "batch_stats": target_stats}}
        metrics["ema_momentum"] = tau
    if s.probe and labels is not None:
        # The large crops' features as the pretext step computed them (train mode), no
        # gradient into the backbone: the probe costs one (B, F) x (F, C) product per crop.
        new_probe, probe_metrics = online_probe_update(
            s.probe_tx, extras[ONLINE_PROBE_KEY], hs, labels
        )
        extras = {**extras, ONLINE_PROBE_KEY: new_probe}
        metrics.update(probe_metrics)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        extras=extras,
    )
    return new_state, metrics


def probe(s: Setup, state: TrainState, images: jax.Array) -> jax.Array:
    """(B, C) logits of the online linear probe on the frozen features of uint8 images
    (evaluation mode and transform, as k-NN and the offline probe see them)."""
    features = embed_features(s.model, state, images, s.transform)
    return online_probe_logits(state.extras[ONLINE_PROBE_KEY]["params"], features)


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """The pretrain method's pure functions for this config (with the online probe when
    `config.online_probe.enabled` and the data has classes)."""
    s = setup(config, num_classes=data.num_classes)
    optional = {"probe": probe} if s.probe else {}
    return method_of(
        s, init=init, make_inputs=make_inputs, update=update, host_views=s.views, **optional
    )
