"""Fault injection: every way a user's input, a disk or a cache can go wrong gives one line that
names the option or file (exit 1, or 2 for a usage error), never a traceback, and loses nothing
already committed. CliRunner(catch_exceptions=False) turns any traceback into a test failure."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featx.extract.cache import DescriptorCache, Writer
from featx.cli import main
from featx.errors import CacheError

from conftest import make_image, one_line_error

TINY = ["--net", "T", "--weights", "random", "--scales", "224", "-q"]


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture
def photos(tmp_path):
    for i in range(4):
        make_image(tmp_path / "photos" / f"p{i}.jpg", (300, 225) if i % 2 else (225, 300), seed=i, fmt="JPEG")
    return tmp_path / "photos"


@pytest.mark.parametrize("args,code,fragments", [
    (["--workers", "-1"], 2, ["--workers", "-1 is not in the range x>=1"]),
    (["--device", "bogus"], 1, ["device 'bogus': write auto, cpu, cuda, cuda:N or mps"]),
    (["--device", "mps"], 1, ["device mps: Apple's MPS is not available here"]),
    (["--net", ""], 2, ["--net", "name at least one net"]),
    (["--net", "T,T"], 2, ["'T,T' names a net twice"]),
])
def test_bad_options_are_one_line(tmp_path, photos, args, code, fragments):
    base = ["extract", "--images", photos, "--out", tmp_path / "c.h5"]
    opts = TINY + args if "--net" not in args else ["--weights", "random", "--scales", "224", "-q"] + args
    one_line_error(run(*base, *opts), code, *fragments)
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("value,fragments", [
    ("E=caffe", ["--local-weights 'E=caffe': write NET=SOURCE:FILE"]),
    ("E", ["--local-weights 'E': write NET=SOURCE:FILE"]),
    ("X=caffe:w.pth", ["unknown net 'X'"]),
])
def test_bad_local_weights_are_one_line(tmp_path, value, fragments):
    one_line_error(run("reproduce", "caltech101-E", "--dry-run", "--root", tmp_path, "--local-weights", value),
                   1, *fragments)


def test_local_weights_name_the_file_of_a_net_and_source(tmp_path):
    from featx.paper.reproduce import Job, local_weights, parse_local_weights
    for name in ("vgg19.pth", "vgg16.pth"):
        (tmp_path / name).write_bytes(b"")
    w = tmp_path
    files = parse_local_weights(f"e=caffe:{w}/vgg19.pth,D=torchvision:{w}/vgg16.pth")
    assert files == {"E": f"caffe:{w}/vgg19.pth", "D": f"torchvision:{w}/vgg16.pth"}
    assert local_weights(Job("caltech101", "E", "caffe", (256,)), files) == f"caffe:{w}/vgg19.pth"
    # another source for the same net: the local copy does not apply
    assert local_weights(Job("caltech101", "E", "torchvision", (256,)), files) == "torchvision"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(tmp_path, photos):
    one_line_error(run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY, "--device", "cuda"),
                   1, "device cuda: this machine has no CUDA GPU")


def test_bad_weights_spec_and_an_out_under_a_file(tmp_path, photos):
    one_line_error(run("extract", "--images", photos, "--out", tmp_path / "c.h5", "--net", "T",
                       "--weights", "random:abc", "--scales", "224", "-q"),
                   1, "random:abc", "integer SEED")
    one_line_error(run("extract", "--images", photos, "--out", photos / "p0.jpg" / "x.h5", *TINY),
                   1, "cannot write a cache at", "p0.jpg")


def test_a_file_name_that_is_not_utf8_is_just_another_image(tmp_path, photos):
    odd = os.fsdecode(b"caf\xe9-latin1.jpg")  # a name from an old Latin-1 archive
    shutil.copyfile(photos / "p0.jpg", photos / odd)
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)
    assert r.exit_code == 0, r.output
    cache = DescriptorCache(tmp_path / "c.h5")
    assert odd in cache.ids and cache.counts()[224]["done"] == 5
    x = cache.load(ids=[odd, "p0.jpg"])
    assert np.array_equal(x[0], x[1])  # the same pixels, the same descriptor
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)  # and it resumes
    assert r.exit_code == 0 and "computed 0, reused 5" in r.output


def test_odd_entries_in_a_folder_are_recorded_not_skipped(tmp_path, photos):
    (photos / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos / "folder.jpg").mkdir()
    (photos / "loop").symlink_to(photos)  # a symlink loop: not followed
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)
    assert r.exit_code == 0, r.output
    assert "computed 4, reused 0, failed 2" in r.output
    errors = DescriptorCache(tmp_path / "c.h5").errors()
    assert "file not found" in errors["dangling.jpg"] and "is a directory" in errors["folder.jpg"]


@pytest.mark.parametrize("content,fragments", [
    (b"path,labels\na.jpg,;\n", ["data.csv:2", "at least one label"]),
    (b"path,labels\nb\xe9.jpg,x\n", ["data.csv: not UTF-8 text"]),
    (b"path,labels\n" + b"a" * 200_000 + b".jpg,x\n", ["data.csv:2: not a valid CSV row", "field larger"]),
])
def test_bad_csv_files(tmp_path, content, fragments):
    (tmp_path / "data.csv").write_bytes(content)
    one_line_error(run("svm", f"csv:{tmp_path / 'data.csv'}", "--net", "T", "--weights", "random"), 1, *fragments)


@pytest.fixture
def cache(tmp_path, photos):
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)
    assert r.exit_code == 0, r.output
    return tmp_path / "c.h5"


@pytest.mark.parametrize("damage,fragments", [
    (lambda f: f.__delitem__("errors"), ["is damaged: it has no 'errors' dataset", "move it aside"]),
    (lambda f: f["scales/224"].__delitem__("status"), ["scale Q=224 has no 'status' dataset"]),
    (lambda f: (f["scales/224"].__delitem__("status"), f["scales/224"].create_dataset("status", data=np.ones(3, "u1"))),
     ["'status' has shape (3,), expected (4,)"]),
])
def test_structurally_damaged_caches(cache, photos, damage, fragments):
    with h5py.File(cache, "r+") as f:
        damage(f)
    for args in (["info", cache], ["extract", "--images", photos, "--out", cache, *TINY]):
        one_line_error(run(*args), 1, str(cache), *fragments)


def test_random_byte_flips_in_a_caches_metadata_never_escape_as_tracebacks(cache):
    clean = cache.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "fine": 0}
    for trial in range(40):
        blob = bytearray(clean)
        for pos in rng.integers(0, min(8192, len(blob)), size=3):
            blob[pos] ^= 1 << int(rng.integers(8))
        cache.write_bytes(bytes(blob))
        r = run("info", cache)
        assert "Traceback" not in r.output
        if r.exit_code:
            one_line_error(r, 1, str(cache))
            outcomes["error"] += 1
        else:
            outcomes["fine"] += 1
    assert outcomes["error"] > 0


def test_a_second_writer_through_a_hard_link_is_refused(cache, tmp_path):
    link = tmp_path / "link.h5"
    os.link(cache, link)
    with Writer(cache):
        with pytest.raises(CacheError, match="being written by another process \\(through another path"):
            Writer(link)


def test_image_box_on_a_dataset_without_boxes(tmp_path):
    from minitrees import make_voc
    make_voc(tmp_path)
    one_line_error(run("svm", "voc2007", "--net", "T", "--weights", "random", "--setting", "image+box",
                       "--root", tmp_path), 1, "setting image+box needs box views", "voc2007")


def test_predict_refuses_what_featx_did_not_write(tmp_path, photos):
    import joblib
    joblib.dump({"not": "a featx model"}, tmp_path / "other.joblib")
    one_line_error(run("predict", tmp_path / "other.joblib", photos / "p0.jpg"), 1,
                   "no featx model record at", "other.model.json")
    (tmp_path / "x.model.json").write_text('{"format": "featx-model", "format_version": 99, "featx_version": "9"}')
    one_line_error(run("predict", tmp_path / "x.model.json", photos / "p0.jpg"), 1,
                   "a featx model of format 99", "Train it again")


def test_pipeline_files_that_are_not_text_or_not_files(tmp_path):
    (tmp_path / "bad.toml").write_bytes(b'table = "table11"\nrow = "caf\xe9"\n')
    one_line_error(run("reproduce", tmp_path / "bad.toml", "--dry-run", "--gflops", "1"), 1,
                   "bad.toml: not UTF-8 text")
    (tmp_path / "dir.toml").mkdir()
    one_line_error(run("reproduce", tmp_path / "dir.toml", "--dry-run", "--gflops", "1"), 1,
                   "dir.toml: is a folder, not a pipeline file")


def test_one_huge_image_fails_alone(tmp_path, photos, monkeypatch):
    Image.new("RGB", (30000, 100), (90, 120, 150)).save(photos / "panorama.png")
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)
    assert r.exit_code == 0, r.output
    assert "computed 4, reused 0, failed 1" in r.output
    reason = DescriptorCache(tmp_path / "c.h5").errors()["panorama.png"]
    assert "rescaled to 67200x224 at Q=224" in reason and "FEATX_MAX_RESCALED_PIXELS" in reason
    r = run("extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY)  # never retried in vain
    assert r.exit_code == 0 and "computed 0, reused 4, failed 1" in r.output


def test_disk_full_mid_run_keeps_what_was_committed(tmp_path, photos, monkeypatch):
    for i in range(4, 12):
        make_image(photos / f"p{i}.jpg", (300, 225), seed=i, fmt="JPEG")
    args = ["extract", "--images", photos, "--out", tmp_path / "c.h5", *TINY, "--batch-size", "2"]
    original = Writer.commit
    # the third batch's write fails inside h5py with ENOSPC; featx's commit turns it into one line
    monkeypatch.setattr(Writer, "commit", _raising_inside(original, after=2))
    one_line_error(run(*args), 1, "no space left on the device holding", "every row already committed is kept")
    assert DescriptorCache(tmp_path / "c.h5").counts()[224]["done"] == 4
    monkeypatch.setattr(Writer, "commit", original)
    r = run(*args)
    assert r.exit_code == 0 and "computed 8, reused 4" in r.output
    whole = tmp_path / "whole.h5"
    assert run("extract", "--images", photos, "--out", whole, *TINY, "--batch-size", "2").exit_code == 0
    assert np.array_equal(DescriptorCache(tmp_path / "c.h5").load(), DescriptorCache(whole).load())


def _raising_inside(original, after):
    calls = []

    def commit(self, q, rows, descriptors, failures, seconds=0.0, transient=(), **more):
        calls.append(1)
        if len(calls) > after:
            group = self.f[f"scales/{q}"]["descriptors"]

            class Full:
                def __setitem__(self, key, value):
                    raise OSError(errno.ENOSPC, "Can't write data (No space left on device)")

            self.f = _Proxy(self.f, {f"scales/{q}": {"descriptors": Full(), "crc32": group}})
        return original(self, q, rows, descriptors, failures, seconds, transient, **more)
    return commit


class _Proxy:
    """An h5py.File whose given groups hand out stand-in datasets (to inject a write error)."""

    def __init__(self, f, groups):
        self._f, self._groups = f, groups

    def __getitem__(self, key):
        return self._groups.get(key) or self._f[key]

    def __getattr__(self, name):
        return getattr(self._f, name)


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return ok


def test_a_real_full_filesystem(tmp_path, photos):
    small = tmp_path / "small"
    if not _can_mount_tmpfs(small):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        # fill the 1 MiB filesystem but for a few KB: the cache cannot be made there
        filler = small / "filler"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * (1024 * 1024 - 8 * 1024))
        cli = ("import conftest; from featx.net.specs import NETS; NETS['T'] = conftest.TINY; "
               "from featx.cli import main; main()")
        args = [sys.executable, "-c", cli, "extract", "--images", str(photos), "--out", str(small / "c.h5"),
                "--net", "T", "--weights", "random", "--scales", "224,256", "-q"]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        assert r.returncode == 1, (r.returncode, r.stderr)  # never a segfault (-11) or a traceback
        assert "Traceback" not in r.stderr and "no space left on the device holding" in r.stderr
        assert not list(small.glob(".c.h5.tmp-*"))
        filler.unlink()
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        assert r.returncode == 0 and "computed 8, reused 0" in r.stdout, r.stderr
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
