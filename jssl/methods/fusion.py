"""Attention gating over frozen pretext encoders (Yao et al. 2022, arXiv 2204.05248;
docs/methods.md section 4). The design is jssl's choice; the paper's code is not public.

K encoders restored from jssl runs (`config.fusion.encoders`: workdirs or files written by
`python -m jssl.export`; `jssl.export.load_encoders`) are frozen: their variables live in
`TrainState.extras["encoders"]`
(checkpointed and replicated with the state, never in `state.params`), they run in
evaluation mode (BatchNorm running statistics, never updated) on `stop_gradient` of their
variables, and the train step differentiates `state.params` alone, which hold only the
fusion head (`jssl.models.fusion.FusionHead`: projections, attention or gates, classifier).
So no gradient of an encoder is ever computed, and their values never change.

Each encoder's features are standardised with the mean and std of the labelled training
features (constants in `extras`, an affine map: with K = 1 the attention head is still a
linear probe). The head trains on a seeded class-balanced `config.fusion.labelled_fraction`
of the train split (`jssl.data.subsets.labelled_split`), with cross-entropy plus
`entropy_weight` times the mean entropy of the attention weights (attention modes only; a
positive weight favours selecting few pretexts). With `cache_features` (default) the
encoders' features of the labelled subset are computed once, when the method is built, on
the run's mesh (`jssl.evaluate.encode_source`), and the training stream serves them
instead of images (`jssl.data.features.FeatureBatches`) (the encoders do not change, so the
steps compute the same thing); otherwise every step runs the encoders on the images.
Evaluation: `predict` is the head's classifier on images (val/test accuracy), `embed` the
fused features z.

The head's pieces are top-level pure functions of a `Setup` (`setup(config, num_classes,
widths)`): `head_init`, `update`, `outputs`, `objective`. The fusion study
(jssl/studies/fusion.py) trains every variant and baseline on cached features of many
subsets with them, through the train loop's `train.run_steps`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl.config import compute_dtype, config_group
from jssl.data import pipeline, sources
from jssl.data.features import FeatureBatches, feature_keys
from jssl.data.subsets import SubsetSource, labelled_split
from jssl.errors import ConfigError
from jssl.evaluate import encode_source, standardization
from jssl.export import Encoders, load_encoders
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    check_labelled,
    global_norm,
    refuse_unread,
    require_group,
)
from jssl.models.fusion import ATTENTION_MODES, MODES, PROJECTIONS, WEIGHTED_MODES, FusionHead
from jssl.optim import build_optimizer

__all__ = [
    "MODES",
    "Setup",
    "setup",
    "head_init",
    "objective",
    "update",
    "outputs",
    "build",
    "encode",
    "feature_stats",
    "fusion_config",
    "validate",
]


def fusion_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.fusion` group (configs/fusion.py adds it)."""
    return config_group(
        "fusion_config",
        dict(
            encoders=(),  # K >= 1 workdirs of jssl runs, or files `python -m jssl.export` wrote
            names=(),  # one display name per encoder; (): the path's base name
            mode="task_query",  # one of jssl.models.fusion.MODES
            dim=64,  # common width d of the per-encoder projections
            se_reduction=4,  # se_gate: bottleneck width K*d / se_reduction
            projection="free",  # "free": W_k per encoder; "tied": one W (identifiable weights)
            normalize=False,  # rescale every projected h_k to norm sqrt(dim) (norm constraint)
            single_index=0,  # mode "single": the encoder whose features the linear head reads
            entropy_weight=0.0,  # attention modes: + weight * mean entropy of alpha (our choice: 0)
            labelled_fraction=0.1,  # 0.01, 0.1, 1.0: seeded class-balanced subset of train
            subset_seed=0,  # the labelled subset's seed
            cache_features=True,  # encoder features of the labelled subset computed once
        ),
        overrides,
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line, naming the field) for an impossible `config.fusion`."""
    require_group(config, "fusion", "jssl.methods.fusion.fusion_config")
    f = config.fusion
    if f.mode not in MODES:
        raise ConfigError(
            f"config.fusion.mode: unknown mode {f.mode!r}; choose one of {', '.join(MODES)}"
        )
    paths = tuple(f.encoders)
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(
            f"config.fusion.encoders: {paths!r}; give the workdirs of K >= 1 "
            "pretrained jssl runs, e.g. ('runs/rotation', 'runs/simclr')"
        )
    if f.names and len(f.names) != len(paths):
        raise ConfigError(
            f"config.fusion.names: {len(f.names)} names for {len(paths)} "
            "encoders; give one per encoder or none"
        )
    if f.mode == "single" and not 0 <= f.single_index < len(paths):
        raise ConfigError(
            f"config.fusion.single_index: {f.single_index!r} is not in "
            f"[0, {len(paths)}) (the encoders)"
        )
    if f.projection not in PROJECTIONS:
        raise ConfigError(
            f"config.fusion.projection: {f.projection!r}; choose one of {', '.join(PROJECTIONS)}"
        )
    if not isinstance(f.normalize, bool):
        raise ConfigError(f"config.fusion.normalize: must be True or False, got {f.normalize!r}")
    for field in ("dim", "se_reduction"):
        value = f[field]
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"config.fusion.{field}: must be a positive integer, got {value!r}")
    if not f.entropy_weight >= 0:
        raise ConfigError(f"config.fusion.entropy_weight: must be >= 0, got {f.entropy_weight!r}")
    if f.entropy_weight and f.mode not in ATTENTION_MODES:
        raise ConfigError(
            f"config.fusion.entropy_weight: {f.entropy_weight} penalises attention "
            f"weights, which mode {f.mode!r} has none of; use "
            f"{' or '.join(ATTENTION_MODES)}, or 0"
        )
    check_labelled(config, "fusion")
    # The encoders bring their own architectures and transforms, and nothing pretrains here.
    refuse_unread(
        config,
        "fusion",
        {
            "ema.base_momentum": (0.0, "set 0 (the head has no momentum target)"),
            "queue_size": (0, "set 0 (no queue)"),
            "model.init_from": (None, "unset it (the encoders are config.fusion.encoders)"),
            "augment.num_small_crops": (0, "set 0 (the encoders see whole images)"),
        },
    )


# --- The frozen encoders -----------------------------------------------------------------


def encode(encoders: Encoders, variables: Sequence[dict], images: jax.Array) -> list[jax.Array]:
    """The K encoders' frozen features (N, F_k) of uint8 images: evaluation mode (BatchNorm
    running statistics, nothing mutable) on `stop_gradient` of their variables."""
    return [
        m.apply(jax.lax.stop_gradient(v), images, train=False)
        for m, v in zip(encoders.modules, variables)
    ]


def feature_stats(features: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-encoder (mean, std) of (N, F_k) training features (`evaluate.standardization`,
    the linear probe's)."""
    stats = [standardization(x) for x in features]
    return [np.asarray(m) for m, _ in stats], [np.asarray(s) for _, s in stats]


# --- The trainable head ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of one fusion head over K features of `widths`."""

    config: ml_collections.ConfigDict
    model: FusionHead
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    widths: tuple[int, ...]

    @property
    def attention(self) -> bool:
        return self.config.fusion.mode in ATTENTION_MODES

    @property
    def weighted(self) -> bool:
        return self.config.fusion.mode in WEIGHTED_MODES


def setup(config: ml_collections.ConfigDict, num_classes: int, widths: Sequence[int]) -> Setup:
    """The head `config.fusion` describes for `num_classes` over K features of `widths`."""
    f = config.fusion
    model = FusionHead(
        num_classes=num_classes,
        mode=f.mode,
        dim=f.dim,
        se_reduction=f.se_reduction,
        single_index=f.single_index,
        projection=f.projection,
        normalize=f.normalize,
        dtype=compute_dtype(config),
    )
    if f.projection == "tied" and f.mode not in ("concat", "single") and len(set(widths)) > 1:
        raise ConfigError(
            f"config.fusion.projection: 'tied' shares one projection, but the encoders' "
            f"feature widths differ ({', '.join(map(str, widths))}); use 'free'"
        )
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    return Setup(config=config, model=model, tx=tx, schedule=schedule, widths=tuple(widths))


def head_init(s: Setup, rng, mean, std, extras=None) -> TrainState:
    """A fresh head; `mean`/`std`: K arrays (F_k,), the standardisation of its inputs."""
    init_rng, state_rng = jax.random.split(rng)
    params = s.model.init(init_rng, [jnp.zeros((2, w), jnp.float32) for w in s.widths])["params"]
    extras = dict(extras or {})
    extras["feature_mean"] = [jnp.asarray(m, jnp.float32) for m in mean]
    extras["feature_std"] = [jnp.asarray(x, jnp.float32) for x in std]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={},
        opt_state=s.tx.init(params),
        rng=state_rng,
        extras=extras,
    )


def _standardize(state, features):
    return [
        (x.astype(jnp.float32) - m) / sd
        for x, m, sd in zip(features, state.extras["feature_mean"], state.extras["feature_std"])
    ]


def _entropy(weights: jax.Array) -> jax.Array:
    """Mean over rows of the entropy (nats) of (N, K) weights that sum to 1."""
    return jnp.mean(-jnp.sum(weights * jnp.log(jnp.maximum(weights, 1e-12)), axis=-1))


def objective(s: Setup, params, state: TrainState, features, labels):
    """(cross-entropy + entropy_weight * attention entropy, aux) of K raw (B, F_k) features."""
    out = s.model.apply({"params": params}, _standardize(state, features))
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels))
    entropy = _entropy(out["weights"]) if s.attention else jnp.zeros(())
    return ce + s.config.fusion.entropy_weight * entropy, {"ce": ce, "entropy": entropy, **out}


def update(s: Setup, state: TrainState, inputs: tuple) -> tuple[TrainState, dict]:
    """One optimizer step of the head on (K raw (B, F_k) features, labels). Only the head's
    parameters are differentiated: the features are inputs (frozen encoders or a cache), so
    no gradient of an encoder exists in this computation."""
    features, labels = inputs
    (loss, aux), grads = jax.value_and_grad(objective, argnums=1, has_aux=True)(
        s, state.params, state, features, labels
    )
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "ce_loss": aux["ce"],
        "train_accuracy": jnp.mean((jnp.argmax(aux["logits"], -1) == labels).astype(jnp.float32)),
        "lr": s.schedule(state.step),
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(params),
    }
    if s.attention:
        metrics["attention_entropy"] = aux["entropy"]
    if s.weighted:
        mean_weights = jnp.mean(aux["weights"], axis=0)
        metrics.update({f"weight_{i}": mean_weights[i] for i in range(len(s.widths))})
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def outputs(s: Setup, state: TrainState, features) -> dict:
    """{"logits", "fused", "weights"} of K raw (N, F_k) features."""
    return s.model.apply({"params": state.params}, _standardize(state, features))


# --- The method the train loop runs -------------------------------------------------------


def build(
    config: ml_collections.ConfigDict,
    data: DataInfo,
    mesh=None,
    *,
    encoders: Encoders | None = None,
) -> Method:
    """The fusion method's pure functions for this config: restores the encoders and (for
    the standardisation, and the stream with `cache_features`) computes their features of
    the labelled subset on `mesh`, the run's."""
    validate(config)
    if mesh is None:
        raise ValueError(
            "jssl.methods.fusion.build needs the run's mesh: the encoders' "
            "features are extracted on it"
        )
    f = config.fusion
    if encoders is None:
        encoders = load_encoders(tuple(f.encoders), tuple(f.names))
    k = len(encoders)
    s = setup(config, data.num_classes, encoders.widths)
    source = sources.config_source(config, config.data.train_split)
    labelled, _ = labelled_split(source, f.labelled_fraction, f.subset_seed)
    cached, cached_labels = encode_source(
        encoders.modules,
        encoders.variables,
        SubsetSource(source, labelled),
        batch_size=config.eval.batch_size,
        mesh=mesh,
    )
    mean, std = feature_stats(cached)
    host_variables = encoders.variables

    def init(rng: jax.Array) -> TrainState:
        frozen = {
            f"encoder_{i}": jax.tree_util.tree_map(jnp.asarray, v)
            for i, v in enumerate(host_variables)
        }
        return head_init(s, rng, mean, std, {"encoders": frozen})

    def frozen_features(state: TrainState, images: jax.Array) -> list[jax.Array]:
        return encode(
            encoders, [state.extras["encoders"][f"encoder_{i}"] for i in range(k)], images
        )

    def make_inputs(state: TrainState, batch: dict) -> tuple:
        if f.cache_features:
            return [batch[key] for key in feature_keys(k)], batch["label"]
        return frozen_features(state, batch["image"]), batch["label"]

    def batches(source, mesh):
        if f.cache_features:
            return FeatureBatches(
                cached, cached_labels, batch_size=config.batch_size, seed=config.seed, mesh=mesh
            )
        return pipeline.TrainBatches(
            SubsetSource(source, labelled),
            batch_size=config.batch_size,
            seed=config.seed,
            mesh=mesh,
        )

    return Method(
        init=init,
        make_inputs=make_inputs,
        update=functools.partial(update, s),
        embed=lambda state, images: outputs(s, state, frozen_features(state, images))["fused"],
        # No BatchNorm trains here; the encoders' statistics are frozen.
        calibrate=lambda state, images: state,
        predict=lambda state, images: outputs(s, state, frozen_features(state, images))["logits"],
        batches=batches,
    )
