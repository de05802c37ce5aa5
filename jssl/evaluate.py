"""Evaluation on frozen features: weighted k-NN and a linear probe (METHODS.md section 6).

The protocols are pure functions on (N, D) feature arrays (top of the file); below them,
feature extraction from the data sources and `evaluate_encoder`, which the train loop
calls every `eval_every` steps and at the end.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["knn_predict", "knn_accuracy", "linear_probe", "few_label_subset",
           "extract_features", "calibrate_batch_stats", "evaluate_encoder"]


def _normalize(x):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def _knn_scores(train_features, train_labels, query_features, temperature, *, num_classes, k,
                chunk_size):
    bank = _normalize(train_features)
    labels = jnp.asarray(train_labels, jnp.int32)
    query = _normalize(query_features)
    n = query.shape[0]
    pad = (-n) % chunk_size
    chunks = jnp.pad(query, ((0, pad), (0, 0))).reshape(-1, chunk_size, query.shape[1])

    def scores(q):
        sims = q @ bank.T  # (chunk, N_train): the only large intermediate
        top, idx = jax.lax.top_k(sims, k)
        weights = jnp.exp(top / temperature)
        votes = jax.nn.one_hot(labels[idx], num_classes, dtype=jnp.float32)
        return jnp.sum(weights[..., None] * votes, axis=1)

    return jax.lax.map(scores, chunks).reshape(-1, num_classes)[:n]


def knn_predict(train_features, train_labels, query_features, *, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 1024) -> jax.Array:
    """Class scores (N_query, num_classes) of the weighted k-NN of Wu et al. 2018 (InstDisc).

    Features are L2-normalised; each query's k most cosine-similar training features vote
    for their class with weight exp(similarity / temperature) (solo-learn's and MetaMask's
    monitor). Queries are processed `chunk_size` at a time, so at most
    chunk_size x N_train similarities exist at once.
    """
    n_train = np.shape(train_features)[0]
    if not 0 < k <= n_train:
        raise ValueError(f"k={k} must be in [1, {n_train}] (the number of training features)")
    chunk_size = int(min(chunk_size, max(1, np.shape(query_features)[0])))
    return _knn_scores(train_features, train_labels, query_features, temperature,
                       num_classes=num_classes, k=k, chunk_size=chunk_size)


def knn_accuracy(train_features, train_labels, query_features, query_labels, *,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 1024) -> float:
    """Top-1 accuracy of `knn_predict` on labelled queries."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes=num_classes,
                         k=k, temperature=temperature, chunk_size=chunk_size)
    return float(np.mean(np.asarray(jnp.argmax(scores, axis=1)) == np.asarray(query_labels)))


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit_logistic(x, y, weight_decays, *, num_classes, max_steps):
    """Multinomial logistic regression, one fit per weight decay (vmapped), L-BFGS.

    Objective: mean cross-entropy + weight_decay / 2 * ||W||^2 (the bias is not decayed).
    """
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)

    def fit(wd):
        def objective(p):
            w, b = p
            logp = jax.nn.log_softmax(x @ w + b)
            return -jnp.mean(jnp.sum(onehot * logp, axis=1)) + 0.5 * wd * jnp.sum(w * w)

        params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry, _):
            p, s = carry
            value, grad = value_and_grad(p, state=s)
            updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=objective)
            return (optax.apply_updates(p, updates), s), value

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=max_steps)
        return params

    return jax.vmap(fit)(weight_decays)


def _correct(params, x, y):
    w, b = params
    return jnp.sum(jnp.argmax(x @ w + b, axis=1) == y)


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, *, num_classes: int,
                 weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
                 max_steps: int = 500, seed: int = 0) -> dict:
    """Linear probe on frozen features, weight decay chosen on validation (never on test).

    Features are standardised with the training mean and std; one multinomial logistic
    regression per weight decay is fitted with full-batch L-BFGS (`max_steps` iterations);
    the weight decay with the best validation accuracy is reported with its test accuracy.
    Without validation data (val_x None) the choice is made on the training accuracy.
    `seed` is accepted for API stability; the fit is deterministic (zero init, full batch).
    """
    del seed
    train_x = np.asarray(train_x, np.float32)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    prep = lambda a: jnp.asarray((np.asarray(a, np.float32) - mean) / std)  # noqa: E731
    xtr, ytr = prep(train_x), jnp.asarray(train_y, jnp.int32)
    wds = jnp.asarray(weight_decays, jnp.float32)
    fits = _fit_logistic(xtr, ytr, wds, num_classes=num_classes, max_steps=max_steps)
    def per(x, y):  # accuracy of every fit, counted exactly
        correct = jax.vmap(_correct, (0, None, None))(fits, prep(x), jnp.asarray(y, jnp.int32))
        return np.asarray(correct, np.float64) / len(y)

    train_acc = per(train_x, train_y)
    val_acc = per(val_x, val_y) if val_x is not None else train_acc
    test_acc = per(test_x, test_y)
    best = int(np.argmax(val_acc))
    return {"val_accuracy": float(val_acc[best]), "test_accuracy": float(test_acc[best]),
            "train_accuracy": float(train_acc[best]), "weight_decay": float(weight_decays[best]),
            "val_accuracy_per_wd": {str(w): float(a) for w, a in zip(weight_decays, val_acc)}}


def few_label_subset(labels, fraction: float, *, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced `fraction` of `labels` (>= 1 per class).

    Each class contributes round(fraction * its count) examples (at least one), drawn
    without replacement with numpy's generator seeded by `seed`.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# --- Evaluating an encoder of the train loop (features from the data sources) ---------


def extract_features(embed_fn, state, source, *, batch_size: int, mesh,
                     max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features and labels of a whole split, in order.

    Batches have one fixed size (the last one padded by repeating its final index, the
    padding dropped afterwards), so `embed_fn` compiles once; each process reads only its
    slice of each batch.
    """
    from jssl import parallel  # layer 6 helper; imported here to keep this module light

    n = len(source) if not max_examples else min(len(source), max_examples)
    devices, processes = mesh.size, jax.process_count()
    batch_size = -(-batch_size // devices) * devices
    per_process = batch_size // processes
    features, labels = [], []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = len(idx)
        idx = np.concatenate([idx, np.full(batch_size - valid, idx[-1])])
        mine = idx[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
        images, y = source.read(mine)
        batch = parallel.to_global({"image": images, "label": y.astype(np.int32)}, mesh)
        f = embed_fn(state, batch["image"])
        features.append(parallel.to_host(f)[:valid])
        labels.append(parallel.to_host(batch["label"])[:valid])
    return np.concatenate(features), np.concatenate(labels)


def calibrate_batch_stats(method, state, source, config, mesh, *, num_batches: int = 20):
    """Re-estimate BatchNorm running statistics with train-mode forward passes (no gradients).

    A randomly initialised network's running statistics (mean 0, variance 1) do not match
    its activations; evaluating it with them would make the random-init baseline weaker
    than it is. With momentum 0.9, 20 batches leave 0.9**20 = 12% of the initial values.
    """
    from jssl import parallel
    from jssl.data import pipeline

    calib = jax.jit(method.calibrate, in_shardings=(parallel.replicated(mesh),
                                                     parallel.batch_sharding(mesh)),
                    out_shardings=parallel.replicated(mesh))
    batches = pipeline.TrainBatches(source, batch_size=config.batch_size,
                                    seed=config.seed + 1, mesh=mesh)
    for batch in batches(0, num_batches):
        state = calib(state, batch["image"])
    return state


def evaluate_encoder(method, embed_fn, state, config, mesh) -> dict:
    """k-NN and linear-probe accuracy of the frozen encoder on the config's eval splits.

    Features of `config.eval.train_split` are the k-NN memory bank and the probe's training
    set; the probe's weight decay is chosen on `config.eval.val_split`; accuracies are
    reported on `config.eval.test_split`. Nothing is selected on test.
    """
    from jssl.data import sources

    ev, name, data_dir = config.eval, config.data.name, config.data.data_dir
    feats = {}
    for key, split in (("train", ev.train_split), ("val", ev.val_split), ("test", ev.test_split)):
        src = sources.get_source(name, split, data_dir=data_dir)
        feats[key] = extract_features(embed_fn, state, src, batch_size=ev.batch_size, mesh=mesh,
                                      max_examples=ev.max_examples)
    num_classes = src.num_classes
    (xtr, ytr), (xva, yva), (xte, yte) = feats["train"], feats["val"], feats["test"]
    out = {"knn_accuracy": float(knn_accuracy(xtr, ytr, xte, yte, num_classes=num_classes,
                                              k=min(ev.knn_k, len(xtr)),
                                              temperature=ev.knn_temperature)),
           "knn_k": ev.knn_k}
    probe = linear_probe(xtr, ytr, xva, yva, xte, yte, num_classes=num_classes,
                         weight_decays=tuple(ev.linear_weight_decays),
                         max_steps=ev.linear_max_steps, seed=config.seed)
    out["linear_accuracy"] = float(probe["test_accuracy"])
    out["linear_val_accuracy"] = float(probe["val_accuracy"])
    out["linear_weight_decay"] = float(probe["weight_decay"])
    out["num_train"], out["num_test"] = int(len(xtr)), int(len(xte))
    return out
