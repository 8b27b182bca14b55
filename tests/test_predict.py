"""featx predict on files, folders and list files, as a table, CSV or JSON, failures as rows."""
import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featx.cli import main

from conftest import make_image


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def model(tmp_path):
    base = tmp_path / "pets"
    for c in ("cat", "dog", "eel"):
        for i in range(5):
            make_image(base / c / f"{i}.png", (240, 230), seed=10 * len(c) + 3 * i + ord(c[0]))
    r = run("svm", f"folder:{base}", "--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
            "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results", "--extract")
    assert r.exit_code == 0, r.output
    return tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json"


def two_classes(base, per_class, seed):
    """A folder cat/ and dog/ of generated images: a small set to train a model on."""
    for c in ("cat", "dog"):
        for i in range(per_class):
            make_image(base / c / f"{i}.png", (240, 230), seed=seed * len(c) + 3 * i + ord(c[0]))
    return base


@pytest.fixture
def new(tmp_path):
    folder = tmp_path / "new"
    for i in range(3):
        make_image(folder / "sub" / f"{i}.png", (250, 240), seed=50 + i)
    (folder / "sub" / "bad.png").write_text("no")
    loose = make_image(tmp_path / "loose.png", (260, 240), seed=60)
    (tmp_path / "list.txt").write_text("new/sub/0.png\nmissing.png\n")
    return folder, loose, tmp_path / "list.txt"


def test_csv_has_one_row_per_image_with_every_score_and_failures_as_rows(tmp_path, model, new):
    folder, loose, listing = new
    r = run("predict", model, loose, folder, listing, tmp_path / "nothere.png", "--format", "csv",
            "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout), keep_default_na=False)
    assert list(table.columns) == ["path", "predicted", "cat", "dog", "eel", "error"]
    assert list(table["path"]) == [str(loose), *(str(folder / "sub" / n) for n in ("0.png", "1.png", "2.png", "bad.png")),
                                   str(listing.parent / "new/sub/0.png"), str(listing.parent / "missing.png"),
                                   str(tmp_path / "nothere.png")]
    ok = table["error"] == ""
    assert list(ok) == [True, True, True, True, False, True, False, False]
    assert "not an image" in table["error"][4] and "file not found" in table["error"][6]
    scores = table.loc[ok, ["cat", "dog", "eel"]].astype(float).to_numpy()
    assert list(table.loc[ok, "predicted"]) == [("cat", "dog", "eel")[j] for j in scores.argmax(1)]
    # the list's image is the folder's, computed through another set's cache: the same scores
    assert np.allclose(scores[1], scores[4], rtol=1e-5)
    assert "3 of 8 image(s) could not be read" in r.stderr


def test_json_and_top_k(tmp_path, model, new):
    folder, loose, _ = new
    r = run("predict", model, folder, "--format", "json", "--top-k", "2", "--cache-dir", tmp_path / "c", "-q")
    records = json.loads(r.stdout)
    assert len(records) == 4 and records[3]["scores"] is None and "not an image" in records[3]["error"]
    first = records[0]
    assert len(first["scores"]) == 2 and first["predicted"] == [max(first["scores"], key=first["scores"].get)]
    r = run("predict", model, folder, "--format", "csv", "--top", "1", "--cache-dir", tmp_path / "c", "-q")
    table = pd.read_csv(io.StringIO(r.stdout), keep_default_na=False)
    assert list(table.columns) == ["path", "predicted", "label_1", "score_1", "error"]
    assert (table["label_1"][:3] == table["predicted"][:3]).all()
    r = run("predict", model, loose, "--top", "2", "-q")
    assert r.stdout.startswith(f"{loose}: ") and r.stdout.count(",") == 1


def test_the_saved_model_is_fit_on_every_labelled_image_with_the_median_c(tmp_path):
    from featx.extract.cache import DescriptorCache
    from featx.evaluate.classifiers import OneVsRestSVM
    from featx.data.datasets import load_dataset
    from featx.evaluate.model import load_model
    from featx.paths import cache_path
    from featx.evaluate.results import read_result
    base = two_classes(tmp_path / "pets", 6, seed=7)
    r = run("svm", f"folder:{base}", "--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "0.01,1,100",
            "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results", "--extract")
    assert r.exit_code == 0, r.output
    result = read_result(tmp_path / "results" / "pets" / "T-224-224x1-mean.json")
    median = sorted(result.chosen_c)[1]
    assert result.final.C == median and result.final.samples == 12
    assert result.final.chosen_by == f"median of the C chosen on splits 1, 2, 3 ({result.chosen_c_text})"
    record = json.loads((tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json").read_text())
    assert record["format_version"] == 2 and record["samples"] == 12 and record["C"] == median
    assert record["trained_on"] == "all 12 labelled images (the union of the splits)"
    assert record["descriptor"]["dtype"] == "float32" and record["classifier"]["C"] == median
    assert record["descriptor"]["weights"]["T"] == {"source": "random:0", "file": None,
                                                    "digest": record["descriptor"]["weights"]["T"]["digest"]}
    # the saved classifier is the fit on all 12 images' descriptors with that C
    data = load_dataset(f"folder:{base}")
    cache = DescriptorCache(cache_path(data, "T", "random:0", cache_dir=tmp_path / "c"))
    from featx.descriptors.fusion import combine
    X = combine([cache.load((224,), rows=cache.lookup(data.ids))], "mean")
    want = OneVsRestSVM(C=median).fit(X, data.labels)
    got = load_model(tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json").named_steps["svm"]
    assert np.allclose(got.coef_, want.coef_, atol=1e-6) and np.allclose(got.intercept_, want.intercept_, atol=1e-6)
    assert f"final model: C={median:g}" in r.output


def test_a_model_names_its_weights_file_without_a_path_and_predict_takes_a_local_copy(tmp_path, monkeypatch):
    import shutil

    import torch
    from featx.net.specs import NETS
    from featx.net.vgg import random_state_dict
    weights = tmp_path / "mine" / "tiny_weights.pth"
    weights.parent.mkdir()
    torch.save(random_state_dict(NETS["T"], seed=2), weights)
    base = two_classes(tmp_path / "pets", 4, seed=5)
    r = run("svm", f"folder:{base}", "--net", "T", "--weights", weights, "--preprocess", "caffe", "--scales", "224",
            "--c-grid", "1", "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results", "--extract")
    assert r.exit_code == 0, r.output
    model = tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json"
    text = model.read_text()
    assert str(tmp_path) not in text
    w = json.loads(text)["descriptor"]["weights"]["T"]
    assert w["source"] == "file" and w["file"] == "tiny_weights.pth" and w["digest"].startswith("tensors:")
    image = make_image(tmp_path / "new.png", (250, 240), seed=99)
    # on this machine featx has loaded the file: found by its digest
    here = run("predict", model, image, "--format", "json", "-q")
    assert here.exit_code == 0, here.output
    # elsewhere (another user cache, the file moved) it must be pointed at, and is checked
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    moved = shutil.move(weights, tmp_path / "copy.pth")
    r = CliRunner().invoke(main, ["predict", str(model), str(image), "-q"])
    assert r.exit_code != 0 and "featx has not seen on this machine" in r.output
    assert "featx predict MODEL --weights T=FILE" in r.output
    r = run("predict", model, image, "--format", "json", "--weights", f"T={moved}", "-q")
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(here.stdout)
    other = tmp_path / "other.pth"
    torch.save(random_state_dict(NETS["T"], seed=3), other)
    r = CliRunner().invoke(main, ["predict", str(model), str(image), "--weights", str(other), "-q"])
    assert r.exit_code != 0 and "are not the ones this classifier was trained on" in r.output


def test_a_named_source_read_from_a_local_copy_is_found_again_by_its_digest(tmp_path, monkeypatch):
    import torch
    from featx.net.specs import NETS
    from featx.net.vgg import random_state_dict
    copy = tmp_path / "w" / "authors.pth"
    copy.parent.mkdir()
    torch.save(random_state_dict(NETS["T"], seed=4), copy)
    base = two_classes(tmp_path / "pets", 4, seed=9)
    r = run("svm", f"folder:{base}", "--net", "T", "--weights", f"T=caffe:{copy}", "--scales", "224", "--c-grid", "1",
            "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results", "--extract")
    assert r.exit_code == 0, r.output
    model = tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json"
    assert json.loads(model.read_text())["descriptor"]["weights"]["T"]["source"] == "caffe"
    image = make_image(tmp_path / "new.png", (250, 240), seed=98)
    r = run("predict", model, image, "--format", "json", "-q")  # no hub file: the copy featx loaded before
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["error"] is None, r.output
