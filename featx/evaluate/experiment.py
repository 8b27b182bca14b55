"""The paper's protocols on cached descriptors: assemble, choose C, train, evaluate, report.

VOC-2007: C chosen by training on train and scoring mAP on val, then refit on trainval and
  evaluated on test (11-point AP, the devkit's; area AP beside it).
VOC-2012 (classification and action): the test labels are withheld, so C is chosen on a seeded
  20% of train, the SVMs are refit on train and **val** mAP is reported (and labelled so).
Caltech-101/256: per split, C chosen on its 20% validation part, refit on the whole training
  part, mean class recall on test; mean ± std over the three splits.
A folder or CSV collection without its own splits gets three seeded held-out splits (half of
  each class to train, 20% of that to choose C) and the Caltech protocol; a CSV with train and
  val/test splits gets the VOC one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import Config
from ..data.datasets import Dataset
from ..descriptors.fusion import combine, fuse, l2_normalize
from ..errors import CacheError, ConfigError
from ..extract.cache import DescriptorCache
from ..extract.identity import check_current
from ..net.specs import label_of
from .classifiers import OneVsRestSVM
from .metrics import metric_of, nanmean
from .results import FinalModel, Result, SplitRun

PROVENANCE_KEYS = ("weights", "weights_file", "weights_digest", "weights_sha256", "preprocess", "flip", "dtype",
                   "created", "featx_version")


class CachedDescriptors:
    """Assembles L2-normalised descriptors from the per-net caches of one dataset.

    Each cache's rows are found by image id, and checked against the images as they are now:
    descriptors of an image that changed since they were computed are refused (featx extract
    recomputes them). cache_dir, root: as for featx.paths.cache_path."""

    def __init__(self, data: Dataset, cfg: Config, cache_dir=None, root=None, log=print):
        from ..extract.update import extract_command
        self.data, self.cfg = data, cfg
        self.hint = extract_command(data, cfg.nets, cfg.scales, cfg.weights, cfg.preprocess, cfg.dtype,
                                    cache_dir, root)
        self.caches, self.rows = {}, {}
        self.preprocess, self.flips = {}, {}  # net -> the preprocessing, flipping its cache was computed with
        use = data.protocol_rows(cfg.views)  # what the splits read
        for net in cfg.nets:
            path = cfg.descriptor.cache_path(net, data, cache_dir, root)
            if not path.is_file():
                raise CacheError(f"no cached {label_of(net)} descriptors at {path}; compute them with:\n  {self.hint}")
            cache = self.caches[net] = DescriptorCache(path)
            # A classifier must see the descriptors it was trained on: record how they were made.
            made = self.preprocess[net] = cache.attrs.get("preprocess")
            if cfg.preprocess.get(net) not in (None, made):
                raise ConfigError(f"{path} was computed with {made} preprocessing, not {cfg.preprocess[net]}")
            self.flips[net] = bool(cache.attrs.get("flip", True))
            computed_in = cache.attrs.get("dtype") or "float32"  # 0.2.0 files: float32
            if computed_in != cfg.dtype:
                raise ConfigError(f"{path} holds descriptors computed in {computed_in}, not {cfg.dtype}")
            rows = self.rows[net] = cache.lookup(data.ids)
            absent = use[rows[use] < 0]
            if len(absent):
                raise CacheError(f"{path} has no row for {len(absent)} images of {data.name} (first: "
                                 f"{data.ids[absent[0]]}); compute them with:\n  {self.hint}")
            check_current(cache, data.items, data.ids, use, self.hint, log)
        missing = {net: c.missing(cfg.scales, self.rows[net][use]) for net, c in self.caches.items()}
        missing = {n: m for n, m in missing.items() if m}
        if missing:
            net, by_scale = next(iter(missing.items()))
            q, rows = next(iter(by_scale.items()))
            raise CacheError(f"{label_of(net)} descriptors missing for {len(rows)} images at Q={q} "
                             f"(e.g. {self.caches[net].ids[rows[0]]}); compute them with:\n  {self.hint}")
        self.views = cfg.views
        if len(set(self.flips.values())) > 1:
            raise ConfigError(f"the caches of {', '.join(map(label_of, cfg.nets))} differ in flipping "
                              "(one was extracted with --no-flip): one descriptor cannot fuse them")
        self.flip = all(self.flips.values())

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """L2-normalised descriptors of these samples: nets fused per view; views (whole image,
        person box) stacked and normalised again."""
        views = []
        for view in self.views:
            rows = self.data.views[view][samples]
            views.append(combine((c.load(self.cfg.scales, rows=self.rows[net][rows]) for net, c in self.caches.items()),
                                 self.cfg.aggregate))
        return views[0] if len(views) == 1 else l2_normalize(fuse(*views))


def _subset(X_all: np.ndarray, all_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of X_all (descriptors of samples all_rows) for the samples `rows` (a subset)."""
    order = np.argsort(all_rows)
    return X_all[order[np.searchsorted(all_rows[order], rows)]]


def _score(task, model, X, y, n_classes):
    return metric_of(task).score(model, X, y, n_classes)


def _headline(task, scores):
    return nanmean(scores[metric_of(task).headline])


def _warn_untrained(data: Dataset, fit_on, evaluated, where: str, log) -> None:
    """A class with evaluated samples but no training one is scored 0 by construction (the
    benchmarks never do this; a user's CSV may): say so, naming it."""
    def present(rows):
        y = data.labels[rows]
        return set(np.flatnonzero((y > 0).any(0))) if y.ndim == 2 else set(np.unique(y).tolist())
    for c in sorted(present(evaluated) - present(fit_on)):
        log(f"warning: class {data.classes[c]!r} has {where} samples to evaluate but none to train on; "
            "it is scored 0")


def _choose_c(cfg, task, Xtr, ytr, Xva, yva, n_classes, log):
    results = {}
    for c in cfg.c_grid:
        model = OneVsRestSVM(C=c, solver=cfg.solver, device=cfg.device).fit(Xtr, ytr)
        results[c] = _headline(task, _score(task, model, Xva, yva, n_classes))
        log(f"  C={c:<6g} validation {metric_of(task).short} {100 * results[c]:.2f}")
    best = max(results, key=lambda c: (results[c], -c))  # ties: the smaller C
    return best, results


def fit_final(data: Dataset, cfg: Config, desc: CachedDescriptors, runs: list, log=print) -> FinalModel:
    """The classifier to deploy: once the splits are evaluated, one fit on every labelled
    sample the protocol reads (the union of its splits: a folder's or CSV's every image,
    VOC-2007's trainval and test, Caltech's images of the three splits), with the C validation
    chose: the median over the splits (the lower of the two middle ones for an even count,
    so it is a value of the grid)."""
    chosen = [r.C for r in runs]
    C = sorted(chosen)[(len(chosen) - 1) // 2]
    if len(runs) > 1:
        how = (f"median of the C chosen on splits {', '.join(str(r.split) for r in runs)} "
               f"({', '.join(f'{c:g}' for c in chosen)})")
    else:
        how = "the C chosen on validation"
    every = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in data.splits.values()]))
    what = f"all {len(every):,} labelled {'samples' if 'box' in data.views else 'images'} " \
           "(the union of the splits)"
    log(f"final model: C={C:g} ({how}) fit on {what}")
    model = OneVsRestSVM(C=C, solver=cfg.solver, device=cfg.device).fit(desc(every), data.labels[every])
    return FinalModel(C=float(C), chosen_by=how, trained_on=what, samples=len(every), model=model)


@dataclass(frozen=True)
class Split:
    """One evaluation of a protocol: C chosen by training on `train` and scoring `val`, the
    SVMs refit on `fit_on` (which holds both) and scored on `evaluated`."""

    number: int | None  # Caltech's split 1, 2, 3; None where there is one
    train: np.ndarray
    val: np.ndarray
    fit_on: np.ndarray
    evaluated: np.ndarray
    fit_name: str  # as results name them: "trainval", "trainval2", "train"
    evaluated_name: str  # "test", "test2", "val"
    where: str  # the evaluated part, in warnings: "split 2's test"
    intro: str  # the log line that starts it


def _held_out_splits(splits: dict) -> list[Split]:
    """Caltech (and a folder or CSV without splits of its own): per split k, C chosen on val k."""
    out, k = [], 1
    while f"train{k}" in splits:
        tr, va, tv, te = (splits[f"{s}{k}"] for s in ("train", "val", "trainval", "test"))
        out.append(Split(k, tr, va, tv, te, f"trainval{k}", f"test{k}", f"split {k}'s test",
                         f"split {k}: train {len(tr)}, val {len(va)}, test {len(te)}"))
        k += 1
    return out


def _train_val_test(splits: dict) -> list[Split]:
    """VOC-2007 (or a CSV with all three): C chosen on val, refit on trainval, scored on test."""
    tr, va, ev = splits["train"], splits["val"], splits["test"]
    fit_on = splits["trainval"] if "trainval" in splits else np.union1d(tr, va)
    return [Split(None, tr, va, fit_on, ev, "trainval", "test", "test",
                  f"C chosen by training on train ({len(tr)}) and scoring val ({len(va)})")]


def _train_then_held_out(splits: dict) -> list[Split]:
    """VOC-2012 (test labels withheld): C chosen inside train (a seeded 20% held out), refit on
    train, scored on val; a CSV's train/test likewise."""
    train = splits["train"]
    held = np.random.default_rng(0).random(len(train)) < 0.2
    evaluated = "test" if "test" in splits else "val"
    tr, va = train[~held], train[held]
    return [Split(None, tr, va, train, splits[evaluated], "train", evaluated, evaluated,
                  f"C chosen by training on 80% of train ({len(tr)}) and scoring 20% of train ({len(va)})")]


@dataclass(frozen=True)
class Protocol:
    """How a dataset is evaluated, by the shape of its splits: a dataset with a shape below
    needs no code of its own."""

    name: str
    fits: Callable[[dict], bool]  # whether a dataset's splits have this shape
    splits: Callable[[dict], list]  # its evaluations (Split)


PROTOCOLS = (
    Protocol("held-out splits (Caltech)", lambda s: "train1" in s, _held_out_splits),
    Protocol("train, val, test (VOC-2007)", lambda s: {"train", "val", "test"} <= set(s), _train_val_test),
    Protocol("train, then val or test (VOC-2012)", lambda s: "train" in s and bool({"val", "test"} & set(s)),
             _train_then_held_out),
)


def protocol_of(data: Dataset) -> Protocol:
    for p in PROTOCOLS:
        if p.fits(data.splits):
            return p
    raise ConfigError(f"{data.name} has the splits {', '.join(data.splits)}; featx svm needs "
                      "train and val/test, or train1/val1/test1...")


def run(data: Dataset, cfg: Config, cache_dir=None, root=None, log=print) -> Result:
    """Run the dataset's protocol on the caches featx.paths.cache_path finds (cache_dir, root:
    --cache-dir and --root); the Result holds the trained models of its splits."""
    cfg.check(data)
    start = time.perf_counter()
    desc = CachedDescriptors(data, cfg, cache_dir, root, log=log)
    n_classes = len(data.classes)
    runs = []
    for split in protocol_of(data).splits(data.splits):
        log(split.intro)
        _warn_untrained(data, split.fit_on, split.evaluated, split.where, log)
        X_fit = desc(split.fit_on)  # holds the train and validation parts: read from the caches once
        best, grid = _choose_c(cfg, data.task, _subset(X_fit, split.fit_on, split.train), data.labels[split.train],
                               _subset(X_fit, split.fit_on, split.val), data.labels[split.val], n_classes, log)
        model = OneVsRestSVM(C=best, solver=cfg.solver, device=cfg.device).fit(X_fit, data.labels[split.fit_on])
        scores = _score(data.task, model, desc(split.evaluated), data.labels[split.evaluated], n_classes)
        runs.append(SplitRun(split.number, best, grid, split.fit_name, split.evaluated_name, scores=scores, model=model))
    final = fit_final(data, cfg, desc, runs, log)
    headline = [100 * _headline(data.task, r.scores) for r in runs]
    # the result records how the caches were computed (preprocessing, flip), not only what was asked
    return Result(final=final,
        dataset=data.name, config=cfg.replace(preprocess=desc.preprocess, flip=desc.flip), runs=runs,
        metric=metric_of(data.task).name,
        headline=float(np.mean(headline)), headline_std=float(np.std(headline)) if len(runs) > 1 else None,
        classes=list(data.classes),
        caches={net: {k: c.attrs.get(k) for k in PROVENANCE_KEYS} for net, c in desc.caches.items()},
        seconds=time.perf_counter() - start)
