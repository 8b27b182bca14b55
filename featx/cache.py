"""HDF5 descriptor cache: one file per (image set, net, weight source), computed once, resumable.

Layout (format 1):
    attrs             provenance: net, weights (+ sha256), preprocessing, flip, interpolation,
                      dtype, featx / torch versions, image-set name and the sha256 of its ids
    ids    (n,)       image ids, in the image set's order (str)
    paths  (n,)       where each image was read from when the file was made (str)
    boxes  (n, 4)     crop box (x1, y1, x2, y2) or -1s for whole images
    sizes  (n, 2)     upright (h, w); -1s where the image could not be read
    errors (n,)       why an image failed ('' if it did not), fixed width
    scales/<Q>/descriptors (n, dim) float32, flip-averaged, not normalised
    scales/<Q>/status      (n,) uint8: 0 to do, 1 done, 2 failed

Crash safety: structure is only ever created in a temporary copy that replaces the file
atomically (os.replace). Every dataset is contiguous and allocated at creation, so extraction
afterwards writes raw bytes at fixed offsets and never touches HDF5 metadata: a process killed
at any moment leaves a file that opens. Each batch writes its rows, flushes, then marks them
done and flushes again; rows not marked done are recomputed on the next run.
A lock file (<file>.lock) keeps a second writer out.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .errors import CacheError, ImageError
from .images import Crop, read_size

FORMAT = 1
TODO, DONE, FAILED = 0, 1, 2
ERROR_WIDTH = 240
# Provenance keys that decide the descriptors' values: a file whose values differ is never reused.
IDENTITY_KEYS = ("net", "arch", "dim", "weights", "weights_sha256", "preprocess", "channel_order",
                 "mean", "std", "value_range", "flip", "interpolation", "pooling", "dtype")


@dataclass
class Summary:
    path: Path
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # row -> reason

    def __str__(self):
        return (f"{self.path}: computed {self.computed}, reused {self.reused}, failed {self.failed} "
                f"(image x scale) in {self.seconds:.1f} s")


def cache_file(folder, net: str, weights) -> Path:
    """Where an image set's cache for one net and weight source lives: FOLDER/<net>-<weights>.h5."""
    from .weights import weights_tag
    return Path(folder) / f"{net}-{weights_tag(weights)}.h5"


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _early_dcpl():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _add_scale(f: h5py.File, q: int, dim: int, failed_rows: np.ndarray):
    g = f.require_group("scales").create_group(str(q))
    n = f["ids"].shape[0]
    g.create_dataset("descriptors", shape=(n, dim), dtype="f4", dcpl=_early_dcpl())
    status = g.create_dataset("status", shape=(n,), dtype="u1", dcpl=_early_dcpl())
    status[failed_rows] = FAILED


def _attr(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value) if isinstance(value, str) else value  # str subclasses (torch.__version__)


def _read_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class DescriptorCache:
    """Read side of a cache file. Opening never locks, so it works while a writer runs.

    >>> cache = DescriptorCache("voc2007/D-torchvision.h5")
    >>> x = cache.load(scales=[256, 384], rows=train_rows)   # (len(rows), 2, 4096)
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"no descriptor cache at {self.path}")
        try:
            with self._open() as f:
                if f.attrs.get("format") != "featx-descriptors":
                    raise CacheError(f"{self.path} is an HDF5 file but not a featx descriptor cache")
                self.attrs = {k: _read_attr(v) for k, v in f.attrs.items()}
                self.ids = [s.decode() for s in f["ids"][()]]
        except OSError as e:
            raise CacheError(f"cannot open {self.path}: {e}") from None
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    def _open(self):
        return h5py.File(self.path, "r", locking=False)

    def __len__(self):
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def scales(self) -> list[int]:
        with self._open() as f:
            return sorted(int(q) for q in f.get("scales", {}))

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of image ids (CacheError naming the first unknown id)."""
        try:
            return np.asarray([self._row[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise CacheError(f"{self.path} has no image with id {e.args[0]!r}") from None

    def sizes(self) -> np.ndarray:
        """(n, 2) upright (h, w) of every image; -1s where it could not be read."""
        with self._open() as f:
            return f["sizes"][()]

    def status(self, q: int) -> np.ndarray:
        with self._open() as f:
            if str(q) not in f.get("scales", {}):
                return np.zeros(len(self), np.uint8)
            return f[f"scales/{q}/status"][()]

    def errors(self) -> dict[str, str]:
        """{image id: reason} for every image that failed."""
        with self._open() as f:
            errs = f["errors"][()]
        return {self.ids[i]: errs[i].decode(errors="replace") for i in np.flatnonzero(errs != b"")}

    def counts(self) -> dict[int, dict]:
        out = {}
        for q in self.scales:
            s = self.status(q)
            out[q] = {"done": int((s == DONE).sum()), "failed": int((s == FAILED).sum()),
                      "todo": int((s == TODO).sum())}
        return out

    def missing(self, scales: Sequence[int], rows=None) -> dict[int, np.ndarray]:
        """{Q: rows not done} for the requested rows (all rows when None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        out = {}
        for q in scales:
            todo = rows[self.status(q)[rows] != DONE]
            if len(todo):
                out[int(q)] = todo
        return out

    def load(self, scales: Sequence[int] | None = None, rows=None, ids=None,
             chunk_rows: int = 2048) -> np.ndarray:
        """(n_rows, n_scales, dim) float32 for the requested rows (or ids) and scales only.

        Raises CacheError if any requested descriptor was not computed (or its image failed).
        """
        scales = self.scales if scales is None else [int(q) for q in scales]
        if ids is not None:
            rows = self.rows(ids)
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        have = self.scales
        absent = [q for q in scales if q not in have]
        if absent:
            raise CacheError(f"{self.path} holds no descriptors at Q={absent[0]} "
                             f"(it has {have or 'none'})")
        missing = self.missing(scales, rows)
        if missing:
            q, todo = next(iter(missing.items()))
            raise CacheError(f"{self.path}: {len(todo)} of the requested images have no descriptor "
                             f"at Q={q} (first: {self.ids[todo[0]]}); run featx extract to compute them")
        out = np.empty((len(rows), len(scales), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")  # h5py reads need increasing indices
        with self._open() as f:
            for j, q in enumerate(scales):
                d = f[f"scales/{q}/descriptors"]
                for k in range(0, len(rows), chunk_rows):
                    sel = order[k:k + chunk_rows]
                    idx = rows[sel]
                    uniq, inverse = np.unique(idx, return_inverse=True)
                    out[sel, j] = d[uniq][inverse]
        return out


def _provenance_diff(have: dict, want: dict) -> list[str]:
    return [f"{k}: file has {have.get(k)!r}, this run {want.get(k)!r}"
            for k in IDENTITY_KEYS if _read_attr(_attr(want.get(k))) != have.get(k)]


def _read_sizes(items, workers, progress, desc):
    sizes, errors = [None] * len(items), {}

    def one(i):
        try:
            return i, read_size(items[i], i), None
        except ImageError as e:
            return i, None, str(e)

    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(items), desc=desc, unit="img",
                                                   disable=not progress, leave=False) as bar:
        for i, size, err in pool.map(one, range(len(items))):
            sizes[i] = size
            if err:
                errors[i] = err
            bar.update()
    return sizes, errors


def _create(path: Path, items, ids, sizes, errors, provenance, scales, name):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = len(ids)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in provenance.items():
                f.attrs[k] = _attr(v)
            f.attrs.update({"format": "featx-descriptors", "format_version": FORMAT,
                            "image_set": name, "n_images": n, "ids_sha256": _ids_digest(ids),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            text = h5py.string_dtype()
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=text)
            f.create_dataset("paths", data=np.array([str(it.path if isinstance(it, Crop) else it)
                                                     for it in items], dtype=object), dtype=text)
            f.create_dataset("boxes", data=np.array([it.box if isinstance(it, Crop) else (-1,) * 4
                                                     for it in items], np.int32).reshape(n, 4))
            f.create_dataset("sizes", data=np.array([s if s else (-1, -1) for s in sizes], np.int32))
            err = f.create_dataset("errors", shape=(n,), dtype=f"S{ERROR_WIDTH}", dcpl=_early_dcpl())
            for i, reason in errors.items():
                err[i] = reason.encode()[:ERROR_WIDTH]
            failed = np.asarray(sorted(errors), dtype=np.int64)
            for q in scales:
                _add_scale(f, q, provenance["dim"], failed)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _extend(path: Path, new_scales, dim):
    """Add scales: in a copy that then replaces the file, so a crash leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            failed = np.flatnonzero(f["errors"][()] != b"")
            for q in new_scales:
                _add_scale(f, q, dim, failed)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def extract_to_cache(extractor, items: Sequence, ids: Sequence[str], path, name: str = "",
                     rows=None, strict: bool = False, progress: bool = True,
                     on_batch: Callable | None = None) -> Summary:
    """Compute what `path` lacks for `items` with `extractor`, at every extractor scale.

    items: what to read per image (paths or Crops); ids: their stable names (stored, checked).
    rows: restrict the work to these rows (e.g. one split); the file always spans all items.
    strict: stop at the first unreadable image (after saving what is done).
    on_batch: called with each committed Batch (progress reporting).
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    if len(items) != len(ids):
        raise ValueError("items and ids differ in length")
    if not ids:
        raise CacheError("the image set is empty: nothing to extract")
    if len(set(ids)) != len(ids):
        raise CacheError("image ids must be unique")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheError(f"{path} is being written by another featx process (lock {lock.lock_file});"
                         " wait for it to finish or stop it") from None
    try:
        return _extract_locked(extractor, list(items), ids, path, name, rows, strict, progress, on_batch)
    finally:
        lock.release()


def _extract_locked(extractor, items, ids, path, name, rows, strict, progress, on_batch):
    start = time.perf_counter()
    import torch
    from . import __version__

    provenance = dict(extractor.provenance(), weights_sha256=extractor.weights.checksum(),
                      dtype=extractor.dtype, featx_version=__version__, torch_version=torch.__version__)
    scales = list(extractor.scales)
    if path.exists():
        cache = DescriptorCache(path)
        diff = _provenance_diff(cache.attrs, provenance)
        if diff:
            raise CacheError(f"{path} was computed with other settings, refusing to mix:\n  "
                             + "\n  ".join(diff) + "\nuse another --cache-dir / --out, or delete the file")
        if cache.attrs.get("ids_sha256") != _ids_digest(ids):
            raise CacheError(f"{path} holds another image set ({len(cache)} images, "
                             f"'{cache.attrs.get('image_set')}'); this run has {len(ids)}")
        new = [q for q in scales if q not in cache.scales]
        if new:
            _extend(path, new, extractor.dim)
    else:
        sizes, errors = _read_sizes(items, extractor.workers, progress, "reading image sizes")
        if strict and errors:
            raise ImageError(next(iter(errors.values())))
        _create(path, items, ids, sizes, errors, provenance, scales, name)

    summary = Summary(path)
    with h5py.File(path, "r+") as f:
        wanted = np.zeros(len(ids), bool)
        wanted[np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)] = True
        # Only the wanted rows are planned (a split's images batch among themselves).
        sizes = [tuple(s) if s[0] >= 0 and w else None for s, w in zip(f["sizes"][()], wanted)]
        skip = {}
        for q in scales:
            status = f[f"scales/{q}/status"][()]
            summary.reused += int(((status == DONE) & wanted).sum())
            skip[q] = status != TODO
        errors_ds = f["errors"]
        for batch in extractor.iter_batches(items, sizes, scales, skip):
            group = f[f"scales/{batch.scale}"]
            if len(batch.indices):
                group["descriptors"][batch.indices] = batch.descriptors
            for i, reason in batch.failures.items():
                errors_ds[i] = reason.encode()[:ERROR_WIDTH]
            f.flush()  # rows are on disk before they are marked done
            done = np.concatenate([batch.indices, list(batch.failures)]).astype(np.int64)
            order = np.argsort(done)
            group["status"][done[order]] = np.where(np.isin(done, batch.indices), DONE, FAILED)[order]
            f.flush()
            summary.computed += len(batch.indices)
            if on_batch is not None:
                on_batch(batch)
            if strict and batch.failures:
                raise ImageError(next(iter(batch.failures.values())))
        errs = f["errors"][()]
        for q in scales:
            status = f[f"scales/{q}/status"][()]
            bad = np.flatnonzero((status == FAILED) & wanted)
            summary.failures.update({int(i): errs[i].decode(errors="replace") for i in bad})
            summary.failed += len(bad)
    summary.seconds = time.perf_counter() - start
    return summary
