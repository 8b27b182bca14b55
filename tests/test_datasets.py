import dataclasses
import io
import tarfile
import urllib.error

import numpy as np
import pytest
from click.testing import CliRunner

from featx import Crop, DatasetError
from featx.data import datasets as ds
from featx.cli import main
from featx.data.datasets import VOC_CLASSES, load_dataset, seeded_split

from minitrees import make_caltech, make_voc, make_voc_action


def test_voc_counts_labels_difficult_splits(tmp_path):
    make_voc(tmp_path)
    d = load_dataset("voc2007", tmp_path)
    assert d.ids == ["000005", "000007", "000009", "000012", "000001", "000004"]
    assert d.items[0].endswith("VOC2007/JPEGImages/000005.jpg")
    assert d.labels.shape == (6, 20) and d.task == "multilabel" and d.classes == VOC_CLASSES
    assert {k: v.tolist() for k, v in d.splits.items()} == {
        "train": [0, 1], "val": [2, 3], "trainval": [0, 1, 2, 3], "test": [4, 5]}
    assert d.labels[2, 2] == 1 and d.labels[2, 3] == 0 and d.labels[2, 4] == -1  # pos / difficult / neg
    assert (d.labels == 1).sum() == 6 and (d.labels == 0).sum() == 6
    assert d.rows_of(["test"]).tolist() == [4, 5]


@pytest.mark.parametrize("damage,message", [
    (lambda m: (m / "cat_train.txt").write_text("000005 1\n000007 2\n"), r"cat_train.txt:2: expected '<image id> <1\|0\|-1>'"),
    (lambda m: (m / "dog_val.txt").write_text("000009 -1\n000099 1\n"), r"dog_val.txt:2: image 000099 is not in val.txt"),
    (lambda m: (m / "test.txt").write_text("000001\n000404\n"), r"test.txt:2: image 000404 is not in .*JPEGImages"),
    (lambda m: (m / "bus_test.txt").unlink(), r"bus_test.txt is missing"),
    (lambda m: (m / "sofa_train.txt").write_text("000005 -1\n"), r"sofa_train.txt: no label for image 000007"),
])
def test_voc_malformed(tmp_path, damage, message):
    base = make_voc(tmp_path)
    damage(base / "ImageSets" / "Main")
    with pytest.raises(DatasetError, match=message):
        load_dataset("voc2007", tmp_path)


def test_voc_absent_names_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"voc2012 not found: expected .*voc2012/VOCdevkit/VOC2012/JPEGImages.*featx datasets download voc2012"):
        load_dataset("voc2012", tmp_path)


def test_voc_action_persons_boxes_labels(tmp_path):
    make_voc_action(tmp_path)
    d = load_dataset("voc2012-action", tmp_path)
    assert len(d) == 3 and d.classes[-1] == "other" and len(d.classes) == 11
    assert d.ids == ["2010_000001", "2010_000002", "2010_000001/person1", "2010_000001/person2",
                     "2010_000002/person2"]
    assert d.items[2] == Crop(d.items[0], (10, 20, 110, 220))  # VOC 1-based inclusive -> 0-based exclusive
    assert d.items[4].box == (0, 0, 150, 300)
    assert d.views["image"].tolist() == [0, 0, 1] and d.views["box"].tolist() == [2, 3, 4]
    assert d.labels[:, :3].tolist() == [[1, -1, -1], [-1, 1, -1], [-1, -1, -1]]
    assert d.labels[2, 9] == 1  # walking
    assert {k: v.tolist() for k, v in d.splits.items()} == {"train": [0, 1], "val": [2], "trainval": [0, 1, 2]}
    assert d.rows_of(["val"]).tolist() == [1, 4]


def test_voc_action_malformed(tmp_path):
    base = make_voc_action(tmp_path)
    xml = base / "Annotations" / "2010_000002.xml"
    xml.write_text(xml.read_text().replace("<walking>", "<flying>").replace("</walking>", "</flying>"))
    with pytest.raises(DatasetError, match=r"2010_000002.xml: unknown action 'flying' for person #2"):
        load_dataset("voc2012-action", tmp_path)
    xml.unlink()
    with pytest.raises(DatasetError, match=r"2010_000002.xml is missing"):
        load_dataset("voc2012-action", tmp_path)
    (base / "ImageSets" / "Action" / "jumping_train.txt").write_text("2010_000001 1 1\n2010_000001 x 1\n")
    with pytest.raises(DatasetError, match=r"jumping_train.txt:2: expected '<image id> <person index>"):
        load_dataset("voc2012-action", tmp_path)


def test_caltech_splits_sizes_determinism_and_files(tmp_path):
    make_caltech(tmp_path, "caltech101", per_class=(33, 35, 90))
    d = load_dataset("caltech101", tmp_path)
    assert len(d) == 158 and d.classes == ("class0", "class1", "class2") and d.task == "multiclass"
    for k in (1, 2, 3):
        train, val, test = d.splits[f"train{k}"], d.splits[f"val{k}"], d.splits[f"test{k}"]
        assert np.bincount(d.labels[train]).tolist() == [24, 24, 24]  # 30 per class, 20% held out
        assert np.bincount(d.labels[val]).tolist() == [6, 6, 6]
        assert np.bincount(d.labels[test]).tolist() == [3, 5, 50]  # up to 50: the rest
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert np.array_equal(d.splits[f"trainval{k}"], np.union1d(train, val))
    assert not np.array_equal(d.splits["test1"], d.splits["test2"])  # splits differ from each other
    split_file = tmp_path / "splits" / "caltech101" / "split1.csv"
    assert split_file.read_text().startswith("id,subset\n")
    again = load_dataset("caltech101", tmp_path)  # read back from the files
    assert all(np.array_equal(again.splits[k], d.splits[k]) for k in d.splits)
    fresh = seeded_split(d.labels, d.classes, 1, 30, 50)  # same seed, same split
    assert all(np.array_equal(fresh[k], d.splits[f"{k}1"]) for k in ("train", "val", "test", "trainval"))


def test_caltech256_protocol_and_errors(tmp_path):
    make_caltech(tmp_path, "caltech256", per_class=(62, 64))
    d = load_dataset("caltech256", tmp_path)
    assert np.bincount(d.labels[d.splits["train1"]]).tolist() == [48, 48]
    assert np.bincount(d.labels[d.splits["val1"]]).tolist() == [12, 12]
    assert np.bincount(d.labels[d.splits["test1"]]).tolist() == [2, 4]  # all the rest
    split = tmp_path / "splits" / "caltech256" / "split2.csv"
    split.write_text(split.read_text() + "001.class0/nothere.jpg,test\n")
    with pytest.raises(DatasetError, match=r"split2.csv:128: image 001.class0/nothere.jpg is not in the dataset"):
        load_dataset("caltech256", tmp_path)


def test_caltech_class_too_small(tmp_path):
    make_caltech(tmp_path, "caltech101", per_class=(33, 30))
    with pytest.raises(DatasetError, match=r"class1: 30 images, but the protocol trains on 30"):
        load_dataset("caltech101", tmp_path)


def test_generic_folder_and_csv(tmp_path):
    for cls, n in (("cats", 4), ("dogs", 11)):
        for i in range(n):
            (tmp_path / "pets" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "pets" / cls / f"{i:02d}.jpg").write_bytes(b"")
    d = load_dataset(f"folder:{tmp_path / 'pets'}")
    assert d.ids[0] == "cats/00.jpg" and d.labels.tolist() == [0] * 4 + [1] * 11
    # held-out splits: per class half trains (20% of it, at least one, validates), the rest tests
    for k in (1, 2, 3):
        tr, va, tv, te = (d.splits[f"{s}{k}"] for s in ("train", "val", "trainval", "test"))
        assert np.bincount(d.labels[tr]).tolist() == [1, 4] and np.bincount(d.labels[va]).tolist() == [1, 1]
        assert np.bincount(d.labels[te]).tolist() == [2, 6]
        assert np.array_equal(np.sort(np.concatenate([tv, te])), np.arange(15))
    assert not np.array_equal(d.splits["test1"], d.splits["test2"])
    assert all(np.array_equal(load_dataset(f"folder:{tmp_path / 'pets'}").splits[k], v) for k, v in d.splits.items())
    (tmp_path / "pets" / "cats" / "00.jpg").unlink()
    with pytest.raises(DatasetError, match=r"pets/cats: 3 images; at least 4 are needed"):
        load_dataset(f"folder:{tmp_path / 'pets'}")
    (tmp_path / "set.csv").write_text("path,labels,split\na.jpg,cat;dog,train\nb.jpg,dog,test\n")
    d = load_dataset(f"csv:{tmp_path / 'set.csv'}")
    assert d.task == "multilabel" and d.labels.tolist() == [[1, 1], [-1, 1]]
    assert d.items[0] == str(tmp_path / "a.jpg") and d.splits["test"].tolist() == [1]
    (tmp_path / "odd.csv").write_text("path,labels,split\na.jpg,cat,train\nb.jpg,dog,later\n")
    with pytest.raises(DatasetError, match=r"odd.csv: the split column names later, train; use train and test"):
        load_dataset(f"csv:{tmp_path / 'odd.csv'}")
    (tmp_path / "bad.csv").write_text("path,labels\na.jpg,\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: expected 2 fields: a path and at least one label"):
        load_dataset(f"csv:{tmp_path / 'bad.csv'}")


def test_datasets_ls(tmp_path):
    make_voc(tmp_path)
    make_caltech(tmp_path)
    out = CliRunner().invoke(main, ["datasets", "ls", "--root", str(tmp_path)]).output
    assert "voc2007         INCOMPLETE (6 of the official archive's 9,963 images) voc2007: 6 images to extract, 6 samples" in out
    assert "caltech101      INCOMPLETE (108 of the official archive's 9,144 images) caltech101: 108 images" in out
    assert "caltech256      missing" in out


class FakeResponse(io.BytesIO):
    def __init__(self, data, status):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def test_download_resumes_checks_md5_and_unpacks(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        data = b"hello"
        info = tarfile.TarInfo("VOCdevkit/VOC2012/readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = payload.getvalue()
    import hashlib
    url = "https://example.org/VOCtrainval_11-May-2012.tar"
    monkeypatch.setitem(ds.DATASETS, "voc2012", dataclasses.replace(ds.DATASETS["voc2012"], archives=((url, hashlib.md5(blob).hexdigest()),)))
    target = tmp_path / "voc2012"
    target.mkdir()
    (target / "VOCtrainval_11-May-2012.tar.part").write_bytes(blob[:1000])  # an interrupted download
    asked = []

    def fake_urlopen(request, timeout):
        asked.append(request.headers.get("Range"))
        return FakeResponse(blob[1000:], 206)

    monkeypatch.setattr(ds.urllib.request, "urlopen", fake_urlopen)
    ds.download("voc2012", tmp_path, progress=False)
    assert asked == ["bytes=1000-"]
    assert (target / "VOCdevkit" / "VOC2012" / "readme.txt").read_bytes() == b"hello"
    monkeypatch.setitem(ds.DATASETS, "voc2012", dataclasses.replace(ds.DATASETS["voc2012"], archives=((url, "0" * 32),)))
    (target / "VOCtrainval_11-May-2012.tar").unlink()
    with pytest.raises(DatasetError, match="fails its md5 check"):
        ds.download("voc2012", tmp_path, progress=False)

    def offline(request, timeout):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(ds.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match=f"cannot download {url} \\(no route\\).*into {target}"):
        ds.download("voc2012", tmp_path, progress=False)
