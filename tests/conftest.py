import os
import tempfile
from pathlib import Path

# No test touches the network: timm's pretrained weights are asked of the Hugging Face cache
# only, an empty one (read when huggingface_hub is imported, so set before any test imports it).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="featx-test-hf-")

import numpy as np
import pytest
from PIL import Image

from featx.net.specs import NETS, NetSpec

# Same geometry as VGG (5 pools, 7x7 fc6 window: 224 px minimum), but a few channels wide,
# so a forward pass costs microseconds and tests stay fast.
TINY = NetSpec("T", "tiny", (4, "M", 8, "M", 8, 8, "M", 8, "M", 8, "M"), fc_dim=16, num_classes=10)


@pytest.fixture(autouse=True)
def tiny_net(monkeypatch):
    monkeypatch.setitem(NETS, "T", TINY)
    return TINY


@pytest.fixture(autouse=True)
def _no_shipped_splits(request, monkeypatch):
    # The split files featx ships name the official Caltech trees' images; the miniature trees
    # the tests build get splits drawn by the seeded rule instead. Tests of the shipped files
    # are marked @pytest.mark.shipped_splits.
    if "shipped_splits" not in request.keywords:
        monkeypatch.setattr("featx.data.datasets.shipped_splits", lambda name: None)


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path_factory, monkeypatch):
    # No test may touch the user's hub cache, nor featx's user cache (weights digests).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))


def make_image(path, size=(300, 240), seed=0, mode="RGB", fmt=None):
    """A deterministic noisy image of size (w, h), saved to path."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    if mode != "RGB":
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def images(tmp_path):
    """Six JPEG/PNG files of two shapes (like VOC's landscape and portrait)."""
    paths = []
    for i in range(6):
        size = (300, 225) if i % 2 == 0 else (225, 300)
        paths.append(make_image(tmp_path / "img" / f"im{i}.png", size, seed=i))
    return paths


@pytest.fixture(scope="session")
def real_weights_e():
    path = os.environ.get("FEATX_TEST_WEIGHTS_E")
    if not path or not Path(path).is_file():
        pytest.skip("real Net-E weights not available (set FEATX_TEST_WEIGHTS_E to the file "
                    "written by ../shared/weights/unpack.py)")
    return Path(path)


def one_line_error(r, code, *fragments):
    """Exit code as given, the error on one line starting with 'Error:', and those words in it."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    line = [l for l in r.output.splitlines() if l.startswith("Error:")]
    assert len(line) == 1, r.output
    for f in fragments:
        assert f in line[0], line[0]
    return line[0]
