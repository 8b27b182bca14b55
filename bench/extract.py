"""Extraction throughput: featx.Extractor vs a naive loop, against the machine's matmul ceiling.

    python bench/extract.py                                  # Net-D and Net-E at Q = 256, 384, 512
    python bench/extract.py --nets D --scales 256 --images 16 --batch-sizes 1,4,8
    python bench/extract.py --device cuda --dtypes float32,bfloat16,float16
    python bench/extract.py --smoke                          # seconds; what CI runs

Images are generated (500x375 and 375x500, like VOC), weights are random (same cost as real
ones), flips included. FLOPs are counted from the layer shapes (featx.cost.forward_flops); the
ceiling is a large fp32 torch.mm measured in the same run. The naive baseline runs one image at
a time, NCHW, no batching of the flip, no channels-last, no prefetching threads. Half types
are compared with float32 by the cosine similarity of their descriptors. Peak memory: the
process's peak RSS so far (CPU; configurations run in increasing Q) or torch's peak allocation
per configuration (CUDA).
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
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.cost import descriptor_flops, matmul_gflops  # noqa: E402
from featx.extract import DTYPES, resolve_device  # noqa: E402
from featx.images import target_size  # noqa: E402
from featx.nets import NETS, DenseVGG, random_state_dict  # noqa: E402
from featx.weights import TORCHVISION  # noqa: E402

from common import SMOKE  # noqa: E402  (bench/common.py)

SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def naive(spec, images, q, device):
    """The obvious loop: per image resize, normalise, forward, flip, forward; no batching."""
    net = DenseVGG(spec).eval().to(device)
    net.load_torchvision_state_dict(random_state_dict(spec, seed=0))
    mean = torch.tensor(TORCHVISION.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(TORCHVISION.std, device=device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for im in images:
            h, w = target_size(im.shape[:2], q)
            pixels = np.array(Image.fromarray(im).resize((w, h), Image.BILINEAR))
            x = torch.from_numpy(pixels).to(device).permute(2, 0, 1)[None].float() / 255
            x = ((x - mean) / std).contiguous()
            a = net(x).mean((2, 3))
            b = net(x.flip(3)).mean((2, 3))
            out.append(((a + b) / 2).cpu())
    return torch.cat(out).numpy()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result, dt, peak / 2 ** 30


def cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="D,E")
    p.add_argument("--scales", default="256,384,512")
    p.add_argument("--images", type=int, default=8, help="images per configuration")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--dtypes", default="float32", help="e.g. float32,bfloat16,float16 (half types: GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive loop")
    p.add_argument("--smoke", action="store_true", help="a tiny net and 2 images, for CI")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    device = resolve_device(a.device)
    if a.smoke:
        NETS["S"] = SMOKE
        a.nets, a.scales, a.images = "S", "224", 2
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3) if i % 2 == 0 else (500, 375, 3), dtype=np.uint8)
              for i in range(a.images)]
    ceiling = matmul_gflops(n=256 if a.smoke else 4096, device=device)
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; fp32 matmul ceiling {ceiling:.0f} GFLOP/s")
    print(f"{'net':<4}{'Q':>5}{'how':>16}{'img/s':>8}{'GFLOP/s':>9}{'ceiling':>9}{'vs naive':>9}"
          f"{'peak GiB':>9}{'cos vs fp32':>12}")
    rows = []
    for q in (int(s) for s in a.scales.split(",")):
        for net in a.nets.split(","):
            spec = NETS[net]
            flops = sum(descriptor_flops(spec, im.shape[:2], q) for im in images)

            def report(how, dt, peak, base=None, cos=None):
                row = {"net": net, "Q": q, "how": how, "images": len(images), "seconds": dt,
                       "images_per_s": len(images) / dt, "gflops": flops / dt / 1e9, "ceiling_gflops": ceiling,
                       "speedup_vs_naive": base / dt if base else None, "peak_gib": peak, "cosine_vs_fp32": cos}
                rows.append(row)
                print(f"{net:<4}{q:>5}{how:>16}{row['images_per_s']:>8.2f}{row['gflops']:>9.0f}"
                      f"{100 * row['gflops'] / ceiling:>8.0f}%"
                      + (f"{row['speedup_vs_naive']:>8.2f}x" if base else f"{'':>9}")
                      + f"{peak:>9.2f}" + (f"{cos:>12.5f}" if cos is not None else ""))

            base = None
            if not a.no_baseline:
                naive(spec, images[:1], q, device)  # warm-up
                _, base, peak = timed(lambda: naive(spec, images, q, device), device)
                report("naive", base, peak)
            reference = None
            for dtype in a.dtypes.split(","):
                if dtype not in DTYPES:
                    raise SystemExit(f"--dtypes: {dtype} is not one of {', '.join(DTYPES)}")
                for bs in (int(b) for b in a.batch_sizes.split(",")):
                    ex = Extractor(net, scales=(q,), weights="random", device=device, dtype=dtype,
                                   batch_size=bs, progress=False)
                    ex.extract(images[:2])  # warm-up
                    out, dt, peak = timed(lambda: ex.extract(images), device)
                    if dtype == "float32" and reference is None:
                        reference = out
                    cos = cosine(out, reference) if reference is not None and dtype != "float32" else None
                    report(f"featx {SHORT[dtype]} b{bs}", dt, peak, base, cos)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "device": where, "torch": torch.__version__,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
