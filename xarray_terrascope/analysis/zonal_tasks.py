"""The task graph of :func:`xarray_terrascope.analysis.zonal.zonal_stats`: window reads, pixels
per geometry, statistics per batch of geometries.

One task per (variable, block window, group of time steps) reads the window and keeps,
per geometry, the values of the pixels it covers (:func:`rasterio.features.rasterize`,
as xvec's ``method="rasterize"``, or one :func:`rasterio.features.geometry_mask` per
geometry for ``method="iterate"``). One task per (batch of nearby geometries, group of
time steps) joins each geometry's pieces and computes its statistics over the valid
(not NaN) values.

The window is read from the lazy cube: for a variable as the engine made it with
``chunks={}``, the lazily indexed array that xarray wrapped in dask is indexed once per
window (reading a window chunk by chunk would fetch a COG tile twice where a chunk
boundary cuts it); a dask array changed since (sliced, transposed, computed on) is
indexed through its own chunks; a cube opened with ``chunks=None`` is indexed lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from affine import Affine

from xarray_terrascope.cube.decode import Decoder
from xarray_terrascope.plan import sparse

__all__ = ["STEP_GROUP", "batches", "variable_stats"]

#: Time steps (steps of the first non-spatial dimension) per read and statistics task.
STEP_GROUP = 8


def _engine_source(data: dsa.Array) -> Any:
    """The lazily indexed array behind a dask array as xarray made it (``chunks={}``).

    xarray wraps a backend array with ``dask.array.from_array``, keeping it in the graph
    under ``original-<name>``. Indexing it reads one window for all time steps in one
    call, instead of one call per chunk (which would fetch a COG tile twice where a
    chunk boundary cuts it). None when the array was transformed since (sliced,
    transposed...): then its own chunks are used.
    """
    source = data.dask.get(f"original-{data.name}") if isinstance(data.name, str) else None
    if source is None or getattr(source, "shape", None) != data.shape:
        return None
    return source


def _window_source(
    variable: xr.Variable,
    rows: tuple[int, int],
    cols: tuple[int, int],
    source: Any,
    steps: slice | None,
) -> Any:
    """The window of the lazy variable (``steps`` of its first dimension, e.g. time), as a
    dask array or a delayed read."""
    lead = [steps] if steps is not None else []
    key = (*lead, *[slice(None)] * (variable.ndim - 2 - len(lead)), slice(*rows), slice(*cols))
    if source is not None:
        return dask.delayed(_index)(source, key)
    window = variable[key]
    if window.chunks is not None:  # (``.data`` of a lazily indexed variable would load it)
        return window.data
    return dask.delayed(_load)(window)


def _index(source: Any, key: tuple) -> np.ndarray:
    return np.asarray(source[key])


def _load(window: xr.Variable) -> np.ndarray:
    return np.asarray(window.values)


def _cover(
    geometries: Sequence[Any],
    shape: tuple[int, int],
    transform: tuple[float, ...],
    all_touched: bool,
    method: str,
) -> list[np.ndarray]:
    """Per geometry, the flat indices of the window's pixels it covers.

    ``transform`` is the window's, as 6 floats (an ``Affine`` is a namedtuple, which a
    task graph may take apart).
    """
    from rasterio import features

    window = Affine(*transform)
    if method == "rasterize":
        # xvec's rule: burnt in order, a pixel belongs to the last geometry covering it
        labels = features.rasterize(
            ((g, k) for k, g in enumerate(geometries)),
            out_shape=shape,
            transform=window,
            fill=-1,
            all_touched=all_touched,
            dtype="int32",
        ).ravel()
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(len(geometries) + 1))
        return [order[starts[k] : starts[k + 1]] for k in range(len(geometries))]
    return [
        np.flatnonzero(
            features.geometry_mask(
                [g], out_shape=shape, transform=window, invert=True, all_touched=all_touched
            )
        )
        for g in geometries
    ]


def _pieces(
    values: np.ndarray, cover: Sequence[np.ndarray], decoder: Decoder | None = None
) -> list[np.ndarray]:
    """Per geometry of a window, the ``(other, pixels)`` values it covers (decoded by
    ``decoder`` first: stored numbers, their no-data value NaN)."""
    if decoder is not None:
        values = decoder(np.asarray(values))
    height, width = values.shape[-2:]
    flat = values.reshape(-1, height * width)
    return [flat[:, idx] for idx in cover]


def _reduce(
    values: np.ndarray, sizes: np.ndarray, stats: Sequence[str], dtype: np.dtype
) -> np.ndarray:
    """``(geometries, len(stats), other)`` statistics of consecutive pixel segments.

    ``values`` is ``(other, pixels)``: the pixels of every geometry one after the other,
    ``sizes`` how many each has. Vectorised over geometries with ``reduceat``; only the
    median loops over them.
    """
    other = values.shape[0]
    n = len(sizes)
    out = np.full((n, len(stats), other), np.nan, dtype=np.float64)
    has = sizes > 0
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)[has]
    valid = ~np.isnan(values)
    zeroed = np.where(valid, values, 0.0)

    def per_segment(ufunc, array):  # (other, n) for the geometries with pixels
        return ufunc.reduceat(array, starts, axis=1) if starts.size else np.zeros((other, 0))

    count = np.zeros((other, n))
    count[:, has] = per_segment(np.add, valid.astype(np.float64))
    total = np.zeros((other, n))
    total[:, has] = per_segment(np.add, zeroed)
    # all-NaN segments give NaN, on purpose (errstate is thread-safe; warnings filters are
    # not, so nothing here relies on them)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        for s, stat in enumerate(stats):
            if stat == "count":
                column = count
            elif stat == "valid_fraction":
                column = count / sizes[None, :]
            elif stat == "sum":
                column = np.where(has[None, :], total, np.nan)
            elif stat == "mean":
                column = mean
            elif stat == "std":
                squares = np.zeros((other, n))
                squares[:, has] = per_segment(np.add, zeroed * zeroed)
                column = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
            elif stat in ("min", "max"):
                column = np.full((other, n), np.nan)
                ufunc = np.fmin if stat == "min" else np.fmax  # fmin/fmax skip NaN
                column[:, has] = per_segment(ufunc, values)
            else:  # median
                column = np.full((other, n), np.nan)
                edges = np.concatenate([[0], np.cumsum(sizes)])
                for g in np.flatnonzero(has):
                    segment = values[:, edges[g] : edges[g + 1]]
                    some = count[:, g] > 0  # nanmedian warns on all-NaN rows: skip them
                    column[some, g] = np.nanmedian(segment[some], axis=1)
            out[:, s, :] = column.T
    return out.astype(dtype)


def variable_stats(
    variable: xr.Variable,
    plan: sparse.Plan,
    batches: list[np.ndarray],
    geometries: np.ndarray,
    transform: Affine,
    stats: Sequence[str],
    all_touched: bool,
    method: str,
    dtype: np.dtype,
    steps: slice | None = None,
    decoder: Decoder | None = None,
) -> dsa.Array:
    """``(geometry, stat, *other)`` dask array for one ``(..., y, x)`` variable; only the
    ``steps`` (a slice with step 1) of its first dimension when given; its windows
    decoded by ``decoder`` (stored numbers of a ``decode=False`` cube) when given."""
    other_shape = tuple(variable.shape[:-2])
    if other_shape:  # read and reduce the first dimension (time) in groups: more tasks
        first, stop, stride = (slice(None) if steps is None else steps).indices(other_shape[0])
        if stride != 1:
            raise ValueError(f"steps must be a slice with step 1, got {steps!r}")
        groups: list[slice | None] = [
            slice(i, min(i + STEP_GROUP, stop)) for i in range(first, stop, STEP_GROUP)
        ] or [slice(first, first)]
    else:
        groups = [None]
    source = None
    if variable.chunks is not None:
        found = _engine_source(variable.data)
        if found is not None:  # one graph node, shared by the window reads
            source = dask.delayed(found, name=f"terrascope-source-{variable.data.name}")
    pieces = []  # [block][group]
    for block in plan.blocks:
        local = tuple(transform @ Affine.translation(block.cols[0], block.rows[0]))[:6]
        window_shape = (block.rows[1] - block.rows[0], block.cols[1] - block.cols[0])
        members = geometries[list(block.members)].tolist()
        cover = dask.delayed(_cover)(members, window_shape, local, all_touched, method)
        pieces.append(
            [
                dask.delayed(_pieces)(
                    _window_source(variable, block.rows, block.cols, source, group),
                    cover,
                    decoder,
                )
                for group in groups
            ]
        )
    # _cover numbers members 0..n-1 within a block: translate to global ids
    position = [{g: k for k, g in enumerate(b.members)} for b in plan.blocks]
    arrays = []
    for batch in batches:
        used = sorted({p for g in batch for p in plan.of_geometry[g]})
        local_pos = {p: i for i, p in enumerate(used)}
        ids = [[position[p][g] for p in plan.of_geometry[g]] for g in batch]
        positions = [[local_pos[p] for p in plan.of_geometry[g]] for g in batch]
        parts = []
        for k, group in enumerate(groups):
            shape = other_shape
            if group is not None:
                shape = (len(range(*group.indices(other_shape[0]))), *other_shape[1:])
            task = dask.delayed(_batch_stats)(
                ids, positions, shape, list(stats), dtype, *[pieces[p][k] for p in used]
            )
            parts.append(dsa.from_delayed(task, (len(batch), len(stats), *shape), dtype=dtype))
        arrays.append(dsa.concatenate(parts, axis=2) if len(parts) > 1 else parts[0])
    return dsa.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]


def _batch_stats(
    member_ids: Sequence[Sequence[int]],
    blocks_of: Sequence[Sequence[int]],
    other_shape: tuple[int, ...],
    stats: Sequence[str],
    dtype: np.dtype,
    *pieces: list[np.ndarray],
) -> np.ndarray:
    """Statistics of a batch of geometries from the pieces of their blocks."""
    other = int(np.prod(other_shape, dtype=np.int64))
    parts = [
        pieces[p][k].reshape(other, -1)
        for ids, positions in zip(member_ids, blocks_of, strict=True)
        for k, p in zip(ids, positions, strict=True)
    ]
    sizes = np.array(
        [
            sum(pieces[p][k].shape[-1] for k, p in zip(ids, positions, strict=True))
            for ids, positions in zip(member_ids, blocks_of, strict=True)
        ],
        dtype=np.int64,
    )
    values = (
        np.concatenate(parts, axis=1).astype(np.float64, copy=False)
        if parts
        else np.empty((other, 0))
    )
    out = _reduce(values, sizes, stats, dtype)
    return out.reshape((len(member_ids), len(stats), *other_shape))


def batches(plan: sparse.Plan, n: int, size: int) -> list[np.ndarray]:
    """Geometry positions in batches of spatial neighbours (by first block)."""
    first = np.array([b[0] if b else -1 for b in plan.of_geometry], dtype=np.int64)
    order = np.argsort(first, kind="stable")
    return [order[i : i + size] for i in range(0, n, size)]
