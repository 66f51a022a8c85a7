"""Cloud masking (``ds.terrascope.mask_clouds``, :func:`cloud_mask`) on cubes built by
hand. The expected masks are written here from the Sen2Cor class list, and the buffer's
truth is the Euclidean distance to the nearest cloud or shadow pixel (scipy's exact
distance transform on the whole array): another algorithm than the dilation under test."""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import xarray_terrascope  # noqa: F401  (registers the accessor)
from xarray_terrascope.analysis.clouds import (
    DEFAULT_SCL_CLASSES,
    cloud_mask,
    find_mask,
)
from xarray_terrascope.exceptions import InvalidArgumentError

from ._cubes import grid, scl_variable, toc_cube

MASKED = [0, 1, 3, 8, 9, 10]  # no data, defective, shadow, cloud medium/high, cirrus
CLOUDS_AND_SHADOWS = [3, 8, 9, 10]


def scene(shape=(3, 150, 140), seed=1) -> np.ndarray:
    """SCL classes: clear land, water, snow and dark areas, with round clouds and
    shadows, cirrus, a no-data swath edge and defective pixels; blobs straddle the
    64-pixel chunk edges."""
    rng = np.random.default_rng(seed)
    nt, ny, nx = shape
    scl = rng.choice(
        np.array([2, 4, 5, 6, 7, 11], "uint8"), size=shape, p=[0.05, 0.5, 0.2, 0.1, 0.05, 0.1]
    )
    yy, xx = np.mgrid[:ny, :nx]
    for t in range(nt):
        for cls in (8, 9, 9, 3, 3, 10):
            cy, cx = rng.integers(0, ny), rng.integers(0, nx)
            r = rng.uniform(2, 9)
            scl[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = cls
        scl[t, 62:66, 60:70] = 9  # across the chunk edge at 64
        scl[t, :, : 5 + 3 * t] = 0  # swath edge
        scl[t][rng.random((ny, nx)) < 0.002] = 1
    return scl


def cube(scl: np.ndarray, res: float = 10.0) -> xr.Dataset:
    nt, ny, nx = scl.shape
    ds = toc_cube(("B04", "B08"), shape=scl.shape)
    ds = ds.assign_coords(grid(ny, nx, res, nt))
    ds["SCL"] = scl_variable(scl)
    return ds


def buffered_truth(scl: np.ndarray, metres: float, res: float) -> np.ndarray:
    """Masked classes, plus every pixel within ``metres`` of a cloud or shadow pixel."""
    truth = np.isin(scl, MASKED)
    for t in range(scl.shape[0]):
        seeds = np.isin(scl[t], CLOUDS_AND_SHADOWS)
        distance = ndimage.distance_transform_edt(~seeds, sampling=res)
        truth[t] |= distance <= metres + 1e-6
    return truth


def test_default_classes_mask_clouds_shadows_cirrus_nodata_defective_and_keep_snow():
    scl = scene()
    ds = cube(scl)
    out = ds.terrascope.mask_clouds(dilation=0)
    truth = np.isin(scl, MASKED)
    for key in ("B04", "B08"):
        np.testing.assert_array_equal(np.isnan(out[key].values), truth | np.isnan(ds[key].values))
        kept = ~truth
        np.testing.assert_array_equal(out[key].values[kept], ds[key].values[kept])
        assert out[key].dtype == np.float32 and out[key].attrs == ds[key].attrs
    assert np.isin(scl, [11]).any() and np.isin(scl, [2]).any()
    assert not np.isnan(out.B04.values[(scl == 11) & ~np.isnan(ds.B04.values)]).any()


def test_snow_is_masked_when_added_by_value_or_name():
    scl = scene()
    ds = cube(scl)
    for classes in ([*DEFAULT_SCL_CLASSES, 11], [*DEFAULT_SCL_CLASSES, "snow"]):
        out = ds.terrascope.mask_clouds(classes=classes, dilation=0)
        assert np.isnan(out.B04.values[scl == 11]).all()


@pytest.mark.parametrize(("res", "metres"), [(10.0, 40.0), (10.0, 25.0), (20.0, 40.0)])
def test_the_buffer_is_every_pixel_within_the_distance_of_a_cloud_or_shadow(res, metres):
    scl = scene()
    ds = cube(scl, res)
    out = ds.terrascope.mask_clouds(dilation=metres)
    truth = buffered_truth(scl, metres, res)
    np.testing.assert_array_equal(np.isnan(out.B08.values), truth | np.isnan(ds.B08.values))
    assert truth.sum() > np.isin(scl, MASKED).sum()  # the buffer did grow the mask


def test_no_data_and_defective_pixels_are_not_buffered():
    scl = np.full((1, 40, 40), 4, "uint8")
    scl[0, :, :10] = 0
    scl[0, 30, 30] = 1
    ds = cube(scl).fillna(0.1)
    out = ds.terrascope.mask_clouds(dilation=50)
    np.testing.assert_array_equal(np.isnan(out.B04.values), scl != 4)


@pytest.mark.parametrize("chunks", [64, 1000, 37])
def test_the_buffered_mask_does_not_depend_on_the_chunks(chunks, raise_if_dask_computes):
    scl = scene()
    plain = cube(scl).SCL
    lazy = plain.chunk({"time": 1, "y": chunks, "x": chunks})
    with raise_if_dask_computes():
        mask = cloud_mask(lazy, dilation_px=4)
    assert isinstance(mask.data, dask.array.Array) and mask.dtype == bool
    np.testing.assert_array_equal(mask.values, buffered_truth(scl, 4, 1.0))
    np.testing.assert_array_equal(mask.values, cloud_mask(plain, dilation_px=4).values)


def test_mask_clouds_stays_lazy_and_keeps_the_masks_values(raise_if_dask_computes):
    scl = scene()
    ds = cube(scl)
    ds["CLOUDMASK"] = (("time", "y", "x"), np.isin(scl, [8, 9, 10]).astype("uint8"))
    ds.CLOUDMASK.attrs.update(roles="data-mask cloud", nodata=255)
    lazy = ds.chunk({"time": 1, "y": 64, "x": 64})
    with raise_if_dask_computes():
        out = lazy.terrascope.mask_clouds(dilation=40)
    assert isinstance(out.B04.data, dask.array.Array)
    computed = out.compute()
    truth = buffered_truth(scl, 40, 10)
    np.testing.assert_array_equal(np.isnan(computed.B04.values), truth | np.isnan(ds.B04.values))
    for key in ("SCL", "CLOUDMASK"):
        assert computed[key].dtype == np.uint8
        np.testing.assert_array_equal(computed[key].values, ds[key].values)
    assert "SCL (scl) classes 0 1 3 8 9 10" in computed.attrs["terrascope:cloud_mask"]
    assert computed.attrs["collection"] == "terrascope-s2-toc-v2"


def test_cloudmask_source_masks_cloud_and_nodata_and_buffers_only_clouds():
    scl = scene()
    ds = cube(scl)
    cm = np.isin(scl, [8, 9]).astype("uint8")
    cm[scl == 0] = 255
    ds["CLOUDMASK"] = xr.Variable(
        ("time", "y", "x"), cm, {"terrascope:classification": "cloudmask", "nodata": 255}
    )
    out = ds.terrascope.mask_clouds(source="CLOUDMASK", dilation=30)
    truth = np.isin(cm, [1, 255])
    for t in range(cm.shape[0]):
        truth[t] |= ndimage.distance_transform_edt(cm[t] != 1, sampling=10.0) <= 30 + 1e-6
    np.testing.assert_array_equal(np.isnan(out.B04.values), truth | np.isnan(ds.B04.values))
    # shadows (SCL 3) away from clouds are not masked by CLOUDMASK
    assert not np.isnan(out.B04.values[(scl == 3) & ~truth & ~np.isnan(ds.B04.values)]).any()


def test_the_mask_is_found_by_attributes_and_names_never_by_position():
    scl = scene((1, 30, 30))
    base = cube(scl)
    # an NDVI product's scene classification, found by its name alone
    ndvi = xr.Dataset(
        {
            "NDVI": base.B04.copy().assign_attrs(roles="data"),
            "SCENECLASSIFICATION_20M": xr.DataArray(
                scl, dims=base.SCL.dims, attrs={"roles": "data-mask"}
            ),
        }
    )
    assert find_mask(ndvi) == ("SCENECLASSIFICATION_20M", "scl")
    out = ndvi.terrascope.mask_clouds(dilation=0)
    np.testing.assert_array_equal(
        np.isnan(out.NDVI.values), np.isin(scl, MASKED) | np.isnan(base.B04.values)
    )
    # an oddly named variable told by its attribute, listed first
    odd = xr.Dataset({"classes": base.SCL, "B04": base.B04})
    assert find_mask(odd) == ("classes", "scl")
    # a data-mask role with SCL's flag meanings
    flags = xr.Dataset({"B04": base.B04, "mask": base.SCL.copy()})
    del flags["mask"].attrs["terrascope:classification"]
    assert find_mask(flags) == ("mask", "scl")
    # SCL is preferred to CLOUDMASK whatever the order
    cloudmask = xr.DataArray(scl, dims=base.SCL.dims)
    both = xr.Dataset({"CLOUDMASK": cloudmask, "B04": base.B04, "SCL": base.SCL})
    assert find_mask(both) == ("SCL", "scl") and find_mask(both, "cloudmask")[0] == "CLOUDMASK"


def test_stored_numbers_are_masked_with_their_fill_value():
    scl = scene((1, 20, 20))
    ds = cube(scl)
    dn = (ds.B04.fillna(3.2767) / 0.0001).round().astype("int16")
    ds["B04"] = dn.assign_attrs(_FillValue=32767, scale_factor=1e-4)
    out = ds.terrascope.mask_clouds(dilation=0)
    assert out.B04.dtype == np.int16
    fill = dn.values == 32767
    assert fill.any()
    np.testing.assert_array_equal(out.B04.values == 32767, np.isin(scl, MASKED) | fill)
    np.testing.assert_array_equal(
        out.B04.values[~np.isin(scl, MASKED)], dn.values[~np.isin(scl, MASKED)]
    )


def test_without_a_mask_the_error_says_which_asset_to_add():
    ds = toc_cube(("B04", "B08"))
    with pytest.raises(InvalidArgumentError) as err:
        ds.terrascope.mask_clouds()
    message = str(err.value)
    for text in ("'SCL'", "'SCENECLASSIFICATION_20M'", "assets=", "mask_clouds=True", "B04"):
        assert text in message, message


def test_bad_arguments_are_refused():
    ds = cube(scene((1, 20, 20)))
    with pytest.raises(InvalidArgumentError, match="got 12"):
        ds.terrascope.mask_clouds(classes=[3, 12])
    with pytest.raises(InvalidArgumentError, match="got 'clouds'"):
        ds.terrascope.mask_clouds(classes=["clouds"])
    with pytest.raises(InvalidArgumentError, match="empty"):
        ds.terrascope.mask_clouds(classes=[])
    with pytest.raises(InvalidArgumentError, match="dilation"):
        ds.terrascope.mask_clouds(dilation=-10)
    with pytest.raises(InvalidArgumentError, match="dilation"):
        ds.terrascope.mask_clouds(dilation=float("nan"))
    with pytest.raises(InvalidArgumentError, match=r"'CLOUDMASK'.*assets="):
        ds.terrascope.mask_clouds(source="CLOUDMASK")
    with pytest.raises(InvalidArgumentError, match="neither"):
        ds.terrascope.mask_clouds(source="B04")
    one_pixel = ds.isel(x=[0])
    with pytest.raises(InvalidArgumentError, match="pixel size"):
        one_pixel.drop_vars("x").terrascope.mask_clouds(dilation=20)
    assert one_pixel.drop_vars("x").terrascope.mask_clouds(dilation=0).B04.isnull().any()


def test_masked_cube_gives_a_clear_ndvi():
    """The two new accessor methods chained: NDVI from red and nir under a mask."""
    scl = scene((2, 40, 40))
    ds = cube(scl)
    ndvi = ds.terrascope.mask_clouds(dilation=0).terrascope.ndvi()
    n, r = ds.B08.values.astype(float), ds.B04.values.astype(float)
    expected = np.where(np.isin(scl, MASKED), np.nan, (n - r) / (n + r))
    np.testing.assert_allclose(ndvi.values, expected, rtol=1e-5, atol=1e-6)


def test_a_composite_leaves_the_classification_out():
    """SCL codes have no median: a composite of B04 + SCL holds B04 (and its count),
    not 4.5 for a month of vegetation (4) and bare soil (5)."""
    import pandas as pd

    times = pd.to_datetime(["2025-06-01", "2025-06-11"])
    ds = xr.Dataset(
        {
            "B04": (("time", "x"), np.array([[0.1], [0.3]], "float32")),
            "SCL": (("time", "x"), np.array([[4], [5]], "uint8")),
        },
        coords={"time": times, "x": [0.0]},
    )
    out = ds.terrascope.composite("1MS", "median")
    assert list(out.data_vars) == ["B04", "valid_count"]
    assert float(out.B04.values[0, 0]) == pytest.approx(0.2)
