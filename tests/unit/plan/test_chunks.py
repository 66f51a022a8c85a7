"""The chunk layout of a lazy cube (``plan/chunks.py``): spatial chunks on the files'
pixel grid, the grid's phase voted by the files, dates per partition. Expected values are
worked out by hand from the rules in the docstrings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xarray_terrascope.plan.chunks import (
    MAX_DATES_PER_PARTITION,
    PARTITION_BYTES,
    dates_per_partition,
    file_grid_phase,
    spatial_chunks,
)
from xarray_terrascope.plan.grids import NativeGrid
from xarray_terrascope.plan.planner import CubePlan

# --- spatial_chunks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunksize", "phase", "chunks"),
    [
        # up to 1.25 x chunksize (exclusive): one chunk
        (1279, 1024, 0, (1279,)),
        (1280, 1024, 0, (1024, 256)),  # a quarter exactly stays a chunk of its own
        (1024, 1024, 0, (1024,)),
        (10, 1024, 0, (10,)),
        (0, 1024, 0, (0,)),
        # a last piece under a quarter joins its neighbour
        (2100, 1024, 0, (1024, 1076)),
        (2303, 1024, 0, (1024, 1279)),
        (2304, 1024, 0, (1024, 1024, 256)),
        # a phase: edges at phase + k x chunksize; a first piece under a quarter joins
        (2100, 1024, 400, (400, 1024, 676)),
        (2100, 1024, 100, (1124, 976)),
        (2100, 1024, 256, (256, 1024, 820)),
        (3000, 1024, 100, (1124, 1024, 852)),
        # a phase of chunksize (or more) is the same grid
        (3000, 1024, 1024, (1024, 1024, 952)),
        (3000, 1024, 2048 + 100, (1124, 1024, 852)),
        # both ends joined
        (2200, 1024, 100, (1124, 1076)),
        (1296, 1024, 61, (1296,)),  # 61 + 1024 + 211: one chunk, over 1.25 x chunksize
        # chunks too small for a quarter: nothing is joined
        (10, 3, 0, (3, 3, 3, 1)),
        (10, 3, 1, (1, 3, 3, 3)),
    ],
)
def test_spatial_chunks(size, chunksize, phase, chunks):
    assert spatial_chunks(size, chunksize, phase) == chunks


@pytest.mark.parametrize("chunksize", [256, 1000, 1024])
def test_spatial_chunks_tile_the_axis_on_the_phase_grid(chunksize):
    """Every size and phase: the chunks add up to the size, no chunk is under a quarter
    of ``chunksize`` (unless it is the only one) nor over ``chunksize`` plus two pieces
    under a quarter (both ends joined to one chunk: 1296 px from 61 + 1024 + 211), and
    every edge between two chunks is ``phase`` plus a multiple of ``chunksize``."""
    for size, phase in itertools.product(range(1, 4 * chunksize, 37), range(0, chunksize, 61)):
        chunks = spatial_chunks(size, chunksize, phase)
        assert sum(chunks) == size
        assert max(chunks) <= chunksize + 2 * (chunksize // 4 - 1), (size, phase, chunks)
        if len(chunks) > 1:
            assert min(chunks) >= chunksize // 4, (size, phase, chunks)
        for edge in np.cumsum(chunks)[:-1]:
            assert (edge - phase) % chunksize == 0, (size, phase, chunks)


# --- dates_per_partition ------------------------------------------------------------------


def test_the_partition_constants_are_the_ones_these_tests_assume():
    assert (PARTITION_BYTES, MAX_DATES_PER_PARTITION) == (16 * 2**20, 32)


@pytest.mark.parametrize(
    ("chunk", "dates"),
    [
        ((1024, 1024), 4),  # 4 MiB of float32 a date: 16 MiB in 4
        ((1024, 2048), 2),
        ((2048, 2048), 1),
        ((4096, 4096), 1),  # over the budget alone: still one date
        ((724, 724), 8),  # 2.00 MiB a date: 8.0...
        ((725, 725), 7),  # 2.005 MiB: 7.98, rounded down
        ((512, 512), 16),
        ((351, 433), 27),  # a field
        ((256, 256), 32),  # 64 would fit: the most is 32
        ((1, 1), 32),
        ((0, 0), 32),
    ],
)
def test_dates_per_partition(chunk, dates):
    assert dates_per_partition(chunk) == dates


# --- file_grid_phase ------------------------------------------------------------------------

#: A 10 m grid in UTM 31N; the cube's upper-left corner.
RES, WEST, NORTH = 10.0, 615000.0, 5693000.0


def _file(x0: float, y0: float, epsg: int = 32631, res: float = RES) -> NativeGrid:
    """A 10980 x 10980 px file whose upper-left corner is ``(x0, y0)``."""
    return NativeGrid(epsg, (res, 0.0, x0, 0.0, -res, y0), (10980, 10980))


def _plan(files: list[tuple[NativeGrid | None, tuple[float, float, float, float] | None]]):
    """A cube of 2000 x 3000 px at (WEST, NORTH), one asset, one item per file with its
    footprint in the cube's CRS."""
    bounds = (WEST, NORTH - 2000 * RES, WEST + 3000 * RES, NORTH)
    return CubePlan(
        epsg=32631,
        bounds=bounds,
        resolution=RES,
        assets=("NDVI",),
        item_ids=tuple(f"item-{i}" for i in range(len(files))),
        urls=tuple((f"https://example.test/{i}.tif",) for i in range(len(files))),
        item_bounds=tuple((footprint,) for _, footprint in files),
        groups=(tuple(range(len(files))),),
        times=(),
        packing=(),
        send_credentials={},
        credentials_handle="test",
        native=tuple((grid,) for grid, _ in files),
    )


#: The whole cube, and strips of it: its western tenth, and the rest.
WHOLE = (WEST, NORTH - 20000.0, WEST + 30000.0, NORTH)
WEST_STRIP = (WEST, NORTH - 20000.0, WEST + 3000.0, NORTH)
EAST_PART = (WEST + 3000.0, NORTH - 20000.0, WEST + 30000.0, NORTH)


def test_the_first_chunk_edge_falls_on_a_file_tile_edge():
    """The file's corner 1500 px west and 700 px north of the cube's: output row r is
    file row r + 700, so the first edge on a multiple of 1024 file rows is row 324 (and
    column 1024 - 1500 % 1024 = 548)."""
    plan = _plan([(_file(WEST - 1500 * RES, NORTH + 700 * RES), WHOLE)])
    assert plan.pixel_offset(0, 0) == (700, 1500)
    assert file_grid_phase(plan, 1024) == (324, 548)
    assert file_grid_phase(plan, 512) == (324, 36)
    aligned = _plan([(_file(WEST - 2048 * RES, NORTH + 1024 * RES), WHOLE)])
    assert file_grid_phase(aligned, 1024) == (0, 0)


def test_files_on_two_grids_vote_with_the_area_they_give_the_cube():
    big = _file(WEST - 1500 * RES, NORTH + 700 * RES)  # phase (324, 548)
    small = _file(WEST - 100 * RES, NORTH + 10 * RES)  # phase (1014, 924)
    assert file_grid_phase(_plan([(small, WEST_STRIP), (big, EAST_PART)]), 1024) == (324, 548)
    assert file_grid_phase(_plan([(small, EAST_PART), (big, WEST_STRIP)]), 1024) == (1014, 924)
    # a footprint that reaches beyond the cube counts only inside it
    beyond = (WEST - 1e6, NORTH - 20000.0, WEST + 3000.0, NORTH + 1e6)
    assert file_grid_phase(_plan([(small, beyond), (big, EAST_PART)]), 1024) == (324, 548)


@pytest.mark.parametrize(
    "grid",
    [
        _file(WEST - 1500 * RES, NORTH + 700 * RES, epsg=32632),  # another CRS
        _file(WEST - 1500 * 20.0, NORTH + 700 * 20.0, res=20.0),  # another resolution
        _file(WEST - 1500 * RES + 5.0, NORTH + 700 * RES),  # half a pixel off
        None,  # the grid is unknown
    ],
    ids=["crs", "resolution", "half a pixel", "unknown"],
)
def test_files_off_the_output_grid_do_not_vote(grid):
    assert file_grid_phase(_plan([(grid, WHOLE)]), 1024) == (0, 0)
    on_grid = _file(WEST - 1500 * RES, NORTH + 700 * RES)
    plan = _plan([(grid, EAST_PART), (on_grid, WEST_STRIP)])  # outweighed by nothing
    assert file_grid_phase(plan, 1024) == (324, 548)


def test_an_asset_missing_from_an_item_does_not_vote():
    on_grid = _file(WEST - 1500 * RES, NORTH + 700 * RES)
    plan = _plan([(_file(WEST, NORTH), None), (on_grid, WEST_STRIP)])
    assert file_grid_phase(plan, 1024) == (324, 548)
