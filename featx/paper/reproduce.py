"""Run pipelines end to end: extract what the caches lack (once per dataset and net, over the
union of the scales its pipelines need), run each protocol, write results and the report."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import parse_per_net
from ..data.datasets import DATASETS, Dataset, load_dataset
from ..errors import ConfigError, DatasetError
from ..evaluate.experiment import run
from ..evaluate.model import write_run
from ..evaluate.results import load_result
from ..extract.cache import being_written
from ..extract.cost import (ExtractionCost, Rate, bench_rate, cache_rate, descriptor_flops, extraction_cost,
                            format_duration, quick_rate, tflop)
from ..extract.update import device_name, update_caches
from ..net.specs import label_of
from ..options import DEFAULT_BATCH_SIZE
from ..paths import cache_path
from .pipeline import Pipeline

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


def job_costs(pipelines, root, cache_dir: Path, dtype: str = "float32") -> list[tuple[Job, ExtractionCost | None, str]]:
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


@dataclass
class Estimate:
    """What `featx reproduce --dry-run` prints: per extraction job its cost and the rate its
    time is estimated at (its cache's own measured rate where it has one, else this CPU
    model's bench figures, else a measurement of a second, or --gflops)."""

    pipelines: list
    rows: list  # (job, ExtractionCost or None, remark, Rate)
    default: Rate
    device: str
    dtype: str

    @property
    def flops(self) -> float:
        return sum(c.flops for _, c, _, _ in self.rows if c is not None)

    @property
    def seconds(self) -> float:
        return sum(c.seconds(r.gflops) for _, c, _, r in self.rows if c is not None)

    def lines(self) -> list[str]:
        out = [f"{len(self.pipelines)} pipelines: {', '.join(p.name for p in self.pipelines)}",
               f"{'dataset':<16}{'net':<4}{'weights':<13}{'scales':<26}{'to compute':>11}{'cached':>9}"
               f"{'TFLOP':>10}{'time':>10}{'GFLOP/s':>9}  note"]
        for job, c, note, rate in self.rows:
            cells = (("?",) * 4 if c is None else
                     (c.pairs, c.cached, tflop(c.flops), format_duration(c.seconds(rate.gflops))))
            own = " (rate: its cache's own)" if rate is not self.default else ""
            out.append(f"{job.dataset:<16}{job.net:<4}{job.weights:<13}{','.join(map(str, job.scales)):<26}"
                       f"{cells[0]:>11}{cells[1]:>9}{cells[2]:>10}{cells[3]:>10}{rate.gflops:>9.0f}  {note}{own}")
        out.append(f"total: {sum(c.pairs for _, c, _, _ in self.rows if c):d} image x scale pairs (flips included "
                   f"in FLOPs), {tflop(self.flops)} TFLOP, about {format_duration(self.seconds)} on {self.device} "
                   f"in {self.dtype}; SVM training on the caches adds minutes")
        out += [f"rate {rate.gflops:.0f} GFLOP/s: {rate.source}" for rate in dict.fromkeys(r for *_, r in self.rows)]
        if (any(c is not None and being_written(c.cache) for _, c, _, _ in self.rows)
                and self.default.source.startswith("measured")):
            out.append("note: a featx extraction is writing one of these caches now; if it runs on this machine, "
                       "the rate above was measured on a shared device and the time is too long (give --gflops)")
        return out


def estimate(pipelines, root, cache_dir: Path, device: str = "cpu", dtype: str = "float32",
             gflops: float | None = None) -> Estimate:
    """The cost and time of the extractions these pipelines need (nothing is computed)."""
    costs = job_costs(pipelines, root, cache_dir, dtype)
    default = Rate(gflops, "--gflops") if gflops else bench_rate(dtype, device) or quick_rate(device, dtype)
    here = device_name(device=device)
    rows = [(job, c, note, default if gflops or c is None or not c.cache.is_file()
             else cache_rate(c.cache, job.net, here) or default) for job, c, note in costs]
    return Estimate(list(pipelines), rows, default, device, dtype)


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

