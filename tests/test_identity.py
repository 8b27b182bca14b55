"""Caches keyed by each image: a row records the file it was computed from; changed images are
recomputed, new ones added, rows of images that left kept unused, failures retried when they
can succeed, caches of featx 0.5.0 upgraded without recomputing anything."""
import hashlib
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featx import Extractor
from featx.extract.cache import DONE, DescriptorCache
from featx.cli import main
from featx.paths import cache_path
from featx.extract.update import extract_to_cache, prune

from conftest import make_image

HERE = Path(__file__).parent
SIZES = [(300, 225), (225, 300), (320, 240)]


def tiny(**kw):
    kw.setdefault("scales", (224, 256))
    kw.setdefault("batch_size", 2)
    return Extractor("T", weights="random:0", device="cpu", **kw)


class Counting:
    """An Extractor that counts the images its forward passes compute."""

    def __init__(self, **kw):
        self.ex, self.images = tiny(**kw), 0
        original = self.ex.forward

        def forward(pixels):
            self.images += len(pixels)
            return original(pixels)
        self.ex.forward = forward


def folder(tmp_path, n, name="photos"):
    base = tmp_path / name
    for i in range(n):
        make_image(base / f"{i:03d}.png", SIZES[i % 3], seed=i)
    return base


def listing(base):
    paths = sorted(base.glob("*.png"))
    return [str(p) for p in paths], [p.name for p in paths]


def extract(base, path, ex=None, **kw):
    items, ids = listing(base)
    return extract_to_cache((ex or tiny()), items, ids, path, progress=False, **kw)


def by_id(path):
    c = DescriptorCache(path)
    done = [i for i, id_ in enumerate(c.ids) if all(c.status(q)[i] == DONE for q in c.scales)]
    return dict(zip([c.ids[i] for i in done], c.load(rows=done)))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_changed_image_is_recomputed_and_equals_a_fresh_extraction(tmp_path):
    base, path = folder(tmp_path, 5), tmp_path / "c.h5"
    extract(base, path)
    before = by_id(path)
    make_image(base / "002.png", (280, 250), seed=99)  # another photograph under the same name
    counting = Counting()
    s = extract(base, path, counting.ex)
    assert (s.changed, s.computed, s.reused, s.added) == (1, 2, 8, 0) and counting.images == 2
    assert "recomputed 1 changed image" in str(s)
    after = by_id(path)
    assert np.array_equal(after["002.png"], tiny().extract([base / "002.png"])[0])
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "002.png")
    c = DescriptorCache(path)
    r = c.rows(["002.png"])[0]
    assert tuple(c.sizes()[r]) == (250, 280)
    assert c.record().digests[r].decode() == hashlib.sha256((base / "002.png").read_bytes()).hexdigest()
    again = extract(base, path)  # nothing changed since: no file is even read
    assert (again.computed, again.changed, again.hashed) == (0, 0, 0)


def test_a_same_size_change_with_its_old_mtime_is_caught(tmp_path):
    base, path = tmp_path / "pgm", tmp_path / "c.h5"
    for i in range(3):
        make_image(base / f"{i:03d}.ppm", (240, 230), seed=i)  # PPM: same dimensions, same byte size
    items = [str(p) for p in sorted(base.glob("*.ppm"))]
    ids = [Path(p).name for p in items]
    extract_to_cache(tiny(), items, ids, path, progress=False)
    target = base / "001.ppm"
    st = target.stat()
    make_image(target, (240, 230), seed=7)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or `touch -r` would leave it
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.changed, s.computed) == (1, 2)
    row = DescriptorCache(path).load(ids=["001.ppm"])[0]
    assert np.array_equal(row, tiny().extract([target])[0])


def test_touched_or_moved_files_are_hashed_not_recomputed(tmp_path):
    base, path = folder(tmp_path, 4), tmp_path / "c.h5"
    extract(base, path)
    before = by_id(path)
    os.utime(base / "001.png", ns=(1, 1))
    s = extract(base, path)
    assert (s.computed, s.changed, s.hashed) == (0, 0, 1)
    moved = tmp_path / "elsewhere"
    shutil.copytree(base, moved)  # copies: new times, same bytes
    s = extract(moved, path)
    assert (s.computed, s.changed, s.hashed, s.absent) == (0, 0, 4, 0)
    assert by_id(path).keys() == before.keys() and all(np.array_equal(by_id(path)[k], v) for k, v in before.items())
    assert all(p.startswith(str(moved)) for p in DescriptorCache(path).record().paths)  # the new paths recorded
    assert extract(moved, path).hashed == 0


def test_a_grown_folder_computes_only_the_new_image_and_reuses_the_rest_bit_for_bit(tmp_path):
    base, path = folder(tmp_path, 8), tmp_path / "c.h5"
    extract(base, path)
    before = by_id(path)
    make_image(base / "008.png", (260, 300), seed=8)
    counting = Counting()
    s = extract(base, path, counting.ex)
    assert (s.added, s.computed, s.reused, s.changed) == (1, 2, 16, 0) and counting.images == 2
    assert "1 new image" in str(s)
    after = by_id(path)
    assert len(after) == 9 and all(np.array_equal(after[k], v) for k, v in before.items())
    assert np.array_equal(after["008.png"], tiny().extract([base / "008.png"])[0])


def test_a_shrunk_folder_keeps_its_rows_unused_until_pruned(tmp_path):
    base, path = folder(tmp_path, 6), tmp_path / "c.h5"
    extract(base, path)
    before = by_id(path)
    (base / "001.png").unlink()
    (base / "004.png").unlink()
    s = extract(base, path)
    assert (s.computed, s.reused, s.absent) == (0, 8, 2)
    assert "kept 2 rows of images not in this set" in str(s)
    c = DescriptorCache(path)
    assert len(c) == 6 and sorted(c.gone()) == ["001.png", "004.png"]
    r = run("info", path)
    assert "2 row(s) of images whose file is gone (first: 001.png): --prune removes them" in r.output
    r = run("info", path, "--prune")
    assert r.exit_code == 0 and "pruned      2 row(s)" in r.output
    c = DescriptorCache(path)
    assert c.ids == ["000.png", "002.png", "003.png", "005.png"] and c.gone() == []
    assert all(np.array_equal(c.load(ids=[k])[0], before[k]) for k in c.ids)
    assert c.counts() == {224: {"done": 4, "failed": 0, "todo": 0}, 256: {"done": 4, "failed": 0, "todo": 0}}
    assert prune(path) == 0
    s = extract(base, path)
    assert (s.computed, s.reused, s.absent, s.hashed) == (0, 8, 0, 0)


def test_two_folders_with_the_same_name_have_their_own_caches(tmp_path):
    a, b = folder(tmp_path / "a", 3), folder(tmp_path / "b", 4)
    assert a.name == b.name == "photos"
    pa, pb = (cache_path(f"folder:{p}", "T", "random", cache_dir=tmp_path / "cache") for p in (a, b))
    assert pa != pb and pa.parent.name.startswith("photos-") and pa.parent.parent == tmp_path / "cache"
    # the same folder by another path (relative, through a symlink) is the same set
    (tmp_path / "link").symlink_to(a)
    assert cache_path(tmp_path / "link", "T", "random", cache_dir=tmp_path / "cache") == pa
    assert cache_path(f"folder:{a}", "T", "random", cache_dir=tmp_path / "cache") == pa
    for base, n in ((a, 3), (b, 4)):
        r = run("extract", "--images", base, "--net", "T", "--weights", "random", "--scales", "224",
                "--cache-dir", tmp_path / "cache", "-q")
        assert r.exit_code == 0 and f"computed {n}, reused 0" in r.output, r.output
    assert len(DescriptorCache(pa)) == 3 and len(DescriptorCache(pb)) == 4
    assert DescriptorCache(pa).attrs["source"] == str(a.resolve())


def test_missing_then_restored_files_are_retried(tmp_path):
    base, path = folder(tmp_path, 5), tmp_path / "c.h5"
    items, ids = listing(base)
    kept = {n: (base / n).read_bytes() for n in ("001.png", "003.png")}
    for n in kept:
        (base / n).unlink()  # gone while the run lists them (as when deleted mid-run)
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.computed, s.failed) == (6, 4) and all("file not found" in r for r in s.failures.values())
    s = extract_to_cache(tiny(), items, ids, path, progress=False)  # still missing: tried again, cheaply
    assert (s.retried, s.computed, s.failed) == (2, 0, 4)
    for n, data in kept.items():
        (base / n).write_bytes(data)
    counting = Counting()
    s = extract_to_cache(counting.ex, items, ids, path, progress=False)
    assert (s.computed, s.failed, s.reused) == (4, 0, 6) and counting.images == 4
    assert DescriptorCache(path).errors() == {}
    assert np.array_equal(DescriptorCache(path).load(), tiny().extract(items))


def test_a_decode_failure_of_an_unchanged_file_is_not_retried_unless_asked(tmp_path):
    base, path = folder(tmp_path, 3), tmp_path / "c.h5"
    bad = make_image(base / "bad.jpg", (300, 240), fmt="JPEG")
    bad.write_bytes(bad.read_bytes()[:1500])
    items, ids = [str(p) for p in sorted(base.iterdir())], sorted(p.name for p in base.iterdir())
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert s.failed == 2 and "truncated or corrupt" in next(iter(s.failures.values()))
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.retried, s.computed, s.failed) == (0, 0, 2)
    s = extract_to_cache(tiny(), items, ids, path, progress=False, retry_failed=True)
    assert (s.retried, s.computed, s.failed) == (1, 0, 2)
    r = run("extract", "--images", base, "--net", "T", "--weights", "random:0", "--scales", "224,256",
            "--batch-size", "2", "--out", path, "--retry-failed", "-q")
    assert "retried 1 failed image" in r.output and "failed: " in r.output and "bad.jpg: truncated" in r.output
    make_image(bad, (300, 240), seed=5, fmt="JPEG")  # fixed: its file changed, so it is tried again
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.changed, s.computed, s.failed) == (1, 2, 0)


def test_an_unreadable_file_is_a_transient_failure(tmp_path, monkeypatch):
    base, path = folder(tmp_path, 3), tmp_path / "c.h5"
    items, ids = listing(base)
    import featx.extract.identity as identity
    real = identity.digest

    def flaky(item):
        if str(item).endswith("001.png"):
            raise OSError(5, "Input/output error")
        return real(item)
    monkeypatch.setattr(identity, "digest", flaky)
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert s.failed == 2 and "001.png: cannot read (Input/output error)" in s.failures[1]
    monkeypatch.setattr(identity, "digest", real)
    s = extract_to_cache(tiny(), items, ids, path, progress=False)  # the disk is back: same file, retried
    assert (s.retried, s.computed, s.failed) == (1, 2, 0)


FIXTURE = HERE / "fixtures" / "featx-0.5.0-T-random-0.h5"


def test_a_0_5_0_cache_is_upgraded_in_place_without_recomputing(tmp_path):
    path = tmp_path / "old.h5"
    shutil.copyfile(FIXTURE, path)
    old = DescriptorCache(path)
    assert old.attrs["featx_version"] == "0.5.0" and not old.identified and old.checksummed
    stored = old.load(rows=[0, 1, 2, 3, 4])
    # the images of tests/fixtures/make_050_cache.py, now somewhere else; 005.png exists now
    base = tmp_path / "imgs"
    for i in range(6):
        make_image(base / f"{i:03d}.png", SIZES[i % 3], seed=i)
    items, ids = listing(base)
    counting = Counting()
    s = extract_to_cache(counting.ex, items, ids, path, progress=False)
    assert s.upgraded and (s.computed, s.reused, s.retried, s.changed) == (2, 10, 1, 0)
    assert counting.images == 2 and "changed image" not in str(s) and "recorded each image's identity" in str(s)
    new = DescriptorCache(path)
    assert new.identified and new.attrs["featx_version"] == "0.5.0"  # provenance kept
    assert np.array_equal(new.load(rows=[0, 1, 2, 3, 4]), stored)
    assert new.record().digests[0].decode() == hashlib.sha256(Path(items[0]).read_bytes()).hexdigest()
    assert all(len(new.corrupt(q)) == 0 for q in new.scales)
    assert extract_to_cache(tiny(), items, ids, path, progress=False).hashed == 0


def test_a_0_5_0_row_whose_image_changed_is_caught_by_its_size(tmp_path):
    path = tmp_path / "old.h5"
    shutil.copyfile(FIXTURE, path)
    base = tmp_path / "imgs"
    for i in range(6):
        make_image(base / f"{i:03d}.png", (270, 270) if i == 3 else SIZES[i % 3], seed=i)
    items, ids = listing(base)
    s = extract_to_cache(tiny(), items, ids, path, progress=False)
    assert (s.changed, s.computed, s.reused) == (1, 4, 8)  # 003.png at both scales, and 005.png
    assert np.array_equal(DescriptorCache(path).load(ids=["003.png"])[0], tiny().extract([items[3]])[0])


def test_extract_then_svm_on_a_folder_reuses_every_row(tmp_path):
    base = tmp_path / "mine"
    for c in ("cats", "dogs"):
        for i in range(6):
            make_image(base / c / f"{i}.jpg", (240, 230), seed=10 * len(c) + i, fmt="JPEG")
    common = ["--net", "T", "--weights", "random:0", "--scales", "224"]
    r = run("extract", "--images", base, *common, "-q", "--root", tmp_path / "data")
    assert "computed 12, reused 0" in r.output, r.output
    r = run("svm", f"folder:{base}", *common, "--extract", "--root", tmp_path / "data",
            "--results-dir", tmp_path / "results", "--c-grid", "1")
    assert r.exit_code == 0, r.output
    assert "computed 0, reused 12" in r.output
    assert len(list((tmp_path / "data" / "featx-cache").iterdir())) == 1  # one cache folder for both


@pytest.fixture
def class_folder(tmp_path):
    base = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(5):
            make_image(base / c / f"{i}.png", (240, 230), seed=7 * len(c) + i)
    return base


def run_hint(output):
    """The command a featx error suggests, run as printed."""
    line = next(l.strip() for l in output.splitlines() if l.strip().startswith("featx extract"))
    args = shlex.split(line)[1:]
    r = run(*args, "-q")
    assert r.exit_code == 0, (line, r.output)
    return line


@pytest.mark.parametrize("how", ["folder", "csv", "cache-dir", "root"])
def test_each_hint_runs_and_then_svm_reads_what_it_computed(tmp_path, class_folder, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    common = ["--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
              "--results-dir", tmp_path / "results"]
    dataset = f"folder:{class_folder}"
    if how == "csv":
        rows = [f"{p.relative_to(class_folder)},{p.parent.name}" for p in sorted(class_folder.rglob("*.png"))]
        (class_folder / "set.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
        dataset = f"csv:{class_folder / 'set.csv'}"
    extra = {"cache-dir": ["--cache-dir", tmp_path / "elsewhere"], "root": ["--root", tmp_path / "r"]}.get(how, [])
    r = run("svm", dataset, *common, *extra)
    assert r.exit_code == 1 and "compute them with:" in r.output, r.output
    line = run_hint(r.output)
    assert "--dataset fold " not in line and ("--cache-dir" in line) == (how in ("cache-dir", "root"))
    r = run("svm", dataset, *common, *extra)
    assert r.exit_code == 0, r.output


def test_the_hint_for_a_benchmark_names_its_root(tmp_path, monkeypatch):
    from minitrees import make_caltech
    monkeypatch.chdir(tmp_path)
    make_caltech(tmp_path / "d", per_class=(33, 34), real_images=True)
    common = ["--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1", "--root", tmp_path / "d",
              "--results-dir", tmp_path / "results"]
    r = run("svm", "caltech101", *common)
    assert r.exit_code == 1
    line = run_hint(r.output)
    assert f"--dataset caltech101 --root {tmp_path / 'd'}" in line
    assert run("svm", "caltech101", *common).exit_code == 0


def test_svm_refuses_descriptors_of_images_that_changed_since(tmp_path, class_folder):
    common = ["--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
              "--root", tmp_path / "d", "--results-dir", tmp_path / "results"]
    assert run("svm", f"folder:{class_folder}", *common, "--extract").exit_code == 0
    make_image(class_folder / "dog" / "3.png", (250, 240), seed=123)
    r = run("svm", f"folder:{class_folder}", *common)
    assert r.exit_code == 1
    assert "1 image(s) changed or gone since their Net-T descriptors were computed (first: dog/3.png)" in r.output
    run_hint(r.output)
    assert run("svm", f"folder:{class_folder}", *common).exit_code == 0


def test_a_cache_dir_that_is_a_file_is_named(tmp_path, class_folder, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "afile"))
    r = run("svm", f"folder:{class_folder}", "--net", "T", "--weights", "random:0", "--scales", "224")
    assert r.exit_code == 1 and f"$FEATX_CACHE_DIR {tmp_path / 'afile'} is a file" in r.output
    assert "unknown dataset" not in r.output


def test_info_finds_a_sets_caches_by_the_same_rule(tmp_path, class_folder):
    run("extract", "--dataset", f"folder:{class_folder}", "--net", "T", "--weights", "random:0",
        "--scales", "224", "--cache-dir", tmp_path / "c", "-q")
    r = run("info", "--images", class_folder, "--cache-dir", tmp_path / "c")
    assert r.exit_code == 0 and "image set   pets: 10 images" in r.output
    assert "each row records its file" in r.output
    r = run("info", "--dataset", f"folder:{class_folder}", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 0 and "T-random-0.h5" in r.output


def test_predict_on_a_folder_goes_through_its_cache(tmp_path, class_folder):
    common = ["--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
              "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results"]
    assert run("svm", f"folder:{class_folder}", *common, "--extract").exit_code == 0
    model = tmp_path / "results" / "pets" / "T-224-224x1-mean.model.json"
    new = folder(tmp_path, 3, "new")
    (new / "broken.png").write_text("no")
    r = CliRunner().invoke(main, ["predict", str(model), str(new), "--cache-dir",
                                                  str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{new / '000.png'}: ") and "broken.png: failed: " in lines[3]
    assert "computed 3, reused 0, failed 1" in r.stderr
    # the same scores as predicting the files one by one, and the folder's cache is the rule's
    one = run("predict", model, new / "000.png")
    assert one.output.splitlines()[0] == lines[0]
    assert cache_path(new, "T", "random:0", cache_dir=tmp_path / "c").is_file()
    make_image(new / "003.png", (240, 240), seed=3)
    r = CliRunner().invoke(main, ["predict", str(model), str(new), "--cache-dir",
                                                  str(tmp_path / "c"), "-q"])
    assert "computed 1, reused 3, failed 1" in r.stderr and "1 new image" in r.stderr


def test_encoded_bytes_are_known_by_their_digest(tmp_path):
    import io
    from PIL import Image
    path = tmp_path / "c.h5"

    def ppm(seed):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (240, 230, 3), dtype=np.uint8)).save(buf, "PPM")
        return buf.getvalue()
    a, b = ppm(1), ppm(2)
    assert len(a) == len(b)
    extract_to_cache(tiny(), [a, ppm(3)], ["x", "y"], path, progress=False)
    s = extract_to_cache(tiny(), [b, ppm(3)], ["x", "y"], path, progress=False)  # same length, other bytes
    assert (s.changed, s.computed, s.reused) == (1, 2, 2)
    assert np.array_equal(DescriptorCache(path).load(ids=["x"])[0], tiny().extract([b])[0])
