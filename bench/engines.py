"""The local engine vs the Ray engine on one machine, same images: what Ray adds per image.

    python bench/engines.py --images 48 --net D --scale 256
    python bench/engines.py --smoke                       # seconds; what CI runs

Writes N generated JPEGs (500x375 / 375x500, like VOC) and extracts them into fresh caches with
each engine (random weights, flips, batch 8), at N/3 and N images: the difference between the
two sizes is the cost per image, the rest is fixed (for Ray: starting the actors and shipping
the net to them). Ray runs on a local instance with every core given to one actor, so both
engines have the same compute; starting Ray itself is timed apart. The two caches are checked
to be bit-identical.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.extract.cache import DescriptorCache  # noqa: E402
from featx.extract.update import extract_to_cache  # noqa: E402
from featx.extract.distributed import RayExtractor, require_ray  # noqa: E402

from common import SMOKE, write_voc_like  # noqa: E402  (bench/common.py)


def run(make, paths, out):
    t = time.perf_counter()
    ex = make()
    summary = extract_to_cache(ex, paths, [Path(p).name for p in paths], out, progress=False)
    assert summary.computed == len(paths) and summary.failed == 0, summary
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--net", default="D")
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--smoke", action="store_true", help="tiny net, 9 images, Q=224, for CI")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    ray = require_ray()
    net, n, q = (SMOKE, 9, 224) if a.smoke else (a.net, a.images, a.scale)
    cores = os.cpu_count() or 1
    options = dict(net=net, scales=(q,), weights="random", device="cpu", batch_size=8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_voc_like(tmp / "photos", n)
        t = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - t
        few = paths[: n // 3]
        for engine, make in [("local", lambda: Extractor(**options)),
                             ("ray", lambda: RayExtractor(**options, num_workers=1, cpus_per_worker=cores))]:
            small = run(make, few, tmp / f"{engine}-few.h5")
            full = run(make, paths, tmp / f"{engine}.h5")
            per_image = (full - small) / (n - len(few))
            rows.append({"engine": engine, "images": n, "seconds": full, "seconds_few": small,
                         "per_image_s": per_image, "fixed_s": full - per_image * n})
        same = np.array_equal(DescriptorCache(tmp / "local.h5").load(), DescriptorCache(tmp / "ray.h5").load())
        ray.shutdown()
    if not same:
        raise SystemExit("the two engines' caches differ")
    local, remote = rows
    name = net.name if a.smoke else net
    print(f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; "
          f"Net-{name}, Q={q}, batch 8, flips; Ray start-up {ray_start:.1f} s (not included)")
    print(f"{'engine':<8}{'N/3 s':>8}{'N s':>8}{'img/s':>8}{'s/img':>8}{'fixed s':>9}")
    for r in rows:  # (tiny smoke runs are noise: the per-image split can come out negative)
        rate = f"{1 / r['per_image_s']:.2f}" if r["per_image_s"] > 0 else "-"
        print(f"{r['engine']:<8}{r['seconds_few']:>8.2f}{r['seconds']:>8.2f}{rate:>8}"
              f"{r['per_image_s']:>8.3f}{r['fixed_s']:>9.2f}")
    extra = remote["per_image_s"] - local["per_image_s"]
    print(f"Ray adds {extra * 1000:+.0f} ms per image ({extra / local['per_image_s']:+.1%}) and "
          f"{remote['fixed_s'] - local['fixed_s']:+.1f} s per run; caches bit-identical: {same}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "cores": cores, "net": name, "Q": q,
                       "ray_start_s": ray_start, "identical": same, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
