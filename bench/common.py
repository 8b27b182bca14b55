"""What the benchmark scripts share: the tiny smoke-mode net, VOC-like generated photos, and the
figure files of results/bench/ (one per machine and benchmark, read by bench/tables.py)."""
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from featx.net.specs import NetSpec

# VGG's geometry with a few channels: a smoke run (what CI runs) takes seconds.
SMOKE = NetSpec("S", "smoke", (4, "M", 8, "M", 8, "M", 8, "M", 8, "M"), fc_dim=16, num_classes=10)


def write_voc_like(folder, n: int, seed: int = 0) -> list[str]:
    """n JPEGs, alternately 500x375 and 375x500 (VOC's two common shapes), with smooth-ish
    content so decoding costs what a photograph costs. Returns their paths, sorted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (375, 500) if i % 2 == 0 else (500, 375)
        base = rng.integers(0, 256, (shape[0] // 25, shape[1] // 25, 3), dtype=np.uint8)
        Image.fromarray(base).resize(shape[::-1], Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return sorted(str(p) for p in folder.glob("*.jpg"))


FIGURES = Path(__file__).resolve().parent.parent / "results" / "bench"


def cpu_slug(model: str) -> str:
    """'AMD EPYC 9B14' -> 'amd-epyc-9b14': the file name of a machine's figures (featx's rule)."""
    from featx.net.kernels import CpuInfo
    return CpuInfo(model, (), 1).slug


def save_figures(bench: str, fields: dict, path=None, suffix: str = "", machine: str | None = None) -> Path:
    """Write `fields` under the header every figure file carries (the benchmark, the command, the
    date, the platform, the CPU's model, flags and cores, torch's threads and version) to `path`,
    or to results/bench/<machine or CPU model><suffix>.json."""
    import torch
    from featx.net.kernels import cpu_info
    cpu = cpu_info()
    path = Path(path) if path else FIGURES / f"{cpu_slug(machine or cpu.model)}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": bench, "command": shlex.join(["python", f"bench/{os.path.basename(sys.argv[0])}"] + sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "cpu": {"model": cpu.model, "flags": list(cpu.flags), "cores": cpu.cores},
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    path.write_text(json.dumps(record | fields, indent=2))
    print(f"wrote {os.path.normpath(path)}")
    return path
