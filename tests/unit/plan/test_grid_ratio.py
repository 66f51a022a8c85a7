"""CubePlan.grid_ratio: which files the engine coarsens or replicates in memory."""

from __future__ import annotations

import pandas as pd
import pytest

from xarray_terrascope.plan.grids import NativeGrid
from xarray_terrascope.plan.planner import CubePlan

WEST, NORTH = 600000.0, 5700000.0


def _plan(resolution: float, native: NativeGrid) -> CubePlan:
    bounds = (WEST, NORTH - 12 * resolution, WEST + 12 * resolution, NORTH)
    return CubePlan(32631, bounds, resolution, ("B04",), ("a",), (("u",),), ((None,),),
                    ((0,),), (pd.Timestamp(0),), (), {}, "h", native=((native,),))  # fmt: skip


def _grid(res: float, x0: float = WEST - 1200.0, y0: float = NORTH + 600.0, epsg: int = 32631):
    return NativeGrid(epsg, (res, 0.0, x0, 0.0, -res, y0), (1000, 1000))


@pytest.mark.parametrize(
    ("resolution", "native", "want"),
    [
        (20.0, _grid(10.0), (2, 60, 120)),  # 10 m file, 20 m cube: 2 x 2 file pixels
        (60.0, _grid(10.0), (6, 60, 120)),
        (60.0, _grid(20.0), (3, 30, 60)),
        (10.0, _grid(20.0), (-2, 0, 0)),  # 20 m file, 10 m cube: replicated
        (10.0, _grid(60.0, WEST - 30.0), (-6, 0, 0)),  # file edges on cube edges
        (10.0, _grid(10.0), None),  # the same grid: an aligned read, not a ratio
        (30.0, _grid(20.0), None),  # 1.5: no whole ratio
        (20.0, _grid(10.0, WEST - 5.0), None),  # the cube's corner inside a file pixel
        (20.0, _grid(10.0, epsg=32632), None),  # another CRS
        (10.0, _grid(20.0, WEST - 5.0), None),  # a file edge inside a cube pixel
    ],
)
def test_grid_ratio(resolution, native, want):
    assert _plan(resolution, native).grid_ratio(0, 0) == want
