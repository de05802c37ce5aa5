"""Evaluation on frozen features: weighted k-NN, a linear probe, few-label subsets.

docs/methods.md section 6. The protocols are pure, jitted functions on (N, D) feature arrays
(which may be sharded over the mesh's "data" axis); below them, feature extraction from
the data sources and `evaluate_encoder`, which the train loop calls every `eval_every`
steps and at the end. Nothing here is ever selected on the test split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jssl import evaluate_sharded, parallel
from jssl.data import pipeline, sources
from jssl.data.subsets import SubsetSource, check_num_classes, few_label_subset, source_labels
from jssl.losses import l2_normalize

__all__ = [
    "knn_predict",
    "knn_accuracy",
    "knn_accuracies",
    "linear_probe",
    "LinearProbe",
    "linear_probe_logits",
    "standardization",
    "extract_features",
    "encode_source",
    "calibrate_batch_stats",
    "evaluate_encoder",
    "evaluate_classifier",
    "evaluate_online_probe",
    "split_names",
]


# --- Input checks (one line naming the argument) ---------------------------------------


def _check_features(name: str, x, dim: int | None = None) -> tuple[int, int]:
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) feature array, got shape {shape}")
    if dim is not None and shape[1] != dim:
        raise ValueError(
            f"{name} has {shape[1]} feature dimensions but the training features "
            f"have {dim}; extract both with the same encoder"
        )
    return shape


@jax.jit
def _min_max(y):
    return jnp.min(y), jnp.max(y)


def _check_labels(name: str, y, n: int, num_classes: int) -> None:
    shape = np.shape(y)
    if shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one label per feature row, got {shape}")
    dtype = np.dtype(y.dtype) if hasattr(y, "dtype") else np.asarray(y).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {dtype}")
    lo, hi = (int(v) for v in _min_max(jnp.asarray(y)))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must be class ids in [0, {num_classes}), got values in "
            f"[{lo}, {hi}]; check num_classes"
        )


# --- Weighted k-NN (Wu et al. 2018) ----------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_classes", "ks", "chunk_size"))
def _knn_scores(
    train_features, train_labels, query_features, temperature, *, num_classes, ks, chunk_size
):
    """(N_query, len(ks), num_classes) vote sums, one top-max(ks) pass for every k."""
    bank = l2_normalize(jnp.asarray(train_features, jnp.float32))
    labels = jnp.asarray(train_labels, jnp.int32)
    query = l2_normalize(jnp.asarray(query_features, jnp.float32))
    n = query.shape[0]
    pad = (-n) % chunk_size
    chunks = jnp.pad(query, ((0, pad), (0, 0))).reshape(-1, chunk_size, query.shape[1])
    # top_k sorts descending, so the k nearest for a smaller k are a prefix of the max(ks).
    prefix = jnp.arange(max(ks))[None, :] < jnp.asarray(ks)[:, None]  # (len(ks), kmax)

    def vote(idx, weights):  # one query: scatter-add weights into class bins, (C,)
        return jnp.zeros((num_classes,), jnp.float32).at[labels[idx]].add(weights)

    def scores(q):
        sims = q @ bank.T  # (chunk, N_train): the only large intermediate
        top, idx = jax.lax.top_k(sims, max(ks))
        weights = jnp.exp(top / temperature)[:, None, :] * prefix  # (chunk, len(ks), kmax)
        # A scatter, not a (chunk, k, C) one-hot, which is large for k=200 and 1000 classes.
        return jax.vmap(jax.vmap(vote, (None, 0)))(idx, weights)

    return jax.lax.map(scores, chunks).reshape(-1, len(ks), num_classes)[:n]


def _knn_checked(
    train_features, train_labels, query_features, *, num_classes, ks, temperature, chunk_size
):
    check_num_classes(num_classes)
    n_train, dim = _check_features("train_features", train_features)
    n_query, _ = _check_features("query_features", query_features, dim)
    _check_labels("train_labels", train_labels, n_train, num_classes)
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one k, e.g. ks=(20,)")
    for k in ks:
        if not 0 < k <= n_train:
            raise ValueError(
                f"k={k} must be in [1, {n_train}] (the number of training "
                "features); lower k or pass more training features"
            )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = int(min(chunk_size, n_query))  # no padding beyond the queries there are
    return _knn_scores(
        train_features,
        train_labels,
        query_features,
        jnp.float32(temperature),
        num_classes=int(num_classes),
        ks=ks,
        chunk_size=chunk_size,
    )


def knn_predict(
    train_features,
    train_labels,
    query_features,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> jax.Array:
    """Class scores of the weighted k-NN classifier of Wu et al. 2018 (InstDisc).

    Features are L2-normalised; each query's k most cosine-similar training features vote
    for their class with weight exp(similarity / temperature), and the prediction is the
    argmax of the summed votes (the monitor of solo-learn and of MetaMask; k=20 or 200 with
    T=0.07 in the literature, k=5 in MetaMask). Queries are processed `chunk_size` at a time
    (the last chunk padded), so at most chunk_size x N_train similarities exist at once.

    Args:
      train_features: (N_train, D) memory bank. train_labels: (N_train,) ints in
        [0, num_classes). query_features: (N_query, D).
    Returns:
      (N_query, num_classes) float32 summed votes.
    References: Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
      Discrimination", CVPR 2018, https://arxiv.org/abs/1805.01978
    """
    return _knn_checked(
        train_features,
        train_labels,
        query_features,
        num_classes=num_classes,
        ks=(k,),
        temperature=temperature,
        chunk_size=chunk_size,
    )[:, 0]


@jax.jit
def _top1_correct(scores, labels):  # scores (..., N, C) -> correct counts (...)
    return jnp.sum(jnp.argmax(scores, axis=-1) == labels, axis=-1)


def knn_accuracy(
    train_features,
    train_labels,
    query_features,
    query_labels,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of `knn_predict` on labelled queries (query_labels: (N_query,))."""
    return knn_accuracies(
        train_features,
        train_labels,
        query_features,
        query_labels,
        num_classes=num_classes,
        ks=(k,),
        temperature=temperature,
        chunk_size=chunk_size,
    )[int(k)]


def knn_accuracies(
    train_features,
    train_labels,
    query_features,
    query_labels,
    *,
    num_classes: int,
    ks: Sequence[int] = (5, 20, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """{k: top-1 accuracy} of the weighted k-NN for every k in `ks`, from one top-max(ks) pass."""
    check_num_classes(num_classes)
    n_query, _ = _check_features("query_features", query_features)
    _check_labels("query_labels", query_labels, n_query, num_classes)
    scores = _knn_checked(
        train_features,
        train_labels,
        query_features,
        num_classes=num_classes,
        ks=ks,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    correct = _top1_correct(jnp.moveaxis(scores, 1, 0), jnp.asarray(query_labels, jnp.int32))
    return {int(k): int(c) / n_query for k, c in zip(ks, np.asarray(correct))}


# --- Linear probe: multinomial logistic regression, full-batch L-BFGS --------------------


class LinearProbe(NamedTuple):
    """A fitted probe: logits = ((x - mean) / std) @ weights + bias."""

    mean: np.ndarray  # (D,) training-feature mean
    std: np.ndarray  # (D,) training-feature std (1 where a feature is constant)
    weights: np.ndarray  # (D, num_classes)
    bias: np.ndarray  # (num_classes,)


def linear_probe_logits(probe: LinearProbe, x) -> jax.Array:
    """(N, num_classes) logits of a fitted `LinearProbe` on features x (N, D)."""
    return ((jnp.asarray(x, jnp.float32) - probe.mean) / probe.std) @ probe.weights + probe.bias


def standardization(x) -> tuple[jax.Array, jax.Array]:
    """(mean, std) over the rows of (N, D) features, std 1 where a feature is constant (to
    within 1e-6 of its scale): (x - mean) / std is the standardisation of the linear probe
    and of the fusion heads' inputs."""
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=0)
    return mean, evaluate_sharded.safe_std(mean, jnp.std(x, axis=0))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_logistic(x, y, weight_decays, tol, max_steps, *, num_classes):
    """Standardise x, then one L-BFGS fit per weight decay (vmapped).

    Objective per weight decay wd: mean cross-entropy + wd / 2 * ||W||^2, bias not decayed.
    Returns mean (D,), std (D,), W (n_wd, D, C), b (n_wd, C), iterations (n_wd,).
    """
    mean, std = standardization(x)
    x = (jnp.asarray(x, jnp.float32) - mean) / std
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    opt = optax.lbfgs()  # memory 10, optax's zoom (strong Wolfe) line search

    def fit(wd):
        def objective(p):
            w, b = p
            logp = jax.nn.log_softmax(x @ w + b)
            return -jnp.mean(jnp.sum(onehot * logp, axis=1)) + 0.5 * wd * jnp.sum(w * w)

        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            p, s = carry
            value, grad = value_and_grad(p, state=s)
            updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(p, updates), s

        def running(carry):
            _, s = carry
            count = optax.tree.get(s, "count")
            # The line search stores the gradient at the new iterate; at count 0 it is unset.
            grad_norm = optax.tree.norm(optax.tree.get(s, "grad"))
            return (count == 0) | ((count < max_steps) & (grad_norm >= tol))

        p0 = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
        (w, b), s = jax.lax.while_loop(running, step, (p0, opt.init(p0)))
        return w, b, optax.tree.get(s, "count")

    w, b, steps = jax.vmap(fit)(weight_decays)
    return mean, std, w, b, steps


@jax.jit
def _probe_correct(mean, std, w, b, x, y):  # correct counts of every fit, (n_wd,)
    x = (jnp.asarray(x, jnp.float32) - mean) / std
    logits = jnp.einsum("nd,wdc->wnc", x, w) + b[:, None, :]
    return _top1_correct(logits, y)


def linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    test_x,
    test_y,
    *,
    num_classes: int,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
    max_steps: int = 500,
    seed: int = 0,
    tol: float = 1e-6,
    return_probe: bool = False,
) -> dict:
    """Linear probe on frozen features, weight decay chosen on validation (never on test).

    Features are standardised with the training mean and std. For every weight decay wd a
    multinomial logistic regression minimising

        mean_i CE(softmax(W^T x_i + b), y_i) + wd / 2 * ||W||_F^2      (b not decayed)

    is fitted by full-batch L-BFGS (optax.lbfgs with its zoom line search, zero init) until
    the gradient norm falls below `tol` or `max_steps` iterations; the fits are vmapped
    over the weight decays. This is scikit-learn's LogisticRegression(C=1 / (N_train * wd)).
    The weight decay with the best validation accuracy (the first on ties) is reported with
    its train and test accuracies. With val_x and val_y both None the choice is made on
    the TRAINING accuracy, and "val_accuracy" then holds that training accuracy.
    `seed` is accepted for API stability; the fit is deterministic (zero init, full batch).

    Args:
      train_x, val_x, test_x: (N, D) features; train_y, val_y, test_y: (N,) ints in
        [0, num_classes). May be numpy or (sharded) jax arrays.
    Returns:
      {"val_accuracy", "test_accuracy", "train_accuracy", "weight_decay" (python floats),
       "val_accuracy_per_wd": {str(wd): float}, "steps_per_wd": {str(wd): int}}, plus
      "probe": LinearProbe of the chosen fit if `return_probe`.
    """
    del seed
    check_num_classes(num_classes)
    if (val_x is None) != (val_y is None):
        raise ValueError("val_x and val_y must both be given or both be None")
    n_train, dim = _check_features("train_x", train_x)
    _check_labels("train_y", train_y, n_train, num_classes)
    splits = {"train": (train_x, train_y), "test": (test_x, test_y)}
    if val_x is not None:
        splits["val"] = (val_x, val_y)
    for name, (x, y) in splits.items():
        n, _ = _check_features(f"{name}_x", x, dim)
        _check_labels(f"{name}_y", y, n, num_classes)
    weight_decays = evaluate_sharded.check_weight_decays(weight_decays)
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")

    mean, std, w, b, steps = _fit_logistic(
        train_x,
        jnp.asarray(train_y, jnp.int32),
        jnp.asarray(weight_decays, jnp.float32),
        jnp.float32(tol),
        jnp.int32(max_steps),
        num_classes=int(num_classes),
    )
    acc = {
        name: np.asarray(_probe_correct(mean, std, w, b, x, jnp.asarray(y, jnp.int32)))
        / np.shape(y)[0]
        for name, (x, y) in splits.items()
    }
    best, out = evaluate_sharded.select_weight_decay(acc, weight_decays)
    out["steps_per_wd"] = {str(wd): int(s) for wd, s in zip(weight_decays, np.asarray(steps))}
    if return_probe:
        out["probe"] = LinearProbe(
            np.asarray(mean), np.asarray(std), np.asarray(w[best]), np.asarray(b[best])
        )
    return out


# --- Evaluating an encoder of the train loop (features from the data sources) ---------


def extract_features(
    embed_fn, state, source, *, batch_size: int, mesh, max_examples: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features and labels of a whole split, in order (with `max_examples`, of a
    fixed random subset of that many examples, in order).

    Batches have one fixed size (the last one padded by repeating its final index, the
    padding dropped afterwards), so `embed_fn` compiles once; each process reads only the
    rows of each batch that its devices hold, and every process gets all features.
    """
    rows = evaluate_sharded.split_rows(len(source), max_examples)
    features, labels = [], []
    for valid, f, y in evaluate_sharded.embed_batches(
        embed_fn, state, source, rows, batch_size=batch_size, mesh=mesh
    ):
        features.append(parallel.to_host(f)[:valid])
        labels.append(parallel.to_host(y)[:valid])
    return np.concatenate(features), np.concatenate(labels)


def encode_source(
    modules: Sequence, variables: Sequence, source, *, batch_size: int, mesh
) -> tuple[list[np.ndarray], np.ndarray]:
    """Features of every example of `source` by every encoder (`modules[k].apply(
    variables[k], images, train=False)`: frozen, evaluation mode), as host arrays in source
    order, and the labels. The batches are sharded over `mesh` (the run's)."""
    feats, labels = [], None
    for module, v in zip(modules, variables):
        x, labels = extract_features(
            _sharded_apply(module, mesh), v, source, batch_size=batch_size, mesh=mesh
        )
        feats.append(x)
    return feats, labels


@functools.lru_cache(maxsize=16)
def _sharded_apply(module, mesh):
    """One jitted evaluation-mode forward per (encoder architecture, mesh): modules are
    hashable by their fields, so restoring the same architecture again compiles nothing."""
    return jax.jit(
        lambda variables, x: module.apply(variables, x, train=False),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.batch_sharding(mesh),
    )


def calibrate_batch_stats(method, state, source, config, mesh, *, num_batches: int = 20):
    """Re-estimate BatchNorm running statistics with train-mode forward passes (no gradients).

    A randomly initialised network's running statistics (mean 0, variance 1) do not match
    its activations; evaluating it with them would make the random-init baseline weaker
    than it is. With momentum 0.9, 20 batches leave 0.9**20 = 12% of the initial values.
    """
    calib = parallel.jit(
        method.calibrate,
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )
    batches = pipeline.TrainBatches(
        source, batch_size=config.batch_size, seed=config.seed + 1, mesh=mesh
    )
    for batch in batches(0, num_batches):
        state = calib(state, batch["image"])
    return state


def split_source(config, split: str, role: str = ""):
    """The source of an evaluation split; in the "val" role, reduced to a seeded,
    class-balanced `eval.val_fraction` of it (`eval.val_subset_seed`) when that is < 1."""
    src = sources.config_source(config, split)
    ev = config.eval
    fraction = float(ev.get("val_fraction", 1.0))
    if role != "val" or fraction >= 1.0:
        return src
    rows = few_label_subset(
        source_labels(src),
        fraction,
        seed=int(ev.get("val_subset_seed", 0)),
        num_classes=src.num_classes,
    )
    return SubsetSource(src, rows)


def evaluate_encoder(method, embed_fn, state, config, mesh) -> dict:
    """k-NN and linear-probe accuracy of the frozen encoder on the config's eval splits.

    Features of `config.eval.train_split` are the k-NN memory bank and the probe's training
    set; the probe's weight decay is chosen on `config.eval.val_split`; accuracies are
    reported on `config.eval.test_split` ("knn_val_accuracy": the k-NN on the validation
    split, for model selection). Nothing is selected on test. The features stay
    sharded over the devices (`jssl.evaluate_sharded`): the k-NN streams the test batches
    against the sharded bank; the probe is the L-BFGS fit of `linear_probe` on gathered
    features or minibatch SGD on the sharded ones (`eval.linear_path`; "auto": L-BFGS while
    the training features fit `evaluate_sharded.LBFGS_MAX_BYTES`), reported as
    "linear_path".
    """
    ev = config.eval
    feats = {}
    for key, split in (("train", ev.train_split), ("val", ev.val_split), ("test", ev.test_split)):
        src = split_source(config, split, key)
        feats[key] = evaluate_sharded.extract_sharded(
            embed_fn,
            state,
            src,
            batch_size=ev.batch_size,
            mesh=mesh,
            max_examples=ev.max_examples,
            seed=config.seed,
        )
    num_classes = src.num_classes
    train, val, test = feats["train"], feats["val"], feats["test"]
    knn = functools.partial(
        evaluate_sharded.knn_accuracy_sharded,
        train,
        num_classes=num_classes,
        k=min(ev.knn_k, train.n),
        temperature=ev.knn_temperature,
    )
    out = {
        "knn_accuracy": knn(test),
        # The same k-NN on the validation split: what studies select hyperparameters on.
        "knn_val_accuracy": knn(val),
        "knn_k": ev.knn_k,
    }
    path = ev.linear_path
    if path == "auto":
        small = train.n * train.dim * 4 <= evaluate_sharded.LBFGS_MAX_BYTES
        path = "lbfgs" if small else "sgd"
    if path == "lbfgs":
        probe = linear_probe(
            *evaluate_sharded.gather(train),
            *evaluate_sharded.gather(val),
            *evaluate_sharded.gather(test),
            num_classes=num_classes,
            weight_decays=tuple(ev.linear_weight_decays),
            max_steps=ev.linear_max_steps,
            seed=config.seed,
        )
    else:
        probe = evaluate_sharded.linear_probe_sgd(
            train,
            val,
            test,
            num_classes=num_classes,
            weight_decays=tuple(ev.linear_weight_decays),
            epochs=ev.linear_sgd_epochs,
            lr=ev.linear_sgd_lr,
            seed=config.seed,
        )
    out["linear_accuracy"] = float(probe["test_accuracy"])
    out["linear_val_accuracy"] = float(probe["val_accuracy"])
    out["linear_weight_decay"] = float(probe["weight_decay"])
    out["linear_path"] = path
    out["num_train"], out["num_test"] = train.n, test.n
    return out


def evaluate_classifier(
    predict_fn,
    state,
    config,
    mesh,
    *,
    names: tuple[str | None, str] = ("classifier_val_accuracy", "classifier_accuracy"),
) -> dict:
    """Accuracy of a classifier (`predict_fn(state, images) -> logits`) on the config's
    validation and test splits, under `names` (val, test): the validation figure is for
    model selection, the test figure is reported, never selected on. A val name of None
    skips the validation split."""
    ev, out = config.eval, {}
    for key, split, role in zip(names, (ev.val_split, ev.test_split), ("val", "test")):
        if key is None:
            continue
        src = split_source(config, split, role)
        logits, labels = extract_features(
            predict_fn,
            state,
            src,
            batch_size=ev.batch_size,
            mesh=mesh,
            max_examples=ev.max_examples,
        )
        out[key] = float(np.mean(np.argmax(logits, axis=1) == labels))
    return out


def split_names(split: str) -> set[str]:
    """The named splits a TFDS-style split string reads ("train+validation[:50%]" ->
    {"train", "validation"})."""
    return {part.split("[")[0].strip() for part in split.split("+")}


def evaluate_online_probe(probe_fn, state, config, mesh) -> dict:
    """The online linear probe's accuracy: "online/linear_acc" on the test split (the
    figure solo-learn's tables report, on ImageNet's validation set, which is jssl's test
    split) and "online/linear_val_acc" on the validation split, unless the pretraining split
    (`data.train_split`) includes it: the probe then trained on those labels and the figure
    would say nothing (the embedded default pretrains on train+validation)."""
    seen = split_names(config.eval.val_split) & split_names(config.data.train_split)
    names = (None if seen else "online/linear_val_acc", "online/linear_acc")
    return evaluate_classifier(probe_fn, state, config, mesh, names=names)
