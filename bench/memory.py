"""Resident memory over a run on real images of many shapes, with and without featx's
malloc_trim after each forward pass (featx.extract.extractor._malloc_trim).

    python bench/memory.py --images 400                 # Caltech-101 (../shared), Net-E, Q = 256
    python bench/memory.py --smoke                      # seconds; what CI runs

Caltech-101 has hundreds of image shapes, so every batch allocates activations of new sizes;
glibc keeps the freed ones mapped and a long extraction grew from 1.6 to 5.8 GB over 4,600
images before featx trimmed. Each mode runs in a fresh process (so neither inherits the
other's heap); the script prints RSS after every `--every` images and the images per second,
and writes results/bench/<cpu model>-memory.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def child(a):
    """One mode, in this process: extract, recording RSS as it goes; prints one JSON line."""
    import numpy as np
    import featx.extract.extractor as fx
    from featx import Extractor
    from featx.data.images import read_sizes, target_size
    if a.mode == "off":
        fx._malloc_trim = lambda: None
    if a.smoke:
        from common import SMOKE
        from featx.net.specs import NETS
        NETS["S"] = SMOKE
        rng = np.random.default_rng(0)
        items = [rng.integers(0, 256, (224 + 7 * i, 230 + 11 * i, 3), dtype=np.uint8) for i in range(a.images)]
        net, weights = "S", "random"
    else:
        root = a.root
        paths = sorted(os.path.join(root, c, f) for c in sorted(os.listdir(root)) if c != "BACKGROUND_Google"
                       for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(".jpg"))
        step = max(1, len(paths) // a.images)
        items, net, weights = paths[::step][:a.images], "E", a.weights
    ex = Extractor(net, scales=(a.scale,), weights=weights, device="cpu", progress=False)
    sizes, _ = read_sizes(items, 2)
    trace, done, start = [(0, rss_gib())], 0, time.perf_counter()
    for batch in ex.iter_batches(items, sizes):
        done += len(batch.indices)
        if done // a.every > (done - len(batch.indices)) // a.every:
            trace.append((done, rss_gib()))
    seconds = time.perf_counter() - start
    shapes = len({target_size(tuple(s), a.scale) for s in sizes if s is not None})
    print(json.dumps({"mode": a.mode, "images": done, "shapes": shapes, "seconds": seconds,
                      "images_per_s": done / seconds, "rss_gib": trace, "final_gib": trace[-1][1],
                      "peak_gib": max(r for _, r in trace)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--root", default=os.path.join(HERE, "..", "..", "shared", "data", "caltech101",
                                                  "101_ObjectCategories"))
    p.add_argument("--weights", default="random", help="e.g. caffe:vgg19_caffe.pth (the cost is the same)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json")
    p.add_argument("--mode", choices=["on", "off"], help=argparse.SUPPRESS)  # the child process
    a = p.parse_args()
    if a.smoke:
        a.images, a.every, a.scale = 6, 2, 224
    if a.mode:
        return child(a)
    if not a.smoke and not os.path.isdir(a.root):
        sys.exit(f"{a.root}: no Caltech-101 tree (give --root)")
    runs = []
    for mode in ("off", "on"):
        args = [sys.executable, __file__, "--mode", mode, "--images", str(a.images), "--scale", str(a.scale),
                "--every", str(a.every), "--root", a.root, "--weights", a.weights] + (["--smoke"] if a.smoke else [])
        r = subprocess.run(args, capture_output=True, text=True, cwd=HERE)
        if r.returncode:
            sys.exit(r.stderr)
        run = json.loads(r.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(f"malloc_trim {mode:<3}: {run['images']} images ({run['shapes']} shapes) at {run['images_per_s']:.2f} img/s; "
              "RSS GiB " + " ".join(f"{n}:{g:.2f}" for n, g in run["rss_gib"]))
    from common import save_figures
    if a.json or not a.smoke:
        save_figures("memory", {"scale": a.scale, "rows": runs}, path=a.json, suffix="-memory")

if __name__ == "__main__":
    main()
