"""VGGDescriptor: images in, L2-normalised VGG descriptors out, as a scikit-learn transformer.

    Pipeline([("vgg", VGGDescriptor(nets=("D", "E"), cache="vgg-cache/")), ("svm", LinearSVC())]).fit(paths, y)

Nothing is learned: `fit` only checks the parameters. With `cache=` (a folder, or one .h5 file
for one net) each image file's descriptor is computed once and kept in featx's own cache
format, keyed by the file (featx.extract.identity): the folds and clones of a GridSearchCV or
cross_val_score then read what is already there, and a later process too. Loaded nets are
shared within a process (featx.extract.extractor.Extractor.model), so clones read the weights once.
The work is featx.descriptors.descriptor.Descriptor's; this class gives it scikit-learn's interface.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..errors import ImageError
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_NET, DEFAULT_SCALES
from .descriptor import Descriptor


class VGGDescriptor(TransformerMixin, BaseEstimator):
    """Multi-scale, multi-net VGG image descriptor (docs/protocol.md, sections 2-3).

    nets: ("D",), ("E",) or ("D", "E") (late fusion: concatenated); "timm:MODEL" names a timm
        model (pip install 'featx[timm]'), e.g. ("E", "timm:resnet50").
    scales: short sides Q. aggregate: "mean" (4096-D), "stack" (4096 x n_scales), "max".
    weights / preprocess: as for `Extractor`; either one value for every net or a dict
        {"D": ..., "E": ...}. weights=None: each net's default source (torchvision for VGG,
        timm for timm models).
    cache: None, or where descriptors of image files are kept between calls and processes: a
        folder (one <net>-<weights>.h5 per net, as featx extract --out FOLDER writes) or a
        .h5 file (one net). Images given as arrays, bytes or tensors are computed each time.
    X: a list (or any iterable) of images as featx.data.images.as_images takes them: paths, bytes,
        PIL images, uint8 arrays or torch tensors, (image, label) items of a torchvision dataset.
    """

    def __init__(self, nets=(DEFAULT_NET,), scales=DEFAULT_SCALES, aggregate="mean", flip=True,
                 weights=None, preprocess=None, device="auto", dtype="float32",
                 batch_size=DEFAULT_BATCH_SIZE, workers=None, progress=False, cache=None):
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
        self.descriptor()  # checks the parameters
        return self

    def transform(self, X):
        X, ok, failures = self.descriptor().readable(X)
        if failures:
            raise ImageError(next(iter(failures.values())))
        return X

    def transform_readable(self, X):
        """As `transform`, but images that cannot be read are left out rather than raised:
        (descriptors of the readable ones, their indices in X, {index: reason} for the others)."""
        return self.descriptor().readable(X)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """One name per output column: "E_17" (mean, max), "E_Q256_17" (stack), net by net."""
        return np.asarray(self.descriptor().feature_names(), dtype=object)

    def weights_digest(self, net) -> str:
        """The tensor digest of the weights this descriptor loads for a net (the digest featx
        remembers for the file, else computed by loading them, once per process)."""
        return self.descriptor().extractor(net).weights.digest

    def descriptor(self) -> Descriptor:
        """The Descriptor of these parameters, built once and reused across calls (its
        extractors with it); set_params() changes the key and so drops the old one."""
        params = self.get_params()
        key = repr(sorted(params.items()))
        if self.__dict__.get("_descriptor_for") != key:
            self._descriptor_for, self._descriptor = key, Descriptor(**params)
        return self._descriptor

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_descriptor", None)
        state.pop("_descriptor_for", None)  # rebuilt from the parameters
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
