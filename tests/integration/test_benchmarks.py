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


BENCH_TOC = BENCH.with_name("bench_toc.py")
#: A 2.8 x 2.2 km corner of the benchmark's region over the swath edge, two dates: one
#: with a clear share >= 0.8 and one below (dropped by min_clear).
TOC_SMOKE = ["--bbox", "4.96,51.24,5.00,51.26", "--start", "2025-06-01", "--end", "2025-06-06"]
TOC_CONTENDERS = [
    "terrascope",
    "terrascope.mask",
    "terrascope.open-minclear",
    "odc-stac",
    "stackstac",
    "ndvi",
]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_toc_quick(tmp_path):
    """bench_toc runs its three scenarios; every TOC cube equals the world's truth, the
    opening with min_clear reads mask files only and drops the truth's dates, and the
    masked read fetches fewer band bytes."""
    pytest.importorskip("odc.stac")
    pytest.importorskip("async_geotiff")
    out = tmp_path / "toc.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH_TOC),
            "--quick",
            *TOC_SMOKE,
            "--contenders",
            ",".join(TOC_CONTENDERS),
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
    scenarios = report["scenarios"]
    assert set(scenarios) == {"toc-region", "toc-mask", "toc-minclear"}
    region = scenarios["toc-region"]
    assert region["dates"] == 2 and report["plan_dates_equal_search"]
    assert {a: region["floor"]["assets"][a]["files"] for a in ("B04", "B08", "SCL")} == {
        "B04": 2,
        "B08": 2,
        "SCL": 2,
    }
    for name, sc in scenarios.items():
        for contender, summary in sc["contenders"].items():
            assert summary["ok_runs"] == 1, (name, contender, summary.get("error"))
            assert summary["requests"] > 0, (name, contender)
            if contender == "ndvi" or "open" in contender:
                continue
            checked = summary["truth"]
            for var in ("B04", "B08", "SCL"):
                assert checked[var]["equal"], (name, contender, var, checked[var])
                assert checked[var]["values_compared"] > 0, (name, contender, var)
            assert not checked["missing_dates"] and not checked["extra_dates"], checked
    # the swath edge crosses the bbox: no-data pixels were compared too
    odc_b04 = region["contenders"]["odc-stac"]["truth"]["B04"]
    assert odc_b04["pixels"] > odc_b04["values_compared"]
    assert region["per_pixel_band_vs_ndvi"]["terrascope"]["ratio"] > 0
    minclear = scenarios["toc-minclear"]
    opening = minclear["contenders"]["terrascope.open-minclear"]
    assert set(opening["asset_bytes"]) == {"SCL"} and opening["asset_bytes"]["SCL"] > 0
    assert minclear["truth_dropped_dates"] == ["2025-06-05"]
    assert opening["dropped_equal_truth"], opening["dropped_dates"]
    mask = scenarios["toc-mask"]
    masked = mask["contenders"]["terrascope.mask"]
    assert masked["band_bytes"] < mask["contenders"]["terrascope"]["band_bytes"]
    assert mask["band_floor_masked"]["bytes"] < mask["band_floor_unmasked"]
    assert "toc-region" in "\n".join(report["table"])
