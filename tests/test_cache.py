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
from featx.extract.cache import DONE, FAILED, DescriptorCache, being_written, lock_file
from featx.extract.update import extract_to_cache

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


def test_wall_time_is_summed_per_scale_across_resumes(tmp_path):
    items, ids = image_set(tmp_path)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(), items, ids, path, rows=[0, 4, 5], progress=False)
    first = DescriptorCache(path).timing()
    assert [rows for _, rows in first.values()] == [3, 3] and all(s > 0 for s, _ in first.values())
    extract_to_cache(tiny(), items, ids, path, progress=False)  # the 7 rows left, at both scales
    again = DescriptorCache(path).timing()
    assert [rows for _, rows in again.values()] == [10, 10]
    assert all(again[q][0] > first[q][0] for q in (224, 256))


def test_other_settings_are_refused_and_a_smaller_set_reuses_its_rows(tmp_path):
    items, ids = image_set(tmp_path)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(), items, ids, path, progress=False)
    with pytest.raises(CacheError, match="other settings, refusing to mix:\n  flip: file has True, this run False"):
        extract_to_cache(tiny(flip=False), items, ids, path, progress=False)
    with pytest.raises(CacheError, match="weights_digest: file has 'tensors:[0-9a-f]{64}', this run 'tensors:[0-9a-f]{64}'"):
        extract_to_cache(Extractor("T", scales=(224,), weights="random:1", device="cpu"), items, ids, path,
                         progress=False)
    s = extract_to_cache(tiny(), items[:5], ids[:5], path, progress=False)  # rows are kept by image id
    assert (s.computed, s.reused, s.absent) == (0, 10, 5)
    assert "kept 5 rows of images not in this set" in str(s)


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


def test_being_written_sees_the_writers_lock_and_its_probe_never_refuses_a_writer(tmp_path):
    import fcntl
    import threading
    path = tmp_path / "c.h5"
    assert not being_written(path)  # no lock file yet
    held = FileLock(str(lock_file(path)))
    with held:
        assert being_written(path)
    assert not being_written(path)
    # A probe's shared lock held for a moment (longer than any real probe) only delays a writer
    items, ids = image_set(tmp_path, 2)
    extractor = tiny()
    fd = os.open(lock_file(path), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, (fd,)).start()
    assert extract_to_cache(extractor, items, ids, path, progress=False).computed == 4  # 2 images x 2 scales


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
from featx.net.specs import NETS
NETS["T"] = TINY
from featx import Extractor
from featx.extract.update import extract_to_cache
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


# -- format 2: weights by content, 0.2.0 caches, checksums ------------------------------------

FIXTURE = HERE / "fixtures" / "featx-0.2.0-T-random-0.h5"


def fixture_images(tmp_path):
    """The six images tests/fixtures/make_020_cache.py wrote the 0.2.0 cache for."""
    items = [str(make_image(tmp_path / "fix" / f"{i:03d}.png", [(300, 225), (225, 300), (320, 240)][i % 3],
                            seed=i)) for i in range(6)]
    return items, [Path(p).name for p in items]


def test_a_0_2_0_cache_loads_resumes_and_gains_checksums(tmp_path):
    import shutil
    path = tmp_path / "old.h5"
    shutil.copyfile(FIXTURE, path)
    items, ids = fixture_images(tmp_path)
    old = DescriptorCache(path)
    assert old.attrs["featx_version"] == "0.2.0" and not old.checksummed and "weights_digest" not in old.attrs
    assert old.timing() == {224: (0.0, 0)}  # 0.2.0 did not time its rows
    fresh = tiny(scales=(224,)).extract(items)
    # the same numbers as today's code (within float rounding: the fixture may come from another
    # CPU, and batches of other sizes round differently in the last bit)
    np.testing.assert_allclose(old.load(rows=[0, 1, 2, 3]), fresh[:4], rtol=1e-5, atol=1e-6)
    # resumed by this version: the weights match by their 0.2.0 record, rows 4-5 are computed,
    # and the file gains checksums (rows done before are checksummed as found)
    s = extract_to_cache(tiny(scales=(224, 256)), items, ids, path, progress=False)
    assert (s.computed, s.reused, s.failed) == (2 + 6, 4, 0)
    new = DescriptorCache(path)
    assert new.checksummed and new.attrs["featx_version"] == "0.2.0"  # provenance kept
    assert np.array_equal(new.load(rows=[0, 1, 2, 3], scales=[224]), old.load(rows=[0, 1, 2, 3]))
    np.testing.assert_allclose(new.load(), tiny().extract(items), rtol=1e-5, atol=1e-6)
    assert all(len(new.corrupt(q)) == 0 for q in (224, 256))
    assert [rows for _, rows in new.timing().values()] == [2, 6]  # the rows 0.2.0 made are not timed


def test_weights_are_identified_by_content_not_file_name(tmp_path):
    import torch
    from featx.net.specs import NETS
    from featx.net.vgg import random_state_dict
    items, ids = image_set(tmp_path, n=4)
    state = random_state_dict(NETS["T"], seed=3)
    a, b = tmp_path / "a.pth", tmp_path / "copy" / "renamed.pth"
    b.parent.mkdir()
    torch.save(state, a)
    torch.save({k: v.clone() for k, v in state.items()}, b)  # other bytes on disk, same tensors
    path = tmp_path / "c.h5"
    ex = Extractor("T", scales=(224,), weights=str(a), preprocess="caffe", device="cpu")
    assert ex.weights.digest.startswith("tensors:")
    extract_to_cache(ex, items, ids, path, progress=False)
    again = Extractor("T", scales=(224, 256), weights=str(b), preprocess="caffe", device="cpu")
    assert again.weights.digest == ex.weights.digest
    s = extract_to_cache(again, items, ids, path, progress=False)
    assert (s.computed, s.reused) == (4, 4)


def test_flipped_descriptor_bytes_are_detected_and_recomputed(tmp_path):
    items, ids = image_set(tmp_path, n=6)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(), items, ids, path, progress=False)
    clean = DescriptorCache(path).load()
    with h5py.File(path, "r+") as f:  # damage two rows' bytes behind featx's back
        d = f["scales/256/descriptors"]
        d[1, 3] = d[1, 3] + 1.0
        d[4, 0] = -7.0
    cache = DescriptorCache(path)
    assert list(cache.corrupt(256)) == [1, 4] and len(cache.corrupt(224)) == 0
    with pytest.raises(CacheError, match=r"2 descriptor\(s\) at Q=256 fail their checksum \(first: 001.png\).*"
                                         "Run the same featx extract command again"):
        cache.load()
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.computed, s.repaired, s.reused) == (2, 2, 10)
    assert np.array_equal(DescriptorCache(path).load(), clean)


def test_unknown_status_bytes_and_stale_temporaries_are_repaired(tmp_path):
    items, ids = image_set(tmp_path, n=4)
    path = tmp_path / "c.h5"
    extract_to_cache(tiny(scales=(224,)), items, ids, path, progress=False)
    with h5py.File(path, "r+") as f:
        f["scales/224/status"][2] = 77
    (tmp_path / ".c.h5.tmp-999999").write_bytes(b"left by a killed run")
    with pytest.raises(CacheError, match="1 of the requested images have no descriptor at Q=224 "
                                         r"\(first: 002.png\); run featx extract"):
        DescriptorCache(path).load()
    s = extract_to_cache(tiny(scales=(224,)), items, ids, path, progress=False)
    assert (s.computed, s.repaired) == (1, 1)
    assert not list(tmp_path.glob(".c.h5.tmp-*"))
    assert DescriptorCache(path).counts()[224] == {"done": 4, "failed": 0, "todo": 0}


@pytest.mark.parametrize("fixture", ["featx-0.2.0-T-random-0.h5", "featx-0.5.0-T-random-0.h5"])
def test_featx_info_reads_what_older_caches_were_made_with(tmp_path, fixture):
    import shutil

    from click.testing import CliRunner

    from featx.cli import main
    path = shutil.copy(HERE / "fixtures" / fixture, tmp_path / fixture)
    m = DescriptorCache(path).made_with
    assert (m.net, m.arch, m.dim, m.weights, m.preprocess, m.flip) == ("T", "tiny", 16, "random:0", "torchvision", True)
    old = fixture.startswith("featx-0.2.0")
    # 0.2.0 recorded the weights file's sha256 (or the source name), later ones the tensors' digest
    assert m.digest_text.startswith("file sha256 " if old else "digest ") and m.featx_version == fixture[6:11]
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert f"  net         Net-T (tiny), 16-D fc7, {m.dtype}" in r.output
    assert f"  made by     featx {m.featx_version}, torch " in r.output
    assert ("rows record no image files yet (written by featx " + m.featx_version) in r.output
