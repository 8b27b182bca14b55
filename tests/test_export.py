"""featx export: descriptors out as Parquet and NumPy, read back exactly as cached."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featx import Extractor, l2_normalize, read_export, write_export
from featx.descriptors.fusion import aggregate, fuse
from featx.extract.cache import DescriptorCache
from featx.cli import main
from featx.data.datasets import load_dataset
from featx.net.specs import NETS, NetSpec
from featx.paths import cache_path

from conftest import make_image


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def pets(tmp_path):
    base = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(5):
            make_image(base / c / f"{i}.png", [(240, 230), (300, 225)][i % 2], seed=10 * len(c) + i)
    (base / "dog" / "broken.png").write_text("not an image")
    return base


def extracted(pets, tmp_path, net="T"):
    r = run("extract", "--dataset", f"folder:{pets}", "--net", net, "--weights", "random:0",
            "--scales", "224,256", "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    return DescriptorCache(cache_path(f"folder:{pets}", net, "random:0", cache_dir=tmp_path / "c"))


def test_parquet_raw_columns_hold_exactly_the_cached_values(tmp_path, pets):
    cache = extracted(pets, tmp_path)
    data = load_dataset(f"folder:{pets}")
    s = write_export({"T": cache}, tmp_path / "x.parquet", data, chunk_rows=3)
    assert s.rows == 10 and list(s.skipped) == ["dog/broken.png"] and "not an image" in s.skipped["dog/broken.png"]
    frame = pd.read_parquet(tmp_path / "x.parquet")
    assert list(frame.columns) == ["id", "path", "label", "splits", "T@224", "T@256"] and len(frame) == 10
    assert list(frame["id"]) == [i for i in data.ids if i != "dog/broken.png"]
    assert list(frame["label"]) == ["cat"] * 5 + ["dog"] * 5
    assert all("train1" in s or "val1" in s or "test1" in s for s in frame["splits"])
    cached = cache.load(ids=list(frame["id"]))
    for j, q in enumerate((224, 256)):
        assert np.array_equal(np.stack(frame[f"T@{q}"].to_numpy()).astype(np.float32), cached[:, j])
    table = pq.read_table(tmp_path / "x.parquet")
    assert str(table.schema.field("T@224").type) == "fixed_size_list<element: float>[16]"
    meta = json.loads(table.schema.metadata[b"featx"])
    assert meta["scales"] == [224, 256] and meta["descriptors"]["T"]["weights"] == "random:0"
    ids, X = read_export(tmp_path / "x.parquet", column="T@256")
    assert ids == list(frame["id"]) and X.dtype == np.float32 and np.array_equal(X, cached[:, 1])
    # chunking changes nothing
    write_export({"T": cache}, tmp_path / "one.parquet", data, chunk_rows=1000)
    assert pq.read_table(tmp_path / "one.parquet").equals(table)


def test_aggregated_and_fused_is_what_svm_trains_on(tmp_path, pets, monkeypatch):
    monkeypatch.setitem(NETS, "U", NetSpec("U", "tiny2", (4, "M", 8, "M", 8, "M", 8, "M", 8, "M"), fc_dim=8,
                                           num_classes=10))
    t, u = extracted(pets, tmp_path, "T"), extracted(pets, tmp_path, "U")
    data = load_dataset(f"folder:{pets}")
    write_export({"T": t, "U": u}, tmp_path / "x.parquet", data, aggregate="stack")
    ids, X = read_export(tmp_path / "x.parquet")
    want = l2_normalize(fuse(aggregate(t.load(ids=ids), "stack"), aggregate(u.load(ids=ids), "stack")))
    assert X.shape == (10, 2 * 16 + 2 * 8) and np.array_equal(X, want)
    frame = read_export(tmp_path / "x.parquet", as_frame=True)
    assert list(frame.columns) == ["id", "path", "label", "splits", "descriptor"]
    assert frame.attrs["featx"]["aggregate"] == "stack" and np.array_equal(frame["descriptor"][3], want[3])


def test_numpy_export(tmp_path, pets):
    cache = extracted(pets, tmp_path)
    out = tmp_path / "npy"
    s = write_export({"T": cache}, out, load_dataset(f"folder:{pets}"), chunk_rows=4)
    assert sorted(p.name for p in out.iterdir()) == ["T.npy", "export.json", "metadata.csv"]
    meta = pd.read_csv(out / "metadata.csv")
    X = np.load(out / "T.npy")
    assert X.shape == (10, 2, 16) and np.array_equal(X, cache.load(ids=list(meta["id"])))
    ids, again = read_export(out)
    assert ids == list(meta["id"]) and np.array_equal(again, X) and s.rows == 10
    write_export({"T": cache}, out, None, scales=[256], aggregate="mean", format="npy")
    ids, X = read_export(out, column="descriptors")
    assert X.shape == (10, 16) and np.array_equal(X, l2_normalize(cache.load(scales=[256], ids=ids)[:, 0]))
    assert not list(out.glob(".*tmp-*"))


def test_cli_export_of_an_image_set_is_checked_against_its_images(tmp_path, pets):
    common = ["--dataset", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--cache-dir", tmp_path / "c"]
    r = run("export", *common, "--out", tmp_path / "x.parquet")
    assert r.exit_code == 1 and "no cached Net-T descriptors" in r.output and "featx extract --dataset folder:" in r.output
    extracted(pets, tmp_path)
    r = run("export", *common, "--out", tmp_path / "x.parquet")
    assert r.exit_code == 0, r.output
    assert "10 images, columns id, path, label, splits, T@224, T@256" in r.output
    assert "left out 1 image(s) without descriptors (first: dog/broken.png" in r.output
    make_image(pets / "cat" / "2.png", (250, 250), seed=77)
    r = run("export", *common, "--out", tmp_path / "y.parquet")
    assert r.exit_code == 1 and "1 image(s) changed or gone since" in r.output and not (tmp_path / "y.parquet").exists()
    extracted(pets, tmp_path)  # recomputes it
    make_image(pets / "cat" / "new.png", (250, 250), seed=78)
    r = run("export", *common, "--out", tmp_path / "y.parquet", "--scales", "224")
    assert r.exit_code == 1 and "have no descriptor yet (first: cat/new.png)" in r.output
    cache = DescriptorCache(cache_path(f"folder:{pets}", "T", "random:0", cache_dir=tmp_path / "c"))
    r = run("export", cache.path, "--out", tmp_path / "z", "--aggregate", "max")
    assert r.exit_code == 0 and (tmp_path / "z" / "descriptors.npy").is_file(), r.output


def test_export_needs_the_scales_it_is_asked_for(tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", (240, 230), seed=i) for i in range(2)]
    from featx.extract.update import extract_to_cache
    extract_to_cache(Extractor("T", scales=(224,), weights="random:0", device="cpu"), paths, ["a", "b"],
                     tmp_path / "c.h5", progress=False)
    with pytest.raises(Exception, match="holds no descriptors at Q=256"):
        write_export({"T": tmp_path / "c.h5"}, tmp_path / "x.parquet", scales=[256])
