"""timm models as featx backbones: `--net timm:MODEL` on the command line, `net="timm:MODEL"` in
Python (pip install 'featx[timm]').

The descriptor of an image at scale Q is the model's global-pooled pre-logits features
(`forward_head(..., pre_logits=True)`, the model's own pooling) of the image rescaled so its
short side is Q, averaged with the mirrored image's: the paper's protocol with another net.
Vision transformers are built with a dynamic image size (padded to whole patches), so they take
any rescaled image. This module imports torch and timm: featx.net.specs imports it only when a
timm net is named. For timm's VGGs this is the same function as featx's Net-D / Net-E: timm's
`ConvMlp` is fc6 as a 7x7 convolution and fc7 as a 1x1, average-pooled after the ReLU.

Weights: "timm" (timm's pretrained weights, fetched by timm into the Hugging Face cache),
"random[:SEED]", a timm state_dict file (.pth / .pt / .safetensors), and for timm's vgg16 /
vgg19 every VGG source (torchvision, caffe, caffe:FILE, a Keras .h5), converted from
torchvision's layout to timm's at load time as timm converts its own VGG checkpoints.
"""
from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError, WeightsError
from .specs import NETS
from .weights import (NAMED_SOURCES, TORCHVISION, Preprocess, check_tensors, load_pth, random_source,
                      resolve_vgg_weights)

# timm's VGGs that featx's own VGG weight sources fit (same tensors, another layout)
VGG_NETS = {"vgg16": "D", "vgg19": "E"}
# files a timm state_dict comes in
STATE_FILES = (".pth", ".pt", ".bin", ".safetensors")


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm:MODEL nets need timm: pip install 'featx[timm]'") from None
    return timm


def create(model: str, **kwargs):
    """timm.create_model without a classifier; models that take a dynamic image size (ViTs)
    get one, padded to whole patches, so any rescaled image fits."""
    timm = _timm()
    try:
        return timm.create_model(model, num_classes=0, dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    except TypeError:  # a CNN: every size fits already
        return timm.create_model(model, num_classes=0, **kwargs)


def pooled_features(model, x):
    """(B, 3, H, W) -> (B, dim, 1, 1): the model's global-pooled pre-logits features, as the
    map featx's extractor averages (a 1x1 map's average is itself)."""
    out = model.forward_head(model.forward_features(x), pre_logits=True)
    if out.dim() != 2:
        raise ConfigError(f"timm model {type(model).__name__} gives pre-logits features of shape "
                          f"{tuple(out.shape)}, not (batch, dim): featx cannot pool it")
    return out[:, :, None, None]


class TimmDense(nn.Module):
    """A timm model as a featx backbone module (see featx.net.specs.Backbone)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def use_kernels(self, kernels):
        return self  # torch's own kernels: featx.net.kernels tunes VGG's layers only

    def forward(self, x):
        return pooled_features(self.model, x)


class Facts(NamedTuple):
    """What featx needs to know of a timm model before it loads any weights."""

    dim: int  # pre-logits features
    flops: int  # of one forward pass at 224 x 224
    mean: tuple  # of its pretrained_cfg (ImageNet's where it has none)
    std: tuple
    stride: int  # of its last feature map
    classifier: str  # the head's name in a full checkpoint ("fc", "head", "head.fc")


def _count(net, device: str) -> tuple[int, int]:
    """(dim, FLOPs) of the net's pre-logits features at 224 x 224 on `device`."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = pooled_features(net.eval(), torch.zeros(1, 3, 224, 224, device=device))
    return int(out.shape[1]), int(counter.get_total_flops())


@functools.lru_cache(maxsize=None)
def facts(model: str) -> Facts:
    """The Facts of a timm model, from one forward pass on the meta device (shapes, no values:
    milliseconds), or on CPU for a model with an op the meta device lacks."""
    with torch.device("meta"):
        net = create(model)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    info = getattr(net, "feature_info", None)
    try:
        dim, flops = _count(net, "meta")
    except (RuntimeError, NotImplementedError, TypeError):
        dim, flops = _count(create(model), "cpu")
    return Facts(dim, flops, tuple(cfg.get("mean", TORCHVISION.mean)), tuple(cfg.get("std", TORCHVISION.std)),
                 int(info[-1].get("reduction", 32)) if isinstance(info, list) and info else 32,
                 cfg.get("classifier") or "head")


@dataclass(frozen=True)
class TimmSpec:
    """The Backbone of a timm model (featx.net.specs.Backbone), named timm:MODEL."""

    model: str

    default_weights = "timm"
    pooling = "global-pooled pre-logits features (timm forward_head, pre_logits=True)"
    tunable_kernels = False

    def __post_init__(self):
        timm = _timm()
        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model.split(".")[0], timm.list_models(), n=6, cutoff=0.6)
            raise ConfigError(f"unknown timm model {self.model!r}" + (
                f"; close names: {', '.join(close)}" if close else ": timm.list_models() lists them"))

    @property
    def name(self) -> str:
        return f"timm:{self.model}"

    @property
    def arch(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return self.name

    @property
    def file_name(self) -> str:
        return f"timm-{self.model}"

    @property
    def base(self) -> str:
        return self.model.split(".")[0]  # "vgg19.tv_in1k" -> "vgg19"

    @property
    def dim(self) -> int:
        return facts(self.model).dim

    @property
    def min_side(self) -> int:
        # timm's VGG pools a map smaller than fc6's 7x7 window up to it: not the paper's net
        return 224 if self.base in VGG_NETS else max(32, facts(self.model).stride)

    def forward_flops(self, h: int, w: int) -> int:
        """Counted by torch's FlopCounterMode at 224 x 224 and scaled by the area: exact for a
        CNN up to its borders, an estimate for attention, whose cost grows faster."""
        return round(facts(self.model).flops * h * w / (224 * 224))

    def own_preprocess(self):
        """The preprocessing of the model's pretrained weights (its pretrained_cfg)."""
        f = facts(self.model)
        if (f.mean, f.std) == (TORCHVISION.mean, TORCHVISION.std):
            return TORCHVISION
        return Preprocess("timm", "RGB", 1.0, f.mean, f.std)

    def resolve_weights(self, weights, chosen, preprocess, progress):
        text = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else ""
        source, _, local = text.partition(":")
        own = self.own_preprocess()
        if source in NAMED_SOURCES or Path(text).suffix.lower() in (".h5", ".hdf5"):
            if self.base not in VGG_NETS:
                raise WeightsError(f"{text} weights are VGG weights; {self.name} takes timm (timm's "
                                   "pretrained weights, the default), random[:SEED] or a timm state_dict file")
            # featx's VGG sources, read in torchvision's layout; build() converts them to timm's
            return resolve_vgg_weights(NETS[VGG_NETS[self.base]], weights, chosen, preprocess, progress)
        if source == "timm" and not local:
            if chosen is not None and chosen != own:
                raise WeightsError(f"timm's pretrained {self.model} weights are trained with their own "
                                   f"preprocessing; preprocess={preprocess!r} would feed them wrongly prepared images")
            return "timm", None, own, lambda: self._pretrained(progress)
        if source == "random":
            return random_source(self, weights, local, chosen or own)
        path = Path(text).expanduser()
        if not text or not path.is_file():
            raise WeightsError(f"weights file {path} does not exist ({self.name} takes timm, random[:SEED] or a "
                               f"state_dict file {'/'.join(STATE_FILES)}: --weights on the command line, "
                               "weights= in Python)")
        # a timm checkpoint is made for its model's preprocessing unless told otherwise
        return "file", path, chosen or own, lambda: _read_state(path)

    def _pretrained(self, progress: bool) -> dict:
        try:
            return create(self.model, pretrained=True).state_dict()
        except Exception as e:  # offline: huggingface_hub / urllib raise many types
            raise WeightsError(
                f"cannot fetch timm's pretrained weights for {self.model} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no reason given'}). timm keeps "
                "them in the Hugging Face cache ($HF_HOME); offline, give a state_dict file: "
                "--weights FILE.pth or FILE.safetensors (weights=FILE in Python)") from None

    def random_state_dict(self, seed: int) -> dict:
        """timm's own initialisation, seeded: deterministic, for tests and benchmarks."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create(self.model).state_dict()

    def build(self, state_dict, origin):
        model = create(self.model)  # initialised, then every tensor is overwritten
        state = self._timm_layout(state_dict)
        check_tensors(state, {k: tuple(t.shape) for k, t in model.state_dict().items()}, origin, self.name,
                      unknown_too=True)
        model.load_state_dict(state)
        return TimmDense(model)

    def _timm_layout(self, state: dict) -> dict:
        """A state_dict in timm's names: a torchvision-layout VGG's classifier.0/3 become
        pre_logits.fc1/fc2 convolutions (timm's vgg checkpoint filter); the classifier of a
        full checkpoint (fc8, timm's head.fc / fc / head) is left out, as the model has none."""
        if self.base in VGG_NETS and "classifier.0.weight" in state:
            w6, w7 = state["classifier.0.weight"], state["classifier.3.weight"]
            if w6.dim() != 2 or w7.dim() != 2 or w6.shape[1] % 49:
                raise WeightsError(f"classifier.0/3 weights of shapes {tuple(w6.shape)}, {tuple(w7.shape)} "
                                   "are not a VGG's fc6 / fc7")
            renamed = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            renamed.update({"pre_logits.fc1.weight": w6.reshape(w6.shape[0], -1, 7, 7),
                            "pre_logits.fc1.bias": state["classifier.0.bias"],
                            "pre_logits.fc2.weight": w7[:, :, None, None],
                            "pre_logits.fc2.bias": state["classifier.3.bias"]})
            state = renamed
        head = facts(self.model).classifier
        return {k: v for k, v in state.items() if not k.startswith(head + ".")}


def _read_state(path: Path) -> dict:
    """A timm state_dict file: .safetensors, or a torch file read as featx reads weights
    (tensors only, never pickled code; a checkpoint's "state_dict" taken out)."""
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001  (safetensors raises its own types)
            raise WeightsError(f"cannot read weights {path}: {e}") from None
    return load_pth(path)
