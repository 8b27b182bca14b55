"""Winograd convolution for VGG's 3x3 layers in plain torch: is it worth shipping on this CPU?

    python bench/winograd.py                      # Net-E, Q = 256, F(2x2,3x3) and F(4x4,3x3)
    python bench/winograd.py --nets D,E --scales 256,512 --images 4
    python bench/winograd.py --smoke              # seconds; what CI runs

Lavin & Gray (CVPR 2016) computed VGG's 3x3 convolutions with Winograd's minimal filtering
F(m x m, 3 x 3): each (m+2)^2 input tile is transformed (B^T d B), multiplied channel-wise with
the transformed filters (G g G^T) as (m+2)^2 independent matrix products, and transformed
back (A^T M A). Multiplications per output fall from 9 to (m+2)^2/m^2: 2.25x fewer for
F(2x2,3x3), 4x fewer for F(4x4,3x3). Here the transforms are torch tensor ops and the products
one torch.bmm. featx would ship it only if the whole net were at least 1.3x faster than its
fastest direct path on some machine, with max relative descriptor error at most 1e-4 on real
images; this script measures both and writes results/bench/<cpu model>-winograd.json.

The first layer (3 input channels) stays a direct convolution: a 3-deep product is all
transform and no arithmetic.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx import Extractor  # noqa: E402
from featx.extract.cost import descriptor_flops  # noqa: E402
from featx.net.kernels import cpu_info  # noqa: E402
from featx.net.specs import NETS  # noqa: E402

from common import SMOKE, save_figures  # noqa: E402

# Transforms of Lavin & Gray (2016), eqs. 7 and 9 (F(4x4,3x3) with points 0, +-1, +-2, inf).
TRANSFORMS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


class WinogradConv3x3(nn.Module):
    """A 3x3, stride-1, padding-1 Conv2d computed as F(m x m, 3 x 3) (NCHW in and out).

    Each 1-D transform is one wide matrix product, (a x a) @ (a x everything else), so the
    transforms run as a few memory-bound GEMMs rather than millions of tiny ones."""

    def __init__(self, conv: nn.Conv2d, m: int):
        super().__init__()
        bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in TRANSFORMS[m])
        self.m, self.a = m, m + 2
        self.register_buffer("bt", bt.float())
        self.register_buffer("at", at.float())
        # U = G g G^T per (out, in) pair, in float64 then rounded once; laid out (a_row, a_col,
        # C_in, C_out), as the input transform below leaves its points
        u = g @ conv.weight.detach().double() @ g.t()  # (C_out, C_in, a_row, a_col)
        self.register_buffer("u", u.permute(2, 3, 1, 0).reshape(self.a * self.a, *u.shape[1::-1]).float())
        self.register_buffer("bias", conv.bias.detach().float().view(1, -1, 1, 1))

    @staticmethod
    def _apply(mat, t):
        """mat (r x a) applied along t's first axis, which then becomes the second:
        t (a, b, rest) -> (b, r, rest); two calls transform both tile axes and restore their order."""
        a, b = t.shape[:2]
        out = mat @ t.reshape(a, -1)  # (r, b * rest)
        return out.view(mat.shape[0], b, -1).transpose(0, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        m, a = self.m, self.a
        th, tw = -(-h // m), -(-w // m)
        x = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h))
        d = x.unfold(2, a, m).unfold(3, a, m)  # (n, c, th, tw, a_row, a_col), tiles overlap by 2
        d = d.permute(4, 5, 0, 2, 3, 1).reshape(a, a, -1)  # (a_row, a_col, tiles * c)
        v = self._apply(self.bt, self._apply(self.bt, d))  # B^T d B: (a_row, a_col, tiles * c)
        tiles = n * th * tw
        mm = torch.bmm(v.reshape(a * a, tiles, c), self.u)  # the layer's arithmetic: (a*a, tiles, k)
        k = mm.shape[-1]
        y = self._apply(self.at, self._apply(self.at, mm.view(a, a, -1)))  # A^T M A: (m_row, m_col, tiles * k)
        y = y.reshape(m, m, n, th, tw, k).permute(2, 5, 3, 0, 4, 1)  # (n, k, th, m_row, tw, m_col)
        y = y.reshape(n, k, th * m, tw * m)[:, :, :h, :w]
        return y + self.bias


def winograd_features(features: nn.Sequential, m: int, min_channels: int = 16) -> nn.Sequential:
    """The conv stack with every 3x3 layer of at least `min_channels` inputs made Winograd."""
    return nn.Sequential(*[WinogradConv3x3(layer, m) if isinstance(layer, nn.Conv2d)
                           and layer.in_channels >= min_channels else layer for layer in features])


def timed(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def real_or_generated_images(n, smoke):
    """Real photographs where the shared Caltech-101 tree is here (the 1e-4 criterion is about
    real images), else generated ones."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "caltech101",
                        "101_ObjectCategories")
    if not smoke and os.path.isdir(root):
        from PIL import Image
        classes = sorted(os.listdir(root))[1:]
        paths = [os.path.join(root, c, sorted(os.listdir(os.path.join(root, c)))[0])
                 for c in classes[::max(1, len(classes) // n)][:n]]
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths], "Caltech-101 (first image of every k-th class)"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(n)], "generated"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="E")
    p.add_argument("--scales", default="256")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--tiles", default="2,4", help="Winograd output tile sizes m to try")
    p.add_argument("--weights", default="random", help="weights for the error figure, e.g. "
                   "caffe:vgg19_caffe.pth (real weights on real images: the criterion)")
    p.add_argument("--min-channels", default="16,256", help="Winograd for layers with at least this "
                   "many input channels (the rest stay direct); a list tries each")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    if a.smoke:
        NETS["S"] = SMOKE
        a.nets, a.scales, a.images, a.repeats = "S", "224", 2, 1
    images, source = real_or_generated_images(a.images, a.smoke)
    cpu = cpu_info()
    print(f"{cpu.model} ({' '.join(cpu.flags)}), {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{len(images)} {source} images; weights {a.weights}")
    print(f"{'net':<4}{'Q':>5}{'how':>44}{'img/s':>8}{'eff. GFLOP/s':>14}{'vs featx':>10}{'max rel err':>13}")
    rows = []
    for q in (int(s) for s in a.scales.split(",")):
        for net in a.nets.split(","):
            weights = a.weights if net in ("D", "E") or a.weights == "random" else "random"
            ex = Extractor(net, scales=(q,), weights=weights, device="cpu", progress=False)
            flops = sum(descriptor_flops(ex.spec, im.shape[:2], q) for im in images)
            ref, base = timed(lambda: ex.extract(images), a.repeats)

            def report(how, dt, err):
                row = {"net": net, "Q": q, "how": how, "images": len(images), "seconds": dt,
                       "images_per_s": len(images) / dt, "effective_gflops": flops / dt / 1e9,
                       "speedup_vs_featx": base / dt, "max_relative_error": err}
                rows.append(row)
                print(f"{net:<4}{q:>5}{how:>44}{row['images_per_s']:>8.2f}{row['effective_gflops']:>14.0f}"
                      f"{row['speedup_vs_featx']:>9.2f}x" + (f"{err:>13.1e}" if err is not None else ""),
                      flush=True)

            report(f"featx fp32 ({ex.kernels})", base, None)
            wino = Extractor(net, scales=(q,), weights=weights, device="cpu", progress=False,
                             kernels="conv=channels_last," + f"fc={ex.kernels.fc}")
            direct = wino.model.features
            for m in (int(t) for t in a.tiles.split(",")):
                for cmin in (int(c) for c in a.min_channels.split(",")):
                    wino.model.features = winograd_features(direct, m, cmin)
                    out, dt = timed(lambda: wino.extract(images), a.repeats)
                    err = float(np.max(np.abs(out - ref).max(axis=-1) / np.abs(ref).max(axis=-1)))
                    report(f"Winograd F({m}x{m},3x3), C_in >= {cmin}", dt, err)
    if a.json or not a.smoke:
        save_figures("winograd", {"images": source, "weights": a.weights, "rows": rows}, path=a.json,
                     suffix="-winograd")

if __name__ == "__main__":
    main()
