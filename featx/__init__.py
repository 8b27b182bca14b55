"""featx: frozen VGG (Net-D / Net-E) image descriptors and linear classifiers (and any timm
model's, as timm:MODEL).

Reproduces the transfer-learning experiments of Simonyan & Zisserman (ICLR 2015), Appendix B.
The public names below load on first use, so `import featx` (and `featx --help`) stays light:
torch and scikit-learn are imported only by what needs them.
"""
from importlib import import_module

from .errors import CacheError, DatasetError, FeatxError, ImageError, WeightsError

__version__ = "0.7.0"

_LAZY = {
    "Extractor": "extract", "VGGDescriptor": "transform", "Crop": "images", "NETS": "nets", "NetSpec": "nets", "DenseVGG": "nets",
    "Preprocess": "weights", "CAFFE": "weights", "TORCHVISION": "weights", "load_weights": "weights",
    "OneVsRestSVM": "classifiers", "DescriptorCache": "cache", "extract_to_cache": "update",
    "load_model": "model", "Result": "results", "read_result": "results", "Kernels": "kernels",
    "cache_path": "paths", "write_export": "export", "read_export": "export",
    "aggregate": "fusion", "fuse": "fusion", "l2_normalize": "fusion",
    "Config": "config", "DescriptorSpec": "config", "ProtocolSpec": "config", "Backbone": "specs",
}

__all__ = sorted(_LAZY) + ["FeatxError", "WeightsError", "ImageError", "CacheError", "DatasetError"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return __all__
