"""The typed configuration: what a descriptor is (`DescriptorSpec`), how its classifier is
trained (`ProtocolSpec`), and both on one dataset (`Config`). The command line, pipeline files,
featx.evaluate.experiment and result files build and read these same objects; each is validated once,
when made, field by field as its CONSTRAINTS say (scikit-learn's `_parameter_constraints`
style), so a value that passes here is valid everywhere. Standard library and featx.net.specs only:
`featx --help` stays light.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError
from .net.specs import NETS, check_scales, default_weights, get_spec, label_of
from .options import (AGGREGATIONS, COMPUTE_TYPES, DEFAULT_C_GRID, DEFAULT_NET, DEFAULT_SCALES, PREPROCESS_NAMES,
                      SETTINGS, SOLVERS)
from .paths import cache_path


def one_of(choices: tuple) -> Callable:
    def check(value, name, spec):
        if value not in choices:
            raise ConfigError(f"{name} {value!r}: choose one of {', '.join(choices)}")
        return value
    return check


def check_nets(value, name, spec) -> tuple:
    if isinstance(value, str):
        value = tuple(v for v in value.split(",") if v.strip())
    if not hasattr(value, "__iter__") or any(not isinstance(n, str) and not hasattr(n, "forward_flops") for n in value):
        raise ConfigError(f"{name} {value!r}: give net names, e.g. ('D', 'E') or ('timm:resnet50',)")
    nets = tuple(get_spec(n).name for n in value)  # "e" -> "E"; an unknown name says what is known
    if not nets or len(set(nets)) != len(nets):
        raise ConfigError(f"{name} {list(value)}: name at least one net, each once")
    return nets


def check_scales_of_nets(value, name, spec) -> tuple:
    scales = value
    for net in spec.nets:
        scales = check_scales(scales, get_spec(net))
    return tuple(scales)


def check_c_grid(values, name="c_grid", spec=None) -> tuple:
    """The one validator of C values: finite positive numbers."""
    if isinstance(values, (str, bytes, int, float)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} {values!r}: give a list of positive numbers, e.g. (0.1, 1, 10)")
    values = tuple(values)
    bad = [c for c in values if isinstance(c, bool) or not isinstance(c, (int, float))
           or not math.isfinite(c) or c <= 0]
    if not values or bad:
        raise ConfigError(f"{name} {list(values)}: C must be a finite positive number"
                          + (f", not {bad[0]!r}" if bad else ""))
    return tuple(float(c) for c in values)


def per_net(value, nets, name, allowed=None) -> dict:
    """One value for every net, or {net: value}: as {net: value} over exactly these nets."""
    if isinstance(value, dict):
        given = {get_spec(k).name: v for k, v in value.items()}
        unknown = sorted(set(given) - set(nets))
        if unknown:
            raise ConfigError(f"{name} names {unknown[0]}, which is not among the nets {list(nets)}")
        out = {n: given.get(n) for n in nets}
    else:
        out = {n: value for n in nets}
    for net, v in out.items():
        if isinstance(v, os.PathLike):
            out[net] = v = os.fspath(v)
        if v is not None and not isinstance(v, str) and not hasattr(v, "state_dict"):  # or loaded Weights
            raise ConfigError(f"{name} of {net}: {v!r} is not a name or a file path")
        if allowed is not None and v is not None and v not in allowed:
            raise ConfigError(f"{name} of {net}: {v!r}: choose one of {', '.join(allowed)}")
    return out


def parse_per_net(text: str | None, nets=None, default=None, option: str = "--weights",
                  form: str = "NET=VALUE, e.g. E=caffe:vgg19_caffe.pth") -> dict:
    """A per-net option as written on the command line: one value for every net of `nets`
    ("caffe"), or NET=VALUE pairs ("D=vgg16.pth,E=caffe:vgg19.pth,timm:resnet50=r50.pth").
    nets: the nets that must each get a value (None: whichever are named); a net not named
    gets default(net), and without a default is an error."""
    if text is None or "=" not in text:
        if nets is None:
            if text:
                raise ConfigError(f"{option} {text!r}: write {form}")
            return {}
        return {n: text if text is not None else default and default(n) for n in nets}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        net, _, value = part.partition("=")
        try:
            out[get_spec(net.strip()).name] = value.strip()
        except ConfigError as e:
            raise ConfigError(f"{option} {text!r}: {e}") from None
    extra = [n for n in out if nets is not None and n not in nets]
    if extra:
        raise ConfigError(f"{option} {text!r} names {label_of(extra[0])}, which is not among the nets "
                          f"({', '.join(map(label_of, nets))})")
    absent = [n for n in nets or () if n not in out]
    if absent and default is None:
        raise ConfigError(f"{option} {text!r}: no value given for {label_of(absent[0])}")
    return {n: out[n] if n in out else default(n) for n in nets} if nets is not None else out


def check_weights(value, name, spec) -> dict:
    """{net: weight source}; a net given none gets its backbone's default."""
    return {n: w if w is not None else default_weights(n) for n, w in per_net(value, spec.nets, name).items()}


def check_preprocess(value, name, spec) -> dict:
    """{net: preprocessing name or None (the weights' own)}; "timm" (a timm model's own) for
    timm nets only."""
    out = per_net(value, spec.nets, name, PREPROCESS_NAMES)
    for net, v in out.items():
        if v == "timm" and get_spec(net).own_preprocess() is None:
            raise ConfigError(f"{name} of {net}: 'timm' is a timm model's own preprocessing; "
                              f"{label_of(net)} takes caffe or torchvision")
    return out


def check_flag(value, name, spec) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} {value!r}: give True or False")
    return value


def check_text(value, name, spec) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} {value!r}: give a name")
    return value


class FieldError(ConfigError):
    """A field of a spec is not valid; `field` names it (a pipeline file reports it as its key)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _Checked:
    """Runs CONSTRAINTS (field -> check(value, name, self) -> normalised value) in field order
    when the frozen dataclass is made: later checks see earlier fields normalised."""

    CONSTRAINTS: dict = {}

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = self.CONSTRAINTS.get(f.name)
            if check is not None:
                try:
                    value = check(getattr(self, f.name), f.name, self)
                except FieldError:
                    raise
                except ConfigError as e:
                    raise FieldError(f.name, str(e)) from None
                object.__setattr__(self, f.name, value)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DescriptorSpec(_Checked):
    """What an image's descriptor is: nets (fused in this order), their weights and
    preprocessing, the scales Q, how scales are combined, flip averaging, the compute type, and
    (VOC-2012 action) whether the person box is stacked with the whole image."""

    nets: tuple = (DEFAULT_NET,)
    scales: tuple = DEFAULT_SCALES
    aggregate: str = "mean"
    weights: dict = field(default_factory=dict)  # net -> weight source (one value: every net)
    preprocess: dict = field(default_factory=dict)  # net -> preprocessing of a bare .pth, or None
    flip: bool = True
    dtype: str = "float32"
    setting: str = "image"

    CONSTRAINTS = {"nets": check_nets, "scales": check_scales_of_nets, "aggregate": one_of(AGGREGATIONS),
                   "weights": check_weights, "preprocess": check_preprocess, "flip": check_flag,
                   "dtype": one_of(COMPUTE_TYPES), "setting": one_of(SETTINGS)}

    @property
    def views(self) -> tuple:
        """What each sample is seen as: the whole image, and with image+box its person box."""
        return ("image", "box") if self.setting == "image+box" else ("image",)

    def cache_path(self, net: str, images, cache_dir=None, root=None):
        """Where featx extract keeps this descriptor's cache of `net` for an image set
        (featx.paths.cache_path: by the net, its weights and the compute type)."""
        return cache_path(images, net, self.weights[net], self.dtype, cache_dir, root)

    def replace(self, **changes) -> "DescriptorSpec":
        """With other nets and no weights or preprocessing given, the nets kept keep theirs
        (the others get their defaults)."""
        if "nets" in changes:
            nets = check_nets(changes["nets"], "nets", self)
            for name in ("weights", "preprocess"):
                changes.setdefault(name, {n: v for n, v in getattr(self, name).items() if n in nets})
        return dataclasses.replace(self, **changes)

    def nets_name(self) -> str:
        """The nets in file names: "DE" for the paper's, else file names joined by "+"."""
        if all(n in NETS for n in self.nets):
            return "".join(self.nets)
        return "+".join(get_spec(n).file_name for n in self.nets)


@dataclass(frozen=True)
class ProtocolSpec(_Checked):
    """How the classifiers are trained: the SVM solver, the C values searched on validation
    data, and the device the solver runs on."""

    solver: str = "torch"
    c_grid: tuple = DEFAULT_C_GRID
    device: str = "cpu"

    CONSTRAINTS = {"solver": one_of(SOLVERS), "c_grid": check_c_grid, "device": check_text}


class ReadsDescriptor:
    """A DescriptorSpec's fields read through `self.descriptor`, for what holds one (Config, a
    pipeline, a model record): cfg.nets is cfg.descriptor.nets."""

    nets = property(lambda self: self.descriptor.nets)
    scales = property(lambda self: self.descriptor.scales)
    aggregate = property(lambda self: self.descriptor.aggregate)
    preprocess = property(lambda self: self.descriptor.preprocess)
    flip = property(lambda self: self.descriptor.flip)
    dtype = property(lambda self: self.descriptor.dtype)
    setting = property(lambda self: self.descriptor.setting)
    views = property(lambda self: self.descriptor.views)


def _split_fields(fields: dict) -> tuple[dict, dict]:
    """Configuration fields as (DescriptorSpec's, ProtocolSpec's); an unknown one is refused."""
    d, p = ({f.name for f in dataclasses.fields(kind)} for kind in (DescriptorSpec, ProtocolSpec))
    unknown = sorted(set(fields) - d - p)
    if unknown:
        raise ConfigError(f"unknown configuration field {unknown[0]!r}: the fields are {', '.join(sorted(d | p))}")
    return {k: v for k, v in fields.items() if k in d}, {k: v for k, v in fields.items() if k in p}


@dataclass(frozen=True)
class Config(ReadsDescriptor):
    """One experiment: a descriptor and a protocol on a dataset. Stored in result files flat,
    field by field, as featx has always written them (`to_json`, `from_json`)."""

    dataset: str
    descriptor: DescriptorSpec = field(default_factory=DescriptorSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)

    def __post_init__(self):
        check_text(self.dataset, "dataset", self)
        for name, kind in (("descriptor", DescriptorSpec), ("protocol", ProtocolSpec)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")

    # the fields read through, so a Config reads as the flat record it is stored as
    weights = property(lambda self: self.descriptor.weights)
    solver = property(lambda self: self.protocol.solver)
    c_grid = property(lambda self: self.protocol.c_grid)
    device = property(lambda self: self.protocol.device)

    @classmethod
    def of(cls, dataset: str, **fields) -> "Config":
        """Config.of("voc2007", nets=("D",), solver="liblinear"): each field to its spec."""
        d, p = _split_fields(fields)
        return cls(dataset, DescriptorSpec(**d), ProtocolSpec(**p))

    def replace(self, **fields) -> "Config":
        """This configuration with some fields changed (checked again)."""
        dataset = fields.pop("dataset", self.dataset)
        d, p = _split_fields(fields)
        return Config(dataset, self.descriptor.replace(**d), self.protocol.replace(**p))

    def check(self, data) -> "Config":
        """What only the dataset can say: whether it has the views the setting reads."""
        missing = [v for v in self.views if v not in data.views]
        if missing:
            raise ConfigError(f"setting {self.setting} needs {missing[0]} views of the samples, which "
                              f"{data.name} does not have (image+box is for voc2012-action)")
        return self

    def run_name(self) -> str:
        """The results' file stem: "DE-256-512x3-mean" (nets, scales, aggregation; the setting
        for VOC-2012 action; a compute type other than float32). Nets other than the paper's
        are joined by "+" under their file names: "E+timm-resnet50-256-256x1-mean"."""
        qs = self.scales
        return "-".join([self.descriptor.nets_name(), f"{qs[0]}-{qs[-1]}x{len(qs)}", self.aggregate]
                        + ([self.setting.replace("+", "")] if self.dataset == "voc2012-action" else [])
                        + ([self.dtype] if self.dtype != "float32" else []))

    def to_json(self) -> dict:
        out = {"dataset": self.dataset}
        for spec in (self.descriptor, self.protocol):
            out.update({f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
        out["nets"], out["scales"], out["c_grid"] = list(self.nets), list(self.scales), list(self.c_grid)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        """A result file's configuration; fields written by older featx versions only (none
        yet) are left out, fields absent take their defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a table of fields, got {d!r}")
        return cls.of(d["dataset"], **{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in d.items() if k != "dataset"})
