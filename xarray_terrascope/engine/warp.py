"""Nearest-neighbour warps in memory: async reads of a file's native pixels, exact per pixel.

A file in another CRS (the next UTM zone) or at another resolution than the output grid
is read by the async engine in its own pixels, then each output pixel takes the source
pixel under its centre, as an exact PROJ transform of that centre (pyproj) finds it, the
rule of GDAL's nearest-neighbour warper (``floor`` of the source pixel coordinate). A
large window is interpolated between exact nodes, with a measured error bound and exact
transforms of every centre the bound leaves in doubt (:func:`_warped_uv`), so a pixel's
value never depends on the window it was read in (GDAL's approximate transformer
interpolates over each window it warps without such a check: ``chunks={}`` and
``.load()`` could differ on a few pixels).

The map from output pixels to source pixels is computed once per (file grid, output
window) and kept in a bounded cache: every date of one Sentinel-2 tile shares it.
Area resamplings (average, mode...) onto a grid at a whole ratio are computed in memory
too: onto a coarser grid by :mod:`xarray_terrascope.engine.coarsen`, onto a finer one
here (each output pixel lies in one file pixel: the nearest one). Other resamplings, and
area methods at other ratios or across CRSs, keep GDAL's warper
(:mod:`xarray_terrascope.engine.read`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from async_tiff import TIFF
from pyproj import Transformer

from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import aio
from xarray_terrascope.engine.cog import GridMismatch, check_grid, tiles_of, with_header
from xarray_terrascope.engine.requests import Placement, WarpedRead, Window
from xarray_terrascope.engine.source import Source
from xarray_terrascope.plan.grids import NativeGrid, OutputGrid

__all__ = ["Gather", "WarpedReader", "gather_plan", "pixel_map", "read_warped"]

#: Bytes of gather plans (pixel maps turned into tile indices) kept per process.
MAP_CACHE_BYTES = 64 * 2**20
#: Pixels between the nodes transformed exactly in a large warped window.
NODE_STEP = 16
#: Pixels whose interpolated source coordinate is this close (in source pixels) to a
#: pixel edge are transformed exactly.
EXACT_BAND = 1e-3
#: Coordinates of many points (float64 arrays).
Coords = npt.NDArray[np.float64]
#: GDAL's nearest-neighbour kernel adds this before ``floor`` (gdalwarpkernel.cpp).
_EPSILON = 1e-10


@dataclass(frozen=True)
class Gather:
    """How to fill an output window from a file's tiles: the same for every date of a tile.

    Attributes
    ----------
    inside : numpy.ndarray
        bool, the window's shape: pixels over the file.
    tiles : tuple of (int, int)
        ``(tx, ty)`` of the tiles holding a needed pixel.
    take : numpy.ndarray
        For each ``inside`` pixel (C order), its index in the stack of those tiles,
        shaped ``(len(tiles), tile_height, tile_width)`` and flattened.
    edge : frozenset
        Tiles under the window's outer pixels (neighbouring windows need them too).
    """

    inside: npt.NDArray[np.bool_]
    tiles: tuple[tuple[int, int], ...]
    take: npt.NDArray[np.intp]
    edge: frozenset[tuple[int, int]]

    @property
    def nbytes(self) -> int:
        return self.inside.nbytes + self.take.nbytes


#: Gather plans by (file grid, output grid, window, tile shape), bounded in bytes.
_plans: BoundedCache[Hashable, Gather] = BoundedCache(
    MAP_CACHE_BYTES, getsizeof=lambda plan: plan.nbytes
)


def _new_lock_after_fork() -> None:
    _plans.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


@functools.lru_cache(maxsize=16)
def _transformer(src: int, dst: int) -> Transformer:
    """A PROJ transformer (built once per CRS pair: about 0.1 s; thread-safe since
    pyproj 3.1)."""
    return Transformer.from_crs(src, dst, always_xy=True)


def pixel_map(
    native: NativeGrid, target: OutputGrid, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(row, col)`` of each pixel of output window ``rows, cols`` (-1: outside).

    Returns two int32 arrays of the window's shape: for each output pixel centre, the
    source pixel under it, as an exact PROJ transform of that centre would give (see
    :func:`_warped_uv` for how a large window gets there with few transforms).

    Examples
    --------
    >>> native = NativeGrid(32631, (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0), (100, 100))
    >>> rr, cc = pixel_map(native, OutputGrid(32631, 20.0, 600000.0, 5700000.0),
    ...                    slice(0, 2), slice(0, 3))
    >>> rr.tolist(), cc.tolist()
    ([[1, 1, 1], [3, 3, 3]], [[1, 3, 5], [1, 3, 5]])
    """
    a, b, _c, d, e, _f = native.transform
    if not a * e - b * d:
        raise GridMismatch(f"singular transform {native.transform}")
    res = target.resolution
    x = target.x0 + (np.arange(cols.start, cols.stop) + 0.5) * res
    y = target.y0 - (np.arange(rows.start, rows.stop) + 0.5) * res
    if native.epsg == target.epsg:
        u, v = _uv(native, *np.meshgrid(x, y))
    else:
        u, v = _warped_uv(native, _transformer(target.epsg, native.epsg), x, y)
    with np.errstate(invalid="ignore"):
        col = np.floor(u + _EPSILON)
        row = np.floor(v + _EPSILON)
    height, width = native.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    rr = np.where(inside, row, -1).astype(np.int32)
    cc = np.where(inside, col, -1).astype(np.int32)
    return rr, cc


def _uv(native: NativeGrid, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (column, row; pixel edges) of points in the file's CRS."""
    a, b, c, d, e, f = native.transform
    det = a * e - b * d
    dx, dy = np.asarray(xs) - c, np.asarray(ys) - f
    return (e * dx - b * dy) / det, (a * dy - d * dx) / det  # the inverse affine


def _warped_uv(
    native: NativeGrid, transformer: Transformer, x: Coords, y: Coords
) -> tuple[Coords, Coords]:
    """Source pixel coordinates of the output pixel centres ``x`` by ``y`` (a grid), whose
    ``floor`` is that of an exact transform of every centre.

    A large window is transformed exactly at nodes every :data:`NODE_STEP` pixels and
    interpolated bilinearly in between; the interpolation's error, measured exactly at
    every cell's centre (where it is largest for a smooth transform), must stay under an
    eighth of :data:`EXACT_BAND`, and every pixel whose interpolated coordinate lies
    within :data:`EXACT_BAND` of a pixel edge is transformed exactly again. Every other
    pixel is then more than the error away from an edge, so its ``floor`` cannot differ.
    A window too small for nodes, or an interpolation that fails the check, is
    transformed exactly everywhere. For a UTM zone into the next one at 10 m, about 1%
    of the centres are transformed, and the error is near 1e-6 pixel.
    """

    def exact(xs: Coords, ys: Coords) -> tuple[Coords, Coords]:
        with np.errstate(invalid="ignore"):
            return _uv(native, *transformer.transform(xs, ys))

    height, width = len(y), len(x)
    if min(height, width) < 2 * NODE_STEP:
        return exact(*np.meshgrid(x, y))
    j = np.unique(np.r_[np.arange(0, width, NODE_STEP), width - 1])  # node columns
    i = np.unique(np.r_[np.arange(0, height, NODE_STEP), height - 1])  # node rows
    nodes = exact(*np.meshgrid(x[j], y[i]))
    # the cells' centres, exactly and interpolated (the mean of the four nodes)
    res_x, res_y = x[1] - x[0], y[1] - y[0]
    mid_x = x[0] + (j[:-1] + j[1:]) / 2 * res_x
    mid_y = y[0] + (i[:-1] + i[1:]) / 2 * res_y
    mids = exact(*np.meshgrid(mid_x, mid_y))
    errors = [  # NaN where PROJ failed at a node or a centre: then no interpolation
        np.abs((node[:-1, :-1] + node[1:, :-1] + node[:-1, 1:] + node[1:, 1:]) / 4 - mid)
        for node, mid in zip(nodes, mids, strict=True)
    ]
    if not all(bool(np.all(error <= EXACT_BAND / 8)) for error in errors):
        return exact(*np.meshgrid(x, y))
    u, v = (_bilinear(node, i, j, height, width) for node in nodes)
    frac_u, frac_v = (u + _EPSILON) % 1.0, (v + _EPSILON) % 1.0
    near = (np.minimum(frac_u, 1 - frac_u) < EXACT_BAND) | (
        np.minimum(frac_v, 1 - frac_v) < EXACT_BAND
    )
    rows, cols = np.nonzero(near)
    u[rows, cols], v[rows, cols] = exact(x[cols], y[rows])
    return u, v


def _bilinear(
    values: Coords, i: npt.NDArray[np.intp], j: npt.NDArray[np.intp], height: int, width: int
) -> Coords:
    """``values`` at node rows ``i`` and columns ``j``, interpolated to every pixel."""
    cols = np.arange(width)
    k = np.clip(np.searchsorted(j, cols, side="right") - 1, 0, len(j) - 2)
    t = (cols - j[k]) / (j[k + 1] - j[k])
    across = values[:, k] * (1 - t) + values[:, k + 1] * t  # every column, node rows
    rows = np.arange(height)
    m = np.clip(np.searchsorted(i, rows, side="right") - 1, 0, len(i) - 2)
    s = ((rows - i[m]) / (i[m + 1] - i[m]))[:, None]
    interpolated: Coords = across[m] * (1 - s) + across[m + 1] * s
    return interpolated


def gather_plan(
    native: NativeGrid, target: OutputGrid, rows: slice, cols: slice, tile_shape: tuple[int, int]
) -> Gather:
    """The :class:`Gather` of an output window from a file tiled ``tile_shape``.

    Cached per process (bounded by :data:`MAP_CACHE_BYTES`).
    """
    key = (native, target, rows.start, rows.stop, cols.start, cols.stop, tile_shape)
    with _plans.lock:
        found: Gather | None = _plans.get(key)
        if found is not None:
            return found
    rr, cc = pixel_map(native, target, rows, cols)
    th, tw = tile_shape
    inside = rr >= 0
    src_r, src_c = rr[inside].astype(np.int64), cc[inside].astype(np.int64)
    across = -(-native.shape[1] // tw)
    index = (src_r // th) * across + src_c // tw
    needed = np.unique(index)  # the tiles holding a needed pixel, sorted
    take = np.searchsorted(needed, index) * (th * tw) + (src_r % th) * tw + src_c % tw
    plan = Gather(
        inside=inside,
        tiles=tuple((int(k % across), int(k // across)) for k in needed),
        take=take,
        edge=frozenset(_edge_tiles(rr, cc, th, tw)),
    )
    with _plans.lock:
        _plans.put(key, plan)
    return plan


async def read_warped(request: WarpedRead) -> npt.NDArray[Any]:
    """The window's values from a file on another grid, with nearest neighbour: each
    output pixel takes the file pixel under its centre (see :func:`pixel_map`).

    Raises
    ------
    GridMismatch
        When the header disagrees with ``request.native`` or the grid is not north-up
        with square pixels (the caller reads the file through GDAL).
    AuthenticationError, ReadError
        As :func:`xarray_terrascope.engine.transport.get_ranges`.
    """
    native, dtype, fill = request.native, request.dtype, request.fill
    a, b, c, d, e, f = native.transform
    if b or d or abs(a + e) > 1e-9 * abs(a):
        raise GridMismatch(f"{request.label}: rotated or non-square pixels")
    grid = Placement(native.epsg, c, f, a, 0, 0)

    async def body(tiff: TIFF, source: Source) -> npt.NDArray[Any]:
        ifd = tiff.ifds[0]
        check_grid(ifd, grid, native.shape, dtype, request.label)
        th, tw = ifd.tile_height, ifd.tile_width
        assert th is not None and tw is not None  # check_grid: the file is tiled
        plan = await _plan_async(native, request.target, request.window, (th, tw))
        out = np.full(plan.inside.shape, fill, dtype=dtype)
        if not plan.tiles:
            return out
        edge = plan.edge
        blocks = await tiles_of(tiff, source, list(plan.tiles), lambda tx, ty: (tx, ty) in edge)
        stack = np.full((len(blocks), th, tw), fill, dtype=dtype)
        for i, block in enumerate(blocks):
            stack[i, : block.shape[0], : block.shape[1]] = block.view(dtype)
        out[plan.inside] = stack.reshape(-1)[plan.take]
        return out

    return await with_header(request.url, request.label, request.access, body)


class WarpedReader:
    """The :class:`~xarray_terrascope.engine.requests.Reader` of :class:`WarpedRead`."""

    async def read(self, request: WarpedRead) -> npt.NDArray[Any]:
        return await read_warped(request)


async def _plan_async(
    native: NativeGrid, target: OutputGrid, window: Window, tile_shape: tuple[int, int]
) -> Gather:
    """:func:`gather_plan` off the event loop, computed once when many reads want it."""
    key = (native, target, window, tile_shape)
    loop = asyncio.get_running_loop()
    rows, cols = window.rows, window.cols
    return await aio.shared(
        aio.engine().pending_gathers,
        key,
        lambda: loop.run_in_executor(None, gather_plan, native, target, rows, cols, tile_shape),
    )


def _edge_tiles(rr: np.ndarray, cc: np.ndarray, th: int, tw: int) -> set[tuple[int, int]]:
    """Tiles under the window's outer pixels: neighbouring windows need them too."""
    ring_r = np.concatenate([rr[0], rr[-1], rr[:, 0], rr[:, -1]])
    ring_c = np.concatenate([cc[0], cc[-1], cc[:, 0], cc[:, -1]])
    ok = ring_r >= 0
    return {(int(c) // tw, int(r) // th) for r, c in zip(ring_r[ok], ring_c[ok], strict=True)}
