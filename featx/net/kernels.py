"""Which kernels run the frozen VGG fastest on this machine, decided once per process.

The same numbers can come from different libraries, and which is fastest depends on the CPU:

  fc6 / fc7   "gemm": torch's matrix product (MKL on CPU, cuBLAS on GPU), or "onednn": oneDNN's
              linear with the weights packed once. MKL runs its generic, slower code on CPUs
              that are not Intel's.
  3x3 convs   "channels_last": NHWC tensors (oneDNN underneath), ReLU and max-pooling as torch's
              own ops; "fused": the same convolutions with the ReLU done inside oneDNN's
              convolution (a post-op: one pass over the output instead of two) and the 2x2
              max-pool as the elementwise maximum of four strided views, without the indices
              torch's max_pool2d computes; or "onednn": oneDNN's blocked layout end to end with
              weights packed once (no faster where measured; kept for FEATX_KERNELS and the bench).

The choice follows the CPU, not a timing: fp32 fc layers run on oneDNN on every x86 CPU that is
not Intel's, on MKL on Intel's (where MKL is tuned) and on other architectures; convolutions
run "fused" on CPUs with oneDNN, in float32 and in bfloat16 where oneDNN runs it (AVX-512 BW,
VL and DQ, or AVX-NE-CONVERT; elsewhere bfloat16 gets torch's own kernels). The measurements
behind the rule are in docs/speed.md and results/bench/. A rule keeps every process on one
machine on the same kernels, so a resumed run, or a Ray worker beside the driver, gives
bit-identical descriptors; a timing could flip on a busy host. `measure()` times every
candidate of each kind (bench/extract.py records it per machine), to check the rule. Every
choice gives the reference dense net's descriptors within 1e-5 relative (tests/test_kernels.py),
so it is not part of a cache's provenance. GPUs use cuBLAS/cuDNN.

FEATX_KERNELS="conv=onednn,fc=gemm" (either part alone is fine) overrides the rule on CPUs.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..paths import forced_kernels

CONV_KERNELS = ("channels_last", "fused", "onednn")
FC_KERNELS = ("gemm", "onednn")


@dataclass(frozen=True)
class Kernels:
    """The kernels a DenseVGG runs: `conv` for the 3x3 convolutions, `fc` for fc6/fc7/fc8."""

    conv: str = "channels_last"
    fc: str = "gemm"
    how: str = field(default="default", compare=False)  # why: the CPU rule, FEATX_KERNELS, ...

    def __post_init__(self):
        if self.conv not in CONV_KERNELS:
            raise ConfigError(f"conv kernel {self.conv!r}: choose one of {', '.join(CONV_KERNELS)}")
        if self.fc not in FC_KERNELS:
            raise ConfigError(f"fc kernel {self.fc!r}: choose one of {', '.join(FC_KERNELS)}")

    def __str__(self):
        return f"conv={self.conv},fc={self.fc}"


def parse_kernels(text: str, origin: str = "FEATX_KERNELS") -> dict:
    """"conv=onednn,fc=gemm" -> {"conv": "onednn", "fc": "gemm"} (either part may be absent)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in ("conv", "fc") or not value:
            raise ConfigError(f"{origin}={text!r}: write conv={'|'.join(CONV_KERNELS)} and/or "
                              f"fc={'|'.join(FC_KERNELS)}, comma-separated")
        out[key] = value
    try:
        Kernels(**out)  # validates the names
    except ConfigError as e:
        raise ConfigError(f"{origin}={text!r}: {e}") from None
    return out


def choose(device, dtype) -> Kernels:
    """The kernels for nets on `device` in `dtype` (a torch.dtype), decided once per process."""
    import torch
    return _choose(torch.device(device).type, dtype)


@functools.lru_cache(maxsize=None)
def _choose(device_type: str, dtype) -> Kernels:
    import torch
    if device_type != "cpu":  # FEATX_KERNELS is about CPUs: GPUs run cuBLAS / cuDNN
        return Kernels(how=f"{device_type}: torch's own kernels")
    asked = forced_kernels()
    forced = parse_kernels(asked) if asked else {}
    refusal = onednn_refusal(dtype)
    if refusal:
        if {"onednn", "fused"} & set(forced.values()):
            raise ConfigError(f"FEATX_KERNELS={asked!r}: {refusal}")
        return Kernels(**forced, how="FEATX_KERNELS" if forced else f"default ({refusal})")
    rule = {"conv": "fused"}
    vendor = cpu_info().vendor  # x86 only ("" on ARM and elsewhere: MKL is not in play there)
    if dtype == torch.float32 and vendor and vendor != "GenuineIntel":
        rule["fc"] = "onednn"
    how = ", ".join(filter(None, [
        "CPU rule (oneDNN: ReLU fused into the convolutions" + (f"; {vendor}: fc on oneDNN)" if "fc" in rule else ")"),
        "FEATX_KERNELS" if forced else ""]))
    return Kernels(**(rule | forced), how=how)


def onednn_refusal(dtype) -> str:
    """Why oneDNN's kernels cannot run `dtype` on this CPU, or "" where they can."""
    import torch
    if not torch.backends.mkldnn.is_available():
        return "oneDNN kernels need a torch built with oneDNN (MKLDNN)"
    if dtype == torch.float16:
        return "oneDNN kernels run float32 and bfloat16, not float16"
    if dtype == torch.bfloat16 and not _onednn_bfloat16():
        return (f"oneDNN runs bfloat16 only on CPUs with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, which "
                f"this CPU ({cpu_info().model}) lacks")
    return ""


@functools.lru_cache(maxsize=None)
def _onednn_bfloat16() -> bool:
    import torch
    try:  # the very test oneDNN's bfloat16 ops make before refusing to run
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def check_supported(kernels: Kernels, device, dtype) -> None:
    """A ConfigError where `kernels` (given, not chosen) cannot run `dtype` on this CPU: said
    before any net is built, instead of a RuntimeError from oneDNN at the first image."""
    import torch
    if torch.device(device).type == "cpu" and {"onednn", "fused"} & {kernels.conv, kernels.fc}:
        why = onednn_refusal(dtype)
        if why:
            raise ConfigError(f"kernels {kernels}: {why}; use conv=channels_last,fc=gemm (or float32)")


def measure(dtype) -> dict:
    """GFLOP/s of every candidate of each layer kind in `dtype`: what the rule in `choose` is
    checked against on a machine ({"fc:gemm": ..., "fc:onednn": ..., "conv:...": ...}; the
    oneDNN candidates only where oneDNN runs `dtype`)."""
    return fc_rates(dtype) | conv_rates(dtype)


def best_rate(fn, flops: float, repeats: int = 3) -> float:
    fn()  # warm-up: oneDNN builds its primitive here
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def fc_rates(dtype, rows: int = 128, n: int = 4096) -> dict:
    """GFLOP/s of an fc7-sized product (rows x n) @ (n x n) done each way (128 rows: fc7 at
    Q = 256, batch 8 and flips)."""
    import torch
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, n, generator=gen).to(dtype)
    w = (torch.randn(n, n, generator=gen) / n ** 0.5).to(dtype)
    b = torch.zeros(n, dtype=dtype)
    flops = 2.0 * rows * n * n
    with torch.inference_mode():
        rates = {"fc:gemm": best_rate(lambda: F.linear(x, w, b), flops)}
        if not onednn_refusal(dtype):
            packed = onednn_linear(w, b)
            rates["fc:onednn"] = best_rate(lambda: packed(x), flops)
        return rates


def conv_rates(dtype, batch: int = 2, channels: int = 256, side: int = 56) -> dict:
    """GFLOP/s of VGG's conv3 block (two 3x3 convolutions + ReLU, 256 channels, 56x56) each way."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
    block = block.eval().to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 2.0 * batch * channels * channels * 9 * side * side
    with torch.inference_mode():
        rates = {"conv:channels_last": best_rate(lambda: block(x), flops)}
        if not onednn_refusal(dtype):
            blocked, fused = to_onednn_convs(block), to_fused_convs(block)
            rates["conv:fused"] = best_rate(lambda: fused(x), flops)
            rates["conv:onednn"] = best_rate(lambda: blocked(x.to_mkldnn()).to_dense(), flops)
        return rates


# -- the oneDNN layers ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _layers():
    """The oneDNN modules, defined on first use so that `import featx.net.kernels` needs no torch."""
    import torch
    from torch import nn

    class _OneDNNLinear(nn.Module):
        """y = x @ weight.T + bias with the weight packed once for oneDNN (dense in, dense out).

        As torch.utils.mkldnn.MkldnnLinear, without TorchScript; the bias stays float32 for
        accuracy in bfloat16, as there."""

        def __init__(self, weight, bias):
            super().__init__()
            self.dtype = weight.dtype
            self.out_features = weight.shape[0]
            self.packed_weight = weight.detach().to_mkldnn()
            self.packed_bias = bias.detach().float().to_mkldnn()

        # As an nn.Linear's, for code that reads the layer (a dense copy, made on access)
        weight = property(lambda self: self.packed_weight.to_dense())
        bias = property(lambda self: self.packed_bias.to_dense().to(self.dtype))

        def forward(self, x):
            y = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.packed_weight, self.packed_bias)
            return y.to_dense()

    class _OneDNNConv2d(nn.Module):
        """A Conv2d whose weight is reordered once into oneDNN's blocked layout; takes and gives
        oneDNN (`to_mkldnn`) tensors, so a stack of them never leaves that layout."""

        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.padding, self.stride = conv.padding, conv.stride
            self.dilation, self.groups = conv.dilation, conv.groups
            self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                conv.weight.detach().contiguous().to_mkldnn(), self.padding, self.stride,
                self.dilation, self.groups)
            self.bias = conv.bias.detach().float().to_mkldnn()

        def forward(self, x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)

    class _ConvReLU(nn.Module):
        """relu(conv(x)) in one oneDNN convolution (ReLU as its post-op), on dense tensors:
        the same primitive as the plain convolution, the output written once."""

        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

        def forward(self, x):
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args, "relu", [], "")

    class _MaxPool2x2(nn.Module):
        """VGG's 2x2, stride-2 max-pool (floor mode) as the maximum of four strided views: the
        same numbers as nn.MaxPool2d, without the indices it computes, and faster on
        channels-last tensors."""

        def forward(self, x):
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            return torch.maximum(torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
                                 torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))

    return _OneDNNLinear, _OneDNNConv2d, _ConvReLU, _MaxPool2x2


def onednn_linear(weight, bias):
    """A module computing x @ weight.T + bias with oneDNN, the weight packed once."""
    return _layers()[0](weight, bias)


def to_onednn_convs(features):
    """A copy of a conv stack (Conv2d / ReLU / MaxPool2d) that runs on oneDNN tensors: input
    `x.to_mkldnn()`, output `.to_dense()`; ReLU and max-pooling take such tensors as they are."""
    from torch import nn
    conv = _layers()[1]
    return nn.Sequential(*[conv(m) if isinstance(m, nn.Conv2d) else m for m in features])


def to_fused_convs(features):
    """A copy of a conv stack (Conv2d / ReLU / MaxPool2d, as torchvision's VGG) with each
    Conv2d + ReLU pair as one oneDNN convolution and each 2x2 max-pool as _MaxPool2x2; dense
    (channels-last) tensors in and out. Anything else is kept as it is."""
    from torch import nn
    _, _, conv_relu, pool = _layers()
    layers, mods = [], list(features)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU):
            layers.append(conv_relu(m))
            i += 2
            continue
        if isinstance(m, nn.MaxPool2d) and (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode) in (
                ((2, 2), (2, 2), 0, 1, False), (2, 2, 0, 1, False)):
            m = pool()
        layers.append(m)
        i += 1
    return nn.Sequential(*layers)


# -- what the machine is -------------------------------------------------------------------------

# The CPU flags that decide kernels and dtypes (the bench records them beside every figure).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: tuple  # the CPU_FLAGS this CPU has
    cores: int  # logical CPUs this process may use
    vendor: str = ""  # "GenuineIntel", "AuthenticAMD", ... ("" where unknown)

    @property
    def native_bfloat16(self) -> bool:
        """Whether the CPU computes bfloat16 products in hardware (AVX-512 BF16 or AMX)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags


    @property
    def slug(self) -> str:
        """'AMD EPYC 9B14' -> 'amd-epyc-9b14': the file name of this CPU's bench figures."""
        return re.sub(r"[^a-z0-9]+", "-", self.model.lower()).strip("-") or "unknown-cpu"


@functools.lru_cache(maxsize=None)
def cpu_info() -> CpuInfo:
    fields = {}  # the first CPU's "key: value" lines
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return CpuInfo(model, tuple(f for f in CPU_FLAGS if f in flags), cores, vendor)
