"""The student of cluster-based knowledge transfer (Noroozi et al. 2018, METHODS.md s. 5).

A teacher's features of the whole training set were clustered by k-means
(`jssl.cluster`, run by `jssl.studies.transfer`); each image's cluster index is its
pseudo-label. This method trains a student network from scratch to classify them:

    augmented view of the image -> student backbone -> MLP head -> K cluster logits,
    cross-entropy against the pseudo-label.

The student is its own architecture (`config.model`: e.g. the AlexNet-style backbone),
initialised at random; the teacher is not part of this method at all: the pseudo-labels,
read from `config.transfer.pseudo_labels` (an (N,) integer .npy aligned with the
`config.data.train_split` source), reach the step as `batch["label"]` through
`PseudoLabelSource`. Evaluation embeds whole images with the student's backbone alone,
as for every other method (k-NN and linear probe on the real labels).
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jssl import augment, models
from jssl.data import pipeline
from jssl.methods.common import (DataInfo, Method, TrainState, backbone_from_config,
                                 classifier_update)
from jssl.optim import build_optimizer

__all__ = ["PRETEXTS", "StudentModel", "PseudoLabelSource", "transfer_config", "build",
           "load_pseudo_labels"]


def _cluster_classification(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean K-way cross-entropy of the cluster logits against the pseudo-labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))


# loss name -> loss on (logits, pseudo-labels)
PRETEXTS = {"cluster_classification": _cluster_classification}


def transfer_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.transfer` group of the student (configs/transfer.py adds it)."""
    c = ml_collections.ConfigDict(dict(
        num_clusters=2000,  # k of k-means: the paper's ImageNet setting
        # (N,) int .npy of cluster labels of config.data.train_split, in source order; the
        # study writes it and sets this field for each student run.
        pseudo_labels=config_dict.placeholder(str),
    ))
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"transfer_config: unknown field {key!r}")
        c[key] = value
    return c


class StudentModel(nn.Module):
    """Backbone and MLP head to cluster logits; `features` is the backbone alone."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = self.backbone(x, train=train)
        return h, self.head(h, train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


class PseudoLabelSource:
    """`source` with its labels replaced by `labels` (position i reads source[i] with
    label labels[i]); the images are untouched."""

    def __init__(self, source, labels: np.ndarray, num_classes: int):
        labels = np.asarray(labels)
        if labels.shape != (len(source),):
            raise ValueError(f"pseudo-labels must have shape ({len(source)},), one per example "
                             f"of the training split, got {labels.shape}")
        self.source = source
        self.labels = labels.astype(np.int32)
        self.num_classes = int(num_classes)
        self.name = getattr(source, "name", "source")
        self.split = getattr(source, "split", "")
        self.class_names = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        images, _ = self.source.read(idx)
        return images, self.labels[idx]


def load_pseudo_labels(path: str | None, num_examples: int, num_clusters: int) -> np.ndarray:
    """The (N,) int32 pseudo-labels at `path`, checked (ConfigError naming the field)."""
    from jssl.config import ConfigError

    if not path:
        raise ConfigError("config.transfer.pseudo_labels: no file given; the transfer study "
                          "(configs/transfer.py) writes the cluster labels and sets it")
    if not os.path.isfile(path):
        raise ConfigError(f"config.transfer.pseudo_labels: {path} does not exist; run the "
                          "study's clustering stage first")
    labels = np.load(path, allow_pickle=False)
    if labels.shape != (num_examples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"config.transfer.pseudo_labels: {path} holds {labels.dtype} "
                          f"{labels.shape}, need ({num_examples},) integers (one per training "
                          "example)")
    if labels.min() < 0 or labels.max() >= num_clusters:
        raise ConfigError(f"config.transfer.pseudo_labels: labels in [{labels.min()}, "
                          f"{labels.max()}] do not fit transfer.num_clusters={num_clusters}")
    return labels.astype(np.int32)


def _validate(config: ml_collections.ConfigDict) -> None:
    from jssl.config import ConfigError

    if "transfer" not in config:
        raise ConfigError("config.transfer: missing; transfer configs add it with "
                          "jssl.methods.transfer.transfer_config()")
    k = config.transfer.num_clusters
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 2):
        raise ConfigError(f"config.transfer.num_clusters: must be an integer >= 2, got {k!r}")
    if config.loss.name not in PRETEXTS:
        raise ConfigError(f"config.loss.name: the transfer student's loss is one of "
                          f"{', '.join(PRETEXTS)}, got {config.loss.name!r}")
    if config.model.get("init_from"):
        raise ConfigError("config.model.init_from: the student is trained from scratch "
                          "(Noroozi et al. 2018); unset it")
    if config.model.backbone == "alexnet" and config.data.image_size < 63:
        raise ConfigError(f"config.data.image_size: {config.data.image_size} is too small for "
                          "alexnet (ImageNet stem, 11x11/4 and three 3x3/2 pools); use at "
                          "least 63, or model.backbone='alexnet_cifar'")


def build(config: ml_collections.ConfigDict, data: DataInfo) -> Method:
    """The student's pure functions for this config."""
    _validate(config)
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    m = config.model
    num_clusters = config.transfer.num_clusters
    head = models.Projector(hidden_dims=tuple(m.projector_hidden_dims), out_dim=num_clusters,
                            use_bn=m.projector_bn, dtype=dtype)
    model = StudentModel(backbone=backbone_from_config(config, dtype), head=head)
    loss_fn = PRETEXTS[config.loss.name]
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    size = config.data.image_size
    view = config.augment.view1
    mean, std = tuple(view.mean), tuple(view.std)

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        variables = models.init_variables(model, init_rng, dummy, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=state_rng)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        x = augment.augment_view(key, batch["image"], view)
        labels = batch["label"]
        return classifier_update(model, tx, schedule, loss_fn, state, x, labels,
                                 accuracy_name="cluster_accuracy")

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        h = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                        train=False, method=StudentModel.features)
        return h.astype(jnp.float32)

    def calibrate(state: TrainState, images: jax.Array) -> TrainState:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        _, updates = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                                 train=True, mutable=["batch_stats"],
                                 method=StudentModel.features)
        return state.replace(batch_stats={**state.batch_stats, **updates["batch_stats"]})

    def batches(source, mesh):
        labels = load_pseudo_labels(config.transfer.pseudo_labels, len(source), num_clusters)
        return pipeline.TrainBatches(PseudoLabelSource(source, labels, num_clusters),
                                     batch_size=config.batch_size, seed=config.seed, mesh=mesh)

    return Method(init=init, train_step=train_step, embed=embed, calibrate=calibrate,
                  batches=batches)
