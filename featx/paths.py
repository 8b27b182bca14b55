"""Every default location and environment variable featx reads, in one place.

    data root     --root,        $FEATX_DATA_ROOT,  ./datasets
    caches        --cache-dir,   $FEATX_CACHE_DIR,  <data root>/featx-cache   (<dir>/<image set>/<net>-<weights>.h5,
                  <net>-<weights>-<dtype>.h5 for descriptors computed in bfloat16 or float16)
    pipelines     --pipelines,   $FEATX_PIPELINES,  the ones shipped with featx
    split files   shipped with featx (datasets/splits/ in a checkout, featx/splits/ in a wheel),
                  else <data root>/splits/<dataset>/ (drawn by the seeded rule the first time)
    weights       $TORCH_HOME/hub/checkpoints (torch's hub cache)
    image budget  $FEATX_MAX_PIXELS

The pipelines and split files live at the top of a checkout (pipelines/, datasets/splits/) and
inside the package in a wheel (featx/pipelines, featx/splits): both are looked for here.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

_HERE = Path(__file__).resolve().parent

# The types a net can run in (featx.extract maps them to torch's). float32 is the paper's; the
# others are faster where the hardware has them and get cache files of their own.
COMPUTE_TYPES = ("float32", "bfloat16", "float16")


def data_root(root=None) -> Path:
    return Path(root or os.environ.get("FEATX_DATA_ROOT") or "datasets")


def cache_dir(option=None, root=None) -> Path:
    """Where dataset caches live: --cache-dir, $FEATX_CACHE_DIR, or <data root>/featx-cache."""
    if option:
        return Path(option)
    if os.environ.get("FEATX_CACHE_DIR"):
        return Path(os.environ["FEATX_CACHE_DIR"])
    return data_root(root) / "featx-cache"


def dataset_cache_dir(dataset: str, option=None, root=None) -> Path:
    """The folder holding one image set's caches (one file per net and weight source)."""
    return cache_dir(option, root) / dataset


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
