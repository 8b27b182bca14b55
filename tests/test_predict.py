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
