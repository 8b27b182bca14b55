"""The report: results/README.md with one table per paper table and the figures beside it.

Only numbers that a run wrote (results/<dataset>/<name>.json) appear; a pipeline never run
shows "not run". Runs made outside the pipelines (featx svm on any dataset) are listed too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import check_writable, replacing, write_text
from ..data.datasets import DATASETS
from ..errors import FeatxError
from ..evaluate.metrics import METRICS, Metric
from ..evaluate.results import Result, check_files, read_result
from ..net.specs import label_of
from ..net.weights import describe_weights
from .pipeline import Pipeline

BENCH_FIGURES = "bench"  # RESULTS_DIR/bench: benchmark figures per machine, not protocol runs

TABLE_TITLES = {
    "table11": "Table 11: image classification (VOC mAP; Caltech mean class recall, mean ± std over 3 splits)",
    "table12": "Table 12: VOC-2012 action classification (val mAP over 10 actions, D & E)",
    "ablation": "Ablations: aggregation across scales, the scale set, and the weights",
}


def weights_notes(result: Result) -> list[str]:
    """What the weights of each net were, where featx knows them by content."""
    notes = []
    for net, made in (result.caches or {}).items():
        what = describe_weights(made.get("weights_digest")) or describe_weights(made.get("weights_sha256"))
        if what:
            notes.append(f"{label_of(net)}: {made.get('weights')} weights = {what}")
    return notes


def protocol_differences(p: Pipeline, result: Result) -> str | None:
    """Where our figure is further from the paper's than its ± std: what we know differs."""
    if p.paper is None:
        return None
    paper, std = (p.paper if isinstance(p.paper, tuple) else (p.paper, None))
    gap = result.headline - paper
    tolerance = max(std or 0.0, result.headline_std or 0.0)
    if abs(gap) <= tolerance:
        return None
    cfg = result.config
    known = []
    if p.dataset.startswith("caltech"):
        known.append("splits: ours are drawn by featx's seeded rule (datasets/splits/), the paper's "
                     "random splits were not published")
    known.append(f"C grid: {list(cfg.c_grid)}, chosen on the validation part (the paper does not "
                 "give its grid)")
    known.append(f"solver: {cfg.solver} (squared hinge, L2, one-vs-rest); the paper says only "
                 "'linear SVM'")
    notes = weights_notes(result)
    if notes:
        known.append("weights: " + "; ".join(notes))
    if result.compute_dtype != "float32":
        known.append(f"descriptors computed in {result.compute_dtype}, not float32 (its effect on "
                     "Caltech-101 at Q = 256 is measured in results/bench/*-bfloat16-accuracy.json)")
    return (f"{p.name}: {gap:+.1f} points from the paper's {paper}" + (f" ± {std}" if std else "")
            + ". What differs from the paper's protocol, as far as known: " + "; ".join(known) + ".")


def _fmt(value, std=None) -> str:
    return f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _paper_cell(paper) -> str:
    if paper is None:
        return "—"
    return _fmt(*paper) if isinstance(paper, (tuple, list)) else _fmt(paper)


def _config_cell(p: Pipeline, result: Result | None) -> str:
    scales = p.scales
    qs = f"{scales[0]}..{scales[-1]} ({len(scales)})" if len(scales) > 3 else ",".join(map(str, scales))
    weights = ",".join(sorted(set(p.weights.values())))
    cell = f"{'&'.join(p.nets)} {weights}; Q {qs} {p.aggregate}"
    if p.setting != "image":
        cell += f"; {p.setting}"
    if result:
        cell += f"; C {result.chosen_c_text}; {result.config.solver} on {result.config.device}"
        cell += _dtype_note(result)
    return cell


def _dtype_note(result: Result) -> str:
    """"; descriptors in bfloat16" where a result was not computed in float32 (the paper's)."""
    return "" if result.compute_dtype == "float32" else f"; descriptors in {result.compute_dtype}"


def table_markdown(pipelines: list[Pipeline], results: dict) -> list[str]:
    lines = ["| experiment | dataset | paper | ours | difference | configuration | files |",
             "|---|---|---|---|---|---|---|"]
    for p in pipelines:
        r = results.get(p.name)
        if r is None:
            ours, diff, files = "not run", "—", "—"
        else:
            ours = _fmt(r.headline, r.headline_std)
            paper = p.paper[0] if isinstance(p.paper, tuple) else p.paper
            if paper is None and p.baseline and results.get(p.baseline):
                diff = f"{r.headline - results[p.baseline].headline:+.1f} vs {p.baseline}"
            else:
                diff = "—" if paper is None else f"{r.headline - paper:+.1f}"
            files = f"[{p.name}.md]({p.dataset}/{p.name}.md)"
        lines.append(f"| {p.row} | {p.dataset} | {_paper_cell(p.paper)} | {ours} | {diff} | "
                     f"{_config_cell(p, r)} | {files} |")
    return lines


def per_class_figure(csv_path: Path, out: Path, title: str, metric: Metric) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.read_csv(csv_path).drop(columns="split").groupby("class", sort=False).mean()
    key = metric.headline
    values = 100 * table[key].to_numpy()
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(values)), 3.6), layout="constrained")
    ax.bar(range(len(values)), values, color="#4C72B0")
    ax.axhline(np.nanmean(values), color="k", lw=1, ls="--", label=f"mean {np.nanmean(values):.1f}")
    ax.set_xticks(range(len(values)), table.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(metric.axis)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out)
    return out


def _save(fig, out: Path) -> None:
    """A figure written whole or not at all (featx.atomic)."""
    import matplotlib.pyplot as plt
    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def ablation_figure(dataset: str, bars: list[tuple[str, float, float | None]], out: Path, metric: Metric) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(bars) + 2, 3.4), layout="constrained")
    x = np.arange(len(bars))
    values = [b[1] for b in bars]
    ax.bar(x, values, yerr=[b[2] or 0 for b in bars], color=["#55A868"] + ["#8172B2"] * (len(bars) - 1),
           capsize=3)
    for xi, v in zip(x, values):
        ax.text(xi, v + 0.3, f"{v:.1f}", ha="center", fontsize=8)
    lo = min(values) - 5
    ax.set_ylim(max(0, lo), min(100, max(values) + 3))
    ax.set_xticks(x, [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric.label}, %")
    ax.set_title(f"{dataset} (green: the Table 11 setting)", fontsize=10)
    _save(fig, out)
    return out


def usable_result(path: Path, log) -> Result | None:
    """The result at path, or None (and a line through log) where it cannot be shown: it does
    not parse, or the files beside it are not those written with it (an interrupted run)."""
    try:
        result = read_result(path)
        problems = check_files(result)
        if not problems and result.path.with_suffix(".csv").is_file():
            import pandas as pd
            pd.read_csv(result.path.with_suffix(".csv"), nrows=1)
    except (FeatxError, ValueError, OSError) as e:
        problems = [str(e)]
    if problems:
        log(f"report: left out {path}: {problems[0]}")
        return None
    return result


def write_report(results_dir: Path, pipelines: list[Pipeline], log=print) -> Path:
    """Write results_dir/README.md and results_dir/figures/*.png from the result files there.
    A result that cannot be read, or whose files are not one run's, is left out (its row says
    not run) and named through log; the others are reported."""
    results_dir = Path(results_dir)
    figures = results_dir / "figures"
    kept = f"{results_dir / 'README.md'} is kept as it was"
    check_writable(results_dir, "--results-dir", kept)
    check_writable(figures, "--results-dir", kept)
    results = {}
    for p in pipelines:
        path = results_dir / p.dataset / f"{p.name}.json"
        if path.is_file() and (r := usable_result(path, log)) is not None:
            results[p.name] = r
    lines = ["# featx results", "",
             "Written by `featx reproduce` / `featx report` from the result files in this folder; "
             "every number below comes from a run recorded next to it "
             "(`<dataset>/<name>.json`: configuration, chosen C, per-split scores, software versions, "
             "the command). Rows never run say so.", ""]
    order = list(DATASETS)  # the paper's column order, then D, E, D & E
    pipelines = sorted(pipelines, key=lambda p: (order.index(p.dataset), len(p.nets), p.nets, p.name))
    for table in ("table11", "table12", "ablation"):
        ps = [p for p in pipelines if p.table == table]
        if not ps:
            continue
        lines += [f"## {TABLE_TITLES[table]}", ""] + table_markdown(ps, results) + [""]
        notes = sorted({n for p in ps if p.name in results for n in weights_notes(results[p.name])})
        lines += [f"Weights: {n}." for n in notes] + ([""] if notes else [])
        for p in ps:
            r = results.get(p.name)
            why = protocol_differences(p, r) if r is not None else None
            if why:
                lines += [why, ""]
            if r is not None:
                what = r.scored_by.per_class
                png = per_class_figure(r.path.with_suffix(".csv"), figures / f"{p.name}-per-class.png",
                                       f"{p.name}: {p.row}, per-class {what} ({r.evaluated_on}"
                                       + (", mean over splits)" if len(r.runs) > 1 else ")"), r.scored_by)
                lines += [f"![{p.name} per-class {what}](figures/{png.name})", ""]
        if table == "ablation":
            groups = sorted({(p.dataset, p.baseline) for p in ps if p.baseline})
            for dataset, base in groups:
                members = [p for p in ps if (p.dataset, p.baseline) == (dataset, base) and p.name in results]
                if not members:
                    continue
                bars = [(base, results[base].headline, results[base].headline_std)] if base in results else []
                bars += [(p.row, results[p.name].headline, results[p.name].headline_std) for p in members]
                png = ablation_figure(f"{dataset} vs {base}", bars, figures / f"ablation-{base}.png",
                                      METRICS[DATASETS[dataset].metric])
                lines += [f"![{dataset} ablations against {base}](figures/{png.name})", ""]
    known = {(p.dataset, p.name) for p in pipelines}
    # result files: not model records, nor the benchmark figures of results/bench (bench/*.py)
    others = sorted(path for path in results_dir.glob("*/*.json")
                    if (path.parent.name, path.stem) not in known and not path.name.endswith(".model.json")
                    and path.parent.name != BENCH_FIGURES)
    if others:
        lines += ["## Other runs (featx svm outside the pipelines)", "",
                  "| dataset | run | result | nets, weights, scales | C | evaluated on | command |",
                  "|---|---|---|---|---|---|---|"]
        for path in others:
            r = usable_result(path, log)
            if r is None:
                continue
            cfg = r.config
            lines.append(f"| {r.dataset} | [{path.stem}]({path.parent.name}/{path.stem}.md) | "
                         f"{r.metric} {_fmt(r.headline, r.headline_std)} | "
                         f"{','.join(cfg.nets)}; {', '.join(f'{k}={v}' for k, v in cfg.weights.items())}; "
                         f"Q {','.join(map(str, cfg.scales))} {cfg.aggregate}{_dtype_note(r)} | "
                         f"{r.chosen_c_text} | {r.evaluated_on} | "
                         f"`{r.command}` |")
        lines.append("")
    return write_text(results_dir / "README.md", "\n".join(lines))
