"""Dense multi-scale descriptors: one image, one net, one scale Q -> one fc7 vector (docs/protocol.md section 2).

The image is rescaled (short side Q), run densely through the net, the post-ReLU fc7 map is
average-pooled, and the same is done for the mirrored image; the two vectors are averaged.

Speed comes from shape: images whose rescaled size is equal are batched together (VOC images
mostly share two shapes), the image and its mirror share one forward pass, tensors are
channels-last, and a thread pool decodes and resizes the next batches while the net runs.
Batches are a fixed function of the image sizes (sorted by shape, cut every `batch_size`), so
a resumed run sees exactly the batches an uninterrupted one would: results are bit-identical.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
import sys
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import as_images, load_resized, name_of, read_size, read_sizes
from ..errors import ConfigError, ImageError
from ..net.kernels import (Kernels, check_supported as check_kernels, choose as choose_kernels, cpu_info,
                           onednn_refusal, parse_kernels)
from ..net.weights import load_weights
from ..options import COMPUTE_TYPES, DEFAULT_BATCH_SIZE, DEFAULT_NET, DEFAULT_SCALES
from .cost import descriptor_flops
from .engine import Engine

DTYPES = {name: getattr(torch, name) for name in COMPUTE_TYPES}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; a named device must exist on this machine."""
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"device {str(device)!r}: write auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device {dev}: this machine has no CUDA GPU that torch can use "
                                  "(use --device cpu, or auto)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(f"device {dev}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        elif dev.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ConfigError(f"device {dev}: Apple's MPS is not available here (macOS with Apple "
                                  "silicon only); use --device cpu, or auto")
        elif dev.type not in ("cpu", "meta"):  # meta: shapes without values (tests)
            raise ConfigError(f"device {dev}: featx runs on cpu, cuda or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, or None off glibc. Freed activations of many different sizes (Caltech
    has hundreds of image shapes) stay mapped in glibc's arenas, so a long run's resident memory
    creeps up by gigabytes; malloc_trim(0) hands the free pages back to the system."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_NETS: "OrderedDict[tuple, tuple[torch.nn.Module, object]]" = OrderedDict()  # see Extractor.model


def _net_key(spec, weights, preprocess, path, device, dtype, kernels) -> tuple | None:
    """What a loaded net is shared by: its weight source as given, and for a file (`path`, as
    featx.net.weights resolved the source) the file's size, mtime and inode, so a file replaced in
    the meantime is loaded again; None for weights passed as objects (not shared)."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    try:
        st = os.stat(path) if path is not None else None
    except OSError:  # a hub file not downloaded yet
        st = None
    signature = (st.st_size, st.st_mtime_ns, st.st_ino) if st else None
    return (spec, os.fspath(weights), preprocess, str(device), dtype, str(kernels), signature)


@dataclass
class Batch:
    """What one forward pass produced: rows `indices` of the image set at scale `scale`."""

    scale: int
    indices: np.ndarray
    descriptors: np.ndarray  # (len(indices), dim) float32, flip-averaged, not normalised
    failures: dict = field(default_factory=dict)  # image index -> reason
    transient: set = field(default_factory=set)  # failures that may pass (file not found, I/O error)


class WorkBar:
    """One progress bar for a whole plan, advanced by each batch's FLOPs rather than by its
    image count: a plan runs each scale's small shapes first and then the next, larger scale,
    so a count of images promises the end hours too early. The label counts images per scale.

    >>> with WorkBar(spec, plan, sizes, flip=True, label="Net-E") as bar:
    ...     for batch in batches: bar.update(batch)
    """

    def __init__(self, spec, plan, sizes, flip: bool, label: str, enabled: bool = True):
        self.sizes, self.label = sizes, label
        self._flops = functools.lru_cache(maxsize=None)(
            lambda hw, q: descriptor_flops(spec, hw, q, flip))
        self.todo = {}  # images per scale (a plan cut into shards names a scale more than once)
        for q, batches in plan:
            if n := sum(len(b) for b in batches):
                self.todo[q] = self.todo.get(q, 0) + n
        self.done = dict.fromkeys(self.todo, 0)
        self.total = sum(self.flops(q, b) for q, batches in plan for b in batches)
        self.done_flops = 0
        # redirected to a log (nohup ... &), a bar redrawn every second fills megabytes over an
        # hours-long run: there it is redrawn every 30 s, and its last state is kept
        logged = not sys.stderr.isatty()
        self.bar = tqdm(total=self.total, desc=self.text(), leave=logged, mininterval=30 if logged else 0.1,
                        disable=not enabled or not self.todo,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def flops(self, q: int, rows) -> int:
        return sum(self._flops(tuple(int(v) for v in self.sizes[i]), q) for i in rows)

    def text(self) -> str:
        return f"{self.label} " + ", ".join(f"Q={q} {self.done[q]}/{n}" for q, n in self.todo.items()) + " images"

    def update(self, batch: Batch) -> None:
        rows = [*map(int, batch.indices), *batch.failures]
        self.done[batch.scale] += len(rows)
        flops = self.flops(batch.scale, rows)
        self.done_flops += flops
        self.bar.set_description_str(self.text(), refresh=False)
        self.bar.update(flops)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        return False


class Extractor(Engine):
    """Frozen net turned into a dense multi-scale image descriptor.

    >>> ex = Extractor(net="E", weights="vgg19.pth", preprocess="caffe", scales=(256, 384))
    >>> ex.extract(["a.jpg", "b.jpg"]).shape
    (2, 2, 4096)

    net: "D" (VGG16), "E" (VGG19), or "timm:MODEL" (any timm model: its global-pooled
        pre-logits features; featx.net.timm). scales: short sides Q (each >= 224 for VGG).
    weights: for VGG "torchvision" (default), "caffe", a .pth / Keras .h5 file, or
        "random[:seed]"; for timm models "timm" (default: timm's pretrained weights), a timm
        .pth / .safetensors file, "random[:seed]", and for timm's VGGs the VGG sources too.
    preprocess: "caffe" or "torchvision"; needed only for a bare VGG .pth file (the named
        sources carry their own). device: "auto" (cuda > mps > cpu), "cpu", "cuda:1", ...
    dtype: "float32" (the paper's rows), "bfloat16" (GPUs, and CPUs with native bfloat16:
        AVX-512 BF16 or AMX; elsewhere slower, with a warning) or "float16" (GPUs). Pooling
        and the flip average stay float32. The cache records the dtype, so they never mix.
    batch_size: images per forward pass (each also runs mirrored, so the net sees twice as
        many). workers: threads decoding and resizing ahead of the net.
    kernels: None (featx.net.kernels.choose: the fastest for this CPU), a featx.net.kernels.Kernels
        or "conv=onednn,fc=gemm"; all give the same descriptors within 1e-5 relative.
    lazy: read the weights at the first forward pass rather than here.
    """

    def __init__(self, net=DEFAULT_NET, scales=DEFAULT_SCALES, flip=True, weights=None,
                 preprocess=None, device="auto", dtype="float32", batch_size=DEFAULT_BATCH_SIZE, workers=None,
                 progress=False, kernels=None, lazy=False):
        super().__init__(net, scales, flip, weights, preprocess, dtype, batch_size, workers, progress)
        self.device = resolve_device(device)
        if dtype == "bfloat16" and self.device.type == "cpu" and not cpu_info().native_bfloat16:
            no_onednn = bool(onednn_refusal(DTYPES[dtype]))
            warnings.warn(f"bfloat16 on this CPU ({cpu_info().model}) has no native support (no "
                          "avx512_bf16 or amx_bf16 flag): it runs emulated, slower than float32"
                          + ("; without AVX-512 oneDNN refuses it too, and torch's own bfloat16 "
                             "products run two orders of magnitude slower than float32's" if no_onednn else ""),
                          stacklevel=2)
        if isinstance(kernels, str):
            kernels = Kernels(**parse_kernels(kernels, "kernels"), how="given")
        if not self.spec.tunable_kernels:
            if kernels is not None and kernels != Kernels():
                raise ConfigError(f"kernels={kernels}: {self.spec.label} runs torch's own kernels only")
            kernels = Kernels(how=f"{self.spec.label}: torch's own")
        self.kernels = kernels or choose_kernels(self.device, DTYPES[dtype])
        check_kernels(self.kernels, self.device, DTYPES[dtype])
        # The weights' source is resolved (a missing file refused) by Engine.__init__; their tensors
        # are read now, or with lazy=True at the first forward pass, so featx extract with
        # nothing left to compute never reads them (it knows them by the digest remembered).
        self._model = None
        if not lazy:
            self.model  # noqa: B018  (loads the weights)

    @property
    def model(self) -> torch.nn.Module:
        """The net, its weights loaded on first use. Extractors of the same weights, device,
        compute type and kernels share one net in a process (the last two loaded are kept):
        the clones of a grid search, featx predict and its caches' update read the weights once."""
        if self._model is None:
            key = _net_key(self.spec, *self._source, self._weights.path, self.device, self.dtype, self.kernels)
            if key is not None and key in _NETS:
                _NETS.move_to_end(key)
                self._model, self._weights = _NETS[key]
                return self._model
            loaded = load_weights(self.spec, *self._source, progress=self.progress)
            self._model = self._build(loaded)
            # The tensors now live in the model; keep only the provenance.
            self._weights = dataclasses.replace(loaded, state_dict={})
            if key is not None:
                _NETS[key] = (self._model, self._weights)
                while len(_NETS) > 2:
                    _NETS.popitem(last=False)
        return self._model

    def _read_weights(self):
        self.model  # noqa: B018  (the net holds the tensors; its load keeps their provenance)
        return self._weights

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _build(self, loaded):
        model = self.spec.build(loaded.state_dict, str(loaded.path or loaded.source))
        model = model.eval().requires_grad_(False).to(
            self.device, DTYPES[self.dtype], memory_format=torch.channels_last)
        return model.use_kernels(self.kernels)

    # -- extraction -------------------------------------------------------------------------

    def extract(self, images: Sequence) -> np.ndarray:
        """Descriptors of `images` at every scale: paths, encoded bytes, PIL images, HxWx3 uint8
        arrays, uint8 torch tensors (CxHxW) or (image, label) items (featx.data.images.as_images).

        Returns float32 (n_images, n_scales, dim), flip-averaged and not normalised.
        Raises ImageError naming the first image that cannot be read.
        """
        images = as_images(images)
        sizes = [read_size(item, i) for i, item in enumerate(images)]
        out = np.empty((len(images), len(self.scales), self.dim), np.float32)
        for batch in self.iter_batches(images, sizes):
            if batch.failures:
                raise ImageError(next(iter(batch.failures.values())))
            out[batch.indices, self.scales.index(batch.scale)] = batch.descriptors
        return out

    def extract_readable(self, images: Sequence) -> tuple[np.ndarray, dict]:
        """As `extract`, but an image that cannot be read is its own failure, not the call's:
        (descriptors with NaN rows for those, {index: reason})."""
        images = as_images(images)
        sizes, failures = read_sizes(images, self.workers)
        out = np.full((len(images), len(self.scales), self.dim), np.nan, np.float32)
        for batch in self.iter_batches(images, sizes):
            failures.update(batch.failures)
            out[batch.indices, self.scales.index(batch.scale)] = batch.descriptors
        out[list(failures)] = np.nan  # failed at one scale: no descriptor at all
        return out, failures

    def iter_batches(self, images: Sequence, sizes: Sequence, scales=None,
                     skip=None) -> Iterator[Batch]:
        """Yield one Batch per forward pass, scale by scale.

        sizes: (h, w) per image from `read_size` (None: unreadable, left out).
        skip: {scale: bool array}: rows not to compute (done or known bad). They are taken out
            of the planned batches, so a resumed run runs the same batches as before minus the
            ones it committed. Leave an image out of the plan altogether with size None.
        An image that fails to decode is reported in its Batch's `failures`, not raised.
        """
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="featx-load")
        plan = self.plan(sizes, scales, skip)
        try:
            with WorkBar(self.spec, plan, sizes, self.flip, self.spec.label, self.progress) as bar:
                for q, batches in plan:
                    for batch in self.run_passes(pool, images, q, batches):
                        bar.update(batch)
                        yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run_passes(self, pool, images, q, batches) -> Iterator[Batch]:
        """One Batch per entry of `batches` (row indices of one forward pass at scale q, as
        `plan` makes them), decoding in `pool`'s threads two passes ahead of the net."""
        def load(i):
            try:
                return load_resized(images[i], q, i)
            except ImageError as e:
                return e
            except Exception as e:  # any decoder bug is this image's failure, not the run's
                return ImageError(f"{name_of(images[i], i)}: cannot decode ({type(e).__name__}: {e})")

        ahead = deque()
        todo = iter(batches)

        def submit():
            idx = next(todo, None)
            if idx is not None:
                ahead.append((idx, [pool.submit(load, int(i)) for i in idx]))

        for _ in range(2):  # decode two batches ahead of the net
            submit()
        while ahead:
            idx, futures = ahead.popleft()
            submit()
            arrays, ok, failures, transient = [], [], {}, set()
            for i, fut in zip(idx, futures):
                res = fut.result()
                if isinstance(res, ImageError):
                    failures[int(i)] = str(res)
                    if res.transient:
                        transient.add(int(i))
                else:
                    arrays.append(res)
                    ok.append(int(i))
            ok = np.asarray(ok, dtype=np.int64)
            if not arrays:
                yield Batch(q, ok, np.empty((0, self.dim), np.float32), failures, transient)
                continue
            yield Batch(q, ok, self.forward(np.stack(arrays)), failures, transient)

    @torch.inference_mode()
    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB of one shape -> (B, dim) flip-averaged descriptors."""
        x = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = self.preprocess(x.permute(0, 3, 1, 2), DTYPES[self.dtype])  # NHWC memory = channels-last
        n = x.shape[0]
        if self.flip:
            x = torch.cat([x, x.flip(3)]).contiguous(memory_format=torch.channels_last)
        pooled = self.model(x).float().mean(dim=(2, 3))
        if self.flip:
            pooled = (pooled[:n] + pooled[n:]) / 2
        out = pooled.cpu().numpy()
        trim = _malloc_trim() if self.device.type == "cpu" else None
        if trim is not None:
            del x, pooled
            trim(0)
        return out
