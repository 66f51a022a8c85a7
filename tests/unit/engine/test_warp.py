"""The in-memory warp's pixel map: what an exact transform of every output pixel centre
gives, with exact transforms of only a few of them."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer

from xarray_terrascope.engine import warp
from xarray_terrascope.engine.warp import pixel_map
from xarray_terrascope.plan.grids import NativeGrid, OutputGrid

UFS = NativeGrid(32631, (10.0, 0.0, 699960.0, 0.0, -10.0, 5700000.0), (10980, 10980))


def exact_map(native: NativeGrid, target: OutputGrid, rows: slice, cols: slice):
    """Every centre through PROJ, then GDAL's nearest-neighbour rule (no shortcut)."""
    res = target.resolution
    x = target.x0 + (np.arange(cols.start, cols.stop) + 0.5) * res
    y = target.y0 - (np.arange(rows.start, rows.stop) + 0.5) * res
    xs, ys = Transformer.from_crs(target.epsg, native.epsg, always_xy=True).transform(
        *np.meshgrid(x, y)
    )
    a, _, c, _, e, f = native.transform
    col, row = np.floor((xs - c) / a + 1e-10), np.floor((ys - f) / e + 1e-10)
    height, width = native.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    return np.where(inside, row, -1), np.where(inside, col, -1)


CASES = {
    # 31UGS's pixels into UTM 32 at 10 m (the benchmark's cross-zone cube)
    "zone 31 into 32": (UFS, OutputGrid(32632, 10.0, 290000.0, 5685000.0), (0, 722), (0, 1423)),
    # into the other zone, a window that straddles the file's east edge
    "zone 32 into 31": (
        NativeGrid(32632, (10.0, 0.0, 199980.0, 0.0, -10.0, 5700000.0), (10980, 10980)),
        OutputGrid(32631, 10.0, 700000.0, 5690000.0),
        (100, 1124),
        (37, 1061),
    ),
    # 20 m pixels into 10 m: half the centres sit on a source pixel's edge, and ETRS89's
    # UTM differs from WGS 84's by a hair: the pixels the exact transform decides
    "ETRS89 20 m into WGS 84 10 m": (
        NativeGrid(32631, (20.0, 0.0, 699960.0, 0.0, -20.0, 5700000.0), (5490, 5490)),
        OutputGrid(25831, 10.0, 700000.0, 5690000.0),
        (0, 600),
        (0, 700),
    ),
    # thinner than two node steps: every centre is transformed
    "a thin strip": (UFS, OutputGrid(32632, 10.0, 290000.0, 5685000.0), (5, 30), (0, 3000)),
}


@pytest.mark.parametrize("case", CASES)
def test_pixel_map_equals_an_exact_transform_of_every_centre(case):
    native, target, rows, cols = CASES[case]
    rows, cols = slice(*rows), slice(*cols)
    rr, cc = pixel_map(native, target, rows, cols)
    want_r, want_c = exact_map(native, target, rows, cols)
    np.testing.assert_array_equal(rr, want_r)
    np.testing.assert_array_equal(cc, want_c)
    assert (rr >= 0).mean() > 0.3


@pytest.mark.parametrize(
    ("case", "share"), [("zone 31 into 32", 0.03), ("ETRS89 20 m into WGS 84 10 m", 0.6)]
)
def test_few_centres_go_through_proj(case, share, monkeypatch):
    """Nodes every 16 px, the cells' centres and the centres near a source pixel edge
    are transformed: about 1% of a zone-to-zone window; where half the centres sit on
    an edge (20 m into 10 m), those too, and the result is still exact (above)."""
    native, target, rows, cols = CASES[case]
    rows, cols = slice(*rows), slice(*cols)
    counted: list[int] = []
    real = warp._transformer(target.epsg, native.epsg)

    class Counting:
        def transform(self, xs, ys):
            counted.append(np.size(xs))
            return real.transform(xs, ys)

    monkeypatch.setattr(warp, "_transformer", lambda *crs: Counting())
    pixel_map(native, target, rows, cols)
    window = (rows.stop - rows.start) * (cols.stop - cols.start)
    assert 0 < sum(counted) < share * window


def test_centres_proj_cannot_transform_fall_outside_and_the_rest_stay_exact(monkeypatch):
    """Where PROJ answers inf (outside a projection's domain), those pixels are outside
    the file (-1) and the window is transformed exactly everywhere, not interpolated
    across the hole."""
    native, target, rows, cols = CASES["zone 31 into 32"]
    rows, cols = slice(*rows), slice(*cols)
    real = warp._transformer(target.epsg, native.epsg)
    edge = target.x0 + 700 * target.resolution  # no answer east of output column 700

    class Bounded:
        def transform(self, xs, ys):
            out_x, out_y = real.transform(xs, ys)
            hole = np.asarray(xs) > edge
            return np.where(hole, np.inf, out_x), np.where(hole, np.inf, out_y)

    monkeypatch.setattr(warp, "_transformer", lambda *crs: Bounded())
    rr, cc = pixel_map(native, target, rows, cols)
    want_r, want_c = exact_map(native, target, rows, cols)
    want_r[:, 700:], want_c[:, 700:] = -1, -1
    np.testing.assert_array_equal(rr, want_r)
    np.testing.assert_array_equal(cc, want_c)
