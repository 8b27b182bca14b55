"""What extraction will cost (docs/protocol.md section 5): FLOPs counted from the layer shapes, and a
time estimate from a throughput rate (measured here, or given)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import paths
from ..data.images import read_sizes, target_size
from ..net.kernels import best_rate, conv_rates, cpu_info, onednn_linear
from ..net.specs import get_spec

if TYPE_CHECKING:
    from ..net.specs import Backbone


def forward_flops(spec: Backbone | str, h: int, w: int) -> int:
    """2 x multiply-adds of one forward pass on an h x w input, as the backbone counts them
    (VGG: from its layer shapes)."""
    return get_spec(spec).forward_flops(h, w)


def descriptor_flops(spec, size: tuple[int, int], q: int, flip: bool = True) -> int:
    """FLOPs of one image's descriptor at scale Q (size: the image's (h, w))."""
    return forward_flops(spec, *target_size(size, q)) * (2 if flip else 1)


def ceiling_rates(n: int = 2048, repeats: int = 3, device="cpu", dtype=None) -> dict:
    """GFLOP/s of one n x n x n matrix product done by each library torch offers here: torch.mm
    (MKL on CPU, cuBLAS on GPU) and, on CPU, oneDNN's 1x1 convolution and packed linear, plus
    oneDNN's 3x3 convolution on VGG's own layers. The best of them is the device's ceiling for
    that dtype; the spread shows which library suits this CPU (MKL runs its generic code on
    AMD CPUs)."""
    import torch
    import torch.nn.functional as F
    device = torch.device(device)
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    flops = 2.0 * n ** 3

    def timed(fn):
        if device.type != "cuda":
            return best_rate(fn, flops, repeats)
        return best_rate(lambda: (fn(), torch.cuda.synchronize(device)), flops, repeats)

    with torch.inference_mode():
        rates = {"torch.mm": timed(lambda: torch.mm(a, b))}
        if device.type == "cpu" and torch.backends.mkldnn.is_available() and dtype != torch.float16:
            # (n rows, n in) @ (n in, n out) as a 1x1 convolution over a 1 x n NHWC image
            x4, w4 = a.view(1, 1, n, n).permute(0, 3, 1, 2), b.t().reshape(n, n, 1, 1)
            rates["oneDNN 1x1 conv"] = timed(lambda: F.conv2d(x4, w4))
            packed = onednn_linear(b.t(), torch.zeros(n))
            rates["oneDNN linear"] = timed(lambda: packed(a))
            # oneDNN's direct 3x3 convolution can beat any GEMM here (its own AVX-512 blocking):
            # VGG's conv3 and conv4 layers, in either layout, so no layer of the net outruns it
            if n >= 1024:
                rates["oneDNN 3x3 conv"] = max(
                    *conv_rates(dtype, batch=2, channels=256, side=56).values(),
                    *conv_rates(dtype, batch=2, channels=512, side=28).values())
    return rates


def matmul_gflops(n: int = 2048, repeats: int = 3, device="cpu", dtype=None) -> float:
    """The device's fp32 (or dtype) matrix-product ceiling in GFLOP/s: the best library's rate
    (with all the threads torch uses), what a conv net's forward pass can approach."""
    return max(ceiling_rates(n, repeats, device, dtype).values())


# Fraction of the ceiling (matmul_gflops: the best library's rate) that a whole extraction
# reaches on CPU, and in bfloat16 on AMX (which lifts the big convolutions far more than the rest
# of the net). Calibrated on the runs in results/bench: docs/speed.md, "Where featx's constants
# come from".
CPU_EFFICIENCY = 0.7
AMX_EFFICIENCY = 0.25


def extraction_efficiency(device: str, dtype: str = "float32") -> float:
    """The fraction of the measured ceiling to expect from a whole extraction (for estimates)."""
    if str(device).startswith("cpu") and dtype == "bfloat16" and "amx_bf16" in cpu_info().flags:
        return AMX_EFFICIENCY
    return CPU_EFFICIENCY


@dataclass(frozen=True)
class Rate:
    """An extraction's throughput for a time estimate, and where the figure comes from."""

    gflops: float
    source: str


def cache_rate(path, net: str, device_name: str, flip: bool = True) -> Rate | None:
    """What the cache's own extraction reached on this device (device_name: a CPU model or GPU
    name, as featx.extract.update.device_name gives): the FLOPs of its timed rows (at each Q, its done
    rows' mean cost) over the wall time the writers recorded with them (decoding, resizing and
    writes included). Scales timed on another device are left out; scales timed before featx
    0.7 recorded no device and are used, and the source says so. None: no such timed rows."""
    from .cache import DONE, DescriptorCache
    cache = DescriptorCache(path)
    where = cache.timed_on()
    sizes, flops, seconds, timed, unrecorded = cache.sizes(), 0.0, 0.0, 0, False
    for q, (spent, n) in cache.timing().items():
        done = np.flatnonzero(cache.status(q) == DONE)
        done = done[sizes[done, 0] > 0]
        if spent <= 0 or n <= 0 or not len(done) or where[q] not in ("", device_name):
            continue
        unrecorded |= where[q] == ""
        shapes, counts = np.unique(sizes[done], axis=0, return_counts=True)
        per_row = sum(c * descriptor_flops(net, tuple(map(int, hw)), q, flip) for hw, c in zip(shapes, counts)) / len(done)
        flops, seconds, timed = flops + per_row * n, seconds + spent, timed + n
    if not seconds:
        return None
    return Rate(flops / seconds / 1e9, f"its cache's own extraction ({timed:,} timed image x scale pairs"
                + (", on a device it did not record: featx before 0.7)" if unrecorded else f" on {device_name})"))


def bench_rate(dtype: str = "float32", device="cpu") -> Rate | None:
    """The committed bench/extract.py figures of this CPU model (results/bench/<cpu>.json in a
    checkout): the median rate of featx's own kernel choice in this compute type."""
    if not str(device).startswith("cpu"):
        return None
    path = paths.bench_figures() / f"{cpu_info().slug}.json"
    try:
        rows = [r for r in json.loads(path.read_text())["rows"]
                if r.get("dtype") == dtype and "auto" in str(r.get("how", "")) and r.get("gflops")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not rows:
        return None
    return Rate(float(np.median([r["gflops"] for r in rows])),
                f"bench/extract.py on this CPU model ({path.name}, {len(rows)} rows)")


def quick_rate(device="cpu", dtype: str = "float32") -> Rate:
    """A measurement of a second or so: a 1024^3 matrix product per library, times the share
    of it an extraction reaches (extraction_efficiency)."""
    import torch
    efficiency = extraction_efficiency(device, dtype)
    ceiling = matmul_gflops(n=1024, repeats=2, device=device, dtype=getattr(torch, dtype))
    return Rate(efficiency * ceiling, f"measured now: {ceiling:.0f} GFLOP/s matrix products x {efficiency:g}")


@dataclass
class ExtractionCost:
    """Work left for one net on one image set: image x scale pairs to compute and their FLOPs."""

    net: str
    cache: Path
    pairs: int  # image x scale pairs not in the cache yet
    cached: int  # pairs already there
    flops: float

    def seconds(self, gflops: float) -> float:
        return self.flops / (gflops * 1e9)


def extraction_cost(net: str, items, ids, scales, cache_path: Path, rows=None,
                    flip: bool = True) -> ExtractionCost:
    """Count what `featx extract` would compute for these rows: the cache's record of what is
    done and of image sizes for the images it has rows for; otherwise image headers are read.
    (Images changed since their rows were computed are counted as done: a dry run reads no
    image files it need not.)"""
    from .cache import DONE, DescriptorCache

    rows = np.arange(len(items)) if rows is None else np.asarray(rows, dtype=np.int64)
    sizes = np.full((len(items), 2), -1)
    todo = {int(q): rows for q in scales}
    unknown = rows
    if Path(cache_path).is_file():
        cache = DescriptorCache(cache_path)
        where = cache.lookup(ids)
        known, unknown = rows[where[rows] >= 0], rows[where[rows] < 0]
        sizes[known] = cache.sizes()[where[known]]
        todo = {q: np.concatenate([known[cache.status(q)[where[known]] != DONE], unknown]) for q in todo}
    if len(unknown):
        read, _ = read_sizes([items[r] for r in unknown], 8)
        sizes[unknown] = [s if s else (-1, -1) for s in read]
    flops = sum(descriptor_flops(net, tuple(sizes[r]), q, flip) for q, rs in todo.items()
                for r in rs if sizes[r][0] > 0)
    pairs = sum(len(rs) for rs in todo.values())
    return ExtractionCost(net, Path(cache_path), pairs, len(rows) * len(todo) - pairs, float(flops))


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def tflop(flops: float) -> str:
    t = flops / 1e12
    return f"{t:,.0f}" if t >= 100 else f"{t:.3g}"
