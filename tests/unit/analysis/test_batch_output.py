"""The batch's output folder (:mod:`xarray_terrascope.analysis.batch_output`): one run at
a time (a lock another real process holds, released by the operating system when that
process is killed), an earlier layout refused, and parcel columns no Parquet column holds
refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xarray_terrascope.analysis import batch_output
from xarray_terrascope.exceptions import BatchOutputError, InvalidArgumentError

REPO = Path(__file__).resolve().parents[3]

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from xarray_terrascope.analysis import batch_output

    with batch_output.hold(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)


def _holding(folder: Path) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_another_process_writes_into_is_refused_until_it_ends(tmp_path):
    folder = tmp_path / "out"
    holder = _holding(folder)
    try:
        with (
            pytest.raises(BatchOutputError, match="another run is writing into") as err,
            batch_output.hold(folder),
        ):
            pass
        assert "another folder" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up of its own: the OS drops the lock
        holder.wait(timeout=30)
    with batch_output.hold(folder):
        digest = batch_output.check_or_create(folder, {"stats": ["mean"]}, {})
    assert json.loads((folder / batch_output.MANIFEST).read_text())["hash"] == digest


def test_the_batch_refuses_a_held_folder_before_any_request(tmp_path, monkeypatch):
    """``run_zonal_batch`` takes the lock before its search (the STAC URL here is a
    closed loopback port: a search would fail with another error)."""
    geopandas = pytest.importorskip("geopandas")
    shapely = pytest.importorskip("shapely")
    from xarray_terrascope.analysis.batch import run_zonal_batch

    parcels = geopandas.GeoDataFrame(
        {"parcel_id": [1]}, geometry=[shapely.box(5.0, 51.2, 5.01, 51.21)], crs="EPSG:4326"
    )
    monkeypatch.setenv("TERRASCOPE_STAC_URL", "http://127.0.0.1:9/")
    holder = _holding(tmp_path / "out")
    started = time.monotonic()
    try:
        with pytest.raises(BatchOutputError, match="another run is writing into"):
            run_zonal_batch(parcels, tmp_path / "out", start="2025-06-01", end="2025-06-02")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert time.monotonic() - started < 30  # refused at once, not after a wait
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [batch_output.LOCK]


def test_a_folder_of_the_earlier_layout_is_refused_naming_it(tmp_path):
    (tmp_path / batch_output.MANIFEST).write_text(
        json.dumps({"format": "xarray-terrascope-zonal-batch/1", "hash": "x"})
    )
    with pytest.raises(BatchOutputError, match="earlier version of this package"):
        batch_output.check_or_create(tmp_path, {"stats": ["mean"]}, {})


def test_a_column_of_mixed_types_is_refused_naming_it():
    geopandas = pytest.importorskip("geopandas")
    shapely = pytest.importorskip("shapely")
    from xarray_terrascope.analysis.tables import attribute_dtypes

    parcels = geopandas.GeoDataFrame(
        {"parcel_id": [1, 2], "code": [7, "7b"], "crop": ["maize", None]},
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)],
        crs="EPSG:32631",
    )
    with pytest.raises(InvalidArgumentError, match="'code' mixes types") as err:
        attribute_dtypes(parcels)
    assert "astype(str)" in str(err.value)
    dtypes = attribute_dtypes(parcels.drop(columns="code"))
    assert list(dtypes) == ["crop"] and str(dtypes["crop"]) == "string[pyarrow]"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.iloc[:0], "parcels: holds no geometry"),
        (lambda p: p.set_crs(None, allow_override=True), "parcels: has no CRS"),
        (lambda p: p.rename(columns={"parcel_id": "id"}), "id_column: the parcels have no column"),
        (lambda p: p.assign(parcel_id=[1, 1]), "id_column: the values of 'parcel_id' are not"),
    ],
)
def test_unusable_parcels_are_refused_before_any_request(
    change, message, tmp_path, monkeypatch, capsys
):
    """The batch and the command line check the parcels in one place (the STAC URL here
    is a closed loopback port: a search would fail with another error)."""
    geopandas = pytest.importorskip("geopandas")
    shapely = pytest.importorskip("shapely")
    from xarray_terrascope import cli
    from xarray_terrascope.analysis.batch import run_zonal_batch

    monkeypatch.setenv("TERRASCOPE_STAC_URL", "http://127.0.0.1:9/")
    parcels = change(
        geopandas.GeoDataFrame(
            {"parcel_id": [1, 2]},
            geometry=[shapely.box(5.0, 51.2, 5.01, 51.21), shapely.box(5.02, 51.2, 5.03, 51.21)],
            crs="EPSG:4326",
        )
    )
    with pytest.raises(InvalidArgumentError, match=message):
        run_zonal_batch(parcels, tmp_path / "out", start="2025-06-01", end="2025-06-02")
    assert not (tmp_path / "out").exists()
    path = tmp_path / "parcels.parquet"
    parcels.to_parquet(path)
    argv = ["zonal", "--parcels", str(path), "--start", "2025-06-01", "--end", "2025-06-02"]
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(tmp_path / "stats.csv")]) == 2
    option = "--parcels" if message.startswith("parcels") else "--id-column"
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: {str(path)!r}: {message.split(': ', 1)[1]}"), err
