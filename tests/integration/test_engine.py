"""The terrascope engine and the accessor, against the sandbox and its ground truth (the
entry point's signature and the accessor on a foreign Dataset: ``unit/cube``)."""

from __future__ import annotations

import dataclasses

import dask.array
import numpy as np
import pystac
import pytest
import rasterio
import shapely.geometry
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.cube.backend import TerrascopeBackendEntrypoint
from xarray_terrascope.exceptions import (
    AuthenticationError,
    InvalidArgumentError,
    NoItemsFoundError,
)
from xarray_terrascope.plan.chunks import dates_per_partition
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import FAPAR, NDVI, tif_records

#: From 31UFS-only in the west, across the 31UFS/31UGS overlap, to 32ULB-only in the east;
#: its centre (5.99 E) is in UTM zone 31.
WIDE = (5.80, 51.235, 6.18, 51.255)
REGIONS = {  # longitude bands -> which tiles cover them
    "31UFS only": (5.81, 5.86),
    "overlap 31UFS/31UGS": (5.89, 5.99),
    "31UGS over 32ULB": (6.06, 6.14),
    "32ULB only": (6.155, 6.175),
}


def _world_groups(sandbox, collection, bbox, start, end):
    """Item ids per acquisition date, from the world alone, in mosaic priority order."""
    box = shapely.geometry.box(*bbox)
    groups: dict[str, list[str]] = {}
    for item in sandbox.world.item_dicts(collection, sandbox.download_url):
        day = item["properties"]["datetime"][:10]
        if start <= day <= end and shapely.geometry.shape(item["geometry"]).intersects(box):
            groups.setdefault(day, []).append(item["id"])
    # native UTM zone 31 tiles first (no resampling), then by id
    return {
        d: sorted(ids, key=lambda i: (not i.split("_")[2].startswith("31"), i))
        for d, ids in sorted(groups.items())
    }


def _expected_dn(sandbox, ids, xs, ys, crs):
    out = np.full(len(xs), 255, dtype=np.uint8)
    for item_id in ids:
        dn = sandbox.world.sample(item_id, xs, ys, crs=crs)
        take = (out == 255) & (dn != 255)
        out[take] = dn[take]
    return out


def _decoded(dn, scale=0.004, offset=-0.08):
    values = dn.astype(np.float32) * np.float32(scale) + np.float32(offset)
    return np.where(dn == 255, np.float32(np.nan), values)


@pytest.fixture(scope="module")
def wide_week(terrascope_sandbox):
    return ("2025-06-08", "2025-06-14")


def test_cube_equals_the_world_in_every_tile_region(logged_in, wide_week):
    start, end = wide_week
    ds = xr.open_dataset(list(WIDE), engine="terrascope", start=start, end=end)
    assert ds.rio.crs.to_epsg() == 32631
    ndvi = ds.NDVI.load()
    assert ndvi.dtype == np.float32
    groups = _world_groups(logged_in, NDVI, WIDE, start, end)
    assert [str(t)[:10] for t in ds.time.values.astype("datetime64[D]")] == list(groups)
    lon = np.interp(np.arange(ds.sizes["x"]), [0, ds.sizes["x"] - 1], [WIDE[0], WIDE[2]])
    rng = np.random.default_rng(1)
    checked = 0
    for t, (_day, ids) in enumerate(groups.items()):
        for region, (west, east) in REGIONS.items():
            cols = np.flatnonzero((lon >= west) & (lon <= east))
            cols = rng.choice(cols, 60)
            rows = rng.integers(0, ds.sizes["y"], 60)
            xs, ys = ds.x.values[cols], ds.y.values[rows]
            want = _expected_dn(logged_in, ids, xs, ys, "EPSG:32631")
            got = ndvi.values[t, rows, cols]
            # every region exact, the reprojected 32ULB one included (nearest neighbour
            # with an exact transform of each output pixel's centre)
            np.testing.assert_allclose(got, _decoded(want), atol=1e-6, err_msg=region)
            checked += int((want != 255).sum())
    assert checked > 200


def test_valid_pixel_wins_over_no_data_in_the_mosaic(logged_in, wide_week):
    """East of 31UFS's edge, 31UFS is no data and 31UGS must fill the pixel."""
    start, end = wide_week
    ds = xr.open_dataset(list(WIDE), engine="terrascope", start=start, end=end, decode=False)
    assert ds.NDVI.dtype == np.uint8
    _first_day, ids = next(iter(_world_groups(logged_in, NDVI, WIDE, start, end).items()))
    raw = ds.NDVI.isel(time=0).load().values
    east = np.flatnonzero(ds.x.values > 712000)  # beyond 31UFS (ends at x=709800)
    xs = ds.x.values[east]
    ys = np.full(len(xs), ds.y.values[ds.sizes["y"] // 2])
    ufs = next(i for i in ids if "_31UFS_" in i)
    assert (logged_in.world.sample(ufs, xs, ys, crs="EPSG:32631") == 255).all()
    want = _expected_dn(logged_in, ids, xs, ys, "EPSG:32631")
    assert (want != 255).sum() > 10
    got = raw[ds.sizes["y"] // 2, east]
    ugs = next(i for i in ids if "_31UGS_" in i)
    native = logged_in.world.sample(ugs, xs, ys, crs="EPSG:32631") != 255  # not warped
    assert native.sum() > 10 and (~native & (want != 255)).sum() > 10
    # 32ULB, warped with nearest: exactly the pixel under each output pixel's centre
    np.testing.assert_array_equal(got, want)


def file_offsets(ds: xr.Dataset, tile: str) -> tuple[int, int]:
    """``(rows, cols)`` from the files of MGRS ``tile`` to the cube: output pixel
    ``(r, c)`` is their pixel ``(r + rows, c + cols)`` (from the items' ``proj:transform``)."""
    res = float(ds.attrs["resolution"])
    west, north = float(ds.x[0]) - res / 2, float(ds.y[0]) + res / 2
    item = next(i for i in ds.terrascope.items if f"_{tile}_" in i.id)
    transform = (
        item.assets["NDVI"].extra_fields.get("proj:transform") or item.properties["proj:transform"]
    )
    return round((transform[5] - north) / res), round((west - transform[2]) / res)


def test_opening_reads_no_pixel_and_chunks_follow_the_stacking_grid(logged_in):
    logged_in.log.clear()
    ds = xr.open_dataset(  # a season: more dates than one partition holds
        list(WIDE),
        engine="terrascope",
        start="2025-04-01",
        end="2025-09-30",
        chunks={},
        chunksize=256,
    )
    assert tif_records(logged_in) == []
    data = ds.NDVI.data
    assert isinstance(data, dask.array.Array)
    # 256 px, edges on the pixel grid of one zone-31 tile's files (multiples of 256 px
    # from their corner), a piece under 64 px at either end joined to its neighbour
    offsets = [file_offsets(ds, tile) for tile in ("31UFS", "31UGS")]
    for axis, chunks in enumerate(data.chunks[1:]):
        assert sum(chunks) == ds.sizes["yx"[axis]]
        if len(chunks) == 1:  # under 1.25 x 256, or one edge left with a thin piece each side
            assert chunks[0] < 384
            continue
        assert set(chunks[1:-1]) <= {256} and 64 <= chunks[0] < 320 and 64 <= chunks[-1] < 320
        edges = np.cumsum(chunks[:-1])
        assert any(all((edges + off[axis]) % 256 == 0) for off in offsets), (chunks, offsets)
    assert len(data.chunks[2]) > 5
    # several dates per partition (read concurrently), never the whole series at once
    step, n = dates_per_partition((max(data.chunks[1]), max(data.chunks[2]))), ds.sizes["time"]
    assert 1 < step < n
    assert data.chunks[0] == tuple(min(step, n - i) for i in range(0, n, step))
    assert data.npartitions == len(data.chunks[0]) * len(data.chunks[1]) * len(data.chunks[2])
    assert data.npartitions > 10
    assert tif_records(logged_in) == []
    one = ds.NDVI.isel(time=0, x=slice(0, 256), y=slice(0, 64)).compute()
    assert isinstance(one.data, np.ndarray) and tif_records(logged_in)


def test_chunks_none_is_lazy_and_load_gives_numpy(logged_in):
    logged_in.log.clear()
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-10"
    )
    assert tif_records(logged_in) == []
    assert not isinstance(ds.NDVI.variable._data, dask.array.Array)
    ds.load()
    assert isinstance(ds.NDVI.data, np.ndarray)
    assert tif_records(logged_in)


def test_dates_are_unique_sorted_and_complete(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-04-01", end="2025-06-30"
    )
    days = ds.terrascope.dates()
    assert days == sorted(set(days))
    assert days == list(_world_groups(logged_in, NDVI, SAMPLE_FIELD, "2025-04-01", "2025-06-30"))
    assert ds.indexes["time"].is_unique and ds.indexes["time"].is_monotonic_increasing
    assert np.issubdtype(ds.time.dtype, np.datetime64)
    # per-time coordinates worth keeping
    assert set(ds.platform.values) <= {"sentinel-2a", "sentinel-2b"}
    assert ds.cloud_cover.dims == ("time",) and np.nanmax(ds.cloud_cover) <= 100


def test_attrs_and_grid_mapping(logged_in, tmp_path):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        start="2025-06-01",
        end="2025-06-10",
        max_cloud_cover=80,
    )
    assert ds.attrs["collection"] == NDVI
    assert ds.attrs["bbox"] == list(SAMPLE_FIELD)
    assert ds.attrs["max_cloud_cover"] == 80
    assert logged_in.password not in repr(ds.attrs) and logged_in.password not in repr(ds)
    assert ds.NDVI.rio.crs.to_epsg() == 32631
    assert ds.rio.resolution() == (10.0, -10.0)
    assert ds.x.values[0] % 10 == 5  # pixel centres on the Sentinel-2 10 m grid
    path = tmp_path / "first.tif"
    first = ds.NDVI.isel(time=0)
    first.rio.to_raster(path)
    with rasterio.open(path) as src:  # written packed, as the original: uint8 + scale/offset
        assert src.crs.to_epsg() == 32631
        assert src.transform == ds.rio.transform()
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        dn = src.read(1)
        values = dn.astype(np.float32) * np.float32(src.scales[0]) + np.float32(src.offsets[0])
        np.testing.assert_allclose(np.where(dn == 255, np.nan, values), first.values, atol=1e-6)


def test_decode_false_keeps_dn_and_the_accessor_decodes_it(logged_in):
    kw = {"start": "2025-06-10", "end": "2025-06-12"}
    raw = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **kw).load()
    decoded = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **kw).load()
    assert raw.NDVI.dtype == np.uint8 and raw.NDVI.attrs["_FillValue"] == 255
    np.testing.assert_array_equal(raw.terrascope.ndvi().values, decoded.NDVI.values)
    np.testing.assert_array_equal(decoded.terrascope.ndvi().values, decoded.NDVI.values)
    assert raw.terrascope.ndvi().dtype == np.float32


def test_accessor_items_urls_and_slider(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-10"
    )
    items = ds.terrascope.items
    ids = [i for group in ds.item_ids.values for i in group.split()]
    assert sorted(i.id for i in items) == sorted(ids)
    assert all(isinstance(i, pystac.Item) for i in items)
    urls = ds.terrascope.asset_urls("NDVI")
    assert sorted(urls) == sorted(i.assets["NDVI"].href for i in items)
    slider = ds.terrascope.plot_time_slider()
    import panel as pn

    (widget,) = slider.select(pn.widgets.DiscreteSlider)  # one date slider
    assert widget.name == "Date"
    assert len(widget.options) == ds.sizes["time"]


def test_items_can_be_opened_directly(logged_in):
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    backend = TerrascopeBackendEntrypoint()
    assert backend.guess_can_open(items) and backend.guess_can_open(pystac.ItemCollection(items))
    assert not backend.guess_can_open([5.0, 51.2, 5.1, 51.3])
    from_items = xr.open_dataset(
        pystac.ItemCollection(items), engine="terrascope", bbox=SAMPLE_FIELD
    ).load()
    from_bbox = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-10"
    ).load()
    xr.testing.assert_identical(from_items.NDVI, from_bbox.NDVI)


def test_other_collection_decodes_with_its_own_scale(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        collection=FAPAR,
        start="2025-06-10",
        end="2025-06-12",
    ).load()
    assert list(ds.data_vars) == ["FAPAR"]
    ids = ds.item_ids.values[0].split()
    rows, cols = np.array([5, 50, 100]), np.array([7, 70, 140])
    want = _expected_dn(logged_in, sorted(ids), ds.x.values[cols], ds.y.values[rows], "EPSG:32631")
    np.testing.assert_allclose(
        ds.FAPAR.values[0, rows, cols], _decoded(want, 0.005, 0.0), atol=1e-6
    )


def test_crs_and_resolution_arguments(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        start="2025-06-10",
        end="2025-06-12",
        crs="EPSG:32632",
        resolution=20,
    )
    assert ds.rio.crs.to_epsg() == 32632
    assert ds.rio.resolution() == (20.0, -20.0)
    ndvi = ds.NDVI.load().values
    # reprojected and resampled with nearest: each pixel is the item pixel under its centre
    groups = _world_groups(logged_in, NDVI, SAMPLE_FIELD, "2025-06-10", "2025-06-12")
    rng = np.random.default_rng(7)
    rows, cols = rng.integers(0, ds.sizes["y"], 500), rng.integers(0, ds.sizes["x"], 500)
    xs, ys = ds.x.values[cols], ds.y.values[rows]
    for t, ids in enumerate(groups.values()):
        want = _expected_dn(logged_in, ids, xs, ys, "EPSG:32632")
        assert (want != 255).sum() > 100
        np.testing.assert_allclose(ndvi[t, rows, cols], _decoded(want), atol=1e-6)


def test_empty_search_names_bbox_dates_and_filter(logged_in):
    with pytest.raises(NoItemsFoundError) as info:
        xr.open_dataset(
            list(SAMPLE_FIELD),
            engine="terrascope",
            start="2024-01-01",
            end="2024-01-31",
            max_cloud_cover=5,
        )
    text = str(info.value)
    assert str(list(SAMPLE_FIELD)) in text and "2024-01-01" in text and "max_cloud_cover 5" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"assets": ["B04"]}, "assets .*B04.* available: NDVI"),
        ({"crs": "not a crs"}, "crs must be an EPSG code"),
        ({"resolution": -10}, "resolution must be a positive number"),
        ({"resampling": "cubicish"}, "resampling must be one of"),
        ({"chunksize": 0}, "chunksize must be a positive int"),
    ],
)
def test_bad_engine_arguments(logged_in, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-12", **kwargs
        )


def test_opening_without_credentials_fails_fast_without_network(sandbox_urls):
    sandbox_urls.log.clear()
    with pytest.raises(AuthenticationError, match="login"):
        xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-12"
        )
    assert sandbox_urls.log.records() == []


def test_reading_after_logout_is_an_authentication_error(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-12"
    )
    ds.NDVI.isel(time=0).load()
    xts.logout()
    logged_in.log.clear()
    with pytest.raises(AuthenticationError, match="login"):
        ds.NDVI.isel(time=0).load()
    assert tif_records(logged_in) == []


def test_module_level_open_dataset_is_the_engine(logged_in):
    kw = {"start": "2025-06-10", "end": "2025-06-12"}
    a = xts.open_dataset(list(SAMPLE_FIELD), **kw)
    b = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **kw)
    assert a.attrs["collection"] == NDVI
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())  # attrs differ by items key


def test_items_are_fetched_again_by_id_when_not_in_memory(logged_in):
    from xarray_terrascope.cube import item_store

    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-10"
    )
    in_memory = [i.id for i in ds.terrascope.items]
    item_store.items_cache.pop(ds.attrs["terrascope_items_key"])
    refetched = ds.terrascope.items
    assert sorted(i.id for i in refetched) == sorted(in_memory)


def test_opening_builds_no_pystac_item_and_items_match_a_search(logged_in, monkeypatch):
    """Opening plans from the API's item dicts: a pystac Item (a deep copy and a
    migration of its dict, an object per link) is built only when ``.items`` is asked
    for, once, and equals what :func:`xts.search` returns. The spy counts and calls
    through."""
    built = []
    real = pystac.Item.from_dict.__func__

    def counting(cls, d, *args, **kwargs):
        built.append(d.get("id"))
        return real(cls, d, *args, **kwargs)

    monkeypatch.setattr(pystac.Item, "from_dict", classmethod(counting))
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-20"
    )
    assert built == []
    items = ds.terrascope.items
    assert len(built) == len(items) > 2
    assert ds.terrascope.items == items and len(built) == len(items)  # built once
    searched = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-01", "2025-06-20")
    by_id = {item.id: item for item in searched}
    for item in items:
        assert isinstance(item, pystac.Item)
        expected = by_id[item.id].to_dict(include_self_link=False, transform_hrefs=False)
        got = item.to_dict(include_self_link=False, transform_hrefs=False)
        expected.pop("links", None), got.pop("links", None)
        assert got == expected


def test_reads_are_retried_through_503s_and_rate_limits(logged_in):
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-12"
    )
    expected = ds.NDVI.load().values
    xts.logout()
    xts.login(logged_in.username, logged_in.password)  # clears GDAL's HTTP cache
    logged_in.log.clear()
    logged_in.download.fail_next(2, kind="503")
    logged_in.download.max_concurrent = 1
    logged_in.download.latency = 0.2
    again = (
        xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-12"
        )
        .NDVI.load()
        .values
    )
    np.testing.assert_array_equal(again, expected)
    statuses = [r.status for r in tif_records(logged_in)]
    assert statuses.count(503) == 2 and 429 in statuses


def test_a_failing_server_is_a_read_error_with_gdal_cause(logged_in, monkeypatch):
    """Through GDAL's warper (bilinear at 20 m: not the async engine's case), a server
    that answers every request 503: a ReadError naming the file and the status, GDAL's
    (rasterio's) error chained as its cause."""
    from rasterio.errors import RasterioIOError

    from xarray_terrascope import auth
    from xarray_terrascope.engine import gdal, transport

    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setattr(gdal, "RETRY", dataclasses.replace(gdal.RETRY, attempts=2))
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        start="2025-04-01",
        end="2025-04-01",
        resolution=20,
        resampling="bilinear",
    )
    ids = ds.item_ids.values[0].split()
    assert ids and all("20250401T" in i for i in ids)
    logged_in.download.fault_rate = 1.0  # every authenticated download: 503
    with pytest.raises(xts.ReadError, match="20250401T") as info:
        ds.NDVI.load()
    assert "HTTP 503" in str(info.value) and "GDAL" in str(info.value)
    causes, cause = [], info.value.__cause__
    while cause is not None:  # stackstac wraps rasterio's error in a RuntimeError
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, RasterioIOError) for c in causes), causes
    assert not any(isinstance(c, transport._Retry) for c in causes), causes  # not the engine
    assert logged_in.password not in str(info.value)


def test_per_date_cloud_cover_is_the_mean_and_platform_the_dates_own(logged_in):
    """Per date, ``cloud_cover`` is the mean of the date's items' ``eo:cloud_cover`` (the
    field's two tiles report different covers) and ``platform`` the date's own
    platforms: both computed here from the world's item properties. One item is given
    another satellite by hand, so one date has two platforms."""
    start, end = "2025-05-25", "2025-06-15"
    items = xts.search(NDVI, SAMPLE_FIELD, start, end)
    mixed_day = "2025-05-28"
    changed = next(i for i in items if i.id.startswith("S2A_20250528T") and "_31UGS_" in i.id)
    changed = changed.clone()
    changed.properties["platform"] = "sentinel-2c"
    items = [changed if i.id == changed.id else i for i in items]
    ds = xr.open_dataset(pystac.ItemCollection(items), engine="terrascope", bbox=SAMPLE_FIELD)

    props = {
        d["id"]: d["properties"] for d in logged_in.world.item_dicts(NDVI, logged_in.download_url)
    }
    props[changed.id] = {**props[changed.id], "platform": "sentinel-2c"}
    groups = _world_groups(logged_in, NDVI, SAMPLE_FIELD, start, end)
    assert list(groups) == ds.terrascope.dates()
    covers = [[props[i]["eo:cloud_cover"] for i in ids] for ids in groups.values()]
    want_cover = [sum(c) / len(c) for c in covers]
    np.testing.assert_allclose(ds.cloud_cover.values, want_cover, rtol=1e-6)
    assert any(max(c) - min(c) > 1 for c in covers)  # the mean is not the max, nor the min
    want_platform = [
        ",".join(sorted({props[i]["platform"] for i in ids})) for ids in groups.values()
    ]
    assert list(ds.platform.values) == want_platform
    assert want_platform[list(groups).index(mixed_day)] == "sentinel-2a,sentinel-2c"
    assert {"sentinel-2a", "sentinel-2b"} <= set(want_platform)  # alternating satellites


#: Dates of the sample field: partly cloudy (05-28), overcast (05-31), clear (06-02).
RESAMPLED_DAYS = {"start": "2025-05-28", "end": "2025-06-02"}


def _at_20_m(resampling):
    """The sample field at 20 m with ``resampling`` (GDAL's warper), as DN, and the
    output pixel centres. Every 20 m pixel covers exactly 2 x 2 native 10 m pixels: its
    edges are on the files' 10 m grid (tile origins at multiples of 10 m)."""
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        resolution=20,
        resampling=resampling,
        decode=False,
        **RESAMPLED_DAYS,
    )
    assert ds.rio.resolution() == (20.0, -20.0) and ds.rio.crs.to_epsg() == 32631
    assert (ds.x.values % 10 == 0).all() and (ds.y.values % 10 == 0).all()
    xs, ys = np.meshgrid(ds.x.values, ds.y.values)
    return ds, ds.NDVI.load().values, xs, ys


def _world_dn(sandbox, item, xs, ys, offsets):
    """The item's DN (255: no data) at each offset (metres) around each point, from the
    world: an array ``(len(offsets) ** 2, *xs.shape)``."""
    return np.stack(
        [
            sandbox.world.sample(item, xs + dx, ys + dy, crs="EPSG:32631")
            for dy in offsets
            for dx in offsets
        ]
    )


def test_average_at_20_m_is_the_mean_of_the_native_pixels(logged_in):
    """``resampling="average"`` at twice the native pixel size: each pixel is the mean of
    the valid ones among the 2 x 2 native pixels it covers, in the date's mosaic order,
    the first item with a valid pixel winning. Expected values from the world's pixels
    with numpy; tolerance 0.5 DN, the rounding of a mean to the file's integer DN. (The
    world's clouds lie on 20 m cells that these pixels coincide with: a block is all
    valid or all no data.)"""
    ds, raw, xs, ys = _at_20_m("average")
    groups = _world_groups(logged_in, NDVI, SAMPLE_FIELD, **RESAMPLED_DAYS)
    assert list(groups) == ds.terrascope.dates()
    checked = 0
    for t, ids in enumerate(groups.values()):
        want = np.full(xs.shape, np.nan)
        for item in ids:  # mosaic priority
            dn = _world_dn(logged_in, item, xs, ys, (-5, 5)).astype(np.float64)
            valid = dn != 255
            count = valid.sum(axis=0)
            mean = np.where(valid, dn, 0).sum(axis=0) / np.maximum(count, 1)
            take = np.isnan(want) & (count > 0)
            want[take] = mean[take]
        got = raw[t]
        np.testing.assert_array_equal(got == 255, np.isnan(want), err_msg="no data")
        valid = ~np.isnan(want)
        assert (np.abs(got[valid] - want[valid]) <= 0.5).all()
        checked += int(valid.sum())
    assert checked > 10000


def test_bilinear_at_20_m_is_a_triangle_filter_two_pixels_wide(logged_in):
    """``resampling="bilinear"`` at twice the native pixel size: GDAL's warper widens the
    bilinear kernel by the shrinking factor, so along each axis the 4 nearest native
    pixels weigh 1/8, 3/8, 3/8, 1/8. Expected values from the world's pixels with numpy
    where the date's first item has all 16 valid; tolerance 0.5 DN (rounding)."""
    ds, raw, xs, ys = _at_20_m("bilinear")
    groups = _world_groups(logged_in, NDVI, SAMPLE_FIELD, **RESAMPLED_DAYS)
    assert list(groups) == ds.terrascope.dates()
    weights = np.array([1, 3, 3, 1]) / 8
    kernel = np.outer(weights, weights).ravel()  # same order as _world_dn's offsets
    checked = 0
    for t, ids in enumerate(groups.values()):
        dn = _world_dn(logged_in, ids[0], xs, ys, (-15, -5, 5, 15)).astype(np.float64)
        full = (dn != 255).all(axis=0)
        want = np.tensordot(kernel, dn, axes=1)
        got = raw[t]
        assert (np.abs(got[full] - want[full]) <= 0.5).all()
        checked += int(full.sum())
    assert checked > 10000
