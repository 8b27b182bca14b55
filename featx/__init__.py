"""featx: frozen VGG (Net-D / Net-E) image descriptors and linear classifiers (and any timm
model's, as timm:MODEL).

Reproduces the transfer-learning experiments of Simonyan & Zisserman (ICLR 2015), Appendix B.
The public names below load on first use, so `import featx` (and `featx --help`) stays light:
torch and scikit-learn are imported only by what needs them.
"""
from importlib import import_module

from .errors import CacheError, DatasetError, FeatxError, ImageError, WeightsError

__version__ = "0.8.0"

_LAZY = {  # public name -> the module (under featx) that defines it, by stage
    "Config": "config", "DescriptorSpec": "config", "ProtocolSpec": "config", "cache_path": "paths",
    "Crop": "data.images",
    "Backbone": "net.specs", "NETS": "net.specs", "NetSpec": "net.specs", "DenseVGG": "net.vgg",
    "Preprocess": "net.weights", "CAFFE": "net.weights", "TORCHVISION": "net.weights",
    "load_weights": "net.weights", "Kernels": "net.kernels",
    "Extractor": "extract.extractor", "DescriptorCache": "extract.cache", "extract_to_cache": "extract.update",
    "VGGDescriptor": "descriptors.transform", "write_export": "descriptors.export",
    "read_export": "descriptors.export", "aggregate": "descriptors.fusion", "fuse": "descriptors.fusion",
    "l2_normalize": "descriptors.fusion",
    "OneVsRestSVM": "evaluate.classifiers", "load_model": "evaluate.model", "Result": "evaluate.results",
    "read_result": "evaluate.results",
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
