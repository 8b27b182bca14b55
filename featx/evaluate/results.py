"""What a protocol run produced, as data: `Result` (one per run) and `SplitRun` (one per split),
written to and read from results/<dataset>/<run>.{json,csv,md} here and nowhere else.

The JSON layout is the one featx 0.2.0 wrote, so every result file already in results/ loads.
The trained classifiers live beside it (featx.evaluate.model); the per-class scores in the CSV.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import check_writable, file_digest, write_text
from ..config import Config
from ..errors import ConfigError
from ..net.kernels import cpu_info
from .metrics import Metric, metric_of, nanmean


@dataclass
class SplitRun:
    """One train / evaluate round: the C chosen on validation, and the test scores."""

    split: int | None  # 1, 2, 3 (Caltech and held-out splits) or None (VOC's one split)
    C: float
    validation: dict  # C -> validation score (0..1)
    trained_on: str
    evaluated_on: str
    mean: dict = field(default_factory=dict)  # metric -> mean over classes (0..1)
    scores: dict | None = None  # metric -> per-class array: in memory after a run (the CSV holds them)
    model: object = None  # the fitted OneVsRestSVM: in memory after a run (featx.evaluate.model saves it)

    def __post_init__(self):
        if self.scores is not None and not self.mean:  # after a run: derived from the scores
            self.mean = {k: nanmean(v) for k, v in self.scores.items()}

    def to_json(self) -> dict:
        return {"split": self.split, "C": self.C, "validation": {str(c): v for c, v in self.validation.items()},
                "trained_on": self.trained_on, "evaluated_on": self.evaluated_on, "mean": self.mean}

    @classmethod
    def from_json(cls, d: dict) -> "SplitRun":
        return cls(d["split"], float(d["C"]), {float(c): v for c, v in d["validation"].items()},
                   d["trained_on"], d["evaluated_on"], dict(d.get("mean", {})))


@dataclass
class FinalModel:
    """The classifier a run saves: refit after the evaluation on every labelled sample the
    protocol reads (the union of its splits), with the C that validation chose."""

    C: float
    chosen_by: str  # how C was picked, e.g. "median of the C chosen on splits 1, 2, 3 (0.3, 1, 1)"
    trained_on: str  # e.g. "all 7,107 labelled images (the union of every split)"
    samples: int
    model: object = None  # the fitted OneVsRestSVM: in memory after a run (featx.evaluate.model saves it)

    def to_json(self) -> dict:
        return {"C": self.C, "chosen_by": self.chosen_by, "trained_on": self.trained_on, "samples": self.samples}

    @classmethod
    def from_json(cls, d: dict | None) -> "FinalModel | None":
        return None if not d else cls(float(d["C"]), d["chosen_by"], d["trained_on"], int(d["samples"]))


# Result fields stored under another key, the one result files have always used.
FILE_KEYS = {"caches": "descriptors"}
FIELDS = {key: name for name, key in FILE_KEYS.items()}


@dataclass
class Result:
    """A protocol's outcome on one dataset: the headline (mean ± std over splits) and its runs."""

    dataset: str
    config: Config  # stored flat (Config.to_json), as featx has always written it
    metric: str  # a featx.evaluate.metrics.Metric's name: "mean class recall", "mAP (VOC-2007 11-point AP)"
    headline: float  # in percent
    headline_std: float | None
    classes: list
    caches: dict  # net -> its cache's provenance (weights, digest, dtype, ...); "descriptors" in the file
    seconds: float
    runs: list  # SplitRun
    paper: float | tuple | None = None  # the matching pipeline's figure, if any
    pipeline: str | None = None
    table: str | None = None
    command: str = ""
    paper_pipeline: str | None = None
    versions: dict = field(default_factory=dict)
    written: str = ""
    final: FinalModel | None = None  # the saved classifier (results before featx 0.7: none)
    files: dict = field(default_factory=dict)  # the run's other files, written first: name -> sha256
    path: Path | None = field(default=None, compare=False)  # the JSON file it was read from

    def headline_text(self) -> str:
        h = f"{self.headline:.1f}" + (f" ± {self.headline_std:.1f}" if self.headline_std is not None else "")
        if self.paper is None:
            ref = ("no paper figure matches this configuration (dataset, nets, scales, aggregation, "
                   "setting, weights: see featx reproduce --help for the paper's)")
        elif isinstance(self.paper, tuple):
            ref = f"paper {self.paper[0]} ± {self.paper[1]} (difference {self.headline - self.paper[0]:+.1f})"
        else:
            ref = f"paper {self.paper} (difference {self.headline - self.paper:+.1f})"
        where = self.runs[0].evaluated_on
        if len(self.runs) > 1:
            where = ", ".join(r.evaluated_on for r in self.runs) + " (mean ± std)"
        return f"{self.dataset} {self.metric} on {where}: {h}  [{ref}]"

    @property
    def chosen_c(self) -> list:
        return [r.C for r in self.runs]

    @property
    def chosen_c_text(self) -> str:
        """The C chosen on each split, in split order: "0.3, 1, 1"."""
        return ", ".join(f"{c:g}" for c in self.chosen_c)

    @property
    def compute_dtype(self) -> str:
        """The type the descriptors were computed in ("float32" for 0.2.0 caches, which
        recorded none); one per result, since the caches of one descriptor never mix types."""
        types = sorted({str(m.get("dtype") or "float32") for m in (self.caches or {}).values()})
        return "+".join(types) or "float32"

    @property
    def scored_by(self) -> Metric:
        return metric_of(name=self.metric)

    @property
    def per_split(self) -> list:
        """Each split's figure in percent: what the headline's mean ± std is taken over."""
        key = self.scored_by.headline  # the per-class score a headline averages
        return [100 * r.mean[key] for r in self.runs if key in r.mean]

    @property
    def evaluated_on(self) -> str:
        return ", ".join(r.evaluated_on for r in self.runs)

    def to_json(self) -> dict:
        out = {FILE_KEYS.get(f.name, f.name): getattr(self, f.name)
               for f in dataclasses.fields(self) if f.name != "path"}
        out["config"] = self.config.to_json()
        out["runs"] = [r.to_json() for r in self.runs]
        out["final"] = self.final.to_json() if self.final is not None else None
        out["paper"] = list(self.paper) if isinstance(self.paper, tuple) else self.paper
        return out

    @classmethod
    def from_json(cls, d: dict, path: Path | None = None) -> "Result":
        metric_of(name=d["metric"])  # one this featx knows (else ValueError: not a result file)
        names = {f.name for f in dataclasses.fields(cls)} - {"path", "runs", "paper", "final", "config"}
        fields = {FIELDS.get(k, k): v for k, v in d.items()}
        paper = d.get("paper")
        return cls(**{k: v for k, v in fields.items() if k in names}, config=Config.from_json(d["config"]),
                   runs=[SplitRun.from_json(r) for r in d["runs"]],
                   paper=tuple(paper) if isinstance(paper, list) else paper, final=FinalModel.from_json(d.get("final")),
                   path=path)


def read_result(path: Path) -> Result:
    path = Path(path)
    try:
        return Result.from_json(json.loads(path.read_text()), path)
    except ConfigError as e:  # before ValueError, which it is
        raise ConfigError(f"{path}: its configuration is not valid: {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a featx result file ({type(e).__name__}: {e})") from None


def load_result(results_dir: Path, dataset: str, name: str) -> Result | None:
    """results_dir/<dataset>/<name>.json, or None where that run was never made."""
    path = Path(results_dir) / dataset / f"{name}.json"
    return read_result(path) if path.is_file() else None


def _versions() -> dict:
    import sklearn
    import torch
    cpu = cpu_info()  # speed and bfloat16 rounding depend on it: every result names it
    return {"featx": __version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "machine": platform.platform(),
            "cpu": f"{cpu.model}, {cpu.cores} cores" + (f" ({' '.join(cpu.flags)})" if cpu.flags else ""),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_result(result: Result, out_dir: Path, run_name: str, beside: tuple = ()) -> list[Path]:
    """results/<dataset>/<run>.{csv,md,json}; `beside`: files the caller wrote next to them
    for this run (featx.evaluate.model.write_run: the classifier to deploy), whose SHA-256 the .json
    records too. Returns every file of the run.

    Each file is written atomically (featx.atomic), the .json last, holding the SHA-256 of the
    others: a run killed half-way leaves the old .json, which then names the files that no
    longer match it (check_files), never a truncated file."""
    import pandas as pd

    check_writable(out_dir, "--results-dir")
    table = pd.DataFrame([{"split": r.split, "class": cls} | {k: float(v[c]) for k, v in r.scores.items()}
                          for r in result.runs for c, cls in enumerate(result.classes)])
    json_path = out_dir / f"{run_name}.json"
    # what the file records of its writing; the caller's Result is left as it was
    result = dataclasses.replace(result, versions=_versions(), written=time.strftime("%Y-%m-%d %H:%M:%S %z"),
                                 path=json_path)
    csv_path = write_text(out_dir / f"{run_name}.csv", table.to_csv(index=False))
    md_path = write_text(out_dir / f"{run_name}.md", render_markdown(result, table, run_name))
    written = [csv_path, md_path, *map(Path, beside)]
    result = dataclasses.replace(result, files={p.name: file_digest(p) for p in written})
    write_text(json_path, json.dumps(result.to_json(), indent=2, default=str))
    return [csv_path, md_path, json_path, *written[2:]]


def check_files(result: Result) -> list[str]:
    """The run's files (beside its .json) that are not the ones written with it: missing, or
    other bytes (a later run killed before its .json was written). Empty for a whole set, and
    for results written before featx 0.7 (which recorded no checksums)."""
    problems = []
    for name, want in result.files.items():
        path = result.path.with_name(name)
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_digest(path) != want:
            problems.append(f"{path}: not the file written with {result.path.name} (a later run of "
                            f"{result.path.stem} was interrupted: run it again)")
    return problems


def render_markdown(result: Result, table, run_name: str) -> str:
    cfg = result.config
    lines = [f"# {result.dataset}: {run_name}", "", result.headline_text(), "",
             f"- nets {', '.join(cfg.nets)}; weights "
             + ", ".join(f"{n}={w}" for n, w in cfg.weights.items())
             + f"; scales {', '.join(map(str, cfg.scales))}; "
             f"aggregation {cfg.aggregate}" + (f"; setting {cfg.setting}" if result.dataset == 'voc2012-action' else "")
             + f"; computed in {result.compute_dtype}",
             f"- solver {cfg.solver}; C grid {list(cfg.c_grid)}; chosen C "
             + result.chosen_c_text,
             f"- trained on {', '.join(r.trained_on for r in result.runs)}; evaluated on {result.evaluated_on}"
             + (f"; per split {', '.join(f'{v:.2f}' for v in result.per_split)}" if len(result.runs) > 1 else ""),
             *([f"- saved classifier ({run_name}.model.json): C={result.final.C:g} ({result.final.chosen_by}), fit on "
                f"{result.final.trained_on}"] if result.final else []),
             f"- machine: {result.versions.get('cpu') or result.versions.get('machine', '?')}"
             + (f"; GPU {result.versions['gpu']}" if str(cfg.device).startswith("cuda")
                and result.versions.get("gpu") else "") + "; "
             f"featx {result.versions.get('featx', '?')}, torch {result.versions.get('torch', '?')}",
             f"- command: `{result.command or 'featx Python API'}`",
             "", "| class | " + " | ".join(c for c in table.columns if c not in ("split", "class")) + " |",
             "|---|" + "---|" * (len(table.columns) - 2)]
    per_class = table.drop(columns="split").groupby("class", sort=False).mean()
    for cls, row in per_class.iterrows():
        lines.append(f"| {cls} | " + " | ".join(f"{100 * v:.1f}" for v in row.values) + " |")
    return "\n".join(lines) + "\n"
