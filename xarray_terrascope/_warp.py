"""Nearest-neighbour warps in memory: async reads of a file's native pixels, exact per pixel.

A file in another CRS (the next UTM zone) or at another resolution than the output grid
is read by the async engine in its own pixels, then each output pixel takes the source
pixel under its centre, found with an exact PROJ transform of that centre (pyproj), the
rule of GDAL's nearest-neighbour warper (``floor`` of the source pixel coordinate). No
approximate transformer is used, so a pixel's value never depends on the window it was
read in (GDAL's warper interpolates transforms over each window it warps: ``chunks={}``
and ``.load()`` could differ on a few pixels).

The map from output pixels to source pixels is computed once per (file grid, output
window) and kept in a bounded cache: every date of one Sentinel-2 tile shares it.
Other resamplings keep GDAL's warper (:mod:`xarray_terrascope.read`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import _aio
from .cog import Grid, GridMismatch, check_grid, tiles_of, with_header

__all__ = ["Native", "pixel_map", "read_warped"]

#: Bytes of pixel maps kept per process.
MAP_CACHE_BYTES = 64 * 2**20
#: GDAL's nearest-neighbour kernel adds this before ``floor`` (gdalwarpkernel.cpp).
_EPSILON = 1e-10


@dataclass(frozen=True)
class Native:
    """A file's own grid, from the item's ``proj:*`` metadata.

    Attributes
    ----------
    epsg : int
    transform : tuple of float
        The affine ``(a, b, c, d, e, f)``.
    shape : tuple of int
        ``(height, width)``.
    """

    epsg: int
    transform: tuple[float, ...]
    shape: tuple[int, int]


@dataclass(frozen=True)
class Target:
    """The output grid: its CRS and north-up transform ``(resolution, x0, y0)``."""

    epsg: int
    resolution: float
    x0: float
    y0: float


_maps_lock = threading.Lock()
_maps: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_maps_bytes = 0


def _transformer(src: int, dst: int):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def pixel_map(
    native: Native, target: Target, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(row, col)`` of each pixel of output window ``rows, cols`` (-1: outside).

    Returns two int32 arrays of the window's shape. Cached per process (bounded).

    Examples
    --------
    >>> native = Native(32631, (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0), (100, 100))
    >>> rr, cc = pixel_map(native, Target(32631, 20.0, 600000.0, 5700000.0),
    ...                    slice(0, 2), slice(0, 3))
    >>> rr.tolist(), cc.tolist()
    ([[1, 1, 1], [3, 3, 3]], [[1, 3, 5], [1, 3, 5]])
    """
    global _maps_bytes
    key = (native, target, rows.start, rows.stop, cols.start, cols.stop)
    with _maps_lock:
        found = _maps.get(key)
        if found is not None:
            _maps.move_to_end(key)
            return found
    res = target.resolution
    x = target.x0 + (np.arange(cols.start, cols.stop) + 0.5) * res
    y = target.y0 - (np.arange(rows.start, rows.stop) + 0.5) * res
    xx, yy = np.meshgrid(x, y)
    if native.epsg != target.epsg:
        xx, yy = _transformer(target.epsg, native.epsg).transform(xx, yy)
    a, b, c, d, e, f = native.transform
    det = a * e - b * d
    if not det:
        raise GridMismatch(f"singular transform {native.transform}")
    dx, dy = np.asarray(xx) - c, np.asarray(yy) - f
    u = (e * dx - b * dy) / det  # the inverse affine: source column, row (pixel edges)
    v = (a * dy - d * dx) / det
    with np.errstate(invalid="ignore"):
        col = np.floor(u + _EPSILON)
        row = np.floor(v + _EPSILON)
    height, width = native.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    rr = np.where(inside, row, -1).astype(np.int32)
    cc = np.where(inside, col, -1).astype(np.int32)
    with _maps_lock:
        _maps[key] = (rr, cc)
        _maps_bytes += rr.nbytes + cc.nbytes
        while _maps_bytes > MAP_CACHE_BYTES and len(_maps) > 1:
            _, (old_r, old_c) = _maps.popitem(last=False)
            _maps_bytes -= old_r.nbytes + old_c.nbytes
    return rr, cc


async def read_warped(
    url: str,
    *,
    label: str,
    auth_header: str | None,
    native: Native,
    target: Target,
    rows: slice,
    cols: slice,
    dtype: np.dtype,
    fill,
) -> np.ndarray:
    """Read output window ``rows, cols`` of a file on another grid (nearest neighbour).

    Parameters
    ----------
    url, label, auth_header
        As :func:`xarray_terrascope.cog.read_aligned`.
    native : Native
        The file's grid from the item's metadata (checked against the header).
    target : Target
        The output grid.
    rows, cols : slice
        The output window.
    dtype : numpy.dtype
        Storage dtype.
    fill
        Value of output pixels outside the file.

    Raises
    ------
    GridMismatch
        When the header disagrees with ``native`` or is not a north-up square-pixel grid
        (the caller reads the file through GDAL).
    AuthenticationError, ReadError
        As :func:`xarray_terrascope._transport.get_range`.
    """
    a, b, c, d, e, f = native.transform
    if b or d or abs(a + e) > 1e-9 * abs(a):
        raise GridMismatch(f"{label}: rotated or non-square pixels")
    grid = Grid(native.epsg, c, f, a, 0, 0)
    rr, cc = await _pixel_map_async(native, target, rows, cols)

    async def body(tiff, source):
        ifd = tiff.ifds[0]
        check_grid(ifd, grid, native.shape, np.dtype(dtype), label)
        out = np.full(rr.shape, fill, dtype=dtype)
        inside = rr >= 0
        if not inside.any():
            return out
        th, tw = ifd.tile_height, ifd.tile_width
        src_r, src_c = rr[inside], cc[inside]
        tiles_across = -(-native.shape[1] // tw)
        index = (src_r // th).astype(np.int64) * tiles_across + src_c // tw
        needed = np.unique(index)  # the tiles holding a needed pixel, sorted
        xy = [(int(k % tiles_across), int(k // tiles_across)) for k in needed]
        edge = _edge_tiles(rr, cc, th, tw)
        blocks = await tiles_of(tiff, source, xy, lambda tx, ty: (tx, ty) in edge)
        stack = np.full((len(xy), th, tw), fill, dtype=dtype)
        for i, block in enumerate(blocks):
            stack[i, : block.shape[0], : block.shape[1]] = block.view(dtype)
        out[inside] = stack[np.searchsorted(needed, index), src_r % th, src_c % tw]
        return out

    return await with_header(url, label, auth_header, body)


async def _pixel_map_async(native, target, rows, cols):
    """:func:`pixel_map` off the event loop, computed once when many reads want it."""
    key = (native, target, rows.start, rows.stop, cols.start, cols.stop)
    pending = _aio.loop_state().setdefault("pixel_maps", {})
    future = pending.get(key)
    if future is None:
        loop = asyncio.get_running_loop()
        future = pending[key] = loop.run_in_executor(None, pixel_map, native, target, rows, cols)
        future.add_done_callback(lambda _: pending.pop(key, None))
    return await asyncio.shield(future)


def _edge_tiles(rr: np.ndarray, cc: np.ndarray, th: int, tw: int) -> set[tuple[int, int]]:
    """Tiles under the window's outer pixels: neighbouring windows need them too."""
    ring_r = np.concatenate([rr[0], rr[-1], rr[:, 0], rr[:, -1]])
    ring_c = np.concatenate([cc[0], cc[-1], cc[:, 0], cc[:, -1]])
    ok = ring_r >= 0
    return {(int(c) // tw, int(r) // th) for r, c in zip(ring_r[ok], ring_c[ok], strict=True)}
