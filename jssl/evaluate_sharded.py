"""Evaluation whose features stay sharded over the devices and hosts (ImageNet scale).

ResNet-50 features of ImageNet's training set are 1.28M x 2048 float32, 10 GB: more than a
host should gather, twice (trained and random-init encoders). Here the bank never leaves
the devices that computed it:

* `extract_sharded` writes each batch's features into a preallocated (K, B, D) buffer laid
  out `P(None, "data")`: batch k's rows stay on the devices whose `embed_fn` produced them
  (no transfer), the buffer is updated in place (donated), and each process reads only its
  rows of every batch. Rows are read in a seeded random order, so every batch mixes the
  classes (the embedded sets are sorted by class) for the SGD probe below.
* `knn_accuracy_sharded` streams the query batches against the sharded bank: every device
  scores the (all-gathered, small) query batch against its own rows a chunk at a time,
  keeping a running top-k, then the per-device top-k lists are gathered (ndev x B x k) and
  merged. Peak memory on a device: its share of the bank, the query batch and one chunk of
  similarities (`tests/test_evaluate_sharded.py` checks the compiled memory of 1,000,000 x
  512 features on 8 devices).
* `linear_probe_sgd` fits the multinomial logistic regression of `evaluate.linear_probe`
  (standardised features, one fit per weight decay, chosen on validation) by minibatch SGD
  with momentum over the stored batches, the whole fit one `lax.fori_loop` on the devices:
  each step reads one stored batch (already sharded like a training batch) and XLA reduces
  the gradient over the devices.

`shard_map` is used on purpose in the k-NN (docs/design.md): the per-device top-k of the
local rows is the algorithm; a global-array jit would gather the similarities.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl import parallel
from jssl.data.subsets import check_num_classes
from jssl.losses import l2_normalize

__all__ = [
    "ShardedFeatures",
    "extract_sharded",
    "knn_accuracy_sharded",
    "linear_probe_sgd",
    "gather",
    "shard_arrays",
    "split_rows",
    "embed_batches",
    "safe_std",
    "check_weight_decays",
    "select_weight_decay",
    "knn_program",
    "KNN_CHUNK",
    "LBFGS_MAX_BYTES",
]

_AXIS = parallel.DATA_AXIS
# eval.linear_path="auto" fits the L-BFGS probe (gathered, full batch) when the training
# features take at most this many bytes, else the SGD probe over the sharded features.
LBFGS_MAX_BYTES = 1 << 30
# Bank rows a device scores at once in the k-NN: (query batch x KNN_CHUNK) similarities.
KNN_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class ShardedFeatures:
    """Features of a split on the mesh: `features` (K, B, D) float32 and `labels` (K, B)
    int32, both `P(None, "data")` (row r of stored batch k lives on the device that holds
    row r of a (B,) batch); rows k * B + r >= n are padding (zeros, label 0)."""

    features: jax.Array
    labels: jax.Array
    n: int
    mesh: jax.sharding.Mesh

    @property
    def batch_size(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def num_batches(self) -> int:
        return int(self.features.shape[0])


def _spec():
    return P(None, _AXIS)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _store(features, labels, f, y, k, valid):
    """Batch k's features (B, D) and labels (B,) written in place into the buffers, the
    rows from `valid` on (padding, repeating the last example) as zeros."""
    real = jnp.arange(f.shape[0]) < valid
    f = jnp.where(real[:, None], f, 0).astype(features.dtype)
    y = jnp.where(real, y, 0).astype(labels.dtype)
    features = lax.dynamic_update_index_in_dim(features, f, k, 0)
    labels = lax.dynamic_update_index_in_dim(labels, y, k, 0)
    return features, labels


def _buffers(mesh, num_batches: int, batch_size: int, dim: int):
    sharding = NamedSharding(mesh, _spec())
    make = jax.jit(
        lambda: (
            jnp.zeros((num_batches, batch_size, dim), jnp.float32),
            jnp.zeros((num_batches, batch_size), jnp.int32),
        ),
        out_shardings=(sharding, sharding),
    )
    return make()


def extract_sharded(
    embed_fn,
    state,
    source,
    *,
    batch_size: int,
    mesh,
    max_examples: int = 0,
    seed: int = 0,
) -> ShardedFeatures:
    """Frozen features and labels of a split, left sharded on the mesh.

    `embed_fn(state, images) -> (B, D)` is the run's jitted, batch-sharded embedding. The
    rows are read in a random order drawn from `seed` (with `max_examples`, over the random
    subset of that many that `evaluate.extract_features` takes); the batch size is rounded
    up to a multiple of the device count and the number of stored batches up to a multiple
    of the k-NN's chunk (`KNN_CHUNK` rows per device, at most the batches there are);
    padding rows are zeros. Each process reads only the rows its devices hold.
    """
    rows = split_rows(len(source), max_examples)
    n = len(rows)
    rows = rows[np.random.default_rng([seed, 7]).permutation(n)]  # the seeded order
    batch_size = -(-batch_size // mesh.size) * mesh.size
    num_batches = -(-n // batch_size)
    chunk_batches = min(num_batches, max(1, KNN_CHUNK // (batch_size // mesh.size)))
    num_batches = -(-num_batches // chunk_batches) * chunk_batches
    features = labels = None
    batches = embed_batches(embed_fn, state, source, rows, batch_size=batch_size, mesh=mesh)
    for k, (valid, f, y) in enumerate(batches):
        if features is None:
            features, labels = _buffers(mesh, num_batches, batch_size, int(f.shape[1]))
        features, labels = _store(features, labels, f, y, k, valid)
    return ShardedFeatures(features=features, labels=labels, n=n, mesh=mesh)


def split_rows(num_examples: int, max_examples: int = 0) -> np.ndarray:
    """The rows of a split that an evaluation reads, in index order: all of them, or with
    `max_examples` a fixed random subset of that many (not the first rows: splits may be
    sorted by class, as the embedded MNIST is)."""
    n = num_examples if not max_examples else min(num_examples, max_examples)
    if n == num_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(num_examples, n, replace=False))


def embed_batches(embed_fn, state, source, rows: np.ndarray, *, batch_size: int, mesh):
    """(valid, features, labels) for each batch of `rows` of `source`, in order: the
    global (B, D) `embed_fn(state, images)` and (B,) int32 labels, batch-sharded, of which
    the first `valid` rows are real (the last batch is padded by repeating its final
    index). One batch size (rounded up to the devices), so `embed_fn` compiles once; each
    process reads only the rows its devices hold."""
    batch_size = -(-batch_size // mesh.size) * mesh.size
    mine = parallel.process_rows(mesh, batch_size)
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        valid = len(idx)
        idx = np.concatenate([idx, np.full(batch_size - valid, idx[-1])])
        images, y = source.read(idx[mine])
        batch = parallel.to_global({"image": images, "label": y.astype(np.int32)}, mesh)
        yield valid, embed_fn(state, batch["image"]), batch["label"]


def shard_arrays(features, labels, *, mesh, batch_size: int) -> ShardedFeatures:
    """Host arrays (N, D) and (N,) laid out as `extract_sharded` leaves features (in their
    order, no shuffle): for features computed elsewhere, and tests."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    n, d = features.shape
    batch_size = -(-batch_size // mesh.size) * mesh.size
    k = -(-n // batch_size)
    pad = k * batch_size - n
    f = np.concatenate([features, np.zeros((pad, d), np.float32)]).reshape(k, batch_size, d)
    y = np.concatenate([labels, np.zeros(pad, np.int32)]).reshape(k, batch_size)
    sharding = NamedSharding(mesh, _spec())
    put = functools.partial(jax.make_array_from_callback, sharding=sharding)
    return ShardedFeatures(
        features=put(f.shape, data_callback=lambda i: f[i]),
        labels=put(y.shape, data_callback=lambda i: y[i]),
        n=n,
        mesh=mesh,
    )


def gather(x: ShardedFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, D), labels (n,)) on the host: for the sets that fit one host (the
    L-BFGS probe); the bank of an ImageNet run should stay sharded."""
    f = parallel.to_host(x.features).reshape(-1, x.dim)[: x.n]
    y = parallel.to_host(x.labels).reshape(-1)[: x.n]
    return f, y


# --- Weighted k-NN, streamed ---------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _knn_batch_fn(
    mesh, n_bank: int, n_query: int, bank_shape, k: int, num_classes: int, chunk_batches: int
):
    """Correct top-1 predictions (a replicated int32) of query batch i against the bank."""
    ndev = mesh.size
    num_batches, batch, _ = bank_shape
    local_batch = batch // ndev

    def local(bank, bank_labels, queries, query_labels, i, temperature):
        # bank (K, B/ndev, D): this device's rows; queries (Kq, Bq/ndev, D): its rows of
        # every query batch, of which batch i is scored (all-gathered: Bq x D is small).
        mine = lax.dynamic_index_in_dim(queries, i, 0, keepdims=False)
        q = l2_normalize(lax.all_gather(mine, _AXIS, tiled=True).astype(jnp.float32))
        mine_labels = lax.dynamic_index_in_dim(query_labels, i, 0, keepdims=False)
        q_labels = lax.all_gather(mine_labels, _AXIS, tiled=True)
        nq = q.shape[0]
        dev = lax.axis_index(_AXIS)
        groups = num_batches // chunk_batches
        chunks = bank.reshape(groups, chunk_batches, local_batch, -1)
        chunk_labels = bank_labels.reshape(groups, chunk_batches, local_batch)
        # Global row of local element (k, j): k * B + dev * B/ndev + j (padding: >= n).
        base = jnp.arange(num_batches)[:, None] * batch + dev * local_batch
        rows = (base + jnp.arange(local_batch)[None, :]).reshape(groups, -1)

        def step(carry, inputs):
            top, top_labels = carry
            c, cl, r = inputs
            c = l2_normalize(c.reshape(-1, c.shape[-1]).astype(jnp.float32))
            sims = jnp.where((r < n_bank)[None, :], q @ c.T, -jnp.inf)  # (Bq, chunk)
            both = jnp.concatenate([top, sims], axis=1)
            both_labels = jnp.concatenate(
                [top_labels, jnp.broadcast_to(cl.reshape(-1)[None, :], sims.shape)], axis=1
            )
            top, idx = lax.top_k(both, k)
            return (top, jnp.take_along_axis(both_labels, idx, axis=1)), None

        init = (jnp.full((nq, k), -jnp.inf), jnp.zeros((nq, k), jnp.int32))
        (top, top_labels), _ = lax.scan(step, init, (chunks, chunk_labels, rows))
        # Merge the devices' lists: the k best of ndev x k candidates.
        all_top = lax.all_gather(top, _AXIS, axis=1, tiled=True)  # (Bq, ndev * k)
        all_labels = lax.all_gather(top_labels, _AXIS, axis=1, tiled=True)
        best, idx = lax.top_k(all_top, k)
        labels = jnp.take_along_axis(all_labels, idx, axis=1)
        weights = jnp.where(jnp.isfinite(best), jnp.exp(best / temperature), 0.0)
        votes = jnp.zeros((nq, num_classes), jnp.float32)
        votes = votes.at[jnp.arange(nq)[:, None], labels].add(weights)
        real = i * nq + jnp.arange(nq) < n_query
        return jnp.sum((jnp.argmax(votes, axis=1) == q_labels) & real)

    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(_spec(), _spec(), _spec(), _spec(), P(), P()),
        out_specs=P(),
        check_vma=False,
    )
    return jax.jit(fn)


def knn_program(bank: ShardedFeatures, queries: ShardedFeatures, *, num_classes: int, k: int):
    """The jitted per-query-batch program of `knn_accuracy_sharded`: fn(bank.features,
    bank.labels, queries.features, queries.labels, i, temperature) -> the correct count of
    query batch i (what the memory test compiles)."""
    return _knn_batch_fn(
        bank.mesh,
        bank.n,
        queries.n,
        tuple(bank.features.shape),
        int(k),
        int(num_classes),
        _chunk_batches(bank),
    )


def knn_accuracy_sharded(
    bank: ShardedFeatures,
    queries: ShardedFeatures,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the weighted k-NN (`evaluate.knn_predict`'s rule: cosine
    similarity, the k nearest vote with exp(s / temperature)) of every query against the
    sharded bank: the numbers of gathering both, without gathering. One program per query
    batch, the counts summed on the devices, one host read at the end."""
    check_num_classes(num_classes)
    if not 0 < k <= bank.n:
        raise ValueError(f"k={k} must be in [1, {bank.n}] (the bank's examples); lower k")
    if queries.dim != bank.dim:
        raise ValueError(
            f"queries have {queries.dim} feature dimensions, the bank {bank.dim}; extract "
            "both with the same encoder"
        )
    fn = knn_program(bank, queries, num_classes=num_classes, k=k)
    total = jnp.zeros((), jnp.int32)
    t = jnp.float32(temperature)
    for i in range(-(-queries.n // queries.batch_size)):
        total = total + fn(
            bank.features, bank.labels, queries.features, queries.labels, jnp.int32(i), t
        )
    return int(total) / queries.n


def _chunk_batches(bank: ShardedFeatures) -> int:
    """Stored batches per k-NN chunk: the largest divisor of K with at most KNN_CHUNK rows
    per device."""
    per_device = bank.batch_size // bank.mesh.size
    most = max(1, KNN_CHUNK // max(per_device, 1))
    return max(g for g in range(1, min(most, bank.num_batches) + 1) if bank.num_batches % g == 0)


# --- Linear probe by minibatch SGD ---------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("n",))
def _moments(features, n):
    """Mean and std over the real rows (the L-BFGS path's standardisation), two passes
    over the stored batches (no centred copy of the features exists at once)."""
    batch = features.shape[1]
    ks = jnp.arange(features.shape[0])

    def real(k):
        return (k * batch + jnp.arange(batch) < n).astype(jnp.float32)[:, None]

    def first(total, inputs):
        x, k = inputs
        return total + jnp.sum(x * real(k), axis=0), None

    def second(total, inputs):
        x, k = inputs
        return total + jnp.sum(jnp.square(x - mean) * real(k), axis=0), None

    zero = jnp.zeros((features.shape[2],), jnp.float32)
    mean = lax.scan(first, zero, (features, ks))[0] / n
    return mean, safe_std(mean, jnp.sqrt(lax.scan(second, zero, (features, ks))[0] / n))


def safe_std(mean, std):
    """`std` with 1 where a feature is constant (to within 1e-6 of its scale): what the
    linear probes divide by."""
    return jnp.where(std > 1e-6 * jnp.maximum(jnp.abs(mean), 1.0), std, 1.0)


def check_weight_decays(weight_decays) -> tuple[float, ...]:
    """The probes' weight decays as floats; ValueError unless a non-empty list of values
    >= 0."""
    weight_decays = tuple(float(w) for w in weight_decays)
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(
            f"weight_decays must be a non-empty list of values >= 0, got {weight_decays}"
        )
    return weight_decays


def select_weight_decay(acc: dict, weight_decays: Sequence[float]) -> tuple[int, dict]:
    """The probes' choice: `acc` maps "train", "test" and optionally "val" to accuracies
    per weight decay; the decay with the best validation accuracy (on training accuracy
    without "val"; the first on ties) is chosen. Returns (its index, the reported fields:
    val/test/train_accuracy, weight_decay, val_accuracy_per_wd)."""
    select = acc.get("val", acc["train"])
    best = int(np.argmax(select))  # first maximum: ties go to the earlier weight decay
    return best, {
        "val_accuracy": float(select[best]),
        "test_accuracy": float(acc["test"][best]),
        "train_accuracy": float(acc["train"][best]),
        "weight_decay": weight_decays[best],
        "val_accuracy_per_wd": {str(wd): float(a) for wd, a in zip(weight_decays, select)},
    }


@functools.partial(jax.jit, static_argnames=("n", "num_classes", "epochs"))
def _fit_sgd(features, labels, mean, std, weight_decays, lr, key, *, n, num_classes, epochs):
    """One SGD-momentum fit per weight decay (vmapped), epochs x K steps in one loop."""
    num_batches, batch = labels.shape
    steps = epochs * num_batches
    d = features.shape[2]
    nw = weight_decays.shape[0]

    def loss(p, x, y, valid):
        w, b = p
        logits = jnp.einsum("nd,wdc->wnc", x, w) + b[:, None, :]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, jnp.broadcast_to(y[None, :, None], (nw, batch, 1)), 2)
        per_wd = jnp.sum(nll[..., 0] * valid, axis=1) / jnp.maximum(jnp.sum(valid), 1.0)
        return jnp.sum(per_wd + 0.5 * weight_decays * jnp.sum(w * w, axis=(1, 2)))

    def body(i, carry):
        p, v = carry
        epoch, j = i // num_batches, i % num_batches
        order = jax.random.permutation(jax.random.fold_in(key, epoch), num_batches)
        kb = order[j]
        x = (lax.dynamic_index_in_dim(features, kb, 0, keepdims=False) - mean) / std
        y = lax.dynamic_index_in_dim(labels, kb, 0, keepdims=False)
        valid = (kb * batch + jnp.arange(batch) < n).astype(jnp.float32)
        g = jax.grad(loss)(p, x, y, valid)
        rate = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * i / steps))
        v = jax.tree_util.tree_map(lambda vi, gi: 0.9 * vi + gi, v, g)
        p = jax.tree_util.tree_map(lambda pi, vi: pi - rate * vi, p, v)
        return p, v

    p0 = (jnp.zeros((nw, d, num_classes)), jnp.zeros((nw, num_classes)))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p0)
    (w, b), _ = lax.fori_loop(0, steps, body, (p0, zeros))
    return w, b


@functools.partial(jax.jit, static_argnames=("n",))
def _correct_per_wd(features, labels, mean, std, w, b, n):
    """Correct predictions of every fit, (n_wd,), a stored batch at a time (the (N, C)
    logits of a large split never exist at once)."""
    batch = labels.shape[1]

    def count(total, inputs):
        x, y, k = inputs
        logits = jnp.einsum("nd,wdc->wnc", (x - mean) / std, w) + b[:, None, :]
        real = k * batch + jnp.arange(batch) < n
        return total + jnp.sum((jnp.argmax(logits, -1) == y[None]) & real[None], axis=1), None

    ks = jnp.arange(labels.shape[0])
    total, _ = lax.scan(count, jnp.zeros((w.shape[0],), jnp.int32), (features, labels, ks))
    return total


def linear_probe_sgd(
    train: ShardedFeatures,
    val: ShardedFeatures | None,
    test: ShardedFeatures,
    *,
    num_classes: int,
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
    epochs: int = 30,
    lr: float = 0.1,
    seed: int = 0,
) -> dict:
    """`evaluate.linear_probe`'s protocol on sharded features, fitted by minibatch SGD.

    Standardised features (training mean and std over the real rows); for every weight
    decay wd the objective mean CE + wd / 2 ||W||^2 (b not decayed) is minimised by SGD
    with momentum 0.9 over `epochs` passes of the stored batches in a seeded order per
    epoch, learning rate `lr` on a cosine to 0. The weight decay with the best validation
    accuracy (the first on ties; on training accuracy when `val` is None) is reported.
    Returns the keys of `linear_probe` (without "steps_per_wd"), "epochs" and "lr"."""
    check_num_classes(num_classes)
    for name, split in (("val", val), ("test", test)):
        if split is not None and split.dim != train.dim:
            raise ValueError(
                f"{name} features have {split.dim} dimensions, the training ones "
                f"{train.dim}; extract both with the same encoder"
            )
    weight_decays = check_weight_decays(weight_decays)
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    mean, std = _moments(train.features, n=train.n)
    w, b = _fit_sgd(
        train.features,
        train.labels,
        mean,
        std,
        jnp.asarray(weight_decays, jnp.float32),
        jnp.float32(lr),
        jax.random.PRNGKey(seed),
        n=train.n,
        num_classes=int(num_classes),
        epochs=int(epochs),
    )
    splits = {"train": train, "test": test}
    if val is not None:
        splits["val"] = val
    acc = {
        name: np.asarray(_correct_per_wd(s.features, s.labels, mean, std, w, b, n=s.n)) / s.n
        for name, s in splits.items()
    }
    _, out = select_weight_decay(acc, weight_decays)
    return {**out, "epochs": int(epochs), "lr": float(lr)}
