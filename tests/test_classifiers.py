import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from featx.evaluate.classifiers import OneVsRestSVM
from featx.evaluate.metrics import mean_class_recall, per_class_ap


def blobs(n, d, k, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 3
    y = np.arange(n) % k
    X = centers[y] + spread * rng.standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


@pytest.mark.parametrize("solver", ["torch", "liblinear"])
def test_separable_data_is_learnt_perfectly(solver):
    X, y = blobs(300, 64, 5, 0.1, 0)
    m = OneVsRestSVM(C=10, solver=solver).fit(X[:200], y[:200])
    assert (m.predict(X[200:]) == y[200:]).all()
    Y = np.where(np.eye(5)[y] > 0, 1, -1)
    ml = OneVsRestSVM(C=10, solver=solver).fit(X[:200], Y[:200])
    assert np.nanmean(per_class_ap(ml.decision_function(X[200:]), Y[200:])["ap11"]) == 1.0
    assert (ml.predict(X[200:]) == (Y[200:] > 0)).all()  # scikit-learn's 0/1 indicator


def test_unfitted_and_mismatched_inputs_are_clear_errors():
    from sklearn.exceptions import NotFittedError
    X, y = blobs(60, 8, 3, 0.1, 0)
    with pytest.raises(NotFittedError):
        OneVsRestSVM().predict(X)
    m = OneVsRestSVM().fit(X, y)
    assert m.n_features_in_ == 8
    with pytest.raises(ValueError, match="X has 5 features, but OneVsRestSVM is expecting 8 features"):
        m.predict(X[:, :5])


def test_solvers_agree_on_noisy_data():
    X, y = blobs(1200, 128, 10, 15.0, 1)
    Y = np.where(np.eye(10)[y] > 0, 1, -1)
    Y[np.random.default_rng(2).random(Y.shape) < 0.03] = 0  # some 'difficult' labels
    for C in (0.1, 1.0):
        fast = OneVsRestSVM(C=C, solver="torch").fit(X[:600], Y[:600])
        ref = OneVsRestSVM(C=C, solver="liblinear").fit(X[:600], Y[:600])
        map_fast = np.mean(per_class_ap(fast.decision_function(X[600:]), Y[600:])["ap11"])
        map_ref = np.mean(per_class_ap(ref.decision_function(X[600:]), Y[600:])["ap11"])
        assert 0.3 < map_ref < 0.99  # a genuinely noisy problem
        assert abs(map_fast - map_ref) < 0.002  # within 0.2 mAP points
        assert np.abs(fast.coef_ - ref.coef_).max() < 0.02 * np.abs(ref.coef_).max()
    mc_fast = OneVsRestSVM(C=1.0).fit(X[:600], y[:600]).predict(X[600:])
    mc_ref = OneVsRestSVM(C=1.0, solver="liblinear").fit(X[:600], y[:600]).predict(X[600:])
    assert abs(mean_class_recall(y[600:], mc_fast, 10) - mean_class_recall(y[600:], mc_ref, 10)) < 0.005


def test_difficult_samples_do_not_train():
    X, y = blobs(100, 16, 2, 0.1, 3)
    Y = np.where(np.eye(2)[y] > 0, 1, -1)
    a = OneVsRestSVM(C=1).fit(X, Y)
    Y2 = Y.copy()
    Y2[:10, 0] = 0
    b = OneVsRestSVM(C=1).fit(X, Y2)
    c = OneVsRestSVM(C=1).fit(X[10:], Y[10:])
    assert np.allclose(b.coef_[0], c.coef_[0], atol=1e-6) and not np.allclose(a.coef_[0], b.coef_[0], atol=1e-4)


def test_sklearn_conventions():
    X, y = blobs(120, 8, 3, 0.5, 4)
    m = OneVsRestSVM(C=0.5)
    assert clone(m).get_params()["C"] == 0.5 and not hasattr(m, "coef_")
    assert m.fit(X, y) is m and m.coef_.shape == (3, 8) and list(m.classes_) == [0, 1, 2]
    search = GridSearchCV(OneVsRestSVM(), {"C": [0.1, 10]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.9


@pytest.mark.parametrize("solver", ["torch", "liblinear"])
def test_two_classes_give_one_score_as_in_sklearn(solver):
    X, y = blobs(80, 6, 2, 0.8, 3)
    labels = np.array(["cat", "dog"])[y]
    m = OneVsRestSVM(solver=solver).fit(X, labels)
    s = m.decision_function(X)
    assert s.shape == (80,) and m.coef_.shape == (1, 6) and list(m.classes_) == ["cat", "dog"]
    assert (m.predict(X) == np.where(s > 0, "dog", "cat")).all()
    # the same as the arg-max of two one-vs-rest SVMs (the second is the first negated)
    two = np.stack([-s, s], 1)
    assert (m.predict(X) == m.classes_[two.argmax(1)]).all() and (m.predict(X) == labels).mean() > 0.9
