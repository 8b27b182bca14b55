"""VGGDescriptor: images in, L2-normalised VGG descriptors out, as a scikit-learn transformer.

    Pipeline([("vgg", VGGDescriptor(nets=("D", "E"), cache="vgg-cache/")), ("svm", LinearSVC())]).fit(paths, y)

Nothing is learned: `fit` only checks the parameters. With `cache=` (a folder, or one .h5 file
for one net) each image file's descriptor is computed once and kept in featx's own cache
format, keyed by the file (featx.identity): the folds and clones of a GridSearchCV or
cross_val_score then read what is already there, and a later process too. Loaded nets are
shared within a process (featx.extract.Extractor.model), so clones read the weights once.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .aggregate import AGGREGATIONS, combine
from .errors import ConfigError, ImageError
from .specs import DEFAULT_SCALES


class VGGDescriptor(TransformerMixin, BaseEstimator):
    """Multi-scale, multi-net VGG image descriptor (docs/protocol.md, sections 2-3).

    nets: ("D",), ("E",) or ("D", "E") (late fusion: concatenated).
    scales: short sides Q. aggregate: "mean" (4096-D), "stack" (4096 x n_scales), "max".
    weights / preprocess: as for `Extractor`; either one value for every net or a dict
        {"D": ..., "E": ...}.
    cache: None, or where descriptors of image files are kept between calls and processes: a
        folder (one <net>-<weights>.h5 per net, as featx extract --out FOLDER writes) or a
        .h5 file (one net). Images given as arrays, bytes or tensors are computed each time.
    X: a list (or any iterable) of images as featx.images.as_images takes them: paths, bytes,
        PIL images, uint8 arrays or torch tensors, (image, label) items of a torchvision dataset.
    """

    def __init__(self, nets=("D",), scales=DEFAULT_SCALES, aggregate="mean", flip=True,
                 weights="torchvision", preprocess=None, device="auto", dtype="float32",
                 batch_size=8, workers=None, progress=False, cache=None):
        self.nets = nets
        self.scales = scales
        self.aggregate = aggregate
        self.flip = flip
        self.weights = weights
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.cache = cache

    def fit(self, X=None, y=None):
        if self.aggregate not in AGGREGATIONS:
            raise ConfigError(f"aggregate={self.aggregate!r}: choose one of {', '.join(AGGREGATIONS)}")
        if not self.nets:
            raise ConfigError("nets must name at least one net")
        if self.cache is not None and Path(self.cache).suffix.lower() in (".h5", ".hdf5") and len(self.nets) > 1:
            raise ConfigError(f"cache={self.cache}: one file holds one net's descriptors; give a folder "
                              f"for {len(self.nets)} nets")
        return self

    def transform(self, X):
        X, ok, failures = self._descriptors(X)
        if failures:
            raise ImageError(next(iter(failures.values())))
        return X

    def transform_readable(self, X):
        """As `transform`, but images that cannot be read are left out rather than raised:
        (descriptors of the readable ones, their indices in X, {index: reason} for the others)."""
        return self._descriptors(X)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """One name per output column: "E_17" (mean, max), "E_Q256_17" (stack), net by net."""
        per_scale = self.aggregate == "stack"
        return np.asarray([f"{net}_Q{q}_{i}" if per_scale else f"{net}_{i}" for net in self.nets
                           for q in (self.scales if per_scale else self.scales[:1])
                           for i in range(self._dim(net))], dtype=object)

    def weights_digest(self, net) -> str:
        """The tensor digest of the weights this descriptor loads for a net (the digest featx
        remembers for the file, else computed by loading them, once per process)."""
        return self._extractor(net).weights.digest

    # -- where descriptors come from ------------------------------------------------------

    def _descriptors(self, X):
        from .images import as_images
        self.fit()
        X = as_images(X)
        files = [i for i, x in enumerate(X) if isinstance(x, (str, os.PathLike))] if self.cache is not None else []
        rest = sorted(set(range(len(X))) - set(files))  # computed here, not kept
        failures, per_net = {}, []
        for net in self.nets:
            d = np.full((len(X), len(self.scales), self._dim(net)), np.nan, np.float32)
            if files:
                d[files] = self._cached(net, [X[i] for i in files], failures, files)
            if rest:
                got, failed = self._extractor(net).extract_readable([X[i] for i in rest])
                d[rest] = got
                failures.update({rest[j]: why for j, why in failed.items()})
            per_net.append(d)
        ok = np.asarray([i for i in range(len(X)) if i not in failures], dtype=np.int64)
        return combine((d[ok] for d in per_net), self.aggregate), ok, failures

    def _cached(self, net, paths, failures, where) -> np.ndarray:
        """Descriptors of image files through the cache: computed there first where missing."""
        from .cache import DescriptorCache, cache_file, usable_rows
        from .update import update_caches
        weights, preprocess = self._per_net(self.weights, net), self._per_net(self.preprocess, net)
        target = Path(self.cache)
        path = target if target.suffix.lower() in (".h5", ".hdf5") else cache_file(target, net, weights, self.dtype)
        ids = [str(Path(p).resolve()) for p in paths]  # a file is itself wherever it is named from
        unique = list(dict.fromkeys(ids))
        update_caches([net], unique, unique, target.stem, {net: path}.get, {net: weights}, {net: preprocess},
                      progress=self.progress, log=lambda m: None, **self._options())
        cache = DescriptorCache(path)
        rows, ok, failed = usable_rows({net: cache}, ids, self.scales)
        failures.update({where[j]: why for j, why in failed.items()})
        out = np.full((len(ids), len(self.scales), self._dim(net)), np.nan, np.float32)
        if ok.any():
            out[ok] = cache.load(tuple(self.scales), rows=rows[net][ok])
        return out

    def _options(self) -> dict:
        return dict(scales=tuple(self.scales), flip=self.flip, device=self.device, dtype=self.dtype,
                    batch_size=self.batch_size, workers=self.workers)

    @staticmethod
    def _per_net(value, net):
        return value.get(net) if isinstance(value, dict) else value

    @staticmethod
    def _dim(net) -> int:
        from .specs import get_spec
        return get_spec(net).fc_dim

    def _extractor(self, net):
        # Built once per parameter set and reused across transform calls; set_params() changes
        # the key and so drops the old ones. The net itself is shared by every Extractor of the
        # same weights in this process, and read only at the first forward pass.
        from .extract import Extractor
        params = repr(sorted(self.get_params().items()))
        if self.__dict__.get("_extractors_for") != params:
            self._extractors_for, self._extractors = params, {}
        if net not in self._extractors:
            self._extractors[net] = Extractor(
                net=net, weights=self._per_net(self.weights, net), preprocess=self._per_net(self.preprocess, net),
                progress=self.progress, lazy=True, **self._options())
        return self._extractors[net]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_extractors", None)
        state.pop("_extractors_for", None)  # nets are rebuilt from the parameters
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
