import json
import re
import socket

import click
import pytest
from click.testing import CliRunner
from filelock import FileLock

from featx.extract.cache import DescriptorCache
from featx.cli import main, parse_scales

from conftest import make_image


@pytest.mark.parametrize("text,want", [
    ("256:768", (256, 384, 512, 640, 768)),
    ("256:768:64", (256, 320, 384, 448, 512, 576, 640, 704, 768)),
    ("256,384,512", (256, 384, 512)),
    ("384", (384,)),
])
def test_scale_syntax(text, want):
    assert parse_scales(text) == want


@pytest.mark.parametrize("text", ["256:", "a,b", "768:256", "256:768:0", "1:2:3:4"])
def test_bad_scale_syntax(text):
    with pytest.raises(click.BadParameter, match="write LO:HI"):
        parse_scales(text)


@pytest.fixture
def photos(tmp_path):
    for i in range(5):
        make_image(tmp_path / "photos" / ("sub" if i > 2 else "") / f"p{i}.jpg",
                   (300, 225) if i % 2 else (225, 300), seed=i, fmt="JPEG")
    (tmp_path / "photos" / "broken.jpg").write_text("no")
    return tmp_path / "photos"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_extract_images_then_info(tmp_path, photos):
    out = tmp_path / "p.h5"
    r = run("extract", "--images", photos, "--net", "T", "--weights", "random", "--scales", "224,256",
            "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "computed 10, reused 0, failed 2" in r.output and "broken.jpg: not an image" in r.output
    c = DescriptorCache(out)
    assert c.ids == ["broken.jpg", "p0.jpg", "p1.jpg", "p2.jpg", "sub/p3.jpg", "sub/p4.jpg"]
    assert c.load(rows=[1, 2, 3, 4, 5]).shape == (5, 2, 16)
    r = run("extract", "--images", photos, "--net", "T", "--weights", "random", "--scales", "224,256",
            "--out", out, "-q")
    assert "computed 0, reused 10, failed 2" in r.output
    r = run("info", out, "--failures")
    assert r.exit_code == 0
    for line in ["image set   photos: 6 images", "Net-T (tiny), 16-D fc7, float32",
                 "Q=224   done       5  failed     1  to do       0", "failed broken.jpg: "]:
        assert line in r.output, r.output
    assert re.search(r"Q=256 .* to do       0  \d+ s wall, \d+\.\d\d s/image over 5 timed rows", r.output), r.output
    assert "writing     now" not in r.output
    r = run("info", tmp_path)  # a folder lists every cache in it
    assert str(out) in r.output
    with FileLock(str(out) + ".lock"):  # as an extraction holds it
        assert "writing     now: a featx extraction holds this file's lock" in run("info", out).output


def test_list_file_and_out_folder_per_net(tmp_path, photos):
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\nphotos/p0.jpg\n\nphotos/sub/p3.jpg\n")
    r = run("extract", "--images", lst, "--net", "T", "--weights", "random", "--scales", "224",
            "--out", tmp_path / "caches", "-q")
    assert r.exit_code == 0, r.output
    c = DescriptorCache(tmp_path / "caches" / "T-random-0.h5")
    assert c.ids == ["photos/p0.jpg", "photos/sub/p3.jpg"] and c.counts()[224]["done"] == 2


def test_errors_are_one_line(tmp_path, photos, monkeypatch):
    r = run("extract", "--images", photos, "--net", "D,E", "--out", tmp_path / "x.h5")
    assert r.exit_code == 2 and "is one file but 2 nets" in r.output
    r = run("extract", "--images", photos, "--net", "T,T")
    assert r.exit_code == 2 and "'T,T' names a net twice" in r.output
    r = run("extract", "--images", photos, "--net", "X")
    assert r.exit_code == 2 and "unknown net 'X'" in r.output
    r = run("extract", "--images", photos, "--net", "T", "--scales", "100,256", "--weights", "random")
    assert r.exit_code == 1 and r.output.startswith("Error: scale Q=100 is too small")
    r = run("extract", "--images", photos, "--net", "T", "--scales", "256:1", "--weights", "random")
    assert r.exit_code == 2 and "write LO:HI" in r.output
    r = run("extract", "--images", tmp_path / "nothing", "--net", "T", "--weights", "random")
    assert r.exit_code == 1 and "no such folder or list file" in r.output
    # offline, no cached torchvision weights: one sentence naming the file to get, no traceback
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    r = run("extract", "--images", photos, "--net", "D", "--out", tmp_path / "d.h5")
    assert r.exit_code == 1 and "vgg16-397923af.pth" in r.output and "Traceback" not in r.output


def test_strict(tmp_path, photos):
    r = run("extract", "--images", photos, "--net", "T", "--weights", "random", "--scales", "224",
            "--out", tmp_path / "s.h5", "--strict", "-q")
    assert r.exit_code == 1 and "broken.jpg: not an image" in r.output


def test_demo_runs_on_real_sample_photos(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--net", "T", "--weights", "random", "--per-class", "6", "--scales", "224"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "wrote 12 real photographs (face, nonface)" in r.output and "computed 12, reused 0" in r.output
    assert "lfw-faces-6 mean class recall on test1, test2, test3 (mean ± std):" in r.output
    assert sorted(p.name for p in (out / "lfw-faces-6" / "face").iterdir())[:2] == ["000.png", "001.png"]
    meta = json.loads((out / "results" / "lfw-faces-6" / "T-224-224x1-mean.json").read_text())
    assert meta["command"] == f"featx demo --out {out} --net T --weights random --per-class 6 --scales 224"
    r = CliRunner().invoke(main, args)  # a rerun reuses the images and the cache
    assert r.exit_code == 0 and "computed 0, reused 12" in r.output


def test_demo_offline_without_weights_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    import urllib.error

    import torch

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--per-class", "4"])
    assert r.exit_code == 1
    assert "cannot download https://download.pytorch.org/models/vgg16-397923af.pth" in r.output
    assert "Offline, give featx demo a weights file: --net E --weights E=/path/vgg19.pth --preprocess caffe" in r.output


def test_help_and_info_import_no_torch(tmp_path, photos):
    import subprocess
    import sys
    run("extract", "--images", photos, "--net", "T", "--weights", "random", "--scales", "224",
        "--out", tmp_path / "c.h5", "-q")
    for args in (["--help"], ["info", str(tmp_path / "c.h5")]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "featx", *args],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        loaded = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
        assert not {"torch", "torchvision", "sklearn"} & loaded, args


def test_extract_with_nothing_to_compute_builds_no_net_and_imports_no_torch(tmp_path, photos):
    import subprocess
    import sys

    import torch
    from featx.net.specs import NETS
    from featx.net.vgg import random_state_dict
    weights = tmp_path / "t.pth"
    torch.save(random_state_dict(NETS["T"], seed=1), weights)
    code = ("import sys\nfrom featx.net.specs import NETS, NetSpec\n"
            "NETS['T'] = NetSpec('T', 'tiny', (4, 'M', 8, 'M', 8, 8, 'M', 8, 'M', 8, 'M'), fc_dim=16, num_classes=10)\n"
            "from featx.cli import main\n"
            "try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    args = ["extract", "--images", str(photos), "--net", "T", "--weights", str(weights), "--preprocess", "caffe",
            "--scales", "224", "--cache-dir", str(tmp_path / "c"), "-q"]
    env = dict(__import__("os").environ, XDG_CACHE_HOME=str(tmp_path / "user-cache"))
    runs = [subprocess.run([sys.executable, "-c", code.format(args=args)], capture_output=True,
                           text=True, env=env, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    assert "computed 5, reused 0, failed 1" in runs[0].stdout and "torch imported: True" in runs[0].stdout
    # the second run knows the weights by the digest remembered for the file and finds every row done
    assert "computed 0, reused 5, failed 1" in runs[1].stdout, runs[1].stdout
    assert "torch imported: False" in runs[1].stdout
