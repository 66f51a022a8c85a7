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
import itertools
import logging
import os
import sys
import threading
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xarray_terrascope import auth
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import aio, gdal, gdal_cache, origins, readahead, readers
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
from xarray_terrascope.options import get_options
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
    with _recent.lock:  # the windows' read patterns and the headers they warmed
        _recent.clear()


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
    state = _window_state(plan, asset_index, window)
    jobs = [
        (out_index, request)
        for out_index, t in enumerate(time_indices)
        if skip is None or not skip[out_index].all()
        for request in state.requests(plan, asset_index, window, creds, t, native=native)
    ]
    if not native and jobs:
        _forked_warning()
    by_date: dict[int, list[FileRead]] = {}
    for out_index, request in jobs:
        by_date.setdefault(out_index, []).append(request)
    keys = None
    if skip is None:  # a whole date is shared with its read ahead (see readahead.DateRead)
        keys = {i: _date_key(files) for i, files in by_date.items()}
    # The read goes to the loop first, its requests ahead of the background work below.
    reading = aio.start(
        _read_dates(by_date, out, skip, packing.fill_value, plan, asset_index, creds, keys)
    )
    if skip is None and any(not isinstance(request, GdalRead) for _, request in jobs):
        # Reads with a mask neither read the next dates ahead nor fetch the headers of
        # the nearest dates' files: their masks are not known here, and a file whose
        # window the mask covers entirely must cost no request at all.
        try:
            _prefetch_around(plan, asset_index, time_indices, window, creds)
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
        "'forkserver' start method (multiprocessing.get_context('forkserver'))."
    )


async def _read_dates(
    by_date: dict[int, list[FileRead]],
    out: npt.NDArray[Any],
    skip: npt.NDArray[np.bool_] | None,
    fill: Any,
    plan: CubePlan,
    asset_index: int,
    creds: auth.AnyCredentials | None,
    keys: dict[int, Hashable] | None = None,
) -> None:
    """Read every date's files into ``out[date]`` at once (on the loop), each date's in
    mosaic order: its first file for the whole window, its next one only for the pixels
    still empty (the overlap of two tiles: often none, then that file is not read).

    Each date goes on to its next file as soon as its own previous one is in, not once
    every date's previous file is: the dates' second files overlap the others' first.
    A file whose header disagrees with its item is read through GDAL. A date with a key
    in ``keys`` (all its pixels wanted, every file for the async engine) is read as a
    whole (:class:`~xarray_terrascope.engine.readahead.DateRead`): taken from read-ahead,
    or shared with a read of it under way.
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
        key = None if keys is None else keys.get(index)
        if key is not None and not any(isinstance(file, GdalRead) for file in files):
            out[index] = await readahead.read(readahead.DateRead(key, tuple(files)), one)
            return
        wanted = None if skip is None else ~skip[index]
        await readahead.read_rounds(files, out, index, fill, wanted, one)

    tasks = [asyncio.ensure_future(date(index, files)) for index, files in by_date.items()]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


#: Windows this process has read recently, with the dates read (for warm-up and read-ahead).
_RECENT_SIZE = 256
_recent: BoundedCache[Hashable, _WindowState] = BoundedCache(_RECENT_SIZE)


@dataclass(eq=False)
class _WindowState:
    """What this process remembers of a window of a plan: the dates read in the current
    pass, the files whose headers were warmed, and each date's requests (made once per
    credentials: the reads of a long series ask for the same dates' requests again and
    again, to warm their headers and read them ahead)."""

    seen: set[int] = field(default_factory=set)
    warmed: set[str] = field(default_factory=set)
    creds: object = None
    files: dict[int, list[FileRead]] = field(default_factory=dict)

    def requests(
        self,
        plan: CubePlan,
        asset_index: int,
        window: Window,
        creds: auth.AnyCredentials | None,
        t: int,
        *,
        native: bool = True,
    ) -> list[FileRead]:
        """Date ``t``'s requests of the window, in mosaic order (files that miss the
        window left out); ``native`` False: a process where async-tiff does not run
        (every file through GDAL, made afresh). Threads may race to make the same
        date's: same result."""
        if not native:
            return self._made(plan, asset_index, window, creds, t, native=False)
        if self.creds is not creds:  # other credentials: other requests
            self.files = {}
            self.creds = creds
        found = self.files.get(t)
        if found is None:
            found = self.files[t] = self._made(plan, asset_index, window, creds, t)
        return found

    @staticmethod
    def _made(
        plan: CubePlan,
        asset_index: int,
        window: Window,
        creds: auth.AnyCredentials | None,
        t: int,
        *,
        native: bool = True,
    ) -> list[FileRead]:
        return [
            request
            for item_index in plan.groups[t]
            if (request := _request(plan, asset_index, item_index, window, creds, native=native))
            is not None
        ]


def _window_state(plan: CubePlan, asset_index: int, window: Window) -> _WindowState:
    """What this process remembers of the window (made when new; now the most recent)."""
    key = (_plan_key(plan), asset_index, window)
    with _recent.lock:
        state = _recent.get(key)
        if state is None:
            state = _WindowState()
            _recent.put(key, state)
        return state


def _reset_after_fork() -> None:
    _recent.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _prefetch_around(
    plan: CubePlan,
    asset_index: int,
    time_indices: Sequence[int],
    window: Window,
    creds: auth.AnyCredentials | None,
    read_ahead: bool = True,
) -> None:
    """Fetch the headers of the files of the dates nearest the read (up to
    :data:`~xarray_terrascope.engine.readahead.WARM_FILES` files: the dates' first files,
    its own dates' first, then their later files) in the background. Reads of a window
    date after date, up or down: read the next dates' files ahead in that direction
    (unless ``read_ahead`` is False)."""
    state = _window_state(plan, asset_index, window)
    with _recent.lock:
        seen, warmed = state.seen, state.warmed
        if any(t in seen for t in time_indices):  # the window is read again: a new pass
            seen.clear()
        lo, hi = min(time_indices), max(time_indices)
        forwards = any(t - 1 in seen for t in time_indices)
        # dask often takes a window's dates from the last partition down
        backwards = not forwards and any(t + 1 in seen for t in time_indices)
        # At an end of the series the run of dates read goes on the other way: dask
        # starts the last two partitions at once, and the last one may come second.
        if forwards and hi == len(plan.groups) - 1:
            forwards, backwards = False, True
        elif backwards and lo == 0:
            forwards, backwards = True, False
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

    def async_reads(
        times: Iterable[int], first: bool = False, later: bool = False
    ) -> Iterator[FileRead]:
        """The async engine's requests of the window for dates ``times`` (``first``: of
        each date's first file only, the one a read takes whole; ``later``: of the files
        after it only, read where the first leaves the window empty)."""
        for t in times:
            files = state.requests(plan, asset_index, window, creds, t)
            chosen = files[:1] if first else files[1:] if later else files
            yield from (request for request in chosen if not isinstance(request, GdalRead))

    # The headers of the files of the nearest dates (a window that moves with the
    # reads): each date's first file, which its read takes whole, before the later ones,
    # which it reads only where the first leaves the window empty (often not at all).
    dates = list(_outwards(lo, hi, len(plan.groups)))
    nearest = itertools.islice(
        itertools.chain(async_reads(dates, first=True), async_reads(dates, later=True)),
        readahead.WARM_FILES,
    )
    with _recent.lock:
        new = [request for request in nearest if request.url not in warmed]
        warmed.update(request.url for request in new)
    readahead.warm_headers([(r.url, r.label, r.access) for r in new])
    if read_ahead and (forwards or backwards) and dates_ahead:
        later = (
            range(max(time_indices) + 1, len(plan.groups))
            if forwards
            else range(min(time_indices) - 1, -1, -1)
        )
        # Whole dates (every file of the date, in rounds, as the read itself would), so
        # the read that takes a date makes no round trip for its later files either; a
        # date with a file for GDAL has its first file read ahead only.
        ahead: list[FileRead | readahead.DateRead] = []
        for t in later:
            if len(ahead) >= files_ahead or dates_ahead == 0:
                break
            if not readahead.allowed(t):  # another worker's dates, say
                break
            if t in seen_now:
                continue
            dates_ahead -= 1
            files = state.requests(plan, asset_index, window, creds, t)
            if files and not any(isinstance(request, GdalRead) for request in files):
                ahead.append(readahead.DateRead(_date_key(files), tuple(files)))
            else:
                ahead.extend(async_reads([t], first=True))
        readahead.read_ahead(ahead)


def _date_key(files: Sequence[FileRead]) -> Hashable:
    """The read-ahead key of a date of a window: its files' (the date's whole mosaic)."""
    return ("date", *(file.key for file in files))


def _plan_key(plan: CubePlan) -> Hashable:
    """What tells two plans' windows apart: their files, the grid the files land on, and
    how they are read (two cubes of the same items over other bboxes have the same
    windows, at other places in the files)."""
    return hash(
        (
            plan.urls,
            plan.epsg,
            plan.bounds,
            plan.resolution,
            plan.native,
            plan.local_hrefs,
            plan.prefer_local,
            plan.resampling,
            plan.asset_resampling,
            plan.packing,
            plan.credentials_handle,
            tuple(sorted(plan.send_credentials.items())),
        )
    )


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


def _outwards(lo: int, hi: int, size: int) -> Iterator[int]:
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
