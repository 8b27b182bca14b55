"""Run pipelines end to end: extract what the caches lack (once per dataset and net, over the
union of the scales its pipelines need), run each protocol, write results and the report."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .cache import being_written
from .config import parse_per_net
from .cost import ExtractionCost, descriptor_flops, extraction_cost
from .datasets import DATASETS, Dataset, load_dataset
from .errors import ConfigError, DatasetError
from .experiment import run
from .model import write_run
from .options import DEFAULT_BATCH_SIZE
from .paths import cache_path
from .pipeline import Pipeline
from .results import load_result
from .specs import label_of
from .update import update_caches

# VOC photographs are about 500x375 (docs/protocol.md section 5); used to estimate a dataset not on disk.
TYPICAL_SIZE = (375, 500)


@dataclass
class Job:
    """Extraction for one dataset, net and weight source: every scale its pipelines use."""

    dataset: str
    net: str
    weights: str
    scales: tuple
    pipelines: list = field(default_factory=list)
    views: tuple = ("image",)  # what the pipelines read of each sample (image+box: also "box")

    def rows(self, data: Dataset):
        """The rows these pipelines' protocol reads (not every image of the dataset)."""
        return data.protocol_rows(self.views)


def jobs_of(pipelines: list[Pipeline]) -> list[Job]:
    jobs: dict[tuple, Job] = {}
    for p in pipelines:
        for net in p.nets:
            w = p.weights[net]
            job = jobs.setdefault((p.dataset, net, w), Job(p.dataset, net, w, ()))
            job.scales = tuple(sorted(set(job.scales) | set(p.scales)))
            job.views = tuple(dict.fromkeys(job.views + p.config().views))
            job.pipelines.append(p.name)
    return list(jobs.values())


def parse_local_weights(text: str | None) -> dict:
    """--local-weights "E=caffe:vgg19_caffe.pth,D=caffe:vgg16.pth" -> {"E": "caffe:vgg19_caffe.pth", ...}."""
    form = "NET=SOURCE:FILE, e.g. E=caffe:vgg19_caffe.pth"
    files = parse_per_net(text, option="--local-weights", form=form)
    for net, value in files.items():
        source, _, path = value.partition(":")
        given = f"{net}={value}"
        if not source or not path:
            raise ConfigError(f"--local-weights {given!r}: write {form}")
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"--local-weights {given!r}: {path} is not a file")
    return files


def local_weights(job: Job, files: dict) -> str:
    """The job's weight source, read from a local copy where one is given for its net and source
    (files from parse_local_weights): "caffe" -> "caffe:FILE"."""
    given = files.get(job.net)
    if given is None or given.partition(":")[0] != job.weights:
        return job.weights
    return given


def load_datasets(pipelines, root) -> tuple[dict[str, Dataset], dict[str, str]]:
    """({dataset: Dataset} for those on disk, {dataset: why not} for the others)."""
    found, missing = {}, {}
    for name in dict.fromkeys(p.dataset for p in pipelines):
        try:
            found[name] = load_dataset(name, root)
        except DatasetError as e:
            missing[name] = str(e)
    return found, missing


def plan(pipelines, root, cache_dir: Path, dtype: str = "float32") -> list[tuple[Job, ExtractionCost | None, str]]:
    """(job, cost, remark) per extraction job; for a dataset not on disk, the cost assumes the
    official image count at a typical VOC size (remark says so) or is None when unknown."""
    datasets, missing = load_datasets(pipelines, root)
    out = []
    for job in jobs_of(pipelines):
        path = cache_path(job.dataset, job.net, job.weights, dtype, cache_dir)
        if job.dataset in datasets:
            data = datasets[job.dataset]
            out.append((job, extraction_cost(job.net, data.items, data.ids, job.scales, path, rows=job.rows(data)),
                        "being extracted now" if being_written(path) else ""))
            continue
        n = DATASETS[job.dataset].images
        if n is None:
            out.append((job, None, "not on disk; size unknown until downloaded"))
            continue
        flops = n * sum(descriptor_flops(job.net, TYPICAL_SIZE, q) for q in job.scales)
        out.append((job, ExtractionCost(job.net, path, n * len(job.scales), 0, float(flops)),
                     f"not on disk: {n} images at 500x375 assumed"))
    return out


def reproduce(pipelines: list[Pipeline], root, cache_dir: Path, results_dir: Path, solver="torch",
              device="cpu", dtype="float32", batch_size=DEFAULT_BATCH_SIZE, progress=True, command="", log=print,
              weight_files: dict | None = None):
    """Run every pipeline whose dataset is on disk; returns ({name: result}, {name: why skipped}).

    weight_files: {net: "SOURCE:FILE"}: read that net's SOURCE weights from a local copy."""
    if dtype != "float32":  # the paper's rows are float32: a faster, approximate run never replaces one
        kept = [r.path for p in pipelines if (r := load_result(results_dir, p.dataset, p.name))
                and r.compute_dtype == "float32"]
        if kept:
            raise ConfigError(f"{', '.join(map(str, kept))}: float32 run{'s' if len(kept) > 1 else ''} of the "
                              f"paper's protocol, which a {dtype} run does not replace; give another "
                              "--results-dir")
    datasets, missing = load_datasets(pipelines, root)
    skipped = {p.name: missing[p.dataset] for p in pipelines if p.dataset in missing}
    runnable = [p for p in pipelines if p.dataset in datasets]
    for job in jobs_of(runnable):
        data = datasets[job.dataset]
        path = cache_path(data, job.net, job.weights, dtype, cache_dir)
        log(f"{job.dataset}: {label_of(job.net)} ({job.weights}) at Q = {', '.join(map(str, job.scales))} "
            f"for {', '.join(job.pipelines)} -> {path}")
        summary, = update_caches([job.net], data.items, data.ids, data.name, lambda net: path,
                                 {job.net: local_weights(job, weight_files or {})}, rows=job.rows(data),
                                 progress=progress, log=log, scales=job.scales, device=device,
                                 dtype=dtype, batch_size=batch_size)
        log(f"  {summary}")
    results = {}
    for p in runnable:
        log(f"== {p.name}: {p.row} on {p.dataset}")
        result = run(datasets[p.dataset], p.config(solver, device, dtype), cache_dir, log=log)
        result = replace(result, pipeline=p.name, table=p.table, command=command, paper=p.paper,
                         paper_pipeline=p.name)
        write_run(result, Path(results_dir) / p.dataset, p.name)
        results[p.name] = result
    return results, skipped

