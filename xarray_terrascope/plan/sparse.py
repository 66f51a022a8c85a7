"""Sparse-read planning: which windows of a cube to read for a set of geometries.

The cube's pixel grid is cut into square blocks of ``block_size`` pixels whose origin
sits on the internal tiling of the COGs behind the cube (when it is known), so a block
never straddles a COG tile of the aligned files. Every block that a geometry's pixel
bounding box touches is read once, as the tight window around the geometries' pixels
inside it, for all the geometries in it; a geometry that spans several blocks gets its
pixels from each of them.

Only this planning is written here; which pixels a geometry covers is decided by
:mod:`rasterio.features` in :mod:`xarray_terrascope.analysis.zonal`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pystac
from affine import Affine

__all__ = ["Block", "Plan", "grid_origin", "item_grids", "pixel_boxes", "plan_blocks"]

#: Pixels per side of a read block: the sandbox's and GDAL's default COG tiling.
#: Terrascope's own COGs use larger internal tiles; pass theirs when you know them.
DEFAULT_BLOCK_SIZE = 256


@dataclass(frozen=True)
class Block:
    """One window to read and the geometries (by position) whose pixels are in it.

    Attributes
    ----------
    rows, cols : tuple of int
        ``(start, stop)`` pixel ranges of the window on the cube's grid.
    members : tuple of int
        Positions of the geometries whose bounding box meets the window, ascending.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    members: tuple[int, ...]

    @property
    def pixels(self) -> int:
        """Pixels of the window (per time step)."""
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


@dataclass(frozen=True)
class Plan:
    """The blocks to read and, per geometry, the blocks holding its pixels.

    Attributes
    ----------
    blocks : list of Block
        Row-major order of the block grid.
    of_geometry : list of tuple of int
        For each geometry, the indices into ``blocks`` of its blocks (empty when its
        bounding box misses the cube).
    """

    blocks: list[Block]
    of_geometry: list[tuple[int, ...]] = field(default_factory=list)

    def window_pixels(self) -> int:
        """Pixels read per time step: the sum of the windows' sizes."""
        return sum(b.pixels for b in self.blocks)


def pixel_boxes(
    bounds: npt.ArrayLike, transform: Affine, shape: tuple[int, int], *, pad: int = 0
) -> npt.NDArray[np.int64]:
    """Pixel ranges ``(row0, row1, col0, col1)`` holding each geometry's bounds.

    Parameters
    ----------
    bounds : array_like
        ``(n, 4)`` ``minx, miny, maxx, maxy`` in the cube's CRS (NaN for empty geometries).
    transform : affine.Affine
        The cube's north-up transform.
    shape : tuple of int
        ``(height, width)`` of the cube.
    pad : int
        Pixels added on every side (``all_touched`` rasterisation may take a pixel an
        edge only grazes).

    Returns
    -------
    numpy.ndarray
        ``(n, 4)`` int64, clipped to the grid; ``row0 >= row1`` or ``col0 >= col1``
        for a geometry outside it.

    Examples
    --------
    >>> from affine import Affine
    >>> pixel_boxes(np.array([[15.0, 75.0, 38.0, 95.0]]), Affine(10, 0, 0, 0, -10, 100),
    ...             (10, 10)).tolist()
    [[0, 3, 1, 4]]
    """
    if transform.b or transform.d or transform.a <= 0:
        raise ValueError("pixel_boxes needs a north-up grid without rotation")
    height, width = shape
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    # a 2-D array's .all(axis=1) is an array (numpy's stubs say: a bool or an array)
    empty = cast("npt.NDArray[np.bool_]", ~np.isfinite(b).all(axis=1))
    b = np.where(empty[:, None], 0.0, b)
    col0 = (b[:, 0] - transform.c) / transform.a
    col1 = (b[:, 2] - transform.c) / transform.a
    row_a = (b[:, 3] - transform.f) / transform.e
    row_b = (b[:, 1] - transform.f) / transform.e
    r0, r1 = np.minimum(row_a, row_b), np.maximum(row_a, row_b)
    edges = np.column_stack(
        [np.floor(r0) - pad, np.ceil(r1) + pad, np.floor(col0) - pad, np.ceil(col1) + pad]
    )
    boxes: npt.NDArray[np.int64]
    boxes = np.nan_to_num(edges, nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
    boxes[:, 0:2] = boxes[:, 0:2].clip(0, height)
    boxes[:, 2:4] = boxes[:, 2:4].clip(0, width)
    boxes[empty] = 0
    return boxes


def grid_origin(
    transform: Affine,
    grids: Sequence[tuple[int, Sequence[float]]],
    epsg: int,
    block_size: int,
) -> tuple[int, int]:
    """Block origin ``(row, col)`` in ``[0, block_size)`` matching the files' tiling.

    Parameters
    ----------
    transform : affine.Affine
        The cube's transform.
    grids : sequence of (int, sequence of float)
        ``(epsg, proj:transform)`` of the files behind the cube (one per file).
    epsg : int
        The cube's EPSG code: files in another CRS are warped, their tiling is moot.
    block_size : int
        Block side in pixels.

    Returns
    -------
    tuple of int
        The offset shared by most files whose pixels sit on the cube's grid, or
        ``(0, 0)`` (the cube's own corner) when none does.

    Examples
    --------
    >>> from affine import Affine
    >>> grid_origin(Affine(10, 0, 1000, 0, -10, 9000), [(32631, (10, 0, 900, 0, -10, 9020))],
    ...             32631, 256)
    (254, 246)
    """
    res_x, res_y = transform.a, transform.e
    votes: Counter[tuple[int, int]] = Counter()
    for file_epsg, t in grids:
        if file_epsg != epsg or len(t) < 6 or t[1] or t[3]:
            continue
        if not (math.isclose(t[0], res_x) and math.isclose(t[4], res_y)):
            continue
        col = (t[2] - transform.c) / res_x
        row = (t[5] - transform.f) / res_y
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            continue
        votes[round(row) % block_size, round(col) % block_size] += 1
    if not votes:
        return 0, 0
    return max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0]


def plan_blocks(
    boxes: npt.NDArray[np.integer[Any]],
    block_size: int,
    origin: tuple[int, int] = (0, 0),
    *,
    max_run: int = 1,
) -> Plan:
    """Group the geometries' pixel boxes into block windows, each read once.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(n, 4)`` from :func:`pixel_boxes`.
    block_size : int
        Block side in pixels.
    origin : tuple of int
        ``(row, col)`` of a block corner on the cube's grid (see :func:`grid_origin`).
    max_run : int
        Up to this many touched blocks side by side in a block row make one window. A
        row of adjacent tiles is one byte range in a COG: one request instead of
        several, the same bytes. Bounds the memory of a window read.

    Returns
    -------
    Plan
        One :class:`Block` per run of touched blocks, its window the bounding box of
        its geometries' pixel boxes inside the run's blocks.

    Examples
    --------
    >>> plan = plan_blocks(np.array([[0, 10, 250, 260], [5, 8, 5, 8]]), 256)
    >>> [(b.rows, b.cols, b.members) for b in plan.blocks]
    [((0, 10), (5, 256), (0, 1)), ((0, 10), (256, 260), (0,))]
    >>> plan.of_geometry
    [(0, 1), (0,)]
    >>> [(b.rows, b.cols) for b in plan_blocks(np.array([[0, 10, 250, 260]]), 256,
    ...                                        max_run=2).blocks]
    [((0, 10), (250, 260))]
    """
    oy, ox = origin
    cells: dict[tuple[int, int], list[int]] = {}
    spans: dict[tuple[int, int], list[int]] = {}
    for g, (r0, r1, c0, c1) in enumerate(np.asarray(boxes, dtype=np.int64).tolist()):
        if r0 >= r1 or c0 >= c1:
            continue
        for br in range((r0 - oy) // block_size, (r1 - 1 - oy) // block_size + 1):
            top = oy + br * block_size
            rr = (max(r0, top), min(r1, top + block_size))
            for bc in range((c0 - ox) // block_size, (c1 - 1 - ox) // block_size + 1):
                left = ox + bc * block_size
                cc = (max(c0, left), min(c1, left + block_size))
                cells.setdefault((br, bc), []).append(g)
                span = spans.get((br, bc))
                if span is None:
                    spans[br, bc] = [rr[0], rr[1], cc[0], cc[1]]
                else:
                    span[0], span[1] = min(span[0], rr[0]), max(span[1], rr[1])
                    span[2], span[3] = min(span[2], cc[0]), max(span[3], cc[1])
    runs: list[list[tuple[int, int]]] = []
    for key in sorted(cells):
        last = runs[-1][-1] if runs else None
        if last and last[0] == key[0] and last[1] + 1 == key[1] and len(runs[-1]) < max_run:
            runs[-1].append(key)
        else:
            runs.append([key])
    blocks: list[Block] = []
    of_geometry: list[list[int]] = [[] for _ in range(len(boxes))]
    for run in runs:
        r0 = min(spans[k][0] for k in run)
        r1 = max(spans[k][1] for k in run)
        members = tuple(sorted({g for k in run for g in cells[k]}))
        for g in members:
            of_geometry[g].append(len(blocks))
        blocks.append(Block((r0, r1), (spans[run[0]][2], spans[run[-1]][3]), members))
    return Plan(blocks, [tuple(b) for b in of_geometry])


def item_grids(
    items: Sequence[pystac.Item], assets: Sequence[str]
) -> list[tuple[int, list[float]]]:
    """``(epsg, proj:transform)`` of the given assets of STAC items (where known)."""
    grids: list[tuple[int, list[float]]] = []
    for item in items:
        props = item.properties
        for key in assets:
            asset = item.assets.get(key)
            if asset is None:
                continue
            extra = asset.extra_fields
            transform = extra.get("proj:transform") or props.get("proj:transform")
            code: Any = (  # an int, an "EPSG:n" string, or None
                extra.get("proj:epsg")
                or props.get("proj:epsg")
                or extra.get("proj:code")
                or props.get("proj:code")
            )
            if isinstance(code, str) and code.upper().startswith("EPSG:"):
                code = code.split(":", 1)[1]
            try:
                epsg = int(code)
            except (TypeError, ValueError):
                continue
            if transform:
                grids.append((epsg, [float(v) for v in transform[:6]]))
    return grids
