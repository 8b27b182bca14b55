"""Bring descriptor caches up to date: the one extraction driver behind `featx extract`,
`featx svm --extract`, `featx reproduce`, `featx demo` and the Ray engine.

For each net: take the cache's lock (before anything slow, so a second writer is refused at
once), remove what an interrupted run left, build the extractor (weights load here), check the
file's provenance or create it, verify the rows already done against their checksums (damaged
ones are recomputed), then run the plan's forward passes and commit each batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from filelock import FileLock, Timeout

from . import cache as fmt
from .errors import CacheError, ConfigError, ImageError
from .images import read_sizes, target_size


@dataclass
class Summary:
    path: Path
    computed: int = 0
    reused: int = 0
    failed: int = 0
    repaired: int = 0  # rows found damaged (checksum or status byte) and recomputed
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # row -> reason

    def __str__(self):
        fixed = f", repaired {self.repaired}" if self.repaired else ""
        return (f"{self.path}: computed {self.computed}, reused {self.reused}, failed {self.failed}"
                f"{fixed} (image x scale) in {self.seconds:.1f} s")


def max_rescaled_pixels() -> int:
    """Largest rescaled image (h x w at a scale Q) one forward pass may take: its first
    activations alone are 64 channels x h x w x 4 bytes, twice with the mirror. Above it the
    image is that scale's failure rather than a run that dies of memory on every retry.
    $FEATX_MAX_RESCALED_PIXELS, default 12 million (Q = 768 on a 1:5 panorama is 3 million)."""
    import os
    return int(os.environ.get("FEATX_MAX_RESCALED_PIXELS", 12_000_000))


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
    longer, so that fmt.being_written's probe of the lock never refuses a writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(fmt.lock_file(path)))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        raise CacheError(f"{path} is being written by another featx process (lock {lock.lock_file});"
                         " wait for it to finish or stop it") from None
    return lock


def extract_to_cache(extractor, items: Sequence, ids: Sequence[str], path, name: str = "",
                     rows=None, strict: bool = False, progress: bool = True,
                     on_batch: Callable | None = None) -> Summary:
    """Compute what `path` lacks for `items`, at every scale of the extractor.

    extractor: an Extractor (or featx.distributed.RayExtractor), or a function returning one,
        called once the cache's lock is held (so a refused second writer loads no weights).
    items: what to read per image (paths or Crops); ids: their stable names (stored, checked).
    rows: restrict the work to these rows (e.g. the splits a protocol reads); the file always
        spans all items.
    strict: stop at the first unreadable image (after saving what is done).
    on_batch: called with each committed Batch (progress reporting).
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    items = list(items)
    if len(items) != len(ids):
        raise ConfigError("items and ids differ in length")
    if not ids:
        raise CacheError("the image set is empty: nothing to extract")
    if len(set(ids)) != len(ids):
        raise CacheError("image ids must be unique")
    try:
        lock = lock_cache(path)
    except (NotADirectoryError, FileExistsError, PermissionError) as e:
        raise CacheError(f"cannot write a cache at {path}: {e.strerror or e}") from None
    try:
        fmt.remove_stale_temporaries(path)
        ex = extractor if hasattr(extractor, "iter_batches") else extractor()
        return _extract_locked(ex, items, ids, path, name, rows, strict, progress, on_batch)
    finally:
        lock.release()


def _provenance(ex) -> dict:
    import torch
    from . import __version__
    return dict(ex.provenance(), weights_digest=ex.weights.digest, dtype=ex.dtype,
                featx_version=__version__, torch_version=torch.__version__)


def _extract_locked(ex, items, ids, path, name, rows, strict, progress, on_batch):
    start = time.perf_counter()
    provenance = _provenance(ex)
    scales = list(ex.scales)
    if path.exists():
        cache = fmt.DescriptorCache(path)
        diff = fmt.provenance_diff(cache.attrs, provenance, ex.weights.file_checksum)
        if diff:
            raise CacheError(f"{path} was computed with other settings, refusing to mix:\n  "
                             + "\n  ".join(diff) + "\nuse another --cache-dir / --out, or delete the file")
        if cache.attrs.get("ids_sha256") != fmt.ids_digest(ids):
            raise CacheError(f"{path} holds another image set ({len(cache)} images, "
                             f"'{cache.attrs.get('image_set')}'); this run has {len(ids)}")
        new = [q for q in scales if q not in cache.scales]
        if new or not cache.checksummed:
            fmt.extend(path, new, ex.dim)
    else:
        sizes, errors = read_sizes(items, ex.workers, progress)
        if strict and errors:
            raise ImageError(next(iter(errors.values())))
        fmt.create(path, items, ids, sizes, errors, provenance, scales, name)

    summary = Summary(path)
    wanted = np.zeros(len(ids), bool)
    wanted[np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)] = True
    # Damaged rows (a status byte of unknown value, bytes that fail their checksum) go back to
    # 'to do' first, so this run recomputes exactly them.
    with fmt.Writer(path) as w:
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
            summary.reused += int(((status == fmt.DONE) & wanted).sum())
            too_big = {i: r for i, r in oversized(sizes, q).items() if status[i] == fmt.TODO}
            if too_big:
                w.commit(q, np.empty(0, np.int64), np.empty((0, ex.dim), np.float32), too_big)
                status = w.status(q)
            skip[q] = status != fmt.TODO
        # Each batch's wall time (reading, resizing, forward passes) goes into the file with it,
        # so `featx info` can tell what a scale cost across interruptions and resumes.
        tick = time.perf_counter()
        for batch in ex.iter_batches(items, sizes, scales, skip):
            w.commit(batch.scale, batch.indices, batch.descriptors, batch.failures,
                     seconds=time.perf_counter() - tick)
            summary.computed += len(batch.indices)
            if on_batch is not None:
                on_batch(batch)
            if strict and batch.failures:
                raise ImageError(next(iter(batch.failures.values())))
            tick = time.perf_counter()
        errs = w.errors()
        for q in scales:
            bad = np.flatnonzero((w.status(q) == fmt.FAILED) & wanted)
            summary.failures.update({int(i): errs[i].decode(errors="replace") for i in bad})
            summary.failed += len(bad)
    summary.seconds = time.perf_counter() - start
    return summary


def update_caches(nets, items, ids, name: str, path_for: Callable[[str], Path], weights: dict,
                  preprocess: dict | None = None, rows=None, strict: bool = False, progress: bool = True,
                  engine: str = "local", log: Callable = print, **extractor_options) -> list[Summary]:
    """Bring one image set's caches up to date for each net: path_for(net) is its file,
    weights[net] its weight source. engine "local" or "ray" (Ray options go in
    extractor_options, as for RayExtractor)."""
    if engine == "ray":
        from .distributed import RayExtractor as Engine
    elif engine == "local":
        from .extract import Extractor as Engine
    else:
        raise ConfigError(f"engine {engine!r}: choose local or ray")
    summaries = []
    for net in nets:
        path = Path(path_for(net))

        def build(net=net, path=path):
            ex = Engine(net, weights=weights[net], preprocess=(preprocess or {}).get(net),
                        progress=progress, **extractor_options)
            if progress:
                known = f" [{ex.weights.known_as}]" if ex.weights.known_as else ""
                log(f"Net-{net} ({ex.weights.source} weights{known}, {ex.preprocess.name} preprocessing) "
                    f"on {ex.device}, Q = {', '.join(map(str, ex.scales))} -> {path}")
            return ex

        summaries.append(extract_to_cache(build, items, ids, path, name=name, rows=rows,
                                          strict=strict, progress=progress))
    return summaries
