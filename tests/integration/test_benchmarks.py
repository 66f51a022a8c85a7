"""Smoke test of ``benchmarks/bench_read.py``: it runs, and every contender agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_read.py"
CONTENDERS = {
    "terrascope",
    "terrascope.load",
    "odc-stac",
    "stackstac",
    "rioxarray",
    "async-geotiff",
}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_read_quick_field(tmp_path):
    pytest.importorskip("odc.stac")
    pytest.importorskip("async_geotiff")
    out = tmp_path / "read.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--scenarios",
            "field",
            "--end",
            "2025-04-05",
            "--no-server-check",
            "--latency",
            "0.005",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["versions"]["xarray-terrascope"]
    field = report["scenarios"]["field"]
    assert set(field["contenders"]) == CONTENDERS
    assert field["floor"]["files"] > 0 and field["floor"]["bytes"] > 0
    for name, summary in field["contenders"].items():
        assert summary["ok_runs"] == 1, (name, summary.get("error"))
        assert summary["equal"], (name, summary["max_abs_diff"], summary["nan_mismatch"])
        assert summary["dates_equal_plan"], name
        assert summary["requests"] > 0 and summary["peak_rss_bytes"] > 0, name
    assert "field" in "\n".join(report["table"])
