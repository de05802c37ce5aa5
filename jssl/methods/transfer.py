"""The student of cluster-based knowledge transfer (Noroozi et al. 2018, docs/methods.md section 5).

A teacher's features of the whole training set were clustered by k-means
(`jssl.cluster`, run by `jssl.studies.transfer`); each image's cluster index is its
pseudo-label. This method trains a student network from scratch to classify them:

    augmented view of the image -> student backbone -> MLP head -> K cluster logits,
    cross-entropy against the pseudo-label.

The student is its own architecture (`config.model`: e.g. the AlexNet-style backbone),
initialised at random; the teacher is not part of this method at all: the pseudo-labels,
read from `config.transfer.pseudo_labels` (an (N,) integer .npy aligned with the
`config.data.train_split` source), reach the step as `batch["label"]` through
`jssl.data.subsets.PseudoLabelSource`. Evaluation embeds whole images with the student's
backbone alone, as for every other method (k-NN and linear probe on the real labels).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jssl import models
from jssl.augment import augment_view
from jssl.config import compute_dtype, config_group, eval_transform
from jssl.data import pipeline
from jssl.data.subsets import PseudoLabelSource
from jssl.errors import ConfigError
from jssl.methods import puzzle
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    check_view_sizes,
    classifier_update,
    init_state,
    method_of,
    refuse_unread,
    require_group,
    step_key,
)
from jssl.optim import build_optimizer

__all__ = [
    "PRETEXTS",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "update",
    "transfer_config",
    "build",
    "load_pseudo_labels",
    "validate",
]


def _cluster_classification(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean K-way cross-entropy of the cluster logits against the pseudo-labels."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


# loss name -> loss on (logits, pseudo-labels)
PRETEXTS = {"cluster_classification": _cluster_classification}


def transfer_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.transfer` group of the student (configs/transfer.py adds it)."""
    return config_group(
        "transfer_config",
        dict(
            num_clusters=2000,  # k of k-means: the paper's ImageNet setting
            # (N,) int .npy of cluster labels of config.data.train_split, in source order; the
            # study writes it and sets this field for each student run.
            pseudo_labels=config_dict.placeholder(str),
        ),
        overrides,
    )


def load_pseudo_labels(path: str | None, num_examples: int, num_clusters: int) -> np.ndarray:
    """The (N,) int32 pseudo-labels at `path`, checked (ConfigError naming the field)."""
    if not path:
        raise ConfigError(
            "config.transfer.pseudo_labels: no file given; the transfer study "
            "(configs/transfer.py) writes the cluster labels and sets it"
        )
    if not os.path.isfile(path):
        raise ConfigError(
            f"config.transfer.pseudo_labels: {path} does not exist; run the "
            "study's clustering stage first"
        )
    labels = np.load(path, allow_pickle=False)
    if labels.shape != (num_examples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"config.transfer.pseudo_labels: {path} holds {labels.dtype} "
            f"{labels.shape}, need ({num_examples},) integers (one per training "
            "example)"
        )
    if labels.min() < 0 or labels.max() >= num_clusters:
        raise ConfigError(
            f"config.transfer.pseudo_labels: labels in [{labels.min()}, "
            f"{labels.max()}] do not fit transfer.num_clusters={num_clusters}"
        )
    return labels.astype(np.int32)


def validate(config: ml_collections.ConfigDict) -> None:
    require_group(config, "transfer", "jssl.methods.transfer.transfer_config")
    k = config.transfer.num_clusters
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 2):
        raise ConfigError(f"config.transfer.num_clusters: must be an integer >= 2, got {k!r}")
    if config.loss.name not in PRETEXTS:
        raise ConfigError(
            f"config.loss.name: the transfer student's loss is one of "
            f"{', '.join(PRETEXTS)}, got {config.loss.name!r}"
        )
    if config.model.get("init_from"):
        raise ConfigError(
            "config.model.init_from: the student is trained from scratch "
            "(Noroozi et al. 2018); unset it"
        )
    refuse_unread(config, "transfer", puzzle.single_view_unread(config))
    check_view_sizes(config, ("view1",))


# The student is a classification method like the puzzle pretexts: the same static record.
Setup = puzzle.Setup


def setup(config: ml_collections.ConfigDict) -> Setup:
    validate(config)
    m = config.model
    dtype = compute_dtype(config)
    head = models.Projector(
        hidden_dims=tuple(m.projector_hidden_dims),
        out_dim=config.transfer.num_clusters,
        use_bn=m.projector_bn,
        dtype=dtype,
    )
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    return Setup(
        config=config,
        model=models.BackboneHead(backbone=models.backbone_from_config(m, dtype), head=head),
        loss_fn=PRETEXTS[config.loss.name],
        tx=tx,
        schedule=schedule,
        view=config.augment.view1.to_dict(),
        permutations=None,
        transform=eval_transform(config),
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.config.data.image_size
    return init_state(s.model, s.tx, rng, jnp.zeros((2, size, size, 3), jnp.float32))


def make_inputs(s: Setup, state: TrainState, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(the augmented view, the pseudo-labels), the view's keys from (seed, step) only."""
    return augment_view(step_key(state), batch["image"], s.view), batch["label"]


def update(s: Setup, state: TrainState, inputs: tuple) -> tuple[TrainState, dict]:
    x, labels = inputs
    return classifier_update(
        s.model, s.tx, s.schedule, s.loss_fn, state, x, labels, accuracy_name="cluster_accuracy"
    )


def batches(s: Setup, source, mesh):
    """The training stream with each image's pseudo-label as its label."""
    k = s.config.transfer.num_clusters
    labels = load_pseudo_labels(s.config.transfer.pseudo_labels, len(source), k)
    return pipeline.TrainBatches(
        PseudoLabelSource(source, labels, k),
        batch_size=s.config.batch_size,
        seed=s.config.seed,
        mesh=mesh,
    )


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """The student's pure functions for this config."""
    return method_of(
        setup(config), init=init, make_inputs=make_inputs, update=update, batches=batches
    )
