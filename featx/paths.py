"""Every default location and environment variable featx reads, in one place.

    data root     --root,        $FEATX_DATA_ROOT,  ./datasets
    caches        --cache-dir,   $FEATX_CACHE_DIR,  <data root>/featx-cache   (<dir>/<image set>/<net>-<weights>.h5,
                  <net>-<weights>-<dtype>.h5 for descriptors computed in bfloat16 or float16;
                  <image set> is a benchmark's name, or NAME-<8 hex of its resolved path> for a
                  folder, list or CSV file: `cache_path` is the rule, for every command)
    pipelines     --pipelines,   $FEATX_PIPELINES,  the ones shipped with featx
    split files   shipped with featx (datasets/splits/ in a checkout, featx/splits/ in a wheel),
                  else <data root>/splits/<dataset>/ (drawn by the seeded rule the first time)
    weights       $TORCH_HOME/hub/checkpoints (torch's hub cache)
    user cache    $XDG_CACHE_HOME/featx, ~/.cache/featx   (what featx remembers between runs: each
                  weights file's tensor digest, so a process does not hash 575 MB to know it)
    image budget  $FEATX_MAX_PIXELS (decoded pixels per image file, default Pillow's limit),
                  $FEATX_MAX_RESCALED_PIXELS (pixels per rescaled image at one Q, default 12 million)
    kernels       $FEATX_KERNELS   (e.g. conv=onednn,fc=gemm: featx.net.kernels' choice overridden)
    Ray cluster   --address,     $RAY_ADDRESS,      a new local instance

The pipelines and split files live at the top of a checkout (pipelines/, datasets/splits/) and
inside the package in a wheel (featx/pipelines, featx/splits): both are looked for here.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ConfigError
from .net.specs import default_weights
from .options import DEFAULT_NET

_HERE = Path(__file__).resolve().parent



def max_pixels(default: int) -> int:
    """$FEATX_MAX_PIXELS: the most pixels an image file may decode to (featx.data.images)."""
    return int(os.environ.get("FEATX_MAX_PIXELS", default))


def max_rescaled_pixels() -> int:
    """$FEATX_MAX_RESCALED_PIXELS, default 12 million: the largest rescaled image one forward
    pass may take (featx.extract.update: above it, the image is that scale's failure)."""
    return int(os.environ.get("FEATX_MAX_RESCALED_PIXELS", 12_000_000))


def forced_kernels() -> str:
    """$FEATX_KERNELS, or "": the CPU kernels asked for instead of featx.net.kernels' choice."""
    return os.environ.get("FEATX_KERNELS", "")


def ray_address(option=None) -> str | None:
    """The Ray cluster to join: --address, $RAY_ADDRESS, or None (a new local instance)."""
    return option or os.environ.get("RAY_ADDRESS") or None


def data_root(root=None) -> Path:
    return Path(root or os.environ.get("FEATX_DATA_ROOT") or "datasets")


def cache_dir(option=None, root=None) -> Path:
    """Where dataset caches live: --cache-dir, $FEATX_CACHE_DIR, or <data root>/featx-cache."""
    for value, what in ((option, "--cache-dir"), (os.environ.get("FEATX_CACHE_DIR"), "$FEATX_CACHE_DIR")):
        if value:
            if Path(value).exists() and not Path(value).is_dir():
                raise ConfigError(f"{what} {value} is a file; caches go in a folder (give a folder, "
                                  "or leave it out for the default, <data root>/featx-cache)")
            return Path(value)
    return data_root(root) / "featx-cache"


def user_cache_dir() -> Path:
    """featx's own small cache between runs ($XDG_CACHE_HOME/featx, else ~/.cache/featx)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featx"


def image_set_key(name: str, source=None) -> str:
    """The folder name of an image set's caches: a benchmark's own name (source None), or a
    user's folder, list or CSV file by its name and 8 hex digits of its resolved path
    ("photos-1a2b3c4d"): two folders both called photos never share a cache, and the same
    folder reached by another relative path or symlink finds its own."""
    if source is None:
        return name
    where = str(Path(source).expanduser().resolve()).encode("utf-8", "surrogateescape")
    return f"{name}-{hashlib.sha256(where).hexdigest()[:8]}"


def parse_image_set(spec) -> tuple[str, Path | None]:
    """(name, source) of an image set named as on the command line: a benchmark (voc2007,
    ...), folder:DIR, csv:FILE, or a folder or list file of images (extract --images)."""
    text = os.fspath(spec)
    for prefix in ("folder:", "csv:"):
        if text.startswith(prefix):
            path = Path(text[len(prefix):]).expanduser()
            return (path.stem if prefix == "csv:" else path.resolve().name), path
    from .data.datasets import DATASETS
    if text in DATASETS:
        return text, None
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"{text}: neither a benchmark ({', '.join(DATASETS)}), folder:DIR, csv:FILE, "
                          "nor a folder or list file of images")
    return (path.resolve().name if path.is_dir() else path.stem), path


def cache_path(images, net: str = DEFAULT_NET, weights=None, dtype: str = "float32",
               cache_dir=None, root=None) -> Path:
    """The cache file of an image set for one net, weight source and compute type: the one
    rule behind every command (extract, svm, predict, reproduce, info).

    images: a Dataset or ImageSet (featx.data.datasets), or its name as on the command line
    ("voc2007", "folder:photos", "csv:labels.csv", or a folder or list file of images).
    cache_dir, root: --cache-dir and --root ($FEATX_CACHE_DIR, $FEATX_DATA_ROOT; default
    ./datasets/featx-cache). weights: the source (None: the net's default).

    >>> cache_path("folder:photos", net="E", weights="caffe")
    PosixPath('datasets/featx-cache/photos-1a2b3c4d/E-caffe.h5')
    """
    from .extract.cache import cache_file  # h5py: not for featx --help
    key = images.key if hasattr(images, "key") else image_set_key(*parse_image_set(images))
    return cache_file(image_set_dir(key, cache_dir, root), net, default_weights(net) if weights is None else weights,
                      dtype)


def image_set_dir(key: str, option=None, root=None) -> Path:
    """The folder holding one image set's caches (one file per net, weights and type)."""
    return cache_dir(option, root) / key


def bench_figures() -> Path:
    """results/bench of a checkout: the measured speed of each CPU model (bench/*.py write them;
    featx reproduce --dry-run reads them). Absent from a wheel."""
    return _HERE.parent / "results" / "bench"


def _shipped(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def shipped_pipelines() -> Path | None:
    return _shipped(_HERE / "pipelines", _HERE.parent / "pipelines")


def shipped_splits(dataset: str) -> Path | None:
    """The folder of split files featx ships for a dataset (None: it ships none)."""
    base = _shipped(_HERE / "splits", _HERE.parent / "datasets" / "splits")
    if base is None or not (base / dataset).is_dir():
        return None
    return base / dataset


def pipelines_dir(option=None) -> Path:
    """--pipelines, $FEATX_PIPELINES, or the pipelines shipped with featx."""
    for candidate, what in ((option, "--pipelines"), (os.environ.get("FEATX_PIPELINES"), "$FEATX_PIPELINES")):
        if candidate:
            path = Path(candidate)
            if not path.is_dir():
                raise ConfigError(f"{what} {path}: no such folder")
            if not any(path.glob("*.toml")):
                raise ConfigError(f"{what} {path}: holds no .toml pipeline files")
            return path
    shipped = shipped_pipelines()
    if shipped is None:
        raise ConfigError("featx's own pipelines are missing from this installation; "
                          "give a folder of .toml files with --pipelines")
    return shipped
