"""What each cache row was computed from, and whether that is still so.

Every row of a descriptor cache records its image file: the path it was read from, the file's
size in bytes, its modification and change times (ns: the *stat signature*), and the SHA-256 of
its bytes (what `sha256sum FILE` prints). A later run trusts a file whose path and signature
are unchanged (one stat, nothing read); any other file is hashed again, and only a different
digest (or crop box) means a different image, whose rows are then recomputed. A file that was
only touched, copied or moved keeps its rows.

The change time (ctime) is in the signature because the kernel sets it on every write, rename
or chmod and no user can set it back: a file rewritten with its old mtime restored (`cp -p`,
`touch -r`) is still hashed again.

`survey` is the one comparison of an image set against a cache's record, used by the writer
(featx.extract.update: what to recompute, what to retry, what to record) and by readers
(featx.evaluate.experiment: refuse descriptors of images that changed since).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..atomic import file_digest
from ..data.images import Crop, name_of, read_size
from ..errors import CacheError, ConfigError, ImageError
from ..net.specs import label_of

DIGEST = "sha256"
NO_FILE = (-1, -1, -1)  # the signature of a file that was not there
NO_BOX = (-1, -1, -1, -1)

# How a failed row's failure is treated by later runs (the cache's error_kind per row).
NO_ERROR, DETERMINISTIC, TRANSIENT = 0, 1, 2

# What a survey found of each image against the record.
NEW, SAME, TOUCHED, CHANGED = 0, 1, 2, 3


def file_of(item) -> str | None:
    """The file an item is read from (a Crop's image file); None for bytes held in memory."""
    if isinstance(item, Crop):
        return str(item.path)
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return None
    raise ConfigError(f"a cached image set holds file paths, Crops or encoded bytes, not {type(item).__name__}")


def box_of(item) -> tuple:
    return tuple(item.box) if isinstance(item, Crop) else NO_BOX


def signature(item) -> tuple[int, int, int] | None:
    """(size, mtime_ns, ctime_ns) of the item's file; None where there is no file to read
    (bytes in memory have their length and no times)."""
    path = file_of(item)
    if path is None:
        return (len(item), -1, -1)
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # not there, no permission, a name the OS refuses
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def digest(item) -> str:
    """SHA-256 of the item's encoded bytes, as hex (sha256sum's). Raises OSError if unreadable."""
    path = file_of(item)
    if path is None:
        return hashlib.sha256(bytes(item)).hexdigest()
    return file_digest(path, block=1 << 20)  # hashlib releases the GIL: threads hash in parallel


@dataclass
class Record:
    """What a cache holds per row (in the cache's row order): featx.extract.cache.DescriptorCache.record()."""

    ids: list
    paths: list
    boxes: np.ndarray  # (n, 4)
    sizes: np.ndarray  # (n, 2) upright (h, w), -1s unknown
    signatures: np.ndarray  # (n, 3) int64, NO_FILE where the file was not there
    digests: np.ndarray  # (n,) bytes: hex SHA-256, b"" where unknown (no file, or a cache made before 0.6)
    errors: np.ndarray  # (n,) bytes, b"" where the image did not fail
    error_kinds: np.ndarray  # (n,) uint8: NO_ERROR, DETERMINISTIC or TRANSIENT
    legacy: bool  # made before featx recorded identities (0.2.0-0.5.0): digests all unknown

    def __len__(self):
        return len(self.ids)

    @classmethod
    def blank(cls, ids) -> "Record":
        """Rows of images nothing is known of yet: no file, no size, no failure."""
        n = len(ids)
        return cls(list(ids), [""] * n, np.tile(NO_BOX, (n, 1)).astype(np.int32), np.full((n, 2), -1, np.int32),
                   np.tile(NO_FILE, (n, 1)).astype(np.int64), np.full(n, b"", "S64"), np.full(n, b"", "S240"),
                   np.zeros(n, np.uint8), False)

    def extended(self, ids) -> "Record":
        """This record with blank rows for these ids appended (a copy)."""
        more = Record.blank(ids)
        return Record(self.ids + more.ids, self.paths + more.paths,
                      *(np.concatenate([getattr(self, k), getattr(more, k)]).astype(getattr(more, k).dtype)
                        for k in ("boxes", "sizes", "signatures", "digests", "errors", "error_kinds")),
                      self.legacy)

    def take(self, rows) -> "Record":
        """The record of these rows only, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Record([self.ids[i] for i in rows], [self.paths[i] for i in rows], self.boxes[rows],
                      self.sizes[rows], self.signatures[rows], self.digests[rows], self.errors[rows],
                      self.error_kinds[rows], self.legacy)


@dataclass
class Survey:
    """The image set now, row by row in the set's order, and how it compares with the record."""

    state: np.ndarray  # (n,) NEW, SAME, TOUCHED (same bytes, new signature or path) or CHANGED
    where: np.ndarray  # (n,) the row in the cache, -1 for NEW
    signatures: np.ndarray  # (n, 3) now
    digests: np.ndarray  # (n,) bytes now (b"" where not hashed: SAME rows keep the record's)
    sizes: np.ndarray  # (n, 2) upright sizes read now (-1s where not read or unreadable)
    errors: dict  # {row: reason} images that cannot be read now (header read)
    transient: set  # rows of `errors` whose failure may pass (not found, I/O error)
    retry: np.ndarray  # (n,) bool: failed rows to try again (failure transient, or asked)
    hashed: int = 0  # files read and hashed by this survey

    @property
    def changed(self) -> np.ndarray:
        return np.flatnonzero(self.state == CHANGED)

    @property
    def new(self) -> np.ndarray:
        return np.flatnonzero(self.state == NEW)


def survey(items, ids, record: Record | None, retry_failed: bool = False, read_sizes: bool = True,
           workers: int = 4, progress: bool = False, rows=None) -> Survey:
    """Compare the image set (items, ids) with a cache's record (None: there is no cache yet).

    Every file is stat'ed; those whose path or signature differ from the record (and, once,
    all of a pre-0.6 cache's) are hashed. read_sizes: read the image header of every row whose
    descriptors will be computed (new, changed, retried), as the writer needs; a reader passes
    False. rows: look at these rows of the set only (the rows a reader will use).
    """
    from tqdm.auto import tqdm

    n = len(items)
    rows = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    index = {} if record is None else {id_: r for r, id_ in enumerate(record.ids)}
    where = np.asarray([index.get(i, -1) for i in ids], dtype=np.int64)
    state = np.full(n, SAME, np.int8)
    sigs = np.full((n, 3), -1, np.int64)
    digests = np.full(n, b"", dtype="S64")
    sizes = np.full((n, 2), -1, np.int32)
    retry = np.zeros(n, bool)
    by_digest = np.zeros(n, bool)  # to be decided by the file's digest (a legacy row's: its size)
    for i in rows:
        item, r = items[i], where[i]
        now = signature(item)
        sigs[i] = NO_FILE if now is None else now
        if r < 0:
            state[i] = NEW
            continue
        rec_sig, path = tuple(record.signatures[r]), file_of(item)
        failed = bool(record.errors[r])
        if tuple(record.boxes[r]) != box_of(item):
            state[i] = CHANGED  # another crop of the image
        elif now is None:  # no file now: still missing (a recorded failure), or gone
            state[i] = SAME if failed and (record.legacy or rec_sig == NO_FILE) else CHANGED
        elif record.legacy or rec_sig != now or path is None or record.paths[r] != path:
            by_digest[i] = True  # (bytes in memory, path None, have no times: always hashed)
        elif not record.digests[r]:  # its bytes could not be read: a failed row tries again
            state[i] = TOUCHED if failed else CHANGED
        if failed and state[i] != CHANGED and (
                retry_failed or record.legacy or record.error_kinds[r] == TRANSIENT):
            retry[i] = True
    # What is read: the bytes of every new, changed or undecided file, and the header of every
    # row whose descriptors are to be computed; a row with neither a size nor a failure on
    # record (a run killed between a row's reset and its size) gets its size too.
    known = np.zeros(n, bool)
    if record is not None:
        has = where >= 0
        known[has] = (record.sizes[where[has], 0] >= 0) | (record.errors[where[has]] != b"")
    hash_it = np.zeros(n, bool)
    hash_it[rows] = (state[rows] != SAME) | by_digest[rows]
    hash_it &= sigs[:, 0] >= 0
    size_it = np.zeros(n, bool)
    if read_sizes:
        size_it[rows] = (state[rows] != SAME) | retry[rows] | by_digest[rows] | ~known[rows]
    errors, transient = {}, set()

    def one(i):
        out = {}
        if size_it[i]:  # first: its reasons say best what is wrong (not an image, a directory, ...)
            try:
                out["size"] = read_size(items[i], i)
            except ImageError as e:
                out["error"] = e
            except Exception as e:  # a decoder bug is this image's failure, not the run's
                out["error"] = ImageError(f"{name_of(items[i], i)}: cannot read ({type(e).__name__}: {e})")
        if hash_it[i]:
            try:
                out["digest"] = digest(items[i]).encode()
            except OSError as e:
                out.setdefault("error", ImageError(f"{name_of(items[i], i)}: cannot read ({e.strerror or e})",
                                                   transient=True))
        return i, out

    look = np.flatnonzero(hash_it | size_it)
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(
            total=len(look), desc="checking image files", unit="img", leave=False,
            disable=not progress or len(look) < 200) as bar:
        for i, out in pool.map(one, look):
            bar.update()
            digests[i] = out.get("digest", b"")
            if "size" in out:
                sizes[i] = out["size"]
            if "error" in out:
                errors[int(i)] = str(out["error"])
                if out["error"].transient:
                    transient.add(int(i))
            if not by_digest[i]:
                continue
            r = where[i]
            if record.legacy:  # no digest on record: the header's size must still be the record's
                same = (bool(record.errors[r]) if "error" in out  # failing still, as it did
                        else record.sizes[r][0] < 0 or "size" not in out or tuple(out["size"]) == tuple(record.sizes[r]))
            else:
                same = "digest" in out and out["digest"] == bytes(record.digests[r])
            state[i] = TOUCHED if same else CHANGED
            retry[i] &= same
    return Survey(state, where, sigs, digests, sizes, errors, transient, retry, int(hash_it.sum()))


def check_current(cache, items, ids, rows, hint: str, log=print) -> None:
    """Refuse (CacheError, with `hint`: the command that recomputes them) a cache's descriptors
    of images of the set (among `rows`) that changed or are gone since they were computed. A
    cache made before featx 0.6 records no images: `log` says so, and nothing is refused."""
    if not cache.identified:
        log(f"note: {cache.path} was written by featx {cache.attrs.get('featx_version')}, before caches "
            "recorded each image's identity, so changed images cannot be told; featx extract "
            "records them (recomputing nothing)")
        return
    stale = stale_rows(items, ids, cache.record(), rows)
    if len(stale):
        raise CacheError(f"{cache.path}: {len(stale)} image(s) changed or gone since their {label_of(cache.attrs.get('net'))} "
                         f"descriptors were computed (first: {ids[stale[0]]}); compute them again with:\n  {hint}")


def stale_rows(items, ids, record: Record, rows) -> np.ndarray:
    """Rows of the set (among `rows`) whose image is no longer what its descriptors were
    computed from (changed or gone); nothing is written. A pre-0.6 record tells nothing."""
    if record.legacy:
        return np.empty(0, np.int64)
    return survey(items, ids, record, read_sizes=False, rows=rows).changed
