"""Zonal statistics: xvec's layout and values, sparse reads, laziness, workers, GeoParquet."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest
import xarray as xr

gpd = pytest.importorskip("geopandas")
xvec = pytest.importorskip("xvec")
shapely = pytest.importorskip("shapely")

import xarray_terrascope as xts  # noqa: E402
from xarray_terrascope.engine import aio  # noqa: E402
from xarray_terrascope.exceptions import InvalidArgumentError  # noqa: E402
from xarray_terrascope.plan import sparse  # noqa: E402
from xarray_terrascope.testing import SAMPLE_FIELD  # noqa: E402

from ..support.helpers import benchmark_module, tif_records  # noqa: E402

WEEK = {"start": "2025-05-16", "end": "2025-05-26"}  # clear, overcast, partly...
ALL = ["mean", "median", "std", "min", "max", "sum", "count", "valid_fraction"]
#: A strip of the 31UFS tile only (one file per date, native grid: no warping).
WIDE = [5.0, 51.2, 5.6, 51.3]


def _parcels_in(sandbox, bbox, n=None, seed=0):
    parcels = sandbox.world.parcels()
    box = shapely.box(*bbox).buffer(-0.003)
    inside = parcels[parcels.within(box)]
    if n is not None:
        inside = inside.sample(n, random_state=seed)
    return inside.set_index("parcel_id")


def _open(bbox, **kw):
    return xr.open_dataset(list(bbox), engine="terrascope", chunks={}, **{**WEEK, **kw})


@pytest.fixture
def field(logged_in):
    """The sample field's cube (two overlapping tiles per date) and its parcels."""
    ds = _open(SAMPLE_FIELD)
    parcels = _parcels_in(logged_in, SAMPLE_FIELD)
    return logged_in, ds, parcels


#: The statistics xvec computes (``valid_fraction`` is the package's own).
XVEC_STATS = ["mean", "median", "std", "min", "max", "sum", "count"]


def _assert_equal_to_xvec(computed, values, geometries):
    """``computed`` (the package's statistics of a variable) equals xvec's over the
    loaded ``values`` for ``geometries`` (in the cube's CRS); returns xvec's."""
    expected = values.xvec.zonal_stats(geometries, "x", "y", stats=XVEC_STATS, method="rasterize")
    for stat in XVEC_STATS:
        np.testing.assert_allclose(
            computed.sel(zonal_statistics=stat).values,
            expected.sel(zonal_statistics=stat).values,
            rtol=1e-5,
            atol=1e-6,
            err_msg=stat,
        )
    return expected


def test_equals_xvec_on_the_loaded_cube(field):
    _sandbox, ds, parcels = field
    result = ds.terrascope.zonal_stats(parcels, ALL)
    assert result.NDVI.dims == ("geometry", "zonal_statistics", "time")
    assert list(result.zonal_statistics.values) == ALL
    assert isinstance(result.xindexes["geometry"], xvec.GeometryIndex)
    assert result.xindexes["geometry"].crs.to_epsg() == 4326
    np.testing.assert_array_equal(result.parcel_id.values, parcels.index.values)
    computed = result.compute()

    cube = ds.load()
    in_cube = parcels.geometry.to_crs(ds.rio.crs)
    expected = _assert_equal_to_xvec(computed.NDVI, cube.NDVI, in_cube)
    pixels = xr.ones_like(cube.NDVI).xvec.zonal_stats(
        in_cube, "x", "y", method="rasterize", stats="count"
    )
    fraction = expected.sel(zonal_statistics="count") / pixels
    np.testing.assert_allclose(
        computed.NDVI.sel(zonal_statistics="valid_fraction").values, fraction.values, rtol=1e-6
    )
    # clouds make some parcels partly valid on some dates: the check is not vacuous
    vf = computed.NDVI.sel(zonal_statistics="valid_fraction").values
    assert (vf == 1).any() and ((vf > 0) & (vf < 1)).any()


def test_ground_truth_of_the_sandbox(field):
    sandbox, ds, parcels = field
    means = ds.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"]).NDVI.compute()
    full = means.sel(zonal_statistics="valid_fraction").values == 1
    # the truth is cloud-free NDVI; hazy cloud edges lower it: take the clear dates only
    clear = ds.cloud_cover.values == 0
    assert clear.any()
    checked = 0
    for t, day in enumerate(ds.terrascope.dates()):
        if not clear[t]:
            continue
        truth = sandbox.world.parcel_ndvi(parcels.index.values, day)
        got = means.sel(zonal_statistics="mean").values[:, t]
        ok = full[:, t]
        # files hold 8-bit DN (0.004 NDVI per step): the mean is within half a step
        np.testing.assert_allclose(got[ok], truth[ok], atol=0.0021)
        checked += ok.sum()
    assert checked >= 20


def test_a_raw_cube_gives_the_statistics_of_its_physical_values(field):
    """``decode=False``: stored DN whose no-data value (255, clouds) must not count as a
    value; the statistics are xvec's over the physical NDVI (0.004 DN - 0.08, decoded by
    hand here)."""
    _sandbox, _ds, parcels = field
    raw = _open(SAMPLE_FIELD, decode=False)
    computed = raw.terrascope.zonal_stats(parcels, ALL).compute()
    dn = raw.NDVI.load()
    scale, offset = np.float32(0.004), np.float32(-0.08)
    physical = xr.where(dn == 255, np.nan, dn.astype(np.float32) * scale + offset)
    _assert_equal_to_xvec(computed.NDVI, physical, parcels.geometry.to_crs(raw.rio.crs))
    vf = computed.NDVI.sel(zonal_statistics="valid_fraction").values
    assert ((vf > 0) & (vf < 1)).any(), "no parcel partly cloudy: no-data not tested"


def test_geometries_in_any_form_and_crs(field):
    _sandbox, ds, parcels = field
    reference = ds.NDVI.terrascope.zonal_stats(parcels.geometry, "mean").compute()
    assert reference.dims == ("geometry", "time")
    as_laea = parcels.to_crs(3035)
    from_laea = ds.NDVI.terrascope.zonal_stats(as_laea, "mean").compute()
    assert from_laea.xindexes["geometry"].crs.to_epsg() == 3035
    np.testing.assert_allclose(from_laea.values, reference.values, rtol=1e-6)
    bare = list(parcels.geometry.values)  # shapely, no CRS: taken as EPSG:4326
    from_list = ds.NDVI.terrascope.zonal_stats(bare, "mean").compute()
    assert "parcel_id" not in from_list.coords and "index" not in from_list.coords
    np.testing.assert_allclose(from_list.values, reference.values, rtol=1e-6)
    # a geometry in the wrong CRS would land elsewhere: this check can fail
    wrong = parcels.geometry.set_crs(3035, allow_override=True)
    with pytest.warns(xts.GeometriesOutsideWarning, match=f"^{len(parcels)} of {len(parcels)} "):
        assert np.isnan(ds.NDVI.terrascope.zonal_stats(wrong, "mean").values).all()


def test_every_form_of_the_cube_gives_the_same_numbers(field):
    """The engine's array read per window, a sliced dask cube read per chunk, chunks=None."""
    sandbox, ds, parcels = field
    stats = ["mean", "max", "count"]
    sandbox.log.clear()
    direct = ds.terrascope.zonal_stats(parcels, stats).NDVI.compute()
    direct_bytes = sum(r.bytes for r in tif_records(sandbox))
    lazy = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **WEEK)
    aio.engine().tiles.clear()  # the engine keeps tiles shared by neighbouring windows
    sandbox.log.clear()
    eager = lazy.terrascope.zonal_stats(parcels, stats).NDVI
    assert eager.chunks is None  # computed at once, as xvec does
    eager_bytes = sum(r.bytes for r in tif_records(sandbox))
    assert 0 < eager_bytes <= 1.05 * direct_bytes  # the same windows as the dask path
    np.testing.assert_allclose(eager.values, direct.values, rtol=1e-6)
    sliced = ds.isel(time=slice(1, None)).terrascope.zonal_stats(parcels, stats).NDVI
    assert sliced.chunks is not None
    np.testing.assert_allclose(sliced.compute().values, direct.values[..., 1:], rtol=1e-6)


@pytest.mark.parametrize("steps", [slice(1, 3), slice(0, 1), slice(2, None)])
def test_the_statistics_of_some_dates_read_only_those_dates_files(field, steps):
    """``zonal_stats_of_steps`` (how the batch gives each worker its dates): the numbers of
    those dates, with the date coordinates, and only those dates' files requested."""
    from xarray_terrascope.analysis.zonal import zonal_stats_of_steps

    sandbox, ds, parcels = field
    stats = ["mean", "count"]
    direct = ds.terrascope.zonal_stats(parcels, stats).NDVI.compute()
    aio.engine().tiles.clear()
    sandbox.log.clear()
    some = zonal_stats_of_steps(ds, parcels, stats, steps, items=ds.terrascope.items)
    assert some.NDVI.chunks is not None  # lazy, as the cube
    some = some.NDVI.compute()
    np.testing.assert_array_equal(some.time.values, ds.time.values[steps])
    np.testing.assert_allclose(some.values, direct.values[..., steps], rtol=1e-6)
    days = {str(d)[:10].replace("-", "") for d in ds.time.values[steps]}
    read = {r.path.rsplit("/", 1)[-1] for r in tif_records(sandbox)}
    assert read, "nothing read: the test proves nothing"
    outside = {name for name in read if not any(d in name for d in days)}
    assert not outside, f"files of other dates read: {sorted(outside)}"


def test_iterate_counts_overlaps_in_every_geometry(field):
    _sandbox, ds, parcels = field
    first = parcels.geometry.iloc[0]
    overlapping = gpd.GeoSeries([first, first.buffer(0.0005), parcels.geometry.iloc[1]], crs=4326)
    raster = ds.terrascope.zonal_stats(overlapping, "count", method="rasterize").NDVI
    each = ds.terrascope.zonal_stats(overlapping, "count", method="iterate").NDVI
    raster, each = raster.compute().values, each.compute().values
    # rasterize: a later geometry takes the shared pixels, as in xvec
    assert (raster[0] == 0).all() and (each[0] > 0).any()
    assert (each[1] >= each[0]).all() and (raster[1] <= each[1]).all()
    np.testing.assert_array_equal(raster[2], each[2])
    cube = ds.NDVI.load()
    expected = cube.xvec.zonal_stats(
        overlapping.to_crs(ds.rio.crs), "x", "y", stats="count", method="rasterize"
    )
    np.testing.assert_array_equal(raster, np.nan_to_num(expected.values, nan=0))


def test_lazy_until_computed_and_no_secret_in_the_graph(field):
    sandbox, ds, parcels = field
    sandbox.log.clear()
    result = ds.terrascope.zonal_stats(parcels, ["mean", "count"])
    assert tif_records(sandbox) == []
    assert result.NDVI.chunks is not None
    graph = dict(result.NDVI.data.__dask_graph__())
    blob = cloudpickle.dumps(graph) + str(graph).encode()
    assert sandbox.password.encode() not in blob
    result.compute()
    assert tif_records(sandbox)


def test_reads_only_the_tiles_the_parcels_touch(logged_in):
    """40 parcels (~1% of a 42 x 11 km cube): bytes <= 1.2x the touched tiles' bytes."""
    sandbox = logged_in
    ds = _open(WIDE, start="2025-06-01", end="2025-06-05")
    parcels = _parcels_in(sandbox, WIDE, 40, seed=1)
    paths = [sandbox.world.cog_path(item.id) for item in ds.terrascope.items]
    sandbox.log.clear()
    ds.terrascope.zonal_stats(parcels, "mean").compute()
    records = tif_records(sandbox)
    read = sum(r.bytes for r in records)
    headers = sum(r.bytes for r in records if r.range and r.range.startswith("bytes=0-"))
    tile_floor = benchmark_module("_floor").tile_floor
    floor = sum(tile_floor(p, parcels.geometry)["tile_bytes"] for p in paths)
    cube_pixels = ds.sizes["y"] * ds.sizes["x"]
    assert parcels.geometry.to_crs(ds.rio.crs).area.sum() / 100 < 0.03 * cube_pixels
    assert read <= 1.2 * (floor + headers), (read, floor, headers)
    assert read - headers <= 1.2 * floor


def test_to_geodataframe_and_geoparquet(field, tmp_path):
    _sandbox, ds, parcels = field
    result = ds.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"]).compute()
    frame = result.NDVI.xvec.to_geodataframe(name="NDVI", long=True)
    assert frame.crs.to_epsg() == 4326
    wide = frame.reset_index().pivot_table(
        index=["parcel_id", "time"], columns="zonal_statistics", values="NDVI"
    )
    joined = wide.join(parcels[["crop", "area_ha"]], on="parcel_id")
    path = tmp_path / "ndvi.parquet"
    frame.to_parquet(path)
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 4326 and len(back) == len(frame)
    assert len(joined) == len(parcels) * ds.sizes["time"]
    assert set(joined.crop) <= set(parcels.crop) and joined["mean"].notna().any()


def test_bad_arguments_name_what_is_allowed(field):
    _sandbox, ds, parcels = field
    with pytest.raises(InvalidArgumentError, match=r"stats.*mean"):
        ds.terrascope.zonal_stats(parcels, "average")
    with pytest.raises(InvalidArgumentError, match="method must be one of rasterize"):
        ds.terrascope.zonal_stats(parcels, method="exact")
    with pytest.raises(InvalidArgumentError, match="block_size"):
        ds.terrascope.zonal_stats(parcels, block_size=0)
    with pytest.raises(InvalidArgumentError, match="geometries"):
        ds.terrascope.zonal_stats([1, 2, 3])


def test_plan_aligns_blocks_to_the_file_tiles(field):
    _sandbox, ds, _parcels = field
    grids = sparse.item_grids(ds.terrascope.items, ["NDVI"])
    transform = ds.rio.transform()
    oy, ox = sparse.grid_origin(transform, grids, 32631, 256)
    # the chosen corner is a tile corner of at least one file
    corners = {
        (round((t[5] - transform.f) / -10) % 256, round((t[2] - transform.c) / 10) % 256)
        for _, t in grids
    }
    assert (oy, ox) in corners


def test_on_a_distributed_cluster(cluster, logged_in):
    distributed = pytest.importorskip("distributed")  # this test alone needs it
    sandbox = logged_in
    xts.login(sandbox.username, sandbox.password)
    ds = _open(SAMPLE_FIELD)
    parcels = _parcels_in(sandbox, SAMPLE_FIELD, 12, seed=3)
    result = ds.terrascope.zonal_stats(parcels, ["mean", "count"])
    threaded = result.compute(scheduler="threads")
    with distributed.Client(cluster) as client:
        sandbox.log.clear()
        on_cluster = client.compute(result).result()
        records = tif_records(sandbox)
    assert records and all(r.user == sandbox.username for r in records)
    np.testing.assert_allclose(on_cluster.NDVI.values, threaded.NDVI.values, rtol=1e-6)
    assert np.isfinite(on_cluster.NDVI.values).any()
