"""Temporal composites: lazy, equal to xarray's resample on the loaded cube, first/last valid."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.composite import HOWS, composite
from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.testing import SAMPLE_FIELD

from .conftest import tif_records

#: Two months of a corner of the sample field: clear, partly cloudy and overcast dates.
SMALL = [5.90, 51.24, 5.92, 51.25]
PERIOD = {"start": "2025-05-17", "end": "2025-06-12"}  # May 18 and 31 overcast


@pytest.fixture
def cube(logged_in):
    ds = xr.open_dataset(SMALL, engine="terrascope", chunks={}, chunksize=64, **PERIOD)
    return logged_in, ds


@pytest.mark.parametrize("how", ["median", "mean", "max", "min"])
def test_equals_resample_on_the_loaded_cube(cube, how):
    sandbox, ds = cube
    sandbox.log.clear()
    out = ds.terrascope.composite("1MS", how)
    assert tif_records(sandbox) == []  # building it reads nothing
    assert out.NDVI.chunks is not None and out.valid_count.chunks is not None
    computed = out.compute()
    loaded = ds.load()
    expected = getattr(loaded.NDVI.resample(time="1MS"), how)()
    np.testing.assert_allclose(computed.NDVI.values, expected.values, rtol=1e-6)
    np.testing.assert_array_equal(computed.time.values, expected.time.values)
    count = loaded.NDVI.notnull().resample(time="1MS").sum()
    np.testing.assert_array_equal(computed.valid_count.values, count.values)
    # the month of May has cloudy and clear pixels: counts differ across pixels or months
    assert computed.valid_count.values.min() < computed.valid_count.values.max()


@pytest.mark.parametrize("how", ["first", "last"])
def test_first_and_last_valid_against_numpy(cube, how):
    _sandbox, ds = cube
    da = ds.NDVI
    out = da.terrascope.composite("1MS", how).compute()
    values = da.values
    months = da.time.values.astype("datetime64[M]")
    for m, month in enumerate(np.unique(months)):
        block = values[months == month]
        valid = ~np.isnan(block)
        index = (
            valid.argmax(axis=0)
            if how == "first"
            else (block.shape[0] - 1 - valid[::-1].argmax(axis=0))
        )
        expected = np.take_along_axis(block, index[None], axis=0)[0]
        expected[~valid.any(axis=0)] = np.nan
        np.testing.assert_array_equal(out.NDVI.values[m], expected)
        np.testing.assert_array_equal(out.valid_count.values[m], valid.sum(axis=0))
    # not the plain first/last time step: a cloudy date must have been skipped somewhere
    plain = (
        da.resample(time="1MS").first(skipna=False)
        if how == "first"
        else (da.resample(time="1MS").last(skipna=False))
    )
    assert not np.array_equal(np.isnan(plain.values), np.isnan(out.NDVI.values))


def test_several_variables_and_names(logged_in):
    ds = xr.open_dataset(
        SMALL,
        engine="terrascope",
        collection="terrascope-s2-fapar-v2",
        chunks={},
        chunksize=64,
        **PERIOD,
    )
    ds["NDVI2"] = ds["FAPAR"] * 2
    out = composite(ds, "1MS", "max")
    assert set(out.data_vars) == {"FAPAR", "NDVI2", "FAPAR_valid_count", "NDVI2_valid_count"}
    assert out.attrs["composite"] == "max"


def test_bad_arguments(cube):
    _sandbox, ds = cube
    with pytest.raises(InvalidArgumentError, match="how must be one of median"):
        ds.terrascope.composite("1MS", "mode")
    with pytest.raises(InvalidArgumentError, match="freq"):
        ds.terrascope.composite("monthly", "max")
    assert set(HOWS) == {"median", "mean", "max", "min", "first", "last"}
    assert SAMPLE_FIELD[0] <= SMALL[0]
