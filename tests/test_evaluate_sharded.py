"""Evaluation with the features left sharded (jssl.evaluate_sharded): the streamed k-NN
equals the gathered one, the SGD probe reaches the L-BFGS probe, and at 1,000,000 x 512
features on 8 devices no program holds more than a device's share plus a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl import config as jc
from jssl import evaluate, parallel, train
from jssl import evaluate_sharded as es
from jssl.data import sources
from tests.shared import copy_run


def _blobs(rng, means, n):
    y = rng.integers(0, len(means), n)
    return (means[y] + rng.standard_normal((n, means.shape[1]))).astype(np.float32), y


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    means = 1.2 * rng.standard_normal((5, 16))
    return [_blobs(rng, means, n) for n in (1003, 301, 517)]  # train, val, test


@pytest.mark.parametrize("devices", [1, 8])
def test_streamed_knn_equals_the_gathered_knn(blobs, devices):
    (xtr, ytr), _, (xte, yte) = blobs
    mesh = parallel.make_mesh(jax.devices()[:devices])
    # Batches that do not divide the splits: padding rows in the last batch of each.
    bank = es.shard_arrays(xtr, ytr, mesh=mesh, batch_size=100)
    queries = es.shard_arrays(xte, yte, mesh=mesh, batch_size=64)
    assert bank.features.sharding.spec == P(None, "data")
    for k in (1, 7, 20, 200):
        got = es.knn_accuracy_sharded(bank, queries, num_classes=5, k=k, temperature=0.1)
        want = evaluate.knn_accuracy(xtr, ytr, xte, yte, num_classes=5, k=k, temperature=0.1)
        assert got == want, (k, got, want)
    f, y = es.gather(bank)
    np.testing.assert_array_equal(f, xtr)
    np.testing.assert_array_equal(y, ytr)
    with pytest.raises(ValueError, match=r"k=1004 must be in \[1, 1003\]"):
        es.knn_accuracy_sharded(bank, queries, num_classes=5, k=1004)


def test_the_sgd_probe_reaches_the_lbfgs_probe(blobs):
    (xtr, ytr), (xva, yva), (xte, yte) = blobs
    mesh = parallel.make_mesh()
    tr, va, te = (es.shard_arrays(x, y, mesh=mesh, batch_size=64) for x, y in blobs)
    decays = (0.0, 1e-3, 1e-1)
    sgd = es.linear_probe_sgd(tr, va, te, num_classes=5, weight_decays=decays, epochs=30)
    lbfgs = evaluate.linear_probe(xtr, ytr, xva, yva, xte, yte, num_classes=5, weight_decays=decays)
    assert abs(sgd["test_accuracy"] - lbfgs["test_accuracy"]) < 0.02, (sgd, lbfgs)
    assert sgd["test_accuracy"] > 0.9
    # Chosen on validation: the reported decay is the first best validation accuracy.
    per_wd = [sgd["val_accuracy_per_wd"][str(w)] for w in decays]
    assert sgd["weight_decay"] == decays[int(np.argmax(per_wd))]
    # A strong decay shrinks the weights: its training accuracy is lower.
    assert sgd["val_accuracy_per_wd"]["0.1"] <= max(per_wd)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        es.linear_probe_sgd(tr, va, te, num_classes=5, epochs=0)
    other = es.shard_arrays(xte[:, :8], yte, mesh=mesh, batch_size=64)
    with pytest.raises(ValueError, match="test features have 8 dimensions"):
        es.linear_probe_sgd(tr, va, other, num_classes=5)


def test_extraction_reads_the_same_examples_as_the_gathered_path():
    """Same rows as `evaluate.extract_features` (a capped split: the same random subset),
    in a seeded order, padding zeroed; here with the identity as the 'encoder'."""
    mesh = parallel.make_mesh()
    src = sources.get_source("mnist_embedded", "validation")
    embed = jax.jit(
        lambda state, images: images.reshape(images.shape[0], -1).astype(jnp.float32),
        in_shardings=(None, parallel.batch_sharding(mesh)),
        out_shardings=parallel.batch_sharding(mesh),
    )
    x, y = evaluate.extract_features(embed, None, src, batch_size=60, mesh=mesh, max_examples=300)
    s = es.extract_sharded(embed, None, src, batch_size=60, mesh=mesh, max_examples=300, seed=3)
    assert s.n == 300 and s.batch_size == 64  # rounded up to the 8 devices
    fs, ys = es.gather(s)
    order, order_s = np.lexsort(x.T), np.lexsort(fs.T)
    np.testing.assert_array_equal(fs[order_s], x[order])
    np.testing.assert_array_equal(ys[order_s], y[order])
    assert not np.array_equal(fs, x)  # shuffled: batches mix the classes
    padding = np.asarray(s.features).reshape(-1, s.dim)[300:]
    assert padding.size and not padding.any()


def test_a_million_features_never_leave_their_devices():
    """N = 1,000,000 x 512 float32 (2 GB) on 8 devices, compiled without data: every
    program's arguments are the device's share of the bank (and of the query split), its
    temporaries at most a query batch against one chunk of the bank: never the bank."""
    mesh = parallel.make_mesh()
    assert mesh.size == 8
    n, dim, batch, classes = 1_000_000, 512, 512, 1000
    sharding = NamedSharding(mesh, P(None, "data"))
    repl = NamedSharding(mesh, P())

    def sds(shape, dtype=jnp.float32, s=repl):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    chunk = es.KNN_CHUNK // (batch // 8)
    k_bank = -(-(-(-n // batch)) // chunk) * chunk
    bank = es.ShardedFeatures(
        sds((k_bank, batch, dim), s=sharding), sds((k_bank, batch), jnp.int32, sharding), n, mesh
    )
    nq = 50_000
    k_query = -(-nq // batch)
    queries = es.ShardedFeatures(
        sds((k_query, batch, dim), s=sharding), sds((k_query, batch), jnp.int32, sharding), nq, mesh
    )
    share = k_bank * batch * dim * 4 // 8  # 250 MB of the 2 GB
    query_share = k_query * batch * dim * 4 // 8
    labels_share = (k_bank + k_query) * batch * 4 // 8
    sims = batch * es.KNN_CHUNK * 4  # one query batch against one chunk: 8 MB

    knn = es.knn_program(bank, queries, num_classes=classes, k=200)
    args = (bank.features, bank.labels, queries.features, queries.labels)
    m = knn.lower(*args, sds((), jnp.int32), sds(())).compile().memory_analysis()
    assert m.argument_size_in_bytes <= share + query_share + labels_share + 64
    assert m.temp_size_in_bytes <= 4 * sims, m.temp_size_in_bytes

    m = es._moments.lower(bank.features, n=n).compile().memory_analysis()
    assert m.argument_size_in_bytes == share
    assert m.temp_size_in_bytes < batch * dim * 4, m.temp_size_in_bytes

    params = 4 * dim * classes * 4  # four weight decays' (D, C) weights, replicated
    fit = es._fit_sgd.lower(
        bank.features,
        bank.labels,
        sds((dim,)),
        sds((dim,)),
        sds((4,)),
        sds(()),
        sds((2,), jnp.uint32),
        n=n,
        num_classes=classes,
        epochs=2,
    )
    m = fit.compile().memory_analysis()
    assert m.argument_size_in_bytes <= share + labels_share + 4 * dim * 2 + 64
    assert m.temp_size_in_bytes <= 4 * params, m.temp_size_in_bytes
    assert 4 * params < share / 5  # the bound above is far below the bank


def test_evaluation_reports_its_path(shared_run, tmp_path):
    """The run's evaluation: "auto" picks L-BFGS for the embedded split; "sgd" runs the
    sharded probe on the same features and lands near it (--mode=eval of the same run)."""
    c, workdir = shared_run("barlow_twins")
    results = train.finished_results(workdir, c)
    assert results["eval"]["linear_path"] == "lbfgs"
    c = jc.from_nested(c.to_dict())
    c.eval.linear_path, c.eval.random_init_baseline, c.plots = "sgd", False, False
    again = train.evaluate_workdir(c, copy_run(workdir, tmp_path / "sgd"))
    assert again["eval"]["linear_path"] == "sgd"
    assert again["eval"]["knn_accuracy"] == results["eval"]["knn_accuracy"]
    assert abs(again["eval"]["linear_accuracy"] - results["eval"]["linear_accuracy"]) < 0.1
    for field, value in (("linear_path", "adam"), ("linear_sgd_epochs", 0), ("linear_sgd_lr", 0)):
        bad = jc.from_nested(c.to_dict())
        bad.eval[field] = value
        with pytest.raises(jc.ConfigError, match=rf"^config\.eval\.{field}: "):
            jc.validate(bad, num_devices=8)
