"""Reading a planned cube window: the async COG path, the GDAL warp path, per-date mosaics.

Files whose pixel grid is the output grid (same EPSG and resolution, integer pixel offset:
the usual Terrascope case) are read by the native async engine (:mod:`xarray_terrascope.engine.cog`
on the process's event loop, :mod:`xarray_terrascope.engine.aio`): every such file of a window
at once, one header request per file per process (none with the persistent header cache),
coalesced tile requests, decoding in Rust. Files that must be warped (another UTM zone,
another resolution) are read by the same engine and warped in memory with nearest
neighbour (:mod:`xarray_terrascope.engine.warp`); a file finer than the cube at a whole
ratio (a 10 m band on a 20 m or 60 m cube) is read the same way and reduced in memory
with an area resampling (average, min, max, med, mode...:
:mod:`xarray_terrascope.engine.coarsen`), and a coarser one replicated exactly for those
methods. Other resamplings (bilinear, cubic...), grids at no whole ratio with a method
other than nearest, and local files keep GDAL's ``WarpedVRT``
(:mod:`xarray_terrascope.engine.gdal`), in a pool of I/O threads, concurrently with the
async reads.

Same-date items are mosaicked in the plan's priority order: the first valid pixel wins.
Credentials are resolved from the plan's opaque handle at every read, so ``logout()`` and
new credentials are honoured; they go only to origins the plan allows.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

import numpy as np
import numpy.typing as npt

from xarray_terrascope import auth
from xarray_terrascope.engine import aio, gdal, gdal_cache, origins, readahead, readers, windows
from xarray_terrascope.engine.coarsen import COARSENING, REPLICATING
from xarray_terrascope.engine.cog import GridMismatch
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.engine.local import local_path
from xarray_terrascope.engine.requests import (
    AlignedRead,
    CoarsenRead,
    FileRead,
    GdalRead,
    Placement,
    WarpedRead,
    Window,
)
from xarray_terrascope.exceptions import ReadError
from xarray_terrascope.plan.grids import NativeGrid
from xarray_terrascope.plan.planner import CubePlan

__all__ = ["clear_reader_cache", "read_window"]

logger = logging.getLogger(__name__)


def clear_reader_cache() -> None:
    """Close and forget every open reader and in-memory COG header of this process.

    Called on logout and on new credentials (see :func:`forget_credentials`). Persisted
    headers stay on disk: they hold no secret and are validated by the next pixel
    response, which carries the then current credentials.
    """
    gdal.clear_readers()
    headers.clear_memory()
    current = aio.started()
    if current is not None:
        current.tiles.clear()
    readahead.clear()
    origins.forget_files()
    windows.clear()  # the windows' read patterns, the headers they warmed, their requests


def _access(plan: CubePlan, url: str, creds: auth.AnyCredentials | None) -> auth.RequestAuth | None:
    """What a request for ``url`` may carry: ``creds`` when its origin may receive them."""
    if creds is None or not plan.send_credentials.get(url, False):
        return None
    return auth.RequestAuth(creds)


def _placement(plan: CubePlan, item_index: int, asset_index: int) -> Placement | None:
    """Where the asset's pixels sit on the cube's grid, when they are pixels of it."""
    offset = plan.pixel_offset(item_index, asset_index)
    native = plan.native[item_index][asset_index] if plan.native else None
    if offset is None or native is None:
        return None
    _a, _b, c, _d, _e, f = native.transform
    return Placement(plan.epsg, c, f, plan.resolution, *offset)


def _source(plan: CubePlan, item_index: int, asset_index: int, url: str) -> tuple[str, bool]:
    """The href to read (a local file when the plan prefers it) and whether it is local."""
    if plan.prefer_local is False or not plan.local_hrefs:
        return url, False
    href = plan.local_hrefs[item_index][asset_index]
    path = local_path(href)
    if path is not None:
        return path, True
    if plan.prefer_local:
        raise ReadError(
            f"prefer_local=True but the local file of {plan.item_ids[item_index]} "
            f"({href}) does not exist on this machine"
        )
    return url, False


def _request(
    plan: CubePlan,
    asset_index: int,
    item_index: int,
    window: Window,
    creds: auth.AnyCredentials | None,
    *,
    native: bool = True,
) -> FileRead | None:
    """How to read the item's file for the window: an :class:`AlignedRead` when its
    pixels are the cube's, a :class:`WarpedRead` for a nearest-neighbour warp (or an
    area method onto a finer grid at a whole ratio: a replication), a
    :class:`CoarsenRead` for an area method onto a coarser grid at a whole ratio, a
    :class:`GdalRead` otherwise (another resampling or ratio, a local file, or ``native``
    False: a process where async-tiff does not run); None when the file misses the
    window."""
    url = plan.urls[item_index][asset_index]
    if url is None or not _overlaps(plan, plan.item_bounds[item_index][asset_index], window):
        return None
    href, local = _source(plan, item_index, asset_index, url)
    packing = plan.packing[asset_index]
    common: dict[str, Any] = {
        "url": href,
        "label": _label(plan, item_index),
        "window": window,
        "dtype": np.dtype(packing.dtype),
        "fill": packing.fill_value,
        "access": _access(plan, href, creds),
    }
    grid = plan.native[item_index][asset_index] if plan.native else None
    placement = _placement(plan, item_index, asset_index)
    if native and not local and grid is not None:
        if placement is not None:
            return AlignedRead(**common, placement=placement, shape=grid.shape, cube=plan.shape)
        method = plan.resampling_of(asset_index)
        ratio = plan.grid_ratio(item_index, asset_index)
        if method == "nearest" or (method in REPLICATING and ratio and ratio[0] < 0):
            return WarpedRead(**common, native=grid, target=plan.output_grid)
        if method in COARSENING and ratio and ratio[0] > 0:
            nodata = None if packing.nodata is None else packing.fill_value
            return _coarsen_read(plan, common, grid, ratio, nodata, method)
    return _through_gdal(FileRead(**common), plan, asset_index, creds)


def _coarsen_read(
    plan: CubePlan,
    common: dict[str, Any],
    grid: NativeGrid,
    ratio: tuple[int, int, int],
    nodata: Any,
    method: str,
) -> CoarsenRead:
    """A :class:`CoarsenRead`: the file pixels under ``common["window"]``, on a grid of
    the file's resolution whose pixel ``(r, c)`` lies in cube pixel ``(r // k, c // k)``."""
    k, rows, cols = ratio
    window = common["window"]
    _a, _b, c, _d, _e, f = grid.transform
    height, width = plan.shape
    source = AlignedRead(
        **{**common, "window": Window(*(k * v for v in astuple(window)))},
        placement=Placement(plan.epsg, c, f, grid.transform[0], rows, cols),
        shape=grid.shape,
        cube=(height * k, width * k),
    )
    return CoarsenRead(**common, source=source, factor=k, method=method, nodata=nodata)


def _through_gdal(
    request: FileRead, plan: CubePlan, asset_index: int, creds: auth.AnyCredentials | None
) -> GdalRead:
    """The same read through GDAL's warper."""
    return GdalRead(
        url=request.url,
        label=request.label,
        window=request.window,
        dtype=request.dtype,
        fill=request.fill,
        access=request.access,
        plan=plan,
        asset_index=asset_index,
        credentials=creds,
    )


def read_window(
    plan: CubePlan,
    asset_index: int,
    time_indices: Sequence[int],
    rows: slice,
    cols: slice,
    skip: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[Any]:
    """Read raw values of one asset for some time steps and a window of the grid.

    Same-date items are mosaicked in priority order: the first valid (not nodata) pixel
    wins. Returns an array ``(len(time_indices), rows, cols)`` of the storage dtype.

    ``skip`` (bool, the result's shape) marks pixels nobody wants (a cloud mask): a date
    whose pixels are all skipped is not read, a file tile holding only skipped pixels is
    not fetched (files on the cube's grid), and skipped pixels may hold any value.

    Raises
    ------
    AuthenticationError
        When this process has no credentials for the plan's handle, or they are refused.
    ReadError
        For any other failed read (naming the item, the URL and the HTTP status).
    """
    needs_creds = any(plan.send_credentials.values())
    creds = auth.resolve(plan.credentials_handle) if needs_creds else None
    packing = plan.packing[asset_index]
    window = Window.of(rows, cols)
    out = np.full((len(time_indices), *window.shape), packing.fill_value, packing.dtype)
    if out.size == 0:
        return out
    native = aio.native_usable()
    state = windows.window_state(plan, asset_index, window)
    jobs = [
        (out_index, request)
        for out_index, t in enumerate(time_indices)
        if skip is None or not skip[out_index].all()
        for request in state.requests(plan, asset_index, window, creds, t, _request, native=native)
    ]
    if not native and jobs:
        _forked_warning()
    by_date: dict[int, list[FileRead]] = {}
    for out_index, request in jobs:
        by_date.setdefault(out_index, []).append(request)
    wholes = None
    if skip is None:  # a whole date is shared with its read ahead (see readahead.DateRead)
        wholes = {i: readahead.DateRead.of(files) for i, files in by_date.items()}
    # The read goes to the loop first, its requests ahead of the background work below.
    reading = aio.start(
        _read_dates(by_date, out, skip, packing.fill_value, plan, asset_index, creds, wholes)
    )
    if skip is None and any(not isinstance(request, GdalRead) for _, request in jobs):
        # Reads with a mask neither read the next dates ahead nor fetch the headers of
        # the nearest dates' files: their masks are not known here, and a file whose
        # window the mask covers entirely must cost no request at all.
        try:
            windows.prefetch_around(plan, asset_index, time_indices, window, creds, _request)
        except BaseException:
            reading.cancel()
            raise
    aio.wait(reading)
    return out


_forked_warned: list[int] = []


def _forked_warning() -> None:
    """Say once per process why its reads go through GDAL."""
    if os.getpid() in _forked_warned:
        return
    _forked_warned.append(os.getpid())
    logger.warning(
        "This process was forked after its parent had started the read engine (async-tiff's "
        "runtime does not survive fork, the default start method of multiprocessing on "
        "Linux before Python 3.14): its reads go through GDAL, which is correct but slower. "
        "For full speed, create the processes with multiprocessing's 'spawn' or "
        "'forkserver' start method (multiprocessing.get_context('forkserver')); such "
        "processes do not inherit the login: call xarray_terrascope.login() in them, or "
        "set TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD in their environment."
    )


async def _read_dates(
    by_date: dict[int, list[FileRead]],
    out: npt.NDArray[Any],
    skip: npt.NDArray[np.bool_] | None,
    fill: Any,
    plan: CubePlan,
    asset_index: int,
    creds: auth.AnyCredentials | None,
    wholes: dict[int, readahead.DateRead | None] | None = None,
) -> None:
    """Read every date's files into ``out[date]`` at once (on the loop), each date's in
    mosaic order: its first file for the whole window, its next one only for the pixels
    still empty (the overlap of two tiles: often none, then that file is not read).

    Each date goes on to its next file as soon as its own previous one is in, not once
    every date's previous file is: the dates' second files overlap the others' first.
    A file whose header disagrees with its item is read through GDAL. A date with a
    whole-date read in ``wholes`` (all its pixels wanted, every file for the async
    engine: :meth:`~xarray_terrascope.engine.readahead.DateRead.of`) is read as a whole:
    taken from read-ahead, or shared with a read of it under way.
    """

    async def one(request: FileRead) -> npt.NDArray[Any]:
        if isinstance(request, GdalRead):
            return await readers.read(request)
        try:
            return await readahead.read(request)
        except GridMismatch as err:
            logger.warning("%s; reading it through GDAL", err)
            return await readers.read(_through_gdal(request, plan, asset_index, creds))

    async def date(index: int, files: list[FileRead]) -> None:
        whole = None if wholes is None else wholes.get(index)
        if whole is not None:
            out[index] = await readahead.read(whole, one)
            return
        wanted = None if skip is None else ~skip[index]
        await readahead.read_rounds(files, out, index, fill, wanted, one)

    tasks = [asyncio.ensure_future(date(index, files)) for index, files in by_date.items()]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _label(plan: CubePlan, item_index: int) -> str:
    ids = getattr(plan, "item_ids", ())
    return str(ids[item_index]) if ids else f"item {item_index}"


def _overlaps(
    plan: CubePlan, bounds: tuple[float, float, float, float] | None, window: Window
) -> bool:
    """Whether a file's footprint (in the cube's CRS) overlaps the window."""
    if bounds is None:
        return False
    west, south, east, north = bounds
    res = plan.resolution
    x0 = plan.bounds[0] + window.col0 * res
    x1 = plan.bounds[0] + window.col1 * res
    y1 = plan.bounds[3] - window.row0 * res
    y0 = plan.bounds[3] - window.row1 * res
    return west < x1 and east > x0 and south < y1 and north > y0


def forget_credentials() -> None:
    """Credentials changed (a logout, a new login, a worker's new credentials): close the
    readers and drop every cache of what was read with the old ones, GDAL's ``/vsicurl/``
    cache included, so that none of it answers a later read."""
    clear_reader_cache()
    gdal_cache.clear_http_cache()


auth.subscribe("forget", forget_credentials)
