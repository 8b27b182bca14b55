"""Extraction on a Ray cluster (Ray Data): the local engine's plan, numbers and cache, more machines.

How the work is divided. The driver (the process running `featx extract --engine ray`) reads
every image's size, makes the local engine's plan (images of one rescaled shape batched,
`batch_size` per forward pass; see featx.extract.engine.Engine.plan) and cuts it, scale by scale, into shards of
`batches_per_shard` forward passes, each a list of image indices. Each shard is one Ray Data
task, run by a pool of long-lived actors that each hold one loaded net: the weights travel once
through Ray's object store, so workers need the images (same paths on every node: a shared
filesystem) and featx installed, but no weight files. Descriptors stream back to the driver,
the cache's only writer, which commits them row by row exactly as the local engine does. So
the file is the one a single-machine run writes, a rerun computes only the rows not done,
images that fail to decode are recorded, and a worker that dies is restarted by Ray while its
shard runs again (Ray Data retries actor tasks; rows that arrive twice are written once).

`with_descriptors()` is the same worker for people who already have a Ray Dataset of images.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.images import read_sizes
from ..errors import ConfigError, EngineError
from ..net.specs import check_scales, get_spec
from ..net.weights import Weights, load_weights
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_NET, DEFAULT_SCALES
from ..paths import ray_address
from .engine import Engine
from .extractor import Batch, Extractor, WorkBar

INSTALL_HINT = "pip install 'featx[ray]' (or pip install 'ray[data]')"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as e:
        raise ConfigError(f"the Ray engine needs Ray Data, which is not installed ({e}); "
                          f"{INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None):
    """The Ray module, connected: to the running instance if this process already called
    ray.init, else to `address` ("auto": the cluster this machine belongs to; "ray://host:port":
    a remote cluster through Ray Client), else to $RAY_ADDRESS, else to a new local instance."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    options = dict(log_to_driver=False, logging_level=logging.ERROR)
    local = ray_address(address) is None  # a new instance of our own, not a cluster
    if local:
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except Exception as e:  # ConnectionError, a bad address, a cluster of another version...
        where = ray_address(address) or "a new local instance"
        raise ConfigError(f"cannot start or reach Ray at {where}: {type(e).__name__}: {e}") from None
    if local:
        _shut_down_on_sigterm()
        _start_watchdog()
    return ray


def _shut_down_on_sigterm() -> None:
    """A local Ray instance this process started goes with it: Ctrl-C and a normal exit run
    Ray's own atexit shutdown; SIGTERM (kill, a scheduler's stop) is turned into an exit that
    runs it too. (SIGKILL runs nothing in the process: featx.extract.watchdog handles that.)"""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


_WATCHDOG = None


def _start_watchdog() -> None:
    """kill -9 of this process: featx.extract.watchdog ends the Ray processes it leaves (Linux only).
    The watchdog reads a pipe whose write end stays open here, unshared, until this process ends."""
    global _WATCHDOG
    if not sys.platform.startswith("linux") or _WATCHDOG is not None:
        return
    read_end, write_end = os.pipe()  # not inheritable: Ray's processes never hold it
    try:
        _WATCHDOG = (subprocess.Popen([sys.executable, "-m", "featx.extract.watchdog", str(os.getpid())],
                                      stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True), write_end)
    except OSError:
        os.close(write_end)  # no watchdog: Ray's own fate-sharing is what is left
    finally:
        os.close(read_end)


def _check_device(device, gpus_per_worker):
    if str(device).startswith("cuda") and not gpus_per_worker:
        raise ConfigError(f"device {device!r} on Ray needs --gpus-per-worker (e.g. 1): Ray "
                          "hides GPUs from workers that did not ask for one")


def worker_resources(ray, num_workers=None, gpus_per_worker=0.0, cpus_per_worker=None):
    """(actors, CPUs per actor). GPU actors: one per `gpus_per_worker` GPUs of the cluster,
    a few CPUs each for decoding. CPU actors: each gets up to 8 cores for its torch threads
    (wider actors waste less memory on copies of the net than many narrow ones)."""
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 1)), float(total.get("GPU", 0))
    if num_workers is not None and num_workers < 1:
        raise ConfigError("--num-workers must be at least 1")
    if gpus_per_worker:
        if gpus < gpus_per_worker:
            raise ConfigError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has "
                              f"{gpus:g} GPU(s)")
        n = num_workers or max(1, int(gpus // gpus_per_worker))
        return n, cpus_per_worker or max(1, min(4, cpus // n))
    if cpus_per_worker:
        return num_workers or max(1, cpus // cpus_per_worker), cpus_per_worker
    if num_workers:
        return num_workers, max(1, cpus // num_workers)
    per = max(1, min(8, cpus))
    return max(1, cpus // per), per


def _shippable(weights: Weights) -> Weights:
    """Numpy arrays go through Ray's object store without a copy per reader."""
    return replace(weights, state_dict={k: v.detach().cpu().numpy()
                                        for k, v in weights.state_dict.items()})


def _worker_extractor(weights: Weights, options: dict) -> Extractor:
    """Runs on a worker: the net, built from the shipped weights, on the worker's device."""
    import ray
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1)
    torch.set_num_threads(max(1, cpus))
    with warnings.catch_warnings():  # read-only arrays from the object store; copied by load
        warnings.simplefilter("ignore", UserWarning)
        sd = {k: torch.from_numpy(v) for k, v in weights.state_dict.items()}
    options = dict(options, workers=options.get("workers") or max(1, min(4, cpus)))
    return Extractor(weights=replace(weights, state_dict=sd), **options)


def _rows(batch: Batch, dim: int) -> dict:
    """A Batch as Ray Data rows: one per image, failures with NaN descriptors and a reason."""
    failed = np.fromiter(batch.failures, np.int64, len(batch.failures))
    rows = np.concatenate([batch.indices.astype(np.int64), failed])
    desc = np.concatenate([batch.descriptors, np.full((len(failed), dim), np.nan, np.float32)])
    errors = np.array([""] * len(batch.indices) + list(batch.failures.values()), dtype=object)
    return {"scale": np.full(len(rows), batch.scale, np.int64), "row": rows,
            "descriptor": desc, "error": errors, "transient": np.isin(rows, list(batch.transient))}


class ShardWorker:
    """Ray Data actor: computes whole shards of the driver's plan (one net, loaded once)."""

    def __init__(self, refs, options):
        import ray
        weights, self.shards, self.items = ray.get(refs)
        self.ex = _worker_extractor(weights, options)
        self.pool = ThreadPoolExecutor(self.ex.workers, thread_name_prefix="featx-load")

    def __call__(self, batch):
        for k in batch["shard"]:
            q, passes = self.shards[int(k)]
            for done in self.ex.run_passes(self.pool, self.items, q, passes):
                yield _rows(done, self.ex.dim)


class RayExtractor(Engine):
    """Runs the local engine's plan on a Ray cluster; a drop-in for extract_to_cache.

    >>> ex = RayExtractor("E", scales=(256, 384), weights="vgg19.pth", preprocess="caffe",
    ...                   address="auto", gpus_per_worker=1)
    >>> extract_to_cache(ex, items, ids, "photos/E-vgg19.h5")

    Takes Extractor's options, plus: address (see `connect`), num_workers / gpus_per_worker /
    cpus_per_worker (see `worker_resources`), batches_per_shard (forward passes per Ray task:
    a dead worker costs at most one shard). `device` is resolved on each worker ("auto": its
    GPU if it was given one). The weights load here once and are shipped to the workers.

    What the engines share is featx.extract.engine.Engine: the plan and the provenance, made
    here exactly as the local engine makes them; the nets that compute live on the workers.
    """

    def __init__(self, net=DEFAULT_NET, scales=DEFAULT_SCALES, flip=True, weights=None,
                 preprocess=None, device="auto", dtype="float32", batch_size=DEFAULT_BATCH_SIZE, workers=None,
                 progress=False, address=None, num_workers=None, gpus_per_worker=0.0,
                 cpus_per_worker=None, batches_per_shard=4):
        require_ray()
        super().__init__(net, scales, flip, weights, preprocess, dtype, batch_size, workers, progress)
        self.address = address
        self.num_workers = num_workers
        self.gpus_per_worker = float(gpus_per_worker or 0)
        self.cpus_per_worker = cpus_per_worker
        self.batches_per_shard = int(batches_per_shard)
        if self.batches_per_shard < 1:
            raise ConfigError("batches_per_shard must be at least 1")
        self.worker_device = str(device)
        _check_device(device, self.gpus_per_worker)
        self.worker_threads = workers  # decoding threads per worker (None: by its CPUs)
        loaded = load_weights(self.spec, *self._source, progress=progress)
        self._shipped = _shippable(loaded)
        self._weights = replace(loaded, state_dict={})
        self.device = f"ray ({ray_address(address) or 'local'})"

    def shards(self, sizes, scales=None, skip=None) -> list[tuple[int, list[np.ndarray]]]:
        """The plan cut into tasks: [(Q, [row indices of each forward pass])]."""
        k = self.batches_per_shard
        return [(q, passes[i:i + k]) for q, passes in self.plan(sizes, scales, skip)
                for i in range(0, len(passes), k)]

    def iter_batches(self, images: Sequence, sizes: Sequence, scales=None,
                     skip=None) -> Iterator[Batch]:
        shards = self.shards(sizes, scales, skip)
        if not shards:
            return
        ray = connect(self.address)
        n, cpus = worker_resources(ray, self.num_workers, self.gpus_per_worker, self.cpus_per_worker)
        options = dict(net=self.spec, scales=self.scales, flip=self.flip, device=self.worker_device,
                       dtype=self.dtype, batch_size=self.batch_size, workers=self.worker_threads)
        refs = [ray.put(self._shipped), ray.put(shards), ray.put(list(images))]
        ds = ray.data.from_items([{"shard": k} for k in range(len(shards))],
                                 override_num_blocks=len(shards))  # one task per shard
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False
        out = ds.map_batches(ShardWorker, batch_size=1, batch_format="numpy",
                             fn_constructor_kwargs=dict(refs=refs, options=options),
                             compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpus,
                             num_gpus=self.gpus_per_worker or None)
        seen = {q: np.zeros(len(sizes), bool) for q, _ in shards}
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        # Our bar replaces Ray Data's progress logs; its error tracebacks become one EngineError.
        quiet.setLevel(logging.CRITICAL)
        try:
            with WorkBar(self.spec, shards, sizes, self.flip, f"{self.spec.label} on Ray, {n} worker(s),",
                         self.progress) as bar:
                for block in _worker_errors(out.iter_batches(batch_size=None, batch_format="numpy")):
                    for batch in _batches_of(block, seen):
                        bar.update(batch)
                        yield batch
        finally:
            quiet.setLevel(level)


def _worker_errors(blocks):
    """Ray's errors carry the worker's whole traceback; say in one line what went wrong."""
    ray = require_ray()
    try:
        yield from blocks
    except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as e:
        root = e  # the worker's own exception, under Ray's wrappers
        while getattr(root, "cause", None) is not None or root.__cause__ is not None:
            root = getattr(root, "cause", None) or root.__cause__
        text = str(root).strip().splitlines()
        raise EngineError(f"the Ray run failed on a worker: {type(root).__name__}: "
                          f"{text[0] if text else ''}"
                          " (descriptors committed so far are kept; fix it and run again to "
                          "resume; worker logs: /tmp/ray/session_latest/logs on each node)") from e


def _batches_of(block: dict, seen: dict) -> Iterator[Batch]:
    """Rows from the workers back into Batches (one per scale), rows in increasing order,
    leaving out any a retried shard sent twice."""
    for q in np.unique(block["scale"]):
        pick = block["scale"] == q
        rows, desc, err = block["row"][pick], block["descriptor"][pick], block["error"][pick]
        transient = block["transient"][pick]
        new = ~seen[int(q)][rows]
        rows, desc, err, transient = rows[new], desc[new], err[new], transient[new]
        seen[int(q)][rows] = True
        ok = err == ""
        order = np.argsort(rows[ok])
        yield Batch(int(q), rows[ok][order], np.ascontiguousarray(desc[ok][order], np.float32),
                    {int(r): str(e) for r, e in zip(rows[~ok], err[~ok])},
                    {int(r) for r in rows[~ok & transient]})


# -- for pipelines that already run on Ray -----------------------------------------------------

def _item(value):
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    return value


class ImageWorker:
    """Ray Data actor: adds `descriptor` (n_scales, dim) and `error` columns to image rows."""

    def __init__(self, refs, options, column):
        import ray
        (weights,) = ray.get(refs)
        self.ex = _worker_extractor(weights, options)
        self.column = column

    def __call__(self, batch: dict) -> dict:
        items = [_item(v) for v in batch[self.column]]
        sizes, unreadable = read_sizes(items, self.ex.workers)
        errors = [self._reason(unreadable[i], i) if i in unreadable else "" for i in range(len(items))]
        out = np.full((len(items), len(self.ex.scales), self.ex.dim), np.nan, np.float32)
        for done in self.ex.iter_batches(items, sizes):
            out[done.indices, self.ex.scales.index(done.scale)] = done.descriptors
            for i, reason in done.failures.items():
                errors[i] = self._reason(reason, i)
        return dict(batch, descriptor=out, error=np.array(errors, dtype=object))

    @staticmethod
    def _reason(message: str, i: int) -> str:
        # "image #i" counts within this call, which means nothing to the caller: the error
        # sits on its own row already. Paths keep their name.
        return message.removeprefix(f"image #{i}: ")


def with_descriptors(dataset, net=DEFAULT_NET, scales=DEFAULT_SCALES, *, weights=None,
                     preprocess=None, column="image", flip=True, device="auto", dtype="float32",
                     batch_size=DEFAULT_BATCH_SIZE, rows_per_call=64, num_workers=None, gpus_per_worker=0.0,
                     cpus_per_worker=None):
    """A Ray Dataset of images -> the same rows plus `descriptor` and `error` columns (lazy).

    column: holds paths (str), encoded files (bytes, as ray.data.read_binary_files gives), or
        HxWx3 uint8 arrays (as ray.data.read_images gives); one kind per column (Arrow turns a
        column mixing str and bytes into bytes).
    descriptor: float32 (len(scales), dim), flip-averaged, not normalised; NaN where the image
        could not be read, and `error` then says why ('' otherwise).
    rows_per_call: rows each actor call receives; within a call, images of one rescaled
        shape share forward passes of `batch_size`.

    >>> ds = ray.data.read_binary_files("s3://bucket/photos/").rename_columns({"bytes": "image"})
    >>> featx.extract.distributed.with_descriptors(ds, "E", (256, 384), weights="caffe", gpus_per_worker=1)
    """
    _check_device(device, gpus_per_worker)
    ray = connect()
    spec = get_spec(net)
    scales = check_scales(scales, spec)
    loaded = load_weights(spec, weights, preprocess)
    n, cpus = worker_resources(ray, num_workers, gpus_per_worker, cpus_per_worker)
    options = dict(net=spec, scales=scales, flip=flip, device=device, dtype=dtype,
                   batch_size=batch_size)
    return dataset.map_batches(ImageWorker, batch_size=rows_per_call, batch_format="numpy",
                               fn_constructor_kwargs=dict(refs=[ray.put(_shippable(loaded))],
                                                          options=options, column=column),
                               compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpus,
                               num_gpus=gpus_per_worker or None)
