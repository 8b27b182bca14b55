"""What `featx export` costs: wall time and peak resident memory of the command, per format and
chunk size, on a real cache; and that what it wrote reads back exactly as cached.

    python bench/export.py datasets/featx-cache/caltech101/E-caffe-bfloat16.h5
    python bench/export.py --smoke                       # CI: a generated cache, seconds

Each configuration runs `featx export CACHES --out ...` in a process of its own (peak RSS is that
process's high-water mark, VmHWM); the baseline is the same process doing nothing but importing featx's
CLI and opening the caches (`featx info`). Memory that stays flat as the data grows is what
chunking promises: compare the peak with the size of the descriptors written.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import save_figures, write_voc_like  # noqa: E402

# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak over into a child's
# ru_maxrss, while exec starts a new address space whose high-water mark is the child's own.
RUN = ("import sys\n{smoke}from featx.cli import main\n"
       "try:\n    main()\nfinally:\n"
       "    print('peak_kib', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0],"
       " file=sys.stderr)")
SMOKE_NET = "sys.path.insert(0, {bench!r}); from common import SMOKE; from featx.net.specs import NETS; NETS['S'] = SMOKE\n"


def featx(args, smoke_net=False):
    """Run the featx CLI in a process of its own: (seconds, peak RSS in MiB, stdout). smoke_net:
    register the smoke net first (which imports torch: only for the extraction of --smoke)."""
    smoke = SMOKE_NET.format(bench=os.path.dirname(os.path.abspath(__file__))) if smoke_net else ""
    cmd = [sys.executable, "-c", RUN.format(smoke=smoke), *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"featx {' '.join(args)} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
    peak = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("peak_kib")][-1]
    return seconds, peak / 1024, r.stdout.strip()


SUBSET = ("import sys, numpy as np\nfrom featx.extract.cache import DONE, DescriptorCache\nfrom featx.descriptors.export import write_export\n"
          "c = DescriptorCache(sys.argv[1]); n = int(sys.argv[3])\n"
          "done = np.flatnonzero(np.all([c.status(q) == DONE for q in c.scales], axis=0))\n"
          "s = write_export({c.attrs['net']: c}, sys.argv[2], rows=done[:n], chunk_rows=int(sys.argv[4]))\n"
          "print(s.rows, [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")


def subset(cache, out, n, chunk):
    """Export the first n done images of a cache (Python API, a process of its own): (rows, peak MiB)."""
    r = subprocess.run([sys.executable, "-c", SUBSET, str(cache), str(out), str(n), str(chunk)],
                       capture_output=True, text=True, check=True)
    rows, kib = r.stdout.split()
    return int(rows), int(kib) / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("caches", nargs="*", type=Path, help="cache files to export (nets fused)")
    p.add_argument("--chunks", default="256,1024,4096")
    p.add_argument("--sizes", default="1000,3000,100000", help="images exported at chunk 1024, to show the "
                   "peak does not grow with them (capped at what the cache holds)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    from featx import read_export
    from featx.extract.cache import DescriptorCache
    work = Path(tempfile.mkdtemp())
    if a.smoke:
        images = work / "images"
        write_voc_like(images, 12)
        featx(["extract", "--images", str(images), "--net", "S", "--weights", "random", "--scales", "224,256",
               "--out", str(work / "c.h5"), "-q"], smoke_net=True)
        a.caches, a.chunks, a.sizes = [work / "c.h5"], "4,1024", "4,12"
    args = [str(c) for c in a.caches]
    base_s, base_mib, _ = featx(["info", *args])  # the same process opening the caches, exporting nothing
    rows = []
    for fmt in ("parquet", "npy"):
        for chunk in map(int, a.chunks.split(",")):
            out = work / (f"x-{chunk}.parquet" if fmt == "parquet" else f"x-{chunk}")
            seconds, mib, said = featx(["export", *args, "--out", str(out), "--format", fmt,
                                        "--chunk-rows", str(chunk)])
            size = sum(f.stat().st_size for f in ([out] if out.is_file() else out.iterdir()))
            rows.append({"format": fmt, "chunk_rows": chunk, "seconds": seconds, "peak_mib": mib,
                         "written_mb": size / 1e6, "summary": said})
            print(f"  {fmt:<8} chunk {chunk:>5}: {seconds:6.1f} s, peak RSS {mib:7.0f} MiB, wrote {size / 1e6:7.1f} MB",
                  flush=True)
    # the same chunk size on more and more images: the peak must not grow with them
    growth = []
    for n in map(int, a.sizes.split(",")):
        got, mib = subset(a.caches[0], work / f"n{n}.parquet", n, 1024)
        growth.append({"images": got, "peak_mib": mib, "written_mb": (work / f"n{n}.parquet").stat().st_size / 1e6})
        print(f"  parquet  chunk  1024, first {got:>6} images: peak RSS {mib:7.0f} MiB", flush=True)
    # what the last Parquet file holds equals the caches, bit for bit
    first = next(r for r in rows if r["format"] == "parquet")
    path = work / f"x-{first['chunk_rows']}.parquet"
    frame = read_export(path, as_frame=True)
    columns = [c for c in frame.columns if "@" in c]
    caches = {c.attrs["net"]: c for c in map(DescriptorCache, a.caches)}
    exact = all(np.array_equal(np.stack(frame[col].to_numpy()).astype(np.float32),
                               caches[col.split("@")[0]].load([int(col.split("@")[1])], ids=list(frame["id"]))[:, 0])
                for col in columns)
    print(f"read back with pandas: {len(frame)} rows, {len(columns)} descriptor column(s), equal to the cache: {exact}")
    fields = {"caches": args, "baseline": {"seconds": base_s, "peak_mib": base_mib}, "rows": rows, "growth": growth,
              "rows_read_back": len(frame), "equal_to_cache": bool(exact)}
    save_figures("export", fields, path=a.json, suffix="-export")
    if not exact:
        sys.exit("the export differs from the cache")


if __name__ == "__main__":
    main()
