"""The chunk layout of a lazy cube: spatial chunks whose edges fall on the files' own
pixel grid (so on COG tile edges), and the number of dates per partition. Pure
functions of the plan's grid."""

from __future__ import annotations

import numpy as np

from xarray_terrascope.plan.planner import CubePlan

__all__ = [
    "DEFAULT_CHUNKSIZE",
    "MAX_DATES_PER_PARTITION",
    "PARTITION_BYTES",
    "dates_per_partition",
    "file_grid_phase",
    "spatial_chunks",
]

#: Spatial chunk size (pixels) of the stacking grid (see :func:`spatial_chunks`).
DEFAULT_CHUNKSIZE = 1024
#: Decoded bytes a ``chunks={}`` partition aims at: its dates are read concurrently, so
#: more dates per partition means more requests in flight on few cores.
PARTITION_BYTES = 16 * 2**20
#: The most dates in one partition (long series still give several partitions). A field
#: of 351 x 433 px takes 27 dates (16 MiB): its 74-date season read 6-10 % faster in 3
#: partitions than in 10 of 8 dates (fewer dask tasks; interleaved runs on the sandbox).
MAX_DATES_PER_PARTITION = 32


def dates_per_partition(chunk: tuple[int, int]) -> int:
    """Dates per ``chunks={}`` partition of spatial ``chunk`` (its largest ``(height,
    width)``): about :data:`PARTITION_BYTES` decoded (float32) per partition, between 1
    and :data:`MAX_DATES_PER_PARTITION`.

    Examples
    --------
    >>> dates_per_partition((1024, 1024)), dates_per_partition((351, 433))
    (4, 27)
    """
    pixels = chunk[0] * chunk[1]
    return max(1, min(MAX_DATES_PER_PARTITION, PARTITION_BYTES // (4 * max(pixels, 1))))


def spatial_chunks(size: int, chunksize: int, phase: int = 0) -> tuple[int, ...]:
    """Chunks along ``y`` or ``x``: ``chunksize`` each, their edges at ``phase`` plus
    multiples of ``chunksize`` (on the files' own pixel grid, see :func:`file_grid_phase`),
    and a piece under a quarter of ``chunksize`` at either end joined to its neighbour (a
    thin row of chunks would read the tiles of the same files again, for few pixels). A
    size that one chunk of up to 1.25 x ``chunksize`` holds stays one chunk.

    Examples
    --------
    >>> spatial_chunks(1141, 1024), spatial_chunks(2100, 1024), spatial_chunks(1337, 1024)
    ((1141,), (1024, 1076), (1024, 313))
    >>> spatial_chunks(2100, 1024, phase=400), spatial_chunks(2100, 1024, phase=100)
    ((400, 1024, 676), (1124, 976))
    >>> spatial_chunks(1141, 1024, phase=400)
    (1141,)
    """
    if size < chunksize + chunksize // 4:
        return (size,)
    edges = [0, *range(phase % chunksize or chunksize, size, chunksize), size]
    sizes = np.diff(edges).tolist()
    if len(sizes) > 1 and sizes[-1] < chunksize // 4:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    if len(sizes) > 1 and sizes[0] < chunksize // 4:
        sizes[:2] = [sizes[0] + sizes[1]]
    return tuple(sizes)


def file_grid_phase(plan: CubePlan, chunksize: int) -> tuple[int, int]:
    """``(row, col)`` of the output grid's first chunk edge on the files' own pixel grid.

    When ``chunksize`` is a multiple of the files' COG tile size (the default 1024 is,
    for tiles of 256, 512 or 1024 px; the sandbox's are 256), chunk edges at multiples of
    ``chunksize`` from the files' corner are also tile edges: no tile straddles two
    chunks, so each tile is fetched by one task, not by the tasks on both sides (kept in
    memory for the other side in one process, read twice by two cluster workers). Files
    on several grids (a cube across two MGRS tiles) vote with the area they give the cube;
    with no file on the output grid (another CRS or resolution) the grid starts at the
    cube's corner, ``(0, 0)``.
    """
    votes: tuple[dict[int, float], dict[int, float]] = ({}, {})  # area per phase
    west, south, east, north = plan.bounds
    for item_index, per_asset in enumerate(plan.item_bounds):
        for asset_index, bounds in enumerate(per_asset):
            if bounds is None:
                continue
            offset = plan.pixel_offset(item_index, asset_index)
            if offset is None:
                continue
            area = max(0.0, min(east, bounds[2]) - max(west, bounds[0])) * max(
                0.0, min(north, bounds[3]) - max(south, bounds[1])
            )
            for axis, off in enumerate(offset):
                phase = -off % chunksize
                votes[axis][phase] = votes[axis].get(phase, 0.0) + area
    # the phase of the largest area (the first one seen of equal areas)
    row, col = (max(v, key=v.__getitem__) if v else 0 for v in votes)
    return row, col
