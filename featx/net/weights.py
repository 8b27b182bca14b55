"""Where Net-D / Net-E weights come from, and the preprocessing that belongs to each source.

Preprocessing travels with the weights (as in timm / torchvision): a source fixes the channel
order, value range, mean and std, so an image is always prepared the way its weights expect.

Sources:
  "torchvision"  torchvision's IMAGENET1K_V1 weights (RGB, [0,1], ImageNet mean/std).
  "caffe"        the authors' Caffe release in its common PyTorch conversion
                 (BGR, [0,255], mean B 103.939 G 116.779 R 123.68 subtracted, no std).
  FILE.pth/.pt   a torchvision-layout state_dict; its preprocessing must be named.
  FILE.h5        a Keras weight file (vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5),
                 converted at load time; Caffe preprocessing (that is how Keras ported them).
  "random"       deterministic random weights ("random:SEED"), for tests and benchmarks.
Downloaded files live in torch's hub cache ($TORCH_HOME/hub/checkpoints) and are read from
there without network afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from ..atomic import file_digest, write_text
from ..errors import OutputError, WeightsError
from ..paths import user_cache_dir

if TYPE_CHECKING:  # torch loads only when weights do: `featx info` and `--help` stay light
    import torch

    from .specs import Backbone, NetSpec


@dataclass(frozen=True)
class Preprocess:
    """How uint8 RGB pixels become the net's input: reorder, rescale, subtract mean, divide std.

    `mean` and `std` are given in the net's channel order and value range.
    """

    name: str
    channel_order: str  # "RGB" or "BGR"
    value_range: float  # 1.0: inputs in [0, 1]; 255.0: inputs in [0, 255]
    mean: tuple
    std: tuple = (1.0, 1.0, 1.0)

    def __call__(self, x: "torch.Tensor", dtype=None) -> "torch.Tensor":
        """(B, 3, H, W) uint8 RGB -> normalised float input (dtype: float32), channels-last."""
        import torch
        dtype = dtype or torch.float32
        x = x.float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        scale = torch.tensor([self.value_range / 255.0 / s for s in self.std], device=x.device)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=x.device)
        x = torch.addcmul(shift.view(1, 3, 1, 1), x, scale.view(1, 3, 1, 1))
        return x.to(dtype).contiguous(memory_format=torch.channels_last)


TORCHVISION = Preprocess("torchvision", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE = Preprocess("caffe", "BGR", 255.0, (103.939, 116.779, 123.68))
PREPROCESS = {p.name: p for p in (TORCHVISION, CAFFE)}

@dataclass(frozen=True)
class WeightSource:
    """One published set of weights for one architecture and what featx needs to use it right
    (as timm's PretrainedCfg): where it is, whether the download is hash-checked, how images
    are prepared for it, who made it and under which terms."""

    source: str  # its name on the command line: "torchvision", "caffe"
    arch: str  # "vgg16", "vgg19"
    url: str  # fetched once into torch's hub cache (`file`)
    preprocess: Preprocess
    hash_checked: bool  # the file name carries a sha256 prefix that torch.hub verifies on download
    origin: str
    licence: str

    @property
    def file(self) -> Path:
        return hub_path(self.url)


_TORCHVISION_ORIGIN = "torchvision's IMAGENET1K_V1 weights (the same URL as VGG16_Weights.IMAGENET1K_V1.url)"
_CAFFE_ORIGIN = ("the authors' Caffe release (robots.ox.ac.uk/~vgg/research/very_deep), converted to "
                 "torchvision's layout by J. Johnson (github.com/jcjohnson/pytorch-vgg)")
WEIGHT_SOURCES = {(w.source, w.arch): w for w in (
    WeightSource("torchvision", "vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth", TORCHVISION,
                 True, _TORCHVISION_ORIGIN, "BSD-3-Clause (torchvision's)"),
    WeightSource("torchvision", "vgg19", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", TORCHVISION,
                 True, _TORCHVISION_ORIGIN, "BSD-3-Clause (torchvision's)"),
    # the conversions' names follow another convention than torch.hub's sha256 prefix
    WeightSource("caffe", "vgg16", "https://web.eecs.umich.edu/~justincj/models/vgg16-00b39a1b.pth", CAFFE,
                 False, _CAFFE_ORIGIN, "CC BY 4.0 (the authors' release)"),
    WeightSource("caffe", "vgg19", "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth", CAFFE,
                 False, _CAFFE_ORIGIN, "CC BY 4.0 (the authors' release)"),
)}
# The named sources, each with its own preprocessing (also for "SOURCE:FILE", a local copy)
NAMED_SOURCES = {w.source: w.preprocess for w in WEIGHT_SOURCES.values()}


def weight_source(source: str, arch: str) -> WeightSource:
    try:
        return WEIGHT_SOURCES[(source, arch)]
    except KeyError:
        raise WeightsError(f"no {source} weights are published for {arch}") from None


KERAS_FILES = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
}


# Weights featx recognises by their content (tensor digest, see `state_digest`; older caches
# recorded the file's sha256), so results and reports can say exactly what they were made with.
PACKED_VGG19 = ("8-bit packed copy of the authors' VGG19 release (Keras port; conv1-3 and biases exact, "
                "other tensors 8-bit; fc7 descriptors within ~0.1% of the original)")
KNOWN_WEIGHTS = {
    "tensors:ead1ac4d09c26b12f5a74dc5e7c464cfae5f58e01e5d81cafa1f501916cf2c4c": PACKED_VGG19,
    # the same, as 0.2.0 caches recorded it: sha256 of the file unpack.py writes as vgg19_caffe.pth
    "5c2bca76f6208ef2b911c1b3d0837fccddc3f3a0e6200b8df147f576ec64e3fd": PACKED_VGG19,
}


@dataclass
class Weights:
    """A loaded state_dict (torchvision layout) and everything needed to use it right.

    digest: sha256 over the tensors (names, dtypes, shapes, values), so the same weights saved
    twice, or under another name, are the same source: caches key on it."""

    state_dict: dict = field(repr=False)
    preprocess: Preprocess
    source: str  # "torchvision", "caffe", "file", "random:SEED"
    path: Path | None = None
    digest: str = ""

    def __post_init__(self):
        if self.state_dict and not self.digest:
            self.digest = state_digest(self.state_dict, str(self.path or self.source))

    @property
    def tag(self) -> str:
        return weights_tag(self.path if self.source == "file" else self.source)

    @property
    def known_as(self) -> str | None:
        """What these weights are, if featx knows them by content (else None)."""
        return KNOWN_WEIGHTS.get(self.digest)

    def file_checksum(self) -> str:
        """What featx 0.2.0 recorded as weights_sha256: the file's sha256 (or the source name).
        Only used to recognise caches written before content digests."""
        if self.path is None:
            return self.source
        return file_sha256(self.path)


def state_digest(state: dict, origin: str = "weights") -> str:
    """sha256 over a state_dict's tensors in name order (name, dtype, shape, bytes).

    Also the sanity check every loaded state passes: a tensor holding NaN or infinity, or a
    weight tensor that is all zeros, is refused with its name (a broken file would otherwise
    give NaN or constant descriptors that are cached as done).
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise WeightsError(f"{origin}: tensor {name} holds NaN or infinite values")
            if t.dim() >= 2 and not bool(t.any()):
                raise WeightsError(f"{origin}: tensor {name} is all zeros")
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return "tensors:" + digest.hexdigest()


def describe_weights(digest: str) -> str | None:
    """What weights with this digest (or 0.2.0 file sha256) are, if featx knows them."""
    return KNOWN_WEIGHTS.get(str(digest))


def weights_tag(weights) -> str:
    """Short name of a weight source for file names: the source, or the file's stem.

    "caffe:FILE" / "torchvision:FILE" (a local copy of a named source) are tagged as the source."""
    text = str(weights)
    name, _, rest = text.partition(":")
    if name in NAMED_SOURCES:
        return name
    if name == "random":
        return f"random-{rest or 0}"
    return Path(text).stem


def file_sha256(path: Path) -> str:
    return file_digest(path)


def hub_path(url: str) -> Path:
    """Where torch.hub keeps (or will keep) the file behind `url`."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_weights(spec: "Backbone", weights=None, preprocess: str | None = None,
                 progress: bool = True, tensors: bool = True) -> Weights:
    """Resolve a weight source for `spec` (None: the backbone's default) into a state_dict and
    its preprocessing.

    tensors=False resolves the source only: a Weights without tensors whose digest is the one
    featx remembers for the file (see `remembered_digest`), or "" where it knows none; nothing
    is read or downloaded (featx extract decides so whether there is anything to compute)."""
    chosen = PREPROCESS.get(preprocess) if preprocess is not None else None
    if preprocess == "timm":  # a timm model's own (its pretrained_cfg), as its caches record it
        chosen = spec.own_preprocess()
        if chosen is None:
            raise WeightsError(f"preprocess 'timm' is a timm model's own; {spec.label} takes caffe or torchvision")
    elif preprocess is not None and chosen is None:
        raise WeightsError(f"unknown preprocess {preprocess!r}: choose 'caffe' or 'torchvision' "
                           "(or, for a timm:MODEL net, 'timm': the model's own)")
    if isinstance(weights, Weights):  # already loaded (e.g. shipped to a Ray worker)
        if chosen is not None and chosen != weights.preprocess:
            raise WeightsError(f"these weights come with {weights.preprocess.name} preprocessing, "
                               f"not {preprocess!r}")
        return weights
    if weights is None:
        weights = spec.default_weights
    source, path, fixed, read = spec.resolve_weights(weights, chosen, preprocess, progress)
    if not tensors:
        known = path if path is not None and path.is_file() else None
        return Weights({}, fixed, source, path, digest=(remembered_digest(known, spec.arch) if known else None) or "")
    state = read()
    digest = remembered_digest(path, spec.arch) if path is not None else None
    loaded = Weights(state, fixed, source, path, digest=digest or "")
    if path is not None and not digest:
        remember_digest(path, spec.arch, loaded.digest)
    return loaded


def check_tensors(state: dict, expected: dict, origin: str, label: str, unknown_too: bool = False) -> None:
    """Refuse a state_dict that lacks a tensor of `expected` ({name: shape}), holds one of
    another shape, or (unknown_too) one the model does not have, naming the file and tensors
    before torch fails on a reshape deep inside."""
    def names(keys):
        return f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"

    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(f"{origin}: missing {len(missing)} tensor(s) for {label}: {names(missing)}")
    unknown = [k for k in state if k not in expected] if unknown_too else []
    if unknown:
        raise WeightsError(f"{origin}: not {label} weights: {len(unknown)} tensor(s) unknown to the model: "
                           f"{names(unknown)}")
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(shape):
            raise WeightsError(f"{origin}: tensor {key} has shape {got}, expected {tuple(shape)} for {label}")


def random_source(spec: "Backbone", weights, seed_text: str, preprocess: Preprocess):
    """The resolved source "random[:SEED]": the backbone's seeded random weights."""
    try:
        seed = int(seed_text or 0)
    except ValueError:
        raise WeightsError(f"weights {weights!r}: write random or random:SEED with an integer SEED") from None
    return f"random:{seed}", None, preprocess, lambda: spec.random_state_dict(seed)


def resolve_vgg_weights(spec, weights, chosen, preprocess, progress):
    """NetSpec.resolve_weights: (source, file or None, preprocessing, a function reading the
    state_dict) of a weight source; the file of a named source is torch's hub copy, fetched by
    the reader if absent."""
    source, _, local = str(weights).partition(":") if isinstance(weights, (str, Path)) else ("", "", "")
    if source in NAMED_SOURCES:
        fixed = NAMED_SOURCES[source]
        if chosen is not None and chosen != fixed:
            raise WeightsError(f"{source} weights are trained with {source} preprocessing; "
                               f"preprocess={preprocess!r} would feed them wrongly prepared images")
        if local:  # "caffe:FILE": that source's weights, from a copy the user has
            path = Path(local).expanduser()
            if not path.is_file():
                raise WeightsError(f"weights file {path} does not exist (given as {weights})")
            return source, path, fixed, lambda: _load_weights_file(path, spec)
        published = weight_source(source, spec.arch)
        return source, published.file, fixed, lambda: load_pth(
            _fetch(published.url, check_hash=published.hash_checked, progress=progress))
    if source == "random":
        return random_source(spec, weights, local, chosen or TORCHVISION)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (weights are 'torchvision', 'caffe', "
                           "'random' or a .pth/.h5 file: --weights on the command line, weights= in Python)")
    if path.suffix.lower() in (".h5", ".hdf5"):
        return "file", path, chosen or CAFFE, lambda: convert_keras_h5(path, spec)
    if chosen is None:
        raise WeightsError(f"{path}: a bare state_dict does not say how images must be prepared; "
                           "name its preprocessing, caffe (BGR, 0..255, mean-subtracted) or torchvision "
                           "(RGB, 0..1, ImageNet mean/std): --preprocess caffe on the command line, "
                           "preprocess='caffe' in Python")
    return "file", path, chosen, lambda: load_pth(path)


# -- the tensor digest of each weights file, remembered between processes ---------------------
# Hashing VGG19's 575 MB of tensors takes seconds; a file whose path, size, mtime, ctime and
# inode are unchanged has the same tensors, so its digest is looked up instead (and the NaN /
# all-zero checks that computing it makes were passed when it was first computed).

def _digest_memo() -> Path:
    return user_cache_dir() / "weights-digests.json"


def _file_key(path: Path, arch: str) -> tuple[str, list]:
    st = path.stat()
    return f"{arch}:{path.resolve()}", [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_memo() -> dict:
    try:
        memo = json.loads(_digest_memo().read_text(encoding="utf-8"))
        return memo["files"] if isinstance(memo, dict) and isinstance(memo.get("files"), dict) else {}
    except (OSError, ValueError, KeyError):
        return {}  # none yet, unreadable or damaged: digests are computed again


def remembered_digest(path, arch: str) -> str | None:
    """The tensor digest featx computed for this file before, if the file is unchanged since."""
    try:
        key, signature = _file_key(Path(path), arch)
    except OSError:
        return None
    entry = _read_memo().get(key)
    if isinstance(entry, dict) and entry.get("signature") == signature and str(entry.get("digest", "")).startswith("tensors:"):
        return entry["digest"]
    return None


def find_file(digest: str, arch: str) -> Path | None:
    """A weights file on this machine whose tensors have this digest, as featx recorded it when
    it last loaded the file (and the file is unchanged since), or None."""
    for key, entry in _read_memo().items():
        kind, _, where = key.partition(":")
        if kind == arch and isinstance(entry, dict) and entry.get("digest") == digest:
            if remembered_digest(where, arch) == digest:
                return Path(where)
    return None


def remember_digest(path, arch: str, digest: str) -> None:
    """Record a file's tensor digest for later processes (atomically; a folder that cannot be
    written only means the next process hashes the file again)."""
    try:
        key, signature = _file_key(Path(path), arch)
        memo = _read_memo()
        memo[key] = {"signature": signature, "digest": digest}
        write_text(_digest_memo(), json.dumps({"format": "featx-weights-digests", "files": memo}, indent=1))
    except (OSError, OutputError):
        pass


def _load_weights_file(path: Path, spec: "NetSpec") -> dict:
    return convert_keras_h5(path, spec) if path.suffix.lower() in (".h5", ".hdf5") else load_pth(path)


def _fetch(url: str, check_hash: bool, progress: bool) -> Path:
    path = hub_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path) if check_hash
                                       else None, progress=progress)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsError(
            f"cannot download {url} ({_reason(e)}) and no cached copy exists at {path}. "
            f"Copy the file there, set TORCH_HOME to where it is, or give a weights file "
            f"(--weights FILE on the command line, weights=FILE in Python).") from None
    return path


def _hash_prefix(path: Path) -> str | None:
    stem = path.stem
    return stem.rsplit("-", 1)[1] if "-" in stem else None


def _reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or e).strip() or type(e).__name__


def load_pth(path: Path) -> dict:
    """A torch state_dict file, read as tensors only (never pickled code); a checkpoint's
    "state_dict" taken out. Any other content is a WeightsError naming the file."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here advises weights_only=False, i.e. running the file's code:
        # featx never does that, and never suggests it.
        raise WeightsError(f"cannot read weights {path}: it holds pickled Python objects besides "
                           "tensors, which featx refuses to load (loading them can run code). "
                           "Save a plain state_dict instead: torch.save(model.state_dict(), FILE)") from None
    except Exception as e:  # torch raises several types for a bad or unsafe file
        raise WeightsError(f"cannot read weights {path}: {_reason(e)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state_dict (a dict of tensor names to tensors)")
    return state


def keras_layer_names(spec: "NetSpec") -> list[str]:
    """Keras' names for the conv layers: block1_conv1, block1_conv2, block2_conv1, ..."""
    names, block, conv = [], 1, 0
    for v in spec.layers:
        if v == "M":
            block, conv = block + 1, 0
        else:
            conv += 1
            names.append(f"block{block}_conv{conv}")
    return names


def convert_keras_h5(path: Path, spec: "NetSpec", with_fc8: bool = True) -> dict:
    """Read a Keras VGG weight file into a torchvision-layout state_dict.

    Keras stores conv kernels as (kh, kw, in, out) and dense kernels as (in, out); its
    Flatten runs over pool5 in (h, w, c) order where torch's runs in (c, h, w) order, so
    fc6's input rows are permuted: torch[o, c*49 + h*7 + w] = keras[(h*7 + w)*C + c, o].
    """
    import h5py
    import torch

    def tensors(root, layer):
        if layer not in root:
            return None
        group = root[layer]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
        if names:
            arrays = [np.asarray(group[n]) for n in names]
        else:
            arrays = []
            group.visititems(lambda _, obj: arrays.append(np.asarray(obj))
                             if isinstance(obj, h5py.Dataset) else None)
        kernel = [a for a in arrays if a.ndim >= 2]
        bias = [a for a in arrays if a.ndim == 1]
        if len(kernel) != 1 or len(bias) != 1:
            raise WeightsError(f"{path}: layer {layer} should hold one kernel and one bias, "
                               f"found shapes {[a.shape for a in arrays]}")
        return kernel[0].astype(np.float32), bias[0].astype(np.float32)

    def check(layer, what, got, want):
        if tuple(got) != tuple(want):
            raise WeightsError(f"{path}: {layer} {what} has shape {tuple(got)}, expected "
                               f"{tuple(want)} (Keras layout) for Net-{spec.name} ({spec.arch})")

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"cannot read {path} as HDF5: {e}") from None
    state, c_in = {}, 3
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        convs = [i for i, v in enumerate(spec.layers) if v != "M"]
        # torchvision's make_layers interleaves ReLU (and 'M' pools): conv k sits at index
        # position-in-layers + number of convs before it.
        for k, (layer, pos) in enumerate(zip(keras_layer_names(spec), convs)):
            c_out = spec.layers[pos]
            found = tensors(root, layer)
            if found is None:
                raise WeightsError(f"{path}: no layer {layer}; is this a VGG "
                                   f"{spec.arch} Keras weight file ({KERAS_FILES.get(spec.arch)})?")
            w, b = found
            check(layer, "kernel", w.shape, (3, 3, c_in, c_out))
            check(layer, "bias", b.shape, (c_out,))
            idx = pos + k
            state[f"features.{idx}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
            state[f"features.{idx}.bias"] = torch.from_numpy(b)
            c_in = c_out
        win = spec.fc6_window
        dense = [("fc1", 0, (win * win * c_in, spec.fc_dim)), ("fc2", 3, (spec.fc_dim, spec.fc_dim))]
        if with_fc8 and "predictions" in root:
            dense.append(("predictions", 6, (spec.fc_dim, spec.num_classes)))
        for layer, idx, shape in dense:
            found = tensors(root, layer)
            if found is None:
                raise WeightsError(f"{path}: no layer {layer}; featx needs the fully connected "
                                   f"layers, so a '_notop' file will not do "
                                   f"(use {KERAS_FILES.get(spec.arch, 'the full file')})")
            w, b = found
            check(layer, "kernel", w.shape, shape)
            check(layer, "bias", b.shape, shape[1:])
            if layer == "fc1":
                w = w.reshape(win, win, c_in, -1).transpose(3, 2, 0, 1).reshape(spec.fc_dim, -1)
            else:
                w = w.T
            state[f"classifier.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
            state[f"classifier.{idx}.bias"] = torch.from_numpy(b)
    return state
