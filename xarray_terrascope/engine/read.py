"""Reading a planned cube window: the async COG path, the GDAL warp path, per-date mosaics.

Files whose pixel grid is the output grid (same EPSG and resolution, integer pixel offset:
the usual Terrascope case) are read by the native async engine (:mod:`xarray_terrascope.engine.cog`
on the process's event loop, :mod:`xarray_terrascope.engine.aio`): every such file of a window
at once, one header request per file per process (none with the persistent header cache),
coalesced tile requests, decoding in Rust. Files that must be warped (another UTM zone,
another resolution) are read by the same engine and warped in memory with nearest
neighbour (:mod:`xarray_terrascope.engine.warp`); with another resampling, and for local
files, they keep GDAL's ``WarpedVRT`` (:mod:`xarray_terrascope.engine.gdal`), in a pool of
I/O threads, concurrently with the async reads.

Same-date items are mosaicked in the plan's priority order: the first valid pixel wins.
Credentials are resolved from the plan's opaque handle at every read, so ``logout()`` and
new credentials are honoured; they go only to origins the plan allows.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
from rasterio.windows import Window

from xarray_terrascope import auth
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import aio, gdal, gdal_cache, readahead, transport
from xarray_terrascope.engine.cog import Grid, GridMismatch
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.engine.local import local_path
from xarray_terrascope.engine.readahead import Spec
from xarray_terrascope.engine.tile_store import tiles
from xarray_terrascope.exceptions import ReadError
from xarray_terrascope.options import get_options
from xarray_terrascope.plan.planner import CubePlan

__all__ = ["clear_reader_cache", "read_window"]

logger = logging.getLogger(__name__)


def clear_reader_cache() -> None:
    """Close and forget every open reader and in-memory COG header of this process.

    Called by :mod:`xarray_terrascope.auth` on logout and on new credentials. Persisted
    headers stay on disk: they hold no secret and are validated by the next pixel
    response, which carries the then current credentials.
    """
    gdal.clear_readers()
    headers.clear_memory()
    tiles.clear()
    readahead.clear()
    transport.forget_files()
    with _recent.lock:  # the windows' read patterns and the headers they warmed
        _recent.clear()


def _access(plan: CubePlan, url: str, creds: auth.Credentials | None) -> auth.RequestAuth | None:
    """What a request for ``url`` may carry: ``creds`` when its origin may receive them."""
    if creds is None or not plan.send_credentials.get(url, False):
        return None
    return auth.RequestAuth(creds)


def _aligned_grid(plan: CubePlan, item_index: int, asset_index: int) -> Grid | None:
    """Where the asset's pixels sit on the output grid, when they sit on it exactly."""
    offset = plan.pixel_offset(item_index, asset_index)
    if offset is None:
        return None
    native = plan.native[item_index][asset_index]
    assert native is not None  # a pixel offset needs the file's grid
    _a, _b, c, _d, _e, f = native.transform
    return Grid(plan.epsg, c, f, plan.resolution, *offset)


def _async_how(plan: CubePlan, item_index: int, asset_index: int) -> Grid | tuple | None:
    """How the async engine reads this asset: a :class:`Grid` (its pixels are output
    pixels), a ``(NativeGrid, OutputGrid)`` nearest-neighbour warp, or None (GDAL's warper)."""
    grid = _aligned_grid(plan, item_index, asset_index)
    if grid is not None or plan.resampling != "nearest" or not plan.native:
        return grid
    native = plan.native[item_index][asset_index]
    if native is None:
        return None
    return native, plan.output_grid


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


def read_window(
    plan: CubePlan,
    asset_index: int,
    time_indices: Sequence[int],
    rows: slice,
    cols: slice,
) -> np.ndarray:
    """Read raw values of one asset for some time steps and a window of the grid.

    Same-date items are mosaicked in priority order: the first valid (not nodata) pixel
    wins. Returns an array ``(len(time_indices), rows, cols)`` of the storage dtype.

    Raises
    ------
    AuthenticationError
        When this process has no credentials for the plan's handle, or they are refused.
    ReadError
        For any other failed read (naming the item, the URL and the HTTP status).
    """
    needs_creds = any(plan.send_credentials.values())
    creds = auth.resolve(plan.credentials_handle) if needs_creds else None
    spec = plan.packing[asset_index]
    dtype = np.dtype(spec.dtype)
    nodata = spec.fill_value
    nan_fill = dtype.kind == "f" and bool(np.isnan(nodata))
    height = rows.stop - rows.start
    width = cols.stop - cols.start
    out = np.full((len(time_indices), height, width), nodata, dtype=dtype)
    if height == 0 or width == 0:
        return out
    window = Window(cols.start, rows.start, width, height)

    jobs: list[tuple[int, int, str, bool]] = []  # out index, item, href, local
    for out_index, t in enumerate(time_indices):
        for item_index in plan.groups[t]:
            url = plan.urls[item_index][asset_index]
            bounds = plan.item_bounds[item_index][asset_index]
            if url is None or not _overlaps(plan, bounds, window):
                continue
            href, local = _source(plan, item_index, asset_index, url)
            jobs.append((out_index, item_index, href, local))

    results: list[np.ndarray | Future | None] = [None] * len(jobs)
    aligned: list[tuple[int, Any]] = []
    pool = gdal.io_pool()

    def through_gdal(j: int) -> Future:
        _, item_index, href, _ = jobs[j]
        label, access = _label(plan, item_index), _access(plan, href, creds)
        return pool.submit(gdal.read_gdal, plan, href, asset_index, window, creds, label, access)

    native = aio.native_usable()
    if not native and jobs:
        _forked_warning()
    try:
        for j, (_, item_index, _, local) in enumerate(jobs):
            how = None if local or not native else _async_how(plan, item_index, asset_index)
            if how is None:
                results[j] = through_gdal(j)
            else:
                aligned.append((j, how))
        if aligned:
            _prefetch_around(
                plan, asset_index, time_indices, rows, cols, window, creds, dtype, nodata
            )
            arrays = aio.run(
                _read_aligned_all(
                    plan, asset_index, jobs, aligned, rows, cols, creds, dtype, nodata
                )
            )
            for (j, _), array in zip(aligned, arrays, strict=True):
                if isinstance(array, GridMismatch):
                    logger.warning("%s; reading it through GDAL", array)
                    results[j] = through_gdal(j)
                else:
                    results[j] = array
        filled: set[int] = set()
        for j, (out_index, _, _, _) in enumerate(jobs):  # priority order within each date
            result = results[j]
            data = result.result() if isinstance(result, Future) else result
            target = out[out_index]
            if out_index not in filled:  # the date's first file: the whole window is nodata
                target[...] = data
                filled.add(out_index)
            else:
                np.copyto(target, data, where=np.isnan(target) if nan_fill else target == nodata)
    finally:
        for result in results:
            if isinstance(result, Future):
                result.cancel()
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
        "'forkserver' start method (multiprocessing.get_context('forkserver'))."
    )


async def _read_aligned_all(plan, asset_index, jobs, aligned, rows, cols, creds, dtype, fill):
    import asyncio

    async def one(j: int, how):
        _, item_index, url, _ = jobs[j]
        spec = _spec(plan, asset_index, item_index, url, how, rows, cols, creds, dtype, fill)
        try:
            return await readahead.read(spec)
        except GridMismatch as err:
            return err

    tasks = [asyncio.ensure_future(one(j, how)) for j, how in aligned]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


#: Windows this process has read recently, with the dates read (for warm-up and read-ahead).
_RECENT_SIZE = 256
_recent: BoundedCache[tuple, tuple[set[int], set[str]]] = BoundedCache(_RECENT_SIZE)


def _reset_after_fork() -> None:
    _recent.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _spec(plan, asset_index, item_index, url, how, rows, cols, creds, dtype, fill) -> Spec:
    warp = None if isinstance(how, Grid) else how
    return Spec(
        url=url,
        label=_label(plan, item_index),
        access=_access(plan, url, creds),
        grid=None if warp else how,
        shape=plan.native[item_index][asset_index].shape,
        rows=rows,
        cols=cols,
        dtype=dtype,
        fill=fill,
        cube=plan.shape,
        warp=warp,
    )


def _prefetch_around(plan, asset_index, time_indices, rows, cols, window, creds, dtype, fill):
    """Fetch the headers of the files of the dates nearest the read (up to
    :data:`~xarray_terrascope.engine.readahead.WARM_FILES` files, its own first) in the background.
    Reads of a window date after date, up or down: read the next dates' files ahead in
    that direction."""
    key = (hash(plan.urls), asset_index, rows.start, rows.stop, cols.start, cols.stop)
    with _recent.lock:
        state = _recent.get(key)  # now the most recent
        if state is None:
            state = (set(), set())
            _recent.put(key, state)
        seen, warmed = state
        if any(t in seen for t in time_indices):  # the window is read again: a new pass
            seen.clear()
        lo, hi = min(time_indices), max(time_indices)
        forwards = any(t - 1 in seen for t in time_indices)
        # dask often takes a window's dates from the last partition down
        backwards = not forwards and any(t + 1 in seen for t in time_indices)
        seen.update(time_indices)
        seen_now = set(seen)
    dates_ahead = len(plan.groups)
    files_ahead = get_options().readahead_files
    if _in_worker():
        # The workers of a cluster take turns on a window's partitions: dates read ahead
        # here would often be read again by the worker that gets them. A worker reads
        # ahead only while it has read the window's dates as one unbroken run, and only
        # as many dates as that run held before this read.
        unbroken = max(seen_now) - min(seen_now) + 1 == len(seen_now)
        dates_ahead = len(seen_now) - len(set(time_indices)) if unbroken else 0

    def aligned_files(times):
        for t in times:
            for item_index in plan.groups[t]:
                url = plan.urls[item_index][asset_index]
                if (
                    url is not None
                    and _overlaps(plan, plan.item_bounds[item_index][asset_index], window)
                    and not _source(plan, item_index, asset_index, url)[1]
                ):
                    how = _async_how(plan, item_index, asset_index)
                    if how is not None:
                        yield item_index, url, how

    # the headers of the files of the nearest dates (a window that moves with the reads)
    nearest = itertools.islice(
        aligned_files(_outwards(lo, hi, len(plan.groups))), readahead.WARM_FILES
    )
    with _recent.lock:
        new = [(i, url) for i, url, _ in nearest if url not in warmed]
        warmed.update(url for _, url in new)
    readahead.warm_headers([(url, _label(plan, i), _access(plan, url, creds)) for i, url in new])
    if (forwards or backwards) and dates_ahead:
        later = (
            range(max(time_indices) + 1, len(plan.groups))
            if forwards
            else range(min(time_indices) - 1, -1, -1)
        )
        ahead: list[Spec] = []
        for t in later:
            if len(ahead) >= files_ahead or dates_ahead == 0:
                break
            if t in seen_now:
                continue
            dates_ahead -= 1
            for i, url, how in aligned_files([t]):
                ahead.append(_spec(plan, asset_index, i, url, how, rows, cols, creds, dtype, fill))
        readahead.read_ahead(ahead)


def _in_worker() -> bool:
    """Whether this thread runs a task of a ``dask.distributed`` worker."""
    distributed = sys.modules.get("distributed")
    if distributed is None:  # never imported: no worker in this process
        return False
    try:
        distributed.get_worker()
    except ValueError:  # distributed's answer outside a worker's task
        return False
    return True


def _outwards(lo: int, hi: int, size: int):
    """Time indices from ``lo..hi`` outwards: ``lo..hi``, then ``hi + 1``, ``lo - 1``, ...

    Examples
    --------
    >>> list(_outwards(3, 4, 7))
    [3, 4, 5, 2, 6, 1, 0]
    """
    yield from range(lo, hi + 1)
    for step in range(1, size):
        if hi + step >= size and lo - step < 0:
            return
        if hi + step < size:
            yield hi + step
        if lo - step >= 0:
            yield lo - step


def _label(plan: CubePlan, item_index: int) -> str:
    ids = getattr(plan, "item_ids", ())
    return str(ids[item_index]) if ids else f"item {item_index}"


def _overlaps(plan: CubePlan, bounds, window: Window) -> bool:
    if bounds is None:
        return False
    west, south, east, north = bounds
    res = plan.resolution
    x0 = plan.bounds[0] + window.col_off * res
    x1 = x0 + window.width * res
    y1 = plan.bounds[3] - window.row_off * res
    y0 = y1 - window.height * res
    return west < x1 and east > x0 and south < y1 and north > y0


def forget_credentials() -> None:
    """Credentials changed (a logout, a new login, a worker's new credentials): close the
    readers and drop every cache of what was read with the old ones, GDAL's ``/vsicurl/``
    cache included, so that none of it answers a later read."""
    clear_reader_cache()
    gdal_cache.clear_http_cache()


auth.subscribe("forget", forget_credentials)
