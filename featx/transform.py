"""VGGDescriptor: image paths in, L2-normalised VGG descriptors out, as a scikit-learn transformer.

    Pipeline([("vgg", VGGDescriptor(nets=("D", "E"))), ("svm", LinearSVC())]).fit(paths, y)

Nothing is learned: `fit` only checks the parameters. Extraction is the expensive part, so wrap
the pipeline with `memory=` (joblib) or use `featx extract` + the HDF5 cache when a grid search
would otherwise extract the same images for every candidate.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .aggregate import AGGREGATIONS, combine
from .errors import ConfigError
from .extract import Extractor


class VGGDescriptor(TransformerMixin, BaseEstimator):
    """Multi-scale, multi-net VGG image descriptor (SPEC.md sections 2-3).

    nets: ("D",), ("E",) or ("D", "E") (late fusion: concatenated).
    scales: short sides Q. aggregate: "mean" (4096-D), "stack" (4096 x n_scales), "max".
    weights / preprocess: as for `Extractor`; either one value for every net or a dict
        {"D": ..., "E": ...}.
    """

    def __init__(self, nets=("D",), scales=(256, 384, 512), aggregate="mean", flip=True,
                 weights="torchvision", preprocess=None, device="auto", dtype="float32",
                 batch_size=8, workers=None, progress=False):
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

    def fit(self, X=None, y=None):
        if self.aggregate not in AGGREGATIONS:
            raise ConfigError(f"aggregate={self.aggregate!r}: choose one of {', '.join(AGGREGATIONS)}")
        if not self.nets:
            raise ConfigError("nets must name at least one net")
        return self

    def transform(self, X):
        self.fit()
        return combine((self._extractor(net).extract(list(X)) for net in self.nets), self.aggregate)

    def transform_readable(self, X):
        """As `transform`, but images that cannot be read are left out rather than raised:
        (descriptors of the readable ones, their indices in X, {index: reason} for the others)."""
        self.fit()
        X = list(X)
        failures, per_net = {}, []
        for net in self.nets:
            d, failed = self._extractor(net).extract_readable(X)
            failures.update(failed)
            per_net.append(d)
        ok = np.asarray([i for i in range(len(X)) if i not in failures], dtype=np.int64)
        return combine((d[ok] for d in per_net), self.aggregate), ok, failures

    def weights_digest(self, net) -> str:
        """The tensor digest of the weights this descriptor loads for a net (they load once)."""
        return self._extractor(net).weights.digest

    def _extractor(self, net) -> Extractor:
        # Built once per parameter set and reused across transform calls (weights load once);
        # set_params() changes the key and so drops the old nets.
        params = repr(sorted(self.get_params().items()))
        if self.__dict__.get("_extractors_for") != params:
            self._extractors_for, self._extractors = params, {}
        if net not in self._extractors:
            def per_net(value):
                return value.get(net) if isinstance(value, dict) else value
            self._extractors[net] = Extractor(
                net=net, scales=self.scales, flip=self.flip, weights=per_net(self.weights),
                preprocess=per_net(self.preprocess), device=self.device, dtype=self.dtype,
                batch_size=self.batch_size, workers=self.workers, progress=self.progress)
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
