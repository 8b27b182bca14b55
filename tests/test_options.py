"""featx.options is the one source of every choice and default; featx.paths of every
environment variable. These tests hold the rest of featx to that."""
import inspect
import re
from pathlib import Path

import click
import numpy as np
import pytest

import featx
from featx import options
from featx.descriptors.fusion import aggregate
from featx.cli import main
from featx.evaluate.classifiers import OneVsRestSVM
from featx.errors import ConfigError
from featx.evaluate.experiment import Config
from featx.net.weights import PREPROCESS

PACKAGE = Path(featx.__file__).parent


def click_options(name):
    """(command, option) for every option of that name in the featx command line."""
    for command in main.commands.values():
        for p in command.params:
            if p.name == name:
                yield command.name, p


@pytest.mark.parametrize("name,choices", [
    ("aggregate", options.AGGREGATIONS), ("solver", options.SOLVERS),
    ("dtype", options.COMPUTE_TYPES), ("setting", options.SETTINGS), ("engine", options.ENGINES)])
def test_the_command_line_offers_the_choices_of_featx_options(name, choices):
    found = list(click_options(name))
    assert found, name
    for command, p in found:
        assert isinstance(p.type, click.Choice), (command, name)
        # export's --aggregate adds "none": descriptors per scale
        assert [c for c in p.type.choices if c != "none"] == list(choices), (command, name)


def test_the_command_line_and_python_share_defaults():
    for command, p in click_options("nets"):
        assert p.default == options.DEFAULT_NET, command
    for command, p in click_options("batch_size"):
        assert p.default == options.DEFAULT_BATCH_SIZE, command
    (_, grid), = click_options("c_grid")
    assert tuple(float(c) for c in grid.default.split(",")) == options.DEFAULT_C_GRID == Config("x").c_grid
    from featx import Extractor, VGGDescriptor
    for fn in (Extractor, VGGDescriptor):
        params = inspect.signature(fn).parameters
        assert params["scales"].default == options.DEFAULT_SCALES
        assert params["batch_size"].default == options.DEFAULT_BATCH_SIZE
    assert inspect.signature(Extractor).parameters["net"].default == options.DEFAULT_NET


def test_every_choice_is_implemented():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert {how: aggregate(x, how).shape for how in options.AGGREGATIONS} == {
        "mean": (2, 4), "stack": (2, 12), "max": (2, 4)}
    assert sorted([*PREPROCESS, "timm"]) == sorted(options.PREPROCESS_NAMES)
    X, y = np.eye(4, dtype=np.float32), np.array([0, 1, 0, 1])
    for solver in options.SOLVERS:
        assert OneVsRestSVM(solver=solver).fit(X, y).predict(X).shape == (4,)
    with pytest.raises(ConfigError, match="unknown aggregation 'median': choose one of mean, stack, max"):
        aggregate(x, "median")


def test_every_environment_variable_is_read_in_paths():
    """paths.py reads each one and its docstring names it; no other module reads the environment
    (beyond those of the libraries featx drives: torch's, Ray's own, OpenMP's)."""
    doc = (PACKAGE / "paths.py").read_text()
    read = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', doc))
    assert {"FEATX_MAX_PIXELS", "FEATX_MAX_RESCALED_PIXELS", "FEATX_KERNELS", "RAY_ADDRESS",
            "FEATX_DATA_ROOT", "FEATX_CACHE_DIR", "FEATX_PIPELINES"} <= read
    header = featx.paths.__doc__
    for name in read:
        assert f"${name}" in header, name
    for path in PACKAGE.glob("*.py"):
        if path.name == "paths.py":
            continue
        text = path.read_text()
        for name in re.findall(r'environ(?:\.get)?\(?\[?"((?:FEATX|RAY)_[A-Z_]+)"', text):
            pytest.fail(f"{path.name} reads ${name}: read it through featx.paths")


def test_preprocess_is_given_per_net_and_checked_by_the_descriptor_spec(tmp_path):
    """--preprocess is per net like --weights (D=caffe,E=torchvision), so not a click choice:
    its names are checked once, by featx.config.DescriptorSpec, which lists them."""
    from click.testing import CliRunner

    from conftest import make_image
    from featx.extract.cache import DescriptorCache
    for command, p in click_options("preprocess"):
        assert not isinstance(p.type, click.Choice), command
    for i in range(2):
        make_image(tmp_path / "img" / f"{i}.png", (240, 230), seed=i)
    base = ["extract", "--images", tmp_path / "img", "--net", "T", "--weights", "random", "--scales", "224", "-q"]
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a])  # noqa: E731
    r = run(*base, "--preprocess", "bgr", "--out", tmp_path / "a.h5")
    assert r.exit_code == 1 and "preprocess of T: 'bgr': choose one of caffe, torchvision, timm" in r.output, r.output
    r = run(*base, "--preprocess", "T=caffe", "--out", tmp_path / "b.h5")
    assert r.exit_code == 0, r.output
    assert DescriptorCache(tmp_path / "b.h5").made_with.preprocess == "caffe"


def test_the_help_names_every_benchmark_featx_reads():
    """The --help texts list the benchmarks by hand (featx --help loads no dataset code); they
    name exactly featx.data.datasets.DATASETS, so a dataset added there is added here too."""
    from featx.data.datasets import DATASETS

    def named(text):
        text = text.replace("caltech101/256", "caltech101 caltech256")
        return set(re.findall(r"\b(voc\d{4}(?:-action)?|caltech\d+)\b", text))

    extract_help = next(p.help for p in main.commands["extract"].params if p.name == "dataset")
    assert named(extract_help) == set(DATASETS)
    assert named(main.commands["svm"].help.split("Protocols")[1].split("Writes")[0]) == set(DATASETS)
