"""Declarative experiments: one TOML file per run of the paper's Appendix B (pipelines/).

    # pipelines/voc2007-D.toml
    table = "table11"            # table11, table12 or ablation
    row = "Net-D"                # where the number goes in the report
    dataset = "voc2007"
    nets = ["D"]
    weights = { D = "torchvision" }
    scales = [256, 384, 512, 640, 768]
    aggregate = "mean"
    c_grid = [0.01, 0.1, 1, 10]
    metric = "map"               # map (VOC) or mcr (Caltech)
    paper = 89.3                 # the paper's figure (Caltech: [mean, std])

Files are validated on load; every error names the file and the key.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, DescriptorSpec, FieldError, ProtocolSpec, ReadsDescriptor
from ..data.datasets import DATASETS
from ..errors import ConfigError
from ..evaluate.metrics import METRICS
from ..net.weights import weights_tag
from ..options import DEFAULT_C_GRID

TABLES = ("table11", "table12", "ablation")
FIELDS = {"table", "row", "dataset", "nets", "weights", "scales", "aggregate", "setting", "c_grid",
          "metric", "paper", "note", "baseline"}
REQUIRED = ("table", "row", "dataset", "nets", "scales", "aggregate", "metric")


@dataclass
class Pipeline(ReadsDescriptor):
    """One of the paper's experiments (a pipelines/*.toml file): which row of which table, the
    descriptor and C grid it runs, the metric and the paper's figure."""

    name: str  # the file's stem: results/<dataset>/<name>.*
    path: Path
    table: str
    row: str
    dataset: str
    descriptor: DescriptorSpec
    metric: str
    c_grid: tuple = DEFAULT_C_GRID
    paper: float | tuple | None = None
    note: str = ""
    baseline: str = ""  # ablations: the pipeline they are compared with

    weights = property(lambda self: self.descriptor.weights)

    def config(self, solver: str = "torch", device: str = "cpu", dtype: str = "float32") -> Config:
        return Config(self.dataset, self.descriptor.replace(dtype=dtype),
                      ProtocolSpec(solver=solver, c_grid=self.c_grid, device=device))


def load_pipeline(path) -> Pipeline:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a pipeline file (give a .toml file)") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          "TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None

    def bad(key, why):
        return ConfigError(f"{path}: {key} {why}")

    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise bad(unknown[0], f"is not a pipeline key (known: {', '.join(sorted(FIELDS))})")
    for key in REQUIRED:
        if key not in raw:
            raise bad(key, "is missing")
    for key in ("table", "row", "dataset", "aggregate", "metric", "setting", "note", "baseline"):
        if key in raw and not isinstance(raw[key], str):
            raise bad(key, f"must be a string, got {raw[key]!r}")
    if raw["table"] not in TABLES:
        raise bad("table", f"must be one of {', '.join(TABLES)}, got {raw['table']!r}")
    if raw["dataset"] not in DATASETS:
        raise bad("dataset", f"must be one of {', '.join(DATASETS)}, got {raw['dataset']!r}")
    if raw["metric"] not in METRICS:
        raise bad("metric", f"must be one of {', '.join(METRICS)}, got {raw['metric']!r}")
    expected = DATASETS[raw["dataset"]].metric
    if raw["metric"] != expected:
        raise bad("metric", f"for {raw['dataset']} is {expected}, not {raw['metric']}")
    setting = raw.get("setting", "image")
    if setting != "image" and raw["dataset"] != "voc2012-action":
        raise bad("setting", "is image or image+box, and image+box is for voc2012-action only")
    weights = raw.get("weights", {})
    if not isinstance(weights, dict):
        raise bad("weights", f"must be a table net = source, got {weights!r}")
    try:  # the one validation of a descriptor, and of C values
        descriptor = DescriptorSpec(nets=raw["nets"], scales=raw["scales"], aggregate=raw["aggregate"],
                                    weights=weights, setting=setting)
        grid = ProtocolSpec(c_grid=raw.get("c_grid", DEFAULT_C_GRID)).c_grid
    except FieldError as e:
        raise bad(e.field, f"is not valid: {e}") from None
    paper = raw.get("paper")
    if paper is not None:
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = (number(paper) if METRICS[expected].paper_shape == "number"
              else isinstance(paper, list) and len(paper) == 2 and all(number(p) for p in paper))
        if not ok:
            raise bad("paper", f"for {raw['dataset']} ({METRICS[expected].label}) must be "
                      + ("a number" if METRICS[expected].paper_shape == "number" else "[mean, std]"))
        paper = tuple(paper) if isinstance(paper, list) else float(paper)
    return Pipeline(name=path.stem, path=path, table=raw["table"], row=raw["row"], dataset=raw["dataset"],
                    descriptor=descriptor, metric=raw["metric"], c_grid=grid,
                    paper=paper, note=raw.get("note", ""), baseline=raw.get("baseline", ""))


def all_pipelines(folder: Path) -> list[Pipeline]:
    return [load_pipeline(p) for p in sorted(Path(folder).glob("*.toml"))]


def select(targets, folder: Path) -> list[Pipeline]:
    """Pipelines named by targets: table11, table12, ablation(s), all, a name, or a .toml path."""
    every = all_pipelines(folder)
    chosen = []
    for t in targets:
        if t == "all":
            picked = every
        elif t.rstrip("s") in TABLES:
            picked = [p for p in every if p.table == t.rstrip("s")]
        elif t.endswith(".toml"):
            picked = [load_pipeline(t)]
        else:
            picked = [p for p in every if p.name == t]
            if not picked:
                raise ConfigError(f"no pipeline {t!r} in {folder}: give table11, table12, ablation, all, "
                                  f"a .toml file or one of {', '.join(p.name for p in every)}")
        chosen += [p for p in picked if p.name not in {c.name for c in chosen}]
    return chosen


def matching_pipeline(cfg: Config, pipelines: list[Pipeline]) -> Pipeline | None:
    """The pipeline (so the paper's figure) whose configuration this is: same dataset, nets,
    scales, aggregation, setting and weight sources; None if the paper has no such row."""

    def key(dataset, d: DescriptorSpec):
        return (dataset, tuple(sorted(d.nets)), tuple(sorted(d.scales)), d.aggregate, d.setting,
                tuple(sorted((n, weights_tag(w)) for n, w in d.weights.items())))

    want = key(cfg.dataset, cfg.descriptor)
    for p in pipelines:
        if p.paper is not None and key(p.dataset, p.descriptor) == want:
            return p
    return None
