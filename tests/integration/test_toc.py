"""The package on the sandbox's ``terrascope-s2-toc-v2`` (2026 STAC 1.1 items, 10/20/60 m
assets, SCL) and on the NDVI items' ``SCENECLASSIFICATION_20M``, checked against the
world's ground truth (``World.reflectance``, ``scl_truth``, ``cloud_truth``,
``ground_ndvi``), never against the package's own output."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.cube import masking
from xarray_terrascope.engine import read
from xarray_terrascope.testing import Sky

TOC = "terrascope-s2-toc-v2"

#: Inside tile 31UFS only (no mosaic), with cloudy and clear dates in June 2025.
BBOX = [5.20, 51.22, 5.25, 51.25]
DAYS = {"start": "2025-06-01", "end": "2025-06-20"}
#: Two dates with clouds, shadows and haze (the sandbox renders each file it serves).
SHORT = {"start": "2025-06-01", "end": "2025-06-05"}
MASKED_SCL = [0, 1, 3, 8, 9, 10]
#: Wider, for the hazy cloud rims that the buffer is for.
WIDE = [5.15, 51.20, 5.35, 51.30]


def _open(bbox=BBOX, days=DAYS, **kw):
    kw.setdefault("collection", TOC)
    return xr.open_dataset(bbox, engine="terrascope", **days, **kw)


def _grid(ds):
    return ds.x.values[None, :], ds.y.values[:, None], f"EPSG:{ds.rio.crs.to_epsg()}"


def _item(ds, t):
    (item,) = str(ds.item_ids.values[t]).split()
    return item


def test_bands_of_three_resolutions_are_the_worlds_reflectance(logged_in, caplog):
    caplog.set_level(logging.INFO, logger="xarray_terrascope")
    ds = _open(days=SHORT, assets=["B04", "B11", "B01", "SCL"]).load()
    world = logged_in.world
    assert ds.B04.attrs["eo:common_name"] == "red" and ds.SCL.dtype == np.uint8
    assert float(ds.x[1] - ds.x[0]) == 10.0
    checked = 0
    for t in range(ds.sizes["time"]):
        item = _item(ds, t)
        for band in ("B04", "B11", "B01"):
            want = world.reflectance(item, band, *_grid(ds))
            got = ds[band].values[t]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=band)
            ok = ~np.isnan(want)
            np.testing.assert_allclose(got[ok], want[ok], atol=0.5e-4 + 1e-7, err_msg=band)
            checked += int(ok.sum())
        np.testing.assert_array_equal(ds.SCL.values[t], world.scl_truth(item, *_grid(ds)))
    assert checked > 50000
    assert not [r for r in caplog.records if "through GDAL" in r.getMessage()]


def test_masked_ndvi_from_reflectance_is_the_ground_and_unmasked_is_not(logged_in):
    world = logged_in.world
    ds = _open(WIDE, SHORT, assets=["B04", "B08", "SCL"], chunks={}, chunksize=512)
    exact = ds.terrascope.mask_clouds(dilation=0).terrascope.ndvi().values
    buffered = ds.terrascope.mask_clouds().terrascope.ndvi().values
    raw = ds.terrascope.ndvi().values
    # half a DN off in each band moves NDVI by at most 1 / (B04 + B08) in DN
    tolerance = 1 / ((ds.B04 + ds.B08).values * 10000) + 1e-6
    hazy_kept = {"all": 0, "exact": 0, "buffered": 0}
    cloudy_dates = 0
    for t in range(ds.sizes["time"]):
        item = _item(ds, t)
        scl = world.scl_truth(item, *_grid(ds))
        sky = world.cloud_truth(item, *_grid(ds))
        ground = world.ground_ndvi(item, *_grid(ds))
        # dilation 0: NaN exactly where the classification says so
        np.testing.assert_array_equal(np.isnan(exact[t]), np.isin(scl, MASKED_SCL))
        # the buffer only adds pixels
        assert (np.isnan(buffered[t]) >= np.isnan(exact[t])).all()
        clear = sky == Sky.CLEAR
        kept = clear & ~np.isnan(buffered[t])
        # on clear kept pixels, NDVI from the int16 bands is the ground's
        assert (np.abs(buffered[t][kept] - ground[kept]) <= tolerance[t][kept]).all()
        hazy = sky == Sky.HAZE
        hazy_kept["all"] += int(hazy.sum())
        hazy_kept["exact"] += int((hazy & ~np.isnan(exact[t])).sum())
        hazy_kept["buffered"] += int((hazy & ~np.isnan(buffered[t])).sum())
        cloudy = sky >= Sky.CLOUD_MEDIUM
        if cloudy.sum() > 100:
            cloudy_dates += 1
            assert np.nanmedian(np.abs(raw[t][cloudy] - ground[cloudy])) > 0.2
    assert cloudy_dates >= 1, (ds.sizes, list(ds.item_ids.values))
    # the world's unflagged haze (rims wider than 40 m): the classification keeps all of
    # it, the 40 m buffer less (over 1-20 June in this box it kept 94 %, 300 m 61 %)
    assert hazy_kept["all"] > 1000
    assert hazy_kept["buffered"] < hazy_kept["exact"] == hazy_kept["all"], hazy_kept


def test_open_time_masking_and_min_clear_on_the_ndvi_product(logged_in):
    """The NDVI product's own scene classification masks it at opening; ``min_clear``
    keeps the dates whose share of pixels the classification keeps reaches 0.6."""
    world = logged_in.world
    ds = _open(collection="terrascope-s2-ndvi-v2", mask_clouds=True, chunks={})
    assert list(ds.data_vars) == ["NDVI", "SCENECLASSIFICATION_20M"]
    ndvi = ds.NDVI.values
    for t in range(ds.sizes["time"]):
        scl = world.scl_truth(_item(ds, t), *_grid(ds))
        assert np.isnan(ndvi[t][np.isin(scl, MASKED_SCL)]).all()
    shares = [
        1 - np.isin(world.scl_truth(_item(ds, t), *_grid(ds)), MASKED_SCL).mean()
        for t in range(ds.sizes["time"])
    ]
    kept = _open(collection="terrascope-s2-ndvi-v2", min_clear=0.6)
    want = [str(d)[:10] for d, s in zip(ds.time.values, shares, strict=True) if s >= 0.6]
    assert [str(d)[:10] for d in kept.time.values] == want
    assert 0 < len(want) < len(shares), shares
    np.testing.assert_allclose(kept.clear_share.values, [s for s in shares if s >= 0.6], atol=1e-6)


def test_the_40_m_buffer_holds_on_a_geographic_grid(logged_in):
    """On a cube in EPSG:4326 (pixels of 0.0001 degrees: 7.0 m east-west, 11.1 m
    north-south here) the buffer is 40 metres, not 40 pixels' worth of degrees: the
    accessor's and the opening's masks hold the world's clouds grown by 40 m (measured
    on the ground) and reach at most 40 m by the pixels' shorter side plus a pixel."""
    from scipy import ndimage

    world = logged_in.world
    geographic = {"crs": "EPSG:4326", "resolution": 0.0001, "days": SHORT}
    ds = _open(WIDE, assets=["B04", "SCL"], **geographic).load()
    at_open = _open(WIDE, assets=["B04"], mask_clouds=True, **geographic).load()
    masked = ds.terrascope.mask_clouds()
    lat = float(ds.y.mean())
    east = 0.0001 * np.pi / 180 * 6378137.0 * np.cos(np.radians(lat))
    north = 0.0001 * np.pi / 180 * 6371000.0
    cloudy_dates = 0
    for t in range(ds.sizes["time"]):
        scl = world.scl_truth(_item(ds, t), *_grid(ds))
        grown = np.isin(scl, [3, 8, 9, 10])
        metres = np.full(scl.shape, np.inf)  # (the transform of a frame with no cloud is not)
        if grown.any():
            metres = ndimage.distance_transform_edt(~grown, sampling=(north, east))
        must = np.isin(scl, MASKED_SCL) | (metres <= 40 * 0.99)
        may = np.isin(scl, MASKED_SCL) | (metres <= 40 * north / east + north)
        for name, got in (("accessor", masked.B04), ("open", at_open.B04)):
            dropped = np.isnan(got.values[t]) & ~np.isnan(ds.B04.values[t])
            assert dropped[must & ~np.isnan(ds.B04.values[t])].all(), (name, t)
            assert not (dropped & ~may).any(), (name, t)
        cloudy_dates += int(grown.sum() > 100 and (~may).sum() > 100)
    assert cloudy_dates >= 1


def test_the_default_variables_keep_their_order_whatever_the_servers_key_order(logged_in):
    """A server may return an item's assets in another key order (pgstac's jsonb sorts
    them: AOT, B01, ..., B11, B8A, SCL): the default variables of a TOC cube come in the
    bands' wavelength order all the same, the others after them by name."""
    items = xts.search(TOC, BBOX, SHORT["start"], SHORT["end"])
    import pystac

    dicts = [item.to_dict() for item in items]
    for item in dicts:
        item["assets"] = dict(sorted(item["assets"].items(), key=lambda kv: (len(kv[0]), kv[0])))
    shuffled = [pystac.Item.from_dict(item) for item in dicts]
    assert list(shuffled[0].assets)[:2] == ["AOT", "B01"]
    as_served = xr.open_dataset(items, engine="terrascope", bbox=BBOX)
    reordered = xr.open_dataset(shuffled, engine="terrascope", bbox=BBOX)
    names = list(as_served.data_vars)
    assert list(reordered.data_vars) == names == reordered.attrs["assets"]
    assert names[:2] == ["B01", "B02"] and names.index("B8A") < names.index("B11")
    assert names.index("B11") < names.index("AOT")


def _assert_kept_dates_are_the_worlds(ds, world) -> None:
    """Every date of a masked cube, read one by one, holds its own item's pixels: SCL is
    the world's, B04 its reflectance where kept, NaN on every pixel the classification
    drops and nowhere beyond the 40 m buffer around those (or the band's own no data)."""
    from scipy import ndimage

    for t in range(ds.sizes["time"]):
        item = _item(ds, t)
        scl = world.scl_truth(item, *_grid(ds))
        np.testing.assert_array_equal(ds.SCL.isel(time=t).values, scl, err_msg=item)
        b04 = ds.B04.isel(time=t).values
        want = world.reflectance(item, "B04", *_grid(ds))
        kept = ~np.isnan(b04)
        np.testing.assert_allclose(b04[kept], want[kept], atol=0.5e-4 + 1e-7, err_msg=item)
        dropped = np.isin(scl, MASKED_SCL)
        assert np.isnan(b04[dropped]).all(), item
        near = ndimage.distance_transform_edt(~dropped) <= 4 + 1e-9  # 40 m of 10 m pixels
        assert (near | np.isnan(want))[~kept].all(), item


def test_a_min_clear_cube_reads_its_own_dates_not_the_full_cubes(logged_in):
    """``min_clear`` drops dates: the kept cube's date ``t`` is another item than the
    full cube's ``t``, over the same files and grid. Its reads (and the mask read at
    opening over the full cube, in the same window) must never answer one another."""
    ds = _open(assets=["B04"], mask_clouds=True, min_clear=0.6, chunks={})
    assert ds.attrs["dropped_dates"], "no date dropped: nothing to tell apart"
    first_dropped = min(ds.attrs["dropped_dates"])
    assert any(str(d)[:10] > first_dropped for d in ds.time.values), "none after a dropped one"
    _assert_kept_dates_are_the_worlds(ds, logged_in.world)


def test_cloud_masks_of_two_cubes_of_the_same_files_never_mix(logged_in):
    """The masks a cube computed for its dates, one by one, are not taken by another
    cube of the same files whose date indices are other dates (``min_clear``)."""
    masking.clear()  # no mask of another test's cubes
    full = _open(assets=["B04"], mask_clouds=True)
    for t in range(full.sizes["time"]):
        full.B04.isel(time=t).load()  # one mask per date index and window
    kept = _open(assets=["B04"], mask_clouds=True, min_clear=0.6)
    assert kept.sizes["time"] < full.sizes["time"]
    read.clear_reader_cache()  # the engine's memory of windows, not the masks
    _assert_kept_dates_are_the_worlds(kept, logged_in.world)


def test_asking_for_what_the_items_lack_names_what_they_have(logged_in):
    with pytest.raises(Exception, match="available") as err:
        _open(assets=["B04", "B99"])
    assert "B08" in str(err.value)


def test_a_logout_forgets_the_cloud_masks(logged_in):
    """A window's mask was read with the credentials of then: a logout (or new
    credentials) drops it, as it drops every other cache of what was read."""
    ds = _open(days=SHORT, assets=["B04"], mask_clouds=True)
    ds.B04.load()
    assert len(masking._windows) > 0
    xts.logout()
    assert len(masking._windows) == 0
