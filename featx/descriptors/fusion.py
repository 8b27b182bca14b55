"""Combining descriptors: across scales (mean / stack / max), across nets (stack), L2 norm.

An aggregation is one function of (n, n_scales, d) per-scale descriptors; AGGREGATORS names
them (featx.options.AGGREGATIONS lists the names for the command line and the specs).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..options import AGGREGATIONS

AGGREGATORS = {
    "mean": lambda x: x.mean(axis=1, dtype=np.float64).astype(x.dtype),  # (n, d)
    "stack": lambda x: x.reshape(x.shape[0], -1),  # (n, n_scales * d), scale-major
    "max": lambda x: x.max(axis=1),  # (n, d)
}
assert tuple(AGGREGATORS) == AGGREGATIONS, "featx.options.AGGREGATIONS names these"


def aggregate(per_scale: np.ndarray, how: str = "mean") -> np.ndarray:
    """(n, n_scales, d) -> (n, d) for mean / max, (n, n_scales * d) scale-major for stack."""
    per_scale = np.asarray(per_scale)
    if per_scale.ndim != 3:
        raise ConfigError(f"expected (n_images, n_scales, dim), got shape {per_scale.shape}")
    if how not in AGGREGATORS:
        raise ConfigError(f"unknown aggregation {how!r}: choose one of {', '.join(AGGREGATIONS)}")
    return AGGREGATORS[how](per_scale)


def fuse(*descriptors: np.ndarray) -> np.ndarray:
    """Late fusion of several nets: concatenate their per-image descriptors."""
    return np.concatenate(descriptors, axis=1)


def combine(per_net, how: str = "mean") -> np.ndarray:
    """The image descriptor: each net's (n, n_scales, d) aggregated across scales, the nets
    fused, L2-normalised (what the SVMs see)."""
    return l2_normalize(fuse(*(aggregate(x, how) for x in per_net)))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Each row divided by its L2 norm (rows of zeros stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.maximum(norms, eps)[:, None]).astype(np.float32)
