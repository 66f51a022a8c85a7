"""The console script's rough edges of a first hour (issue 23): a western longitude
first in ``--bbox``, the ``collections`` command, plain progress lines when the output
is not a terminal (one computation shown per export), a GeoTIFF export without warnings."""

from __future__ import annotations

import warnings

import pytest
import rasterio
import requests

from xarray_terrascope import auth, cli
from xarray_terrascope.cli.main import attach_negative_values, build_parser
from xarray_terrascope.testing import SAMPLE_FIELD

BBOX = ",".join(str(v) for v in SAMPLE_FIELD)
WINDOW = ["--start", "2025-06-01", "--end", "2025-06-12"]
#: West of Greenwich, in plausible coverage (so no swapped-bbox hint), where the sandbox
#: world has no items.
WEST = "-1.0,51.2,-0.9,51.3"


@pytest.mark.parametrize("form", [["--bbox", WEST], [f"--bbox={WEST}"]])
def test_bbox_may_start_with_a_negative_longitude(terrascope_env, capsys, form):
    """``--bbox -1.0,51.2,...`` was read as an option of its own by argparse ("expected
    one argument"); both spellings now reach the search (which finds nothing there)."""
    assert cli.main(["search", *form, *WINDOW]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 item(s)"
    args = build_parser().parse_args(attach_negative_values(["search", *form]))
    assert args.bbox == [-1.0, 51.2, -0.9, 51.3]


def test_collections_lists_the_catalogues_collections(terrascope_env, capsys):
    """The ids printed are those the STAC API's ``/collections`` answers (read here with
    plain ``requests``), one per line, with a count."""
    url = terrascope_env.env["TERRASCOPE_STAC_URL"].rstrip("/") + "/collections"
    expected = sorted(c["id"] for c in requests.get(url, timeout=30).json()["collections"])
    assert len(expected) > 3
    assert cli.main(["collections"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == expected
    assert lines[-1] == f"{len(expected)} collection(s)"
    ndvi = next(line for line in lines if line.startswith("terrascope-s2-ndvi-v2 "))
    assert ndvi.split()[1] == "NDVI"  # the default asset of a collection the package knows


@pytest.mark.parametrize("suffix", [".tif", ".nc", ".zarr"])
def test_export_shows_one_computation_in_plain_lines_off_a_terminal(
    terrascope_env, tmp_path, capsys, suffix
):
    """capsys's stderr is no terminal: no carriage-return bar, and one computation shown
    (a .tif export showed four: the data, then platform, cloud cover and item ids, each
    computed alone while the file was tagged)."""
    out = tmp_path / f"ndvi{suffix}"
    assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 0
    auth.logout()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert sum(line.startswith("writing: 0% of ") for line in lines) == 1, err
    assert sum(line.startswith("writing: 100% of ") for line in lines) == 1, err
    assert all(line.startswith("writing: ") for line in lines), err


def test_geotiff_export_raises_no_warning(terrascope_env, tmp_path):
    """rioxarray 0.19 rebuilt the transform from the coordinates with ``Affine * Affine``,
    which affine 3 warns about; the export gives it the transform instead. The file's
    transform is the grid's: pixel centres at the cube's x/y coordinates."""
    import xarray as xr

    out = tmp_path / "ndvi.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["ndvi", "--bbox", BBOX, *WINDOW, "--out", str(out)]) == 0
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-12"
    )
    auth.logout()
    x, y = ds["x"].values, ds["y"].values
    with rasterio.open(out) as src:
        assert (src.width, src.height) == (x.size, y.size)
        t = src.transform
        assert (t.a, t.e, t.b, t.d) == (x[1] - x[0], y[1] - y[0], 0.0, 0.0)
        assert t.c + t.a / 2 == pytest.approx(x[0]) and t.f + t.e / 2 == pytest.approx(y[0])
