"""The console script, run for real against the sandbox."""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope import auth, cli
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import PYTHON_CHILD, TERRASCOPE_VARS, interrupt, restore_sigint

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


def _export(tmp_path, name):
    """Run ``ndvi --out tmp_path/name`` on the sample field; return the path and the cube."""
    out = tmp_path / name
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 0
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-12"
    )
    auth.logout()
    return out, ds


def _file_bytes(path):
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in files)


def test_geotiff_export_keeps_the_dates(terrascope_env, tmp_path):
    out, ds = _export(tmp_path, "ndvi.tif")
    dates = ds.terrascope.dates()
    with rasterio.open(out) as src:
        assert src.count == len(dates) > 1
        assert list(src.descriptions) == dates
        for band, day in enumerate(dates, start=1):
            tags = src.tags(band)
            assert tags["date"] == day
            assert tags["item_ids"] == str(ds["item_ids"].values[band - 1])
            assert tags["item_ids"].split() and "_NDVI_10M_" in tags["item_ids"]
        meta = src.tags()
    assert meta["collection"] == "terrascope-s2-ndvi-v2"
    assert [float(v) for v in meta["bbox"].split(",")] == list(SAMPLE_FIELD)
    assert (meta["start"], meta["end"]) == ("2025-06-01", "2025-06-12")
    assert meta["dates"].split(",") == dates
    assert terrascope_env.password.encode() not in out.read_bytes()


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_netcdf_and_zarr_exports_keep_the_dataset_attributes(terrascope_env, tmp_path, suffix):
    out, ds = _export(tmp_path, f"ndvi{suffix}")
    engine = "zarr" if suffix == ".zarr" else None
    written = xr.open_dataset(out, engine=engine, decode_coords="all")
    attrs = written.attrs
    assert attrs["collection"] == "terrascope-s2-ndvi-v2"
    assert list(np.atleast_1d(attrs["bbox"])) == list(SAMPLE_FIELD)
    assert (attrs["start"], attrs["end"]) == ("2025-06-01", "2025-06-12")
    assert attrs["source"] == "xarray-terrascope"
    assert "terrascope_items_key" not in attrs  # a handle that means nothing outside the process
    assert set(attrs) == set(ds.attrs) - {"terrascope_items_key"}
    assert list(written["item_ids"].values) == list(ds["item_ids"].values)
    assert written.rio.crs.to_epsg() == 32631
    assert terrascope_env.password.encode() not in _file_bytes(out)


@pytest.mark.filterwarnings("error")  # every warning is an error here
def test_zarr_export_round_trips_float32_without_warnings(terrascope_env, tmp_path):
    out, ds = _export(tmp_path, "ndvi.zarr")
    written = xr.open_zarr(out)
    assert written["NDVI"].dtype == np.float32
    assert written["cloud_cover"].dtype == np.float32
    got = written["NDVI"].load()
    expected = ds.terrascope.ndvi().load()
    auth.logout()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.values, expected.values)  # NaN where no data, both
    assert list(written["platform"].values) == list(ds["platform"].values)


def test_out_in_missing_directories_creates_them(terrascope_env, tmp_path, capsys):
    out = tmp_path / "missing" / "dir" / "ndvi.nc"
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 0
    auth.logout()
    assert xr.open_dataset(out)["NDVI"].sizes["time"] > 1
    assert "Traceback" not in capsys.readouterr().err


def test_out_that_cannot_be_written_is_a_one_line_error(terrascope_env, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    out = tmp_path / "a-file" / "ndvi.nc"
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1, err
    assert "a-file" in err


@pytest.mark.parametrize("name", ["ndvi.nc", "ndvi.zarr", "ndvi.tif"])
def test_an_existing_out_is_kept_unless_overwrite(terrascope_env, tmp_path, capsys, name):
    """An existing ``--out`` (a Zarr directory holding other files, say) is refused
    before any search; ``--overwrite`` replaces it whole, through a temporary name that
    does not stay behind."""
    out = tmp_path / name
    if name.endswith(".zarr"):
        out.mkdir()
        (out / "important.txt").write_text("keep")
    else:
        out.write_text("keep")
    argv = ["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "important.txt" if out.is_dir() else out).read_text() == "keep"
    assert cli.main([*argv, "--overwrite"]) == 0
    auth.logout()
    assert not (out / "important.txt").exists()
    if name.endswith(".tif"):
        with rasterio.open(out) as written:
            assert written.count > 1
    else:
        with xr.open_dataset(out) as written:
            assert written.sizes["time"] > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_interrupted_export_leaves_no_file(terrascope_env, tmp_path, monkeypatch):
    """Ctrl-C while the file is written (raised here in the writer, where the signal
    lands): no output, no temporary file, and an older file of that name kept whole."""
    from xarray_terrascope.cli import export

    out = tmp_path / "ndvi.nc"
    out.write_text("older")

    def interrupted(da, attrs, path):
        path.write_bytes(b"CDF\x01 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_geotiff", interrupted)
    argv = ["ndvi", "--bbox", BBOX, *WINDOW, "--overwrite"]
    assert cli.main([*argv, "--out", str(tmp_path / "new.tif")]) == 130
    assert cli.main([*argv, "--out", str(out)]) == 0  # (netCDF: not interrupted)
    monkeypatch.setattr(xr.Dataset, "to_netcdf", lambda ds, path: interrupted(ds, {}, path))
    assert cli.main([*argv, "--out", str(out)]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ndvi.nc"]
    assert xr.open_dataset(out)["NDVI"].sizes["time"] > 1  # the whole one of before


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        self.server.requests.append((self.command, self.path))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_server(monkeypatch, tmp_path):
    """A loopback server answering 500 to everything, standing in for STAC and downloads."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("TERRASCOPE_STAC_URL", url + "/")
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_URL", url + "/download/")
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", url)
    monkeypatch.setenv("TERRASCOPE_USERNAME", "user")
    monkeypatch.setenv("TERRASCOPE_PASSWORD", "password")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        xts.logout()


@pytest.mark.parametrize("name", ["ndvi.png", "ndvi.csv", "ndvi", "ndvi.nc.gz"])
def test_unsupported_out_suffix_is_rejected_before_any_request(
    recording_server, tmp_path, capsys, name
):
    out = tmp_path / "new-dir" / name
    with pytest.raises(SystemExit) as exc:
        cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and ".nc" in err and ".zarr" in err and ".tif" in err
    assert "Traceback" not in err
    assert recording_server.requests == []
    assert not (tmp_path / "new-dir").exists()


# --------------------------------------------------------------------------- zonal

ZONAL_WINDOW = ["--start", "2025-06-01", "--end", "2025-06-12"]


@pytest.fixture
def parcels_file(terrascope_env, tmp_path):
    """Twelve of the sandbox's parcels in the sample field, as a GeoJSON file."""
    import shapely

    parcels = terrascope_env.parcels()
    inside = parcels[parcels.within(shapely.box(*SAMPLE_FIELD))].iloc[::9].head(12)
    assert len(inside) == 12 and inside["crop"].nunique() > 2
    path = tmp_path / "parcels.geojson"
    inside.to_file(path, driver="GeoJSON")
    return path, inside.reset_index(drop=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_zonal_writes_one_row_per_parcel_and_date(parcels_file, tmp_path, capsys, suffix):
    import pandas as pd

    path, parcels = parcels_file
    out = tmp_path / "new" / f"stats{suffix}"
    stats = ["mean", "median", "min", "count", "valid_fraction"]
    argv = ["zonal", "--parcels", str(path), *ZONAL_WINDOW, "--out", str(out)]
    assert cli.main([*argv, "--stats", ",".join(stats)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "statistics: 100% of " in captured.err  # progress lines on stderr (no terminal)

    table = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert list(table.columns) == ["parcel_id", "crop", "area_ha", "date", *stats]
    # the reference: the same cube (bbox = the parcels' bounds), the library's zonal_stats
    ds = xr.open_dataset(
        [float(v) for v in parcels.total_bounds],
        engine="terrascope",
        start="2025-06-01",
        end="2025-06-12",
        chunks={},
    )
    expected = ds.terrascope.zonal_stats(parcels, stats).NDVI.compute()
    auth.logout()
    dates = ds.terrascope.dates()
    assert len(table) == len(parcels) * len(dates) and len(dates) > 2
    assert list(table["date"].astype(str).str[:10]) == dates * len(parcels)
    assert list(table["parcel_id"]) == [p for p in parcels["parcel_id"] for _ in dates]
    assert list(table["crop"]) == [c for c in parcels["crop"] for _ in dates]
    for name in stats:
        want = expected.sel(zonal_statistics=name).transpose("geometry", "time").values
        np.testing.assert_allclose(table[name].to_numpy(), want.ravel(), rtol=1e-6)
    assert table["count"].dtype == np.int64
    assert (table["count"] > 0).any() and (table["count"] == 0).any()  # clear and cloudy
    assert table.loc[table["count"] == 0, "mean"].isna().all()


def test_zonal_takes_another_id_column_and_reports_a_missing_one(parcels_file, tmp_path, capsys):
    import pandas as pd

    _, parcels = parcels_file
    renamed = tmp_path / "fields.geojson"
    parcels.rename(columns={"parcel_id": "field"})[["field", "geometry"]].to_file(renamed)
    out = tmp_path / "stats.csv"
    argv = ["zonal", "--parcels", str(renamed), *ZONAL_WINDOW, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --id-column") and "field" in err, err
    assert not out.exists()
    assert cli.main([*argv, "--id-column", "field", "--stats", "mean"]) == 0
    auth.logout()
    table = pd.read_csv(out)
    assert list(table.columns) == ["field", "date", "mean"]
    assert set(table["field"]) == set(parcels["parcel_id"])


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--out", "stats.xlsx", ".parquet"),
        ("--out", "stats", ".csv"),
        ("--stats", "mean,mode", "valid_fraction"),
        ("--stats", "mean,mean", "each statistic once"),
        ("--tile-store-mb", "-1", "0 or more"),
        ("--tile-store-mb", "1.5", "0 or more"),
    ],
)
def test_zonal_bad_out_or_stats_is_rejected_before_any_request(
    recording_server, tmp_path, capsys, option, value, expected
):
    import geopandas as gpd
    import shapely

    path = tmp_path / "parcels.geojson"
    gpd.GeoDataFrame(
        {"parcel_id": [1]}, geometry=[shapely.box(5.91, 51.25, 5.912, 51.252)], crs=4326
    ).to_file(path)
    args = {"--out": str(tmp_path / "new-dir" / "stats.parquet"), "--stats": "mean"}
    args[option] = str(tmp_path / "new-dir" / value) if option == "--out" else value
    argv = ["zonal", "--parcels", str(path), *WINDOW]
    for key, val in args.items():
        argv += [key, val]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and expected in err and "Traceback" not in err
    assert recording_server.requests == []
    assert not (tmp_path / "new-dir").exists()


def test_zonal_unreadable_parcels_is_a_one_line_error(recording_server, tmp_path, capsys):
    path = tmp_path / "parcels.geojson"
    path.write_text("not json")
    out = tmp_path / "stats.parquet"
    assert cli.main(["zonal", "--parcels", str(path), *WINDOW, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --parcels") and err.count("\n") == 1, err
    assert recording_server.requests == []


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"xarray-terrascope {version('xarray-terrascope')}"
    assert xts.__version__ == version("xarray-terrascope")


def test_console_script_is_installed_and_prints_the_version():
    script = Path(sys.executable).with_name("xarray-terrascope")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"xarray-terrascope {version('xarray-terrascope')}"


def _actions(parser, path=("xarray-terrascope",)):
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))


def test_every_argument_of_every_command_has_help():
    seen, missing = set(), []
    for path, action in _actions(cli.build_parser()):
        seen.add(path)
        if isinstance(action, argparse._HelpAction):
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{' '.join(path)}: {action.option_strings or action.dest}")
    assert missing == []
    assert {p[-1] for p in seen} >= {"search", "ndvi", "zonal", "sandbox", "demo"}


def test_errors_are_printed_not_raised(terrascope_env, capsys):
    code = cli.main(["search", "--bbox", BBOX, "--start", "2025-06-12", "--end", "2025-06-01"])
    assert code == 2
    assert "start" in capsys.readouterr().err


def test_sandbox_command_prints_the_variables_and_serves(tmp_path):
    """With a rate limit: a burst of downloads beyond the bucket is refused with 429."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
    proc = subprocess.Popen(
        [*PYTHON_CHILD, "-m", "xarray_terrascope.cli", "sandbox", "--max-rate", "1"],
        preexec_fn=restore_sigint,
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
        auth = (exports["TERRASCOPE_USERNAME"], exports["TERRASCOPE_PASSWORD"])
        statuses = [
            requests.get(exports["TERRASCOPE_DOWNLOAD_URL"], auth=auth, timeout=10).status_code
            for _ in range(8)
        ]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
        # `xarray-terrascope login` (OpenID Connect, the default) works against it
        login = subprocess.run(
            [*PYTHON_CHILD, "-m", "xarray_terrascope.cli", "login"],
            env={**env, **exports, "TERRASCOPE_CONFIG_DIR": str(tmp_path / "config")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert login.returncode == 0, login.stderr[-2000:]
        assert exports["TERRASCOPE_PASSWORD"] not in login.stdout + login.stderr
    finally:
        interrupt(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["sandbox", "--latency", "-1"],
        ["sandbox", "--fault-rate", "2"],
        ["sandbox", "--drop-rate", "-0.5"],
        ["sandbox", "--max-concurrent", "0"],
        ["sandbox", "--max-rate", "-3"],
        ["sandbox", "--seed", "-1"],
        ["sandbox", "--cache-dir", "/proc/no-such-dir"],
        ["demo", "--seed", "-1"],
    ],
)
def test_bad_sandbox_and_demo_values_are_refused_in_one_line(argv, capsys):
    """Before any server starts: argparse's usage and one ``error:`` line, exit 2 (before,
    a traceback and exit 1, or, for the cache directory, a sandbox answering 500)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {argv[1]}" in err, err


def test_sandbox_command_stops_cleanly_on_sigterm(tmp_path):
    """``kill``, ``docker stop`` and systemd send SIGTERM: the sandbox stops its servers
    and removes its temporary COG directory, as on Ctrl-C."""
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [*PYTHON_CHILD, "-m", "xarray_terrascope.cli", "sandbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in proc.stdout:
            if line.startswith("export TERRASCOPE_STAC_URL="):
                url = line.strip().split("=", 1)[1]
            if line.startswith("# Ctrl-C"):
                break
        assert [p.name[:19] for p in tmp_path.iterdir()] == ["terrascope-sandbox-"]
        assert requests.get(url, timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
    finally:
        interrupt(proc)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo on a short season, run once: ``(result, printed lines, TERRASCOPE_*
    variables in the environment after the run)``."""
    import contextlib
    import io

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("TERRASCOPE_"):
                mp.delenv(key)
        with contextlib.redirect_stdout(out):
            result = cli.run_demo(
                tmp_path_factory.mktemp("demo"), start="2025-05-01", end="2025-06-15"
            )
        leaked = [k for k in os.environ if k.startswith("TERRASCOPE_")]
    return result, out.getvalue().splitlines(), leaked


def _demo_parcels():
    import shapely

    from xarray_terrascope.testing import World

    world = World(seed=0)
    parcels = world.parcels()
    return world, parcels[parcels.within(shapely.box(*SAMPLE_FIELD))].reset_index(drop=True)


def test_demo_job_writes_the_table_the_curves_the_composites_and_the_slider(demo_run):
    from PIL import Image

    from xarray_terrascope.testing import CROPS

    result, out, leaked = demo_run
    table = [line for line in out if line[:4] == "2025"]
    assert len(table) == result["dates"] > 3
    assert all(line.split()[1].endswith("%") for line in table)
    assert leaked == []
    assert auth.current_credentials() is None
    assert result["requests"] > 0

    # the curves per crop agree with the sandbox's ground truth on the clear dates
    curves = result["table"]
    assert sorted(curves.columns) == sorted(CROPS)
    world, parcels = _demo_parcels()
    assert len(parcels) == result["parcels"] > 50
    clear = result["valid"][result["valid"] > 0.999].index
    assert len(clear) >= 3
    for day in clear:
        truth = parcels.assign(ndvi=world.parcel_ndvi(parcels["parcel_id"].to_numpy(), day))
        expected = truth.groupby("crop")["ndvi"].mean()
        np.testing.assert_allclose(curves.loc[day, expected.index], expected, atol=0.01)
        printed = next(line for line in table if line.startswith(f"{day:%Y-%m-%d}"))
        assert [float(v) for v in printed.split()[2:]] == pytest.approx(
            list(curves.loc[day]), abs=6e-4
        )
    # potato greens up in the first half of June, winter wheat is at its peak in May
    june = curves.loc["2025-06-10":"2025-06-15"].mean()
    assert june["potato"] > curves.loc[:"2025-05-20", "potato"].mean() + 0.2
    assert curves.loc[:"2025-05-20", "winter wheat"].min() > 0.7

    pngs = (result["png"], result["composite_png"], result["toc_png"])
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # drawn, not blank
    assert [p.name for p in pngs] == [
        "ndvi_by_crop.png",
        "ndvi_monthly_max.png",
        "ndvi_by_crop_toc.png",
    ]
    html = result["html"].read_text(encoding="utf-8")
    assert "bokeh" in html[:200000].lower()
    assert '"MultiLine"' in html and '"longitude"' in html  # parcel outlines, lon/lat hover
    assert len(html) < 6_000_000


def test_demo_prints_each_sources_error_against_the_worlds_truth(demo_run):
    """The error table (NDVI product; TOC with clouds masked; TOC unmasked) is recomputed
    here from the parcels' means and the world's noise-free parcel NDVI: the masked TOC
    is right to a few hundredths on every crop, the unmasked one is worse on every crop,
    and the masked TOC has points on dates the NDVI product's scene filter dropped."""
    import re

    result, out, _ = demo_run
    world, parcels = _demo_parcels()
    crops = sorted(parcels["crop"].unique())
    at = next(i for i, line in enumerate(out) if line.startswith("error against the world"))
    assert "RMSE" in out[at] and "parcel_ndvi" in out[at]
    assert out[at + 1].split()[0] == "source"
    assert " ".join(out[at + 1].split()[1:]) == " ".join(crops)
    rows = out[at + 2 : at + 5]
    assert [row.split(" (")[0] for row in rows] == ["NDVI product", "TOC masked", "TOC unmasked"]
    # the TOC's scene filter is the looser one, and the output says so
    assert "(<= 10.0%," in rows[0] and all("(<= 60.0%," in row for row in rows[1:])
    toc_line = next(line for line in out if line.startswith("TOC reflectance"))
    assert "cloud cover <= 60.0%" in toc_line and "mask_clouds" in toc_line
    assert result["toc_dates"] > result["dates"]

    ids = parcels["parcel_id"].to_numpy()
    rmse = {}
    for row, source in zip(rows, ("NDVI product", "TOC masked", "TOC unmasked"), strict=True):
        cells = re.findall(r"(\d+\.\d{3}) \(n=(\d+)\)", row)
        assert len(cells) == len(crops), row
        means = result["parcel_means"][source]
        truth = np.column_stack([world.parcel_ndvi(ids, day) for day in means.columns])
        error = means.to_numpy() - truth
        for crop, (printed, n) in zip(crops, cells, strict=True):
            values = error[(parcels["crop"] == crop).to_numpy()]
            values = values[~np.isnan(values)]
            assert int(n) == values.size > 50, (source, crop)
            rmse[source, crop] = float(np.sqrt(np.mean(values**2)))
            assert float(printed) == pytest.approx(rmse[source, crop], abs=6e-4), (source, crop)
    for crop in crops:
        assert rmse["TOC masked", crop] < 0.05, crop
        assert rmse["TOC masked", crop] < rmse["TOC unmasked", crop], crop

    # dates the NDVI product lacks (filtered out, or too cloudy over the parcels): the
    # masked TOC has points there, and they are the truth of the parcels it counted
    product = result["curves"]["NDVI product"]
    masked = result["curves"]["TOC masked"]
    means = result["parcel_means"]["TOC masked"]
    gained = [d for d in masked.index if d not in product.dropna(how="all").index]
    gained = [d for d in gained if masked.loc[d].notna().all()]
    assert len(gained) >= 2, gained
    for day in gained:
        counted = means[day].notna().to_numpy()
        truth = parcels[counted].assign(ndvi=world.parcel_ndvi(ids[counted], day))
        expected = truth.groupby("crop")["ndvi"].mean()
        np.testing.assert_allclose(masked.loc[day, expected.index], expected, atol=0.03)


# ------------------------------------------- --collection and --max-cloud-cover, for real

LAI = "terrascope-s2-lai-v2"
MAX_CLOUD = 10.0


def _console(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script (the environment points at the sandbox)."""
    script = Path(sys.executable).with_name("xarray-terrascope")
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kept_items(sandbox, collection, bbox, start, end, max_cloud):
    """The world's items of ``collection`` over ``bbox`` and the dates, with the cloud
    filter applied by hand (per item, inclusive): ``{date: [item dict, ...]}`` with
    native UTM zone 31 tiles first (the mosaic's order), then by id."""
    import shapely

    box = shapely.box(*bbox)
    kept: dict[str, list[dict]] = {}
    for item in sandbox.world.item_dicts(collection, sandbox.download_url):
        props = item["properties"]
        day = props["datetime"][:10]
        if (
            start <= day <= end
            and props["eo:cloud_cover"] <= max_cloud
            and shapely.geometry.shape(item["geometry"]).intersects(box)
        ):
            kept.setdefault(day, []).append(item)
    for items in kept.values():
        items.sort(key=lambda i: (not i["id"].split("_")[2].startswith("31"), i["id"]))
    return dict(sorted(kept.items()))


def test_console_ndvi_exports_another_collection_with_a_cloud_filter(terrascope_env, tmp_path):
    """``ndvi --collection terrascope-s2-lai-v2 --max-cloud-cover 10``: the LAI of the
    dates that keep an item under 10 % cloud, equal to the world's DN scaled by the
    items' own ``raster:bands`` (read here from the item JSON)."""
    out = tmp_path / "lai.nc"
    start, end = "2025-06-01", "2025-06-12"
    done = _console(
        "ndvi",
        "--bbox",
        BBOX,
        "--start",
        start,
        "--end",
        end,
        "--collection",
        LAI,
        "--max-cloud-cover",
        str(MAX_CLOUD),
        "--out",
        str(out),
    )
    assert f"wrote {out}" in done.stdout
    kept = _kept_items(terrascope_env, LAI, SAMPLE_FIELD, start, end, MAX_CLOUD)
    every = _kept_items(terrascope_env, LAI, SAMPLE_FIELD, start, end, 100.0)
    assert 1 < len(kept) < len(every)  # the filter took some dates away, not all
    written = xr.open_dataset(out, decode_coords="all")  # spatial_ref: a coordinate
    assert list(written.data_vars) == ["LAI"]
    lai = written["LAI"].load()
    assert [str(t)[:10] for t in lai.time.values] == list(kept)
    assert written.attrs["collection"] == LAI
    rng = np.random.default_rng(3)
    rows = rng.integers(0, lai.sizes["y"], 400)
    cols = rng.integers(0, lai.sizes["x"], 400)
    xs, ys = lai.x.values[cols], lai.y.values[rows]
    checked = 0
    for t, items in enumerate(kept.values()):
        want = np.full(len(xs), np.nan)
        for item in items:  # the first valid pixel in the mosaic's order wins
            (band,) = item["assets"]["LAI"]["raster:bands"]
            dn = terrascope_env.world.sample(item["id"], xs, ys, crs="EPSG:32631")
            value = np.where(dn == band["nodata"], np.nan, dn * band["scale"] + band["offset"])
            take = np.isnan(want) & ~np.isnan(value)
            want[take] = value[take]
        np.testing.assert_allclose(lai.values[t, rows, cols], want, atol=1e-5)
        checked += int(np.isfinite(want).sum())
    assert checked > 500 and np.nanmax(lai.values) > 1.0  # LAI, not NDVI (at most 1)


def test_console_zonal_reads_another_collection_with_a_cloud_filter(
    terrascope_env, parcels_file, tmp_path
):
    """``zonal --collection terrascope-s2-lai-v2 --max-cloud-cover 10``: one row per
    parcel and kept date; the minimum and maximum are pixel values, so whole multiples of
    the LAI's scale (0.03), and LAI goes above 1 where NDVI never does."""
    import geopandas as gpd
    import pandas as pd

    path, parcels = parcels_file
    out = tmp_path / "stats.csv"
    start, end = "2025-06-01", "2025-06-12"
    done = _console(
        "zonal",
        "--parcels",
        str(path),
        "--start",
        start,
        "--end",
        end,
        "--collection",
        LAI,
        "--max-cloud-cover",
        str(MAX_CLOUD),
        "--stats",
        "min,max,count",
        "--out",
        str(out),
    )
    assert f"of {LAI}" in done.stdout
    bounds = [float(v) for v in gpd.read_file(path).to_crs(4326).total_bounds]
    kept = _kept_items(terrascope_env, LAI, bounds, start, end, MAX_CLOUD)
    table = pd.read_csv(out)
    assert list(table.columns) == ["parcel_id", "crop", "area_ha", "date", "min", "max", "count"]
    assert len(table) == len(parcels) * len(kept)
    assert sorted(set(table["date"].str[:10])) == list(kept)
    seen = table[table["count"] > 0]
    assert len(seen) > len(parcels)
    for name in ("min", "max"):
        steps = seen[name].to_numpy() / 0.03
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert seen["max"].max() > 1.0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--collection", "terrascope-s1-grd-sigma0-v1"], "several assets (VV, VH)"),
        (["--collection", LAI, "--asset", "NDVI"], "has no asset 'NDVI'; its assets: LAI"),
    ],
)
def test_ndvi_asset_is_checked_before_any_request(
    recording_server, tmp_path, capsys, extra, expected
):
    out = tmp_path / "new-dir" / "cube.nc"
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --asset") and expected in err and err.count("\n") == 1, err
    assert recording_server.requests == []
    assert not (tmp_path / "new-dir").exists()


@pytest.mark.parametrize("problem", ["missing geometry", "empty geometry", "a 'date' column"])
@pytest.mark.parametrize("mode", ["--out", "--out-dir"])
def test_zonal_parcels_unfit_for_a_table_are_a_one_line_error(
    recording_server, tmp_path, capsys, problem, mode
):
    """A parcel without a geometry, or an attribute named as a column of the table (it
    would be overwritten), is refused before any request and any cluster, in both modes."""
    import geopandas
    import shapely

    boxes = [shapely.box(5.90 + i / 100, 51.24, 5.905 + i / 100, 51.245) for i in range(3)]
    parcels = geopandas.GeoDataFrame(
        {"parcel_id": [1, 2, 3], "crop": ["a", "b", "c"]}, geometry=boxes, crs="EPSG:4326"
    )
    if problem == "missing geometry":
        parcels.loc[1, "geometry"] = None
    elif problem == "empty geometry":
        parcels.loc[1, "geometry"] = shapely.Polygon()
    else:
        parcels["date"] = "2025-04-01"  # a sowing date
    path = tmp_path / "parcels.parquet"
    parcels.to_parquet(path)
    out = tmp_path / ("stats.csv" if mode == "--out" else "stats")
    argv = ["zonal", "--parcels", str(path), *WINDOW, mode, str(out), "--stats", "mean"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --parcels") and err.count("\n") == 1, err
    assert ("date" in err) if problem.startswith("a ") else ("parcel_id 2" in err)
    assert recording_server.requests == [] and not out.exists()


def test_demo_into_a_file_is_a_one_line_error(tmp_path, capsys):
    taken = tmp_path / "demo-output"
    taken.write_text("a file, not a folder")
    assert cli.main(["demo", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1, err


def test_a_password_prompt_without_input_is_a_one_line_error(tmp_path):
    """``login --username`` asks for the password on the terminal; with no terminal and
    no input (a script, ``< /dev/null``) it says so, with no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in TERRASCOPE_VARS}
    env["TERRASCOPE_CONFIG_DIR"] = str(tmp_path)
    child = subprocess.run(
        [*PYTHON_CHILD, "-m", "xarray_terrascope.cli", "login", "--username", "someone"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=120,
        start_new_session=True,  # no controlling terminal: getpass reads stdin
        check=False,
    )
    err = child.stderr.decode()
    assert child.returncode == 2, err
    assert "error: no input" in err and "Traceback" not in err
