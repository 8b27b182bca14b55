"""What a small job costs before its first forward pass: each step is a fresh process, timed
from its start to its exit, as a user running featx from the shell sees it.

    python bench/startup.py --weights ../wh/vgg19_caffe.pth --tree ../shared/data/caltech101/101_ObjectCategories
    python bench/startup.py ... --featx-src /tmp/featx-0.6.0 --label before --append   # another checkout
    python bench/startup.py --smoke                                                      # CI: seconds

Steps (real Net-E weights, Caffe preprocessing, Q = 256, float32):
  import torch          the floor every step that runs the net pays
  extractor (cold)      featx.Extractor(net="E", weights=FILE) in a process that has never seen FILE
  extractor (warm)      the same again (featx remembers the weights' tensor digest per file)
  extract (no-op)       featx extract on a folder whose cache is complete
  predict 1 image       featx predict MODEL one.jpg
  predict 100 images    featx predict MODEL a folder of 100 images (their cache computed in the run)
The model is trained first (featx svm folder:TRAIN --extract, 2 classes x 8 images). Each step
runs --repeat times (the 100-image one once) and its fastest time is kept. --featx-src times
another featx checkout (PYTHONPATH), so one script gives the before and after figures; each run
is labelled (--label) and --append keeps the other labels' rows in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import FIGURES, cpu_slug, save_figures, write_voc_like  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def images_of(tree: Path, n_train: int, n_predict: int) -> tuple[dict, list]:
    """{class: [files]} for training (the first two classes) and n_predict other files."""
    classes = sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith("BACKGROUND"))
    train = {d.name: sorted(d.glob("*.jpg"))[:n_train] for d in classes[:2]}
    rest = [f for d in classes[2:] for f in sorted(d.glob("*.jpg"))[:3]][:n_predict]
    return train, rest


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, help="Net-E weights (vgg19_caffe.pth, Caffe convention)")
    p.add_argument("--tree", type=Path, help="a folder of class folders of JPEGs (Caltech-101)")
    p.add_argument("--featx-src", type=Path, default=HERE, help="the featx checkout to time (default: this one)")
    p.add_argument("--label", default="after", help="the name of this run's rows (before, after, ...)")
    p.add_argument("--append", action="store_true", help="keep the JSON's rows of other labels")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="random weights, generated images, Q = 224")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if not a.smoke and not (a.weights and a.tree):
        p.error("give --weights and --tree (or --smoke)")

    work = Path(tempfile.mkdtemp(prefix="featx-startup-"))
    env = dict(os.environ, PYTHONPATH=str(a.featx_src.resolve()), XDG_CACHE_HOME=str(work / "user-cache"),
               FEATX_CACHE_DIR=str(work / "cache"))
    n_train, n_predict, repeat = (3, 4, 1) if a.smoke else (8, 100, a.repeat)
    if a.smoke:
        weights, preprocess, q = "random:0", "torchvision", 224
        for k, cls in enumerate(("a", "b")):
            write_voc_like(work / "train" / cls, n_train, seed=k)
        predict = write_voc_like(work / "predict", n_predict, seed=2)
    else:
        weights, preprocess, q = str(a.weights.resolve()), "caffe", 256
        train, rest = images_of(a.tree, n_train, n_predict)
        for cls, files in train.items():
            (work / "train" / cls).mkdir(parents=True)
            for f in files:
                os.symlink(f.resolve(), work / "train" / cls / f.name)
        (work / "predict").mkdir()
        predict = []
        for k, f in enumerate(rest):
            predict.append(work / "predict" / f"{k:03d}-{f.name}")
            os.symlink(f.resolve(), predict[-1])
    featx = [sys.executable, "-m", "featx"]
    net = ["--net", "E", "--weights", f"E={weights}", "--preprocess", preprocess, "--scales", str(q)]

    def timed(cmd, times=repeat) -> float:
        best = float("inf")
        for _ in range(times):
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
            best = min(best, time.perf_counter() - t)
            if r.returncode:
                sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
        return best

    rows = []

    def step(name, cmd, times=repeat):
        rows.append({"label": a.label, "step": name, "seconds": round(timed(cmd, times), 2)})
        print(f"{a.label:>8}  {name:<22}{rows[-1]['seconds']:>8.2f} s", flush=True)

    make = (f"import featx; featx.Extractor(net='E', weights={weights!r}, preprocess={preprocess!r}, "
            f"scales=({q},))")
    step("import torch", [sys.executable, "-c", "import torch"])
    shutil.rmtree(work / "user-cache", ignore_errors=True)
    step("extractor (cold)", [sys.executable, "-c", make], times=1)
    step("extractor (warm)", [sys.executable, "-c", make])
    timed(featx + ["svm", f"folder:{work / 'train'}", *net, "--extract", "--results-dir", str(work / "results"),
                   ], times=1)
    step("extract (no-op)", featx + ["extract", "--images", str(work / "train"), *net, "--quiet"])
    model = next((work / "results").rglob("*.model.json"))
    step("predict 1 image", featx + ["predict", str(model), str(predict[0]), "--format", "csv", "--quiet"])
    step(f"predict {len(predict)} images", featx + ["predict", str(model), str(work / "predict"), "--format",
                                                    "csv", "--quiet"], times=1)
    shutil.rmtree(work, ignore_errors=True)

    import torch
    from featx.net.kernels import cpu_info
    path = a.json or FIGURES / f"{cpu_slug(cpu_info().model)}-startup.json"
    if a.append and path.is_file():
        rows = [r for r in json.loads(path.read_text())["rows"] if r["label"] != a.label] + rows
    save_figures("startup", {"weights": "random:0 (smoke)" if a.smoke else
                             "8-bit packed copy of the authors' VGG19 release (vgg19_caffe.pth)",
                             "scale": q, "threads_note": f"torch {torch.__version__}, {os.cpu_count()} CPUs",
                             "rows": rows}, path=path)


if __name__ == "__main__":
    main()
