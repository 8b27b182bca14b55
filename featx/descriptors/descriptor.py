"""The image descriptor of docs/protocol.md sections 2-3 for a list of images, without
scikit-learn: per net an Extractor (or a cache of image files), scales aggregated, nets fused,
L2-normalised. featx.descriptors.transform.VGGDescriptor is the scikit-learn face of it; featx predict uses
it directly (so a prediction does not import scikit-learn).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DescriptorSpec
from ..errors import ConfigError
from ..net.specs import get_spec
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_NET, DEFAULT_SCALES
from .fusion import combine


@dataclass
class Descriptor:
    """nets, scales, aggregate, flip, weights, preprocess, device, dtype, batch_size, workers,
    progress, cache: as for VGGDescriptor (weights and preprocess: one value, or {net: value})."""

    nets: tuple = (DEFAULT_NET,)
    scales: tuple = DEFAULT_SCALES
    aggregate: str = "mean"
    flip: bool = True
    weights: object = None  # None (or a net missing from a dict): the net's default source
    preprocess: object = None
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: bool = False
    cache: object = None

    def __post_init__(self):
        # the one validation of a descriptor; the fields then hold its normalised values
        self.spec = DescriptorSpec(nets=self.nets, scales=self.scales, aggregate=self.aggregate, weights=self.weights,
                                   preprocess=self.preprocess, flip=self.flip, dtype=self.dtype)
        self.nets, self.scales, self.weights, self.preprocess = (
            self.spec.nets, self.spec.scales, self.spec.weights, self.spec.preprocess)
        if self.cache is not None and Path(self.cache).suffix.lower() in (".h5", ".hdf5") and len(self.nets) > 1:
            raise ConfigError(f"cache={self.cache}: one file holds one net's descriptors; give a folder "
                              f"for {len(self.nets)} nets")
        self._extractors = {}

    def readable(self, X):
        """(descriptors of the readable images, their indices in X, {index: reason} for the others)."""
        from ..data.images import as_images
        X = as_images(X)
        files = [i for i, x in enumerate(X) if isinstance(x, (str, os.PathLike))] if self.cache is not None else []
        rest = sorted(set(range(len(X))) - set(files))  # computed here, not kept
        failures, per_net = {}, []
        for net in self.nets:
            d = np.full((len(X), len(self.scales), get_spec(net).dim), np.nan, np.float32)
            if files:
                d[files] = self._cached(net, [X[i] for i in files], failures, files)
            if rest:
                got, failed = self.extractor(net).extract_readable([X[i] for i in rest])
                d[rest] = got
                failures.update({rest[j]: why for j, why in failed.items()})
            per_net.append(d)
        ok = np.asarray([i for i in range(len(X)) if i not in failures], dtype=np.int64)
        return combine((d[ok] for d in per_net), self.aggregate), ok, failures

    def feature_names(self) -> list[str]:
        """One name per output column: "E_17" (mean, max), "E_Q256_17" (stack), net by net."""
        per_scale = self.aggregate == "stack"
        return [f"{net}_Q{q}_{i}" if per_scale else f"{net}_{i}" for net in self.nets
                for q in (self.scales if per_scale else self.scales[:1]) for i in range(get_spec(net).dim)]

    def weights_of(self, net):
        return self.weights[net]

    def preprocess_of(self, net):
        return self.preprocess[net]

    def options(self) -> dict:
        return dict(scales=tuple(self.scales), flip=self.flip, device=self.device, dtype=self.dtype,
                    batch_size=self.batch_size, workers=self.workers)

    def extractor(self, net):
        """The net's Extractor, built once; the net itself is shared by every Extractor of the
        same weights in this process, and read only at the first forward pass."""
        from ..extract.extractor import Extractor
        if net not in self._extractors:
            self._extractors[net] = Extractor(net=net, weights=self.weights_of(net), preprocess=self.preprocess_of(net),
                                              progress=self.progress, lazy=True, **self.options())
        return self._extractors[net]

    def _cached(self, net, paths, failures, where) -> np.ndarray:
        """Descriptors of image files through the cache: computed there first where missing."""
        from ..extract.cache import DescriptorCache, cache_file, usable_rows
        from ..extract.update import update_caches
        weights, target = self.weights_of(net), Path(self.cache)
        path = target if target.suffix.lower() in (".h5", ".hdf5") else cache_file(target, net, weights, self.dtype)
        ids = [str(Path(p).resolve()) for p in paths]  # a file is itself wherever it is named from
        unique = list(dict.fromkeys(ids))
        update_caches([net], unique, unique, target.stem, {net: path}.get, {net: weights}, {net: self.preprocess_of(net)},
                      progress=self.progress, log=lambda m: None, **self.options())
        cache = DescriptorCache(path)
        rows, ok, failed = usable_rows({net: cache}, ids, self.scales)
        failures.update({where[j]: why for j, why in failed.items()})
        out = np.full((len(ids), len(self.scales), get_spec(net).dim), np.nan, np.float32)
        if ok.any():
            out[ok] = cache.load(tuple(self.scales), rows=rows[net][ok])
        return out
