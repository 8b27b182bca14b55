"""The report: results/README.md with one table per paper table and the figures beside it.

Only numbers that a run wrote (results/<dataset>/<name>.json) appear; a pipeline never run
shows "not run". Runs made outside the pipelines (featx svm on any dataset) are listed too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import DATASETS
from .pipeline import Pipeline

TABLE_TITLES = {
    "table11": "Table 11: image classification (VOC mAP; Caltech mean class recall, mean ± std over 3 splits)",
    "table12": "Table 12: VOC-2012 action classification (val mAP over 10 actions, D & E)",
    "ablation": "Ablations: aggregation across scales and the scale set (D & E)",
}


def load_result(results_dir: Path, dataset: str, name: str) -> dict | None:
    path = Path(results_dir) / dataset / f"{name}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    result["_path"] = path
    return result


def _fmt(value, std=None) -> str:
    return f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _paper_cell(paper) -> str:
    if paper is None:
        return "—"
    return _fmt(*paper) if isinstance(paper, (tuple, list)) else _fmt(paper)


def _config_cell(p: Pipeline, result: dict | None) -> str:
    scales = p.scales
    qs = f"{scales[0]}..{scales[-1]} ({len(scales)})" if len(scales) > 3 else ",".join(map(str, scales))
    weights = ",".join(sorted(set(p.weights.values()))) or "torchvision"
    cell = f"{'&'.join(p.nets)} {weights}; Q {qs} {p.aggregate}"
    if p.setting != "image":
        cell += f"; {p.setting}"
    if result:
        cs = sorted({r["C"] for r in result["runs"]})
        cell += f"; C {','.join(f'{c:g}' for c in cs)}; {result['config']['solver']} on {result['config']['device']}"
    return cell


def table_markdown(pipelines: list[Pipeline], results: dict) -> list[str]:
    lines = ["| experiment | dataset | paper | ours | difference | configuration | files |",
             "|---|---|---|---|---|---|---|"]
    for p in pipelines:
        r = results.get(p.name)
        if r is None:
            ours, diff, files = "not run", "—", "—"
        else:
            ours = _fmt(r["headline"], r.get("headline_std"))
            paper = p.paper[0] if isinstance(p.paper, tuple) else p.paper
            if paper is None and p.baseline and results.get(p.baseline):
                diff = f"{r['headline'] - results[p.baseline]['headline']:+.1f} vs {p.baseline}"
            else:
                diff = "—" if paper is None else f"{r['headline'] - paper:+.1f}"
            files = f"[{p.name}.md]({p.dataset}/{p.name}.md)"
        lines.append(f"| {p.row} | {p.dataset} | {_paper_cell(p.paper)} | {ours} | {diff} | "
                     f"{_config_cell(p, r)} | {files} |")
    return lines


def per_class_figure(result: dict, csv_path: Path, out: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.read_csv(csv_path).drop(columns="split").groupby("class", sort=False).mean()
    key = "ap11" if "ap11" in table.columns else table.columns[0]
    values = 100 * table[key].to_numpy()
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(values)), 3.6), layout="constrained")
    ax.bar(range(len(values)), values, color="#4C72B0")
    ax.axhline(np.nanmean(values), color="k", lw=1, ls="--", label=f"mean {np.nanmean(values):.1f}")
    ax.set_xticks(range(len(values)), table.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel({"ap11": "AP (11-point), %", "recall": "recall, %"}.get(key, key))
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def ablation_figure(dataset: str, bars: list[tuple[str, float, float | None]], out: Path) -> Path:
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
    ax.set_ylabel("mAP, %" if dataset.startswith("voc") else "mean class recall, %")
    ax.set_title(f"{dataset}: D & E, aggregation and scales (green: Table 11 setting)", fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(results_dir: Path, pipelines: list[Pipeline]) -> Path:
    """Write results_dir/README.md and results_dir/figures/*.png from the result files there."""
    results_dir = Path(results_dir)
    figures = results_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = {p.name: load_result(results_dir, p.dataset, p.name) for p in pipelines}
    results = {k: v for k, v in results.items() if v is not None}
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
        for p in ps:
            r = results.get(p.name)
            if r is not None and p.metric == "map":
                png = per_class_figure(r, r["_path"].with_suffix(".csv"), figures / f"{p.name}-per-class.png",
                                       f"{p.name}: {p.row} ({r['runs'][0]['evaluated_on']})")
                lines += [f"![{p.name} per-class AP](figures/{png.name})", ""]
        if table == "ablation":
            for dataset in sorted({p.dataset for p in ps}):
                members = [p for p in ps if p.dataset == dataset and p.name in results]
                base = next((p.baseline for p in ps if p.dataset == dataset and p.baseline), None)
                if not members:
                    continue
                bars = ([(f"{base}", results[base]["headline"], results[base].get("headline_std"))]
                        if base in results else [])
                bars += [(p.row, results[p.name]["headline"], results[p.name].get("headline_std")) for p in members]
                png = ablation_figure(dataset, bars, figures / f"ablation-{dataset}.png")
                lines += [f"![{dataset} ablation](figures/{png.name})", ""]
    known = {(p.dataset, p.name) for p in pipelines}
    others = sorted(path for path in results_dir.glob("*/*.json") if (path.parent.name, path.stem) not in known)
    if others:
        lines += ["## Other runs (featx svm outside the pipelines)", "",
                  "| dataset | run | result | nets, weights, scales | C | evaluated on | command |",
                  "|---|---|---|---|---|---|---|"]
        for path in others:
            r = json.loads(path.read_text())
            cfg = r["config"]
            where = ", ".join(x["evaluated_on"] for x in r["runs"])
            lines.append(f"| {r['dataset']} | [{path.stem}]({path.parent.name}/{path.stem}.md) | "
                         f"{r['metric']} {_fmt(r['headline'], r.get('headline_std'))} | "
                         f"{','.join(cfg['nets'])}; {', '.join(f'{k}={v}' for k, v in cfg['weights'].items())}; "
                         f"Q {','.join(map(str, cfg['scales']))} {cfg['aggregate']} | "
                         f"{', '.join(format(x['C'], 'g') for x in r['runs'])} | {where} | "
                         f"`{r.get('command', '')}` |")
        lines.append("")
    out = results_dir / "README.md"
    out.write_text("\n".join(lines))
    return out
