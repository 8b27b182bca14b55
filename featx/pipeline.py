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
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import DATASETS
from .errors import ConfigError
from .experiment import Config, check_c_grid
from .metrics import METRICS
from .options import AGGREGATIONS, DEFAULT_C_GRID, SETTINGS
from .specs import NET_CHOICES, check_scales, default_weights, get_spec, is_net
from .paths import pipelines_dir  # noqa: F401  (featx.pipeline.pipelines_dir, as before)

TABLES = ("table11", "table12", "ablation")
FIELDS = {"table", "row", "dataset", "nets", "weights", "scales", "aggregate", "setting", "c_grid",
          "metric", "paper", "note", "baseline"}
REQUIRED = ("table", "row", "dataset", "nets", "scales", "aggregate", "metric")


@dataclass
class Pipeline:
    name: str  # the file's stem: results/<dataset>/<name>.*
    path: Path
    table: str
    row: str
    dataset: str
    nets: tuple
    scales: tuple
    aggregate: str
    metric: str
    weights: dict = field(default_factory=dict)
    setting: str = "image"
    c_grid: tuple = DEFAULT_C_GRID
    paper: float | tuple | None = None
    note: str = ""
    baseline: str = ""  # ablations: the pipeline they are compared with

    def config(self, solver: str = "torch", device: str = "cpu", dtype: str = "float32") -> Config:
        return Config(dataset=self.dataset, nets=self.nets, scales=self.scales, aggregate=self.aggregate,
                      weights={n: self.weights.get(n) or default_weights(n) for n in self.nets},
                      setting=self.setting, solver=solver, c_grid=self.c_grid, device=device, dtype=dtype)


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
    nets = raw["nets"]
    if not (isinstance(nets, list) and nets and all(is_net(n) for n in nets) and len(set(nets)) == len(nets)):
        raise bad("nets", f"must be a list of distinct nets ({NET_CHOICES}), got {nets!r}")
    scales = raw["scales"]
    if not isinstance(scales, list):
        raise bad("scales", f"must be a list of integers, got {scales!r}")
    try:
        for n in nets:
            check_scales(scales, get_spec(n))
    except ConfigError as e:
        raise bad("scales", f"is not valid: {e}") from None
    if raw["aggregate"] not in AGGREGATIONS:
        raise bad("aggregate", f"must be one of {', '.join(AGGREGATIONS)}, got {raw['aggregate']!r}")
    if raw["metric"] not in METRICS:
        raise bad("metric", f"must be one of {', '.join(METRICS)}, got {raw['metric']!r}")
    expected = DATASETS[raw["dataset"]].metric
    if raw["metric"] != expected:
        raise bad("metric", f"for {raw['dataset']} is {expected}, not {raw['metric']}")
    setting = raw.get("setting", "image")
    if setting not in SETTINGS or (setting != "image" and raw["dataset"] != "voc2012-action"):
        raise bad("setting", "is image or image+box, and image+box is for voc2012-action only")
    weights = raw.get("weights", {})
    if not (isinstance(weights, dict) and set(weights) <= set(nets) and all(isinstance(v, str) for v in weights.values())):
        raise bad("weights", f"must be a table net = source for the nets {nets}, got {weights!r}")
    grid = raw.get("c_grid", list(DEFAULT_C_GRID))
    try:
        grid = check_c_grid(grid if isinstance(grid, list) else str(grid))
    except ConfigError as e:
        raise bad("c_grid", f"is not valid: {e}") from None
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
                    nets=tuple(nets), scales=tuple(scales), aggregate=raw["aggregate"], metric=raw["metric"],
                    weights=dict(weights), setting=setting, c_grid=grid,
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
    from .weights import weights_tag

    def key(dataset, nets, scales, aggregate, setting, weights):
        return (dataset, tuple(sorted(nets)), tuple(sorted(scales)), aggregate, setting,
                tuple(sorted((n, weights_tag(weights.get(n) or default_weights(n))) for n in nets)))

    want = key(cfg.dataset, cfg.nets, cfg.scales, cfg.aggregate, cfg.setting, cfg.weights)
    for p in pipelines:
        if p.paper is not None and key(p.dataset, p.nets, p.scales, p.aggregate, p.setting, p.weights) == want:
            return p
    return None
