"""`featx extract` wall time vs the sum of its parts (decode, resize, forward, write).

    python bench/end_to_end.py --images 200 --net D --scale 256
    python bench/end_to_end.py --smoke

Writes N generated JPEGs (500x375 / 375x500, like VOC), runs `featx extract` on them as a user
would (a fresh process, random weights), then times each part alone in this process: JPEG
decoding, resizing, the forward passes (batch 8, flips) and the HDF5 writes. If decoding
and writing overlap with compute, the wall time is close to the forward time alone.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.extract.cache import DescriptorCache  # noqa: E402
from featx.data.images import load_rgb, target_size  # noqa: E402
from featx.net.specs import NETS  # noqa: E402

from common import SMOKE, write_voc_like  # noqa: E402  (bench/common.py)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--net", default="D")
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="8 small images, Q=224, for CI")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = 8 if a.smoke else a.images
        if a.smoke:
            a.scale = 224
        paths = write_voc_like(tmp, n)
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "featx", "extract", "--images", str(tmp), "--net", a.net,
               "--weights", "random", "--scales", str(a.scale), "--out", str(tmp / "out.h5"), "-q",
               "--device", a.device]
        if a.smoke:  # a tiny net registered by a wrapper, so the smoke run takes seconds
            cmd = [sys.executable, "-c", SMOKE_WRAPPER, *cmd[3:]]
        repo = os.path.join(os.path.dirname(__file__), "..")
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
        wall = time.perf_counter() - t
        t = time.perf_counter()  # what any featx command pays before it starts: interpreter, torch
        subprocess.run([sys.executable, "-m", "featx", "--version"], capture_output=True, cwd=repo, check=True)
        startup = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        done = DescriptorCache(tmp / "out.h5").counts()[a.scale]["done"]
        if done != n:
            raise SystemExit(f"featx extract computed {done} of {n} descriptors:\n{r.stdout}{r.stderr}")
        # the parts, one after another, in this process
        net = "S" if a.smoke else a.net
        if a.smoke:
            NETS["S"] = SMOKE
        ex = Extractor(net, scales=(a.scale,), weights="random", device=a.device, progress=False)
        t = time.perf_counter()
        decoded = [load_rgb(p) for p in paths]
        t_decode = time.perf_counter() - t
        t = time.perf_counter()
        resized = []
        for img in decoded:
            h, w = target_size((img.height, img.width), a.scale)
            resized.append(np.asarray(img.resize((w, h), Image.BILINEAR)))
        t_resize = time.perf_counter() - t
        groups = {}
        for i, arr in enumerate(resized):
            groups.setdefault(arr.shape, []).append(i)
        batches = [idx[k:k + 8] for idx in groups.values() for k in range(0, len(idx), 8)]
        ex.forward(np.stack([resized[i] for i in batches[0]]))  # warm-up
        t = time.perf_counter()
        out = np.empty((n, ex.dim), np.float32)
        for b in batches:
            out[b] = ex.forward(np.stack([resized[i] for i in b]))
        t_forward = time.perf_counter() - t
        t = time.perf_counter()
        with h5py.File(tmp / "parts.h5", "w") as f:  # one write and flush per batch, as the cache does
            d = f.create_dataset("x", (n, ex.dim), np.float32)
            for b in batches:
                d[sorted(b)] = out[sorted(b)]
                f.flush()
        t_write = time.perf_counter() - t
    parts = {"decode": t_decode, "resize": t_resize, "forward": t_forward, "write": t_write}
    total = sum(parts.values())
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{where}; Net-{net}, Q={a.scale}, {n} images (flips), torch {torch.__version__}")
    print(f"{'part':<26}{'seconds':>9}")
    for k, v in parts.items():
        print(f"{k:<26}{v:>9.2f}")
    print(f"{'sum of parts':<26}{total:>9.2f}")
    print(f"{'featx extract (wall)':<26}{wall:>9.2f}")
    print(f"{'  of which start-up':<26}{startup:>9.2f}   (python, imports: featx --version)")
    work = wall - startup
    print(f"{'  the rest':<26}{work:>9.2f}   = {work / t_forward:.2f} x forward alone, "
          f"{work / total:.2f} x the sum of parts")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "threads": torch.get_num_threads(), "net": net,
                       "Q": a.scale, "images": n, "rows": [{"part": k, "seconds": v} for k, v in parts.items()]
                       + [{"part": "featx extract wall", "seconds": wall},
                          {"part": "start-up", "seconds": startup}]}, f, indent=2)


SMOKE_WRAPPER = f"""
import sys
from featx.net.specs import NETS, NetSpec
NETS["S"] = {SMOKE!r}
from featx.cli import main
args = sys.argv[1:]
args[args.index("--net") + 1] = "S"
main(args, prog_name="featx")
"""

if __name__ == "__main__":
    main()
