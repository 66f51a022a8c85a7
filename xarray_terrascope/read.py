"""Reading a planned cube window: the async COG path, the GDAL warp path, per-date mosaics.

Files whose pixel grid is the output grid (same EPSG and resolution, integer pixel offset:
the usual Terrascope case) are read by the native async engine (:mod:`xarray_terrascope.cog`
on the process's event loop, :mod:`xarray_terrascope._aio`): every such file of a window
at once, one header request per file per process (none with the persistent header cache),
coalesced tile requests, decoding in Rust. Files that must be warped (another UTM zone,
another resolution) are read by the same engine and warped in memory with nearest
neighbour (:mod:`xarray_terrascope._warp`); with another resampling they keep GDAL's
``WarpedVRT`` through stackstac's reader, in a pool of I/O threads, concurrently with the
async reads.

Same-date items are mosaicked in the plan's priority order: the first valid pixel wins.
Credentials are resolved from the plan's opaque handle at every read, so ``logout()`` and
new credentials are honoured; they go only to origins the plan allows.

GDAL faults: a failed GDAL read is diagnosed with one ranged GET (same scoped credentials)
so 401/403 become :class:`~xarray_terrascope.exceptions.AuthenticationError` and other
failures a :class:`~xarray_terrascope.exceptions.ReadError` naming the item and the HTTP
status; transient failures (dropped connections, 429, 5xx) are retried after dropping
GDAL's cached state of that URL, so a failure never sticks in the process.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from . import _aio, _prefetch, _transport, auth, config
from ._headers import headers
from ._prefetch import Spec
from ._tiles import tiles
from ._warp import Native, Target
from .cog import Grid, GridMismatch, local_path
from .exceptions import AuthenticationError, ReadError
from .stack import CubePlan, make_reader

__all__ = ["clear_reader_cache", "read_window"]

logger = logging.getLogger(__name__)

#: GDAL reads in flight at once per process (network-bound, so well above the core count).
IO_THREADS = 16
#: Open GDAL readers kept per process (each holds a GDAL dataset per thread that used it).
READER_CACHE_SIZE = 256
#: Attempts of one GDAL read through transient failures.
GDAL_ATTEMPTS = 6

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()
_readers: OrderedDict[tuple, Any] = OrderedDict()


def _io_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="terrascope-io")
        return _pool


def clear_reader_cache() -> None:
    """Close and forget every open reader and in-memory COG header of this process.

    Called by :mod:`xarray_terrascope.auth` on logout and on new credentials. Persisted
    headers stay on disk: they hold no secret and are validated by the next pixel
    response, which carries the then current credentials.
    """
    with _readers_lock:
        readers = list(_readers.values())
        _readers.clear()
    for reader in readers:
        reader.close()
    headers.clear_memory()
    tiles.clear()
    _prefetch.clear()
    with _recent_lock:  # the windows' read patterns and the headers they warmed
        _recent.clear()


def _reader(plan: CubePlan, url: str, asset_index: int, creds: auth.Credentials | None):
    """The process's open GDAL reader for this file, grid and credentials."""
    key = _reader_key(plan, url, asset_index, creds)
    with _readers_lock:
        reader = _readers.get(key)
        if reader is not None:
            _readers.move_to_end(key)
            return reader
    allowed = plan.send_credentials.get(url, False)
    reader = make_reader(plan, url, asset_index, auth.gdal_options(url, creds, allowed=allowed))
    with _readers_lock:
        _readers[key] = reader
        while len(_readers) > READER_CACHE_SIZE:
            _readers.popitem(last=False)[1].close()
    return reader


def _reader_key(plan: CubePlan, url: str, asset_index: int, creds) -> tuple:
    allowed = plan.send_credentials.get(url, False)
    return (
        url,
        plan.epsg,
        plan.bounds,
        plan.resolution,
        plan.resampling,
        plan.decode[asset_index].dtype,
        creds.token if (creds and allowed) else None,
    )


def _forget_reader(plan: CubePlan, url: str, asset_index: int, creds) -> None:
    with _readers_lock:
        reader = _readers.pop(_reader_key(plan, url, asset_index, creds), None)
    if reader is not None:
        reader.close()
    _clear_gdal_url(url)


def _clear_gdal_url(url: str) -> None:
    """Drop what GDAL's ``/vsicurl/`` layer remembers of ``url`` (failures included)."""
    from . import _gdal

    lib = _gdal._libgdal()
    clear = getattr(lib, "VSICurlPartialClearCache", None) if lib is not None else None
    if clear is None:
        _gdal.clear_http_cache()
        return
    clear(f"/vsicurl/{url}".encode())


#: How GDAL's /vsicurl/ reports a refused request (the URL may contain "401", e.g. 0401).
_REFUSED = re.compile(r"HTTP response code: (401|403)\b")
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})


def _auth_header(plan: CubePlan, url: str, creds: auth.Credentials | None) -> str | None:
    if creds is None or not plan.send_credentials.get(url, False):
        return None
    return _transport.basic_header(creds.username, creds.password)


def _refused(label: str, url: str, status: Any, creds, sent: bool) -> AuthenticationError:
    who = f"user {creds.username!r}" if creds and sent else "a request without credentials"
    err = AuthenticationError(
        f"Terrascope refused {who} reading {label} ({url}): HTTP {status}. Check the "
        "credentials (xarray_terrascope.login) and TERRASCOPE_DOWNLOAD_HOSTS."
    )
    err.status_code = status  # type: ignore[attr-defined]
    return err


def _explain(
    err: Exception,
    url: str,
    creds: auth.Credentials | None,
    sent: bool,
    label: str | None = None,
) -> Exception:
    """What GDAL's error text alone says: a refusal, a non-raster answer, or a failure.

    ``label`` names the file to the user (the item id; default: the URL).
    """
    text = str(err.__cause__ or err)
    refused = _REFUSED.search(text)
    if refused:
        return _refused(label or url, url, refused.group(1), creds, sent)
    where = f"{label} ({url})" if label else url
    if "not recognized as" in text or "not recognised as" in text:
        if not sent:
            return AuthenticationError(
                f"{where} did not answer with a GeoTIFF, most likely Terrascope's login page: "
                f"no credentials were sent because its origin is not in "
                f"TERRASCOPE_DOWNLOAD_HOSTS ({', '.join(sorted(config.download_hosts()))}). "
                "Add it there."
            )
        return ReadError(f"{where} is not a readable raster (GDAL: {text[-200:]})")
    return ReadError(f"Reading {where} failed: {text[-300:]}")


def _read_gdal(
    plan: CubePlan, url: str, asset_index: int, window: Window, creds, label: str
) -> np.ndarray:
    """One GDAL read with diagnosis of failures and retries of transient ones."""
    sent = plan.send_credentials.get(url, False) and creds is not None
    for attempt in range(GDAL_ATTEMPTS):
        reader = _reader(plan, url, asset_index, creds)
        try:
            return reader.read(window)
        except (RuntimeError, RasterioIOError) as err:
            text = str(err.__cause__ or err)
            _forget_reader(plan, url, asset_index, creds)  # a failure must not stick
            explained = _explain(err, url, creds, sent, label)
            if isinstance(explained, AuthenticationError):
                raise explained from None
            web = url.split(":", 1)[0].lower() in ("http", "https")
            status = _transport.probe_status(url, _auth_header(plan, url, creds)) if web else 404
            if status in (401, 403):
                raise _refused(label, url, status, creds, sent) from None
            if status in (301, 302, 303, 307, 308) and not sent:
                raise AuthenticationError(
                    f"{label} ({url}) redirects to a login page: no credentials were sent "
                    "because its origin is not in TERRASCOPE_DOWNLOAD_HOSTS "
                    f"({', '.join(sorted(config.download_hosts()))}). Add it there."
                ) from None
            transient = status is None or status in _TRANSIENT or status in (200, 206, 302)
            if not transient or attempt == GDAL_ATTEMPTS - 1:
                error = ReadError(
                    f"Reading {label} ({url}) failed: HTTP {status} (GDAL: {text[-200:]})"
                )
                error.status_code = status  # type: ignore[attr-defined]
                raise error from err
            delay = min(4.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
            logger.debug("GDAL read of %s failed (HTTP %s): retry in %.2f s", label, status, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _aligned_grid(plan: CubePlan, item_index: int, asset_index: int) -> Grid | None:
    """Where the asset's pixels sit on the output grid, when they sit on it exactly."""
    if not plan.native:
        return None
    native = plan.native[item_index][asset_index]
    if native is None:
        return None
    epsg, (a, b, c, d, e, f), _shape = native
    res = plan.resolution
    tol = 1e-9 * res
    if epsg != plan.epsg or b or d or abs(a - res) > tol or abs(e + res) > tol:
        return None
    col_off = (plan.bounds[0] - c) / res
    row_off = (f - plan.bounds[3]) / res
    if abs(col_off - round(col_off)) > 1e-6 or abs(row_off - round(row_off)) > 1e-6:
        return None
    return Grid(epsg, c, f, res, round(row_off), round(col_off))


def _async_how(plan: CubePlan, item_index: int, asset_index: int) -> Grid | tuple | None:
    """How the async engine reads this asset: a :class:`Grid` (its pixels are output
    pixels), a ``(Native, Target)`` nearest-neighbour warp, or None (GDAL's warper)."""
    grid = _aligned_grid(plan, item_index, asset_index)
    if grid is not None or plan.resampling != "nearest" or not plan.native:
        return grid
    native = plan.native[item_index][asset_index]
    if native is None:
        return None
    epsg, transform, shape = native
    west, _, _, north = plan.bounds
    return Native(epsg, tuple(transform), tuple(shape)), Target(
        plan.epsg, plan.resolution, west, north
    )


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
    spec = plan.decode[asset_index]
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
    pool = _io_pool()
    try:
        for j, (_, item_index, href, local) in enumerate(jobs):
            how = None if local else _async_how(plan, item_index, asset_index)
            if how is None:
                label = _label(plan, item_index)
                results[j] = pool.submit(_read_gdal, plan, href, asset_index, window, creds, label)
            else:
                aligned.append((j, how))
        if aligned:
            _prefetch_around(
                plan, asset_index, time_indices, rows, cols, window, creds, dtype, nodata
            )
            arrays = _aio.run(
                _read_aligned_all(
                    plan, asset_index, jobs, aligned, rows, cols, creds, dtype, nodata
                )
            )
            for (j, _), array in zip(aligned, arrays, strict=True):
                if isinstance(array, GridMismatch):
                    logger.warning("%s; reading it through GDAL", array)
                    _, item_index, href, _ = jobs[j]
                    results[j] = pool.submit(
                        _read_gdal,
                        plan,
                        href,
                        asset_index,
                        window,
                        creds,
                        _label(plan, item_index),
                    )
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


async def _read_aligned_all(plan, asset_index, jobs, aligned, rows, cols, creds, dtype, fill):
    import asyncio

    async def one(j: int, how):
        _, item_index, url, _ = jobs[j]
        spec = _spec(plan, asset_index, item_index, url, how, rows, cols, creds, dtype, fill)
        try:
            return await _prefetch.read(spec)
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
_recent_lock = threading.Lock()
_recent: OrderedDict[tuple, tuple[set[int], set[str]]] = OrderedDict()  # dates, warmed URLs


def _spec(plan, asset_index, item_index, url, how, rows, cols, creds, dtype, fill) -> Spec:
    warp = None if isinstance(how, Grid) else how
    return Spec(
        url=url,
        label=_label(plan, item_index),
        auth_header=_auth_header(plan, url, creds),
        grid=None if warp else how,
        shape=plan.native[item_index][asset_index][2],
        rows=rows,
        cols=cols,
        dtype=dtype,
        fill=fill,
        cube=plan.shape,
        warp=warp,
    )


def _prefetch_around(plan, asset_index, time_indices, rows, cols, window, creds, dtype, fill):
    """Fetch the headers of the files of the dates nearest the read (up to
    :data:`~._prefetch.WARM_FILES` files, its own first) in the background.
    Reads of a window date after date, up or down: read the next dates' files ahead in
    that direction."""
    key = (hash(plan.urls), asset_index, rows.start, rows.stop, cols.start, cols.stop)
    with _recent_lock:
        state = _recent.get(key)
        if state is None:
            state = _recent[key] = (set(), set())
            while len(_recent) > _RECENT_SIZE:
                _recent.popitem(last=False)
        _recent.move_to_end(key)
        seen, warmed = state
        if any(t in seen for t in time_indices):  # the window is read again: a new pass
            seen.clear()
        lo, hi = min(time_indices), max(time_indices)
        forwards = any(t - 1 in seen for t in time_indices)
        # dask often takes a window's dates from the last partition down
        backwards = not forwards and any(t + 1 in seen for t in time_indices)
        seen.update(time_indices)
        seen_now = set(seen)

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
        aligned_files(_outwards(lo, hi, len(plan.groups))), _prefetch.WARM_FILES
    )
    with _recent_lock:
        new = [(i, url) for i, url, _ in nearest if url not in warmed]
        warmed.update(url for _, url in new)
    _prefetch.warm_headers(
        [(url, _label(plan, i), _auth_header(plan, url, creds)) for i, url in new]
    )
    if forwards or backwards:
        later = (
            range(max(time_indices) + 1, len(plan.groups))
            if forwards
            else range(min(time_indices) - 1, -1, -1)
        )
        ahead: list[Spec] = []
        for t in later:
            if len(ahead) >= _prefetch.READAHEAD_FILES:
                break
            if t in seen_now:
                continue
            for i, url, how in aligned_files([t]):
                ahead.append(_spec(plan, asset_index, i, url, how, rows, cols, creds, dtype, fill))
        _prefetch.read_ahead(ahead)


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
