"""Stress featx's caches (not run in CI): random SIGKILLs of `featx extract`, and random byte
flips in finished caches.

    python bench/stress.py --kills 100 --flips 200            # about 10 minutes on 2 cores
    python bench/stress.py --kills 0 --flips 0 --updates 50   # the update trials only

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
and descriptors, bit for bit. Prints the counts; exits 1 on any mismatch or undetected flip.
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
from featx.cache import DescriptorCache  # noqa: E402
from featx.errors import CacheError  # noqa: E402

from common import write_voc_like  # noqa: E402  (bench/common.py)

CLI = ("import sys; sys.path.insert(0, {bench!r}); from common import SMOKE; "
       "from featx.nets import NETS; NETS['S'] = SMOKE; from featx.cli import main; main()")


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100, help="SIGKILL trials")
    p.add_argument("--flips", type=int, default=200, help="byte-flip trials")
    p.add_argument("--updates", type=int, default=0, help="trials of each update kind (append, change, upgrade)")
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
    counts = {"kill_trials": a.kills, "kills": kills, "mismatches": mismatches, "flips": a.flips,
              "flips_detected": detected, "flips_restored": restored, "flips_restored_bit_for_bit": exact,
              "updates": updates}
    if a.json:
        a.json.write_text(json.dumps(counts, indent=2))
    bad_updates = sum(u["mismatches"] for u in updates.values())
    sys.exit(0 if mismatches == 0 and bad_updates == 0 and detected == restored == a.flips else 1)


if __name__ == "__main__":
    main()
