"""What every extraction engine is: what it computes, known before it computes anything (the
net, its scales, flip, compute type, batch size, the weights resolved), the batch plan and the
provenance, and `iter_batches`, which each engine implements its own way:

    Extractor     (extract/extractor.py)    forward passes in this process
    RayExtractor  (extract/distributed.py)  the same plan, cut into shards, on Ray Data actors
    Planned       (extract/update.py)       either of them, built the first time a row needs computing

All three share this one class, so they plan the same forward passes (and so give the same
numbers) and state the same provenance. No torch here: featx extract with nothing left to
compute checks its caches without importing it.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..data.images import INTERPOLATION, decode_threads, target_size
from ..errors import ConfigError
from ..net.specs import check_scales, get_spec
from ..net.weights import load_weights
from ..options import COMPUTE_TYPES, DEFAULT_BATCH_SIZE, DEFAULT_NET, DEFAULT_SCALES

if TYPE_CHECKING:
    from ..net.weights import Weights
    from .extractor import Batch


def plan_batches(sizes: Sequence, q: int, batch_size: int) -> list[np.ndarray]:
    """Group image indices by rescaled shape, then cut each group every `batch_size` images.

    `sizes[i]` is (h, w) or None for an image that cannot be read (left out).
    """
    groups = defaultdict(list)
    for i, hw in enumerate(sizes):
        if hw is not None:
            groups[target_size(tuple(hw), q)].append(i)
    return [np.asarray(idx[k:k + batch_size]) for shape in sorted(groups)
            for idx in [groups[shape]] for k in range(0, len(idx), batch_size)]


def provenance(spec, weights: Weights, flip: bool) -> dict:
    """What determines a net's descriptors' values (stored with every cache): the net, the
    weights (a featx.net.weights.Weights, tensors or not) and their preprocessing, the flip."""
    p = weights.preprocess
    return {
        "net": spec.name, "arch": spec.arch, "dim": spec.dim,
        "weights": weights.source, "weights_file": str(weights.path or ""),
        "preprocess": p.name, "channel_order": p.channel_order,
        "mean": list(p.mean), "std": list(p.std), "value_range": p.value_range,
        "flip": flip, "interpolation": INTERPOLATION, "pooling": spec.pooling,
    }


class Engine:
    """An extraction engine: what extract_to_cache reads of one, and iter_batches.

    net: "D", "E" or "timm:MODEL"; scales: short sides Q; weights, preprocess: a source as
    featx.net.weights.load_weights takes it (resolved here, its tensors not read: the digest is
    the one featx remembers for the file); dtype: the compute type; batch_size: images per
    forward pass; workers: threads decoding images (also for the survey of the image set).
    """

    def __init__(self, net=DEFAULT_NET, scales=DEFAULT_SCALES, flip=True, weights=None, preprocess=None,
                 dtype="float32", batch_size=DEFAULT_BATCH_SIZE, workers=None, progress=False):
        self.spec = get_spec(net)
        self.scales = check_scales(scales, self.spec)
        self.flip = bool(flip)
        if dtype not in COMPUTE_TYPES:
            raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(COMPUTE_TYPES)}")
        self.dtype = dtype
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"workers={workers}: decoding needs at least 1 thread")
        self.workers = decode_threads(workers)
        self.progress = progress
        self._source = (self.spec.default_weights if weights is None else weights, preprocess)
        self._weights = load_weights(self.spec, *self._source, progress=progress, tensors=False)
        self.preprocess = self._weights.preprocess

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def weights(self) -> Weights:
        """The weights' provenance (featx.net.weights.Weights without tensors); their digest is
        the one remembered for the file, or computed by reading them (once)."""
        if not self._weights.digest:
            self._weights = self._read_weights()
        return self._weights

    def _read_weights(self) -> Weights:
        """The weights with their digest, tensors dropped; an engine that loads them anyway
        (Extractor, for its net) reads them only once."""
        return dataclasses.replace(load_weights(self.spec, *self._source, progress=self.progress), state_dict={})

    def provenance(self) -> dict:
        """What determines the descriptors' values (stored with every cache)."""
        return provenance(self.spec, self._weights, self.flip)

    def plan(self, sizes: Sequence, scales=None, skip=None) -> list[tuple[int, list[np.ndarray]]]:
        """[(Q, [row indices of each forward pass])]: the batches iter_batches runs, scale by
        scale; every engine runs this same plan, so they all give the same numbers.

        skip: {scale: bool array}: rows not to compute (done or known bad), taken out of the
        planned batches, so a resumed run runs the same batches as before minus the ones it
        committed."""
        scales = self.scales if scales is None else check_scales(scales, self.spec)
        skip = skip or {}
        out = []
        for q in scales:
            batches = plan_batches(sizes, q, self.batch_size)
            if q in skip:
                batches = [b[~skip[q][b]] for b in batches]
                batches = [b for b in batches if len(b)]
            out.append((q, batches))
        return out

    def iter_batches(self, images: Sequence, sizes: Sequence, scales=None, skip=None) -> Iterator[Batch]:
        """The forward passes for these images (sizes: (h, w) or None each), scale by scale,
        leaving out the (row, Q) pairs in `skip`, as Batches in any order."""
        raise NotImplementedError(f"{type(self).__name__} computes nothing: an engine implements iter_batches")
