"""The nets' architectures as data (the paper's Table 1, configurations D and E): what the
command line, the cost model and the caches need to know of a net, without importing torch.
featx.nets builds the torch modules from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import ConfigError

# The scales Q a descriptor is computed at unless told otherwise (the paper's single-net
# VOC-2007 rows use 256, 384 and 512 among others).
DEFAULT_SCALES = (256, 384, 512)

@dataclass(frozen=True)
class NetSpec:
    """Architecture of one VGG net: conv widths ('M' = 2x2 max-pool) and the fc widths."""

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


NETS: dict[str, NetSpec] = {
    "D": NetSpec("D", "vgg16", (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")),
    "E": NetSpec("E", "vgg19", (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                                512, 512, 512, 512, "M")),
}


def get_spec(net: str | NetSpec) -> NetSpec:
    if isinstance(net, NetSpec):
        return net
    key = str(net).upper() if str(net).upper() in NETS else str(net)
    if key not in NETS:
        raise ConfigError(f"unknown net {net!r}: choose one of {', '.join(NETS)} "
                         "(D = VGG16, E = VGG19)")
    return NETS[key]


# The largest scale featx takes: a 4:3 image at Q = 2048 is 2048 x 2730, 16 GB of first-layer
# activations with its mirror in float32. The paper's largest is 768.
MAX_SCALE = 2048


def check_scales(scales: Iterable[int], spec: NetSpec) -> tuple[int, ...]:
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
        raise ConfigError(f"scale Q={small[0]} is too small: the 7x7 fc6 window needs images whose "
                         f"short side is at least {spec.min_side} px (use Q >= {spec.min_side})")
    return scales
