"""Attention gating over frozen pretext encoders (Yao et al. 2022, arXiv 2204.05248;
METHODS.md section 4). The design is jssl's choice; the paper's code is not public.

K encoders restored from jssl runs (`config.fusion.encoders`: workdirs or files written by
`python -m jssl.export`) are frozen: their variables live in `TrainState.extras["encoders"]`
(checkpointed and replicated with the state, never in `state.params`), they run in
evaluation mode (BatchNorm running statistics, never updated) on `stop_gradient` of their
variables, and the train step differentiates `state.params` alone, which hold only the
fusion head (`jssl.models.fusion.FusionHead`: projections, attention or gates, classifier).
So no gradient of an encoder is ever computed, and their values never change.

Each encoder's features are standardised with the mean and std of the labelled training
features (constants in `extras`, an affine map: with K = 1 the attention head is still a
linear probe). The head trains on a seeded class-balanced `config.fusion.labelled_fraction`
of the train split (`jssl.methods.joint.labelled_split`), with cross-entropy plus
`entropy_weight` times the mean entropy of the attention weights (attention modes only; a
positive weight favours selecting few pretexts). With `cache_features` (default) the
encoders' features of the labelled subset are computed once, when the method is built,
and the training stream serves them instead of images (the encoders do not change, so the
steps compute the same thing); otherwise every step runs the encoders on the images.
Evaluation: `predict` is the head's classifier on images (val/test accuracy), `embed` the
fused features z.

`HeadTrainer` trains one head configuration on cached features of any subset, compiled
once and reused over seeds and subsets: the fusion study (jssl/studies/fusion.py) trains
every variant and baseline with it, in the same budget.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import parallel
from jssl.data import pipeline
from jssl.methods.common import DataInfo, Method, TrainState, compute_dtype, global_norm
from jssl.models.fusion import ATTENTION_MODES, MODES, WEIGHTED_MODES, FusionHead
from jssl.optim import build_optimizer

__all__ = [
    "MODES",
    "Encoders",
    "FeatureBatches",
    "Head",
    "HeadTrainer",
    "build",
    "build_head",
    "build_parts",
    "encode",
    "encode_source",
    "feature_stats",
    "fusion_config",
    "load_encoders",
    "validate_fusion",
]


def fusion_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.fusion` group (configs/fusion.py adds it)."""
    c = ml_collections.ConfigDict(dict(
        encoders=(),  # K >= 1 workdirs of jssl runs, or files written by `python -m jssl.export`
        names=(),  # one display name per encoder; (): the path's base name
        mode="task_query",  # one of jssl.models.fusion.MODES
        dim=64,  # common width d of the per-encoder projections
        se_reduction=4,  # se_gate: bottleneck width K*d / se_reduction
        single_index=0,  # mode "single": the encoder whose features the linear head reads
        entropy_weight=0.0,  # attention modes: + weight * mean entropy of alpha (our choice: 0)
        labelled_fraction=0.1,  # 0.01, 0.1, 1.0: seeded class-balanced subset of the train split
        subset_seed=0,  # the labelled subset's seed
        cache_features=True,  # encoder features of the labelled subset computed once
    ))
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"fusion_config: unknown field {key!r}")
        c[key] = value
    return c


def validate_fusion(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line, naming the field) for an impossible `config.fusion`."""
    from jssl.config import ConfigError

    if "fusion" not in config:
        raise ConfigError("config.fusion: missing; fusion configs add it with "
                          "jssl.methods.fusion.fusion_config()")
    f = config.fusion
    if f.mode not in MODES:
        raise ConfigError(f"config.fusion.mode: unknown mode {f.mode!r}; choose one of "
                          f"{', '.join(MODES)}")
    paths = tuple(f.encoders)
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f"config.fusion.encoders: {paths!r}; give the workdirs of K >= 1 "
                          "pretrained jssl runs, e.g. ('runs/rotation', 'runs/simclr')")
    if f.names and len(f.names) != len(paths):
        raise ConfigError(f"config.fusion.names: {len(f.names)} names for {len(paths)} "
                          "encoders; give one per encoder or none")
    if f.mode == "single" and not 0 <= f.single_index < len(paths):
        raise ConfigError(f"config.fusion.single_index: {f.single_index!r} is not in "
                          f"[0, {len(paths)}) (the encoders)")
    for field in ("dim", "se_reduction"):
        value = f[field]
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"config.fusion.{field}: must be a positive integer, got {value!r}")
    if not f.entropy_weight >= 0:
        raise ConfigError(f"config.fusion.entropy_weight: must be >= 0, got {f.entropy_weight!r}")
    if f.entropy_weight and f.mode not in ATTENTION_MODES:
        raise ConfigError(f"config.fusion.entropy_weight: {f.entropy_weight} penalises attention "
                          f"weights, which mode {f.mode!r} has none of; use "
                          f"{' or '.join(ATTENTION_MODES)}, or 0")
    if not 0.0 < f.labelled_fraction <= 1.0:
        raise ConfigError(f"config.fusion.labelled_fraction: must be in (0, 1], got "
                          f"{f.labelled_fraction!r}")
    if config.data.train_split == config.eval.val_split:
        raise ConfigError(f"config.data.train_split: {config.data.train_split!r} is also the "
                          "validation split (model selection); train on a disjoint split")


# --- The frozen encoders -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Encoders:
    """K restored encoders: `jssl.export.Encoder` modules, their variables (host NumPy) and
    feature widths."""

    names: tuple[str, ...]
    paths: tuple[str, ...]
    modules: tuple[Any, ...]
    variables: tuple[dict, ...]
    widths: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.modules)


def _first_difference(expected, loaded) -> str:
    exp = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
           jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in
           jax.tree_util.tree_leaves_with_path(loaded)}
    for key in sorted(set(exp) | set(got)):
        if exp.get(key) != got.get(key):
            return (f"{key}: architecture {exp.get(key, 'absent')}, checkpoint "
                    f"{got.get(key, 'absent')}")
    return "none"


def load_encoders(paths: Sequence[str], names: Sequence[str] = ()) -> Encoders:
    """Restore the encoders of `paths` (jssl workdirs or exported files) for fusion.

    Raises ConfigError (one line naming `config.fusion.encoders[i]` and the path) when one
    is missing, holds no complete checkpoint or no backbone, or when its checkpoint does not
    fit the architecture its config describes.
    """
    from jssl import export
    from jssl.config import ConfigError

    modules, variables, widths = [], [], []
    for i, path in enumerate(paths):
        where = f"config.fusion.encoders[{i}]"
        try:
            module, v = export.load_encoder(path)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        dummy = jnp.zeros((1, module.size, module.size, 3), jnp.uint8)
        expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)
        if (jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(v)
                or jax.tree_util.tree_map(lambda x: tuple(x.shape), expected)
                != jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), v)):
            raise ConfigError(f"{where}: {path}: its checkpoint does not fit the encoder its "
                              f"config describes ({_first_difference(expected, v)}); give the "
                              "workdir of a complete, unmodified jssl run")
        out = jax.eval_shape(module.apply, v, dummy)
        modules.append(module)
        variables.append(v)
        widths.append(int(out.shape[-1]))
    names = tuple(names) or tuple(os.path.basename(os.path.normpath(p)) for p in paths)
    return Encoders(names=names, paths=tuple(paths), modules=tuple(modules),
                    variables=tuple(variables), widths=tuple(widths))


def encode(encoders: Encoders, variables: Sequence[dict], images: jax.Array) -> list[jax.Array]:
    """The K encoders' frozen features (N, F_k) of uint8 images: evaluation mode (BatchNorm
    running statistics, nothing mutable) on `stop_gradient` of their variables."""
    return [m.apply(jax.lax.stop_gradient(v), images, train=False)
            for m, v in zip(encoders.modules, variables)]


def encode_source(encoders: Encoders, source, *, batch_size: int,
                  mesh=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Features of every example of `source` by every encoder (host arrays), and labels."""
    from jssl.evaluate import extract_features

    mesh = parallel.make_mesh() if mesh is None else mesh
    feats, labels = [], None
    for module, v in zip(encoders.modules, encoders.variables):
        x, labels = extract_features(_sharded_apply(module, mesh), v, source,
                                     batch_size=batch_size, mesh=mesh)
        feats.append(x)
    return feats, labels


@functools.lru_cache(maxsize=16)
def _sharded_apply(module, mesh):
    """One jitted evaluation-mode forward per (encoder architecture, mesh): modules are
    hashable by their fields, so restoring the same architecture again compiles nothing."""
    return jax.jit(lambda variables, x: module.apply(variables, x, train=False),
                   in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                   out_shardings=parallel.batch_sharding(mesh))


def feature_stats(features: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-encoder (mean, std) of (N, F_k) training features; std 1 where a feature is
    constant (as `jssl.evaluate.linear_probe` standardises)."""
    means, stds = [], []
    for x in features:
        x = np.asarray(x, np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        means.append(mean.astype(np.float32))
        stds.append(std.astype(np.float32))
    return means, stds


# --- The trainable head ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Head:
    """The fusion head's pure functions.

    init(rng, mean, std, extras=None) -> TrainState   (mean/std: K arrays (F_k,))
    update(state, features, labels) -> (state, metrics)   features: K raw (B, F_k) arrays
    outputs(state, features) -> {"logits", "fused", "weights"}
    objective(params, state, features, labels) -> (loss, aux)   (for tests)
    """

    model: FusionHead
    init: Callable[..., TrainState]
    update: Callable[..., tuple[TrainState, dict]]
    outputs: Callable[..., dict]
    objective: Callable[..., tuple[jax.Array, dict]]


def _entropy(weights: jax.Array) -> jax.Array:
    """Mean over rows of the entropy (nats) of (N, K) weights that sum to 1."""
    return jnp.mean(-jnp.sum(weights * jnp.log(jnp.maximum(weights, 1e-12)), axis=-1))


def build_head(config: ml_collections.ConfigDict, num_classes: int,
               widths: Sequence[int]) -> Head:
    """The fusion head `config.fusion` describes over K features of `widths`."""
    f = config.fusion
    k = len(widths)
    model = FusionHead(num_classes=num_classes, mode=f.mode, dim=f.dim,
                       se_reduction=f.se_reduction, single_index=f.single_index,
                       dtype=compute_dtype(config))
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    entropy_weight = float(f.entropy_weight)
    attention = f.mode in ATTENTION_MODES

    def init(rng, mean, std, extras=None) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = model.init(init_rng, [jnp.zeros((2, w), jnp.float32) for w in widths])["params"]
        extras = dict(extras or {})
        extras["feature_mean"] = [jnp.asarray(m, jnp.float32) for m in mean]
        extras["feature_std"] = [jnp.asarray(s, jnp.float32) for s in std]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                          opt_state=tx.init(params), rng=state_rng, extras=extras)

    def standardize(state, features):
        return [(x.astype(jnp.float32) - m) / s for x, m, s in
                zip(features, state.extras["feature_mean"], state.extras["feature_std"])]

    def objective(params, state, features, labels):
        out = model.apply({"params": params}, standardize(state, features))
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels))
        entropy = _entropy(out["weights"]) if attention else jnp.zeros(())
        return ce + entropy_weight * entropy, {"ce": ce, "entropy": entropy, **out}

    def update(state, features, labels):
        # Only the head's parameters are differentiated: the features are inputs (frozen
        # encoders or a cache), so no gradient of an encoder exists in this computation.
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state, features, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "ce_loss": aux["ce"],
            "train_accuracy": jnp.mean((jnp.argmax(aux["logits"], -1) == labels)
                                       .astype(jnp.float32)),
            "lr": schedule(state.step),
            "grad_norm": global_norm(grads),
            "param_norm": global_norm(params),
        }
        if attention:
            metrics["attention_entropy"] = aux["entropy"]
        if f.mode in WEIGHTED_MODES:
            mean_weights = jnp.mean(aux["weights"], axis=0)
            metrics.update({f"weight_{i}": mean_weights[i] for i in range(k)})
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def outputs(state, features):
        return model.apply({"params": state.params}, standardize(state, features))

    return Head(model=model, init=init, update=update, outputs=outputs, objective=objective)


# --- Streams and training on cached features ---------------------------------------------


class FeatureRows:
    """A data source whose "images" are rows of K concatenated feature arrays: cached
    features go through the same host-to-device paths as images (`pipeline.TrainBatches`,
    `evaluate.extract_features`), each process reading the rows its devices hold."""

    def __init__(self, features: Sequence[np.ndarray], labels: np.ndarray):
        self.widths = tuple(int(np.shape(x)[1]) for x in features)
        self.rows = np.concatenate([np.asarray(x, np.float32) for x in features], axis=1)
        self.labels = np.asarray(labels, np.int32)
        if len(self.rows) != len(self.labels) or not len(self.labels):
            raise ValueError(f"FeatureRows: {len(self.rows)} feature rows for "
                             f"{len(self.labels)} labels")
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return self.rows[indices], self.labels[indices]

    def split(self, rows):
        return _split_columns(self.widths, rows)


def _split_columns(widths: Sequence[int], rows):
    """(B, sum F_k) rows -> the K feature arrays (NumPy or JAX) of `widths`."""
    ends = np.cumsum(widths).tolist()
    return [rows[:, end - w:end] for w, end in zip(widths, ends)]


class FeatureBatches(pipeline.TrainBatches):
    """Global batches {"feature_0" ... "feature_{K-1}", "label"} of cached features: the
    rows `pipeline.TrainBatches` would read from a source of the same examples in the same
    order (same seed, same batch size), so cached and uncached runs see the same examples."""

    def __init__(self, features: Sequence[np.ndarray], labels: np.ndarray, *, batch_size: int,
                 seed: int, mesh, prefetch: int = 2):
        super().__init__(FeatureRows(features, labels), batch_size=batch_size, seed=seed,
                         mesh=mesh, prefetch=prefetch)

    def host_batch(self, step: int) -> dict:
        batch = super().host_batch(step)
        rows = batch.pop("image")
        batch.update({f"feature_{i}": np.ascontiguousarray(x)
                      for i, x in enumerate(self.source.split(rows))})
        return batch


def _features_of(batch: dict, k: int) -> list[jax.Array]:
    return [batch[f"feature_{i}"] for i in range(k)]


class HeadTrainer:
    """One head configuration trained on cached features over `mesh`, compiled once and
    reused for every seed and labelled subset (the study's variants, same budget each)."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
                 widths: Sequence[int], mesh):
        self.config, self.mesh, self.k = config, mesh, len(widths)
        self.head = build_head(config, num_classes, widths)
        repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        self._init = jax.jit(self.head.init, out_shardings=repl)
        self._step = jax.jit(lambda s, b: self.head.update(s, _features_of(b, self.k),
                                                           b["label"]),
                             in_shardings=(repl, data), out_shardings=(repl, repl),
                             donate_argnums=0)
        self._packed = None  # the jitted outputs, built on first use

    def fit(self, features: Sequence[np.ndarray], labels: np.ndarray, *,
            seed: int) -> tuple[TrainState, list[dict]]:
        """Train on (features, labels) for config.total_steps batches of config.batch_size;
        the head's initialisation and batch order follow `seed`. Returns the state and the
        metrics of every config.log_every-th step."""
        c = self.config
        mean, std = feature_stats(features)
        state = self._init(jax.random.PRNGKey(seed), mean, std)
        stream = FeatureBatches(features, labels, batch_size=c.batch_size, seed=seed,
                                mesh=self.mesh)
        history = []
        for step, batch in enumerate(stream(0, c.total_steps), start=1):
            state, metrics = self._step(state, batch)
            if step % c.log_every == 0 or step == c.total_steps:
                history.append({"step": step, **{k: float(v) for k, v in
                                                 jax.device_get(metrics).items()}})
        return state, history

    def outputs(self, state: TrainState, features: Sequence[np.ndarray]) -> dict:
        """{"logits" (N, C), "weights" (N, K), None for concat/single} of every row, host
        arrays (through `evaluate.extract_features`, the path image features take)."""
        from jssl.evaluate import extract_features

        rows = FeatureRows(features, np.zeros(len(features[0]), np.int32))
        weighted = self.config.fusion.mode in WEIGHTED_MODES
        if self._packed is None:
            widths = rows.widths

            def packed(state, x):  # logits and weights in one (B, C [+ K]) array
                out = self.head.outputs(state, _split_columns(widths, x))
                return jnp.concatenate([out["logits"]] + ([out["weights"]] if weighted else []),
                                       axis=1)

            repl, data = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
            self._packed = jax.jit(packed, in_shardings=(repl, data), out_shardings=data)
        out, _ = extract_features(self._packed, state, rows, batch_size=len(rows),
                                  mesh=self.mesh)
        c = out.shape[1] - (self.k if weighted else 0)
        return {"logits": out[:, :c], "weights": out[:, c:] if weighted else None}


# --- The method the train loop runs -------------------------------------------------------


def build(config: ml_collections.ConfigDict, data: DataInfo) -> Method:
    """The fusion method's pure functions for this config (restores the encoders)."""
    return build_parts(config, data)[0]


def build_parts(config: ml_collections.ConfigDict, data: DataInfo, *, encoders=None):
    """(Method, head, encoders, cache): `cache` = (features, labels) of the labelled subset
    (host arrays), which the stream serves when `config.fusion.cache_features`."""
    from jssl.data import sources
    from jssl.methods.joint import labelled_split

    validate_fusion(config)
    f = config.fusion
    if encoders is None:
        encoders = load_encoders(tuple(f.encoders), tuple(f.names))
    k = len(encoders)
    head = build_head(config, data.num_classes, encoders.widths)
    source = sources.get_source(config.data.name, config.data.train_split,
                                data_dir=config.data.data_dir)
    labelled, _ = labelled_split(source, f.labelled_fraction, f.subset_seed)
    # Features of the labelled subset, computed once: the standardisation statistics, and
    # the training stream itself when cache_features.
    cached, cached_labels = encode_source(encoders, pipeline.SubsetSource(source, labelled),
                                          batch_size=config.eval.batch_size)
    mean, std = feature_stats(cached)
    host_variables = encoders.variables

    def init(rng: jax.Array) -> TrainState:
        frozen = {f"encoder_{i}": jax.tree_util.tree_map(jnp.asarray, v)
                  for i, v in enumerate(host_variables)}
        return head.init(rng, mean, std, {"encoders": frozen})

    def frozen_variables(state: TrainState) -> list[dict]:
        return [state.extras["encoders"][f"encoder_{i}"] for i in range(k)]

    def features_of_images(state: TrainState, images: jax.Array) -> list[jax.Array]:
        return encode(encoders, frozen_variables(state), images)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if f.cache_features:
            feats = _features_of(batch, k)
        else:
            feats = features_of_images(state, batch["image"])
        return head.update(state, feats, batch["label"])

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        return head.outputs(state, features_of_images(state, images))["fused"]

    def predict(state: TrainState, images: jax.Array) -> jax.Array:
        return head.outputs(state, features_of_images(state, images))["logits"]

    def calibrate(state: TrainState, images: jax.Array) -> TrainState:
        return state  # no BatchNorm trains here; the encoders' statistics are frozen

    def batches(source, mesh):
        if f.cache_features:
            return FeatureBatches(cached, cached_labels, batch_size=config.batch_size,
                                  seed=config.seed, mesh=mesh)
        return pipeline.TrainBatches(pipeline.SubsetSource(source, labelled),
                                     batch_size=config.batch_size, seed=config.seed, mesh=mesh)

    method = Method(init=init, train_step=train_step, embed=embed, calibrate=calibrate,
                    predict=predict, batches=batches)
    return method, head, encoders, (cached, cached_labels)
