"""The readers' contract, one test run against each: a reader returns its file's part of
the window as the world holds it (the DN of the file pixel under each cube pixel's
centre), of the request's type and shape, with the fill value outside the file."""

from __future__ import annotations

import numpy as np
import pytest

import xarray_terrascope as xts
from xarray_terrascope.engine import aio, read, readers
from xarray_terrascope.engine.requests import AlignedRead, GdalRead, WarpedRead, Window
from xarray_terrascope.plan.planner import plan_cube

from ..support.helpers import NDVI

DAY = "2025-06-10"
#: Across the west edge of tile 31UGS (lon 5.864 E): part of the window lies outside it.
BBOX = (5.84, 51.24, 5.90, 51.26)
#: (the cube's CRS, the request kind under test); a cube in zone 32 warps the field's
#: zone-31 files.
CASES = {
    "aligned": (32631, AlignedRead),
    "warped": (32632, WarpedRead),
    "gdal": (32631, GdalRead),
    "gdal, warping": (32632, GdalRead),
}


@pytest.mark.parametrize("case", CASES)
def test_a_reader_gives_its_files_pixels_and_the_fill_outside(logged_in, case):
    crs, kind = CASES[case]
    items = xts.search(NDVI, list(BBOX), DAY, DAY)
    assert len(items) >= 2, "the day has both tiles of zone 31"
    plan = plan_cube(items, assets=["NDVI"], bbox=BBOX, crs=crs, collection=NDVI)
    creds = xts.Credentials(logged_in.username, logged_in.password)
    height, width = plan.shape
    window = Window(0, height, 0, width)
    xs, ys = np.meshgrid(plan.x_coords(), plan.y_coords())
    outside = 0
    for item_index, item_id in enumerate(plan.item_ids):
        request = read._request(plan, 0, item_index, window, creds)
        assert request is not None
        if kind is GdalRead:
            request = read._through_gdal(request, plan, 0, creds)
        assert isinstance(request, kind), type(request)
        values = aio.run(readers.read(request))
        assert values.shape == window.shape and values.dtype == request.dtype
        truth = logged_in.world.sample(item_id, xs, ys, crs=f"EPSG:{crs}")
        outside += int((truth == 255).sum())
        differ = values != truth
        if case == "gdal, warping":
            # GDAL's warper interpolates its transform over the window (its approximate
            # transformer): pixels whose centre is near a file pixel's edge may take the
            # neighbour (engine/warp.py transforms every such centre exactly)
            assert differ.mean() < 5e-3, (item_id, int(differ.sum()))
        else:
            assert not differ.any(), (item_id, int(differ.sum()))
    assert outside > 0, "a window part of which lies outside a file: the fill is checked"


def test_a_read_waiting_for_tiles_survives_the_cancellation_of_the_read_fetching_them(
    logged_in,
):
    """Two reads of one file share the tiles both need: the second waits for the first's
    fetch. When the first is cancelled (its date failed elsewhere, a stale read-ahead, a
    logout), the second fetches those tiles itself and gives the world's pixels; it
    neither fails with the other's cancellation nor is left waiting."""
    import asyncio

    items = xts.search(NDVI, list(BBOX), DAY, DAY)
    plan = plan_cube(items, assets=["NDVI"], bbox=BBOX, crs=32631, collection=NDVI)
    creds = xts.Credentials(logged_in.username, logged_in.password)
    height, width = plan.shape
    first = read._request(plan, 0, 0, Window(0, height, 0, width), creds)
    second = read._request(plan, 0, 0, Window(0, height - 1, 0, width - 1), creds)
    assert isinstance(first, AlignedRead) and isinstance(second, AlignedRead)
    aio.run(readers.read(read._request(plan, 0, 0, Window(0, 1, 0, 1), creds)))  # header
    aio.engine().tiles.clear()
    logged_in.download.latency = 0.5  # the first read's tiles are on their way a while

    async def cancel_the_first() -> object:
        tiles = aio.engine().tiles
        fetching = asyncio.ensure_future(readers.read(first))
        while not tiles._pending:  # the first read has claimed the tiles
            await asyncio.sleep(0.005)
        waiting = asyncio.ensure_future(readers.read(second))
        await asyncio.sleep(0.05)  # the second now waits for the first's tiles
        fetching.cancel()
        return await asyncio.wait_for(waiting, 30)

    values = aio.run(cancel_the_first())
    _assert_the_worlds(logged_in.world, plan, values)


def test_a_waiting_reads_cancellation_leaves_the_fetch_to_the_others(logged_in):
    """A read that waits for tiles another read fetches, then is cancelled, cancels
    nothing of that fetch: the fetching read and a third one waiting on the same tiles
    both give the world's pixels."""
    import asyncio

    items = xts.search(NDVI, list(BBOX), DAY, DAY)
    plan = plan_cube(items, assets=["NDVI"], bbox=BBOX, crs=32631, collection=NDVI)
    creds = xts.Credentials(logged_in.username, logged_in.password)
    height, width = plan.shape
    reads = [
        read._request(plan, 0, 0, Window(0, height - k, 0, width - k), creds) for k in range(3)
    ]
    aio.run(readers.read(read._request(plan, 0, 0, Window(0, 1, 0, 1), creds)))  # header
    aio.engine().tiles.clear()
    logged_in.download.latency = 0.5

    async def cancel_a_waiter() -> list:
        tiles = aio.engine().tiles
        fetching = asyncio.ensure_future(readers.read(reads[0]))
        while not tiles._pending:
            await asyncio.sleep(0.005)
        waiters = [asyncio.ensure_future(readers.read(r)) for r in reads[1:]]
        await asyncio.sleep(0.05)  # both wait for the first read's tiles
        waiters[0].cancel()
        return await asyncio.wait_for(asyncio.gather(fetching, waiters[1]), 30)

    for values in aio.run(cancel_a_waiter()):
        _assert_the_worlds(logged_in.world, plan, values)


def _assert_the_worlds(world, plan, values) -> None:
    """``values``, the first item's part of a window from the cube's corner, are the
    world's DN."""
    height, width = values.shape
    xs, ys = np.meshgrid(plan.x_coords()[:width], plan.y_coords()[:height])
    truth = world.sample(plan.item_ids[0], xs, ys, crs=f"EPSG:{plan.epsg}")
    assert (truth != 255).any()
    np.testing.assert_array_equal(values, truth)


#: Tile 31UGS and its neighbour in zone 32, read onto zone 32: warped.
ACROSS_ZONES = [5.84, 51.22, 5.99, 51.28]
TOC_DAYS = {"start": "2025-06-01", "end": "2025-06-05"}


@pytest.mark.parametrize("case", ["average", "bilinear", "nearest, local files"])
def test_cubes_warped_by_gdal_do_not_depend_on_their_chunks(logged_in, case):
    """GDAL warps each read at once, fitted over the window asked for: read as dask
    chunks of 41 x 37 pixels, a cube warped by GDAL (another resampling than nearest, or
    local files, which GDAL reads) equals the cube read whole, pixel for pixel."""
    import xarray as xr

    items = xts.search("terrascope-s2-toc-v2", ACROSS_ZONES, *TOC_DAYS.values())
    kw = {"assets": ["B04"], "crs": 32632, "decode": False}
    if case.startswith("nearest"):
        for item in items:
            local = f"file://{logged_in.world.cog_path(item.id, 'B04')}"
            item.assets["B04"].extra_fields["alternate"] = {"local": {"href": local}}
    else:
        kw.update(resolution=10, resampling=case)

    def cube(**chunks):
        ds = xr.open_dataset(items, engine="terrascope", bbox=ACROSS_ZONES, **kw, **chunks)
        return ds.B04.values

    whole = cube()
    assert (whole != 32767).mean() > 0.5, "a cube of mostly no data tests nothing"
    np.testing.assert_array_equal(cube(chunks={"x": 37, "y": 41}), whole)
