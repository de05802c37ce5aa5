"""Pretraining with one pretext loss on augmented views: the embedding zoo.

One method for every objective that compares embeddings of augmented views: Barlow Twins,
SimCLR, SupCon, DCL, VICReg, W-MSE (symmetric), BYOL, MoCo v3 (momentum target and
predictor), SimSiam (predictor, no target), MoCo v2 (momentum target and a queue), SwAV
(prototypes, multi-crop) and DINO (momentum teacher, centre, multi-crop). The network is

    backbone -> projector -> [predictor]   (online, trained)
                          -> [prototypes]
    EMA copy of the same  (target / teacher, config.ema, no gradient)

and the loss is a pure function of `jssl.losses`. Method state that is not a parameter (the
target network, the MoCo queue, the DINO centre) lives in `TrainState.extras`, so it is
sharded, donated and checkpointed with everything else. A new embedding objective needs one
loss in `jssl.losses`, one entry in `PRETEXTS` and a config file.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jssl import augment, losses, models
from jssl.methods.common import DataInfo, Method, TrainState, backbone_from_config, step_metrics
from jssl.optim import build_optimizer

__all__ = ["SSLModel", "Pretext", "PRETEXTS", "build", "build_parts", "build_model",
           "ema_momentum"]


@dataclasses.dataclass(frozen=True)
class Pretext:
    """How one objective turns the forward outputs into a loss.

    `loss(online, target, extras, labels, **kw) -> (loss, new_extras)`: `online` is a list
    over crops (large first) of dicts with "z" (projection), and "p" (predictor) / "s"
    (prototype scores) when the model has them; `target` the same for the large crops from
    the momentum network (None without one); `kw` the config.loss fields except `name`.
    `needs` lists what the model must have ("predictor", "prototypes", "target", "queue").
    """

    loss: Callable[..., tuple[jax.Array, dict]]
    needs: frozenset = frozenset()


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
    return (losses.byol(online[0]["p"], target[1]["z"], **kw)
            + losses.byol(online[1]["p"], target[0]["z"], **kw)), {}


def _simsiam(online, target, extras, labels, **kw):
    # L = D(p1, z2) / 2 + D(p2, z1) / 2 (Chen & He 2021, eq. 2); stop-gradient inside.
    return 0.5 * (losses.simsiam(online[0]["p"], online[1]["z"], **kw)
                  + losses.simsiam(online[1]["p"], online[0]["z"], **kw)), {}


def _mocov3(online, target, extras, labels, **kw):
    # ctr(q1, k2) + ctr(q2, k1) (Chen et al. 2021, Algorithm 1).
    return (losses.mocov3(online[0]["p"], target[1]["z"], **kw)
            + losses.mocov3(online[1]["p"], target[0]["z"], **kw)), {}


def _mocov2(online, target, extras, labels, **kw):
    # Symmetrised InfoNCE against one queue of past keys (solo-learn's mocov2plus is
    # symmetric too); the keys of both views are enqueued afterwards, oldest overwritten.
    queue = extras["queue"]
    loss = 0.5 * (losses.moco(online[0]["z"], target[1]["z"], queue, **kw)
                  + losses.moco(online[1]["z"], target[0]["z"], queue, **kw))
    keys = jnp.concatenate([target[0]["z"], target[1]["z"]], axis=0)
    keys = jax.lax.stop_gradient(losses.l2_normalize(keys))
    ptr = extras["queue_ptr"]
    new_queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), ptr, axis=0)
    return loss, {"queue": new_queue, "queue_ptr": (ptr + keys.shape[0]) % queue.shape[0]}


def _swav(online, target, extras, labels, **kw):
    return losses.swav([o["s"] for o in online], **kw), {}


def _dino(online, target, extras, labels, *, center_momentum: float = 0.9, **kw):
    teacher = [t["s"] for t in target]
    loss = losses.dino([o["s"] for o in online], teacher, extras["center"], **kw)
    center = losses.dino_center(extras["center"], teacher, momentum=center_momentum)
    return loss, {"center": center}


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
    "moco": Pretext(_mocov2, frozenset({"target", "queue"})),
    "swav": Pretext(_swav, frozenset({"prototypes"})),
    "dino": Pretext(_dino, frozenset({"prototypes", "target"})),
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
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    m = config.model
    backbone = backbone_from_config(config, dtype)
    projector = models.Projector(hidden_dims=tuple(m.projector_hidden_dims),
                                 out_dim=m.projector_dim, use_bn=m.projector_bn,
                                 last_bn=m.projector_last_bn, activation=m.projector_activation,
                                 dtype=dtype)
    predictor = None
    if m.predictor_dim:
        predictor = models.Projector(hidden_dims=tuple(m.predictor_hidden_dims),
                                     out_dim=m.predictor_dim, use_bn=True, dtype=dtype)
    prototypes = None
    if m.num_prototypes:
        prototypes = models.Prototypes(m.num_prototypes, normalize_weights=m.normalize_prototypes)
    return SSLModel(backbone=backbone, projector=projector, predictor=predictor,
                    prototypes=prototypes)


def ema_momentum(step: jax.Array, total_steps: int, base: float, final: float) -> jax.Array:
    """BYOL's target decay: tau = final - (final - base) (cos(pi k / K) + 1) / 2."""
    progress = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
    return final - (final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def loss_kwargs(config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in config.loss.to_dict().items() if k != "name"}


def _check_needs(config: ml_collections.ConfigDict, pretext: Pretext) -> None:
    from jssl.config import ConfigError

    name = config.loss.name
    has = {"predictor": config.model.predictor_dim > 0,
           "prototypes": config.model.num_prototypes > 0,
           "target": config.ema.base_momentum > 0,
           "queue": config.queue_size > 0}
    fields = {"predictor": "model.predictor_dim", "prototypes": "model.num_prototypes",
              "target": "ema.base_momentum", "queue": "queue_size"}
    for need in sorted(pretext.needs):
        if not has[need]:
            raise ConfigError(f"config.{fields[need]}: loss {name!r} needs a {need}; set "
                              f"{fields[need]} > 0")


def _normalize_prototypes(params):
    """Unit-norm prototype columns (SwAV normalises them before every step)."""
    if "prototypes" not in params:
        return params
    w = params["prototypes"]["kernel"]
    w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    return {**params, "prototypes": {**params["prototypes"], "kernel": w}}


def build_parts(config: ml_collections.ConfigDict, data: DataInfo):
    """(Method, update(state, views, labels=None), make_views(state, images)): the step in
    two parts, so that benchmarks can time the update on device-resident views alone."""
    if config.loss.name not in PRETEXTS:
        raise ValueError(f"config.loss.name: unknown loss {config.loss.name!r}; choose one of "
                         f"{', '.join(sorted(PRETEXTS))}")
    pretext = PRETEXTS[config.loss.name]
    _check_needs(config, pretext)
    model = build_model(config)
    kw = loss_kwargs(config)
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    large = [config.augment.view1, config.augment.view2]
    small = [config.augment.small_view] * config.augment.num_small_crops
    views = large + small
    size = config.data.image_size
    mean, std = tuple(large[0].mean), tuple(large[0].std)
    has_target = config.ema.base_momentum > 0
    renormalize = config.model.num_prototypes > 0 and not config.model.normalize_prototypes
    freeze_steps = config.model.freeze_prototypes_steps

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng, queue_rng = jax.random.split(rng, 3)
        dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        variables = models.init_variables(model, init_rng, dummy, train=False)
        params = variables["params"]
        if renormalize:
            params = _normalize_prototypes(params)
        batch_stats = variables.get("batch_stats", {})
        extras: dict[str, Any] = {}
        if has_target:  # the target starts as a copy of the online network
            extras["target"] = {"params": params, "batch_stats": batch_stats}
        if config.queue_size:
            queue = jax.random.normal(queue_rng, (config.queue_size, config.model.projector_dim))
            extras["queue"] = losses.l2_normalize(queue)
            extras["queue_ptr"] = jnp.zeros((), jnp.int32)
        if pretext.loss is _dino:
            extras["center"] = jnp.zeros((1, config.model.num_prototypes), jnp.float32)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params), rng=state_rng, extras=extras)

    def update(state: TrainState, inputs: Sequence[jax.Array],
               labels: jax.Array | None = None) -> tuple[TrainState, dict]:
        """One optimizer step on already augmented crops (float32, normalised; large first)."""
        extras = state.extras
        target = None
        target_stats = None
        if has_target:
            # The momentum network sees the large crops only, in train mode (its BatchNorm
            # uses batch statistics, as the online one), and never gets a gradient.
            t_vars = extras["target"]
            target, target_stats = [], t_vars["batch_stats"]
            for x in inputs[:2]:
                out, upd = model.apply({"params": t_vars["params"], "batch_stats": target_stats},
                                       x, train=True, predict=False, mutable=["batch_stats"])
                target_stats = upd["batch_stats"]
                target.append(jax.tree_util.tree_map(jax.lax.stop_gradient, out))

        def loss_fn(params):
            batch_stats = state.batch_stats
            online = []
            # One forward pass per crop, each with its own BatchNorm batch statistics
            # (as the peers do; a single pass over both views measured slower on CPU too).
            for x in inputs:
                out, upd = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                       train=True, mutable=["batch_stats"])
                batch_stats = upd["batch_stats"]
                online.append(out)
            loss, new_extras = pretext.loss(online, target, extras, labels, **kw)
            return loss, (batch_stats, new_extras, online[0]["h"])

        (loss, (batch_stats, new_extras, h)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        if freeze_steps and "prototypes" in grads:
            # SwAV freezes the prototypes for the first epochs (freeze_prototypes_epochs).
            keep = (state.step >= freeze_steps).astype(jnp.float32)
            grads = {**grads, "prototypes": jax.tree_util.tree_map(lambda g: g * keep,
                                                                   grads["prototypes"])}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if renormalize:
            params = _normalize_prototypes(params)
        extras = {**extras, **new_extras}
        metrics = step_metrics(loss, grads, params, h, schedule(state.step))
        if has_target:
            tau = ema_momentum(state.step, config.total_steps, config.ema.base_momentum,
                               config.ema.final_momentum)
            t_params = jax.tree_util.tree_map(lambda t, o: tau * t + (1.0 - tau) * o,
                                              extras["target"]["params"], params)
            extras = {**extras, "target": {"params": t_params, "batch_stats": target_stats}}
            metrics["ema_momentum"] = tau
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, extras=extras)
        return new_state, metrics

    def make_views(state: TrainState, images: jax.Array) -> list[jax.Array]:
        """The augmented crops of a uint8 batch; keys depend on (state.rng, state.step) only."""
        rng = jax.random.fold_in(state.rng, state.step)
        keys = jax.random.split(rng, len(views))
        return [augment.augment_view(k, images, v) for k, v in zip(keys, views)]

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(state, make_views(state, batch["image"]), batch.get("label"))

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
