"""Benchmark metrics: VOC average precision (11-point and area) and mean class recall, and
`METRICS`, the one record of each metric's names, what it scores and how (pipeline files,
datasets, the protocol, results and the report all read it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def _precision_recall(scores: np.ndarray, labels: np.ndarray):
    """Ranked precision / recall; labels 1 positive, -1 negative, 0 ignored (difficult)."""
    keep = labels != 0
    scores, labels = np.asarray(scores, np.float64)[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] > 0)
    fp = np.cumsum(labels[order] < 0)
    n_pos = int((labels > 0).sum())
    return tp / np.maximum(tp + fp, 1e-12), tp / n_pos if n_pos else np.full(len(tp), np.nan)


def voc07_ap(scores, labels) -> float:
    """The VOC-2007 devkit's 11-point interpolated AP: mean over recall thresholds t in
    {0, 0.1, ..., 1} of the best precision at recall >= t (0 if never reached).
    NaN when there is no positive (such a class is left out of the mean)."""
    precision, recall = _precision_recall(scores, np.asarray(labels))
    if not (np.asarray(labels) > 0).any():
        return float("nan")
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.linspace(0, 1, 11)]))


def area_ap(scores, labels) -> float:
    """Area under the interpolated precision-recall curve (VOC-2010 onwards): precision made
    monotone from the right, summed over the recall steps. NaN when there is no positive."""
    precision, recall = _precision_recall(scores, np.asarray(labels))
    if not (np.asarray(labels) > 0).any():
        return float("nan")
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def per_class_ap(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{'ap11': (C,), 'ap_area': (C,)} for (n, C) scores and (n, C) labels in {1, 0, -1}."""
    return {"ap11": np.array([voc07_ap(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]),
            "ap_area": np.array([area_ap(scores[:, c], labels[:, c]) for c in range(labels.shape[1])])}


def nanmean(values) -> float:
    """Mean over the entries that are not NaN (a class without positives); NaN, quietly, if none."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def class_recalls(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Per-class accuracy (recall); NaN for a class with no test image."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(float)
    totals = np.bincount(y_true, minlength=n_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / totals, np.nan)


def mean_class_recall(y_true, y_pred, n_classes: int) -> float:
    """Mean over classes of per-class accuracy (the Caltech metric), classes with test images."""
    return nanmean(class_recalls(y_true, y_pred, n_classes))


@dataclass(frozen=True)
class Metric:
    """One benchmark metric, in every vocabulary featx speaks it."""

    key: str  # in pipeline files and DatasetSpec: "map"
    name: str  # in results, reports and featx svm's lines: "mAP (VOC-2007 11-point AP)"
    label: str  # in report tables and figures: "mAP", "mean class recall"
    short: str  # one word: "mAP", "MCR" (the C search's log)
    per_class: str  # what each class gets, in the report: "AP", "recall"
    axis: str  # the per-class figure's axis: "AP (11-point), %"
    task: str  # the labels it scores: "multilabel" (n, C) in {1, 0, -1} or "multiclass" (n,)
    headline: str  # the per-class score whose mean over classes is the headline: "ap11"
    paper_shape: str  # how the paper reports it in pipeline files: "number" or "mean_std"
    score: Callable  # (classifier, X, y, n_classes) -> {score name: (C,) per-class array}


def _ap_scores(model, X, y, n_classes):
    return per_class_ap(model.decision_function(X), y)


def _recall_scores(model, X, y, n_classes):
    return {"recall": class_recalls(y, model.predict(X), n_classes)}


METRICS = {m.key: m for m in (
    Metric("map", "mAP (VOC-2007 11-point AP)", "mAP", "mAP", "AP", "AP (11-point), %", "multilabel", "ap11",
           "number", _ap_scores),
    Metric("mcr", "mean class recall", "mean class recall", "MCR", "recall", "recall, %", "multiclass", "recall",
           "mean_std", _recall_scores),
)}


def metric_of(task: str | None = None, *, name: str | None = None) -> Metric:
    """The metric that scores a dataset's task ("multilabel", "multiclass"), or the one a result
    names (Result.metric)."""
    for m in METRICS.values():
        if (task is not None and m.task == task) or (name is not None and m.name == name):
            return m
    raise ValueError(f"no featx metric for task={task!r} name={name!r}")
