"""Every kernel choice (featx.net.kernels) gives the reference dense net's numbers."""
import warnings

import numpy as np
import pytest
import torch

from featx import Extractor
from featx.net import kernels as K
from featx.errors import ConfigError
from featx.net.specs import NETS, NetSpec
from featx.net.vgg import DenseVGG, random_state_dict, reference_dense_net

# VGG's geometry, channel counts that oneDNN blocks (multiples of 16), small enough for CI.
MID = NetSpec("M", "mid", (16, "M", 32, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"),
              fc_dim=128, num_classes=10)
CHOICES = [K.Kernels(conv=c, fc=f) for c in K.CONV_KERNELS for f in K.FC_KERNELS]


@pytest.mark.parametrize("kernels", CHOICES, ids=str)
def test_every_kernel_choice_equals_the_reference_dense_net(kernels):
    state = random_state_dict(MID, seed=4)
    x = torch.randn(3, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = reference_dense_net(MID, state)(x)
        model = DenseVGG(MID)
        model.load_torchvision_state_dict(state)
        model = model.eval().to(memory_format=torch.channels_last).use_kernels(kernels)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == ref.shape == (3, 128, 2, 4)
    assert (ref > 0).float().mean() > 0.2  # real activations
    assert (got - ref).abs().max() / ref.abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_convolutions_and_pooling_give_torchs_numbers_exactly(dtype):
    """ReLU inside oneDNN's convolution and the four-view max-pool change no bit: relu commutes
    with rounding, and a maximum is a maximum (odd sides are floored as nn.MaxPool2d does)."""
    if K.onednn_refusal(dtype):
        pytest.skip(K.onednn_refusal(dtype))
    from torch import nn
    gen = torch.Generator().manual_seed(1)
    stack = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=2, stride=2))
    stack = stack.eval().to(dtype).to(memory_format=torch.channels_last)
    fused = K.to_fused_convs(stack)
    assert [type(m).__name__ for m in fused] == ["_ConvReLU", "_MaxPool2x2", "_ConvReLU", "_MaxPool2x2"]
    for h, w in ((64, 96), (67, 45)):
        x = torch.randn(2, 3, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            want, got = stack(x), fused(x)
        assert got.shape == want.shape == (2, 32, h // 4, w // 4)
        assert torch.equal(got, want)


def test_kernel_choices_give_the_same_descriptors_through_the_extractor(monkeypatch):
    monkeypatch.setitem(NETS, "M", MID)
    pixels = [np.random.default_rng(i).integers(0, 256, (240, 300, 3), dtype=np.uint8) for i in range(2)]
    out = [Extractor("M", scales=(256,), weights="random:0", device="cpu", kernels=k).extract(pixels)
           for k in CHOICES]
    for other in out[1:]:
        assert np.abs(other - out[0]).max() / np.abs(out[0]).max() <= 1e-5


def test_kernels_are_named_and_checked(monkeypatch):
    assert K.parse_kernels("conv=onednn,fc=gemm") == {"conv": "onednn", "fc": "gemm"}
    assert K.parse_kernels("fc=onednn") == {"fc": "onednn"}
    with pytest.raises(ConfigError, match="FEATX_KERNELS='conv=fast'"):
        K.parse_kernels("conv=fast")
    with pytest.raises(ConfigError, match="write conv="):
        K.parse_kernels("gemm")
    ex = Extractor(MID, scales=(256,), weights="random:0", device="cpu", kernels="conv=onednn,fc=onednn")
    assert str(ex.kernels) == "conv=onednn,fc=onednn" and ex.model.kernels == ex.kernels


@pytest.mark.parametrize("vendor,fc", [("AuthenticAMD", "onednn"), ("GenuineIntel", "gemm"), ("", "gemm")])
def test_the_choice_follows_the_cpu_once_per_process(vendor, fc, monkeypatch):
    monkeypatch.setattr(K, "cpu_info", lambda: K.CpuInfo("X", ("avx512f",), 2, vendor))
    monkeypatch.setattr(K, "_onednn_bfloat16", lambda: True)  # (where not: the test after the next)
    monkeypatch.delenv("FEATX_KERNELS", raising=False)
    K._choose.cache_clear()
    try:
        chosen = K.choose("cpu", torch.float32)
        assert (chosen.conv, chosen.fc) == ("fused", fc)
        assert K.choose("cpu", torch.float32) is chosen  # decided once per process
        # bfloat16 products are oneDNN's already; the convolutions are fused as in float32
        assert K.choose("cpu", torch.bfloat16) == K.Kernels(conv="fused")
        assert K.choose("cpu", torch.float16) == K.Kernels()  # no oneDNN half path on CPUs
        assert K.choose("cuda", torch.float32) == K.Kernels()  # GPUs: cuBLAS / cuDNN
        K._choose.cache_clear()
        monkeypatch.setenv("FEATX_KERNELS", "conv=onednn")
        forced = K.choose("cpu", torch.float32)
        assert (forced.conv, forced.fc) == ("onednn", fc) and "FEATX_KERNELS" in forced.how
        assert K.choose("cuda", torch.float32) == K.Kernels()  # the override is about CPUs
        with pytest.raises(ConfigError, match="oneDNN kernels run float32 and bfloat16, not float16"):
            K.choose("cpu", torch.float16)
    finally:
        K._choose.cache_clear()


def test_measure_times_both_candidates_of_each_kind():
    rates = K.measure(torch.float32)
    assert set(rates) == {"fc:gemm", "fc:onednn", "conv:channels_last", "conv:fused", "conv:onednn"}
    assert min(rates.values()) > 0


@pytest.mark.parametrize("kernels", CHOICES, ids=str)
def test_bfloat16_runs_on_cpu_with_every_kernel_choice(kernels, monkeypatch):
    """Smoke size: it runs and stays close to float32 (accuracy is measured on real images in
    bench/dtype_accuracy.py, not asserted here)."""
    monkeypatch.setitem(NETS, "M", MID)
    pixels = [np.random.default_rng(0).integers(0, 256, (240, 300, 3), dtype=np.uint8)]
    if K.onednn_refusal(torch.bfloat16) and {"fused", "onednn"} & {kernels.conv, kernels.fc}:
        # a CPU where oneDNN has no bfloat16 (AVX2 only): one line before any net is built
        with pytest.raises(ConfigError, match=r"oneDNN runs bfloat16 only on CPUs with AVX-512"):
            Extractor("M", scales=(256,), weights="random:0", device="cpu", dtype="bfloat16", kernels=kernels)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CI CPUs without native bfloat16 warn
        half = Extractor("M", scales=(256,), weights="random:0", device="cpu", dtype="bfloat16",
                         kernels=kernels).extract(pixels)
    full = Extractor("M", scales=(256,), weights="random:0", device="cpu").extract(pixels)
    assert half.dtype == np.float32 and np.isfinite(half).all()
    cos = (half * full).sum() / np.linalg.norm(half) / np.linalg.norm(full)
    assert cos > 0.99


def test_bfloat16_warns_on_a_cpu_without_native_support(monkeypatch):
    import featx.extract.extractor
    monkeypatch.setattr(featx.extract.extractor, "cpu_info", lambda: K.CpuInfo("Old CPU", ("avx2", "fma"), 2))
    with pytest.warns(UserWarning, match=r"bfloat16 on this CPU \(Old CPU\) has no native support"):
        Extractor(MID, scales=(256,), weights="random:0", device="cpu", dtype="bfloat16")
    monkeypatch.setattr(featx.extract.extractor, "cpu_info", lambda: K.CpuInfo("New CPU", ("avx512_bf16",), 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Extractor(MID, scales=(256,), weights="random:0", device="cpu", dtype="bfloat16")


def test_cpu_info_reads_the_model_and_the_flags_that_matter():
    info = K.cpu_info()
    assert info.model and info.cores >= 1
    assert set(info.flags) <= set(K.CPU_FLAGS)
    assert info.native_bfloat16 == ("avx512_bf16" in info.flags or "amx_bf16" in info.flags)


def test_the_rule_keeps_bfloat16_off_onednn_where_onednn_refuses_it(monkeypatch):
    # an AVX2-only CPU (an AMD EPYC of this kind runs CI at times): oneDNN has no bfloat16 there
    monkeypatch.setattr(K, "_onednn_bfloat16", lambda: False)
    monkeypatch.delenv("FEATX_KERNELS", raising=False)
    K._choose.cache_clear()
    try:
        chosen = K.choose("cpu", torch.bfloat16)
        assert (chosen.conv, chosen.fc) == ("channels_last", "gemm") and "lacks" in chosen.how
        assert K.choose("cpu", torch.float32).conv == "fused"  # float32 is unaffected
        with pytest.raises(ConfigError, match=r"kernels conv=fused,fc=gemm: oneDNN runs bfloat16 only on CPUs"):
            K.check_supported(K.Kernels(conv="fused"), "cpu", torch.bfloat16)
        K.check_supported(K.Kernels(conv="fused"), "cpu", torch.float32)
        monkeypatch.setenv("FEATX_KERNELS", "conv=onednn")
        K._choose.cache_clear()
        with pytest.raises(ConfigError, match=r"FEATX_KERNELS='conv=onednn': oneDNN runs bfloat16 only"):
            K.choose("cpu", torch.bfloat16)
    finally:
        K._choose.cache_clear()
