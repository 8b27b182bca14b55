import numpy as np
import pickle
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from featx import VGGDescriptor



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


def test_transform_dimensions_and_normalisation(images):
    paths = [str(p) for p in images]
    mean = VGGDescriptor(nets=("T",), scales=(224, 256), weights="random:0", device="cpu").fit_transform(paths)
    assert mean.shape == (6, 16)
    assert np.allclose(np.linalg.norm(mean, axis=1), 1, atol=1e-6)
    both = VGGDescriptor(nets=("T", "T"), scales=(224, 256), aggregate="stack", weights="random:0",
                         device="cpu").fit_transform(paths)
    assert both.shape == (6, 64)


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
