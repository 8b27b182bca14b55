import dataclasses
import pickle

import numpy as np

import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from conftest import TINY
from featx import VGGDescriptor
from featx.errors import ConfigError
from featx.net.specs import NETS



def two_class_images(tmp_path, n=8):
    """Class 0: dark noise; class 1: bright stripes. Separable by any sensible descriptor."""
    paths, labels = [], []
    rng = np.random.default_rng(0)
    from PIL import Image
    for i in range(n):
        a = rng.integers(0, 80, (240, 300, 3), dtype=np.uint8)
        if i % 2:
            a[::8] = 255
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
        labels.append(i % 2)
    return paths, np.array(labels)


def test_transform_dimensions_and_normalisation(images, monkeypatch):
    paths = [str(p) for p in images]
    mean = VGGDescriptor(nets=("T",), scales=(224, 256), weights="random:0", device="cpu").fit_transform(paths)
    assert mean.shape == (6, 16)
    assert np.allclose(np.linalg.norm(mean, axis=1), 1, atol=1e-6)
    monkeypatch.setitem(NETS, "U", dataclasses.replace(TINY, name="U", arch="tiny-u"))  # a second tiny net
    both = VGGDescriptor(nets=("T", "U"), scales=(224, 256), aggregate="stack", weights="random:0",
                         device="cpu").fit_transform(paths)
    assert both.shape == (6, 64)
    with pytest.raises(ConfigError, match=r"nets \['T', 'T'\]: name at least one net, each once"):
        VGGDescriptor(nets=("T", "T"), weights="random:0").fit_transform(paths)


def test_in_a_pipeline_with_grid_search(tmp_path):
    paths, y = two_class_images(tmp_path)
    pipe = Pipeline([("vgg", VGGDescriptor(nets=("T",), scales=(224,), weights="random:0", device="cpu")),
                     ("svm", LinearSVC(C=10.0, dual=True, max_iter=20000))])
    assert (pipe.fit(paths, y).predict(paths) == y).all()
    search = GridSearchCV(pipe, {"svm__C": [1.0, 100.0]}, cv=2).fit(paths, y)
    assert search.best_score_ == 1.0
    cloned = clone(pipe)
    assert cloned.get_params()["vgg__scales"] == (224,)
    restored = pickle.loads(pickle.dumps(pipe))
    assert (restored.predict(paths) == y).all()


def count_work(monkeypatch):
    """Forward passes (images) and weight loads in this process, from now on."""
    import featx.extract.extractor as fe
    import featx.net.weights as fw
    fe._NETS.clear()  # nets shared by earlier tests would hide a load
    calls = {"images": 0, "loads": 0}
    forward, load = fe.Extractor.forward, fw.load_weights

    def counted_forward(self, pixels):
        calls["images"] += len(pixels)
        return forward(self, pixels)

    def counted_load(*args, **kwargs):
        calls["loads"] += kwargs.get("tensors", True)
        return load(*args, **kwargs)
    monkeypatch.setattr(fe.Extractor, "forward", counted_forward)
    monkeypatch.setattr(fe, "load_weights", counted_load)
    return calls


def test_grid_search_through_a_cache_computes_each_image_once_and_loads_the_weights_once(tmp_path, monkeypatch):
    paths, y = two_class_images(tmp_path)
    calls = count_work(monkeypatch)
    vgg = VGGDescriptor(nets=("T",), scales=(224,), weights="random:0", device="cpu", cache=tmp_path / "cache")
    pipe = Pipeline([("vgg", vgg), ("svm", LinearSVC(dual=True, max_iter=20000))])
    search = GridSearchCV(pipe, {"svm__C": [1.0, 100.0]}, cv=2).fit(paths, y)
    assert search.best_score_ == 1.0
    assert calls == {"images": 8, "loads": 1}  # without the cache: 32 images (4 fits x 2 folds + refit ...)
    # the same descriptors as computed directly, from the cache's file, in any order of any subset
    direct = VGGDescriptor(nets=("T",), scales=(224,), weights="random:0", device="cpu").transform(paths)
    assert np.allclose(vgg.transform(paths[::-1]), direct[::-1], atol=1e-6)
    assert (tmp_path / "cache" / "T-random-0.h5").is_file()
    # a later process reads them: no forward pass
    calls = count_work(monkeypatch)
    again = clone(vgg).transform(paths)
    assert calls["images"] == 0 and np.allclose(again, direct, atol=1e-6)


def test_feature_names_and_pandas_output(images):
    paths = [str(p) for p in images]
    stack = VGGDescriptor(nets=("T",), scales=(224, 256), aggregate="stack", weights="random:0", device="cpu")
    names = stack.get_feature_names_out()
    assert list(names[:2]) == ["T_Q224_0", "T_Q224_1"] and names[-1] == "T_Q256_15" and len(names) == 32
    frame = stack.set_output(transform="pandas").fit_transform(paths)
    assert list(frame.columns) == list(names)
    assert np.array_equal(frame.to_numpy(), stack.set_output(transform="default").transform(paths))
    assert list(VGGDescriptor(nets=("T",), weights="random:0").get_feature_names_out()[:2]) == ["T_0", "T_1"]


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_torch_tensors_and_torchvision_datasets_are_images(tmp_path, images):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.io import read_image

    from featx import ImageError
    for k, p in enumerate(images[:4]):
        (tmp_path / "folder" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(tmp_path / "folder" / f"c{k % 2}" / f"{k}.png")
    files = sorted(str(p) for p in (tmp_path / "folder").rglob("*.png"))
    vgg = VGGDescriptor(nets=("T",), scales=(224,), weights="random:0", device="cpu")
    want = vgg.transform(files)
    assert np.array_equal(vgg.transform([read_image(f) for f in files]), want)  # uint8 CxHxW
    assert np.array_equal(vgg.transform(ImageFolder(str(tmp_path / "folder"))), want)  # (PIL image, label)
    assert np.array_equal(vgg.transform(iter(files)), want)  # any iterable of paths
    with pytest.raises(ImageError, match="image #0: a torch tensor of torch.float32 .* not a normalised float"):
        vgg.transform([read_image(files[0]).float() / 255])
    with pytest.raises(ImageError, match="image #1: int is not an image type featx reads; pass file paths"):
        vgg.transform([files[0], 3])
    with pytest.raises(ImageError, match="pass a list of images"):
        vgg.transform(files[0])
