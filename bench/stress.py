"""Stress featx's caches (not run in CI): random SIGKILLs of `featx extract`, and random byte
flips in finished caches.

    python bench/stress.py --kills 100 --flips 200            # about 10 minutes on 2 cores
    python bench/stress.py --kills 0 --flips 0 --updates 50   # the update trials only
    python bench/stress.py --kills 0 --flips 0 --results 20   # featx svm / reproduce / report killed

Kills: each trial starts `featx extract` (smoke net, 24 generated images, 3 scales, batch 2) on a
fresh file, or on one left by an earlier trial, kills it with SIGKILL after a random delay (up to
two kills per trial), then lets a run finish; the file must then equal, bit for bit, a file made
without interruption. Flips: a finished cache gets one random byte flipped inside its descriptor
data; reading it must raise (never return the wrong numbers), and `featx extract` must then
report the row as repaired and restore the clean values (the row is recomputed in a forward pass
of its own, so within 1e-5 relative; bit for bit where the CPU's kernels round alike). Updates (--updates N of
each): a cache that is brought up to date while being killed: "append" (8 images added to the
folder), "change" (4 images overwritten, one of them with its old mtime put back) and "upgrade" (a file in featx 0.5.0's layout, without per-image identities).
Each trial starts from the same file, kills `featx extract` once or twice at a random moment
of what an uninterrupted run takes (start-up, survey, rewrite, compute), then lets a run finish; the file must then hold
exactly what an uninterrupted run makes: the same rows by image id, statuses, SHA-256 digests
and descriptors, bit for bit. Results (--results N of each): featx svm, featx reproduce and
featx report killed at a random moment of the last 40% of an uninterrupted run (where they write) over a folder
holding an older complete run; after each kill every file must parse, featx report must succeed
and leave out, naming it, any run whose files are not one set, and a rerun must give the files an
uninterrupted run gives. Prints the counts; exits 1 on any mismatch or undetected flip.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx.extract.cache import DescriptorCache  # noqa: E402
from featx.errors import CacheError  # noqa: E402

from common import write_voc_like  # noqa: E402  (bench/common.py)

CLI = ("import sys; sys.path.insert(0, {bench!r}); from common import SMOKE; "
       "from featx.net.specs import NETS; NETS['S'] = SMOKE; from featx.cli import main; main()")


def featx_cmd(images, out):
    return [sys.executable, "-c", CLI.format(bench=os.path.dirname(os.path.abspath(__file__))),
            "extract", "--images", str(images), "--out", str(out), "--net", "S", "--weights", "random",
            "--scales", "224,288,352", "--batch-size", "2", "-q"]


def contents(path):
    c = DescriptorCache(path)
    return {q: (c.status(q), c.load([q], rows=np.flatnonzero(c.status(q) == 1))) for q in c.scales}


def contents_by_id(path):
    """{id: (digest, {Q: (status, descriptor or None)})}: what a cache holds, in any row order."""
    c = DescriptorCache(path)
    record = c.record()
    status = {q: c.status(q) for q in c.scales}
    desc = {q: c.load([q], rows=np.flatnonzero(status[q] == 1))[:, 0] for q in c.scales}
    pos = {q: np.cumsum(status[q] == 1) - 1 for q in c.scales}
    return {i: (bytes(record.digests[r]) if c.identified else None,
                {q: (int(status[q][r]), desc[q][pos[q][r]].tobytes() if status[q][r] == 1 else None) for q in c.scales})
            for r, i in enumerate(c.ids)}


def to_0_5_layout(path):
    """Turn a cache into what featx 0.5.0 wrote: format 2, no per-image identity datasets."""
    with h5py.File(path, "r+") as f:
        for d in ("signatures", "digests", "error_kinds"):
            del f[d]
        f.attrs["format_version"] = 2
        f.attrs["featx_version"] = "0.5.0"


def update_trials(n, work, rng, log):
    """Kill-9 while an append, a change or an upgrade is brought into a cache."""
    from common import write_voc_like  # noqa: E402
    results = {}
    for kind in ("append", "change", "upgrade"):
        images = work / kind / "images"
        write_voc_like(images, 16, seed=1)
        start_file = work / kind / "start.h5"
        subprocess.run(featx_cmd(images, start_file), check=True, capture_output=True)
        originals = {p.name: p.read_bytes() for p in images.iterdir()}

        def prepare():
            """The folder as the trial finds it, and the file it starts from."""
            for name, data in originals.items():
                (images / name).write_bytes(data)
            for p in images.iterdir():
                if p.name not in originals:
                    p.unlink()
            out = work / kind / "k.h5"
            shutil.copyfile(start_file, out)
            if kind == "append":
                extra = write_voc_like(work / kind / "extra", 8, seed=2)
                for k, src in enumerate(extra):
                    shutil.copyfile(src, images / f"new{k:02d}.jpg")
            elif kind == "change":
                names = sorted(originals)
                other = write_voc_like(work / kind / "other", 4, seed=3)
                for name, src in zip(names[1::4], other):
                    st = (images / name).stat()
                    shutil.copyfile(src, images / name)
                    if name == names[1]:  # its old mtime put back, as `cp -p` leaves it
                        os.utime(images / name, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                to_0_5_layout(out)
            return out

        out = prepare()
        t = time.time()
        subprocess.run(featx_cmd(images, out), check=True, capture_output=True)
        took = time.time() - t  # kills land anywhere in such a run: start-up, survey, rewrite, compute
        reference = contents_by_id(out)
        kills = mismatches = landed_after = 0
        t0 = time.time()
        for trial in range(n):
            out = prepare()
            start = contents_by_id(out)
            for _ in range(rng.choice([1, 1, 2])):
                p = subprocess.Popen(featx_cmd(images, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.3, took))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    kills += 1
                    p.wait()
                    # where it landed: before the file changed, or once its update had begun
                    try:
                        landed_after += contents_by_id(out) != start
                    except CacheError:  # would be a finding of its own: the final check reports it
                        landed_after += 1
                p.wait()
            r = subprocess.run(featx_cmd(images, out), capture_output=True, text=True)
            ok = r.returncode == 0 and contents_by_id(out) == reference and DescriptorCache(out).identified
            mismatches += not ok
            if not ok:
                log(f"  {kind} trial {trial}: MISMATCH (exit {r.returncode}) {r.stderr.strip()[-300:]}")
        results[kind] = {"trials": n, "kills": kills, "kills_after_the_update_began": int(landed_after),
                         "mismatches": mismatches}
        log(f"{kind}: {n} trials, {kills} SIGKILLs ({landed_after} once the file had begun to change), "
            f"{mismatches} mismatches ({time.time() - t0:.0f} s)")
    return results


def same(a, b, rtol=0.0) -> bool:
    """Same statuses and descriptors: bit for bit (rtol 0), or within rtol (a repaired row is
    recomputed in a forward pass of its own, which may round differently in the last bit)."""
    return a.keys() == b.keys() and all(
        np.array_equal(a[q][0], b[q][0]) and a[q][1].shape == b[q][1].shape
        and (np.array_equal(a[q][1], b[q][1]) if rtol == 0 else np.allclose(a[q][1], b[q][1], rtol=rtol, atol=1e-7))
        for q in a)


def kill_trials(n, images, work, reference, rng, log):
    kills = mismatches = 0
    out = work / "k.h5"
    for trial in range(n):
        if rng.random() < 0.5 and out.exists():
            out.unlink()  # half the trials start fresh, half resume a file earlier trials left
        for _ in range(rng.choice([1, 1, 2])):
            p = subprocess.Popen(featx_cmd(images, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 6.0))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
        r = subprocess.run(featx_cmd(images, out), capture_output=True, text=True)
        ok = r.returncode == 0 and same(contents(out), reference)
        mismatches += not ok
        if not ok:
            log(f"  trial {trial}: MISMATCH (exit {r.returncode}) {r.stderr.strip()[-300:]}")
        if (trial + 1) % 10 == 0:
            log(f"  {trial + 1} trials, {kills} kills, {mismatches} mismatches")
    return kills, mismatches


def flip_trials(m, images, work, reference, clean_file, rng, log):
    detected = restored = exact = 0
    for trial in range(m):
        path = work / "f.h5"
        shutil.copyfile(clean_file, path)
        with h5py.File(path, "r") as f:
            q = rng.choice(sorted(f["scales"]))
            d = f[f"scales/{q}/descriptors"]
            offset, nbytes, n = d.id.get_offset(), d.id.get_storage_size(), d.shape[0]
            done = np.flatnonzero(f[f"scales/{q}/status"][()] == 1)
        row = int(rng.choice(done))
        rowbytes = nbytes // n
        pos = offset + row * rowbytes + rng.randrange(rowbytes)
        with open(path, "r+b") as fh:
            fh.seek(pos)
            byte = fh.read(1)[0]
            fh.seek(pos)
            fh.write(bytes([byte ^ (1 << rng.randrange(8))]))
        try:
            DescriptorCache(path).load()
        except CacheError as e:
            detected += "fail their checksum" in str(e)
        r = subprocess.run(featx_cmd(images, path), capture_output=True, text=True)
        after = contents(path)
        ok = r.returncode == 0 and "repaired 1" in r.stdout and same(after, reference, rtol=1e-5)
        restored += ok
        exact += ok and same(after, reference)
        if not ok:
            log(f"  flip {trial}: NOT RESTORED (exit {r.returncode}) {r.stdout.strip()} {r.stderr.strip()[-200:]}")
    return detected, restored, exact


RESULTS_CLI = ("import sys; sys.path.insert(0, {bench!r}); from common import SMOKE; "
               "from featx.net.specs import NETS; NETS['S'] = SMOKE; import featx.data.datasets as D; "
               "D.shipped_splits = lambda name: None; from featx.cli import main; main()")
PIPELINE = """table = "table11"
row = "Net-S"
dataset = "caltech101"
nets = ["S"]
weights = {{ S = "random" }}
scales = [224]
aggregate = "mean"
c_grid = {grid}
metric = "mcr"
"""


def results_setup(work: Path) -> dict:
    """A miniature Caltech-101 (2 classes x 33 generated images), a pipeline on it, a folder
    set, their caches computed, and the commands each results trial runs."""
    from PIL import Image
    root = work / "root"
    rng = np.random.default_rng(0)
    for c in ("alpha", "beta"):
        folder = root / "caltech101" / "101_ObjectCategories" / c
        folder.mkdir(parents=True)
        for i in range(33):
            a = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) // (1 if c == "alpha" else 3)
            Image.fromarray(a).resize((240, 230)).save(folder / f"image_{i + 1:04d}.jpg")
    pipes = {}
    for name, grid in (("new", "[0.1, 1, 10]"), ("old", "[0.01]")):
        pipes[name] = work / f"pipelines-{name}"
        pipes[name].mkdir()
        (pipes[name] / "caltech101-S.toml").write_text(PIPELINE.format(grid=grid))
    cli = [sys.executable, "-c", RESULTS_CLI.format(bench=os.path.dirname(os.path.abspath(__file__)))]
    common = ["--root", str(root), "--cache-dir", str(work / "cache")]
    folder = f"folder:{root / 'caltech101' / '101_ObjectCategories'}"
    svm = cli + ["svm", folder, "--net", "S", "--weights", "random", "--scales", "224", *common]
    subprocess.run(cli + ["reproduce", "caltech101-S", "--pipelines", str(pipes["old"]), *common, "--results-dir",
                          str(work / "warm"), "-q"], check=True, capture_output=True)  # caches, splits
    subprocess.run(svm + ["--extract", "--results-dir", str(work / "warm")], check=True, capture_output=True)
    return {
        "svm": (svm + ["--c-grid", "0.1,1,10"], svm + ["--c-grid", "0.01"]),
        "reproduce": tuple(cli + ["reproduce", "caltech101-S", "--pipelines", str(pipes[k]), *common, "-q"]
                           for k in ("new", "old")),
        "report": (cli + ["report", "--pipelines", str(pipes["new"])], None),
        "report_cmd": cli + ["report", "--pipelines", str(pipes["new"])],
    }


def result_files(folder: Path) -> dict:
    """{relative path: bytes} of what a results folder holds, the volatile JSON fields (when it
    was written, how long it took) left out."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        data = p.read_bytes().replace(str(folder).encode(), b"<results>")  # commands name the folder
        if p.suffix == ".json" and not p.name.endswith(".model.json"):
            d = json.loads(data)
            for k in ("written", "seconds", "files"):  # files: checksums of files compared here directly
                d.pop(k, None)
            data = json.dumps(d, sort_keys=True).encode()
        out[str(p.relative_to(folder))] = data
    return out


def readable(folder: Path) -> list[str]:
    """The files of a results folder that do not parse (truncated, empty, damaged)."""
    import pandas as pd
    from PIL import Image

    from featx.errors import ConfigError
    from featx.evaluate.model import read_model
    bad = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            if p.name.endswith(".model.json"):
                try:
                    read_model(p, device="cpu")
                except ConfigError as e:  # refused whole (a newer record beside older arrays): not unreadable
                    if "checksum" not in str(e):
                        raise
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".csv":
                pd.read_csv(p)
            elif p.suffix == ".png":
                Image.open(p).verify()
            elif p.suffix == ".md" and not p.read_text().strip():
                raise ValueError("empty")
        except Exception as e:
            bad.append(f"{p}: {type(e).__name__}: {e}")
    return bad


def results_trials(n, work, rng, log) -> dict:
    """n SIGKILL trials each of featx svm, featx reproduce and featx report on a results folder
    that holds an older complete run: after each kill every file parses, featx report succeeds
    and leaves out (naming it) any run whose files are not one set, and a rerun's files equal an
    uninterrupted run's."""
    from common import SMOKE
    from featx.evaluate.results import check_files, read_result
    from featx.net.specs import NETS
    NETS.setdefault("S", SMOKE)  # for reading the models back here
    cmds = results_setup(work)
    report = cmds.pop("report_cmd")
    counts = {}
    for kind, (new, old) in cmds.items():
        ref, before = work / f"ref-{kind}", work / f"before-{kind}"
        if kind == "report":  # the report of a complete folder, rewritten over an older one
            shutil.copytree(work / "warm", ref)
            subprocess.run(report + ["--results-dir", str(ref)], check=True, capture_output=True)
            shutil.copytree(work / "warm", before)
        else:
            for folder, cmd in ((ref, new), (before, old)):
                subprocess.run(cmd + ["--results-dir", str(folder)], check=True, capture_output=True)
            for folder in (ref, before):
                subprocess.run(report + ["--results-dir", str(folder)], check=True, capture_output=True)
        t = time.perf_counter()
        subprocess.run(new + ["--results-dir", str(work / "timing")], check=True, capture_output=True)
        full = time.perf_counter() - t
        shutil.rmtree(work / "timing")
        reference = result_files(ref)
        c = {"trials": n, "kills": 0, "unreadable": 0, "report_failures": 0, "mixed_detected": 0,
             "mixed_used": 0, "rerun_mismatches": 0, "full_run_s": round(full, 2)}
        for trial in range(n):
            folder = work / f"trial-{kind}"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(before, folder)
            p = subprocess.Popen(new + ["--results-dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.6 * full, full))  # the writing comes at the end of a run
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                c["kills"] += 1
            p.wait()
            bad = readable(folder)
            c["unreadable"] += len(bad)
            r = subprocess.run(report + ["--results-dir", str(folder)], capture_output=True, text=True)
            c["report_failures"] += r.returncode != 0
            for path in folder.glob("*/*.json"):
                if path.name.endswith(".model.json"):
                    continue
                if check_files(read_result(path)):
                    c["mixed_detected"] += 1
                    c["mixed_used"] += f"left out {path}" not in r.stderr
            rerun = subprocess.run(new + ["--results-dir", str(folder)], capture_output=True, text=True)
            if kind != "report":
                subprocess.run(report + ["--results-dir", str(folder)], capture_output=True)
            got = result_files(folder)
            same = rerun.returncode == 0 and got == reference
            c["rerun_mismatches"] += not same
            if not same:
                differ = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
                bad.append(f"rerun differs in {differ[:4]}")
                same = True  # said above
            for line in bad + ([] if r.returncode == 0 else [f"report failed: {r.stderr.strip()[-300:]}"]) + (
                    [] if same else [f"rerun differs (exit {rerun.returncode}) {rerun.stderr.strip()[-300:]}"]):
                log(f"  {kind} trial {trial}: {line}")
        log(f"results {kind}: {c}")
        counts[kind] = c
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100, help="SIGKILL trials")
    p.add_argument("--flips", type=int, default=200, help="byte-flip trials")
    p.add_argument("--updates", type=int, default=0, help="trials of each update kind (append, change, upgrade)")
    p.add_argument("--results", type=int, default=0, help="SIGKILL trials of each of featx svm, reproduce, report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the counts here")
    a = p.parse_args()
    rng = random.Random(a.seed)
    log = lambda m: print(m, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"
        write_voc_like(images, 24, seed=a.seed)
        clean = work / "clean.h5"
        subprocess.run(featx_cmd(images, clean), check=True, capture_output=True)
        reference = contents(clean)
        start = time.time()
        kills, mismatches = kill_trials(a.kills, images, work, reference, rng, log)
        log(f"kills: {a.kills} trials, {kills} SIGKILLs, {mismatches} mismatches ({time.time() - start:.0f} s)")
        start = time.time()
        detected, restored, exact = flip_trials(a.flips, images, work, reference, clean, rng, log)
        log(f"flips: {a.flips} byte flips in descriptor data, {detected} detected on read, "
            f"{restored} restored by the next featx extract ({exact} bit for bit, the rest within "
            f"1e-5 relative) ({time.time() - start:.0f} s)")
        updates = update_trials(a.updates, work, rng, log) if a.updates else {}
        results = results_trials(a.results, work, rng, log) if a.results else {}
    counts = {"kill_trials": a.kills, "kills": kills, "mismatches": mismatches, "flips": a.flips,
              "flips_detected": detected, "flips_restored": restored, "flips_restored_bit_for_bit": exact,
              "updates": updates, "results": results}
    if a.json:
        a.json.write_text(json.dumps(counts, indent=2))
    bad_updates = sum(u["mismatches"] for u in updates.values())
    bad_results = sum(r[k] for r in results.values() for k in ("unreadable", "report_failures", "mixed_used",
                                                               "rerun_mismatches"))
    sys.exit(0 if mismatches == 0 and bad_updates == 0 and bad_results == 0 and detected == restored == a.flips else 1)


if __name__ == "__main__":
    main()
