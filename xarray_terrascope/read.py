"""Reading a planned cube: I/O threads, open-reader cache, per-date mosaics, errors.

Reads go through a per-process pool of I/O threads, so I/O concurrency is not bounded
by the number of cores (or by dask's threads), and through a per-process cache of open
readers, so a file's header is fetched once per process. Credentials are resolved from
the plan's opaque handle at every read, so ``logout()`` and new credentials are honoured.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from . import auth, config
from .exceptions import AuthenticationError, ReadError
from .stack import CubePlan, make_reader

__all__ = ["clear_reader_cache", "read_window"]

logger = logging.getLogger(__name__)

#: Reads in flight at once per process (network-bound, so well above the core count).
IO_THREADS = 16
#: Open readers kept per process (each holds a GDAL dataset per thread that used it).
READER_CACHE_SIZE = 256

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
    """Close and forget every open reader of this process."""
    with _readers_lock:
        readers = list(_readers.values())
        _readers.clear()
    for reader in readers:
        reader.close()


def _reader(plan: CubePlan, url: str, asset_index: int, creds: auth.Credentials | None):
    """The process's open reader for this file, grid and credentials (opened on first use)."""
    allowed = plan.send_credentials.get(url, False)
    key = (
        url,
        plan.epsg,
        plan.bounds,
        plan.resolution,
        plan.resampling,
        plan.decode[asset_index].dtype,
        creds.token if (creds and allowed) else None,
    )
    with _readers_lock:
        reader = _readers.get(key)
        if reader is not None:
            _readers.move_to_end(key)
            return reader
    reader = make_reader(plan, url, asset_index, auth.gdal_options(url, creds, allowed=allowed))
    with _readers_lock:
        _readers[key] = reader
        while len(_readers) > READER_CACHE_SIZE:
            _readers.popitem(last=False)[1].close()
    return reader


#: How GDAL's /vsicurl/ reports a refused request (the URL may contain "401", e.g. 0401).
_REFUSED = re.compile(r"HTTP response code: (401|403)\b")


def _explain(err: Exception, url: str, creds: auth.Credentials | None, sent: bool) -> Exception:
    text = str(err.__cause__ or err)
    if _REFUSED.search(text):
        who = f"user {creds.username!r}" if creds and sent else "a request without credentials"
        return AuthenticationError(
            f"Terrascope refused {who} reading {url} (GDAL: {text[-160:]}). "
            "Check the credentials (xarray_terrascope.login) and TERRASCOPE_DOWNLOAD_HOSTS."
        )
    if "not recognized as" in text or "not recognised as" in text:
        if not sent:
            return AuthenticationError(
                f"{url} did not answer with a GeoTIFF, most likely Terrascope's login page: no "
                f"credentials were sent because its host is not in TERRASCOPE_DOWNLOAD_HOSTS "
                f"({', '.join(sorted(config.download_hosts()))}). Add the host there."
            )
        return ReadError(f"{url} is not a readable raster (GDAL: {text[-200:]})")
    return ReadError(f"Reading {url} failed: {text[-300:]}")


def _read_one(plan: CubePlan, url: str, asset_index: int, window: Window, creds):
    reader = _reader(plan, url, asset_index, creds)
    try:
        return reader.read(window)
    except (RuntimeError, RasterioIOError) as err:
        sent = plan.send_credentials.get(url, False) and creds is not None
        explained = _explain(err, url, creds, sent)
        # A problem the package can name needs no GDAL traceback; anything else keeps it.
        raise explained from (None if isinstance(explained, AuthenticationError) else err)


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
        For any other failed read.
    """
    needs_creds = any(plan.send_credentials.values())
    creds = auth.resolve(plan.credentials_handle) if needs_creds else None
    spec = plan.decode[asset_index]
    nodata = spec.fill_value
    nan_fill = np.dtype(spec.dtype).kind == "f" and bool(np.isnan(nodata))
    height = rows.stop - rows.start
    width = cols.stop - cols.start
    out = np.full((len(time_indices), height, width), nodata, dtype=np.dtype(spec.dtype))
    if height == 0 or width == 0:
        return out
    window = Window(cols.start, rows.start, width, height)

    jobs = []
    for out_index, t in enumerate(time_indices):
        for item_index in plan.groups[t]:
            url = plan.urls[item_index][asset_index]
            bounds = plan.item_bounds[item_index][asset_index]
            if url is None or not _overlaps(plan, bounds, window):
                continue
            jobs.append((out_index, url))
    pool = _io_pool()
    futures = [
        (out_index, pool.submit(_read_one, plan, url, asset_index, window, creds))
        for out_index, url in jobs
    ]
    try:
        for out_index, future in futures:  # priority order within each date
            data = future.result()
            target = out[out_index]
            np.copyto(target, data, where=np.isnan(target) if nan_fill else target == nodata)
    finally:
        for _, future in futures:
            future.cancel()
    return out


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
