"""featx: frozen VGG (Net-D / Net-E) image descriptors and linear classifiers.

Reproduces the transfer-learning experiments of Simonyan & Zisserman (ICLR 2015), Appendix B.
"""
from .aggregate import aggregate, fuse, l2_normalize
from .errors import CacheError, DatasetError, FeatxError, ImageError, WeightsError
from .extract import Extractor
from .images import Crop
from .nets import NETS, DenseVGG, NetSpec
from .transform import VGGDescriptor
from .weights import CAFFE, TORCHVISION, Preprocess, load_weights

__version__ = "0.2.0"

__all__ = [
    "Extractor", "VGGDescriptor", "aggregate", "fuse", "l2_normalize", "Crop", "NETS", "NetSpec", "DenseVGG",
    "Preprocess", "CAFFE", "TORCHVISION", "load_weights",
    "FeatxError", "WeightsError", "ImageError", "CacheError", "DatasetError",
]
