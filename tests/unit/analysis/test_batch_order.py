"""The order the parcel batch cuts parcels into batches in
(:mod:`xarray_terrascope.analysis.batch_order`): a generalized Hilbert curve that visits
every cell once, step by step, and whose every stretch covers a compact area, so two
workers' runs of batches meet along a short line also on an elongated region."""

from __future__ import annotations

import geopandas
import numpy as np
import pytest
import shapely

from xarray_terrascope.analysis.batch_order import gilbert_cells, parcel_order


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (2, 2), (6, 1), (80, 13), (13, 80), (64, 64), (9, 5)]
)
def test_the_curve_visits_every_cell_once_by_neighbouring_steps(shape):
    width, height = shape
    path = gilbert_cells(width, height)
    assert len(path) == width * height
    assert len({(int(x), int(y)) for x, y in path}) == width * height  # each cell once
    assert path.min() >= 0 and (path[:, 0] < width).all() and (path[:, 1] < height).all()
    steps = np.abs(np.diff(path, axis=0))
    # an edge neighbour, or (where both sides are odd, as the algorithm allows) a diagonal
    assert (steps.max(axis=1) == 1).all()
    assert (steps.sum(axis=1) == 2).sum() <= 1


def _squares(width: int, height: int, crs: str) -> geopandas.GeoDataFrame:
    """A ``width`` x ``height`` grid of 100 m squares (shuffled), and each one's cell."""
    x, y = np.meshgrid(np.arange(width), np.arange(height), indexing="ij")
    x, y = x.ravel(), y.ravel()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(x))
    x, y = x[pick], y[pick]
    boxes = shapely.box(
        500_000 + 100 * x, 5_600_000 + 100 * y, 500_100 + 100 * x, 5_600_100 + 100 * y
    )
    return geopandas.GeoDataFrame({"x": x, "y": y}, geometry=boxes, crs=crs)


def _cut(frame: geopandas.GeoDataFrame, order: np.ndarray, share: float) -> int:
    """Pairs of edge-neighbouring squares split between the first ``share`` of the order
    and the rest: the length, in squares, of the line where two runs meet."""
    first = np.zeros(len(frame), dtype=bool)
    first[order[: int(share * len(frame))]] = True
    cells = {(int(a), int(b)): f for a, b, f in zip(frame["x"], frame["y"], first, strict=True)}
    return sum(
        cells[a, b] != cells[a + dx, b + dy]
        for (a, b) in cells
        for dx, dy in ((1, 0), (0, 1))
        if (a + dx, b + dy) in cells
    )


@pytest.mark.parametrize("crs", ["EPSG:32631", "EPSG:4326"])
def test_where_two_runs_meet_on_an_elongated_region_the_line_is_short(crs):
    """A region 8 times as wide as high: wherever between 30 and 70 % of the order two
    workers' runs meet, the line between them is not much longer than the region's
    height (a Hilbert curve over the bounds, a square stretched onto them, cut it along
    lines up to 6 times as long: 90-118 squares, except at exactly 50 %)."""
    frame = _squares(160, 20, "EPSG:32631")
    if crs != "EPSG:32631":
        frame = frame.to_crs(crs)
    order = parcel_order(frame)
    assert sorted(order.tolist()) == list(range(len(frame)))
    cuts = [_cut(frame, order, share) for share in np.arange(0.30, 0.71, 0.05)]
    assert max(cuts) <= 2.5 * 20, cuts


def test_neighbours_share_a_batch():
    """Batches of 100 squares along the order are compact: each spans at most a few
    times the side of a 10 x 10 block."""
    frame = _squares(160, 20, "EPSG:32631")
    order = parcel_order(frame)
    for k in range(0, len(frame), 100):
        batch = frame.iloc[order[k : k + 100]]
        span = (batch["x"].max() - batch["x"].min() + 1) * (batch["y"].max() - batch["y"].min() + 1)
        assert span <= 4 * 100, (k, span)
