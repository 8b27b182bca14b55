"""What featx writes after the caches: result and model files written whole or not at all, a
run's files checked as one set, full disks and read-only places in one line, model records that
cannot be edited into wrong answers (#25)."""
import errno
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from featx.cli import main

from conftest import make_image, one_line_error

RUN = "T-224-224x1-mean"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(r, *fragments):
    return one_line_error(r, 1, *fragments)


@pytest.fixture
def pets(tmp_path):
    base = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(4):
            make_image(base / c / f"{i}.png", (240, 230), seed=11 * len(c) + 3 * i + ord(c[0]))
    return base


def svm(tmp_path, pets, *more):
    return run("svm", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
               "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "results", "--extract", *more)


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def fail_commit(monkeypatch, fails, error):
    """featx.atomic.commit raising `error` for the files where fails(path) holds (the moment a
    file would be renamed into place); the others are committed as usual."""
    import featx.atomic
    real = featx.atomic.commit

    def commit(tmp, path, reserve=False):
        if fails(path):
            raise error
        return real(tmp, path, reserve)
    monkeypatch.setattr(featx.atomic, "commit", commit)
    return lambda: monkeypatch.setattr(featx.atomic, "commit", real)


def test_a_run_killed_while_writing_its_results_leaves_whole_files_and_a_set_that_says_so(tmp_path, pets, monkeypatch):
    assert svm(tmp_path, pets).exit_code == 0
    out = tmp_path / "results" / "pets"
    before = files_of(out)
    # the process dies at its .json: the other files are already replaced
    restore = fail_commit(monkeypatch, lambda path: path.name == f"{RUN}.json", KeyboardInterrupt)
    svm(tmp_path, pets, "--c-grid", "0.01")
    restore()
    after = files_of(out)
    assert after[f"{RUN}.json"] == before[f"{RUN}.json"]  # the old record of the run ...
    assert after[f"{RUN}.model.json"] != before[f"{RUN}.model.json"]  # ... beside newer files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    # the report leaves the mixed set out, naming it, and reports the rest
    r = run("report", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0, r.output
    assert f"report: left out {out / RUN}.json: {out / RUN}.csv: not the file written with {RUN}.json" in r.output
    # the model pair is itself whole: the new record with its new arrays
    assert run("predict", out / f"{RUN}.model.json", pets / "cat" / "0.png", "-q").exit_code == 0
    # the rerun writes a whole set again
    assert svm(tmp_path, pets).exit_code == 0
    r = run("report", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0 and "left out" not in r.output


def test_a_full_disk_while_writing_results_is_one_line_and_keeps_the_old_files(tmp_path, pets, monkeypatch):
    assert svm(tmp_path, pets).exit_code == 0
    out = tmp_path / "results" / "pets"
    before = files_of(out)
    full = OSError(errno.ENOSPC, "No space left on device")
    fail_commit(monkeypatch, lambda path: path.suffix == ".npz", full)
    one_line(svm(tmp_path, pets), f"no space left on the device holding {out / RUN}.model.npz",
             f"{RUN}.model.npz is kept as it was")
    assert files_of(out)[f"{RUN}.model.npz"] == before[f"{RUN}.model.npz"]
    assert files_of(out)[f"{RUN}.json"] == before[f"{RUN}.json"]
    # the report on a full disk: one line, and the old README.md is kept
    fail_commit(monkeypatch, lambda path: True, full)
    (tmp_path / "results" / "README.md").write_text("old report")
    one_line(run("report", "--results-dir", tmp_path / "results"), "no space left on the device holding")
    assert (tmp_path / "results" / "README.md").read_text() == "old report"


def test_a_results_folder_that_cannot_be_written_is_refused_before_any_training(tmp_path, pets, monkeypatch):
    real = pathlib.Path.write_bytes

    def read_only(self, data):
        if ".featx-write-probe" in self.name:
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(self, data)
    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    r = svm(tmp_path, pets)
    one_line(r, f"--results-dir {tmp_path / 'results' / 'pets'} is not writable", "nothing was computed")
    assert "C=1" not in r.output and not (tmp_path / "c").exists()  # no extraction, no training
    (tmp_path / "file").write_text("x")
    r = run("svm", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--results-dir", tmp_path / "file")
    one_line(r, "is a file, not a folder")


def test_a_read_only_cache_that_is_complete_is_simply_read(tmp_path, pets, monkeypatch):
    assert svm(tmp_path, pets).exit_code == 0
    cache = next((tmp_path / "c").rglob("*.h5"))
    before = cache.read_bytes()

    def read_only(path):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path) + ".lock")
    monkeypatch.setattr("featx.extract.update.lock_cache", read_only)
    args = ["extract", "--images", pets, "--net", "T", "--weights", "random:0", "--scales", "224",
            "--cache-dir", tmp_path / "c", "-q"]
    r = run("svm", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
            "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r2")
    assert r.exit_code == 0, r.output
    for given in (args, ["extract", "--dataset", f"folder:{pets}", *args[3:]]):  # the same cache either way
        r = run(*given)
        assert r.exit_code == 0 and "computed 0, reused 8, failed 0" in r.output, r.output
    make_image(pets / "cat" / "new.png", (240, 230), seed=77)
    one_line(run("extract", "--dataset", f"folder:{pets}", *args[3:]), "cannot be written (Read-only file system)",
             "1 new image(s)", "Nothing in it was changed")
    assert cache.read_bytes() == before


def resign(record_path, change=None, arrays=None):
    """Edit a model record (and arrays) and give it valid checksums, as a careful forger would:
    what is then refused is refused by the field checks, not the checksum."""
    import hashlib
    import io

    from featx.evaluate.model import record_checksum
    meta = json.loads(record_path.read_text())
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        record_path.with_name(meta["arrays"]).write_bytes(buffer.getvalue())
        meta["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    if change:
        change(meta)
    meta["record_sha256"] = record_checksum(meta)
    record_path.write_text(json.dumps(meta))


def test_an_edited_model_record_is_refused(tmp_path, pets):
    assert svm(tmp_path, pets).exit_code == 0
    record = tmp_path / "results" / "pets" / f"{RUN}.model.json"
    image = pets / "cat" / "0.png"
    meta = json.loads(record.read_text())
    meta["classes"] = meta["classes"][::-1]  # wrong labels, were it accepted
    record.write_text(json.dumps(meta))
    one_line(run("predict", record, image), "the record was changed after featx svm wrote it")


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m["classes"].pop(), "classes must be at least two distinct class names"),
    (lambda m: m["descriptor"]["weights"]["T"].pop("digest"), "descriptor.weights.T.digest must be the weights' tensor digest"),
    (lambda m: m["descriptor"].update(scales=[]), "descriptor.scales is not valid: at least one scale Q is needed"),
    (lambda m: m["descriptor"].update(scales=[224, 224]), "descriptor.scales is not valid: scales (224, 224) repeat a value"),
    (lambda m: m["descriptor"].update(flip="no"), "descriptor.flip must be bool, got 'no'"),
    (lambda m: m["classifier"].update(C="abc"), "classifier.C must be float, got 'abc'"),
    (lambda m: m["classifier"].update(C=-1), "classifier.C must be a positive number"),
    (lambda m: m["descriptor"].update(nets=["T", "T"]), "descriptor.nets is not valid: nets ['T', 'T']: name at least one net, each once"),
    (lambda m: m["descriptor"].update(aggregate="stack", scales=[224, 256]), "classifier.n_features is 16, but the descriptor has 32"),
    (lambda m: m.pop("classifier"), "classifier is missing"),
    (lambda m: m.update(format_version=9), "a featx model of format 9 (written by featx"),
])
def test_every_field_of_a_model_record_is_checked(tmp_path, pets, change, fragment):
    assert svm(tmp_path, pets).exit_code == 0
    record = tmp_path / "results" / "pets" / f"{RUN}.model.json"
    resign(record, change)
    line = one_line(run("predict", record, pets / "cat" / "0.png"), fragment)
    if "format 9" in fragment:
        assert "this featx reads formats 1 and 2" in line


@pytest.mark.parametrize("arrays,fragment", [
    (lambda z: dict(z, coef=np.full_like(z["coef"], np.nan)), "coefficients must be finite floating-point numbers"),
    (lambda z: dict(z, coef=z["coef"].astype(np.int64)), "coefficients must be finite floating-point numbers"),
    (lambda z: dict(z, coef=z["coef"][:, :-1]), "do not fit the record"),
    (lambda z: dict(z, classes=np.array([0, 5])), "do not index the record's 2 classes"),
])
def test_the_arrays_are_checked_against_the_record(tmp_path, pets, arrays, fragment):
    assert svm(tmp_path, pets).exit_code == 0
    record = tmp_path / "results" / "pets" / f"{RUN}.model.json"
    with np.load(record.with_name(f"{RUN}.model.npz")) as z:
        current = {k: z[k] for k in z.files}
    # the arrays replaced alone: their checksum no longer matches the record
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **arrays(current))
    record.with_name(f"{RUN}.model.npz").write_bytes(buffer.getvalue())
    one_line(run("predict", record, pets / "cat" / "0.png"), "not the arrays", "its checksum differs")
    resign(record, arrays=arrays(current))
    one_line(run("predict", record, pets / "cat" / "0.png"), fragment)


def test_the_report_leaves_out_a_damaged_result_and_names_it(tmp_path, pets):
    assert svm(tmp_path, pets).exit_code == 0
    (tmp_path / "results" / "pets" / f"{RUN}.csv").write_text("")
    r = run("report", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0 and f"report: left out {tmp_path / 'results' / 'pets' / RUN}.json" in r.output, r.output
    other = tmp_path / "results" / "other" / "x.json"
    other.parent.mkdir()
    other.write_text("")
    r = run("report", "--results-dir", tmp_path / "results")
    assert r.exit_code == 0 and f"report: left out {other}: {other}: not a featx result file" in r.output


def test_a_cache_that_can_be_read_but_not_written_is_never_called_damaged(tmp_path, pets, monkeypatch):
    (pets / "cat" / "broken.png").write_text("not an image")
    args = ["extract", "--images", pets, "--net", "T", "--weights", "random:0", "--scales", "224",
            "--cache-dir", tmp_path / "c", "-q"]
    assert run(*args).exit_code == 0
    import h5py
    real = h5py.File

    def no_writing(path, mode="r", *a, **kw):
        if mode == "r+":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, mode, *a, **kw)
    monkeypatch.setattr("featx.extract.cache.h5py.File", no_writing)
    line = one_line(run(*args, "--retry-failed"), "can be read but not written", "The file is intact")
    assert "move it aside" not in line


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs), for the errors that no monkeypatch can fake faithfully:
    ENOSPC from the kernel mid-write, EROFS after a remount. Needs the right to mount (root in
    a container that allows it); skips cleanly elsewhere."""
    where = tmp_path / "disk"
    where.mkdir()
    if not sys.platform.startswith("linux") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and a kernel that allows it)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk):
    """Fill the filesystem to its last byte."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return disk / "filler"


def remount(disk, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def test_a_real_full_disk_under_results_and_the_report_is_one_line_and_keeps_every_old_file(tmp_path, pets, small_disk):
    results = small_disk / "results"
    args = ["svm", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--scales", "224",
            "--cache-dir", tmp_path / "c", "--results-dir", results, "--extract"]
    assert run(*args, "--c-grid", "1").exit_code == 0
    assert run("report", "--results-dir", results).exit_code == 0
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    filler = fill(small_disk)
    one_line(run(*args, "--c-grid", "0.01"), f"no space left on the device holding {results / 'pets'}",
             "is kept as it was")
    one_line(run("report", "--results-dir", results), f"no space left on the device holding {results}",
             "README.md is kept as it was")
    after = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert after == before  # nothing truncated, no temporary left behind
    filler.unlink()
    assert run(*args, "--c-grid", "0.01").exit_code == 0  # room again: the run completes
    assert run("report", "--results-dir", results).exit_code == 0


def test_a_real_full_disk_under_the_cache_keeps_what_was_computed(tmp_path, pets, small_disk):
    from featx.extract.cache import DescriptorCache
    args = ["extract", "--images", pets, "--net", "T", "--weights", "random:0", "--scales", "224",
            "--cache-dir", small_disk / "c", "-q"]
    assert run(*args).exit_code == 0
    cache = next((small_disk / "c").rglob("*.h5"))
    c = DescriptorCache(cache)
    ids, before = list(c.ids), c.load([224])
    for i in range(40):
        make_image(pets / "more" / f"{i}.png", (240, 230), seed=500 + i)
    filler = fill(small_disk)
    one_line(run(*args), f"no space left on the device holding {cache}", "every row already committed is kept")
    assert np.array_equal(DescriptorCache(cache).load([224], ids=ids), before)  # still a cache, as it was
    filler.unlink()
    r = run(*args)
    assert r.exit_code == 0 and "reused 8, failed 0" in r.output, r.output


def test_a_real_read_only_filesystem(tmp_path, pets, small_disk):
    cache, results = small_disk / "c", small_disk / "results"
    args = ["svm", f"folder:{pets}", "--net", "T", "--weights", "random:0", "--scales", "224", "--c-grid", "1",
            "--cache-dir", cache, "--extract"]
    assert run(*args, "--results-dir", results).exit_code == 0
    remount(small_disk, "ro")
    try:
        r = run("extract", "--images", pets, "--net", "T", "--weights", "random:0", "--scales", "224",
                "--cache-dir", cache)
        assert r.exit_code == 0 and "computed 0, reused 8, failed 0" in r.output, r.output
        r = run(*args, "--results-dir", tmp_path / "r2")  # the read-only cache, results elsewhere
        assert r.exit_code == 0, r.output
        one_line(run(*args, "--results-dir", results), f"--results-dir {results / 'pets'} is not writable "
                 "(Read-only file system); nothing was computed")
        one_line(run("report", "--results-dir", results), f"--results-dir {results} is not writable",
                 "README.md is kept as it was")
    finally:
        remount(small_disk, "rw")
