"""Evaluation protocols against independent references (NumPy k-NN, scikit-learn).

The linear-probe tests share one problem size (200 x 10 training features, 3 classes, two
weight decays) so the L-BFGS program compiles once unsharded and once sharded.
"""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl import evaluate
from jssl.data.subsets import few_label_subset

N_TRAIN, N_VAL, N_TEST, DIM, CLASSES = 200, 48, 56, 10, 3  # all divisible by 8 devices


def knn_reference(train, train_y, query, num_classes, k, temperature):
    """Query by query, in float64, from the definition (Wu et al. 2018)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    scores = np.zeros((len(query), num_classes))
    for q in range(len(query)):
        sims = train @ query[q]
        for idx in np.argsort(-sims)[:k]:
            scores[q, train_y[idx]] += np.exp(sims[idx] / temperature)
    return scores


def knn_data(seed=0, num_classes=4):
    rng = np.random.default_rng(seed)
    train, query = rng.normal(size=(60, 8)), rng.normal(size=(45, 8))
    return train, rng.integers(0, num_classes, size=60), query, rng.integers(0, num_classes, 45)


def min_topk_gap(train, query, k):
    """Smallest gap between the k-th and (k+1)-th similarity: > 0 means no ties at the cut."""
    sims = np.sort(
        (query / np.linalg.norm(query, axis=1, keepdims=True))
        @ (train / np.linalg.norm(train, axis=1, keepdims=True)).T,
        axis=1,
    )[:, ::-1]
    return np.min(sims[:, k - 1] - sims[:, k])


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("chunk_size", [7, 15, 1024])  # 7 does not divide 45; 1024 > 45
def test_knn_matches_reference(k, chunk_size):
    train, train_y, query, _ = knn_data()
    assert min_topk_gap(train, query, k) > 1e-5  # float32 and float64 pick the same neighbours
    got = evaluate.knn_predict(
        train.astype(np.float32),
        train_y,
        query.astype(np.float32),
        num_classes=4,
        k=k,
        temperature=0.07,
        chunk_size=chunk_size,
    )
    want = knn_reference(train, train_y, query, 4, k, 0.07)
    assert got.shape == (45, 4)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    np.testing.assert_array_equal(np.argmax(got, 1), np.argmax(want, 1))


def test_knn_accuracies_one_pass_equals_each_k():
    train, train_y, query, query_y = knn_data(1)
    train32, query32 = train.astype(np.float32), query.astype(np.float32)
    got = evaluate.knn_accuracies(
        train32,
        train_y,
        query32,
        query_y,
        num_classes=4,
        ks=(1, 5, 20),
        temperature=0.07,
        chunk_size=16,
    )
    assert set(got) == {1, 5, 20}
    for k in (1, 5, 20):
        want = np.mean(np.argmax(knn_reference(train, train_y, query, 4, k, 0.07), 1) == query_y)
        assert got[k] == pytest.approx(want, abs=1e-12)
        assert (
            evaluate.knn_accuracy(
                train32, train_y, query32, query_y, num_classes=4, k=k, temperature=0.07
            )
            == got[k]
        )
    assert len(set(got.values())) > 1  # the k really differ on this data


def test_knn_hand_made_and_temperature():
    # Class 0 near 0 degrees, class 1 near 90 degrees; the query lies at 30 degrees.
    angles = np.deg2rad([0.0, 12.0, 90.0, 78.0, 84.0])
    lengths = np.array([[1.0], [2.0], [1.0], [3.0], [1.0]])  # only directions matter
    train = (np.stack([np.cos(angles), np.sin(angles)], 1) * lengths).astype(np.float32)
    y = np.array([0, 0, 1, 1, 1])
    q = np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], np.float32) * 5
    # k=2, T=0.1: the two class-0 points at 30 and 18 degrees from the query vote.
    got = evaluate.knn_predict(train, y, q, num_classes=2, k=2, temperature=0.1)
    want = np.exp(np.cos(np.deg2rad(30)) / 0.1) + np.exp(np.cos(np.deg2rad(18)) / 0.1)
    np.testing.assert_allclose(got, [[want, 0.0]], rtol=1e-5)
    acc = evaluate.knn_accuracy(train, y, q, np.array([0]), num_classes=2, k=5, temperature=0.07)
    assert acc == 1.0
    # A huge temperature makes every weight ~1: a plain majority vote, which class 1 wins 3-2.
    acc = evaluate.knn_accuracy(train, y, q, np.array([1]), num_classes=2, k=5, temperature=1e6)
    assert acc == 1.0


def test_knn_large_temperature_is_majority_vote():
    rng = np.random.default_rng(4)
    train = rng.normal(size=(80, 6)).astype(np.float32)
    query = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 2, size=80)  # two classes and odd k: the vote counts never tie
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    for k in (5, 21):
        neighbours = np.argsort(-(qn @ tn.T), axis=1)[:, :k]
        majority = (y[neighbours].sum(1) * 2 > k).astype(int)
        big = evaluate.knn_predict(train, y, query, num_classes=2, k=k, temperature=1e3)
        np.testing.assert_array_equal(np.argmax(big, 1), majority)
        small = evaluate.knn_predict(train, y, query, num_classes=2, k=k, temperature=0.07)
        assert np.any(np.argmax(small, 1) != majority)  # the weighting matters at T=0.07


def test_knn_rejects_bad_input():
    train, train_y, query, query_y = knn_data()
    with pytest.raises(ValueError, match="k=61"):
        evaluate.knn_predict(train, train_y, query, num_classes=4, k=61)
    with pytest.raises(ValueError, match="query_features"):
        evaluate.knn_predict(train, train_y, query[:, :5], num_classes=4, k=5)
    with pytest.raises(ValueError, match="train_labels"):
        evaluate.knn_predict(train, train_y, query, num_classes=3, k=5)  # labels reach 3
    with pytest.raises(ValueError, match="train_labels"):
        evaluate.knn_predict(train, train_y[:-1], query, num_classes=4, k=5)
    with pytest.raises(ValueError, match="query_labels"):
        evaluate.knn_accuracy(train, train_y, query, query_y.astype(float), num_classes=4, k=5)


def probe_data(seed, scale=1.0):
    """Three overlapping Gaussian classes with features on very different scales."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VAL + N_TEST
    y = rng.integers(0, CLASSES, size=n)
    x = rng.normal(size=(CLASSES, DIM))[y] * scale + rng.normal(size=(n, DIM))
    x = (x * np.logspace(-2, 3, DIM) + 7.0).astype(np.float32)  # standardisation matters
    cut = np.cumsum([N_TRAIN, N_VAL])
    return list(zip(np.split(x, cut), np.split(y, cut)))


def test_linear_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    (xtr, ytr), _, (xte, yte) = probe_data(1, scale=0.5)
    wds = (1e-3, 3e-1)
    got = evaluate.linear_probe(
        xtr,
        ytr,
        None,
        None,
        xte,
        yte,
        num_classes=CLASSES,
        weight_decays=wds,
        max_steps=500,
        tol=1e-7,
        return_probe=True,
    )
    probe = got["probe"]
    mean, std = xtr.astype(np.float64).mean(0), xtr.astype(np.float64).std(0)
    np.testing.assert_allclose(probe.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(probe.std, std, rtol=1e-4)
    # Ours: (1/N) sum_i CE + wd/2 ||W||^2. scikit-learn (lbfgs): C sum_i CE + 1/2 ||W||^2,
    # bias not penalised. Ours divided by wd (same minimiser) is scikit-learn's objective
    # with C = 1 / (N * wd).
    ref = {
        wd: LogisticRegression(C=1.0 / (N_TRAIN * wd), max_iter=10_000, tol=1e-12).fit(
            (xtr - mean) / std, ytr
        )
        for wd in wds
    }
    train_scores = {wd: ref[wd].score((xtr - mean) / std, ytr) for wd in wds}
    # Without validation data the choice is made on training accuracy.
    want = {str(wd): score for wd, score in train_scores.items()}
    assert got["val_accuracy_per_wd"] == pytest.approx(want)
    chosen = got["weight_decay"]
    assert chosen == 3e-1 and train_scores[3e-1] > train_scores[1e-3]
    assert got["test_accuracy"] == ref[chosen].score((xte - mean) / std, yte)
    assert got["train_accuracy"] == got["val_accuracy"] == train_scores[chosen] < 1.0
    np.testing.assert_allclose(probe.weights.T, ref[chosen].coef_, atol=1e-4)
    # The bias is determined up to a constant shift (softmax); compare centred.
    np.testing.assert_allclose(
        probe.bias - probe.bias.mean(),
        ref[chosen].intercept_ - ref[chosen].intercept_.mean(),
        atol=2e-4,
    )
    probs = jax.nn.softmax(evaluate.linear_probe_logits(probe, xte))
    np.testing.assert_allclose(probs, ref[chosen].predict_proba((xte - mean) / std), atol=1e-4)
    assert max(got["steps_per_wd"].values()) < 500  # stopped on the gradient tolerance


def test_linear_probe_separable_data():
    (xtr, ytr), (xva, yva), (xte, yte) = probe_data(2, scale=8.0)
    r = evaluate.linear_probe(
        xtr, ytr, xva, yva, xte, yte, num_classes=CLASSES, weight_decays=(0.0, 1e-3), max_steps=100
    )
    assert r["train_accuracy"] == r["val_accuracy"] == r["test_accuracy"] == 1.0
    assert all(
        isinstance(r[key], float)
        for key in ("val_accuracy", "test_accuracy", "train_accuracy", "weight_decay")
    )


def test_linear_probe_selects_on_validation_never_on_test():
    (xtr, ytr), (xva, _), (xte, yte) = probe_data(3, scale=3.0)
    ytr = np.where(np.arange(N_TRAIN) < N_TRAIN // 2, 0, ytr)  # class 0 is the majority
    # A huge weight decay leaves W ~ 0: the probe predicts the majority class 0 everywhere.
    # Validation labels that only that probe matches: best on validation is wd=1e3, best
    # on test is wd=0.
    wds = (0.0, 1e3)
    r = evaluate.linear_probe(
        xtr,
        ytr,
        xva,
        np.zeros(N_VAL, int),
        xte,
        yte,
        num_classes=CLASSES,
        weight_decays=wds,
        max_steps=200,
    )
    on_test = evaluate.linear_probe(
        xtr, ytr, xte, yte, xte, yte, num_classes=CLASSES, weight_decays=wds, max_steps=200
    )["val_accuracy_per_wd"]
    assert max(on_test, key=on_test.get) == "0.0"
    assert r["val_accuracy_per_wd"]["1000.0"] == 1.0 > r["val_accuracy_per_wd"]["0.0"]
    assert r["weight_decay"] == 1e3 and r["val_accuracy"] == 1.0
    assert r["test_accuracy"] == on_test["1000.0"] == np.mean(yte == 0) < on_test["0.0"]


def test_linear_probe_rejects_bad_input():
    (xtr, ytr), (xva, yva), (xte, yte) = probe_data(1)
    kw = {"num_classes": CLASSES, "weight_decays": (0.0,)}
    with pytest.raises(ValueError, match="train_y"):
        evaluate.linear_probe(xtr, ytr[:-1], xva, yva, xte, yte, **kw)
    with pytest.raises(ValueError, match="val_x and val_y"):
        evaluate.linear_probe(xtr, ytr, None, yva, xte, yte, **kw)
    with pytest.raises(ValueError, match="test_x"):
        evaluate.linear_probe(xtr, ytr, xva, yva, xte[:, :4], yte, **kw)
    with pytest.raises(ValueError, match="test_y"):
        evaluate.linear_probe(xtr, ytr, xva, yva, xte, yte + 1, **kw)
    with pytest.raises(ValueError, match="train_x"):
        evaluate.linear_probe(xtr[0], ytr, xva, yva, xte, yte, **kw)
    with pytest.raises(ValueError, match="weight_decays"):
        evaluate.linear_probe(
            xtr, ytr, xva, yva, xte, yte, num_classes=CLASSES, weight_decays=(-1.0,)
        )


def test_few_label_subset():
    counts = [100, 50, 20, 10, 3, 0]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), counts))
    a = few_label_subset(labels, 0.1, seed=0, num_classes=6)
    assert np.array_equal(a, few_label_subset(labels, 0.1, seed=0, num_classes=6))
    assert not np.array_equal(a, few_label_subset(labels, 0.1, seed=1, num_classes=6))
    assert np.all(np.diff(a) > 0)  # sorted, no repeats
    # round(0.1 * count), at least one per class present; the absent class 5 gives none.
    assert np.bincount(labels[a], minlength=6).tolist() == [10, 5, 2, 1, 1, 0]
    np.testing.assert_array_equal(
        few_label_subset(labels, 1.0, seed=3, num_classes=6), np.arange(len(labels))
    )
    # Within a class every member can be drawn: the draw is random, not the first members.
    draws = np.concatenate(
        [few_label_subset(labels, 0.1, seed=s, num_classes=6) for s in range(20)]
    )
    assert len(np.unique(draws[labels[draws] == 1])) > 30
    with pytest.raises(ValueError, match="fraction"):
        few_label_subset(labels, 0.0, seed=0, num_classes=6)
    with pytest.raises(ValueError, match="labels"):
        few_label_subset(labels, 0.5, seed=0, num_classes=4)


def test_sharded_features_give_the_same_answers():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    def shard(a):
        return jax.device_put(a, NamedSharding(mesh, P("data")))

    rng = np.random.default_rng(3)
    train = rng.normal(size=(64, 8)).astype(np.float32)
    query = rng.normal(size=(40, 8)).astype(np.float32)
    y, qy = rng.integers(0, 3, size=64), rng.integers(0, 3, size=40)
    a = evaluate.knn_predict(train, y, query, num_classes=3, k=5, chunk_size=16)
    b = evaluate.knn_predict(
        shard(train), shard(y), shard(query), num_classes=3, k=5, chunk_size=16
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)
    plain = evaluate.knn_accuracies(train, y, query, qy, num_classes=3, ks=(1, 5))
    sharded = evaluate.knn_accuracies(
        shard(train), shard(y), shard(query), shard(qy), num_classes=3, ks=(1, 5)
    )
    assert plain == sharded

    splits = probe_data(1)
    kw = {
        "num_classes": CLASSES,
        "weight_decays": (1e-3, 3e-1),
        "max_steps": 500,
        "return_probe": True,
    }
    plain = evaluate.linear_probe(*[a for s in splits for a in s], **kw)
    sharded = evaluate.linear_probe(*[shard(a) for s in splits for a in s], **kw)
    for key in (
        "val_accuracy",
        "test_accuracy",
        "train_accuracy",
        "weight_decay",
        "val_accuracy_per_wd",
    ):
        assert plain[key] == sharded[key], key
    np.testing.assert_allclose(plain["probe"].weights, sharded["probe"].weights, atol=1e-4)
