"""Bring descriptor caches up to date: the one extraction driver behind `featx extract`,
`featx svm --extract`, `featx reproduce`, `featx demo` and the Ray engine.

For each net: take the cache's lock (before anything slow, so a second writer is refused at
once), remove what an interrupted run left, build the extractor (weights load here), check the
file's provenance or create it, verify the rows already done against their checksums (damaged
ones are recomputed), then run the plan's forward passes and commit each batch.
"""
from __future__ import annotations

import errno
import inspect
import shlex
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from filelock import FileLock, Timeout

from .. import __version__, paths
from ..data.images import target_size
from ..errors import CacheError, ConfigError, ImageError
from ..net.kernels import cpu_info
from ..net.specs import label_of
from ..paths import cache_dir as resolve_cache_dir
from .cache import (DONE, FAILED, FORMAT, TODO, DescriptorCache, Writer, error_column, lock_file, provenance_diff,
                    remove_stale_temporaries, write_file)
from .engine import Engine
from .identity import (CHANGED, DETERMINISTIC, NO_ERROR, SAME, TOUCHED, TRANSIENT, Record, Survey, box_of, file_of,
                       survey)


@dataclass
class Summary:
    path: Path
    computed: int = 0
    reused: int = 0
    failed: int = 0
    repaired: int = 0  # rows found damaged (checksum or status byte) and recomputed
    added: int = 0  # images an existing file had no row for (rows appended)
    changed: int = 0  # images whose file changed since their rows were computed (recomputed)
    retried: int = 0  # failed images tried again (failure transient, file changed, or asked)
    absent: int = 0  # rows of images not in this image set (kept, not used)
    upgraded: bool = False  # a cache made before featx 0.6 that recorded its images this run
    hashed: int = 0  # image files read and hashed to check them
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # row -> reason

    def __str__(self):
        fixed = f", repaired {self.repaired}" if self.repaired else ""
        notes = [f"recomputed {self.changed} changed image{'s' * (self.changed != 1)}" if self.changed else "",
                 f"{self.added} new image{'s' * (self.added != 1)}" if self.added else "",
                 f"retried {self.retried} failed image{'s' * (self.retried != 1)}" if self.retried else "",
                 f"kept {self.absent} row{'s' * (self.absent != 1)} of images not in this set (featx info "
                 f"--prune drops those whose files are gone)" if self.absent else "",
                 "recorded each image's identity (a cache from featx 0.5 or older: nothing recomputed "
                 "for it)" if self.upgraded else ""]
        notes = "; ".join(n for n in notes if n)
        return (f"{self.path}: computed {self.computed}, reused {self.reused}, failed {self.failed}"
                f"{fixed} (image x scale) in {self.seconds:.1f} s" + (f"; {notes}" if notes else ""))


def max_rescaled_pixels() -> int:
    """Largest rescaled image (h x w at a scale Q) one forward pass may take: its first
    activations alone are 64 channels x h x w x 4 bytes, twice with the mirror. Above it the
    image is that scale's failure rather than a run that dies of memory on every retry.
    $FEATX_MAX_RESCALED_PIXELS, default 12 million (Q = 768 on a 1:5 panorama is 3 million)."""
    return paths.max_rescaled_pixels()


def oversized(sizes, q: int, rows=None) -> dict[int, str]:
    """{row: reason} for images whose rescaled size at Q is over the pixel budget."""
    budget = max_rescaled_pixels()
    out = {}
    for i in (range(len(sizes)) if rows is None else rows):
        hw = sizes[i]
        if hw is None:
            continue
        h, w = target_size(tuple(hw), q)
        if h * w > budget:
            out[int(i)] = (f"rescaled to {w}x{h} at Q={q} ({h * w / 1e6:.1f} million pixels), over the "
                           f"{budget / 1e6:g} million pixel budget of one forward pass "
                           "(FEATX_MAX_RESCALED_PIXELS)")
    return out


def lock_cache(path: Path) -> FileLock:
    """The writer's lock (<file>.lock): a second writer is refused. It waits a second, no
    longer, so that cache.being_written's probe of the lock never refuses a writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file(path)))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        raise CacheError(f"{path} is being written by another featx process (lock {lock.lock_file});"
                         " wait for it to finish or stop it") from None
    return lock


ENGINE_OPTIONS = set(inspect.signature(Engine).parameters)  # what every engine takes


def as_engine(extractor) -> Engine:
    """An engine, or a function making one (called now)."""
    return extractor if isinstance(extractor, Engine) else extractor()


def extract_to_cache(extractor: "Engine | Callable[[], Engine]", items: Sequence, ids: Sequence[str], path, name: str = "",
                     rows=None, strict: bool = False, progress: bool = True,
                     on_batch: Callable | None = None, source: str = "",
                     retry_failed: bool = False) -> Summary:
    """Compute what `path` lacks for `items`, at every scale of the extractor.

    extractor: an Extractor (or featx.extract.distributed.RayExtractor), or a function returning one,
        called once the cache's lock is held (so a refused second writer loads no weights).
    items: what to read per image (paths or Crops); ids: their stable names. A row belongs to
        an image by its id: images new to the file get rows, rows of images not in `items` are
        kept unused, and a row whose file changed since (featx.extract.identity) is recomputed.
    rows: restrict the work to these rows of `items` (e.g. the splits a protocol reads).
    name, source: the image set's name and where it lives (recorded in the file).
    strict: stop at the first unreadable image (after saving what is done).
    retry_failed: try every failed image again (by default only those whose failure may pass,
        such as a file not found, or whose file changed).
    on_batch: called with each committed Batch (progress reporting).
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    items = list(items)
    if len(items) != len(ids):
        raise ConfigError("items and ids differ in length")
    if not ids:
        raise CacheError("the image set is empty: nothing to extract")
    check_unique(ids)
    try:
        lock = lock_cache(path)
    except OSError as e:
        if path.is_file() and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return _check_read_only(extractor, items, ids, path, rows, progress, retry_failed, e)
        raise CacheError(f"cannot write a cache at {path}: {e.strerror or e}") from None
    try:
        remove_stale_temporaries(path)
        ex = as_engine(extractor)
        return _extract_locked(ex, items, ids, path, name, source, rows, strict, progress, on_batch,
                               retry_failed)
    finally:
        lock.release()


def _check_read_only(ex, items, ids, path: Path, rows, progress, retry_failed, error: OSError) -> Summary:
    """A cache featx cannot write to (a read-only folder or file) is read: with nothing to
    compute for these images it is simply used; otherwise one line says what it lacks. Nothing
    in it is changed."""
    start = time.perf_counter()
    cache = DescriptorCache(path)
    ex = as_engine(ex)
    diff = provenance_diff(cache.attrs, _provenance(ex), ex.weights.file_checksum)
    if diff:
        raise CacheError(f"{path} was computed with other settings:\n  " + "\n  ".join(diff))
    why = f"{path} cannot be written ({error.strerror})"
    if not cache.identified:
        raise CacheError(f"{why}, and it was made by featx {cache.attrs.get('featx_version')}: its images' "
                         "identities must be recorded once (a write); make it writable, or copy it elsewhere")
    look = survey(items, ids, cache.record(), retry_failed=retry_failed, workers=ex.workers, progress=progress)
    wanted = look.where if rows is None else look.where[np.asarray(rows, dtype=np.int64)]
    lacking = [f"{len(look.new)} new image(s)" if len(look.new) else "",
               f"{len(look.changed)} changed image(s)" if len(look.changed) else "",
               f"{int(look.retry.sum())} failed image(s) to retry" if look.retry.any() else ""]
    missing = [q for q in ex.scales if q not in cache.scales]
    lacking.append(f"no descriptors at Q = {', '.join(map(str, missing))}" if missing else "")
    summary = Summary(path)
    for q in [q for q in ex.scales if q in cache.scales]:
        status = cache.status(q)[wanted[wanted >= 0]]
        todo = int((status == TODO).sum())
        lacking.append(f"{todo} image(s) to compute at Q={q}" if todo else "")
        summary.reused += int((status == DONE).sum())
        summary.failed += int((status == FAILED).sum())
    lacking = [x for x in lacking if x]
    if lacking:
        raise CacheError(f"{why}, and it lacks what was asked ({'; '.join(lacking)}); make it writable or give "
                         "another --cache-dir. Nothing in it was changed")
    errs = cache.errors()
    summary.failures = {int(r): errs.get(cache.ids[r], "") for r in wanted if any(cache.status(q)[r] == FAILED for q in ex.scales)}
    summary.hashed, summary.seconds = look.hashed, time.perf_counter() - start
    return summary


def check_unique(ids: Sequence[str]) -> None:
    seen = {}
    for k, i in enumerate(ids):
        if i in seen:
            raise CacheError(f"image ids must be unique: {i!r} is image #{seen[i] + 1} and #{k + 1}")
        seen[i] = k


def device_name(ex=None, device=None) -> str:
    """What extraction times are measured on: the CPU's model, or the GPU's name (an engine's
    device, or a device given); "" where unknown (a Ray cluster's actors)."""
    device = str(getattr(ex, "device", device) or "")
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(torch.device(device))
    if device.startswith("cpu"):
        return cpu_info().model
    return ""


def _provenance(ex) -> dict:
    return dict(ex.provenance(), weights_digest=ex.weights.digest, dtype=ex.dtype,
                featx_version=__version__, torch_version=version("torch"))


class Planned(Engine):
    """An engine known by what it computes before it exists (an Engine's options; its weights
    resolved, not read). `build` makes the engine (importing torch, reading the weights) the
    first time a row needs computing, so a cache that is complete is checked in a fraction of a
    second."""

    def __init__(self, build: Callable[[], Engine], net, **options):
        super().__init__(net, **options)
        self._build, self._engine = build, None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._build()
        return self._engine

    def _read_weights(self):
        return self.engine.weights

    def iter_batches(self, *args, **kwargs):
        return self.engine.iter_batches(*args, **kwargs)


def _record_images(path: Path, cache, record, items, ids, look: Survey, provenance: dict, scales, dim: int,
                   name: str, source: str, summary: Summary) -> np.ndarray:
    """Bring the file's per-row record up to what the survey saw; returns each image's row.

    New images, new scales, new paths and a pre-0.6 file's first identities change the file's
    structure: one atomic rewrite. Otherwise in place, in an order a kill cannot exploit: the
    rows of changed images are 'to do' before their new identity is on record (a kill in
    between leaves rows that are simply computed again)."""
    old = record if record is not None else Record.blank([])
    new = look.new
    where = look.where.copy()
    where[new] = len(old) + np.arange(len(new))
    full = old.extended([ids[i] for i in new])
    # Paths and boxes are variable-length or rarely change: recorded in a rewrite only.
    moved = [i for i in np.flatnonzero((look.state == CHANGED) | (look.state == TOUCHED))
             if old.paths[where[i]] != (file_of(items[i]) or "") or tuple(old.boxes[where[i]]) != box_of(items[i])]
    for i in [*moved, *new]:
        full.paths[where[i]], full.boxes[where[i]] = file_of(items[i]) or "", box_of(items[i])
    # What the survey read: signatures of every row it looked at, digests of the files it hashed
    # (SAME rows keep theirs), sizes and failures of the headers it read.
    failed = np.fromiter(look.errors, np.int64, len(look.errors))
    sized = np.union1d(np.flatnonzero(look.sizes[:, 0] >= 0), failed)
    looked = np.union1d(np.flatnonzero((look.state != SAME) | look.retry), sized)
    hashed = looked[look.state[looked] != SAME]
    full.signatures[where[looked]] = look.signatures[looked]
    full.digests[where[hashed]] = look.digests[hashed]
    full.sizes[where[sized]] = look.sizes[sized]
    full.errors[where[sized]] = error_column([look.errors.get(int(i), "") for i in sized])
    full.error_kinds[where[sized]] = [TRANSIENT if i in look.transient else DETERMINISTIC if i in look.errors
                                      else NO_ERROR for i in sized.tolist()]
    summary.changed += len(look.changed)
    summary.retried += int(look.retry.sum())
    summary.hashed += look.hashed

    def statuses(before: dict, n: int) -> tuple[dict, dict]:
        """Every row's status at every scale: with changed and retried rows reset, then with the
        rows that cannot be read now failed (at a new scale, every image that failed is)."""
        reset, final = {}, {}
        for q in dict.fromkeys([*before, *scales]):
            s = np.zeros(n, np.uint8)
            if q in before:
                s[:len(before[q])] = before[q]
            else:
                s[full.errors != b""] = FAILED
            s[where[look.changed]] = TODO
            retry = where[look.retry]
            s[retry] = np.where(s[retry] == FAILED, TODO, s[retry])
            reset[q], final[q] = s, s.copy()
            final[q][where[failed]] = FAILED
        return reset, final

    before = {q: cache.status(q) for q in cache.scales} if cache is not None else {}
    reset, final = statuses(before, len(full))
    if cache is None or len(new) or set(scales) - set(cache.scales) or not cache.identified or moved:
        attrs = dict(cache.attrs) if cache is not None else dict(provenance,
                                                                 created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        attrs.pop("ids_sha256", None)  # 0.2.0-0.5.0 tied a file to one list of ids
        if cache is not None and not cache.identified:
            summary.upgraded = True
            attrs["identities_added"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if not cache.checksummed:
                attrs["checksums_added"] = attrs["identities_added"]
        attrs.update({"format": "featx-descriptors", "format_version": FORMAT, "n_images": len(full),
                      "image_set": name or attrs.get("image_set", ""), "source": source or attrs.get("source", "")})
        write_file(path, full, final, dim, attrs,
                       origin=None if cache is None else np.concatenate([np.arange(len(old)), np.full(len(new), -1)]))
        summary.added += len(new) if cache is not None else 0
        return where
    r = where[looked]
    with Writer(path) as w:
        w.set_status({q: s for q, s in reset.items() if not np.array_equal(s, before[q])})
        w.set_rows(r, signatures=full.signatures[r], digests=full.digests[r], sizes=full.sizes[r],
                   errors=full.errors[r], error_kinds=full.error_kinds[r])
        w.set_status({q: s for q, s in final.items() if not np.array_equal(s, reset[q])})
    return where


def _extract_locked(ex, items, ids, path, name, source, rows, strict, progress, on_batch, retry_failed):
    start = time.perf_counter()
    provenance = _provenance(ex)
    scales = list(ex.scales)
    cache = None
    if path.exists():
        cache = DescriptorCache(path)
        diff = provenance_diff(cache.attrs, provenance, ex.weights.file_checksum)
        if diff:
            raise CacheError(f"{path} was computed with other settings, refusing to mix:\n  "
                             + "\n  ".join(diff) + "\nuse another --cache-dir / --out, or delete the file")
    record = cache.record() if cache is not None else None
    look = survey(items, ids, record, retry_failed=retry_failed, workers=ex.workers, progress=progress)
    if strict and look.errors:
        raise ImageError(next(iter(look.errors.values())))
    summary = Summary(path)
    where = _record_images(path, cache, record, items, ids, look, provenance, scales, ex.dim, name, source, summary)
    n = (len(cache) if cache is not None else 0) + len(look.new)
    summary.absent = n - len(ids)
    # The extractor reads the file's rows: an image set's images where they are, rows of
    # images not in the set left out (size None).
    row_items = [None] * n
    for i, r in enumerate(where):
        row_items[r] = items[i]
    wanted = np.zeros(n, bool)
    wanted[where if rows is None else where[np.asarray(rows, dtype=np.int64)]] = True

    # Damaged rows (a status byte of unknown value, bytes that fail their checksum) go back to
    # 'to do' first, so this run recomputes exactly them.
    with Writer(path) as w:
        summary.repaired += sum(w.repair(scales).values())
        for q in scales:
            bad = w.corrupt(q, np.flatnonzero(wanted))
            w.reset(q, bad)
            summary.repaired += len(bad)
        # Only the wanted rows are planned (a split's images batch among themselves).
        sizes = [tuple(s) if s[0] >= 0 and keep else None for s, keep in zip(w.sizes(), wanted)]
        skip = {}
        for q in scales:
            status = w.status(q)
            summary.reused += int(((status == DONE) & wanted).sum())
            too_big = {i: r for i, r in oversized(sizes, q).items() if status[i] == TODO}
            if too_big:
                w.commit(q, np.empty(0, np.int64), np.empty((0, ex.dim), np.float32), too_big)
                status = w.status(q)
            skip[q] = status != TODO
        # Each batch's wall time (reading, resizing, forward passes) goes into the file with it,
        # so `featx info` can tell what a scale cost across interruptions and resumes.
        tick = time.perf_counter()
        readable = np.asarray([s is not None for s in sizes], bool)
        pending = any((readable & ~skip[q]).any() for q in scales)  # else no net is needed
        timed_on = device_name(getattr(ex, "engine", ex)) if pending else ""
        for batch in ex.iter_batches(row_items, sizes, scales, skip) if pending else ():
            w.commit(batch.scale, batch.indices, batch.descriptors, batch.failures,
                     seconds=time.perf_counter() - tick, transient=batch.transient, timed_on=timed_on)
            summary.computed += len(batch.indices)
            if on_batch is not None:
                on_batch(batch)
            if strict and batch.failures:
                raise ImageError(next(iter(batch.failures.values())))
            tick = time.perf_counter()
        errs = w.errors()
        for q in scales:
            bad = np.flatnonzero((w.status(q) == FAILED) & wanted)
            summary.failures.update({int(i): errs[i].decode(errors="replace") for i in bad})
            summary.failed += len(bad)
    summary.seconds = time.perf_counter() - start
    return summary


def prune(path) -> int:
    """Remove the rows of images whose file no longer exists (DescriptorCache.gone), in one
    atomic rewrite under the writer's lock; returns how many rows went."""
    path = Path(path)
    lock = lock_cache(path)
    try:
        cache = DescriptorCache(path)
        if not cache.identified:
            raise CacheError(f"{path} was written by featx {cache.attrs.get('featx_version')} and records no "
                             "image files yet: run featx extract on its image set first (it records them, "
                             "recomputing nothing), then prune")
        gone = set(cache.gone())
        if not gone:
            return 0
        keep = np.asarray([r for r, i in enumerate(cache.ids) if i not in gone], dtype=np.int64)
        attrs = dict(cache.attrs, n_images=len(keep), pruned=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_file(path, cache.record().take(keep), {q: cache.status(q)[keep] for q in cache.scales},
                       cache.dim, attrs, origin=keep)
        return len(gone)
    finally:
        lock.release()


def extract_command(data, nets, scales, weights: dict, preprocess: dict | None = None, dtype: str = "float32",
                    cache_dir=None, root=None) -> str:
    """The featx extract command that computes these descriptors of an image set (a Dataset or
    ImageSet: its `cli` names it) where featx.paths.cache_path finds them, for hints."""
    parts = ["featx", "extract", *data.cli, "--net", ",".join(nets), "--scales", ",".join(map(str, scales)),
             "--weights", ",".join(f"{n}={weights.get(n, 'torchvision')}" for n in nets)]
    given = {n: p for n, p in (preprocess or {}).items() if p and n in nets}
    if given:
        parts += ["--preprocess", ",".join(f"{n}={p}" for n, p in given.items())]
    where = resolve_cache_dir(cache_dir, root)
    if where.resolve() != resolve_cache_dir(None, root if "--root" in data.cli else None).resolve():
        parts += ["--cache-dir", str(where.resolve())]
    if dtype != "float32":
        parts += ["--dtype", dtype]
    return shlex.join(parts)


def update_caches(nets, items, ids, name: str, path_for: Callable[[str], Path], weights: dict,
                  preprocess: dict | None = None, rows=None, strict: bool = False, progress: bool = True,
                  engine: str = "local", log: Callable = print, source: str = "", retry_failed: bool = False,
                  **extractor_options) -> list[Summary]:
    """Bring one image set's caches up to date for each net: path_for(net) is its file,
    weights[net] its weight source. engine "local" or "ray" (Ray options go in
    extractor_options, as for RayExtractor). source, retry_failed: as for extract_to_cache."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine {engine!r}: choose local or ray")
    summaries = []
    for net in nets:
        path = Path(path_for(net))

        def build(net=net, path=path):
            if engine == "ray":
                from .distributed import RayExtractor as Engine
            else:
                from .extractor import Extractor as Engine
            ex = Engine(net, weights=weights[net], preprocess=(preprocess or {}).get(net),
                        progress=progress, **extractor_options)
            if progress:
                known = f" [{ex.weights.known_as}]" if ex.weights.known_as else ""
                log(f"{label_of(net)} ({ex.weights.source} weights{known}, {ex.preprocess.name} preprocessing) "
                    f"on {ex.device}, Q = {', '.join(map(str, ex.scales))} -> {path}")
            return ex

        planned = Planned(build, net, weights=weights[net], preprocess=(preprocess or {}).get(net),
                          **{k: v for k, v in extractor_options.items() if k in ENGINE_OPTIONS})
        summaries.append(extract_to_cache(planned, items, ids, path, name=name, rows=rows, strict=strict,
                                          progress=progress, source=source, retry_failed=retry_failed))
    return summaries
