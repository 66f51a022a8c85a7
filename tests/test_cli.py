"""The console script, run for real against the sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import requests
import xarray as xr

from xarray_terrascope import auth, cli
from xarray_terrascope.testing import SAMPLE_FIELD

BBOX = ",".join(str(v) for v in SAMPLE_FIELD)
WINDOW = ["--start", "2025-06-01", "--end", "2025-06-12"]


def test_search_prints_one_line_per_item(terrascope_env, capsys):
    assert cli.main(["search", "--bbox", BBOX, *WINDOW, "--max-cloud-cover", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if "_NDVI_10M_" in line]
    assert out[-1] == f"{len(rows)} item(s)" and rows
    assert all(float(line.split()[1]) <= 50 for line in rows)


@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".tif"])
def test_ndvi_export_writes_the_cube(terrascope_env, tmp_path, capsys, suffix):
    out = tmp_path / f"ndvi{suffix}"
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    expected = (
        xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-12"
        )
        .terrascope.ndvi()
        .load()
    )
    if suffix == ".tif":
        with rasterio.open(out) as src:
            assert src.count == expected.sizes["time"] and src.crs.to_epsg() == 32631
            dn = src.read(1)
            got = dn.astype(np.float32) * np.float32(src.scales[0]) + np.float32(src.offsets[0])
            got = np.where(dn == src.nodata, np.nan, got)
        np.testing.assert_allclose(got, expected.isel(time=0).values, atol=1e-6)
    else:
        engine = "zarr" if suffix == ".zarr" else None
        written = xr.open_dataset(out, engine=engine)["NDVI"].load()
        np.testing.assert_allclose(written.values, expected.values, atol=1e-6)
    auth.logout()


def test_errors_are_printed_not_raised(terrascope_env, capsys):
    code = cli.main(["search", "--bbox", BBOX, "--start", "2025-06-12", "--end", "2025-06-01"])
    assert code == 2
    assert "start" in capsys.readouterr().err


def test_sandbox_command_prints_the_variables_and_serves(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xarray_terrascope.cli", "sandbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        exports = {}
        for line in proc.stdout:
            if line.startswith("export "):
                key, value = line[len("export ") :].strip().split("=", 1)
                exports[key] = value
            if line.startswith("# Ctrl-C"):
                break
        assert set(exports) >= {
            "TERRASCOPE_STAC_URL",
            "TERRASCOPE_DOWNLOAD_URL",
            "TERRASCOPE_DOWNLOAD_HOSTS",
            "TERRASCOPE_USERNAME",
            "TERRASCOPE_PASSWORD",
        }
        assert exports["TERRASCOPE_STAC_URL"].startswith("http://127.0.0.1:")
        landing = requests.get(exports["TERRASCOPE_STAC_URL"], timeout=10)
        assert landing.status_code == 200 and landing.json()["type"] == "Catalog"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
    assert proc.returncode == 0


def test_demo_job_writes_the_table_the_curve_and_the_slider(tmp_path, capsys, monkeypatch):
    for key in list(os.environ):
        if key.startswith("TERRASCOPE_"):
            monkeypatch.delenv(key)
    result = cli.run_demo(tmp_path, start="2025-05-01", end="2025-05-20")
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line[:4] == "2025"]
    assert len(table) == result["dates"] > 3
    assert all(line.split()[1].endswith("%") for line in table)
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"bokeh" in result["html"].read_bytes()[:200000].lower()
    assert result["requests"] > 0
    assert not any(k.startswith("TERRASCOPE_") for k in os.environ)
    assert auth.current_credentials() is None
