"""Temporal composites: lazy, equal to numpy over each month's valid values, first/last valid."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.analysis.composite import HOWS, composite
from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import tif_records

#: Two months of a corner of the sample field: clear, partly cloudy and overcast dates.
SMALL = [5.90, 51.24, 5.92, 51.25]
PERIOD = {"start": "2025-05-17", "end": "2025-06-12"}  # May 18 and 31 overcast


@pytest.fixture
def cube(logged_in):
    ds = xr.open_dataset(SMALL, engine="terrascope", chunks={}, chunksize=64, **PERIOD)
    return logged_in, ds


def _months(da):
    """The cube's values and, per time step, its calendar month."""
    return da.values, da.time.values.astype("datetime64[M]")


def _by_hand(block: np.ndarray, how: str) -> np.ndarray:
    """``how`` over axis 0 of ``block`` among the values that are not NaN (NaN where
    there is none), in plain numpy."""
    valid = ~np.isnan(block)
    count = valid.sum(axis=0)
    if how == "mean":
        out = np.where(valid, block, 0).sum(axis=0, dtype=np.float64) / np.maximum(count, 1)
    elif how in ("max", "min"):
        fill = -np.inf if how == "max" else np.inf
        out = getattr(np.where(valid, block, fill), how)(axis=0).astype(np.float64)
    else:  # median: the middle one, or the mean of the middle two, of the sorted values
        ordered = np.sort(block, axis=0)  # NaN sort last
        low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
        high = np.take_along_axis(ordered, np.maximum(count // 2, 0)[None], axis=0)[0]
        out = (low.astype(np.float64) + high) / 2
    return np.where(count > 0, out, np.nan)


@pytest.mark.parametrize("how", ["median", "mean", "max", "min"])
def test_composites_equal_numpy_over_each_months_valid_values(cube, how):
    sandbox, ds = cube
    sandbox.log.clear()
    out = ds.terrascope.composite("1MS", how)
    assert tif_records(sandbox) == []  # building it reads nothing
    assert out.NDVI.chunks is not None and out.valid_count.chunks is not None
    computed = out.compute()
    values, months = _months(ds.NDVI.load())
    labels = np.unique(months)
    assert len(labels) == 2  # May and June
    np.testing.assert_array_equal(computed.time.values, labels.astype("datetime64[ns]"))
    for m, month in enumerate(labels):
        block = values[months == month]
        np.testing.assert_allclose(computed.NDVI.values[m], _by_hand(block, how), rtol=1e-6)
        np.testing.assert_array_equal(computed.valid_count.values[m], (~np.isnan(block)).sum(0))
    # the month of May has cloudy and clear pixels: counts differ across pixels or months
    assert computed.valid_count.values.min() < computed.valid_count.values.max()


@pytest.mark.parametrize("how", ["first", "last"])
def test_first_and_last_valid_against_numpy(cube, how):
    _sandbox, ds = cube
    da = ds.NDVI
    out = da.terrascope.composite("1MS", how).compute()
    values, months = _months(da)
    skipped = 0
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
        plain = block[0] if how == "first" else block[-1]  # the month's first/last date
        skipped += int((np.isnan(plain) & ~np.isnan(expected)).sum())
    assert skipped > 0  # a cloudy date was skipped somewhere, not just taken


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


def test_a_raw_cube_composites_its_physical_values_and_empty_periods_count_zero(logged_in):
    """``decode=False``: stored DN whose no-data value (255, clouds) is no observation,
    composited as physical NDVI (0.004 DN - 0.08, by hand here); days without an
    acquisition have a count of 0, not the int64 cast of NaN."""
    raw = xr.open_dataset(
        SMALL, engine="terrascope", chunks={}, chunksize=64, decode=False, **PERIOD
    )
    out = raw.terrascope.composite("1D", "max").compute()
    dn = raw.NDVI.values
    assert (dn == 255).any(), "no cloud: the no-data value would not be tested"
    scale, offset = np.float32(0.004), np.float32(-0.08)
    physical = np.where(dn == 255, np.nan, dn.astype(np.float32) * scale + offset)
    days = raw.time.values.astype("datetime64[D]")
    labels = out.time.values.astype("datetime64[D]")
    empty = 0
    for d, day in enumerate(labels):
        block = physical[days == day]
        if block.shape[0] == 0:
            empty += 1
            assert (out.valid_count.values[d] == 0).all() and np.isnan(out.NDVI.values[d]).all()
            continue
        np.testing.assert_allclose(out.NDVI.values[d], _by_hand(block, "max"), rtol=1e-6)
        np.testing.assert_array_equal(out.valid_count.values[d], (~np.isnan(block)).sum(0))
    assert empty > 0
