"""SVM training: featx's torch solver vs scikit-learn's LinearSVC (liblinear) on the same data.

    python bench/classifiers.py                      # VOC-2007 and Caltech-256 sizes
    python bench/classifiers.py --sizes voc2007 --liblinear-classes 20
    python bench/classifiers.py --smoke              # seconds; what CI runs

Descriptors are synthetic but shaped like the real ones: non-negative (post-ReLU), each class
a direction shared by its images plus per-image noise, L2-normalised; VOC-2007 size is 5,011 x
4,096 with 20 multi-label classes (train 2,501 + val 2,510), Caltech-256 size 15,420 x 12,288
(three stacked scales) with 257 classes. Both solvers fit the same problem (L2 penalty,
squared hinge, bias as a weight on a constant 1) at the same C; scores are mAP (11-point AP)
on held-out data, or mean class recall. liblinear fits one class after another, so at
Caltech-256 size it can be timed on the first --liblinear-classes classes and scaled up (said so).
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx.evaluate.classifiers import OneVsRestSVM  # noqa: E402
from featx.evaluate.metrics import mean_class_recall, per_class_ap  # noqa: E402

SIZES = {  # name: (n_train, n_test, dim, classes, multilabel)
    "voc2007": (5011, 4952, 4096, 20, True),
    "caltech256": (15420, 15187, 12288, 257, False),
    "smoke": (300, 200, 256, 6, True),
}


def synthetic(n, dim, k, multilabel, seed, signal=0.08):
    """Post-ReLU-like descriptors with class structure, and labels (multi-label: 1 / -1)."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(0).standard_normal((k, dim)).astype(np.float32)
    if multilabel:
        y = -np.ones((n, k), np.int8)
        first = rng.integers(0, k, n)
        y[np.arange(n), first] = 1
        second = rng.random(n) < 0.3  # some images show two classes, as in VOC
        y[np.flatnonzero(second), rng.integers(0, k, second.sum())] = 1
        mix = (y > 0).astype(np.float32) @ protos
    else:
        y = rng.integers(0, k, n)
        mix = protos[y]
    x = np.maximum(signal * mix + rng.standard_normal((n, dim)).astype(np.float32), 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def score(model, x, y, multilabel):
    s = model.decision_function(x)
    if multilabel:
        return 100 * float(np.nanmean(per_class_ap(s, y)["ap11"]))
    return 100 * mean_class_recall(y, model.classes_[s.argmax(1)], len(model.classes_))


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="voc2007,caltech256", help=f"comma-separated: {', '.join(SIZES)}")
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--signal", type=float, default=0.08,
                   help="class signal vs unit noise (0.08: VOC-size mAP near VOC's ~87)")
    p.add_argument("--device", default="cpu", help="for the torch solver")
    p.add_argument("--no-liblinear", action="store_true", help="time the torch solver only")
    p.add_argument("--liblinear-classes", type=int, default=20,
                   help="at most this many classes are timed with liblinear; the rest is scaled up")
    p.add_argument("--smoke", action="store_true", help="tiny problem, for CI")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    sizes = ["smoke"] if a.smoke else a.sizes.split(",")
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; C = {a.C}")
    print(f"{'size':<11}{'solver':<11}{'classes':>8}{'fit s':>9}{'score':>8}  {'metric'}")
    rows = []
    for name in sizes:
        n_train, n_test, dim, k, multilabel = SIZES[name]
        xtr, ytr = synthetic(n_train, dim, k, multilabel, seed=1, signal=a.signal)
        xte, yte = synthetic(n_test, dim, k, multilabel, seed=2, signal=a.signal)
        metric = "mAP" if multilabel else "mean class recall"
        t = time.perf_counter()
        fast = OneVsRestSVM(C=a.C, solver="torch", device=a.device).fit(xtr, ytr)
        t_fast = time.perf_counter() - t
        s_fast = score(fast, xte, yte, multilabel)
        rows.append({"size": name, "solver": "torch", "n": n_train, "dim": dim, "classes": k,
                     "fit_s": t_fast, "score": s_fast, "metric": metric, "peak_rss_gib": peak_rss_gib()})
        print(f"{name:<11}{'torch':<11}{k:>8}{t_fast:>9.1f}{s_fast:>8.2f}  {metric}  (peak RSS {peak_rss_gib():.1f} GiB)")
        if a.no_liblinear:
            continue
        kl = min(k, a.liblinear_classes) if not a.smoke else k
        # liblinear one class after another, exactly as OneVsRestSVM(solver="liblinear") runs it
        from sklearn.svm import LinearSVC
        t_ref, ref_scores = 0.0, []
        for c in range(kl):
            yc = ytr[:, c] if multilabel else np.where(ytr == c, 1, -1)
            t = time.perf_counter()
            svm = LinearSVC(C=a.C, loss="squared_hinge", dual=False, tol=1e-4, intercept_scaling=1.0).fit(xtr, yc)
            t_ref += time.perf_counter() - t
            ref_scores.append(svm.decision_function(xte))
        t_ref *= k / kl
        # one-vs-rest AP on the classes both solvers trained: the solvers' agreement
        yte_bin = yte[:, :kl] if multilabel else np.where(yte[:, None] == np.arange(kl), 1, -1).astype(np.int8)
        ap_ref = 100 * float(np.nanmean(per_class_ap(np.stack(ref_scores, 1), yte_bin)["ap11"]))
        ap_fast = 100 * float(np.nanmean(per_class_ap(fast.decision_function(xte)[:, :kl], yte_bin)["ap11"]))
        note = "" if kl == k else f"; timed on {kl} classes, x {k / kl:.1f}"
        rows.append({"size": name, "solver": "liblinear", "n": n_train, "dim": dim, "classes": k,
                     "fit_s": t_ref, "timed_classes": kl, "ovr_map_liblinear": ap_ref, "ovr_map_torch": ap_fast})
        print(f"{name:<11}{'liblinear':<11}{k:>8}{t_ref:>9.1f}{'':>8}  one-vs-rest mAP on {kl} classes: "
              f"liblinear {ap_ref:.2f}, torch {ap_fast:.2f} (difference {ap_fast - ap_ref:+.2f}){note}")
        print(f"{'':<11}speed-up {t_ref / t_fast:.1f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
