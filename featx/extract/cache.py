"""The HDF5 descriptor cache: one file per (image set, net, weight source). The file format only;
`featx.extract.update` is what fills it.

Layout (format 3; formats 1 and 2, written by featx 0.2.0-0.5.0, lack the identity datasets,
and format 1 the crc32 ones: both are upgraded when a run next writes to the file):
    attrs             provenance: net, weights (+ digest of their tensors), preprocessing, flip,
                      interpolation, dtype, featx / torch versions, image-set name and source
    ids    (n,)       image ids (str): a row belongs to an image by its id, in any order; an
                      image set that grows gets rows appended, one that shrinks keeps its rows
    paths  (n,)       the file each row was read from (str)
    boxes  (n, 4)     crop box (x1, y1, x2, y2) or -1s for whole images
    sizes  (n, 2)     upright (h, w); -1s where the image could not be read
    errors (n,)       why an image failed ('' if it did not), fixed width
    error_kinds (n,)  uint8: 0 none, 1 deterministic (the same bytes fail again), 2 transient
    signatures (n, 3) int64: the file's size, mtime_ns and ctime_ns when its row was recorded
    digests (n,)      SHA-256 (hex) of the file's bytes; '' where there was no file to read
    scales/<Q>/descriptors (n, dim) float32, flip-averaged, not normalised
    scales/<Q>/status      (n,) uint8: 0 to do, 1 done, 2 failed
    scales/<Q>/crc32       (n,) uint32: CRC-32 of each done row's bytes, written with the row

Crash safety: structure (a new file, new rows, new scales, an upgrade, a prune) is only ever
made in a temporary copy that replaces the file atomically (os.replace), and the copy's blocks
are reserved on disk (fallocate) before it does, so a full disk shows up there and never in the
middle of a write. Every dataset is contiguous and allocated at creation; afterwards writers
only write fixed-width values at fixed offsets and never touch HDF5 metadata, so a process
killed at any moment leaves a file that opens. A batch writes its rows and their checksums,
flushes, then marks them done and flushes again; a row whose image changed is marked to do
before its new identity is written. Reading verifies each row against its checksum.
"""
from __future__ import annotations

import errno
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..atomic import replacing
from ..errors import CacheError
from ..net.specs import get_spec
from ..net.weights import weights_tag

FORMAT = 3
TODO, DONE, FAILED = 0, 1, 2
ERROR_WIDTH = 240
DIGEST_WIDTH = 64  # hex SHA-256
# Provenance keys that decide the descriptors' values: a file whose values differ is never
# reused. Weights are compared by their tensors' digest, not by source or file name (format 1
# files: by the weights file's sha256, see provenance_diff).
IDENTITY_KEYS = ("net", "arch", "dim", "weights_digest", "preprocess", "channel_order",
                 "mean", "std", "value_range", "flip", "interpolation", "pooling", "dtype")
DATASETS = ("ids", "paths", "boxes", "sizes", "errors")
IDENTITY_DATASETS = ("signatures", "digests", "error_kinds")  # format 3
RECOVER = "move it aside (or delete it) and run featx extract again to rebuild it"


def cache_file(folder, net: str, weights, dtype: str = "float32") -> Path:
    """Where an image set's cache for one net and weight source lives: FOLDER/<net>-<weights>.h5
    (timm:MODEL is timm-MODEL), or FOLDER/<net>-<weights>-<dtype>.h5 for descriptors computed in another type than float32,
    so that the two live side by side (a file never mixes types)."""
    name = get_spec(net).file_name  # "E", "timm-resnet50"
    return Path(folder) / f"{name}-{weights_tag(weights)}{'' if dtype == 'float32' else '-' + dtype}.h5"


def lock_file(path) -> Path:
    """The writer's lock of a cache file (featx.extract.update.lock_cache takes it)."""
    return Path(str(path) + ".lock")


def being_written(path) -> bool:
    """Whether a featx writer holds the cache's lock now (an extraction is running on it).

    The probe takes a shared flock on the lock file for an instant; writers wait up to a
    second for the lock, so it never refuses one. False where there is no flock (Windows)."""
    try:
        import fcntl
        fd = os.open(lock_file(path), os.O_RDONLY)
    except (ImportError, OSError):  # no lock file: no writer has run here
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock: unknown, say nothing
        return False
    finally:
        os.close(fd)  # and with it the probe's lock


def encode_text(values) -> np.ndarray:
    """str -> UTF-8 bytes for h5py, keeping undecodable file-name bytes (surrogateescape)."""
    return np.array([str(v).encode("utf-8", "surrogateescape") for v in values], dtype=object)


def decode_text(raw) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def row_crc(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's float32 bytes."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return np.fromiter((zlib.crc32(r) for r in rows), dtype=np.uint32, count=len(rows))


def _attr(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value) if isinstance(value, str) else value  # str subclasses (torch.__version__)


def _read_attr(value):
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class MadeWith:
    """What a cache's descriptors were computed with, as its attributes record it."""

    image_set: str
    net: str
    arch: str
    dim: int
    dtype: str | None  # None: a 0.2.0 file (float32)
    weights: str  # the source: torchvision, caffe, file, random:N
    weights_file: str
    digest: str  # "tensors:<sha256 of the tensors>", or a 0.2.0 file's sha256
    preprocess: str
    channel_order: str
    mean: list
    std: list
    flip: bool
    interpolation: str
    featx_version: str | None
    torch_version: str | None
    created: str | None

    @classmethod
    def of(cls, attrs: dict) -> "MadeWith":
        return cls(str(attrs.get("image_set")), attrs["net"], attrs["arch"], int(attrs["dim"]), attrs.get("dtype"),
                   attrs["weights"], attrs.get("weights_file") or "",
                   str(attrs.get("weights_digest") or attrs.get("weights_sha256", "")), attrs["preprocess"],
                   attrs["channel_order"], attrs["mean"], attrs["std"], bool(attrs["flip"]), attrs["interpolation"],
                   attrs.get("featx_version"), attrs.get("torch_version"), attrs.get("created"))

    @property
    def digest_text(self) -> str:
        """The digest in a line: "digest 1a2b3c4d5e6f" (tensors), "file sha256 ..." (0.2.0)."""
        if self.digest.startswith("tensors:"):
            return f"digest {self.digest[8:20]}"
        return f"file sha256 {self.digest[:12]}"


class DescriptorCache:
    """Read side of a cache file. Opening never locks, so it works while a writer runs.

    >>> cache = DescriptorCache("voc2007/D-torchvision.h5")
    >>> x = cache.load(scales=[256, 384], rows=train_rows)   # (len(rows), 2, 4096)

    Every way a file can be damaged (truncated, bytes flipped, datasets missing or of the wrong
    length) is a CacheError that names the file and says how to recover.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"no descriptor cache at {self.path}")
        with self._reading("open"):
            with self._open() as f:
                if f.attrs.get("format") != "featx-descriptors":
                    raise CacheError(f"{self.path} is an HDF5 file but not a featx descriptor cache")
                self.attrs = {k: _read_attr(v) for k, v in f.attrs.items()}
                self._check_structure(f)
                self.ids = [decode_text(s) for s in f["ids"][()]]
                self._scales = sorted(int(q) for q in f.get("scales", {}))
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    def _open(self):
        return h5py.File(self.path, "r", locking=False)

    def _reading(self, what):
        return _Damaged(self.path, what)

    def _check_structure(self, f):
        missing = [d for d in DATASETS if d not in f]
        if missing:
            raise CacheError(f"{self.path} is damaged: it has no '{missing[0]}' dataset; {RECOVER}")
        n = f["ids"].shape[0]
        if int(f.attrs.get("format_version", 1)) >= 3:
            missing = [d for d in IDENTITY_DATASETS if d not in f]
            if missing:
                raise CacheError(f"{self.path} is damaged: it has no '{missing[0]}' dataset; {RECOVER}")
        for d in DATASETS[1:] + tuple(d for d in IDENTITY_DATASETS if d in f):
            if f[d].shape[0] != n:
                raise CacheError(f"{self.path} is damaged: '{d}' has {f[d].shape[0]} rows for {n} images; {RECOVER}")
        dim = int(_read_attr(f.attrs.get("dim", -1)))
        for q, g in f.get("scales", {}).items():
            for d, shape in (("descriptors", (n, dim)), ("status", (n,))):
                if d not in g:
                    raise CacheError(f"{self.path} is damaged: scale Q={q} has no '{d}' dataset; {RECOVER}")
                if g[d].shape != shape:
                    raise CacheError(f"{self.path} is damaged: scale Q={q} '{d}' has shape {g[d].shape}, "
                                     f"expected {shape}; {RECOVER}")
            if "crc32" in g and g["crc32"].shape != (n,):
                raise CacheError(f"{self.path} is damaged: scale Q={q} 'crc32' has shape {g['crc32'].shape}; {RECOVER}")

    def __len__(self):
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def made_with(self) -> MadeWith:
        return MadeWith.of(self.attrs)

    @property
    def scales(self) -> list[int]:
        return list(self._scales)

    @property
    def checksummed(self) -> bool:
        """Whether rows carry checksums (format 2; a 0.2.0 file until a run writes to it)."""
        return int(self.attrs.get("format_version", 1)) >= 2

    @property
    def identified(self) -> bool:
        """Whether rows record the file they were computed from (format 3; an older file until
        a run writes to it)."""
        return int(self.attrs.get("format_version", 1)) >= 3

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of image ids (CacheError naming the first unknown id)."""
        try:
            return np.asarray([self._row[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise CacheError(f"{self.path} has no image with id {e.args[0]!r}") from None

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of image ids, -1 for ids the file has no row for."""
        return np.asarray([self._row.get(i, -1) for i in ids], dtype=np.int64)

    def record(self):
        """Every row's record but its descriptors (a featx.extract.identity.Record)."""
        from .identity import DETERMINISTIC, NO_FILE, Record
        with self._reading("the rows' record"), self._open() as f:
            n = len(self.ids)
            errors = f["errors"][()]
            legacy = not self.identified
            return Record(
                ids=list(self.ids), paths=[decode_text(p) for p in f["paths"][()]],
                boxes=f["boxes"][()], sizes=f["sizes"][()], errors=errors,
                signatures=np.tile(NO_FILE, (n, 1)).astype(np.int64) if legacy else f["signatures"][()],
                digests=np.full(n, b"", f"S{DIGEST_WIDTH}") if legacy else f["digests"][()],
                error_kinds=(np.where(errors != b"", DETERMINISTIC, 0).astype(np.uint8) if legacy
                             else f["error_kinds"][()]),  # a legacy failure is tried once more (survey)
                legacy=legacy)

    def gone(self) -> list[str]:
        """Ids of rows whose recorded file no longer exists (the image left its set, or was
        deleted); `prune` removes them."""
        with self._reading("paths"), self._open() as f:
            paths = [decode_text(p) for p in f["paths"][()]]
        return [i for i, p in zip(self.ids, paths) if p and not os.path.exists(p)]

    def sizes(self) -> np.ndarray:
        """(n, 2) upright (h, w) of every image; -1s where it could not be read."""
        with self._reading("sizes"), self._open() as f:
            return f["sizes"][()]

    def status(self, q: int) -> np.ndarray:
        """Per row at scale q: TODO, DONE or FAILED (any other byte, from damage, reads as TODO)."""
        if int(q) not in self._scales:
            return np.zeros(len(self), np.uint8)
        with self._reading(f"status at Q={q}"), self._open() as f:
            s = f[f"scales/{q}/status"][()]
        return np.where(s > FAILED, TODO, s).astype(np.uint8)

    def errors(self) -> dict[str, str]:
        """{image id: reason} for every image that failed."""
        with self._reading("errors"), self._open() as f:
            errs = f["errors"][()]
        return {self.ids[i]: errs[i].decode(errors="replace") for i in np.flatnonzero(errs != b"")}

    def counts(self) -> dict[int, dict]:
        out = {}
        for q in self.scales:
            s = self.status(q)
            out[q] = {"done": int((s == DONE).sum()), "failed": int((s == FAILED).sum()),
                      "todo": int((s == TODO).sum())}
        return out

    def timing(self) -> dict[int, tuple[float, int]]:
        """{Q: (seconds, rows)}: the wall time writers spent computing rows at Q, summed over
        every run that wrote to the file (so over interruptions and resumes), and how many
        rows that time made. Rows computed before featx 0.4.1 were not timed."""
        with self._reading("timing"), self._open() as f:
            return {q: (float(f[f"scales/{q}"].attrs.get("wall_seconds", 0.0)),
                        int(f[f"scales/{q}"].attrs.get("timed_rows", 0))) for q in self.scales}

    def timed_on(self) -> dict[int, str]:
        """{Q: the device its timed rows ran on ("" before featx 0.7, "several machines")}."""
        with self._reading("timing"), self._open() as f:
            return {q: str(_read_attr(f[f"scales/{q}"].attrs.get("timed_on", ""))) for q in self.scales}

    def missing(self, scales: Sequence[int], rows=None) -> dict[int, np.ndarray]:
        """{Q: rows not done} for the requested rows (all rows when None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = {}
        for q in scales:
            todo = rows[self.status(q)[rows] != DONE]
            if len(todo):
                out[int(q)] = todo
        return out

    def corrupt(self, q: int, rows=None, chunk_rows: int = 2048) -> np.ndarray:
        """Done rows at scale q whose bytes no longer match their checksum (all done rows, or
        these). Empty for a format 1 file, whose rows carry no checksums."""
        with self._reading(f"descriptors at Q={q}"), self._open() as f:
            return corrupt_rows(f[f"scales/{q}"], rows, chunk_rows)

    def load(self, scales: Sequence[int] | None = None, rows=None, ids=None,
             chunk_rows: int = 2048) -> np.ndarray:
        """(n_rows, n_scales, dim) float32 for the requested rows (or ids) and scales only.

        Raises CacheError if any requested descriptor was not computed (or its image failed),
        or if its bytes fail their checksum (featx extract then recomputes just those rows).
        """
        scales = self.scales if scales is None else [int(q) for q in scales]
        if ids is not None:
            rows = self.rows(ids)
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        absent = [q for q in scales if q not in self._scales]
        if absent:
            raise CacheError(f"{self.path} holds no descriptors at Q={absent[0]} "
                             f"(it has {self._scales or 'none'})")
        missing = self.missing(scales, rows)
        if missing:
            q, todo = next(iter(missing.items()))
            raise CacheError(f"{self.path}: {len(todo)} of the requested images have no descriptor "
                             f"at Q={q} (first: {self.ids[todo[0]]}); run featx extract to compute them")
        out = np.empty((len(rows), len(scales), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")  # h5py reads need increasing indices
        with self._reading("descriptors"), self._open() as f:
            for j, q in enumerate(scales):
                g = f[f"scales/{q}"]
                d = g["descriptors"]
                crc = g["crc32"][()] if "crc32" in g else None
                for k in range(0, len(rows), chunk_rows):
                    sel = order[k:k + chunk_rows]
                    uniq, inverse = np.unique(rows[sel], return_inverse=True)
                    block = d[uniq]
                    if crc is not None:
                        bad = uniq[row_crc(block) != crc[uniq]]
                        if len(bad):
                            raise CacheError(
                                f"{self.path}: {len(bad)} descriptor(s) at Q={q} fail their checksum "
                                f"(first: {self.ids[bad[0]]}): the file was damaged after they were "
                                "written. Run the same featx extract command again: it recomputes "
                                "exactly those rows")
                    out[sel, j] = block[inverse]
        return out


def usable_rows(caches: dict, ids, scales, asked=None) -> tuple[dict, np.ndarray, dict]:
    """Which images (ids) have a descriptor in every cache ({net: DescriptorCache}) at every
    scale: ({net: each id's row, -1 where it has none}, ok mask, {id: why not} for those asked
    (a mask; all ids when None) that are not ok: the failure on record, or 'not computed')."""
    where = {net: c.lookup(ids) for net, c in caches.items()}
    ok = np.ones(len(ids), bool) if asked is None else np.asarray(asked, bool).copy()
    asked = ok.copy()
    for net, c in caches.items():
        ok &= where[net] >= 0
        for q in scales:
            ok[ok] &= c.status(q)[where[net][ok]] == DONE
    errors = {i: e for c in caches.values() for i, e in c.errors().items()}
    return where, ok, {ids[i]: errors.get(ids[i], "not computed") for i in np.flatnonzero(asked & ~ok)}


def corrupt_rows(group, rows=None, chunk_rows: int = 2048) -> np.ndarray:
    """Rows marked done in a scale's group whose bytes fail their checksum (among `rows`)."""
    status = group["status"][()]
    rows = np.flatnonzero(status == DONE) if rows is None else np.asarray(rows, dtype=np.int64)
    rows = np.unique(rows[status[rows] == DONE])
    if "crc32" not in group or not len(rows):
        return np.empty(0, np.int64)
    crc = group["crc32"][()]
    bad = [np.empty(0, np.int64)]
    for k in range(0, len(rows), chunk_rows):
        idx = rows[k:k + chunk_rows]
        bad.append(idx[row_crc(group["descriptors"][idx]) != crc[idx]])
    return np.concatenate(bad)


class _Damaged:
    """Turns any failure while reading a cache into one CacheError naming the file."""

    def __init__(self, path, what):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, CacheError):
            return False
        raise CacheError(f"cannot read {self.path} ({self.what}): {type(err).__name__}: {err}. "
                         f"The file is damaged or not a featx cache; {RECOVER}") from None


# -- writing ------------------------------------------------------------------------------------

def _early_dcpl():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _no_space(path: Path, e: OSError) -> CacheError:
    return CacheError(f"no space left on the device holding {path} ({e.strerror or e}); free some "
                      "space and run the same command again: every row already committed is kept")


def _replace_with(path: Path, build) -> None:
    """Make the file's new structure in a temporary copy (build(tmp)), reserve its blocks on
    disk, and swap it in atomically (featx.atomic): a crash or a full disk leaves the old file whole."""
    with replacing(path, reserve=True, kept="every row already committed is kept") as tmp:
        build(tmp)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete what an interrupted create or extend left (.NAME.tmp-PID). Only called by the
    writer holding the lock, so no other process can be using them."""
    stale = list(Path(path).parent.glob(f".{Path(path).name}.tmp-*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _error_bytes(reason: str) -> bytes:
    return reason.encode("utf-8", "backslashreplace")[:ERROR_WIDTH]


def error_column(reasons) -> np.ndarray:
    """Failure reasons as the fixed-width 'errors' column ('' for none)."""
    return np.array([_error_bytes(r) for r in reasons], dtype=f"S{ERROR_WIDTH}")


def write_file(path: Path, record, statuses: dict, dim: int, attrs: dict, origin=None,
               chunk_rows: int = 2048) -> None:
    """Write the cache anew and swap it in atomically: a new file, or the current one with
    rows appended, removed or re-recorded, scales added, or its format upgraded.

    record: every row's record (a featx.extract.identity.Record, without `legacy`); statuses: {Q: every
    row's status}. origin[i]: the current file's row whose descriptors row i keeps (-1: none);
    they are copied with their checksums, and checksummed as they are copied where the current
    file has none (format 1). Wall times per scale are kept."""
    n = len(record)
    origin = None if origin is None else np.asarray(origin, dtype=np.int64)

    def build(tmp):
        old = h5py.File(path, "r", locking=False) if origin is not None else None
        try:
            with h5py.File(tmp, "w") as f:
                for k, v in attrs.items():
                    f.attrs[k] = _attr(v)
                text = h5py.string_dtype()
                f.create_dataset("ids", data=encode_text(record.ids), dtype=text)
                f.create_dataset("paths", data=encode_text(record.paths), dtype=text)
                # Fixed-width columns, allocated now: later runs write them in place.
                for name, data in (("boxes", np.asarray(record.boxes, np.int32).reshape(n, 4)),
                                   ("sizes", np.asarray(record.sizes, np.int32).reshape(n, 2)),
                                   ("errors", np.asarray(record.errors, f"S{ERROR_WIDTH}")),
                                   ("error_kinds", np.asarray(record.error_kinds, np.uint8)),
                                   ("signatures", np.asarray(record.signatures, np.int64).reshape(n, 3)),
                                   ("digests", np.asarray(record.digests, f"S{DIGEST_WIDTH}"))):
                    f.create_dataset(name, shape=data.shape, dtype=data.dtype, dcpl=_early_dcpl())[...] = data
                for q, status in statuses.items():
                    g = f.require_group("scales").create_group(str(q))
                    d = g.create_dataset("descriptors", shape=(n, dim), dtype="f4", dcpl=_early_dcpl())
                    crc = g.create_dataset("crc32", shape=(n,), dtype="u4", dcpl=_early_dcpl())
                    g.create_dataset("status", shape=(n,), dtype="u1", dcpl=_early_dcpl())[...] = status
                    src = old.get(f"scales/{q}") if old is not None else None
                    if src is None:
                        continue
                    for k in ("wall_seconds", "timed_rows"):
                        if k in src.attrs:
                            g.attrs[k] = src.attrs[k]
                    kept = np.flatnonzero((origin >= 0) & (np.asarray(status) == DONE))
                    for k in range(0, len(kept), chunk_rows):
                        to = kept[k:k + chunk_rows]
                        rows, inverse = np.unique(origin[to], return_inverse=True)
                        block = (src["descriptors"][rows[0]:rows[-1] + 1] if rows[-1] - rows[0] + 1 == len(rows)
                                 else src["descriptors"][rows])  # a run of rows reads as one slice
                        d[to] = block[inverse]
                        crc[to] = (src["crc32"][rows] if "crc32" in src else row_crc(block))[inverse]
        finally:
            if old is not None:
                old.close()

    _replace_with(path, build)


def provenance_diff(have: dict, want: dict, legacy_weights_checksum=None) -> list[str]:
    """What differs between a file's provenance and this run's, in the keys that decide values.

    A format 1 file (featx 0.2.0) has no weights_digest; its weights_sha256 (the weights file's
    sha256, or the source name) is compared with legacy_weights_checksum() instead."""
    diffs = []
    for k in IDENTITY_KEYS:
        if k == "weights_digest" and k not in have:
            theirs, ours = have.get("weights_sha256"), legacy_weights_checksum() if legacy_weights_checksum else None
            if theirs != ours:
                diffs.append(f"weights_sha256: file has {theirs!r}, this run {ours!r}")
            continue
        if _read_attr(_attr(want.get(k))) != have.get(k):
            diffs.append(f"{k}: file has {have.get(k)!r}, this run {want.get(k)!r}")
    return diffs


class Writer:
    """An open cache file for one writer (the caller holds the lock): commits batches so that a
    kill at any moment loses at most the batch in flight."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._inode_lock = None
        try:
            # A lock on the file itself (its inode) also stops a second writer that reaches it
            # through another name, e.g. a hard link, which the <file>.lock cannot see.
            import fcntl
            self._inode_lock = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._inode_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): the lock file alone
            pass
        except BlockingIOError:
            os.close(self._inode_lock)
            raise CacheError(f"{self.path} is being written by another process (through another path "
                             "to the same file); wait for it to finish or stop it") from None
        try:
            self.f = h5py.File(self.path, "r+", locking=False)
        except OSError as e:
            self._release()
            try:  # intact but not writable (a read-only file or file system): never say rebuild it
                h5py.File(self.path, "r", locking=False).close()
            except OSError:
                raise CacheError(f"cannot open {self.path} for writing ({e}); {RECOVER}") from None
            raise CacheError(f"cannot open {self.path} for writing: it can be read but not written (a read-only "
                             "file or file system); make it writable or give another --cache-dir. The file "
                             "is intact") from None

    def _release(self):
        if self._inode_lock is not None:
            os.close(self._inode_lock)  # closing the descriptor drops the flock
            self._inode_lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.f.close()
        except Exception:  # closing after a failed write must not hide that failure
            pass
        self._release()
        return False

    def corrupt(self, q: int, rows=None) -> np.ndarray:
        return corrupt_rows(self.f[f"scales/{q}"], rows)

    def repair(self, scales) -> dict[int, int]:
        """Status bytes of unknown value (damage) back to 'to do': {Q: rows reset}."""
        fixed = {}
        for q in scales:
            s = self.f[f"scales/{q}/status"]
            values = s[()]
            bad = np.flatnonzero(values > FAILED)
            if len(bad):
                s[bad] = TODO
                fixed[q] = len(bad)
        if fixed:
            self.f.flush()
        return fixed

    def reset(self, q: int, rows: np.ndarray) -> None:
        if len(rows):
            self.f[f"scales/{q}/status"][np.sort(rows)] = TODO
            self.f.flush()

    def set_status(self, statuses: dict) -> None:
        """Replace the status of every row at these scales ({Q: (n,) uint8}), then flush."""
        for q, status in statuses.items():
            self.f[f"scales/{q}/status"][...] = status
        self.f.flush()

    def set_rows(self, rows, **columns) -> None:
        """Write these rows' record (columns: sizes, errors, error_kinds, signatures, digests,
        each one value per row), then flush."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        order = np.argsort(rows)  # h5py writes at increasing indices
        for name, values in columns.items():
            self.f[name][rows[order]] = np.asarray(values)[order]
        self.f.flush()

    def status(self, q: int) -> np.ndarray:
        return self.f[f"scales/{q}/status"][()]

    def sizes(self) -> np.ndarray:
        return self.f["sizes"][()]

    def errors(self) -> np.ndarray:
        return self.f["errors"][()]

    def commit(self, q: int, rows: np.ndarray, descriptors: np.ndarray, failures: dict,
               seconds: float = 0.0, transient=(), timed_on: str = "") -> None:
        """Write rows (and their checksums) and failure reasons, flush, then mark them.
        seconds: the wall time the batch took, added to the scale's running total (timing);
            timed_on: the device it ran on (a CPU model or GPU name), recorded with it.
        transient: the failed rows whose failure may pass (tried again by the next run)."""
        from .identity import DETERMINISTIC, TRANSIENT
        try:
            group = self.f[f"scales/{q}"]
            if len(rows):
                group["descriptors"][rows] = descriptors
                group["crc32"][rows] = row_crc(descriptors)
            for i, reason in failures.items():
                self.f["errors"][i] = _error_bytes(reason)
                self.f["error_kinds"][i] = TRANSIENT if i in transient else DETERMINISTIC
            self.f.flush()  # rows are on disk before they are marked done
            done = np.concatenate([rows, list(failures)]).astype(np.int64)
            order = np.argsort(done)
            group["status"][done[order]] = np.where(np.isin(done, rows), DONE, FAILED)[order]
            if seconds:
                group.attrs["wall_seconds"] = float(group.attrs.get("wall_seconds", 0.0)) + seconds
                group.attrs["timed_rows"] = int(group.attrs.get("timed_rows", 0)) + len(rows)
                if timed_on:  # what the time was measured on (reproduce --dry-run's rate)
                    before = _read_attr(group.attrs.get("timed_on", timed_on))
                    group.attrs["timed_on"] = timed_on if before == timed_on else "several machines"
            self.f.flush()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(e):
                raise _no_space(self.path, e) from None
            raise CacheError(f"writing {self.path} failed ({e}); rows committed before are kept, "
                             "run the same command again") from None
