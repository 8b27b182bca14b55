"""What the benchmark scripts share: the tiny smoke-mode net and VOC-like generated photos."""
from pathlib import Path

import numpy as np
from PIL import Image

from featx.nets import NetSpec

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
