"""The benchmark scripts run (smoke mode: a tiny net, a tiny problem); no timing is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", ["extract.py", "classifiers.py", "end_to_end.py", "engines.py", "winograd.py", "memory.py",
                                    "kernels_ab.py", "identity.py", "export.py"])
def test_bench_script_smoke(script, tmp_path):
    if script == "engines.py":
        pytest.importorskip("ray.data", reason="the engines benchmark needs pip install 'featx[ray]'")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(row.get("seconds", row.get("fit_s", 0)) >= 0 for row in rows)
    if script == "kernels_ab.py":  # both kernel choices give the same bits, in both dtypes
        from featx.net import kernels
        import torch
        no_bf16 = bool(kernels.onednn_refusal(torch.bfloat16))  # AVX2-only CPUs: fused is float32 only
        assert {row["dtype"] for row in rows} == ({"float32"} if no_bf16 else {"float32", "bfloat16"})
        assert ("skipped: kernels conv=fused" in r.stdout) == no_bf16
        assert all(row["identical_descriptors"] and len(row["ratio_per_round"]) == 2 for row in rows)


def _bench_module(name):
    import importlib
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_convolution_equals_the_direct_one(m):
    import torch
    winograd = _bench_module("winograd")
    conv = torch.nn.Conv2d(32, 24, 3, padding=1)
    x = torch.randn(2, 32, 29, 38, generator=torch.Generator().manual_seed(0))  # sides not multiples of m
    with torch.no_grad():
        want, got = conv(x), winograd.WinogradConv3x3(conv, m)(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() / want.abs().max() <= (1e-6 if m == 2 else 2e-5)


def test_speed_tables_are_generated_from_the_json_figures(tmp_path):
    figures = tmp_path / "bench"
    figures.mkdir()
    r = subprocess.run([sys.executable, str(BENCH / "extract.py"), "--smoke", "--json", str(figures / "x.json")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((figures / "x.json").read_text())
    assert data["cpu"]["model"] and isinstance(data["cpu"]["flags"], list)
    row = data["rows"][-1]
    assert row["gflops"] <= row["ceiling_gflops"] * 1.5  # smoke net: tiny, far below the ceiling
    readme = tmp_path / "README.md"
    tables = _bench_module("tables")
    readme.write_text(f"# x\n\n{tables.BEGIN}\nold\n{tables.END}\n\nafter\n")
    cmd = [sys.executable, str(BENCH / "tables.py"), "--page", str(readme), "--figures", str(figures)]
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 1
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    text = readme.read_text()
    assert f"| S | 224 | {row['how']} | {row['kernels']} | {row['images_per_s']:.2f} |" in text
    assert data["cpu"]["model"] in text and "old" not in text and text.endswith("after\n")
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0


def test_the_speed_tables_of_docs_speed_md_match_the_committed_figures():
    r = subprocess.run([sys.executable, str(BENCH / "tables.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
