import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from filelock import FileLock

from featx import CacheError, Extractor, ImageError
from featx.cache import DONE, FAILED, DescriptorCache, extract_to_cache

from conftest import make_image

HERE = Path(__file__).parent


def tiny(**kw):
    kw.setdefault("scales", (224, 256))
    kw.setdefault("batch_size", 2)
    return Extractor("T", weights="random:0", device="cpu", **kw)


def image_set(tmp_path, n=10):
    paths = []
    for i in range(n):
        size = [(300, 225), (225, 300), (320, 240)][i % 3]
        paths.append(str(make_image(tmp_path / "imgs" / f"{i:03d}.png", size, seed=i)))
    return paths, [Path(p).name for p in paths]


class CountingExtractor:
    """Wraps an Extractor and counts the images each forward pass computes."""

    def __init__(self, ex):
        self.ex, self.rows = ex, []
        original = ex.forward
        ex.forward = lambda pixels: (self.rows.append(len(pixels)), original(pixels))[1]


def test_roundtrip_and_load_selections(tmp_path):
    items, ids = image_set(tmp_path)
    ex = tiny()
    s = extract_to_cache(ex, items, ids, tmp_path / "c.h5", name="set", progress=False)
    assert (s.computed, s.reused, s.failed) == (20, 0, 0)
    c = DescriptorCache(tmp_path / "c.h5")
    assert c.ids == ids and c.scales == [224, 256] and c.dim == 16 and c.attrs["net"] == "T"
    want = ex.extract(items)
    assert np.array_equal(c.load(), want)
    assert np.array_equal(c.load(scales=[256], rows=[7, 2]), want[[7, 2]][:, [1]])
    assert np.array_equal(c.load(ids=[ids[3], ids[3]]), want[[3, 3]])
    with pytest.raises(CacheError, match="no descriptors at Q=384"):
        c.load(scales=[384])
    with pytest.raises(CacheError, match="no image with id 'nope'"):
        c.load(ids=["nope"])


def test_reuse_computes_nothing_and_new_scale_computes_only_it(tmp_path):
    items, ids = image_set(tmp_path)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(scales=(224,)), items, ids, path, progress=False)
    before = DescriptorCache(path).load(scales=[224])
    again = CountingExtractor(tiny(scales=(224,)))
    s = extract_to_cache(again.ex, items, ids, path, progress=False)
    assert again.rows == [] and (s.computed, s.reused) == (0, 10)
    more = CountingExtractor(tiny(scales=(224, 256)))
    s = extract_to_cache(more.ex, items, ids, path, progress=False)
    assert sum(more.rows) == 10 and (s.computed, s.reused) == (10, 10)
    c = DescriptorCache(path)
    assert c.scales == [224, 256] and np.array_equal(c.load(scales=[224]), before)


def test_rows_restrict_the_work(tmp_path):
    items, ids = image_set(tmp_path)
    path = tmp_path / "c.h5"
    s = extract_to_cache(tiny(), items, ids, path, rows=[0, 4, 5], progress=False)
    assert s.computed == 6
    c = DescriptorCache(path)
    assert set(np.flatnonzero(c.status(224) == DONE)) == {0, 4, 5}
    assert set(c.missing([224, 256])[256]) == set(range(10)) - {0, 4, 5}
    with pytest.raises(CacheError, match="7 of the requested images have no descriptor at Q=224"):
        c.load()


def test_other_settings_or_image_set_are_refused(tmp_path):
    items, ids = image_set(tmp_path)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(), items, ids, path, progress=False)
    with pytest.raises(CacheError, match="other settings, refusing to mix:\n  flip: file has True, this run False"):
        extract_to_cache(tiny(flip=False), items, ids, path, progress=False)
    with pytest.raises(CacheError, match="weights_sha256: file has 'random:0', this run 'random:1'"):
        extract_to_cache(Extractor("T", scales=(224,), weights="random:1", device="cpu"), items, ids, path,
                         progress=False)
    with pytest.raises(CacheError, match="holds another image set"):
        extract_to_cache(tiny(), items[:5], ids[:5], path, progress=False)


def test_lock_refuses_a_second_writer(tmp_path):
    items, ids = image_set(tmp_path, 3)
    path = tmp_path / "c.h5"
    held = FileLock(str(path) + ".lock")
    held.acquire()
    try:
        with pytest.raises(CacheError, match="being written by another featx process"):
            extract_to_cache(tiny(), items, ids, path, progress=False)
    finally:
        held.release()
    assert not path.exists()
    extract_to_cache(tiny(), items, ids, path, progress=False)  # free again


def test_bad_inputs_are_recorded_not_fatal(tmp_path, monkeypatch):
    items, ids = image_set(tmp_path, 4)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    trunc = make_image(bad / "trunc.jpg", (400, 300), fmt="JPEG")
    trunc.write_bytes(trunc.read_bytes()[:1500])
    make_image(bad / "huge.png", (1200, 1000))
    monkeypatch.setenv("FEATX_MAX_PIXELS", str(1_000_000))
    extra = [str(bad / n) for n in ("missing.jpg", "empty.jpg", "text.jpg", "trunc.jpg", "huge.png")]
    s = extract_to_cache(tiny(), items + extra, ids + [Path(p).name for p in extra], tmp_path / "c.h5",
                         progress=False)
    assert s.computed == 8 and s.failed == 10
    errors = DescriptorCache(tmp_path / "c.h5").errors()
    assert set(errors) == {"missing.jpg", "empty.jpg", "text.jpg", "trunc.jpg", "huge.png"}
    assert "file not found" in errors["missing.jpg"]
    assert "empty file (0 bytes)" in errors["empty.jpg"]
    assert "not an image" in errors["text.jpg"]
    assert "truncated or corrupt" in errors["trunc.jpg"]
    assert "decompression-bomb guard" in errors["huge.png"]
    c = DescriptorCache(tmp_path / "c.h5")
    assert list(c.status(256)[4:]) == [FAILED] * 5
    # a rerun retries nothing and computes nothing
    again = CountingExtractor(tiny())
    s = extract_to_cache(again.ex, items + extra, ids + [Path(p).name for p in extra], tmp_path / "c.h5",
                         progress=False)
    assert again.rows == [] and s.failed == 10 and s.reused == 8


def test_strict_stops_at_the_first_bad_image(tmp_path):
    items, ids = image_set(tmp_path, 4)
    trunc = make_image(tmp_path / "trunc.jpg", (400, 300), fmt="JPEG")
    trunc.write_bytes(trunc.read_bytes()[:1500])
    with pytest.raises(ImageError, match="trunc.jpg: truncated"):
        extract_to_cache(tiny(), items + [str(trunc)], ids + ["t"], tmp_path / "c.h5", strict=True,
                         progress=False)
    with pytest.raises(ImageError, match="nothere.jpg: file not found"):
        extract_to_cache(tiny(), items + ["nothere.jpg"], ids + ["n"], tmp_path / "d.h5", strict=True,
                         progress=False)


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import TINY
from featx.nets import NETS
NETS["T"] = TINY
from featx import Extractor
from featx.cache import extract_to_cache
items = sys.argv[2:]
ex = Extractor("T", scales=(224, 256), weights="random:0", device="cpu", batch_size=2)
extract_to_cache(ex, items, [str(i) for i in range(len(items))], sys.argv[1], progress=False,
                 on_batch=lambda b: print("batch", flush=True))
print("finished", flush=True)
"""


@pytest.mark.parametrize("kill_after", [0, 3, 11])
def test_kill_9_then_resume_is_bit_identical(tmp_path, kill_after):
    items, _ = image_set(tmp_path, 24)
    ids = [str(i) for i in range(len(items))]
    clean = tmp_path / "clean.h5"
    extract_to_cache(tiny(), items, ids, clean, progress=False)
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(HERE)), str(path), *items],
                            stdout=subprocess.PIPE, text=True)
    try:
        if kill_after == 0:  # while the file is being created or the first batch runs
            while not path.exists() and proc.poll() is None:
                time.sleep(0.001)
        else:
            for _ in range(kill_after):
                assert proc.stdout.readline() == "batch\n"
        time.sleep(np.random.default_rng(kill_after).uniform(0, 0.005))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if path.exists():  # the file opens, partly done
        done = (DescriptorCache(path).status(224) == DONE).sum() + (DescriptorCache(path).status(256) == DONE).sum()
        assert done < 48
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert s.computed + s.reused == 48 and (kill_after == 0 or s.reused >= 2 * (kill_after - 1))
    assert np.array_equal(DescriptorCache(path).load(), DescriptorCache(clean).load())


def test_not_a_cache(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a featx descriptor cache"):
        DescriptorCache(tmp_path / "other.h5")
    with pytest.raises(CacheError, match="no descriptor cache at"):
        DescriptorCache(tmp_path / "absent.h5")
