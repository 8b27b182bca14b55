"""What per-image identity costs (featx.extract.identity): the SHA-256 of each file, a stat, a header
read, against decoding the image, on a real image tree; and the upgrade of a real cache made by
featx 0.5.0 (per-image identities recorded, nothing recomputed).

    python bench/identity.py --tree ../shared/data/caltech101/101_ObjectCategories
    python bench/identity.py --tree ... --upgrade datasets/featx-cache/caltech101/E-caffe-bfloat16.h5 \\
        --upgrade-args "--dataset caltech101 --root datasets --net E --weights E=caffe:vgg19_caffe.pth \\
                        --scales 256 --dtype bfloat16"
    python bench/identity.py --smoke                          # CI: generated images, seconds

Every figure is per image over the whole tree (all of its JPEGs), best of --repeat passes (the
files then sit in the page cache, as they do while an extraction reads them); decoding is
timed on every --decode-every-th image. --upgrade copies the cache, runs `featx extract` with
--upgrade-args on the copy (the same protocol rows as --split of its splits, or all), and
records its wall time and summary.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx.extract import identity  # noqa: E402
from featx.data.images import load_resized, read_size  # noqa: E402

from common import save_figures, write_voc_like  # noqa: E402


def best_of(repeat, fn, items) -> float:
    """Seconds per item of the fastest of `repeat` passes over items."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t)
    return best / len(items)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, help="a folder of images (searched recursively for .jpg)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--decode-every", type=int, default=10)
    p.add_argument("--scale", type=int, default=256, help="Q for the decode-and-resize comparison")
    p.add_argument("--upgrade", type=Path, help="a cache written by featx 0.5.0 to upgrade (a copy)")
    p.add_argument("--upgrade-args", default="", help="featx extract's arguments for that cache's image set")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    tmp = None
    if a.smoke:
        tmp = tempfile.mkdtemp()
        a.tree, a.repeat, a.decode_every = Path(tmp), 1, 4
        write_voc_like(a.tree, 12)
    files = sorted(str(f) for f in a.tree.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
    total_bytes = sum(os.path.getsize(f) for f in files)
    print(f"{len(files)} images, {total_bytes / 1e6:.0f} MB, mean {total_bytes / len(files) / 1e3:.1f} kB", flush=True)
    digest = best_of(a.repeat, identity.digest, files)
    stat = best_of(a.repeat, identity.signature, files)
    header = best_of(a.repeat, read_size, files)
    sample = files[::a.decode_every]
    decode = best_of(1, lambda f: load_resized(f, a.scale), sample)
    # What a first extraction adds before its forward passes (hash and header of every image, in
    # the extractor's 2-4 threads), and what a rerun with nothing changed costs (a stat each).
    ids = [os.path.relpath(f, a.tree) for f in files]
    t = time.perf_counter()
    first = identity.survey(files, ids, None, workers=min(4, os.cpu_count() or 1))
    first_s = time.perf_counter() - t
    n = len(files)
    record = identity.Record(ids, files, np.tile(identity.NO_BOX, (n, 1)), first.sizes, first.signatures,
                             first.digests, np.full(n, b"", "S240"), np.zeros(n, np.uint8), False)
    t = time.perf_counter()
    again = identity.survey(files, ids, record)
    again_s = time.perf_counter() - t
    assert again.hashed == 0 and not len(again.changed)
    rows = [{"what": "SHA-256 of the file's bytes (read + hash)", "us_per_image": 1e6 * digest},
            {"what": "stat (size, mtime, ctime)", "us_per_image": 1e6 * stat},
            {"what": "header read (upright size)", "us_per_image": 1e6 * header},
            {"what": f"decode + resize to Q={a.scale} (every {a.decode_every}th image)", "us_per_image": 1e6 * decode}]
    for r in rows:
        print(f"  {r['what']:<55} {r['us_per_image']:9.1f} us/image", flush=True)
    print(f"  first survey of the tree (hash + header, threads): {first_s:.2f} s; rerun (stat only): {again_s:.2f} s")
    fields = {"tree": str(a.tree), "images": len(files), "bytes": total_bytes, "rows": rows,
              "digest_mb_per_s": total_bytes / len(files) / digest / 1e6,
              "digest_vs_decode": digest / decode,
              "first_survey_s": first_s, "rerun_survey_s": again_s}
    if a.upgrade:
        with tempfile.TemporaryDirectory() as work:
            copy = Path(work) / a.upgrade.name
            shutil.copyfile(a.upgrade, copy)
            cmd = [sys.executable, "-m", "featx", "extract", *shlex.split(a.upgrade_args), "--out", str(copy), "-q"]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode:
                sys.exit(f"featx extract failed: {r.stderr[-2000:]}")
            summary = r.stdout.strip().splitlines()[0]
            print(f"upgrade: {wall:.1f} s wall: {summary}")
            fields["upgrade"] = {"cache": str(a.upgrade), "size_mb": a.upgrade.stat().st_size / 1e6,
                                 "command": "featx extract " + a.upgrade_args + " --out COPY",
                                 "wall_s": wall, "summary": summary}
    save_figures("identity", fields, path=a.json, suffix="-identity")
    if tmp:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
