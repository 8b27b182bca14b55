"""Two kernel choices on the same images, interleaved: which is faster on a host whose speed drifts.

    python bench/kernels_ab.py                                     # conv=channels_last vs conv=fused
    python bench/kernels_ab.py --dtypes bfloat16 --scales 384 --rounds 6
    python bench/kernels_ab.py --a conv=channels_last --b conv=onednn
    python bench/kernels_ab.py --smoke                             # seconds; what CI runs

bench/extract.py times each configuration once after the other; on a shared machine whose speed
moves by 2-3x within minutes (seen on a 2-core Intel Xeon: oneDNN's bfloat16 3x3 convolution
at 682 and at 2,587 GFLOP/s in one run) that compares the moments more than the kernels. Here A
and B alternate (A B, B A, A B, ...) on the same generated 500x375 / 375x500 images with random
weights (the cost of real ones), and each round gives a ratio of speeds; the median ratio and
every round go to results/bench/<cpu model>-kernels-ab.json. Both choices give the same
descriptors (tests/test_kernels.py); the bench checks that too.
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.net.specs import NETS  # noqa: E402
from featx.errors import ConfigError  # noqa: E402

from common import SMOKE, save_figures  # noqa: E402  (bench/common.py)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default="conv=channels_last", help="kernels A (FEATX_KERNELS syntax)")
    p.add_argument("--b", default="conv=fused", help="kernels B")
    p.add_argument("--net", default="E")
    p.add_argument("--scales", default="256,384,512")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", help="where the figures go [results/bench/<cpu model>-kernels-ab.json]")
    p.add_argument("--smoke", action="store_true", help="a tiny net and problem (CI); writes only with --json")
    a = p.parse_args()
    if a.smoke:
        NETS["S"] = SMOKE
        a.net, a.scales, a.images, a.rounds = "S", "224", 2, 2
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3) if i % 2 == 0 else (500, 375, 3), dtype=np.uint8)
              for i in range(a.images)]
    rows = []
    print(f"{'dtype':<9}{'Q':>5}  images/s of A ({a.a}) and B ({a.b}) per round; median speed B / A")
    for dtype in a.dtypes.split(","):
        for q in (int(s) for s in a.scales.split(",")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # bfloat16 without native support: asked for
                    pair = [Extractor(a.net, scales=(q,), weights="random", device="cpu", dtype=dtype,
                                      kernels=k, progress=False) for k in (a.a, a.b)]
            except ConfigError as e:  # oneDNN without bfloat16 on this CPU (AVX2 only)
                print(f"{dtype:<9}{q:>5}  skipped: {e}", flush=True)
                continue
            outs = [ex.extract(images[:1]) for ex in pair]  # warm-up, and the same numbers?
            identical = bool(np.array_equal(*outs))
            rates = [[], []]
            for r in range(a.rounds):
                for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                    t = time.perf_counter()
                    pair[i].extract(images)
                    rates[i].append(len(images) / (time.perf_counter() - t))
            ratios = [b / a_ for a_, b in zip(*rates)]
            row = {"net": a.net, "Q": q, "dtype": dtype, "a": str(pair[0].kernels), "b": str(pair[1].kernels),
                   "images_per_s_a": rates[0], "images_per_s_b": rates[1], "ratio_per_round": ratios,
                   "median_ratio": float(np.median(ratios)), "identical_descriptors": identical}
            rows.append(row)
            print(f"{dtype:<9}{q:>5}  A " + " ".join(f"{x:.2f}" for x in rates[0]) + "  B "
                  + " ".join(f"{x:.2f}" for x in rates[1]) + f"  B/A {row['median_ratio']:.3f}"
                  + ("" if identical else "  (descriptors differ)"), flush=True)
    if a.json or not a.smoke:
        save_figures("kernels_ab", {"images": a.images, "rounds": a.rounds, "rows": rows}, path=a.json,
                     suffix="-kernels-ab")


if __name__ == "__main__":
    main()
