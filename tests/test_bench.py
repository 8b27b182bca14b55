"""The benchmark scripts run (smoke mode: a tiny net, a tiny problem); no timing is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", ["extract.py", "classifiers.py", "end_to_end.py", "engines.py"])
def test_bench_script_smoke(script, tmp_path):
    if script == "engines.py":
        pytest.importorskip("ray.data", reason="the engines benchmark needs pip install 'featx[ray]'")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(row.get("seconds", row.get("fit_s", 0)) >= 0 for row in rows)
