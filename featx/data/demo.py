"""Real photographs that ship with a dependency, for `featx demo` and for trying featx offline.

scikit-image carries `lfw_subset`: 100 face crops from Labeled Faces in the Wild and 100
non-face patches cut from natural photographs (25x25, grey). Written out as a folder per class,
it is a small real two-class task for the folder:DIR protocol.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FeatxError

DEMO_CLASSES = ("face", "nonface")


def write_lfw_faces(folder: Path, per_class: int = 100) -> Path:
    """Write FOLDER/face/NNN.png and FOLDER/nonface/NNN.png (the first per_class of each);
    files already there are kept, so a rerun reuses the cache keyed on them."""
    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise FeatxError("the demo images come with scikit-image: pip install 'featx[demo]'") from None
    from PIL import Image

    if not 4 <= per_class <= 100:
        raise FeatxError(f"per_class must be between 4 and 100 (lfw_subset has 100 of each), got {per_class}")
    faces = lfw_subset()  # (200, 25, 25) float in [0, 1]: 100 faces, then 100 non-faces
    for c, cls in enumerate(DEMO_CLASSES):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / cls / f"{i:03d}.png"
            if not path.is_file():
                pixels = np.round(faces[100 * c + i] * 255).astype(np.uint8)
                tmp = path.with_suffix(".tmp")
                Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
                tmp.replace(path)
    return folder
