"""Run pipelines end to end: extract what the caches lack (once per dataset and net, over the
union of the scales its pipelines need), run each protocol, write results and the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import cache_file, extract_to_cache
from .cost import ExtractionCost, descriptor_flops, extraction_cost
from .datasets import DATASETS, Dataset, load_dataset
from .errors import DatasetError
from .experiment import run, write_results
from .pipeline import Pipeline

# VOC photographs are about 500x375 (SPEC.md section 5); used to estimate a dataset not on disk.
TYPICAL_SIZE = (375, 500)


@dataclass
class Job:
    """Extraction for one dataset, net and weight source: every scale its pipelines use."""

    dataset: str
    net: str
    weights: str
    scales: tuple
    pipelines: list = field(default_factory=list)


def jobs_of(pipelines: list[Pipeline]) -> list[Job]:
    jobs: dict[tuple, Job] = {}
    for p in pipelines:
        for net in p.nets:
            w = p.weights.get(net, "torchvision")
            job = jobs.setdefault((p.dataset, net, w), Job(p.dataset, net, w, ()))
            job.scales = tuple(sorted(set(job.scales) | set(p.scales)))
            job.pipelines.append(p.name)
    return list(jobs.values())


def load_datasets(pipelines, root) -> tuple[dict[str, Dataset], dict[str, str]]:
    """({dataset: Dataset} for those on disk, {dataset: why not} for the others)."""
    found, missing = {}, {}
    for name in dict.fromkeys(p.dataset for p in pipelines):
        try:
            found[name] = load_dataset(name, root)
        except DatasetError as e:
            missing[name] = str(e)
    return found, missing


def plan(pipelines, root, cache_dir: Path) -> list[tuple[Job, ExtractionCost | None, str]]:
    """(job, cost, remark) per extraction job; for a dataset not on disk, the cost assumes the
    official image count at a typical VOC size (remark says so) or is None when unknown."""
    datasets, missing = load_datasets(pipelines, root)
    out = []
    for job in jobs_of(pipelines):
        path = cache_file(Path(cache_dir) / job.dataset, job.net, job.weights)
        if job.dataset in datasets:
            data = datasets[job.dataset]
            out.append((job, extraction_cost(job.net, data.items, job.scales, path), ""))
            continue
        n = DATASETS[job.dataset].get("images")
        if n is None:
            out.append((job, None, "not on disk; size unknown until downloaded"))
            continue
        flops = n * sum(descriptor_flops(job.net, TYPICAL_SIZE, q) for q in job.scales)
        out.append((job, ExtractionCost(job.net, path, n * len(job.scales), 0, float(flops)),
                     f"not on disk: {n} images at 500x375 assumed"))
    return out


def reproduce(pipelines: list[Pipeline], root, cache_dir: Path, results_dir: Path, solver="torch",
              device="cpu", dtype="float32", batch_size=8, progress=True, command="", log=print):
    """Run every pipeline whose dataset is on disk; returns ({name: result}, {name: why skipped})."""
    from .extract import Extractor

    datasets, missing = load_datasets(pipelines, root)
    skipped = {p.name: missing[p.dataset] for p in pipelines if p.dataset in missing}
    runnable = [p for p in pipelines if p.dataset in datasets]
    for job in jobs_of(runnable):
        data = datasets[job.dataset]
        path = cache_file(Path(cache_dir) / job.dataset, job.net, job.weights)
        ex = Extractor(job.net, scales=job.scales, weights=job.weights, device=device, dtype=dtype,
                       batch_size=batch_size, progress=progress)
        log(f"{job.dataset}: Net-{job.net} ({job.weights}) at Q = {', '.join(map(str, job.scales))} "
            f"for {', '.join(job.pipelines)} -> {path}")
        summary = extract_to_cache(ex, data.items, data.ids, path, name=data.name, progress=progress)
        log(f"  {summary}")
    results = {}
    for p in runnable:
        log(f"== {p.name}: {p.row} on {p.dataset}")
        result = run(datasets[p.dataset], Path(cache_dir) / p.dataset, p.config(solver, device), log=log)
        result.update(pipeline=p.name, table=p.table, command=command, paper=p.paper)
        write_results(result, Path(results_dir) / p.dataset, p.name)
        results[p.name] = result
    return results, skipped


def total_seconds(costs, gflops: float) -> float:
    return float(np.sum([c.seconds(gflops) for _, c, _ in costs if c is not None]))
