"""Area resamplings in memory: each cube pixel from the ``k`` x ``k`` file pixels under it.

When the cube's grid is coarser than a file's by a whole factor ``k`` and the cube's
corner lies on the file's pixel edges, in the same CRS (a 10 m band on a 20 m or 60 m
cube, a 20 m band on a 60 m cube), every cube pixel covers exactly ``k`` x ``k`` file
pixels. The async engine reads those pixels (the file's tiles, as an aligned read on the
file's own grid: :func:`~xarray_terrascope.engine.cog.read_aligned`) and
:func:`coarsen` reduces each block as GDAL's warper does (``gdalwarpkernel.cpp``; the
tests compare with :func:`rasterio.warp.reproject` of the same files):

- no-data pixels, and pixels outside the file, are left out; a block with none left is
  no data;
- ``average``: the mean of the rest, updated value after value as GDAL does (so that a
  mean halfway between two integers rounds as GDAL's); ``rms``: the root of their mean
  square; ``sum``: their sum; ``min``, ``max``;
- ``med``, ``q1``, ``q3``: element ``ceil(q n) - 1`` of the ``n`` sorted values (the
  lower median of an even count, as GDAL's weighted quantile with equal weights);
- ``mode``: the most frequent value; of equally frequent ones, the one that reached that
  count first, the block read row by row;
- computed in float64 (no integer overflow) and, for an integer stored type, rounded
  half up (``floor(x + 0.5)``) and clipped to the type, as GDAL stores into an integer
  band; a result equal to the no-data value moves one step away from it (GDAL's
  ``AvoidNoData``: 32767 becomes 32766).

Values stay stored digital numbers: reducing before the decoding (scale and offset,
:mod:`xarray_terrascope.cube.decode`) gives the same mean as decoding first, up to the
rounding of the mean to a whole stored number (half a DN at most: 0.00005 of
reflectance for Sentinel-2), which GDAL's path shares.

One difference from GDAL, on purpose: GDAL's warper lets the file's first row and column
reach the cube pixels just above and left of the file (their source window is clamped
onto the file); here a cube pixel outside the file is no data.

Not here: a cube *finer* than the file at a whole ratio (a 20 m band on a 10 m cube) is
an exact replication of each file pixel for every area method but ``sum``, the
nearest-neighbour path of :mod:`xarray_terrascope.engine.warp`; ``bilinear``,
``cubic``, ``cubic_spline`` and ``lanczos``, ``sum`` onto a finer grid, and
grids at no whole ratio or in another CRS with a method other than nearest keep GDAL's
warper (:mod:`xarray_terrascope.engine.gdal`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

from xarray_terrascope.engine.cog import read_aligned
from xarray_terrascope.engine.requests import CoarsenRead

__all__ = ["COARSENING", "REPLICATING", "CoarsenReader", "coarsen", "read_coarsened"]

#: GDAL's quantile of each order-statistic method.
QUANTILES = {"q1": 0.25, "med": 0.5, "q3": 0.75}
#: Resamplings :func:`coarsen` computes (GDAL's names; nearest is the warp's).
COARSENING = frozenset({"average", "rms", "sum", "min", "max", "mode", *QUANTILES})
#: Resamplings that copy the file pixel under a finer cube's pixel (as nearest does).
REPLICATING = (COARSENING - {"sum"}) | {"nearest"}
#: Booleans compared at once by ``mode`` (bounds its memory: about this many bytes).
MODE_CHUNK = 32 * 2**20


def coarsen(
    values: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    factor: int,
    method: str,
    fill: Any,
    nodata: Any = None,
) -> npt.NDArray[Any]:
    """Reduce every ``factor`` x ``factor`` block of ``values`` to one value, GDAL's way.

    Parameters
    ----------
    values : numpy.ndarray
        Stored values, ``(h * factor, w * factor)``.
    valid : numpy.ndarray
        bool, ``values``'s shape: the pixels that count (not no data, inside the file).
    factor : int
    method : str
        One of :data:`COARSENING`.
    fill
        The result of a block with no valid pixel.
    nodata
        The stored value of no data (None: none): a block's result equal to it moves one
        step away (GDAL's ``AvoidNoData``), so that it is not taken for no data.

    Returns
    -------
    numpy.ndarray
        ``(h, w)``, ``values``'s dtype.

    Examples
    --------
    >>> v = np.array([[1, 2, 7, 7], [3, 4, 7, 9]], np.int16)
    >>> ok = v != 9
    >>> coarsen(v, ok, 2, "average", 9).tolist(), coarsen(v, ok, 2, "med", 9).tolist()
    ([[3, 7]], [[2, 7]])
    """
    k = factor
    h, w = values.shape[0] // k, values.shape[1] // k

    def blocks(a: npt.NDArray[Any]) -> npt.NDArray[Any]:  # (h, w, k * k), each row-major
        return a.reshape(h, k, w, k).transpose(0, 2, 1, 3).reshape(h, w, k * k)

    v = blocks(values).astype(np.float64)
    ok = blocks(valid)
    count = ok.sum(axis=2)
    if method == "average":
        result = _running_mean(v, ok)
    elif method in ("rms", "sum"):
        x = np.where(ok, v, 0.0)
        total = (x * x if method == "rms" else x).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = total if method == "sum" else np.sqrt(total / count)
    elif method == "min":
        result = np.where(ok, v, np.inf).min(axis=2)
    elif method == "max":
        result = np.where(ok, v, -np.inf).max(axis=2)
    elif method in QUANTILES:
        ordered = np.sort(np.where(ok, v, np.inf), axis=2)
        index = np.clip(np.ceil(QUANTILES[method] * count).astype(np.intp) - 1, 0, k * k - 1)
        result = np.take_along_axis(ordered, index[..., None], axis=2)[..., 0]
    elif method == "mode":
        result = _mode(v, ok)
    else:
        raise ValueError(f"coarsen does not compute {method!r}; it computes {sorted(COARSENING)}")
    out = _stored(result, values.dtype)
    if nodata is not None:
        _avoid(out, nodata)
    out[count == 0] = fill
    return out


def _running_mean(v: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """The mean of the valid values of each block (last axis), updated value after value
    as GDAL's warper does (``mean += (1 / n) * (v - mean)``): the same float64 result,
    so that a mean halfway between two integers rounds the same way."""
    mean = np.zeros(v.shape[:2])
    seen = np.zeros(v.shape[:2])
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(v.shape[2]):
            here = ok[..., i]
            seen += here
            mean = np.where(here, mean + (1.0 / seen) * (v[..., i] - mean), mean)
    return mean


def _avoid(out: npt.NDArray[Any], nodata: Any) -> None:
    """A computed value equal to ``nodata`` moves one step away, as GDAL's warper moves
    it (an integer down, or up from the type's lowest; a float to the next float up,
    or down from the type's largest)."""
    hit = out == nodata
    if not hit.any():
        return
    if out.dtype.kind in "iu":
        lowest = np.iinfo(out.dtype).min
        out[hit] = lowest + 1 if nodata == lowest else out[hit] - 1
    else:
        largest = np.finfo(out.dtype).max
        towards = out.dtype.type(0) if nodata == largest else largest
        out[hit] = np.nextafter(out[hit], towards)


def _mode(v: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Per block (last axis), the value whose count reaches the highest count first."""
    h, w, n = v.shape
    out = np.zeros((h, w))
    before = np.tril(np.ones((n, n), bool))  # [j, i]: i comes no later than j
    step = max(1, MODE_CHUNK // max(1, w * n * n))
    for r0 in range(0, h, step):
        vv, oo = v[r0 : r0 + step], ok[r0 : r0 + step]
        same = (vv[..., :, None] == vv[..., None, :]) & oo[..., None, :] & before
        seen = same.sum(axis=-1) * oo  # which occurrence of its value each pixel is
        first = np.argmax(seen == seen.max(axis=-1, keepdims=True), axis=-1)
        out[r0 : r0 + step] = np.take_along_axis(vv, first[..., None], axis=-1)[..., 0]
    return out


def _stored(result: npt.NDArray[np.float64], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``result`` in the stored type: integers rounded half up and clipped, as GDAL."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            rounded = np.clip(np.floor(result + 0.5), info.min, info.max)
        stored: npt.NDArray[Any] = np.nan_to_num(rounded, nan=0.0).astype(dtype)
        return stored
    return result.astype(dtype)


def _valid(request: CoarsenRead, values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """The pixels of the file window that count: inside the file, not no data."""
    source = request.source
    height, width = source.shape
    rows = np.arange(source.window.row0, source.window.row1) + source.placement.row_offset
    cols = np.arange(source.window.col0, source.window.col1) + source.placement.col_offset
    valid = np.outer((rows >= 0) & (rows < height), (cols >= 0) & (cols < width))
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)
    if request.nodata is not None:  # a NaN nodata compares unequal to everything
        valid &= values != request.nodata
    return valid


def _reduce(request: CoarsenRead, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    valid = _valid(request, values)
    return coarsen(values, valid, request.factor, request.method, request.fill, request.nodata)


async def read_coarsened(request: CoarsenRead) -> npt.NDArray[Any]:
    """The window's values from a file ``request.factor`` times finer than the cube,
    reduced with ``request.method`` (off the event loop).

    Raises
    ------
    GridMismatch
        When the header disagrees with the item (the caller reads the file through GDAL).
    AuthenticationError, ReadError
        As :func:`xarray_terrascope.engine.transport.get_ranges`.
    """
    values = await read_aligned(request.source)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _reduce, request, values)


class CoarsenReader:
    """The :class:`~xarray_terrascope.engine.requests.Reader` of :class:`CoarsenRead`."""

    async def read(self, request: CoarsenRead) -> npt.NDArray[Any]:
        return await read_coarsened(request)
