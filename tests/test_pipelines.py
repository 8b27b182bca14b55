"""Pipeline files, the cost model, featx reproduce (dry run and real) and the report."""
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock
from PIL import Image

from featx.cli import main
from featx.extract.cost import descriptor_flops, extraction_efficiency, forward_flops
from featx.errors import ConfigError
from featx.net.kernels import cpu_info
from featx.paper.pipeline import all_pipelines, load_pipeline, select
from featx.evaluate.results import read_result, render_markdown
from featx.paper.reproduce import job_costs

from minitrees import make_caltech, make_voc

REPO_PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_every_shipped_pipeline_loads_and_validates():
    ps = all_pipelines(REPO_PIPELINES)
    names = {p.name for p in ps}
    assert len(ps) == 27
    table11 = select(["table11"], REPO_PIPELINES)
    assert sorted(p.name for p in table11) == sorted(f"{d}-{n}" for d in ("voc2007", "voc2012", "caltech101", "caltech256")
                                                     for n in ("D", "E", "DE"))
    assert {p.setting for p in select(["table12"], REPO_PIPELINES)} == {"image", "image+box"}
    for p in ps:
        assert p.baseline in names | {""}
        assert (p.paper is not None) == (p.table != "ablation")
        assert p.aggregate == ("mean" if p.dataset.startswith("voc") else "stack") or p.table == "ablation"
    de = load_pipeline(REPO_PIPELINES / "voc2007-DE.toml")
    assert de.nets == ("D", "E") and de.scales == (256, 384, 512, 640, 768) and de.paper == 89.7
    assert load_pipeline(REPO_PIPELINES / "caltech256-E.toml").paper == (85.1, 0.3)
    cfg = de.config(solver="liblinear")
    assert cfg.weights == {"D": "caffe", "E": "caffe"} and cfg.solver == "liblinear"
    # the paper's rows use the authors' weights; torchvision's are an ablation, one per dataset
    for p in ps:
        if p.table != "ablation":
            assert set(p.weights.values()) == {"caffe"}, p.name
    retrained = [p for p in ps if "torchvision" in p.weights.values()]
    assert sorted(p.name for p in retrained) == sorted(f"{d}-DE-torchvision" for d in
                                                       ("voc2007", "voc2012", "caltech101", "caltech256"))
    assert all(p.baseline == p.name.replace("-torchvision", "") for p in retrained)


GOOD = '''table = "table11"
row = "Net-T"
dataset = "voc2007"
nets = ["T"]
weights = { T = "random" }
scales = [224, 256]
aggregate = "mean"
c_grid = [0.1, 1]
metric = "map"
'''


@pytest.mark.parametrize("change, message", [
    (('nets = ["T"]', 'nets = ["T", "T"]'), r"bad.toml: nets is not valid: nets \['T', 'T'\]: name at least one net, each once"),
    (('scales = [224, 256]', 'scales = [200]'), r"bad.toml: scales is not valid: scale Q=200 is too small"),
    (('scales = [224, 256]', 'scales = [224, 224]'), r"bad.toml: scales is not valid: scales \(224, 224\) repeat a value"),
    (('scales = [224, 256]', 'scales = [100000]'), r"bad.toml: scales is not valid: scale Q=100000 is above 2048"),
    (('scales = [224, 256]', 'scales = [224.5]'), r"bad.toml: scales is not valid: .*224.5 is not an integer Q"),
    (('c_grid = [0.1, 1]', 'c_grid = [inf]'), r"bad.toml: c_grid is not valid: .*C must be a finite positive number, not inf"),
    (('c_grid = [0.1, 1]', 'c_grid = [true]'), r"bad.toml: c_grid is not valid: .*not True"),
    (('metric = "map"', 'metric = "map"\npaper = true'), r"bad.toml: paper for voc2007 \(mAP\) must be a number"),
    (('metric = "map"', 'metric = "mcr"'), r"bad.toml: metric for voc2007 is map, not mcr"),
    (('aggregate = "mean"', 'aggregate = "median"'), r"bad.toml: aggregate is not valid: aggregate 'median': choose one of mean, stack, max"),
    (('c_grid = [0.1, 1]', 'c_grid = [0, 1]'), r"bad.toml: c_grid is not valid: .*C must be a finite positive number, not 0"),
    (('row = "Net-T"', 'rows = "Net-T"'), r"bad.toml: rows is not a pipeline key"),
    (('table = "table11"\n', ''), r"bad.toml: table is missing"),
    (('dataset = "voc2007"', 'dataset = "imagenet"'), r"bad.toml: dataset must be one of voc2007"),
    (('weights = { T = "random" }', 'weights = { E = "random" }'), r"bad.toml: weights is not valid: weights names E, which is not among the nets \['T'\]"),
    (('scales = [224, 256]', 'scales = [224, 256'), r"bad.toml: not valid TOML"),
    (('metric = "map"', 'metric = "map"\nsetting = "image+box"'), r"image\+box is for voc2012-action only"),
])
def test_invalid_pipelines_name_the_file_and_key(tmp_path, change, message):
    (tmp_path / "bad.toml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_pipeline(tmp_path / "bad.toml")


def test_select_unknown_name(tmp_path):
    (tmp_path / "voc2007-T.toml").write_text(GOOD)
    assert [p.name for p in select(["all"], tmp_path)] == ["voc2007-T"]
    with pytest.raises(ConfigError, match="no pipeline 'voc2007-X'.*voc2007-T"):
        select(["voc2007-X"], tmp_path)


def hand_count_flops(h, w):
    """The tiny net T of conftest, layer by layer: conv 3x3 (4, M, 8, M, 8, 8, M, 8, M, 8, M),
    then fc6 as a 7x7 conv (8 -> 16) and fc7 as a 1x1 conv (16 -> 16); 2 FLOPs per MAC."""
    f = 2 * 9 * (h * w * 3 * 4)
    h, w = h // 2, w // 2
    f += 2 * 9 * (h * w * 4 * 8)
    h, w = h // 2, w // 2
    f += 2 * 9 * (h * w * 8 * 8) * 2
    h, w = h // 2, w // 2
    f += 2 * 9 * (h * w * 8 * 8)
    h, w = h // 2, w // 2
    f += 2 * 9 * (h * w * 8 * 8)
    h, w = h // 2, w // 2
    positions = (h - 6) * (w - 6)
    return f + 2 * positions * (8 * 49 * 16 + 16 * 16)


def test_flops_against_hand_counts():
    assert forward_flops("D", 224, 224) == 30_932_336_640  # VGG16: the usual 15.47 GMAC
    assert forward_flops("T", 224, 298) == hand_count_flops(224, 298)
    # a 300x225 (w x h) image at Q = 256 becomes 256 x 341, mirrored as well
    assert descriptor_flops("T", (225, 300), 256) == 2 * hand_count_flops(256, 341)


def test_dry_run_counts_what_is_not_cached(tmp_path, monkeypatch):
    ids = tuple(f"{i:06d}" for i in range(1, 7))
    make_voc(tmp_path, trainval=ids[:4], test=ids[4:], real_images=True)  # 300x225 and 225x300 alternately
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "voc2007-T.toml").write_text(GOOD)
    cache = tmp_path / "featx-cache"
    (job, cost, note), = job_costs(all_pipelines(pipes), tmp_path, cache)
    by_hand = 3 * (2 * hand_count_flops(224, 298) + 2 * hand_count_flops(256, 341)) * 2  # 2 orientations
    assert (job.net, job.scales, cost.pairs, cost.cached, note) == ("T", (224, 256), 12, 0, "")
    assert cost.flops == by_hand
    r = CliRunner().invoke(main, ["reproduce", "all", "--dry-run", "--pipelines", str(pipes), "--root",
                                  str(tmp_path), "--gflops", "1"])
    assert r.exit_code == 0, r.output
    assert "voc2007         T   random       224,256                            12        0" in r.output
    assert f"total: 12 image x scale pairs (flips included in FLOPs), {by_hand / 1e12:.3g} TFLOP" in r.output
    # compute one scale; the dry run then counts only the other one
    r = CliRunner().invoke(main, ["extract", "--dataset", "voc2007", "--net", "T", "--weights", "random",
                                  "--scales", "256", "--root", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    (_, cost, _), = job_costs(all_pipelines(pipes), tmp_path, cache)
    assert (cost.pairs, cost.cached) == (6, 6) and cost.flops == 3 * 2 * hand_count_flops(224, 298) * 2
    # the time comes from the cache's own measured rate: its timed rows' FLOPs over their wall time
    from featx.extract.cache import DescriptorCache
    spent, timed = DescriptorCache(cost.cache).timing()[256]
    own = 6 * 2 * hand_count_flops(256, 341) / spent / 1e9
    r = CliRunner().invoke(main, ["reproduce", "all", "--dry-run", "--pipelines", str(pipes), "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert timed == 6 and f"rate {own:.0f} GFLOP/s: its cache's own extraction (6 timed image x scale pairs on " \
        f"{cpu_info().model})" in r.output
    assert "(rate: its cache's own)" in r.output
    # a cache timed on another machine says nothing about this one
    import h5py
    with h5py.File(cost.cache, "r+") as f:
        f["scales/256"].attrs["timed_on"] = "Some Other CPU"
    r = CliRunner().invoke(main, ["reproduce", "all", "--dry-run", "--pipelines", str(pipes), "--root", str(tmp_path)])
    assert "its cache's own" not in r.output and "rate " in r.output
    # a cache with no timed rows (here: none yet, in bfloat16): this CPU model's bench figures ...
    figures = tmp_path / "bench"
    figures.mkdir()
    monkeypatch.setattr("featx.paths.bench_figures", lambda: figures)
    (figures / f"{cpu_info().slug}.json").write_text(json.dumps({"rows": [
        {"how": "featx bf16 auto b8", "dtype": "bfloat16", "gflops": g} for g in (100.0, 140.0, 500.0)]
        + [{"how": "naive", "dtype": "bfloat16", "gflops": 1.0}]}))
    bf16 = ["reproduce", "all", "--dry-run", "--pipelines", str(pipes), "--root", str(tmp_path), "--dtype", "bfloat16"]
    r = CliRunner().invoke(main, bf16)
    assert r.exit_code == 0, r.output
    assert f"rate 140 GFLOP/s: bench/extract.py on this CPU model ({cpu_info().slug}.json, 3 rows)" in r.output
    # ... else a short measurement, at the share of the ceiling a whole extraction reaches (~25%
    # where AMX lifts only the big convolutions); while an extraction writes a cache, say so
    (figures / f"{cpu_info().slug}.json").unlink()
    asked = []
    monkeypatch.setattr("featx.extract.cost.matmul_gflops", lambda **kw: asked.append((kw["n"], kw["dtype"])) or 100.0)
    share = extraction_efficiency("cpu", "bfloat16")
    assert share == (0.25 if "amx_bf16" in cpu_info().flags else 0.7)
    bf16_cache = cost.cache.with_name(cost.cache.stem + "-bfloat16.h5")
    with FileLock(str(bf16_cache) + ".lock"):
        (_, _, note), = job_costs(all_pipelines(pipes), tmp_path, cache, "bfloat16")
        r = CliRunner().invoke(main, bf16)
    assert note == "being extracted now" and asked == [(1024, torch.bfloat16)]
    assert f"rate {100 * share:.0f} GFLOP/s: measured now: 100 GFLOP/s matrix products x {share:g}" in r.output
    assert "note: a featx extraction is writing one of these caches now" in r.output, r.output


def test_reproduce_end_to_end_writes_the_report(tmp_path):
    make_voc(tmp_path, trainval=tuple(f"{i:06d}" for i in range(1, 25)),
             test=tuple(f"{i:06d}" for i in range(25, 41)), real_images=True)
    make_caltech(tmp_path, "caltech101", per_class=(32, 34), real_images=True)
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "voc2007-T.toml").write_text(GOOD + "paper = 89.3\n")
    (pipes / "voc2007-T-max.toml").write_text(GOOD.replace('"table11"', '"ablation"').replace('"mean"', '"max"')
                                              .replace('"Net-T"', '"max"') + 'baseline = "voc2007-T"\n')
    (pipes / "caltech101-T.toml").write_text(GOOD.replace("voc2007", "caltech101").replace('"map"', '"mcr"')
                                             .replace("[224, 256]", "[224]").replace('"mean"', '"stack"')
                                             + "paper = [91.8, 1.0]\n")
    (pipes / "caltech256-T.toml").write_text(GOOD.replace("voc2007", "caltech256").replace('"map"', '"mcr"'))
    args = ["reproduce", "all", "--pipelines", pipes, "--root", tmp_path, "--results-dir", tmp_path / "results", "-q"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1 and "1 of 4 pipelines not run" in r.output, r.output
    assert "skipped caltech256-T: caltech256 not found" in r.output
    assert "voc2007-T: voc2007 mAP (VOC-2007 11-point AP) on test:" in r.output and "[paper 89.3 (difference" in r.output
    assert "computed 80, reused 0" in r.output  # 40 images x {224, 256}, once for both VOC pipelines
    results = tmp_path / "results"
    report = (results / "README.md").read_text()
    meta = json.loads((results / "voc2007" / "voc2007-T.json").read_text())
    ours = f"{meta['headline']:.1f}"
    assert f"| Net-T | voc2007 | 89.3 | {ours} | {meta['headline'] - 89.3:+.1f} |" in report
    assert "| Net-T | caltech256 | — | not run | — |" in report
    caltech = json.loads((results / "caltech101" / "caltech101-T.json").read_text())
    assert f"| {caltech['headline']:.1f} ± {caltech['headline_std']:.1f} |" in report
    maxed = json.loads((results / "voc2007" / "voc2007-T-max.json").read_text())
    assert f"{maxed['headline'] - meta['headline']:+.1f} vs voc2007-T" in report
    assert meta["pipeline"] == "voc2007-T" and meta["command"].startswith("featx reproduce all --dry-run") is False
    assert ("voc2007-T: " + f"{meta['headline'] - 89.3:+.1f}" + " points from the paper's 89.3. What differs "
            "from the paper's protocol, as far as known: C grid: [0.1, 1.0]") in report
    for png in ("voc2007-T-per-class.png", "caltech101-T-per-class.png", "ablation-voc2007-T.png"):
        assert f"(figures/{png})" in report
        with Image.open(results / "figures" / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    # everything is reused the second time; a featx svm run elsewhere shows up under "Other runs"
    r = CliRunner().invoke(main, [str(a) for a in ["reproduce", "voc2007-T"] + args[2:]])
    assert r.exit_code == 0 and "computed 0, reused 80" in r.output, r.output
    r = CliRunner().invoke(main, ["svm", "voc2007", "--net", "T", "--weights", "random", "--scales", "224",
                                  "--root", str(tmp_path), "--results-dir", str(results), "--c-grid", "1"],
                           env={"FEATX_PIPELINES": str(pipes)})
    assert r.exit_code == 0, r.output
    assert "[no paper figure matches this configuration" in r.output  # voc2007-T is Q = 224,256
    r = CliRunner().invoke(main, ["svm", "voc2007", "--net", "T", "--weights", "random", "--scales", "224,256",
                                  "--root", str(tmp_path), "--results-dir", str(tmp_path / "elsewhere"),
                                  "--c-grid", "1"], env={"FEATX_PIPELINES": str(pipes)})
    assert r.exit_code == 0 and "[paper 89.3 (difference" in r.output, r.output
    (results / "bench").mkdir()  # benchmark figures (bench/*.py) live beside the results: not runs
    (results / "bench" / "some-cpu.json").write_text(json.dumps({"bench": "extract", "rows": []}))
    r = CliRunner().invoke(main, ["report", "--results-dir", str(results), "--pipelines", str(pipes)])
    assert r.exit_code == 0, r.output
    assert ("| voc2007 | [T-224-224x1-mean](voc2007/T-224-224x1-mean.md) | mAP (VOC-2007 11-point AP) "
            in (results / "README.md").read_text())
    assert "`featx svm voc2007 --net T --scales 224 --weights random --c-grid 1 --root" in (results / "README.md").read_text()


def test_a_row_computed_in_bfloat16_says_so(tmp_path):
    """The paper's rows are float32. Descriptors computed in another type get their own cache
    file; a row made from them is labelled as such (its markdown, the report's configuration
    cell, what differs from the paper) and never replaces a float32 result."""
    make_caltech(tmp_path, "caltech101", per_class=(32, 34), real_images=True)
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "caltech101-T.toml").write_text(GOOD.replace("voc2007", "caltech101").replace('"map"', '"mcr"')
                                             .replace("[224, 256]", "[224]").replace('"mean"', '"stack"')
                                             + "paper = [1.0, 0.1]\n")  # far off: the differences are listed
    results = tmp_path / "results"
    args = ["reproduce", "caltech101-T", "--pipelines", pipes, "--root", tmp_path, "--results-dir", results, "-q"]
    r = CliRunner().invoke(main, [str(a) for a in args + ["--dtype", "bfloat16"]])
    assert r.exit_code == 0, r.output
    caches = tmp_path / "featx-cache" / "caltech101"
    assert sorted(p.name for p in caches.glob("*.h5")) == ["T-random-0-bfloat16.h5"]
    md = (results / "caltech101" / "caltech101-T.md").read_text()
    assert "- nets T; weights T=random; scales 224; aggregation stack; computed in bfloat16" in md
    meta = json.loads((results / "caltech101" / "caltech101-T.json").read_text())
    # each split's figure, which the mean ± std is over, and the machine that made them
    per_split = [100 * r["mean"]["recall"] for r in meta["runs"]]
    assert len(per_split) == 3 and abs(sum(per_split) / 3 - meta["headline"]) < 1e-9
    assert "; per split " + ", ".join(f"{v:.2f}" for v in per_split) + "\n" in md
    assert meta["versions"]["cpu"].startswith(f"{cpu_info().model}, {cpu_info().cores} cores")
    assert f"- machine: {meta['versions']['cpu']}; featx " in md
    # a run on a GPU names the GPU too
    ran = read_result(results / "caltech101" / "caltech101-T.json")
    on_gpu = dataclasses.replace(ran, config=ran.config.replace(device="cuda"),
                                 versions=ran.versions | {"gpu": "NVIDIA H200"})
    table = pd.read_csv(results / "caltech101" / "caltech101-T.csv")
    assert f"- machine: {meta['versions']['cpu']}; GPU NVIDIA H200; featx " in render_markdown(on_gpu, table, "x")
    assert meta["descriptors"]["T"]["dtype"] == "bfloat16" and meta["config"]["dtype"] == "bfloat16"
    report = (results / "README.md").read_text()
    chosen = ", ".join(f"{r['C']:g}" for r in meta["runs"])  # each split's C, in split order
    assert f"T random; Q 224 stack; C {chosen}; torch on cpu; descriptors in bfloat16 |" in report
    assert "descriptors computed in bfloat16, not float32" in report

    # float32 beside it, in its own file; it replaces the bfloat16 row, never the other way round
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in caches.glob("*.h5")) == ["T-random-0-bfloat16.h5", "T-random-0.h5"]
    f32 = json.loads((results / "caltech101" / "caltech101-T.json").read_text())
    assert f32["descriptors"]["T"]["dtype"] == "float32"
    assert "descriptors in bfloat16" not in (results / "README.md").read_text()
    r = CliRunner().invoke(main, [str(a) for a in args + ["--dtype", "bfloat16"]])
    assert r.exit_code == 1 and "caltech101-T.json: float32 run of the paper's protocol, which a bfloat16 " \
        "run does not replace; give another --results-dir" in r.output, r.output
    assert json.loads((results / "caltech101" / "caltech101-T.json").read_text()) == f32

    # featx svm reads the type it is told, names its run after it, and says what a file holds
    svm = ["svm", "caltech101", "--net", "T", "--weights", "random", "--scales", "224", "--aggregate", "stack",
           "--root", str(tmp_path), "--results-dir", str(results), "--c-grid", "1"]
    r = CliRunner().invoke(main, svm + ["--dtype", "bfloat16"])
    assert r.exit_code == 0 and "T-224-224x1-stack-bfloat16.json" in r.output, r.output
    r = CliRunner().invoke(main, ["report", "--results-dir", str(results), "--pipelines", str(pipes)])
    assert r.exit_code == 0, r.output
    assert "| T; T=random; Q 224 stack; descriptors in bfloat16 | 1, 1, 1 |" in (results / "README.md").read_text()
    (caches / "T-random-0-bfloat16.h5").rename(caches / "T-random-0-float16.h5")
    r = CliRunner().invoke(main, svm + ["--dtype", "float16"])
    assert r.exit_code == 1 and "T-random-0-float16.h5 holds descriptors computed in bfloat16, not float16" in r.output
    r = CliRunner().invoke(main, svm + ["--dtype", "bfloat16"])
    assert r.exit_code == 1 and f"--root {tmp_path} --net T --scales 224 --weights T=random --dtype bfloat16" \
        in r.output, r.output
