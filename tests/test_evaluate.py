"""Evaluation protocols against independent references (NumPy k-NN, scikit-learn)."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jssl import evaluate


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


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("chunk_size", [7, 64, 1024])
def test_knn_matches_reference(k, chunk_size):
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(60, 8)), rng.normal(size=(45, 8))
    train_y = rng.integers(0, 4, size=60)
    got = evaluate.knn_predict(train.astype(np.float32), train_y, query.astype(np.float32),
                               num_classes=4, k=k, temperature=0.5, chunk_size=chunk_size)
    want = knn_reference(train, train_y, query, 4, k, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_array_equal(np.argmax(got, 1), np.argmax(want, 1))


def test_knn_hand_made_and_temperature():
    # Class 0 near (1, 0), class 1 near (0, 1); a query at 30 degrees belongs to class 0.
    train = np.array([[1.0, 0.0], [0.98, 0.2], [0.0, 1.0], [0.2, 0.98], [0.1, 0.99]], np.float32)
    y = np.array([0, 0, 1, 1, 1])
    q = np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], np.float32)
    assert evaluate.knn_accuracy(train, y, q, np.array([0]), num_classes=2, k=5, temperature=0.07) == 1.0
    # A huge temperature makes every weight ~1: a plain majority vote, which class 1 wins 3-2.
    assert evaluate.knn_accuracy(train, y, q, np.array([1]), num_classes=2, k=5, temperature=1e6) == 1.0
    with pytest.raises(ValueError, match="k=6"):
        evaluate.knn_predict(train, y, q, num_classes=2, k=6)


def test_linear_probe_matches_scikit_learn():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(600, 12, n_informative=6, n_classes=3, random_state=1)
    xtr, ytr, xte, yte = x[:400], y[:400], x[400:], y[400:]
    wd = 1e-2
    got = evaluate.linear_probe(xtr, ytr, None, None, xte, yte, num_classes=3,
                                weight_decays=(wd,), max_steps=200)
    # Our objective: mean CE + wd/2 ||W||^2 on standardised features. scikit-learn's:
    # C * sum CE + 1/2 ||W||^2, the same minimiser for C = 1 / (N * wd).
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    ref = LogisticRegression(C=1.0 / (len(xtr) * wd), max_iter=5000, tol=1e-10)
    ref.fit((xtr - mean) / std, ytr)
    assert got["test_accuracy"] == pytest.approx(ref.score((xte - mean) / std, yte), abs=1e-9)
    assert got["train_accuracy"] == pytest.approx(ref.score((xtr - mean) / std, ytr), abs=1e-9)


def test_linear_probe_separable_and_selects_on_validation():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(4, 16)) * 6
    y = rng.integers(0, 4, size=300)
    x = centers[y] + rng.normal(size=(300, 16))
    r = evaluate.linear_probe(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:],
                              num_classes=4, weight_decays=(0.0, 1e-3), max_steps=100)
    assert r["test_accuracy"] == 1.0 and r["val_accuracy"] == 1.0

    # Validation labels that only a heavily regularised (nearly constant) model matches:
    # the choice must follow validation accuracy, whatever test accuracy says.
    val_y = np.zeros(50, int)
    r = evaluate.linear_probe(x[:200], y[:200], x[200:250], val_y, x[250:], y[250:],
                              num_classes=4, weight_decays=(0.0, 1e3), max_steps=50)
    per_wd = r["val_accuracy_per_wd"]
    best = max(per_wd, key=per_wd.get)
    assert r["weight_decay"] == float(best) and r["val_accuracy"] == per_wd[best]


def test_few_label_subset():
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 3])
    a = evaluate.few_label_subset(labels, 0.1, seed=0, num_classes=5)
    assert np.array_equal(a, evaluate.few_label_subset(labels, 0.1, seed=0, num_classes=5))
    assert not np.array_equal(a, evaluate.few_label_subset(labels, 0.1, seed=1, num_classes=5))
    assert np.bincount(labels[a], minlength=5).tolist() == [10, 5, 2, 1, 1]
    assert len(evaluate.few_label_subset(labels, 1.0, seed=0, num_classes=5)) == len(labels)
    with pytest.raises(ValueError, match="fraction"):
        evaluate.few_label_subset(labels, 0.0, seed=0, num_classes=5)


def test_sharded_features_give_the_same_answers():
    rng = np.random.default_rng(3)
    train, query = rng.normal(size=(64, 8)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    s = NamedSharding(mesh, P("data"))
    a = evaluate.knn_predict(train, y, query, num_classes=3, k=5)
    b = evaluate.knn_predict(jax.device_put(train, s), jax.device_put(y, s), jax.device_put(query, s),
                             num_classes=3, k=5)
    np.testing.assert_allclose(a, b, rtol=1e-5)
