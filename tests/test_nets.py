import numpy as np
import pytest
import torch
import torchvision

from featx import Extractor, WeightsError
from featx.net.specs import NETS
from featx.net.vgg import DenseVGG, random_state_dict


def torchvision_fc7(arch, state, x):
    tv = getattr(torchvision.models, arch)()
    tv.load_state_dict(state)
    tv.eval()
    with torch.inference_mode():
        return tv.classifier[:5](torch.flatten(tv.avgpool(tv.features(x)), 1))


@pytest.mark.parametrize("name", ["D", "E"])
def test_dense_fc7_equals_torchvision_classifier_at_224(name):
    spec = NETS[name]
    state = random_state_dict(spec, seed=1)
    model = DenseVGG(spec)
    model.load_torchvision_state_dict(state)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        dense = model.eval()(x)
    ref = torchvision_fc7(spec.arch, state, x)
    assert dense.shape == (2, 4096, 1, 1)
    rel = (dense[:, :, 0, 0] - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-4
    assert (ref > 0).float().mean() > 0.1  # real activations, not a sea of zeros


def test_extractor_at_224_without_flip_equals_torchvision(tmp_path):
    spec = NETS["D"]
    state = random_state_dict(spec, seed=2)
    torch.save(state, tmp_path / "d.pth")
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ex = Extractor("D", scales=(224,), flip=False, weights=tmp_path / "d.pth",
                   preprocess="torchvision", device="cpu")
    got = ex.extract([pixels])[0, 0]
    x = ex.preprocess(torch.from_numpy(pixels[None]).permute(0, 3, 1, 2))
    ref = torchvision_fc7("vgg16", state, x)[0].numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


def test_larger_input_gives_larger_map_whose_cells_are_windowed_classifiers():
    spec = NETS["D"]
    state = random_state_dict(spec, seed=3)
    model = DenseVGG(spec).eval()
    model.load_torchvision_state_dict(state)
    x = torch.randn(1, 3, 224, 288, generator=torch.Generator().manual_seed(0))
    tv = torchvision.models.vgg16().eval()
    tv.load_state_dict(state)
    with torch.inference_mode():
        dense = model(x)
        pool5 = tv.features(x)
        assert pool5.shape[-2:] == (7, 9) and dense.shape == (1, 4096, 1, 3)
        for j in range(3):
            window = torch.flatten(pool5[:, :, :, j:j + 7], 1)
            cell = tv.classifier[:5](window)[0]
            assert torch.allclose(dense[0, :, 0, j], cell, rtol=1e-4, atol=1e-5 * cell.abs().max())


def test_wrong_tensor_shape_is_named(tiny_net):
    state = random_state_dict(tiny_net)
    state["features.3.weight"] = torch.zeros(8, 5, 3, 3)
    with pytest.raises(WeightsError, match=r"features\.3\.weight has shape \(8, 5, 3, 3\), expected \(8, 4, 3, 3\)"):
        DenseVGG(tiny_net).load_torchvision_state_dict(state, origin="my.pth")
    del state["classifier.3.bias"]
    with pytest.raises(WeightsError, match=r"my.pth: missing 1 tensor\(s\).*classifier\.3\.bias"):
        DenseVGG(tiny_net).load_torchvision_state_dict(state, origin="my.pth")


def test_min_side_is_224():
    assert NETS["D"].min_side == 224 and NETS["E"].min_side == 224


def test_fc_layers_equal_a_7x7_convolution_in_any_chunking(tiny_net, monkeypatch):
    """fc6 as a matrix product over windows = the 7x7 convolution the paper describes, also when
    the window copy is cut into several chunks of images."""
    model = DenseVGG(tiny_net, with_fc8=True).eval()
    model.load_torchvision_state_dict(random_state_dict(tiny_net, seed=4))
    x = torch.randn(3, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    k = tiny_net.fc6_window
    with torch.inference_mode():
        pool5 = model.features(x)
        conv = torch.nn.functional.conv2d(pool5, model.fc6.weight.reshape(-1, tiny_net.pool5_channels, k, k),
                                          model.fc6.bias).relu()
        conv = torch.nn.functional.conv2d(conv, model.fc7.weight[:, :, None, None], model.fc7.bias).relu()
        conv = torch.nn.functional.conv2d(conv, model.fc8.weight[:, :, None, None], model.fc8.bias)
        whole = model(x)
        monkeypatch.setattr(DenseVGG, "window_bytes", 1)  # one image per chunk
        chunked = model(x)
    assert whole.shape == conv.shape == (3, 10, 2, 4)
    torch.testing.assert_close(whole, conv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)  # GEMM blocking may differ


def test_too_small_input_is_a_clear_error(tiny_net):
    with pytest.raises(ValueError, match="pool5 is 6x6, fc6 needs 7x7"):
        DenseVGG(tiny_net).eval()(torch.zeros(1, 3, 200, 200))


def test_specs_and_conv_stack_are_torchvisions():
    from torchvision.models.vgg import cfgs, make_layers as tv_make_layers

    from featx.net.vgg import make_layers
    for name in ("D", "E"):
        assert list(NETS[name].layers) == cfgs[name]
        ours, theirs = make_layers(NETS[name].layers).state_dict(), tv_make_layers(cfgs[name]).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
