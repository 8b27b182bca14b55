"""One-vs-rest linear SVMs (L2 penalty, squared hinge), with two solvers behind one estimator.

solver="torch": all classes at once by a truncated-Newton method (as liblinear's TRON, for the
  primal squared-hinge problem) whose every step is a dense matrix product over all classes,
  on CPU or GPU. solver="liblinear": scikit-learn's LinearSVC per class, the reference.
Both minimise, per class c,  0.5 |w|^2 + C sum_i s_i max(0, 1 - y_i (w.x_i + b))^2
with the bias learnt as a weight on a constant feature 1 (liblinear's intercept_scaling=1)
and s_i = 0 for samples marked 0 (VOC 'difficult') for that class.
"""
from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import ConfigError
from ..options import SOLVERS


def _targets(y):
    """y -> (classes, ±1 targets (n, k), sample weights (n, k), multilabel?). Multi-label y is
    (n, C) in {1, 0, -1}; a binary y gets one column (+1 = classes[1]), as scikit-learn's."""
    if y.ndim == 2:  # multi-label: 1 positive, -1 negative, 0 ignored
        t = np.where(y > 0, 1.0, -1.0)
        return np.arange(y.shape[1]), t, (y != 0).astype(np.float64), True
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"y holds {len(classes)} class; a classifier needs at least 2")
    positive = classes[1:] if len(classes) == 2 else classes
    t = np.where(y[:, None] == positive[None, :], 1.0, -1.0)
    return classes, t, np.ones_like(t), False


def fit_squared_hinge(X, T, S, C, tol=1e-4, max_iter=100, device="cpu", dtype=torch.float64):
    """Newton-CG on all columns of T at once. X (n, d), T / S (n, k) -> (W (d + 1, k), last row
    bias; the number of Newton iterations)."""
    dev = torch.device(device)
    X = torch.as_tensor(np.asarray(X), dtype=dtype, device=dev)
    X = torch.cat([X, torch.ones(len(X), 1, dtype=dtype, device=dev)], 1)
    T = torch.as_tensor(T, dtype=dtype, device=dev)
    S = torch.as_tensor(S, dtype=dtype, device=dev)
    W = torch.zeros(X.shape[1], T.shape[1], dtype=dtype, device=dev)

    def objective(W):
        slack = torch.clamp(1 - T * (X @ W), min=0)
        return 0.5 * (W * W).sum(0) + C * (S * slack * slack).sum(0)

    f = objective(W)
    # liblinear's primal stopping rule: |grad| <= tol * max(min(#pos, #neg), 1) / n * |grad0|,
    # so a class with few positives (Caltech: 60 of 15,420) is solved as tightly as liblinear does
    counted = S > 0
    n_pos = (counted & (T > 0)).sum(0)
    n_neg = (counted & (T < 0)).sum(0)
    eps = tol * torch.clamp(torch.minimum(n_pos, n_neg), min=1).to(dtype) / counted.sum(0).clamp_min(1).to(dtype)
    g0 = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        margin = T * (X @ W)
        active = S * (margin < 1)                       # D: samples inside the margin
        grad = W + 2 * C * (X.T @ (active * (margin - 1) * T))
        gnorm = grad.norm(dim=0)
        g0 = gnorm if g0 is None else g0
        todo = gnorm > eps * g0
        if not todo.any():
            break
        # CG on (I + 2C X' D X) d = -grad, per class, to 10% relative residual (as TRON)
        hess = lambda V: V + 2 * C * (X.T @ (active * (X @ V)))
        d = torch.zeros_like(W)
        r = -grad
        p = r.clone()
        rr = (r * r).sum(0)
        for _ in range(50):
            Hp = hess(p)
            alpha = rr / (p * Hp).sum(0).clamp_min(1e-300)
            d = d + alpha * p
            r = r - alpha * Hp
            rr_new = (r * r).sum(0)
            if (rr_new.sqrt() <= 0.1 * gnorm).all():
                break
            p = r + (rr_new / rr.clamp_min(1e-300)) * p
            rr = rr_new
        d = d * todo  # converged classes stay put
        # Armijo backtracking, one step length per class
        step = torch.ones(W.shape[1], dtype=dtype, device=dev)
        slope = (grad * d).sum(0)
        for _ in range(30):
            f_new = objective(W + step * d)
            ok = f_new <= f + 1e-4 * step * slope
            if ok.all():
                break
            step = torch.where(ok, step, step / 2)
        W = W + step * d
        f = objective(W)
    return W.cpu().numpy(), n_iter


class OneVsRestSVM(ClassifierMixin, BaseEstimator):
    """Linear SVMs, one per class, for multi-class (y: labels) or multi-label (y: (n, C) in
    {1, 0, -1}, 0 = ignored) problems. Multi-class prediction is the arg-max of the scores.

    C: penalty (the same for every class). solver: "torch" (fast, CPU/GPU) or "liblinear".
    """

    def __init__(self, C=1.0, solver="torch", tol=1e-4, max_iter=100, device="cpu"):
        self.C = C
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y):
        from sklearn.exceptions import DataConversionWarning
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import validate_data

        for name in ("C", "tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r}: give a finite positive number")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, Integral) or self.max_iter < 1:
            raise ConfigError(f"max_iter={self.max_iter!r}: give a positive integer")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver={self.solver!r}: choose one of {', '.join(SOLVERS)}")
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=False)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected; read as "
                          "the labels it holds", DataConversionWarning, stacklevel=2)
            y = y.ravel()
        if y.ndim == 2:
            if not np.isin(y, (-1, 0, 1)).all():
                raise ValueError("multi-label y must hold 1 (positive), -1 (negative) or 0 (ignored)")
        else:
            check_classification_targets(y)
        self.classes_, T, S, self.multilabel_ = _targets(y)
        if self.solver == "torch":
            W, self.n_iter_ = fit_squared_hinge(X, T, S, self.C, self.tol, self.max_iter, self.device)
        else:
            from sklearn.svm import LinearSVC
            W, self.n_iter_ = np.zeros((X.shape[1] + 1, T.shape[1])), 0
            for c in range(T.shape[1]):
                keep = S[:, c] > 0
                svm = LinearSVC(C=self.C, loss="squared_hinge", penalty="l2", dual=False,
                                tol=self.tol, max_iter=max(1000, self.max_iter), intercept_scaling=1.0)
                svm.fit(X[keep], T[keep, c])
                sign = 1.0 if svm.classes_[1] == 1 else -1.0
                W[:-1, c], W[-1, c] = sign * svm.coef_[0], sign * svm.intercept_[0]
                self.n_iter_ = max(self.n_iter_, int(svm.n_iter_))
        self.coef_, self.intercept_ = W[:-1].T.copy(), W[-1].copy()
        return self

    def decision_function(self, X):
        """SVM scores: (n_samples, n_classes), or (n_samples,) for two classes (positive:
        classes_[1]), as scikit-learn's linear classifiers."""
        from sklearn.utils.validation import check_is_fitted, validate_data
        check_is_fitted(self, ("coef_", "intercept_"))
        # a wrong feature count: "X has 5 features, but OneVsRestSVM is expecting 8 ..." (ValueError)
        X = validate_data(self, X, dtype=np.float64, reset=False, ensure_min_samples=0)  # empty X: empty scores
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 and not self.multilabel_ else scores

    def predict(self, X):
        """Multi-class: the best-scoring class. Multi-label: scikit-learn's 0/1 indicator matrix
        (1 where a class's score is positive)."""
        scores = self.decision_function(X)
        if self.multilabel_:
            return (scores > 0).astype(np.int64)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[scores.argmax(1)]
