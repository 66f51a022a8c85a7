"""The in-memory area resamplings against GDAL's own warper on the same arrays.

:func:`rasterio.warp.reproject` (GDAL 3.x's warp kernel) reduces random arrays with
no-data pixels onto a grid 2, 3 or 6 times coarser; :func:`coarsen` must give the same
numbers: rounding of ties, the lower median, the first mode of equal counts, results
that would equal the no-data value, blocks with no valid pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

from xarray_terrascope.engine.coarsen import COARSENING, coarsen

X0, Y0 = 600000.0, 5700000.0


def _gdal(values: np.ndarray, k: int, method: str, nodata) -> np.ndarray:
    h, w = values.shape
    out = np.full((h // k, w // k), 0 if nodata is None else nodata, values.dtype)
    reproject(
        values,
        out,
        src_transform=Affine(10, 0, X0, 0, -10, Y0),
        src_crs="EPSG:32631",
        dst_transform=Affine(10 * k, 0, X0, 0, -10 * k, Y0),
        dst_crs="EPSG:32631",
        resampling=Resampling[method],
        src_nodata=nodata,
        dst_nodata=nodata,
    )
    return out


def _valid(values: np.ndarray, nodata) -> np.ndarray:
    valid = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    return valid if nodata is None else valid & (values != nodata)


def _sample(dtype: str, high: int, nodata, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, high, (12 * k, 12 * k)).astype(dtype)
    if nodata is not None:
        values[rng.random(values.shape) < 0.3] = nodata
        values[:k, :k] = nodata  # one block with no valid pixel
    return values


@pytest.mark.parametrize("method", sorted(COARSENING))
@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize(
    ("dtype", "high", "nodata"),
    [("int16", 10000, 32767), ("uint8", 4, 255), ("uint8", 12, None), ("uint16", 60000, 0)],
)
def test_coarsen_gives_gdals_numbers(method, k, dtype, high, nodata):
    values = _sample(dtype, high, nodata, k, seed=k)
    want = _gdal(values, k, method, nodata)
    fill = 0 if nodata is None else nodata
    got = coarsen(values, _valid(values, nodata), k, method, fill, nodata)
    assert got.dtype == values.dtype
    np.testing.assert_array_equal(got, want)


def test_a_result_equal_to_nodata_moves_one_step_as_gdals():
    """Sums clipped to 32767 (the no-data value) become 32766; a mean of 0 with no data
    0 becomes 1 (GDAL's AvoidNoData)."""
    big = np.full((4, 4), 30000, np.int16)
    assert coarsen(big, big != 32767, 2, "sum", 32767, 32767).tolist() == [[32766] * 2] * 2
    assert _gdal(big, 2, "sum", 32767).tolist() == [[32766] * 2] * 2
    zeros = np.array([[0, 0], [0, 5]], np.uint16)  # 5 is no data
    assert coarsen(zeros, zeros != 5, 2, "average", 5, 0).tolist() == [[1]]
    assert _gdal(zeros.copy(), 2, "average", 0).tolist() == [[5]]  # 0 is GDAL's nodata here


def test_float_blocks_leave_nan_out():
    rng = np.random.default_rng(7)
    values = rng.random((24, 24)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:4, :4] = np.nan
    for method in ("average", "min", "max", "med"):
        got = coarsen(values, ~np.isnan(values), 4, method, np.float32(np.nan))
        want = _gdal(values, 4, method, np.nan)
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True, err_msg=method)
        assert np.isnan(got[0, 0])
