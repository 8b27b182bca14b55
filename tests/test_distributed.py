"""The Ray engine on a local Ray instance (2 CPUs, tiny net): same file as the local engine,
survives a worker killed mid-run, reuses everything on a rerun; the Ray Dataset entry point."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY, make_image
from featx.extract.cache import DescriptorCache
from featx.cli import main
from featx.errors import ConfigError
from featx.extract.extractor import Extractor
from featx.extract.watchdog import _stat as process_stat

KILL_FILE = "FEATX_TEST_KILL_FILE"


def kill_once_hook():
    """Runs in every Ray worker: while the file named by $FEATX_TEST_KILL_FILE exists, the first
    worker to decode its third image removes the file and SIGKILLs itself (a crash mid-shard)."""
    import featx.extract.extractor

    armed = os.environ.get(KILL_FILE)
    if not armed:
        return
    original, calls = featx.extract.extractor.load_resized, [0]

    def load_resized(item, q, index=None):
        calls[0] += 1
        if calls[0] == 3:
            try:
                os.unlink(armed)  # only one worker wins the race
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(item, q, index)

    featx.extract.extractor.load_resized = load_resized


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    try:
        import ray
        import ray.cloudpickle
        import ray.data  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Ray Data is not installed ({e}): pip install 'featx[ray]'")
    kill_file = tmp_path_factory.mktemp("ray") / "kill-armed"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable there
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {KILL_FILE: str(kill_file)},
                              "worker_process_setup_hook": kill_once_hook})
    except Exception as e:
        pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
    yield kill_file
    ray.shutdown()


@pytest.fixture
def image_set(tmp_path):
    folder = tmp_path / "photos"
    for i in range(14):
        make_image(folder / f"im{i:02d}.png", (300, 225) if i % 3 else (225, 300), seed=i)
    trunc = make_image(folder / "trunc.jpg", (300, 240), fmt="JPEG")
    trunc.write_bytes(trunc.read_bytes()[:1500])  # header fine, pixels cut: fails in a worker
    (folder / "text.jpg").write_text("not an image")  # fails when sizes are read
    return folder


class threads:
    """Run the local engine on as many threads as each Ray actor gets: oneDNN's kernels (on
    some CPUs) split the work, and so round, differently for another thread count."""

    def __init__(self, n):
        import torch
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        import torch
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch
        torch.set_num_threads(self.before)


def _extract(args):
    result = CliRunner().invoke(main, ["extract", "--net", "T", "--weights", "random:0",
                                       "--scales", "224,256", "--batch-size", "2", "-q", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _contents(path):
    c = DescriptorCache(path)
    return c.load([224, 256], rows=np.flatnonzero(c.status(224) == 1)), \
        [c.status(q) for q in (224, 256)], c.errors()


def test_ray_engine_writes_the_local_file_survives_a_killed_worker_and_resumes(ray_local, image_set,
                                                                              tmp_path):
    with threads(1):  # 2 actors on 2 CPUs: one thread each
        _extract(["--images", str(image_set), "--out", str(tmp_path / "local.h5")])
    ray_local.touch()  # arm: one worker dies decoding its third image
    out = _extract(["--images", str(image_set), "--out", str(tmp_path / "ray.h5"),
                    "--engine", "ray", "--num-workers", "2"])
    assert not ray_local.exists(), "no worker was killed: the test proved nothing"
    assert "computed 28, reused 0, failed 4" in out

    local, ray_ = _contents(tmp_path / "local.h5"), _contents(tmp_path / "ray.h5")
    assert local[0].shape == (14, 2, 16)
    np.testing.assert_array_equal(ray_[0], local[0])  # bit-identical, not merely close
    for a, b in zip(local[1], ray_[1]):
        np.testing.assert_array_equal(a, b)
    assert ray_[2] == local[2]
    assert set(ray_[2]) == {"text.jpg", "trunc.jpg"}
    assert "truncated or corrupt" in ray_[2]["trunc.jpg"]

    again = _extract(["--images", str(image_set), "--out", str(tmp_path / "ray.h5"),
                      "--engine", "ray", "--num-workers", "2"])
    assert "computed 0, reused 28, failed 4" in again


def test_ray_engine_resumes_a_file_the_local_engine_started(ray_local, image_set, tmp_path):
    _extract(["--images", str(image_set), "--out", str(tmp_path / "c.h5"), "--scales", "224"])
    out = _extract(["--images", str(image_set), "--out", str(tmp_path / "c.h5"),
                    "--engine", "ray", "--num-workers", "1"])
    assert "computed 14, reused 14, failed 4" in out
    _extract(["--images", str(image_set), "--out", str(tmp_path / "all-local.h5")])
    np.testing.assert_array_equal(_contents(tmp_path / "c.h5")[0],
                                  _contents(tmp_path / "all-local.h5")[0])


def test_the_ray_engine_runs_a_timm_backbone_as_the_local_one(ray_local, image_set, tmp_path):
    pytest.importorskip("timm")
    args = ["--images", str(image_set), "--net", "timm:resnet18", "--weights", "random:2"]  # Q = 224, 256
    with threads(1):  # each actor runs on one core
        _extract(args + ["--out", str(tmp_path / "local.h5")])
    out = _extract(args + ["--out", str(tmp_path / "ray.h5"), "--engine", "ray", "--num-workers", "1"])
    assert "computed 28, reused 0, failed 4" in out, out
    (ray_d, ray_status, _), (local_d, local_status, _) = (_contents(tmp_path / f) for f in ("ray.h5", "local.h5"))
    assert ray_d.shape == (14, 2, 512)
    np.testing.assert_allclose(ray_d, local_d, rtol=1e-5, atol=1e-6)


def test_a_failing_worker_is_one_clear_error_and_loses_nothing(ray_local, image_set, tmp_path):
    from featx.extract.update import extract_to_cache
    from featx.extract.distributed import RayExtractor
    from featx.errors import EngineError

    paths = sorted(str(p) for p in image_set.glob("im*.png"))
    ids = [Path(p).name for p in paths]
    path = tmp_path / "c.h5"
    extract_to_cache(Extractor(TINY, scales=(224,), weights="random:0"), paths, ids,
                     tmp_path / "local.h5", progress=False)
    # "meta" tensors have no values: every forward pass fails when it copies its result out
    broken = RayExtractor(TINY, scales=(224,), weights="random:0", device="meta", num_workers=1)
    with pytest.raises(EngineError, match="the Ray run failed on a worker: .*meta"):
        extract_to_cache(broken, paths, ids, path, progress=False)
    assert DescriptorCache(path).counts()[224] == {"done": 0, "failed": 0, "todo": 14}
    good = RayExtractor(TINY, scales=(224,), weights="random:0", num_workers=1)
    s = extract_to_cache(good, paths, ids, path, progress=False)
    assert (s.computed, s.reused, s.failed) == (14, 0, 0)
    np.testing.assert_array_equal(DescriptorCache(path).load(),
                                  DescriptorCache(tmp_path / "local.h5").load())


def test_cuda_on_ray_needs_gpus_per_worker():
    pytest.importorskip("ray.data")
    from featx.extract.distributed import RayExtractor

    with pytest.raises(ConfigError, match="needs --gpus-per-worker"):
        RayExtractor(TINY, scales=(224,), weights="random:0", device="cuda")


def test_descriptors_of_a_ray_dataset_of_paths_and_bytes(ray_local, image_set):
    import ray

    from featx.extract.distributed import with_descriptors

    paths = sorted(str(p) for p in image_set.glob("im0*.png"))[:5]
    by_path = ray.data.from_items([{"image": p, "key": i} for i, p in enumerate(paths)])
    by_bytes = ray.data.from_items([{"image": Path(paths[0]).read_bytes(), "key": 5},
                                    {"image": b"junk", "key": 6}])
    out = []
    for ds in (by_path, by_bytes):
        out += with_descriptors(ds, TINY, (224, 256), weights="random:0", num_workers=1,
                           rows_per_call=8).take_all()
    out = sorted(out, key=lambda r: r["key"])
    assert [r["key"] for r in out] == list(range(7))
    want = Extractor(TINY, scales=(224, 256), weights="random:0").extract(paths + [paths[0]])
    got = np.stack([r["descriptor"] for r in out[:6]])
    assert got.shape == (6, 2, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [r["error"] for r in out[:6]] == [""] * 6
    assert out[6]["error"] == "not an image (unrecognised format)"
    assert np.isnan(out[6]["descriptor"]).all()


def test_missing_ray_is_a_clear_error(monkeypatch, images, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    from featx.extract.distributed import require_ray

    with pytest.raises(ConfigError, match=r"pip install 'featx\[ray\]'"):
        require_ray()
    result = CliRunner().invoke(main, ["extract", "--images", str(images[0].parent), "--net", "T",
                                       "--weights", "random:0", "--scales", "224", "--engine", "ray",
                                       "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and "featx[ray]" in result.output
    assert not (tmp_path / "x.h5").exists()


def test_ray_options_need_the_ray_engine(images, tmp_path):
    result = CliRunner().invoke(main, ["extract", "--images", str(images[0].parent), "--net", "T",
                                       "--weights", "random:0", "--num-workers", "2",
                                       "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "--num-workers apply to --engine ray only" in result.output


def test_the_ray_engine_holds_the_plan_not_a_net():
    """The driver is an Engine, not an Extractor: it holds the plan and the weights to ship, no
    net; its plan and provenance are the local engine's."""
    from featx.extract.distributed import RayExtractor
    from featx.extract.engine import Engine
    ray_ex = RayExtractor(TINY, scales=(224, 256), weights="random:0", num_workers=1, batch_size=2)
    local = Extractor(TINY, scales=(224, 256), weights="random:0", device="cpu", batch_size=2)
    assert isinstance(ray_ex, Engine) and not isinstance(ray_ex, Extractor) and not hasattr(ray_ex, "model")
    assert ray_ex.weights.state_dict == {} and set(ray_ex._shipped.state_dict) == set(local.spec.random_state_dict(0))
    assert ray_ex.provenance() == local.provenance() and ray_ex.weights.digest == local.weights.digest
    sizes = [(300, 400), (400, 300), (300, 400), None, (300, 400)]
    assert [(q, [b.tolist() for b in bs]) for q, bs in ray_ex.plan(sizes)] == \
           [(q, [b.tolist() for b in bs]) for q, bs in local.plan(sizes)]


def test_a_local_ray_instance_goes_with_its_driver_on_sigterm(monkeypatch):
    # SIGTERM becomes an exit, so Ray's atexit shutdown runs (a handler already set is kept)
    from featx.extract.distributed import _shut_down_on_sigterm
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_DFL)
    installed = {}
    monkeypatch.setattr(signal, "signal", lambda s, handler: installed.setdefault(s, handler))
    _shut_down_on_sigterm()
    with pytest.raises(SystemExit) as stop:
        installed[signal.SIGTERM](signal.SIGTERM, None)
    assert stop.value.code == 128 + signal.SIGTERM
    installed.clear()
    monkeypatch.setattr(signal, "getsignal", lambda s: print)  # someone else's handler
    _shut_down_on_sigterm()
    assert installed == {}


DRIVER = """
import json, os, subprocess, sys, time
from featx.extract import distributed, watchdog
sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
if sys.argv[1] == "ray":
    distributed.connect()
    time.sleep(3)  # the agents start a moment after ray.init returns
    unrelated = None
else:  # stand-ins: a child that names Ray in its command line, and one that does not
    subprocess.Popen(sleep + ["ray-agent-standin"])
    unrelated = subprocess.Popen(sleep + ["unrelated"]).pid
    distributed._start_watchdog()
    time.sleep(2)  # the watchdog's first look at the process tree
print(json.dumps([sorted(watchdog.descendants(os.getpid())), unrelated]), flush=True)
time.sleep(120)
"""


def _killed_driver(kind):
    """Start a driver, SIGKILL it once it printed its Ray processes; (those pids, the pid of
    its child that is not Ray's or None, the Ray pids still running 15 s later)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the watchdog follows the process tree in /proc (Linux)")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, kind], stdout=subprocess.PIPE, text=True)
    try:
        ray_pids, unrelated = json.loads(driver.stdout.readline())
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(process_stat(p) for p in ray_pids):
        time.sleep(0.2)
    return ray_pids, unrelated, [p for p in ray_pids if process_stat(p)]


def test_the_watchdog_ends_the_ray_processes_a_killed_driver_leaves_and_nothing_else():
    ray_pids, unrelated, survivors = _killed_driver("standins")
    assert len(ray_pids) == 1 and survivors == []
    assert unrelated not in ray_pids and process_stat(unrelated) is not None  # not Ray's: left alone
    os.kill(unrelated, signal.SIGKILL)


def test_a_local_ray_instance_goes_with_its_driver_on_kill_9():
    pytest.importorskip("ray.data", reason="needs pip install 'featx[ray]'")
    ray_pids, _, survivors = _killed_driver("ray")
    assert len(ray_pids) >= 4  # gcs_server, raylet, the agents, workers...
    assert survivors == []
