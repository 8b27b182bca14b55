"""The backbones featx turns into descriptors, and the nets' architectures as data.

`Backbone` is the seam: what the extractor, the cost model, the weights and the caches need of
a net. Two implementations: `NetSpec`, the paper's VGG nets (Table 1, configurations D and E,
built by featx.net.vgg), and featx.net.timm's `TimmSpec`, any timm model (`timm:MODEL`). A name
is resolved by `get_spec`: a key of NETS, or FAMILY:MODEL for a family of BACKBONE_FAMILIES.
Nothing here imports torch: the command line and `featx info` stay light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

if TYPE_CHECKING:
    from torch import nn

    from .weights import Preprocess

from ..errors import ConfigError


class Backbone(Protocol):
    """What a net provides to featx. A backbone's module maps a (B, 3, H, W) batch, prepared by
    its weights' Preprocess and channels-last, to a (B, dim, h, w) map whose spatial average is
    the image's descriptor at that scale (h = w = 1 for nets that pool themselves)."""

    name: str  # as on the command line, in caches and model records: "E", "timm:resnet50"
    arch: str  # the weight-file family, which keys remembered weight digests: "vgg19"

    @property
    def dim(self) -> int: ...  # descriptor dimension

    @property
    def min_side(self) -> int: ...  # smallest short side Q the net takes

    @property
    def label(self) -> str: ...  # in messages and progress bars: "Net-E", "timm:resnet50"

    @property
    def file_name(self) -> str: ...  # in cache file names: "E", "timm-resnet50"

    @property
    def default_weights(self) -> str: ...  # the weight source when none is given

    @property
    def pooling(self) -> str: ...  # what the descriptor is, for the caches' provenance

    @property
    def tunable_kernels(self) -> bool: ...  # whether featx.net.kernels chooses its kernels

    def forward_flops(self, h: int, w: int) -> int: ...  # of one forward pass on an h x w input

    def own_preprocess(self) -> "Preprocess | None":
        """The preprocessing the model itself defines (timm's pretrained_cfg), which the name
        "timm" stands for; None where the weight source alone says (VGG)."""

    def resolve_weights(self, weights, chosen: "Preprocess | None", preprocess: str | None,
                        progress: bool) -> tuple[str, object, "Preprocess", Callable[[], dict]]:
        """(source, file or None, preprocessing, a function reading the state_dict)."""

    def random_state_dict(self, seed: int) -> dict: ...  # deterministic weights, for tests

    def build(self, state_dict: dict, origin: str) -> "nn.Module":
        """The module on CPU in float32 with `state_dict` loaded (shapes checked, naming
        `origin` on a mismatch); the extractor moves it and calls its `use_kernels`."""


@dataclass(frozen=True)
class NetSpec:
    """Architecture of one VGG net: conv widths ('M' = 2x2 max-pool) and the fc widths; the
    Backbone of the paper's nets (featx.net.vgg.DenseVGG)."""

    name: str  # short name used on the command line and in caches: "D", "E"
    arch: str  # torchvision function / weight-file family: "vgg16", "vgg19"
    layers: tuple
    fc_dim: int = 4096
    num_classes: int = 1000
    fc6_window: int = 7  # pool5 cells seen by one fc6 output (224 px / 32)

    @property
    def pool5_channels(self) -> int:
        return [v for v in self.layers if v != "M"][-1]

    @property
    def stride(self) -> int:
        return 2 ** sum(v == "M" for v in self.layers)

    @property
    def min_side(self) -> int:
        """Smallest image side that still gives one fc6 window (224 for VGG)."""
        return self.stride * self.fc6_window

    # -- the Backbone interface ------------------------------------------------------------
    default_weights = "torchvision"
    pooling = "average of post-ReLU fc7 map"
    tunable_kernels = True

    @property
    def dim(self) -> int:
        return self.fc_dim

    @property
    def label(self) -> str:
        return f"Net-{self.name}"

    @property
    def file_name(self) -> str:
        return self.name

    def forward_flops(self, h: int, w: int) -> int:
        """2 x multiply-adds of one dense forward pass (conv stack, fc6 as a 7x7 conv, fc7 as a
        1x1 conv; pools, ReLUs and the average pool are negligible)."""
        flops, c = 0, 3
        for v in self.layers:
            if v == "M":
                h, w = h // 2, w // 2
            else:
                flops += 2 * h * w * 9 * c * v
                c = v
        oh, ow = h - self.fc6_window + 1, w - self.fc6_window + 1
        return flops + 2 * oh * ow * (c * self.fc6_window ** 2 * self.fc_dim + self.fc_dim * self.fc_dim)

    def own_preprocess(self):
        return None  # each VGG weight source carries its own

    def resolve_weights(self, weights, chosen, preprocess, progress):
        from .weights import resolve_vgg_weights  # weights -> paths -> specs: not at the top
        return resolve_vgg_weights(self, weights, chosen, preprocess, progress)

    def random_state_dict(self, seed: int) -> dict:
        from .vgg import random_state_dict
        return random_state_dict(self, seed)

    def build(self, state_dict, origin):
        from .vgg import build_dense_vgg
        return build_dense_vgg(self, state_dict, origin)


NETS: dict[str, NetSpec] = {
    "D": NetSpec("D", "vgg16", (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")),
    "E": NetSpec("E", "vgg19", (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                                512, 512, 512, 512, "M")),
}


def _timm(model: str) -> Backbone:
    from .timm import TimmSpec
    return TimmSpec(model)


# FAMILY:MODEL names: a family is one function from the model's name to its Backbone.
BACKBONE_FAMILIES: dict[str, Callable[[str], Backbone]] = {"timm": _timm}

NET_CHOICES = "D (VGG16), E (VGG19) or timm:MODEL (any timm model, pip install 'featx[timm]')"


def get_spec(net: "str | Backbone") -> Backbone:
    """The Backbone a name stands for: "D", "E" (any case), "timm:resnet50", or a Backbone."""
    if not isinstance(net, str):  # a Backbone already (duck-typed: its properties may be costly)
        return net
    text = str(net).strip()
    family, colon, model = text.partition(":")
    if colon and family in BACKBONE_FAMILIES:
        if not model:
            raise ConfigError(f"net {text!r}: name the model, e.g. {family}:resnet50")
        return BACKBONE_FAMILIES[family](model)
    key = text.upper() if text.upper() in NETS else text
    if key not in NETS:
        raise ConfigError(f"unknown net {net!r}: choose {NET_CHOICES}")
    return NETS[key]


def default_weights(net: "str | Backbone") -> str:
    """The weight source a net gets when none is given: "torchvision" for VGG, "timm" for timm."""
    return get_spec(net).default_weights


def label_of(net) -> str:
    """A net's name in messages, without building it: "Net-E", "timm:resnet50"."""
    return NETS[net].label if isinstance(net, str) and net in NETS else getattr(net, "label", str(net))


# The largest scale featx takes: a 4:3 image at Q = 2048 is 2048 x 2730, 16 GB of first-layer
# activations with its mirror in float32. The paper's largest is 768.
MAX_SCALE = 2048


def check_scales(scales: Iterable[int], spec: Backbone) -> tuple[int, ...]:
    """The one validator of scales, however they arrive (CLI, pipeline files, Config,
    Extractor, VGGDescriptor): a collection of distinct integers Q in [224, MAX_SCALE]."""
    if isinstance(scales, (str, bytes, int, float)) or not hasattr(scales, "__iter__"):
        raise ConfigError(f"scales {scales!r}: give a list of integers Q, e.g. (256, 384, 512)")
    scales = tuple(scales)
    bad = [q for q in scales if isinstance(q, bool) or not isinstance(q, int) and not (
        isinstance(q, float) and q.is_integer()) and type(q).__module__ != "numpy"]
    if bad:
        raise ConfigError(f"scales {list(scales)}: {bad[0]!r} is not an integer Q")
    scales = tuple(int(q) for q in scales)
    big = [q for q in scales if q > MAX_SCALE]
    if big:
        raise ConfigError(f"scale Q={big[0]} is above {MAX_SCALE}, the largest featx takes (the paper's "
                          "largest is 768)")
    if not scales:
        raise ConfigError("at least one scale Q is needed")
    if len(set(scales)) != len(scales):
        raise ConfigError(f"scales {scales} repeat a value")
    small = [q for q in scales if q < spec.min_side]
    if small:
        raise ConfigError(f"scale Q={small[0]} is too small: {spec.label} needs images whose "
                         f"short side is at least {spec.min_side} px (use Q >= {spec.min_side})")
    return scales
