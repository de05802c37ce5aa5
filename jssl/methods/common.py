"""The method kit: what every method shares, written once.

A method is a module of `jssl.methods` with

    validate(config)                      ConfigError (one line) for anything it cannot run
    build(config, data, mesh) -> Method   the pure functions the one train loop runs

and, for tests and benchmarks, its update as a top-level pure function of a static record
built from the config (e.g. `pretrain.update(setup, state, inputs)`). The pieces every
method needs are here: the `TrainState` pytree, the `Method` record, state initialisation,
the step's PRNG key and augmented views, frozen features in the evaluation transform,
BatchNorm re-estimation, the metrics every step logs, one classification step, the online
linear probe, and the check that refuses config fields a method never reads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import augment, export, losses, models
from jssl.config import get_field
from jssl.errors import ConfigError

__all__ = [
    "TrainState",
    "Method",
    "DataInfo",
    "init_state",
    "step_key",
    "dropout_key",
    "make_views",
    "variables",
    "embed_features",
    "calibrate_backbone",
    "classifier_update",
    "step_metrics",
    "global_norm",
    "refuse_unread",
    "load_init_from",
    "check_view_sizes",
    "check_labelled",
    "with_backbone",
    "require_group",
    "method_of",
    "online_probe_tx",
    "online_probe_init",
    "online_probe_logits",
    "online_probe_update",
    "ONLINE_PROBE_KEY",
]


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

    init(rng) -> TrainState                       parameters, BN stats, optimizer state
    make_inputs(state, batch) -> inputs           the step's device inputs from a global
                                                  batch {"image": uint8 (B,H,W,C), "label"}:
                                                  augmented views, puzzles ... (keys from
                                                  `step_key(state)`)
    update(state, inputs) -> (state, metrics)     one optimizer step on those inputs
    train_step(state, batch)                      make_inputs, then update (what is jitted)
    embed(state, images) -> (B, F) float32        frozen features of uint8 images (eval mode)
    calibrate(state, images) -> state             BN statistics only (train-mode forward, no
                                                  gradient): for the random-init baseline
    predict(state, images) -> (B, C) logits       optional: a trained classifier (joint,
                                                  fusion); evaluation adds its accuracy
    probe(state, images) -> (B, C) logits         optional: the online linear probe on the
                                                  frozen features (`online_probe_*`);
                                                  evaluation adds online/linear_acc
    batches(source, mesh, cropper=None)           optional: the training stream (default: one
        -> TrainBatches-like                      stream of config.batch_size from the split);
                                                  `cropper` passed on to `TrainBatches`
    host_views                                    the augmentation views whose random resized
                                                  crops the host may cut (`data.crop_on`), in
                                                  the order of batch["crops"]; () for a
                                                  method that crops on the device only
    """

    init: Callable[[jax.Array], TrainState]
    make_inputs: Callable[[TrainState, dict], Any]
    update: Callable[[TrainState, Any], tuple[TrainState, dict]]
    embed: Callable[[TrainState, jax.Array], jax.Array]
    calibrate: Callable[[TrainState, jax.Array], TrainState]
    predict: Callable[[TrainState, jax.Array], jax.Array] | None = None
    probe: Callable[[TrainState, jax.Array], jax.Array] | None = None
    batches: Callable[..., Any] | None = None
    host_views: tuple = ()

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self.update(state, self.make_inputs(state, batch))


def method_of(
    s: Any,
    *,
    init: Callable,
    make_inputs: Callable,
    update: Callable,
    embed: Callable | None = None,
    calibrate: Callable | None = None,
    host_views: tuple = (),
    **optional: Callable,
) -> Method:
    """The Method of a static record `s` whose model has a backbone: each function here is a
    top-level pure function taking `s` first (`init(s, rng)`, `update(s, state, inputs)`,
    `predict(s, state, images)`, `batches(s, source, mesh)` ...); `embed` and `calibrate`
    default to the backbone's features and BatchNorm statistics in `s.transform`."""
    bound = {name: functools.partial(fn, s) for name, fn in optional.items()}
    return Method(
        init=functools.partial(init, s),
        make_inputs=functools.partial(make_inputs, s),
        update=functools.partial(update, s),
        embed=functools.partial(embed, s)
        if embed is not None
        else functools.partial(embed_features, s.model, transform=s.transform),
        calibrate=functools.partial(calibrate, s)
        if calibrate is not None
        else functools.partial(calibrate_backbone, s.model, transform=s.transform),
        host_views=tuple(host_views),
        **bound,
    )


# --- State, keys, views ------------------------------------------------------------------


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *inputs: Any,
    num_keys: int = 0,
    extras: Callable | None = None,
    params: Callable | None = None,
    backbone: tuple[dict, dict] | None = None,
    **apply_kw: Any,
) -> TrainState:
    """A fresh TrainState: `model.init` on `inputs` (evaluation mode) with the first of
    `jax.random.split(rng, 2 + num_keys)`, the state's own key the second; `backbone`
    (params, batch_stats) replaces the backbone's (`model.init_from`: `load_init_from`);
    `params(p)` post-processes the parameters, `extras(params, batch_stats, keys)` returns
    the method state (the `num_keys` remaining keys are its to use: a momentum target
    starts from the loaded backbone). The optimizer state is `tx.init(params)`."""
    init_rng, state_rng, *keys = jax.random.split(rng, 2 + num_keys)
    variables = models.init_variables(model, init_rng, *inputs, train=False, **apply_kw)
    if backbone is not None:
        variables = with_backbone(variables, *backbone)
    p = variables["params"]
    if params is not None:
        p = params(p)
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=p,
        batch_stats=batch_stats,
        opt_state=tx.init(p),
        rng=state_rng,
        extras=extras(p, batch_stats, keys) if extras is not None else {},
    )


def check_labelled(config, group: str) -> None:
    """The checks of a method that trains on labels: `config.<group>.labelled_fraction` in
    (0, 1], and a training split that is not the validation split (model selection);
    ConfigError (one line) otherwise."""
    fraction = config[group].labelled_fraction
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"config.{group}.labelled_fraction: must be in (0, 1], got {fraction!r}")
    if config.data.train_split == config.eval.val_split:
        raise ConfigError(
            f"config.data.train_split: {config.data.train_split!r} is also the "
            "validation split (model selection); train on a disjoint split"
        )


def check_view_sizes(config, views: Sequence[str]) -> None:
    """ConfigError (one line) for a view in `config.augment` (by name) whose crop size the
    backbone cannot take (`models.input_size_error`: each backbone says why)."""
    for name in views:
        size = config.augment[name].crop_size
        error = models.input_size_error(config.model, size)
        if error is not None:
            raise ConfigError(f"config.augment.{name}.crop_size: {size} {error}")


def load_init_from(config) -> tuple[dict, dict] | None:
    """The backbone `config.model.init_from` names, read once when the method is set up
    (`jssl.export.load_init_from`: a jssl workdir, or `torchvision:` / `timm:` weights);
    None when unset."""
    return export.load_init_from(config) if config.model.get("init_from") else None


def with_backbone(variables: dict, params: dict, batch_stats: dict) -> dict:
    """`variables` with the backbone's parameters and statistics replaced by loaded ones,
    which must have the same structure and shapes (ConfigError naming the first mismatch)."""
    out = dict(variables)
    for collection, new in (("params", params), ("batch_stats", batch_stats)):
        if collection not in variables or "backbone" not in variables[collection]:
            continue
        old = variables[collection]["backbone"]
        old_shapes = jax.tree_util.tree_map(jnp.shape, old)
        new_shapes = jax.tree_util.tree_map(np.shape, new)
        if old_shapes != new_shapes:
            raise ConfigError(
                f"config.model.init_from: the loaded backbone does not match config.model "
                f"({collection}: {export.first_difference(old, new)}); use the same backbone, "
                "width and stem"
            )
        out[collection] = {
            **variables[collection],
            "backbone": jax.tree_util.tree_map(lambda o, n: jnp.asarray(n, o.dtype), old, new),
        }
    return out


def step_key(state: TrainState) -> jax.Array:
    """The step's key: the state's key with the step folded in, so the randomness of step s
    depends on (seed, s) only."""
    return jax.random.fold_in(state.rng, state.step)


# A tag folded into the step's key for stochastic depth. `fold_in(k, i)` equals
# `split(k, n)[i]` (JAX's threefry), so the small integers are the keys that `make_views`
# and the methods' `split(step_key(state), n)` hand out; a large tag keeps this stream apart.
_DROPOUT_STREAM = 0x64726F70


def dropout_key(state: TrainState) -> jax.Array:
    """The step's key for the model's "dropout" stream (stochastic depth), independent of
    every key split from `step_key(state)` (the views, masks, mixing)."""
    return jax.random.fold_in(step_key(state), _DROPOUT_STREAM)


def make_views(
    state: TrainState, images: jax.Array, views: Sequence[Mapping[str, Any]]
) -> list[jax.Array]:
    """One augmented view (`augment.augment_view`) of uint8 `images` per entry of `views`,
    each with its own key from `step_key(state)`; float32, or float64 when the parameters
    are (a `dtype="float64"` run)."""
    keys = jax.random.split(step_key(state), len(views))
    dtype = state_float_dtype(state)
    return [augment.augment_view(k, images, v, dtype=dtype) for k, v in zip(keys, views)]


def batch_views(
    state: TrainState, batch: dict, views: Sequence[Mapping[str, Any]]
) -> list[jax.Array]:
    """`make_views` of batch["image"]; or, when the host has cut each view's random resized
    crop (batch["crops"], `jssl.data.pipeline`), the rest of each view applied to its crop
    with the same key, so the two paths draw the same colour, blur and flip numbers."""
    if "crops" not in batch:
        return make_views(state, batch["image"], views)
    keys = jax.random.split(step_key(state), len(views))
    dtype = state_float_dtype(state)
    return [
        augment.augment_view(k, crops, v, dtype=dtype, cropped=True)
        for k, crops, v in zip(keys, batch["crops"], views)
    ]


def batch_view(key: jax.Array, batch: dict, view: Mapping[str, Any], *, dtype=jnp.float32):
    """One augmented view of the batch with `key`: of batch["image"], or of the host's crop
    batch["crops"][0] (`batch_views`)."""
    if "crops" in batch:
        return augment.augment_view(key, batch["crops"][0], view, dtype=dtype, cropped=True)
    return augment.augment_view(key, batch["image"], view, dtype=dtype)


def state_float_dtype(state: TrainState):
    """float64 when any parameter is float64 (a `dtype="float64"` run), else float32: a
    trace-time fact (dtypes are static)."""
    leaves = jax.tree_util.tree_leaves(state.params)
    return jnp.float64 if any(x.dtype == jnp.float64 for x in leaves) else jnp.float32


# --- Evaluation-time pieces ---------------------------------------------------------------


def variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def embed_features(
    model: nn.Module, state: TrainState, images: jax.Array, transform: Mapping[str, Any]
) -> jax.Array:
    """(B, F) float32 backbone features (`model.features`, evaluation mode) of uint8 images
    in the evaluation transform (`augment.center_view(**transform)`)."""
    x = augment.center_view(images, **transform)
    return model.apply(variables(state), x, train=False, method=type(model).features).astype(
        jnp.float32
    )


def calibrate_backbone(
    model: nn.Module, state: TrainState, images: jax.Array, transform: Mapping[str, Any]
) -> TrainState:
    """`state` with the backbone's BatchNorm statistics updated by one train-mode forward of
    `images` (evaluation transform, no gradient); the heads' statistics are kept. Features
    (`embed_features`) read the backbone's statistics alone."""
    x = augment.center_view(images, **transform)
    # A backbone with stochastic depth (a ViT, which has no BatchNorm) asks for a "dropout"
    # stream in train mode; the statistics do not depend on it.
    _, upd = model.apply(
        variables(state),
        x,
        train=True,
        mutable=["batch_stats"],
        method=type(model).features,
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    return state.replace(batch_stats={**state.batch_stats, **upd["batch_stats"]})


# --- The step's pieces ---------------------------------------------------------------------


def global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def step_metrics(loss, grads, params, h, lr) -> dict:
    """The metrics every train step logs: loss, lr, grad_norm, param_norm and feature_std,
    the mean per-dimension std of the L2-normalised features h (~1/sqrt(F) when healthy, 0
    when the representation has collapsed)."""
    return {
        "loss": loss,
        "lr": lr,
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(params),
        "feature_std": jnp.mean(jnp.std(losses.l2_normalize(h.astype(jnp.float32)), axis=0)),
    }


def classifier_update(
    model,
    tx,
    schedule,
    loss_fn,
    state: TrainState,
    x: jax.Array,
    labels: jax.Array,
    *,
    accuracy_name: str,
) -> tuple[TrainState, dict]:
    """One optimizer step of a classification method (pretext puzzles, cluster pseudo-labels).

    `model.apply(variables, x, train=True)` returns (features h, logits); the loss is
    `loss_fn(logits, labels)`; BatchNorm statistics are updated from this batch. Metrics:
    loss, `accuracy_name` (top-1 on these labels), lr, grad_norm, param_norm, feature_std
    (the collapse monitor on normalised h)."""

    def objective(params):
        (h, logits), upd = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return loss_fn(logits, labels), (upd["batch_stats"], logits, h)

    (loss, (batch_stats, logits, h)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, schedule(state.step))
    metrics[accuracy_name] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    ), metrics


# --- The online linear probe ----------------------------------------------------------------

# Where a method keeps the probe in `TrainState.extras`: {"params": {"kernel", "bias"},
# "opt_state"}.
ONLINE_PROBE_KEY = "online_probe"


def online_probe_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The probe's own optimizer (`config.online_probe`): SGD with momentum, its learning
    rate on a cosine from `lr` to 0 over `total_steps` (no warm-up), weight decay on the
    kernel only (added to the gradient, as PyTorch's SGD)."""
    p = config.online_probe
    schedule = optax.cosine_decay_schedule(float(p.lr), max(int(config.total_steps), 1))
    return optax.chain(
        optax.add_decayed_weights(float(p.weight_decay), mask={"kernel": True, "bias": False}),
        optax.sgd(schedule, momentum=float(p.momentum) or None),
    )


def online_probe_init(tx: optax.GradientTransformation, feature_dim: int, num_classes: int):
    """A zero-initialised linear classifier (F, C) and its optimizer state (the problem is
    convex: the start only sets where SGD begins, and zeros need no key, so the run's other
    random draws are the same with the probe on or off)."""
    params = {
        "kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    return {"params": params, "opt_state": tx.init(params)}


def online_probe_logits(params: dict, features: jax.Array) -> jax.Array:
    """(B, C) logits of the probe on (B, F) features."""
    return features.astype(params["kernel"].dtype) @ params["kernel"] + params["bias"]


def online_probe_update(
    tx: optax.GradientTransformation,
    probe: dict,
    features: Sequence[jax.Array],
    labels: jax.Array,
) -> tuple[dict, dict]:
    """One optimizer step of the probe on the backbone features of the step's crops.

    The features are `stop_gradient`ed: nothing of the probe reaches the backbone. The
    loss is the mean over the crops of the softmax cross-entropy (solo-learn averages its
    online classifier over the large crops). Metrics: "online/linear_loss" and
    "online/linear_acc" (top-1 on these training crops)."""
    feats = [jax.lax.stop_gradient(f) for f in features]

    def objective(params):
        logits = [online_probe_logits(params, f) for f in feats]
        ce = [jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels)) for z in logits]
        return sum(ce) / len(ce), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(probe["params"])
    updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
    params = optax.apply_updates(probe["params"], updates)
    acc = sum(jnp.mean((jnp.argmax(z, -1) == labels).astype(jnp.float32)) for z in logits)
    metrics = {"online/linear_loss": loss, "online/linear_acc": acc / len(logits)}
    return {"params": params, "opt_state": opt_state}, metrics


# --- Config checks every method uses ---------------------------------------------------------


def require_group(config: ml_collections.ConfigDict, group: str, helper: str) -> None:
    """ConfigError unless `config.<group>` exists (added by the method's `helper`)."""
    if group not in config:
        raise ConfigError(f"config.{group}: missing; this method's configs add it with {helper}()")


def refuse_unread(
    config: ml_collections.ConfigDict, method: str, fields: Mapping[str, tuple[Any, str]]
) -> None:
    """ConfigError for a field `method` never reads that is not at its neutral value.

    `fields` maps a dotted field to (the only value it may hold, how to set it), e.g.
    {"queue_size": (0, "set 0")}. A value set there would be silently ignored, so a user
    who set it expecting an effect is told instead."""
    for field, (neutral, fix) in fields.items():
        value = get_field(config, field)
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        if isinstance(neutral, ml_collections.ConfigDict):
            neutral = neutral.to_dict()
        if value != neutral:
            raise ConfigError(
                f"config.{field}: the {method} method never reads it (got {_short(value)}); {fix}"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
