"""The shared official Caltech-101 tree (../shared/data/caltech101): the split files featx ships,
and a small real slice through the whole path with the real Net-E weights. Skipped where absent."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featx.cli import main
from featx.data.datasets import load_dataset

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "caltech101"
needs_tree = pytest.mark.skipif(not (SHARED / "101_ObjectCategories").is_dir(),
                                reason="the shared Caltech-101 tree is not beside the checkout")
# Five visually distinct classes; the first twelve images of each (file-name order).
SLICE = ("Faces_easy", "Leopards", "Motorbikes", "airplanes", "sunflower")


@needs_tree
@pytest.mark.shipped_splits
def test_shipped_splits_on_the_official_tree(tmp_path):
    (tmp_path / "caltech101").symlink_to(SHARED)
    data = load_dataset("caltech101", tmp_path)
    assert len(data.ids) == 9144 and len(data.classes) == 102  # BACKGROUND_Google/tmp is no image
    assert "BACKGROUND_Google/tmp" not in data.ids
    for k in (1, 2, 3):
        tr, va, te = (data.splits[f"{s}{k}"] for s in ("train", "val", "test"))
        assert (len(tr), len(va), len(te)) == (2448, 612, 2995)
        assert (np.bincount(data.labels[np.r_[tr, va]], minlength=102) == 30).all()
        assert np.bincount(data.labels[te], minlength=102).max() == 50
    assert len(data.protocol_rows()) == 7107  # what the three splits read, of 9,144
    assert not (tmp_path / "splits").exists()  # featx's files were used, none drawn


@needs_tree
def test_a_real_slice_end_to_end_with_real_weights(tmp_path, real_weights_e):
    for cls in SLICE:
        (tmp_path / "slice" / cls).mkdir(parents=True)
        for src in sorted((SHARED / "101_ObjectCategories" / cls).glob("*.jpg"))[:12]:
            (tmp_path / "slice" / cls / src.name).symlink_to(src)
    r = CliRunner().invoke(main, ["svm", f"folder:{tmp_path / 'slice'}", "--net", "E", "--scales", "256",
                                  "--weights", f"E=caffe:{real_weights_e}", "--extract",
                                  "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results"),
                                  "--c-grid", "0.1,1,10"])
    assert r.exit_code == 0, r.output
    assert "computed 60, reused 0, failed 0" in r.output
    import json
    result = json.loads((tmp_path / "results" / "slice" / "E-256-256x1-mean.json").read_text())
    # 5 classes (chance: 20%), 6 test images each per split: real ImageNet features separate them
    assert result["headline"] >= 90.0, result["headline"]
    assert result["descriptors"]["E"]["weights_digest"].startswith("tensors:")
