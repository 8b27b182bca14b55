"""The backbone seam (featx.net.specs.Backbone) and its second implementation, timm models
(featx.net.timm). Real ImageNet weights exist here for Net-E only: timm's vgg19 is checked
against featx's Net-E with them; every other timm model runs on seeded random weights, which
checks shapes, the protocol (scales, flip, caches, SVMs) and the weight plumbing, not accuracy."""
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

timm = pytest.importorskip("timm")

from featx import Extractor, VGGDescriptor  # noqa: E402
from featx.extract.cache import DescriptorCache, cache_file  # noqa: E402
from featx.cli import main  # noqa: E402
from featx.extract.cost import descriptor_flops  # noqa: E402
from featx.errors import ConfigError, WeightsError  # noqa: E402
from featx.data.images import load_resized  # noqa: E402
from featx.net.specs import NETS, check_scales, get_spec  # noqa: E402
from featx.net.vgg import random_state_dict  # noqa: E402
from featx.net.timm import TimmSpec  # noqa: E402
from featx.net.weights import TORCHVISION, Weights  # noqa: E402

from conftest import make_image  # noqa: E402


def photo(w=300, h=240, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_timm_vgg19_with_the_real_caffe_weights_gives_net_e(real_weights_e):
    """The issue's proof of the seam: timm's vgg19 (ConvMlp = fc6 as a 7x7 conv, fc7 as a 1x1)
    with the shared Net-E file, converted to timm's layout at load time, is featx's Net-E."""
    skimage = pytest.importorskip("skimage.data")
    images = [skimage.chelsea(), skimage.coffee()]  # 451x300 and 600x400: non-square maps
    ours = Extractor("E", weights=f"caffe:{real_weights_e}", scales=(224, 256), device="cpu")
    theirs = Extractor("timm:vgg19", weights=f"caffe:{real_weights_e}", scales=(224, 256), device="cpu")
    assert theirs.preprocess == ours.preprocess and theirs.preprocess.name == "caffe"
    assert theirs.weights.digest == ours.weights.digest  # the same tensors, in another layout
    assert theirs.weights.known_as and "8-bit packed" in theirs.weights.known_as
    a, b = ours.extract(images), theirs.extract(images)
    assert a.shape == b.shape == (2, 2, 4096)
    assert rel(b, a) < 1e-5


def test_timm_vgg16_takes_torchvision_layout_weights_as_net_d():
    """Net-D structurally (no real Net-D weights here): the same seeded torchvision-layout
    tensors in featx's Net-D and in timm's vgg16 give the same descriptors."""
    w = Weights(random_state_dict(NETS["D"], seed=5), TORCHVISION, "random:5")
    img = photo(260, 230)
    a = Extractor("D", weights=w, scales=(224,), device="cpu").extract([img])
    b = Extractor("timm:vgg16", weights=w, scales=(224,), device="cpu").extract([img])
    assert a.shape == b.shape == (1, 1, 4096) and np.abs(a).max() > 0
    assert rel(b, a) < 1e-5


def test_a_cnn_descriptor_is_the_flip_average_of_pooled_pre_logits_features():
    ex = Extractor("timm:resnet18", weights="random:3", scales=(160, 224), device="cpu")
    img = photo()
    d = ex.extract([img])
    assert d.shape == (1, 2, 512) and ex.dim == 512 and np.isfinite(d).all()
    model = timm.create_model("resnet18", num_classes=0)
    model.load_state_dict(get_spec("timm:resnet18").random_state_dict(3))
    model.eval()
    for i, q in enumerate((160, 224)):
        x = torch.from_numpy(load_resized(img, q)[None].copy()).permute(0, 3, 1, 2)
        x = TORCHVISION(x)
        with torch.no_grad():
            want = (model(x) + model(x.flip(3))).numpy()[0] / 2
        np.testing.assert_allclose(d[0, i], want, rtol=1e-4, atol=1e-5)
    # seeded: the same weights, so the same descriptors, in another process or run
    again = Extractor("timm:resnet18", weights="random:3", scales=(160, 224), device="cpu").extract([img])
    np.testing.assert_array_equal(d, again)
    other = Extractor("timm:resnet18", weights="random:4", scales=(160, 224), device="cpu").extract([img])
    assert rel(other, d) > 1e-2


def test_a_vit_takes_any_image_size():
    ex = Extractor("timm:vit_tiny_patch16_224", weights="random", scales=(200, 250), device="cpu")
    d = ex.extract([photo(301, 227), photo(227, 301, seed=1)])  # neither side a multiple of 16
    assert d.shape == (2, 2, 192) and np.isfinite(d).all()
    assert rel(d[0], d[1]) > 1e-3


def test_the_spec_of_a_timm_model():
    spec = get_spec("timm:resnet18")
    assert isinstance(spec, TimmSpec) and spec == TimmSpec("resnet18")
    assert (spec.name, spec.label, spec.file_name, spec.dim) == ("timm:resnet18", "timm:resnet18", "timm-resnet18", 512)
    assert get_spec("e") is NETS["E"]
    for unknown in ("timm:no_such_net", "F"):
        with pytest.raises(ConfigError):
            get_spec(unknown)
    # FLOPs counted at 224 x 224 (resnet18: 1.82 G multiply-adds) and scaled by the area
    assert 3.5e9 < spec.forward_flops(224, 224) < 3.8e9
    assert spec.forward_flops(448, 224) == pytest.approx(2 * spec.forward_flops(224, 224), rel=1e-6)
    assert descriptor_flops(spec, (240, 320), 224) == 2 * spec.forward_flops(224, 298)
    # a CNN takes any Q down to its stride; timm's VGG, like featx's, needs the 7x7 fc6 window
    assert check_scales((64, 100), spec) == (64, 100)
    with pytest.raises(ConfigError, match="timm:vgg19 needs images whose short side is at least 224"):
        check_scales((200,), get_spec("timm:vgg19"))
    assert cache_file("c", "timm:resnet18", "random:2").name == "timm-resnet18-random-2.h5"
    assert cache_file("c", "E", "caffe", "bfloat16").name == "E-caffe-bfloat16.h5"


def test_wrong_names_and_sources_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_18'.*close names: .*resnet18"):
        get_spec("timm:resnet_18")
    with pytest.raises(ConfigError, match="name the model, e.g. timm:resnet50"):
        get_spec("timm:")
    with pytest.raises(ConfigError, match="unknown net 'F'.*timm:MODEL"):
        get_spec("F")
    with pytest.raises(WeightsError, match="caffe weights are VGG weights; timm:resnet18 takes timm"):
        Extractor("timm:resnet18", weights="caffe", device="cpu")
    with pytest.raises(WeightsError, match="weights file .*nope.pth does not exist"):
        Extractor("timm:resnet18", weights=tmp_path / "nope.pth", device="cpu")
    with pytest.raises(ConfigError, match="timm:resnet18 runs torch's own kernels only"):
        Extractor("timm:resnet18", weights="random", kernels="conv=onednn", device="cpu")
    # timm's pretrained weights, offline (conftest sets HF_HUB_OFFLINE): one WeightsError
    with pytest.raises(WeightsError, match="cannot fetch timm's pretrained weights for resnet18.*--weights FILE.pth"):
        Extractor("timm:resnet18", device="cpu")  # the default source: timm
    with pytest.raises(WeightsError, match="trained with their own preprocessing"):
        Extractor("timm:resnet18", preprocess="caffe", device="cpu", lazy=True)
    # another model's tensors: named by the file
    other = tmp_path / "r34.pth"
    torch.save(get_spec("timm:resnet34").random_state_dict(0), other)
    with pytest.raises(WeightsError, match=r"r34.pth: not timm:resnet18 weights: 96 tensor\(s\) unknown to the model: layer1.2"):
        Extractor("timm:resnet18", weights=other, device="cpu")
    bad = dict(get_spec("timm:resnet18").random_state_dict(0), **{"conv1.weight": torch.ones(64, 3, 3, 3)})
    torch.save(bad, other)
    with pytest.raises(WeightsError, match=r"r34.pth: tensor conv1.weight has shape \(64, 3, 3, 3\), expected \(64, 3, 7, 7\)"):
        Extractor("timm:resnet18", weights=other, device="cpu")
    # without timm installed
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"pip install 'featx\[timm\]'"):
        TimmSpec("resnet50")


def test_a_timm_state_file_in_both_formats(tmp_path):
    state = get_spec("timm:resnet18").random_state_dict(7)
    torch.save(state, tmp_path / "r18.pth")
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "r18.safetensors"))
    img = photo()
    want = Extractor("timm:resnet18", weights="random:7", scales=(224,), device="cpu").extract([img])
    for name in ("r18.pth", "r18.safetensors"):
        ex = Extractor("timm:resnet18", weights=tmp_path / name, scales=(224,), device="cpu")
        assert ex.weights.source == "file" and ex.preprocess == TORCHVISION  # resnet18's pretrained_cfg
        np.testing.assert_array_equal(ex.extract([img]), want)
    # a full checkpoint (with its classifier) is read too: the head is left out
    full = dict(state, **{"fc.weight": torch.ones(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save({"state_dict": full}, tmp_path / "full.pth")
    got = Extractor("timm:resnet18", weights=tmp_path / "full.pth", scales=(224,), device="cpu").extract([img])
    np.testing.assert_array_equal(got, want)


def test_fused_with_vgg_in_a_scikit_learn_pipeline():
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC
    desc = VGGDescriptor(nets=("T", "timm:resnet18"), scales=(224,), weights="random", device="cpu")
    X = [photo(240 + i, 230, seed=i) for i in range(6)]
    D = desc.fit_transform(X)
    assert D.shape == (6, 16 + 512)
    assert np.allclose(np.linalg.norm(D, axis=1), 1, atol=1e-5)
    names = desc.get_feature_names_out()
    assert names[0] == "T_0" and names[16] == "timm:resnet18_0" and len(names) == 528
    clf = make_pipeline(VGGDescriptor(nets=("timm:resnet18",), scales=(224,), weights="random", device="cpu"),
                        LinearSVC()).fit(X, [0, 1] * 3)
    assert clf.predict(X).shape == (6,)


def test_the_command_line_end_to_end(tmp_path, monkeypatch):
    """extract -> info -> svm -> predict -> export with a timm net fused with a VGG one."""
    monkeypatch.chdir(tmp_path)
    for c, seed in (("cats", 0), ("dogs", 100)):
        for i in range(8):
            make_image(tmp_path / "pets" / c / f"{i}.jpg", (260, 230) if i % 2 else (230, 260), seed=seed + i, fmt="JPEG")
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    weights = "timm:resnet18=random:1,T=random"
    r = run("extract", "--dataset", "folder:pets", "--net", "timm:resnet18,T", "--weights", weights,
            "--scales", "224", "-q")
    assert r.exit_code == 0, r.output
    cache = next(tmp_path.rglob("timm-resnet18-random-1.h5"))
    c = DescriptorCache(cache)
    assert c.attrs["net"] == "timm:resnet18" and c.attrs["dim"] == 512 and "pre-logits" in c.attrs["pooling"]
    assert c.load(rows=range(16)).shape == (16, 1, 512)
    r = run("info", cache)
    assert r.exit_code == 0 and "timm:resnet18 (timm:resnet18), 512-D, float32" in r.output, r.output
    r = run("extract", "--dataset", "folder:pets", "--net", "timm:resnet18", "--weights", "random:1", "--scales", "224", "-q")
    assert "computed 0, reused 16" in r.output, r.output  # found again by the same name rule
    r = run("svm", "folder:pets", "--net", "timm:resnet18,T", "--weights", weights, "--scales", "224",
            "--results-dir", "res")
    assert r.exit_code == 0, r.output
    stem = tmp_path / "res" / "pets" / "timm-resnet18+T-224-224x1-mean"
    record = json.loads(stem.with_suffix(".model.json").read_text())
    assert record["descriptor"]["nets"] == ["timm:resnet18", "T"]
    assert record["descriptor"]["weights"]["timm:resnet18"]["source"] == "random:1"
    r = run("predict", stem.with_suffix(".model.json"), tmp_path / "pets" / "cats" / "0.jpg")
    assert r.exit_code == 0 and "cats/0.jpg: " in r.output, r.output
    r = run("export", "--dataset", "folder:pets", "--net", "timm:resnet18", "--weights", "random:1",
            "--scales", "224", "--out", "pets.parquet")
    assert r.exit_code == 0, r.output
    import pandas as pd
    frame = pd.read_parquet(tmp_path / "pets.parquet")
    assert len(frame) == 16 and len(frame.iloc[0]["timm:resnet18@224"]) == 512
    r = run("extract", "--dataset", "folder:pets", "--net", "timm:resnet_18", "-q")
    assert r.exit_code == 2 and "unknown timm model 'resnet_18'" in r.output


def test_a_model_with_its_own_preprocessing_trains_and_predicts(tmp_path, monkeypatch):
    """A ViT whose pretrained_cfg has its own mean/std: its caches record preprocess "timm",
    which the result, the model record and featx predict read back."""
    monkeypatch.chdir(tmp_path)
    for c, seed in (("cats", 0), ("dogs", 100)):
        for i in range(6):
            make_image(tmp_path / "pets" / c / f"{i}.jpg", (250, 230), seed=seed + i, fmt="JPEG")
    net = "timm:vit_tiny_patch16_224.augreg_in21k"
    assert get_spec(net).own_preprocess().mean == (0.5, 0.5, 0.5)
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    r = run("svm", "folder:pets", "--net", net, "--weights", "random", "--scales", "160", "--extract",
            "--results-dir", "res", "--c-grid", "1")
    assert r.exit_code == 0, r.output
    record = tmp_path / "res" / "pets" / "timm-vit_tiny_patch16_224.augreg_in21k-160-160x1-mean.model.json"
    meta = json.loads(record.read_text())
    assert meta["descriptor"]["preprocess"] == {net: "timm"}
    r = run("predict", record, tmp_path / "pets" / "dogs" / "1.jpg")
    assert r.exit_code == 0 and "dogs/1.jpg: " in r.output, r.output
    with pytest.raises(WeightsError, match="preprocess 'timm' is a timm model's own; Net-T takes"):
        Extractor("T", weights="random", preprocess="timm")
