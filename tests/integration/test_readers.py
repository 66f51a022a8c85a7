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
