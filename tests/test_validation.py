"""One validation for every way a configuration arrives, and featx errors for the Python API's
misuse (#25 items 4-5): each case is one error that says what to pass."""
import numpy as np
import pytest
from click.testing import CliRunner

from featx import Extractor, ImageError
from featx.evaluate.classifiers import OneVsRestSVM
from featx.cli import main
from featx.data.datasets import load_dataset
from featx.errors import ConfigError, DatasetError
from featx.evaluate.experiment import Config, run

from conftest import make_image


@pytest.mark.parametrize("scales,message", [
    (224, r"scales 224: give a list of integers Q, e.g. \(256, 384, 512\)"),
    ("224", r"scales '224': give a list of integers Q"),
    ([224, 224], r"scales \(224, 224\) repeat a value"),
    ([100000], r"scale Q=100000 is above 2048, the largest featx takes"),
    ([True], r"True is not an integer Q"),
    ([200], r"scale Q=200 is too small"),
])
def test_scales_are_checked_in_one_place(scales, message):
    with pytest.raises(ConfigError, match=message):
        Extractor("T", scales=scales, weights="random", device="cpu", lazy=True)
    with pytest.raises(ConfigError, match=message):
        Config.of("x", nets=("T",), scales=scales).check(load_tiny_dataset.data)


class load_tiny_dataset:  # a Dataset for Config.check, made once
    data = None


@pytest.fixture(autouse=True)
def tiny_dataset(tmp_path_factory):
    if load_tiny_dataset.data is None:
        base = tmp_path_factory.mktemp("tiny")
        for c in ("a", "b"):
            for i in range(4):
                make_image(base / c / f"{i}.png", (240, 230), seed=i + 5 * len(c))
        load_tiny_dataset.data = load_dataset(f"folder:{base}")


@pytest.mark.parametrize("grid", [(float("inf"),), (0,), (-1,), (True,), (), "1"])
def test_c_values_are_finite_and_positive_in_one_place(grid):
    with pytest.raises(ConfigError, match="c_grid"):
        Config.of("x", nets=("T",), scales=(224,), c_grid=grid).check(load_tiny_dataset.data)


@pytest.mark.parametrize("params,message", [
    ({"C": -1}, r"C=-1: give a finite positive number"),
    ({"C": float("inf")}, r"C=inf: give a finite positive number"),
    ({"C": "1"}, r"C='1': give a finite positive number"),
    ({"max_iter": 0}, r"max_iter=0: give a positive integer"),
    ({"solver": "sgd"}, r"solver='sgd': choose one of torch, liblinear"),
])
def test_the_svm_refuses_parameters_it_cannot_use(params, message):
    X, y = np.eye(4), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match=message):
        OneVsRestSVM(**params).fit(X, y)


def test_images_passed_wrongly_get_featx_errors():
    ex = Extractor("T", scales=(224,), weights="random", device="cpu", lazy=True)
    with pytest.raises(ImageError, match=r"a.jpg: pass a list of images \(e.g. \[path\]\), not one"):
        ex.extract("a.jpg")
    with pytest.raises(ImageError, match=r"image #0: NoneType is not an image type featx reads"):
        ex.extract([None])


def test_a_csv_with_a_byte_order_mark_reads_and_a_repeated_image_names_its_lines(tmp_path):
    for i in range(8):
        make_image(tmp_path / f"{i}.png", (240, 230), seed=i)
    rows = "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(8))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + f"path,labels\n{rows}".encode())
    assert load_dataset(f"csv:{tmp_path / 'bom.csv'}").ids == [f"{i}.png" for i in range(8)]
    (tmp_path / "twice.csv").write_text(f"path,labels\n{rows}2.png,a\n")
    with pytest.raises(DatasetError, match=r"twice.csv:10: '2.png' is listed already \(line 4\); give each image once"):
        load_dataset(f"csv:{tmp_path / 'twice.csv'}")


def test_a_class_without_training_samples_is_named(tmp_path):
    lines = ["path,labels,split"]
    for i in range(8):
        make_image(tmp_path / f"{i}.png", (240, 230), seed=i)
        lines.append(f"{i}.png,{'ab'[i % 2]},{'train' if i < 6 else 'test'}")
    make_image(tmp_path / "8.png", (240, 230), seed=8)
    lines.append("8.png,c,test")  # class c: test only
    (tmp_path / "set.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(f"csv:{tmp_path / 'set.csv'}")
    r = CliRunner().invoke(main, ["extract", "--dataset", f"csv:{tmp_path / 'set.csv'}", "--net", "T", "--weights",
                                  "random", "--scales", "224", "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    said = []
    run(data, Config.of(data.name, nets=("T",), weights={"T": "random"}, scales=(224,), c_grid=(1.0,)),
        tmp_path / "c", log=said.append)
    assert "warning: class 'c' has test samples to evaluate but none to train on; it is scored 0" in said


def test_the_dry_run_refuses_a_weights_file_that_does_not_exist(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "table11", "--dry-run", "--local-weights",
                                  f"E=caffe:{tmp_path / 'missing.pth'}"])
    assert r.exit_code != 0 and f"{tmp_path / 'missing.pth'} is not a file" in r.output


def test_a_dataset_is_evaluated_by_the_protocol_its_splits_shape_says():
    from types import SimpleNamespace

    from featx.evaluate.experiment import PROTOCOLS, protocol_of
    a = np.arange(10)
    caltech = {f"{s}{k}": part for k in (1, 2, 3)
               for s, part in (("train", a[:3]), ("val", a[3:5]), ("trainval", a[:5]), ("test", a[5:]))}
    voc07 = {"train": a[:4], "val": a[4:8], "trainval": a[:8], "test": a[8:]}
    voc12 = {"train": a[:8], "val": a[8:]}
    for splits, name, n, names in ((caltech, "held-out", 3, ("trainval2", "test2")),
                                   (voc07, "VOC-2007", 1, ("trainval", "test")),
                                   (voc12, "VOC-2012", 1, ("train", "val"))):
        p = protocol_of(SimpleNamespace(name="x", splits=splits))
        assert p in PROTOCOLS and name in p.name
        runs = p.splits(splits)
        assert len(runs) == n and (runs[-2] if n > 1 else runs[0]).fit_name == names[0]
        assert (runs[-2] if n > 1 else runs[0]).evaluated_name == names[1]
        for r in runs:  # C is chosen inside what the SVMs are refit on, never on what is scored
            assert set(r.train) | set(r.val) <= set(r.fit_on) and not set(r.fit_on) & set(r.evaluated)
    held = PROTOCOLS[2].splits(voc12)[0]
    assert len(held.val) == int((np.random.default_rng(0).random(8) < 0.2).sum())  # the seeded 20%
    with pytest.raises(ConfigError, match="x has the splits all; featx svm needs train and val/test"):
        protocol_of(SimpleNamespace(name="x", splits={"all": a}))
