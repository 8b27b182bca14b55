"""Real ImageNet Net-E weights (../shared/weights, Caffe convention). Skipped where absent."""
import numpy as np
import pytest
import skimage.data
import torch

from featx import Extractor
from featx.data.images import load_resized
from featx.net.specs import NETS
from featx.net.vgg import DenseVGG
from featx.net.weights import load_weights

CATS = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}
ESPRESSO = 967


@pytest.fixture(scope="module")
def net_e_with_fc8(real_weights_e):
    w = load_weights(NETS["E"], real_weights_e, "caffe")
    model = DenseVGG(NETS["E"], with_fc8=True)
    model.load_torchvision_state_dict(w.state_dict)
    return model.eval(), w.preprocess


@pytest.mark.parametrize("photo,accept", [("chelsea", set(CATS)), ("coffee", {ESPRESSO})])
def test_dense_full_net_ranks_the_right_class_first(net_e_with_fc8, photo, accept):
    model, preprocess = net_e_with_fc8
    pixels = load_resized(getattr(skimage.data, photo)(), 256)
    x = preprocess(torch.from_numpy(pixels[None].copy()).permute(0, 3, 1, 2))
    with torch.inference_mode():
        scores = model(x)  # (1, 1000, h, w): a class-score map
    assert scores.shape[-2:] == (2, 6)  # 256x384 input -> 8x12 pool5 -> 2x6 windows
    top = int(torch.softmax(scores, 1).mean(dim=(2, 3)).argmax())
    assert top in accept


def test_extractor_with_real_weights(real_weights_e):
    ex = Extractor("E", scales=(256,), weights=real_weights_e, preprocess="caffe", device="cpu")
    cat, coffee = skimage.data.chelsea(), skimage.data.coffee()
    d = ex.extract([cat, coffee, cat[:, ::-1].copy()])
    assert d.shape == (3, 1, 4096) and (d >= 0).all()
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    # flip-averaged descriptors of an image and its mirror coincide; a different photo does not
    assert cos(d[0, 0], d[2, 0]) > 0.999
    assert cos(d[0, 0], d[1, 0]) < 0.6
