"""The wheel works on its own: built from this checkout, installed into a temporary folder and
run from a directory outside the checkout, it finds its pipelines and split files."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CALTECH = REPO.parent / "shared" / "data" / "caltech101" / "101_ObjectCategories"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    pytest.importorskip("setuptools", minversion="68")
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(REPO)], check=True, capture_output=True)
    wheel, = (tmp / "dist").glob("featx-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(site), str(wheel)], check=True, capture_output=True)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return site, outside


def featx(installed, *args):
    site, cwd = installed
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("FEATX_PIPELINES", None)
    return subprocess.run([sys.executable, "-m", "featx", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_installed_wheel_is_what_runs(installed_wheel):
    site, cwd = installed_wheel
    r = subprocess.run([sys.executable, "-c", "import featx; print(featx.__file__)"], cwd=cwd,
                       env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert r.stdout.strip() == str(site / "featx" / "__init__.py")
    assert len(list((site / "featx" / "pipelines").glob("*.toml"))) == 27
    assert sorted(p.name for p in (site / "featx" / "splits" / "caltech101").iterdir()) == \
        ["split1.csv", "split2.csv", "split3.csv"]


def test_reproduce_dry_run_report_and_datasets_ls_outside_the_checkout(installed_wheel):
    site, cwd = installed_wheel
    r = featx(installed_wheel, "reproduce", "table11", "--dry-run", "--gflops", "100", "--root", cwd / "data")
    assert r.returncode == 0, r.stderr
    assert "12 pipelines: caltech101-D, caltech101-DE, caltech101-E" in r.stdout
    assert "voc2007         D   caffe        256,384,512,640,768" in r.stdout
    r = featx(installed_wheel, "report", "--results-dir", cwd / "results")
    assert r.returncode == 0, r.stderr
    report = (cwd / "results" / "README.md").read_text()
    assert "| Net-E (19 layers) | caltech101 | 92.3 ± 0.5 | not run |" in report
    r = featx(installed_wheel, "datasets", "ls", "--root", cwd / "data")
    assert r.returncode == 0, r.stderr
    assert "caltech101      missing" in r.stdout


@pytest.mark.skipif(not SHARED_CALTECH.is_dir(), reason="the shared Caltech-101 tree is not beside the checkout")
def test_the_wheels_split_files_fit_the_official_tree(installed_wheel, tmp_path):
    (tmp_path / "caltech101").symlink_to(SHARED_CALTECH.parent)
    r = featx(installed_wheel, "datasets", "ls", "--root", tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("caltech101      complete  caltech101: 9144 images to extract, 9144 samples, 102 classes "
            "(multiclass); splits: train1 2448, val1 612, test1 2995") in r.stdout
    assert not (tmp_path / "splits").exists()  # the shipped files were used, none drawn
