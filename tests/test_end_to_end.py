"""featx extract then featx svm (then featx predict), from the CLI, on miniature trees."""
import json

import pandas as pd
from click.testing import CliRunner

from featx.cli import main

from minitrees import make_caltech, make_voc, make_voc_action


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r


def test_voc2007_extract_then_svm(tmp_path):
    ids = tuple(f"{i:06d}" for i in range(1, 41))
    make_voc(tmp_path, trainval=ids[:24], test=ids[24:], real_images=True)
    common = ["--net", "T", "--weights", "random", "--scales", "224,256", "--root", tmp_path]
    r = run("svm", "voc2007", *common)
    assert r.exit_code == 1 and f"featx extract --dataset voc2007 --root {tmp_path} --net T --scales 224,256" in r.output
    r = run("extract", "--dataset", "voc2007", "--split", "trainval", *common, "-q")
    assert r.exit_code == 0 and "computed 48, reused 0" in r.output, r.output
    r = run("svm", "voc2007", *common)
    assert r.exit_code == 1 and "missing for 16 images" in r.output  # test images not computed yet
    r = run("extract", "--dataset", "voc2007", *common, "-q")
    assert "computed 32, reused 48" in r.output
    r = run("svm", "voc2007", *common, "--results-dir", tmp_path / "results", "--c-grid", "0.1,1")
    assert r.exit_code == 0, r.output
    assert "voc2007 mAP (VOC-2007 11-point AP) on test:" in r.output and "[no paper figure" in r.output
    out = tmp_path / "results" / "voc2007"
    meta = json.loads((out / "T-224-256x2-mean.json").read_text())
    assert meta["config"]["scales"] == [224, 256] and meta["runs"][0]["C"] in (0.1, 1.0)
    assert 0 <= meta["headline"] <= 100 and meta["versions"]["torch"]
    table = pd.read_csv(out / "T-224-256x2-mean.csv")
    assert list(table.columns) == ["split", "class", "ap11", "ap_area"] and len(table) == 20
    assert "| aeroplane |" in (out / "T-224-256x2-mean.md").read_text()
    # the saved classifiers apply to new images
    img = tmp_path / "voc2007" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg"
    r = run("predict", out / "T-224-256x2-mean.joblib", img, "--top", "2")
    assert r.exit_code == 0 and r.output.startswith(f"{img}: ") and r.output.count(",") == 1
    r = run("predict", out / "T-224-256x2-mean.model.json", img, "--format", "json")
    record, = json.loads(r.stdout)
    assert len(record["scores"]) == 20  # multi-label: every class whose score is positive is predicted
    assert record["predicted"] == [c for c, v in record["scores"].items() if v > 0]


def test_caltech_extract_then_svm(tmp_path):
    make_caltech(tmp_path, "caltech101", per_class=(32, 34), real_images=True)
    common = ["--net", "T", "--weights", "random", "--scales", "224", "--root", tmp_path]
    assert run("extract", "--dataset", "caltech101", *common, "-q").exit_code == 0
    r = run("svm", "caltech101", *common, "--aggregate", "stack", "--results-dir", tmp_path / "results",
            "--solver", "liblinear", "--c-grid", "1")
    assert r.exit_code == 0, r.output
    assert "caltech101 mean class recall on test1, test2, test3 (mean ± std):" in r.output and " ± " in r.output
    meta = json.loads((tmp_path / "results" / "caltech101" / "T-224-224x1-stack.json").read_text())
    assert [x["split"] for x in meta["runs"]] == [1, 2, 3] and meta["headline_std"] is not None


def test_action_image_and_box(tmp_path):
    make_voc_action(tmp_path, real_images=True)
    common = ["--net", "T", "--weights", "random", "--scales", "224", "--root", tmp_path]
    r = run("extract", "--dataset", "voc2012-action", *common, "-q")
    assert r.exit_code == 0 and "computed 5" in r.output, r.output  # 2 images + 3 person boxes
    for setting in ("image", "image+box"):
        r = run("svm", "voc2012-action", *common, "--setting", setting, "--c-grid", "1",
                "--results-dir", tmp_path / "results")
        assert r.exit_code == 0, r.output
        assert "on val:" in r.output
    assert (tmp_path / "results" / "voc2012-action" / "T-224-224x1-mean-imagebox.json").is_file()


def test_subset_picks_the_rows_of_samples_in_any_order():
    import numpy as np
    from featx.evaluate.experiment import _subset
    samples = np.array([7, 3, 9, 1, 5, 0, 2, 4, 6, 8])
    X = samples[:, None] * 10.0  # descriptors of `samples`, in that order
    assert _subset(X, samples, np.array([1, 2, 9]))[:, 0].tolist() == [10.0, 20.0, 90.0]


def test_svm_extract_computes_missing_descriptors_first(tmp_path):
    make_caltech(tmp_path, "caltech101", per_class=(32, 33), real_images=True)
    r = run("svm", "caltech101", "--net", "T", "--weights", "random", "--scales", "224", "--root", tmp_path,
            "--extract", "--c-grid", "1", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0, r.output
    assert "computed 65, reused 0, failed 0" in r.output and "mean class recall on test1" in r.output


def test_class_folder_extract_then_svm(tmp_path):
    """A user's own collection: folder:DIR gets three held-out splits and the Caltech protocol."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, (cls, low) in enumerate((("dark", 0), ("bright", 150))):
        for i in range(8):
            a = rng.integers(low, low + 100, (200 + 20 * (i % 2), 260, 3), dtype=np.uint8)
            (tmp_path / "mine" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(tmp_path / "mine" / cls / f"{i}.png")
    dataset = f"folder:{tmp_path / 'mine'}"
    common = ["--net", "T", "--weights", "random", "--scales", "224", "--root", tmp_path]
    r = run("extract", "--dataset", dataset, *common, "-q")
    assert r.exit_code == 0 and "computed 16, reused 0" in r.output, r.output
    r = run("svm", dataset, *common, "--c-grid", "0.1,10", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0, r.output
    assert "mine mean class recall on test1, test2, test3 (mean ± std): 100.0 ± 0.0  [no paper figure" in r.output
    meta = json.loads((tmp_path / "results" / "mine" / "T-224-224x1-mean.json").read_text())
    assert [x["trained_on"] for x in meta["runs"]] == ["trainval1", "trainval2", "trainval3"]
    table = pd.read_csv(tmp_path / "results" / "mine" / "T-224-224x1-mean.csv")
    assert table["recall"].tolist() == [1.0] * 6 and table["class"].tolist()[:2] == ["bright", "dark"]
