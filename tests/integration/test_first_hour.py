"""A new user's first hour (issue 23), against the sandbox: the swapped-bbox hint, the
warning on geometries outside the cube, per-call credentials proven at opening, no
stackstac warning at opening."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope import cli
from xarray_terrascope.catalog import hints
from xarray_terrascope.exceptions import (
    AuthenticationError,
    GeometriesOutsideWarning,
    NoItemsFoundError,
)
from xarray_terrascope.testing import SAMPLE_FIELD

WINDOW = {"start": "2025-06-01", "end": "2025-06-12"}
W, S, E, N = SAMPLE_FIELD
SWAPPED = [S, W, N, E]  # the sample field typed latitude first
HINT = f"Did you swap longitude and latitude? try {[W, S, E, N]}"


# ------------------------------------------------------------------ swapped bbox


def test_a_swapped_bbox_error_suggests_the_swap(logged_in):
    """[51.24, 5.9, 51.27, 5.96] is the Indian Ocean: nothing there; the swapped box is
    in Europe, and it is the sample field, which opens."""
    with pytest.raises(NoItemsFoundError) as exc:
        xr.open_dataset(SWAPPED, engine="terrascope", **WINDOW)
    assert HINT in str(exc.value), str(exc.value)
    suggested = str(exc.value).split("try ")[1].split("]")[0] + "]"
    ds = xr.open_dataset(json.loads(suggested), engine="terrascope", **WINDOW)
    assert ds.sizes["time"] > 0


def test_the_swap_is_suggested_when_the_swapped_box_finds_items(logged_in, monkeypatch):
    """Outside the coverage rule (here moved away from the sandbox's Belgium, so neither
    box lies in it), the hint comes from one more search, of the swapped box."""
    monkeypatch.setattr(hints, "COVERAGE", (100.0, -10.0, 120.0, 10.0))
    logged_in.log.clear()
    with pytest.raises(NoItemsFoundError) as exc:
        xr.open_dataset(SWAPPED, engine="terrascope", **WINDOW)
    assert HINT in str(exc.value)
    # and a swapped box that finds nothing either gives no hint
    with pytest.raises(NoItemsFoundError) as exc:
        xr.open_dataset([51.24, 25.9, 51.27, 25.96], engine="terrascope", **WINDOW)
    assert "swap" not in str(exc.value)


@pytest.mark.parametrize(
    "bbox",
    [
        [-1.0, 51.2, -0.9, 51.3],  # in plausible coverage, no items there: not swapped
        [100.0, 20.0, 100.1, 20.1],  # swapped, 100 is no latitude
    ],
)
def test_no_swap_hint_where_it_cannot_help(logged_in, bbox):
    with pytest.raises(NoItemsFoundError) as exc:
        xr.open_dataset(bbox, engine="terrascope", **WINDOW)
    assert "swap" not in str(exc.value)


def test_the_console_search_prints_the_swap_hint(terrascope_env, capsys):
    box = ",".join(str(v) for v in SWAPPED)
    assert (
        cli.main(["search", f"--bbox={box}", "--start", "2025-06-01", "--end", "2025-06-12"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["0 item(s)", HINT + " (west, south, east, north)."]


# ----------------------------------------------------------- zonal stats outside the cube


def test_geometries_outside_the_cube_are_warned_about_and_logged(logged_in, caplog):
    """Two of five parcels moved 20 km east of the sample field's cube: a package warning
    and a log line name 2 of 5; their statistics are what the warning says (NaN, count
    0 on every date), the others' are not."""
    shapely = pytest.importorskip("shapely")
    parcels = logged_in.world.parcels()
    inside = parcels[parcels.within(shapely.box(*SAMPLE_FIELD).buffer(-0.003))].head(5)
    geoms = list(inside.geometry)
    geoms[1] = shapely.affinity.translate(geoms[1], xoff=0.3)
    geoms[3] = shapely.affinity.translate(geoms[3], xoff=0.3)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **WINDOW)
    caplog.set_level(logging.WARNING, logger="xarray_terrascope")
    with pytest.warns(GeometriesOutsideWarning, match=r"^2 of 5 geometries lie outside") as rec:
        stats = ds.terrascope.zonal_stats(geoms, ["mean", "count"])
    assert issubclass(rec[0].category, xts.TerrascopeWarning)
    assert rec[0].filename == __file__  # points at the user's call
    assert any("2 of 5 geometries" in r.getMessage() for r in caplog.records)
    values = stats.NDVI.compute()
    counts = values.sel(zonal_statistics="count").values
    assert (counts[[1, 3]] == 0).all() and (counts[[0, 2, 4]] > 0).any(axis=1).all()
    assert np.isnan(values.sel(zonal_statistics="mean").values[[1, 3]]).all()


def test_no_outside_warning_when_every_geometry_meets_the_cube(logged_in):
    shapely = pytest.importorskip("shapely")
    parcels = logged_in.world.parcels()
    inside = parcels[parcels.within(shapely.box(*SAMPLE_FIELD))].head(5)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **WINDOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometriesOutsideWarning)
        ds.terrascope.zonal_stats(inside, "mean")


# ------------------------------------------------------ per-call credentials at opening


def _with_credentials(records):
    return [r for r in records if r.has_credentials]


def test_wrong_per_call_credentials_fail_at_opening_naming_credentials(sandbox_urls):
    """One authenticated request (as login() validates), answered 401, and an error that
    names ``credentials=``, not ``login()``; no password in it."""
    sandbox_urls.log.clear()
    wrong = xts.Credentials(sandbox_urls.username, "not-the-password")
    with pytest.raises(AuthenticationError) as exc:
        xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", credentials=wrong, **WINDOW)
    message = str(exc.value)
    assert "credentials= of open_dataset" in message and "login()" not in message
    assert "not-the-password" not in message
    sent = _with_credentials(sandbox_urls.log.records())
    assert [r.status for r in sent] == [401]


def test_right_per_call_credentials_cost_one_request_at_opening(sandbox_urls):
    sandbox_urls.log.clear()
    right = xts.Credentials(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", credentials=right, **WINDOW)
    sent = _with_credentials(sandbox_urls.log.records())
    assert [(r.status // 100, r.user) for r in sent] == [(2, sandbox_urls.username)]
    assert ds.NDVI.isel(time=0).notnull().any()


def test_validate_false_opens_without_a_request_and_fails_at_the_read(sandbox_urls):
    sandbox_urls.log.clear()
    wrong = xts.Credentials(sandbox_urls.username, "not-the-password")
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", credentials=wrong, validate=False, **WINDOW
    )
    assert _with_credentials(sandbox_urls.log.records()) == []
    with pytest.raises(AuthenticationError) as exc:
        ds.NDVI.isel(time=0).load()
    assert "credentials=" in str(exc.value)
    with pytest.raises(xts.InvalidArgumentError, match="validate must be True or False"):
        xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", credentials=wrong, validate=1)


# ------------------------------------------------------------ no stackstac warnings


def test_opening_raises_no_warning(logged_in):
    """stackstac 0.5.1 (pinned) applies affine transforms with ``*``; affine 3 warned
    (PendingDeprecationWarning), once per item and corner, in every user's session."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **WINDOW)
    assert [str(w.message) for w in seen] == []
    assert ds.sizes["time"] > 1
