"""The frozen VGG nets, made fully convolutional for dense evaluation (docs/protocol.md sections 1-2).

fc6 becomes a 7x7 convolution over pool5 and fc7 a 1x1 convolution, so one forward pass over a
whole image of any size >= 224 px gives a map of fc7 activations; fc8 is kept only on request
(classification sanity checks). The conv stack is laid out as torchvision's `make_layers` lays it out, so the
state_dict keys are torchvision's (`features.N.*`, `classifier.0/3/6.*`).

The fc "convolutions" are computed as what they are, matrix products over all 7x7 windows of
pool5 (im2col): the same numbers, faster on CPUs than oneDNN's direct 7x7 convolution with
4,096 outputs (docs/speed.md). Which library does those products and the 3x3 convolutions is
chosen per machine (featx.net.kernels).
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import Kernels, onednn_linear, to_fused_convs, to_onednn_convs
from .specs import NetSpec
from .weights import check_tensors


def make_layers(layers) -> nn.Sequential:
    """The conv stack as torchvision's `vgg.make_layers` builds it (3x3 conv + ReLU, 'M' a 2x2
    max-pool), so state_dict keys are torchvision's `features.N.*`; written here because
    importing torchvision costs a second and a half of every process's start-up."""
    out, c = [], 3
    for v in layers:
        if v == "M":
            out.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*out)


class DenseVGG(nn.Module):
    """VGG whose classifier runs as convolutions: input (B,3,H,W) -> fc7 map (B,fc_dim,h,w).

    For a 224x224 input the map is 1x1 and equals torchvision's `classifier[:5]` output.
    fc6/fc7/fc8 hold torchvision's Linear weights as they are and run on every window.
    """

    # im2col copies of at most this many bytes at a time (Q = 768 would need 750 MB at once)
    window_bytes = 1 << 28

    def __init__(self, spec: NetSpec, with_fc8: bool = False):
        super().__init__()
        self.spec = spec
        self.features = make_layers(list(spec.layers))
        self.fc6 = nn.Linear(spec.pool5_channels * spec.fc6_window ** 2, spec.fc_dim)
        self.fc7 = nn.Linear(spec.fc_dim, spec.fc_dim)
        self.fc8 = nn.Linear(spec.fc_dim, spec.num_classes) if with_fc8 else None
        self.kernels = Kernels()

    def use_kernels(self, kernels: Kernels) -> "DenseVGG":
        """Run on `kernels` (featx.net.kernels.choose): call last, once the weights are loaded and the
        model is on its CPU device and dtype; oneDNN layers pack their weights here."""
        if self.kernels != Kernels():
            raise RuntimeError("use_kernels: this model's kernels were already chosen")
        if kernels.conv == "onednn":
            self.features = to_onednn_convs(self.features)
        elif kernels.conv == "fused":
            self.features = to_fused_convs(self.features)
        if kernels.fc == "onednn":
            for name in ("fc6", "fc7", "fc8"):
                layer = getattr(self, name)
                if layer is not None:
                    setattr(self, name, onednn_linear(layer.weight, layer.bias))
        self.kernels = kernels
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels.conv == "onednn":
            x = self.features(x.contiguous().to_mkldnn()).to_dense()
        else:
            x = self.features(x)
        n, c, h, w = x.shape
        k = self.spec.fc6_window
        if h < k or w < k:
            raise ValueError(f"input too small: pool5 is {h}x{w}, fc6 needs {k}x{k} "
                             f"(images of at least {self.spec.min_side} px a side)")
        # (n, h', w', c, k, k): every fc6 window, flattened below in torchvision's (c, y, x)
        # order, so classifier.0.weight applies unchanged
        windows = x.permute(0, 2, 3, 1).unfold(1, k, 1).unfold(2, k, 1)
        oh, ow = windows.shape[1:3]
        per_image = oh * ow * c * k * k * x.element_size()
        step = max(1, self.window_bytes // per_image)
        outs = []
        for i in range(0, n, step):
            y = torch.relu_(self.fc6(windows[i:i + step].reshape(-1, c * k * k)))
            y = torch.relu_(self.fc7(y))
            outs.append(self.fc8(y) if self.fc8 is not None else y)
        # rows are (image, y, x): viewed back as an NCHW map in channels-last memory
        return torch.cat(outs).reshape(n, oh, ow, -1).permute(0, 3, 1, 2)

    def load_torchvision_state_dict(self, state: dict, origin: str = "state_dict") -> None:
        """Load torchvision-layout weights, reshaping the Linear layers into convolutions.

        Every tensor's shape is checked first, so a wrong file fails with the tensor's name
        instead of a reshape error deep inside torch.
        """
        spec = self.spec
        n_in = spec.pool5_channels * spec.fc6_window ** 2
        expected = {}
        for name, p in self.features.state_dict().items():
            expected[f"features.{name}"] = tuple(p.shape)
        expected.update({
            "classifier.0.weight": (spec.fc_dim, n_in), "classifier.0.bias": (spec.fc_dim,),
            "classifier.3.weight": (spec.fc_dim, spec.fc_dim), "classifier.3.bias": (spec.fc_dim,),
        })
        if self.fc8 is not None:
            expected.update({"classifier.6.weight": (spec.num_classes, spec.fc_dim),
                             "classifier.6.bias": (spec.num_classes,)})
        # extra tensors are let be: a full checkpoint holds fc8, which the dense net may not use
        check_tensors(state, expected, origin, f"{spec.label} ({spec.arch})")
        with torch.no_grad():
            self.features.load_state_dict(
                {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
            for layer, i in ((self.fc6, 0), (self.fc7, 3), (self.fc8, 6)):
                if layer is not None:
                    layer.weight.copy_(state[f"classifier.{i}.weight"])
                    layer.bias.copy_(state[f"classifier.{i}.bias"])


def build_dense_vgg(spec: NetSpec, state: dict, origin: str) -> DenseVGG:
    """NetSpec.build: a DenseVGG on CPU holding `state` (torchvision layout, shapes checked)."""
    with torch.device("meta"):  # no random initialisation of 140M parameters: all are loaded
        model = DenseVGG(spec)
    model = model.to_empty(device="cpu")
    model.load_torchvision_state_dict(state, origin=origin)
    return model


def reference_dense_net(spec: NetSpec, state: dict) -> nn.Sequential:
    """The dense net exactly as the paper describes it: torchvision's conv stack, fc6 a 7x7
    nn.Conv2d, fc7 a 1x1, NCHW. DenseVGG's kernels are tested against it; bench/extract.py
    times it as the naive baseline."""
    features = make_layers(list(spec.layers))
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    fc6 = nn.Conv2d(spec.pool5_channels, spec.fc_dim, spec.fc6_window)
    fc7 = nn.Conv2d(spec.fc_dim, spec.fc_dim, 1)
    with torch.no_grad():
        fc6.weight.copy_(state["classifier.0.weight"].reshape(fc6.weight.shape))
        fc6.bias.copy_(state["classifier.0.bias"])
        fc7.weight.copy_(state["classifier.3.weight"][:, :, None, None])
        fc7.bias.copy_(state["classifier.3.bias"])
    return nn.Sequential(features, fc6, nn.ReLU(), fc7, nn.ReLU()).eval()


def random_state_dict(spec: NetSpec, seed: int = 0) -> dict:
    """Deterministic random weights in torchvision layout, initialised as torchvision does.

    For tests and benchmarks only: features are meaningless, but shapes and costs are real.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    model = make_layers(list(spec.layers))
    for name, p in model.state_dict().items():
        if name.endswith("weight"):
            fan_out = p.shape[0] * p.shape[2] * p.shape[3]
            state[f"features.{name}"] = torch.randn(p.shape, generator=gen) * (2.0 / fan_out) ** 0.5
        else:
            state[f"features.{name}"] = torch.zeros(p.shape)
    n_in = spec.pool5_channels * spec.fc6_window ** 2
    for idx, (n_out, n) in {0: (spec.fc_dim, n_in), 3: (spec.fc_dim, spec.fc_dim),
                            6: (spec.num_classes, spec.fc_dim)}.items():
        # Kaiming scale rather than torchvision's N(0, 0.01) keeps fc7 activations well above
        # float rounding, so equivalence tests compare meaningful numbers.
        state[f"classifier.{idx}.weight"] = torch.randn((n_out, n), generator=gen) * (2.0 / n) ** 0.5
        state[f"classifier.{idx}.bias"] = torch.randn((n_out,), generator=gen) * 0.01
    return state
