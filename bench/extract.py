"""Extraction throughput: images/s and GFLOP/s of featx.Extractor on VOC-like images.

    python bench/extract.py --net D --scales 256 --batch-sizes 1,4,8 --images 16

Images are generated (500x375 and 375x500, like VOC), weights are random (same cost as real
ones). FLOPs are counted from the layer shapes (2 x MACs of every conv, flips included), and
the machine's fp32 matrix-multiply rate is measured in the same run as the ceiling.
Writes a JSON record next to the table (--json).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.images import target_size  # noqa: E402
from featx.nets import get_spec  # noqa: E402


def conv_flops(spec, h, w):
    """2 x multiply-adds of the dense net on an h x w input."""
    flops, c = 0, 3
    for v in spec.layers:
        if v == "M":
            h, w = h // 2, w // 2
        else:
            flops += 2 * h * w * 9 * c * v
            c = v
    oh, ow = h - spec.fc6_window + 1, w - spec.fc6_window + 1
    flops += 2 * oh * ow * (c * spec.fc6_window ** 2 * spec.fc_dim + spec.fc_dim * spec.fc_dim)
    return flops


def matmul_ceiling(n=4096, repeats=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="D")
    p.add_argument("--scales", default="256")
    p.add_argument("--batch-sizes", default="1,4,8")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3) if i % 2 == 0 else (500, 375, 3), dtype=np.uint8)
              for i in range(a.images)]
    spec = get_spec(a.net)
    ceiling = matmul_ceiling()
    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; fp32 mm ceiling {ceiling:.0f} GFLOP/s")
    print(f"{'net':<4}{'Q':>5}{'batch':>6}{'img/s':>8}{'GFLOP/s':>9}{'% ceiling':>10}")
    for q in (int(s) for s in a.scales.split(",")):
        flops = sum(2 * conv_flops(spec, *target_size(im.shape[:2], q)) for im in images)  # x2: flips
        for bs in (int(b) for b in a.batch_sizes.split(",")):
            ex = Extractor(a.net, scales=(q,), weights="random", device=a.device, dtype=a.dtype, batch_size=bs)
            ex.extract(images[:2])  # warm-up
            t = time.perf_counter()
            ex.extract(images)
            dt = time.perf_counter() - t
            row = {"net": a.net, "Q": q, "batch": bs, "images_per_s": a.images / dt,
                   "gflops": flops / dt / 1e9, "ceiling_gflops": ceiling}
            rows.append(row)
            print(f"{a.net:<4}{q:>5}{bs:>6}{row['images_per_s']:>8.2f}{row['gflops']:>9.0f}"
                  f"{100 * row['gflops'] / ceiling:>9.0f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
