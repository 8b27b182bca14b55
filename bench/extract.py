"""Extraction throughput: featx.Extractor vs a naive loop, against the machine's matmul ceiling.

    python bench/extract.py                                  # Net-D and Net-E at Q = 256, 384, 512
    python bench/extract.py --nets D --scales 256 --images 16 --batch-sizes 1,4,8
    python bench/extract.py --device cuda --dtypes float32,bfloat16,float16
    python bench/extract.py --kernels "before;auto;conv=onednn,fc=onednn"   # kernel paths side by side
    python bench/extract.py --nets D --scales 512 --profile 12  # where the time goes, per layer
    python bench/extract.py --smoke                          # seconds; what CI runs

Images are generated (500x375 and 375x500, like VOC), weights are random (same cost as real
ones), flips included. FLOPs are counted from the layer shapes (featx.extract.cost.forward_flops, the
direct-convolution count). The ceiling of a dtype is the best rate any library reaches here:
a 2048^3 matrix product (torch.mm = MKL, oneDNN's 1x1 convolution, oneDNN's packed linear) and
oneDNN's 3x3 convolution on VGG's conv3/conv4 layers (featx.extract.cost.ceiling_rates), measured
beside every row. The naive baseline runs one image at
a time through the obvious dense net (fc6 a 7x7 nn.Conv2d, fc7 a 1x1), NCHW, the flip as a
second pass, no channels-last, no prefetching threads. Half types
are compared with float32 by the cosine similarity of their descriptors (the smallest over
the images). The figures go to results/bench/<cpu model>.json; bench/tables.py turns every such
file into the speed tables of docs/speed.md. Peak memory: the
process's peak RSS so far (CPU; configurations run in increasing Q) or torch's peak allocation
per configuration (CUDA).
"""
import argparse
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.extract.cost import ceiling_rates, descriptor_flops  # noqa: E402
from featx.extract.extractor import DTYPES, resolve_device  # noqa: E402
from featx.net.kernels import Kernels, choose as choose_kernels, cpu_info, measure, parse_kernels  # noqa: E402
from featx.data.images import target_size  # noqa: E402
from featx.net.specs import NETS  # noqa: E402
from featx.net.vgg import random_state_dict, reference_dense_net  # noqa: E402
from featx.net.weights import TORCHVISION  # noqa: E402

from common import SMOKE, save_figures  # noqa: E402  (bench/common.py)

SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def naive_net(spec):
    """The obvious dense VGG: torchvision's conv stack, fc6 as a 7x7 nn.Conv2d, fc7 as a 1x1."""
    return reference_dense_net(spec, random_state_dict(spec, seed=0))


def naive(spec, images, q, device):
    """The obvious loop: per image resize, normalise, forward, flip, forward; no batching."""
    net = naive_net(spec).to(device)
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


def timed(fn, device, repeats=1):
    """(result, best seconds of `repeats`, peak GiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    dt = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = min(dt, time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result, dt, peak / 2 ** 30


def profile(title, fn, rows):
    """Where the time goes: ops by input shape (so each conv layer is its own row), with the
    profiler's FLOP count, which gives each layer's achieved GFLOP/s."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities, record_shapes=True, with_flops=True) as prof:
        fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    by_op = {}
    for e in events:
        by_op[e.key] = by_op.get(e.key, 0) + e.self_cpu_time_total
    print(f"\n-- profile: {title}; {total / 1e6:.2f} s of op time: " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:4]))
    print(f"{'op':<28}{'calls':>6}{'self s':>8}{'share':>7}{'GFLOP/s':>9}  input shapes")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        flops = 0
        try:
            if "convolution" in e.key:
                flops = conv_flops(e.input_shapes) * e.count
            elif e.key == "aten::addmm":  # fc6 / fc7 over all windows: (M, K) @ (K, N)
                (m, k), n = e.input_shapes[1], e.input_shapes[2][1]
                flops = 2.0 * m * k * n * e.count
            elif e.key == "aten::mkldnn_linear":  # the same with oneDNN: (M, K) @ (N, K)^T
                (m, k), n = e.input_shapes[0], e.input_shapes[1][0]
                flops = 2.0 * m * k * n * e.count
        except (IndexError, TypeError, ValueError):  # an op recorded without its shapes
            flops = 0
        rate = f"{flops / e.self_cpu_time_total / 1e3:>9.0f}" if flops else f"{'':>9}"
        shapes = str([s for s in e.input_shapes if s][:3])[:70]
        print(f"{e.key[:27]:<28}{e.count:>6}{e.self_cpu_time_total / 1e6:>8.2f}"
              f"{e.self_cpu_time_total / total:>7.1%}{rate}  {shapes}")
    print()


def conv_flops(shapes) -> float:
    """2 x multiply-adds of one convolution call, from its input and weight shapes (VGG's
    3x3 convolutions keep the size; fc6's 7x7 and fc7's 1x1 are unpadded)."""
    (n, _, h, w), (cout, cin, kh, kw) = shapes[0], shapes[1]
    if kh != 3:
        h, w = h - kh + 1, w - kw + 1
    return 2.0 * n * cout * h * w * cin * kh * kw


def cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="D,E")
    p.add_argument("--scales", default="256,384,512")
    p.add_argument("--images", type=int, default=8, help="images per configuration")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--dtypes", default="auto", help="auto (float32, plus bfloat16 where the CPU has it "
                   "natively or on a GPU), or a list: float32,bfloat16,float16")
    p.add_argument("--kernels", default="before;auto", help="featx kernel choices to time (every dtype on CPUs, float32 on GPUs): "
                   "'before' (0.3.0's fixed path: channels-last convolutions, torch.mm for fc), 'auto' "
                   "(featx.net.kernels.choose), or conv=...,fc=... (';'-separated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive loop")
    p.add_argument("--repeats", type=int, default=2, help="time each run this many times, keep the best")
    p.add_argument("--profile", type=int, metavar="ROWS", default=0,
                   help="also profile one pass of each (torch.profiler, ops grouped by input "
                        "shape, i.e. per layer) and print the ROWS costliest")
    p.add_argument("--smoke", action="store_true", help="a tiny net and 2 images, for CI")
    p.add_argument("--json", help="write the results here [default: results/bench/<cpu model>.json, "
                   "or a GPU's name; none in --smoke mode]")
    a = p.parse_args()
    device = resolve_device(a.device)
    if a.smoke:
        NETS["S"] = SMOKE
        a.nets, a.scales, a.images = "S", "224", 2
    cpu = cpu_info()
    if a.dtypes == "auto":
        a.dtypes = "float32,bfloat16" if device.type == "cuda" or cpu.native_bfloat16 else "float32"
    dtypes = a.dtypes.split(",")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise SystemExit(f"--dtypes: {dtype} is not one of {', '.join(DTYPES)}")
    choices = []
    for k in a.kernels.split(";"):
        choices.append(("before", Kernels()) if k == "before" else ("auto", None) if k == "auto"
                       else (k, Kernels(**parse_kernels(k, "--kernels"))))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3) if i % 2 == 0 else (500, 375, 3), dtype=np.uint8)
              for i in range(a.images)]

    # The ceiling of a dtype is the best rate of any library's matrix product here; shared
    # machines drift, so it is measured again beside every row and the row keeps its own.
    def measure_ceiling(dtype):
        rates = ceiling_rates(n=256 if a.smoke else 2048, device=device, dtype=DTYPES[dtype])
        return max(rates.values()), rates

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu.model} ({' '.join(cpu.flags)}), {torch.get_num_threads()} threads")
    ceilings = {d: measure_ceiling(d)[1] for d in dtypes}
    # Both candidates of each layer kind, timed: does featx.net.kernels' CPU rule pick the faster?
    kernel_rates = {d: measure(DTYPES[d]) for d in dtypes} if device.type == "cpu" else {}
    print(f"{where}; torch {torch.__version__}; best of {a.repeats} runs")
    for d, rates in ceilings.items():
        print(f"{d} matrix-product ceiling now: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
              + " GFLOP/s (measured again beside each row; 'of ceil' is against the best seen)")
    for d, rates in kernel_rates.items():
        print(f"{d} kernels (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
              + f"; featx chooses {choose_kernels(device, DTYPES[d])}")
    print(f"{'net':<4}{'Q':>5}{'how':>26}{'img/s':>8}{'GFLOP/s':>9}{'of ceil':>9}{'vs naive':>9}"
          f"{'peak GiB':>9}{'cos vs fp32':>12}")
    rows = []
    best = {d: max(rates.values()) for d, rates in ceilings.items()}  # the best ceiling seen so far
    for q in (int(s) for s in a.scales.split(",")):
        for net in a.nets.split(","):
            spec = NETS[net]
            flops = sum(descriptor_flops(spec, im.shape[:2], q) for im in images)

            def report(how, dtype, kernels, dt, peak, base=None, cos=None):
                ceiling, rates = measure_ceiling(dtype)
                best[dtype] = max(best.get(dtype, 0.0), ceiling)
                row = {"net": net, "Q": q, "how": how, "dtype": dtype, "kernels": kernels,
                       "images": len(images), "seconds": dt, "images_per_s": len(images) / dt,
                       "gflops": flops / dt / 1e9, "ceiling_gflops": ceiling, "ceiling_rates": rates,
                       "speedup_vs_naive": base / dt if base else None, "peak_gib": peak,
                       "cosine_vs_fp32": cos}
                rows.append(row)
                print(f"{net:<4}{q:>5}{how:>26}{row['images_per_s']:>8.2f}{row['gflops']:>9.0f}"
                      f"{100 * row['gflops'] / best[dtype]:>8.0f}%"
                      + (f"{row['speedup_vs_naive']:>8.2f}x" if base else f"{'':>9}")
                      + f"{peak:>9.2f}" + (f"{cos:>12.5f}" if cos is not None else ""), flush=True)

            base = None
            if not a.no_baseline:
                naive(spec, images[:1], q, device)  # warm-up
                _, base, peak = timed(lambda: naive(spec, images, q, device), device, a.repeats)
                report("naive", "float32", "nn.Conv2d, NCHW", base, peak)
                if a.profile:
                    profile(f"naive, Net-{net} Q={q}", lambda: naive(spec, images, q, device), a.profile)
            reference = None
            for dtype in dtypes:
                for label, kernels in (choices if device.type == "cpu" or dtype == "float32" else [("auto", None)]):
                    for bs in (int(b) for b in a.batch_sizes.split(",")):
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # bfloat16 without native support: asked for
                            ex = Extractor(net, scales=(q,), weights="random", device=device, dtype=dtype,
                                           batch_size=bs, progress=False, kernels=kernels)
                        ex.extract(images[:2])  # warm-up
                        out, dt, peak = timed(lambda: ex.extract(images), device, a.repeats)
                        if dtype == "float32" and reference is None:
                            reference = out
                        cos = cosine(out, reference) if reference is not None and dtype != "float32" else None
                        how = f"featx {SHORT[dtype]} {label} b{bs}"
                        report(how, dtype, str(ex.kernels), dt, peak, base, cos)
                        if a.profile:
                            profile(f"{how} ({ex.kernels}), Net-{net} Q={q}", lambda: ex.extract(images),
                                    a.profile)
    if a.json or not a.smoke:
        save_figures("extract", {
            "device": where, "kernels_chosen": {d: str(choose_kernels(device, DTYPES[d])) for d in dtypes},
            "kernel_rates": kernel_rates, "rows": rows},
            path=a.json, machine=torch.cuda.get_device_name(device) if device.type == "cuda" else None)

if __name__ == "__main__":
    main()
