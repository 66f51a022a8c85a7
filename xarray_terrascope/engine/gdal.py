"""GDAL's path: files warped with a resampling other than nearest, and local files.

These go through stackstac's reader (a ``WarpedVRT``, see
:func:`~xarray_terrascope.plan.planner.make_reader`) in a pool of I/O threads, beside the async
reads. Open readers are cached per file, grid and credentials.

A failed GDAL read is diagnosed with one ranged GET (same scoped credentials), so 401/403
become :class:`~xarray_terrascope.exceptions.AuthenticationError` and other failures a
:class:`~xarray_terrascope.exceptions.ReadError` naming the item and the HTTP status;
transient failures (dropped connections, 429, 5xx) are retried after dropping GDAL's
cached state of that URL, so a failure never sticks in the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from xarray_terrascope import auth, config, http_policy
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import gdal_cache, transport
from xarray_terrascope.engine.requests import GdalRead
from xarray_terrascope.exceptions import AuthenticationError, ReadError, TerrascopeError
from xarray_terrascope.options import get_options
from xarray_terrascope.plan.planner import CubePlan, make_reader

__all__ = [
    "IO_THREADS",
    "READER_CACHE_SIZE",
    "RETRY",
    "GdalReader",
    "clear_readers",
    "io_pool",
    "read_gdal",
]

logger = logging.getLogger(__name__)

#: GDAL reads in flight at once per process (network-bound, so well above the core count).
IO_THREADS = 16
#: ``(rows, columns)`` of a block of GDAL's warped VRTs (stackstac sets none: GDAL's
#: default), the unit of every GDAL read (see :func:`_read_blocks`).
VRT_BLOCK = (128, 512)
#: Open GDAL readers kept per process (each holds a GDAL dataset per thread that used it).
READER_CACHE_SIZE = 256
#: How a GDAL read is retried through transient failures (attempts, backoff, statuses).
RETRY = http_policy.GDAL

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
#: Open readers by file, grid and credentials; the least recently used are closed.
_readers: BoundedCache[Hashable, Any] = BoundedCache(
    READER_CACHE_SIZE, on_evict=lambda _key, reader: reader.close()
)


#: In a forked child: the parent's open readers, kept (never closed: closing would act on
#: connections the parent still uses).
_forked_readers: list[BoundedCache[Hashable, Any]] = []


def _reset_after_fork() -> None:
    """In a forked child: a pool and readers of its own (the parent's pool threads do
    not exist here, and a task submitted to its pool would wait for ever)."""
    global _pool, _pool_lock, _readers
    _forked_readers.append(_readers)
    _pool, _pool_lock = None, threading.Lock()
    _readers = BoundedCache(READER_CACHE_SIZE, on_evict=lambda _key, reader: reader.close())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def io_pool() -> ThreadPoolExecutor:
    """The process's pool of threads running GDAL reads."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="terrascope-io")
        return _pool


def clear_readers() -> None:
    """Close and forget every open GDAL reader of this process."""
    with _readers.lock:
        readers = list(_readers.values())
        _readers.clear()
    for reader in readers:
        reader.close()


def _reader(plan: CubePlan, url: str, asset_index: int, creds: auth.AnyCredentials | None) -> Any:
    """The process's open GDAL reader (stackstac's, untyped) for this file, grid and
    credentials."""
    key = _reader_key(plan, url, asset_index, creds)
    with _readers.lock:
        reader = _readers.get(key)
        if reader is not None:
            return reader
    allowed = plan.send_credentials.get(url, False)
    reader = make_reader(plan, url, asset_index, auth.gdal_options(url, creds, allowed=allowed))
    with _readers.lock:
        _readers.put(key, reader)
    return reader


def _reader_key(
    plan: CubePlan, url: str, asset_index: int, creds: auth.AnyCredentials | None
) -> Hashable:
    allowed = plan.send_credentials.get(url, False)
    return (
        url,
        plan.epsg,
        plan.bounds,
        plan.resolution,
        plan.resampling_of(asset_index),
        plan.packing[asset_index].dtype,
        auth.reader_identity(creds) if (creds and allowed) else None,
    )


def _forget_reader(
    plan: CubePlan, url: str, asset_index: int, creds: auth.AnyCredentials | None
) -> None:
    with _readers.lock:
        reader = _readers.pop(_reader_key(plan, url, asset_index, creds), None)
    if reader is not None:
        reader.close()
    gdal_cache.clear_url(url)


#: How GDAL's /vsicurl/ reports a refused request (the URL may contain "401", e.g. 0401).
_REFUSED = re.compile(r"HTTP response code: (401|403)\b")


def _failed(
    label: str,
    url: str,
    status: int | None,
    creds: auth.AnyCredentials | None,
    sent: bool,
    detail: str = "",
) -> TerrascopeError:
    """The error for a read of ``url`` answered ``status`` (see
    :func:`~xarray_terrascope.http_policy.error_for`)."""
    return http_policy.error_for(
        status,
        what=f"reading {label}",
        url=url,
        credentials_sent=sent,
        detail=detail,
        user=creds.username if creds else None,
    )


def _explain(
    err: Exception,
    url: str,
    creds: auth.AnyCredentials | None,
    sent: bool,
    label: str | None = None,
) -> Exception:
    """What GDAL's error text alone says: a refusal, a non-raster answer, or a failure.

    ``label`` names the file to the user (the item id; default: the URL).
    """
    text = str(err.__cause__ or err)
    refused = _REFUSED.search(text)
    if refused:
        return _failed(label or url, url, int(refused.group(1)), creds, sent)
    shown = config.public_url(url)
    where = f"{label} ({shown})" if label else shown
    if "not recognized as" in text or "not recognised as" in text:
        if not sent:
            return AuthenticationError(
                f"{where} did not answer with a GeoTIFF, most likely Terrascope's login page: "
                f"no credentials were sent because its origin is not in "
                f"TERRASCOPE_DOWNLOAD_HOSTS ({', '.join(sorted(get_options().allowed_origins))}). "
                "Add it there."
            )
        return ReadError(f"{where} is not a readable raster (GDAL: {config.redact(text[-200:])})")
    return ReadError(f"Reading {where} failed: {config.redact(text[-300:])}")


def read_gdal(request: GdalRead) -> npt.NDArray[Any]:
    """One GDAL read of the request's window, on this thread, with diagnosis of failures
    and retries of transient ones (a refusal is diagnosed with one ranged GET that
    carries what ``request.access`` allows).
    """
    plan, url, asset_index = request.plan, request.url, request.asset_index
    creds, label, access = request.credentials, request.label, request.access
    sent = plan.send_credentials.get(url, False) and creds is not None
    web = url.split(":", 1)[0].lower() in ("http", "https")
    for attempt in range(RETRY.attempts):
        reader = _reader(plan, url, asset_index, creds)
        try:
            data = _read_blocks(reader, request.window, plan.shape)
        except TerrascopeError:
            raise
        except (RuntimeError, RasterioIOError) as err:
            text = str(err.__cause__ or err)
            _forget_reader(plan, url, asset_index, creds)  # a failure must not stick
            if not web:  # no server to ask, no login page, no status: the file itself
                raise ReadError(
                    f"Reading {label} from the local file {config.public_url(url)} failed: "
                    f"it is not a readable GeoTIFF (GDAL: {config.redact(text[-200:])}). "
                    "Check the file, or read it from the download service "
                    "(open_dataset(..., prefer_local=False))."
                ) from config.redacted(err)
            explained = _explain(err, url, creds, sent, label)
            if isinstance(explained, AuthenticationError):
                raise explained from None
            status = transport.probe_status(url, access)
            if status in http_policy.REFUSED:
                raise _failed(label, url, status, creds, sent) from None
            if status in (301, 302, 303, 307, 308) and not sent:
                raise AuthenticationError(
                    f"{label} ({url}) redirects to a login page: no credentials were sent "
                    "because its origin is not in TERRASCOPE_DOWNLOAD_HOSTS "
                    f"({', '.join(sorted(get_options().allowed_origins))}). Add it there."
                ) from None
            transient = status is None or status in RETRY.transient or status in (200, 206, 302)
            if not transient or attempt == RETRY.attempts - 1:
                detail = f" (GDAL: {config.redact(text[-200:])})"
                raise _failed(label, url, status, creds, sent, detail) from config.redacted(err)
            delay = RETRY.delay(attempt)
            logger.debug("GDAL read of %s failed (HTTP %s): retry in %.2f s", label, status, delay)
            time.sleep(delay)
        except Exception as err:  # stackstac's checks of the file (a GeoTIFF with no CRS)
            _forget_reader(plan, url, asset_index, creds)
            raise ReadError(
                f"Reading {label} ({config.public_url(url)}) failed: "
                f"{type(err).__name__}: {config.redact(str(err))[:300]}. The file is not a "
                "GeoTIFF of the kind its item describes (a grid with a CRS)."
            ) from config.redacted(err)
        else:
            # GDAL's /vsicurl/ cache is the process's, whoever asks: what this read
            # fetched with credentials must not answer a plain rasterio.open(url)
            gdal_cache.clear_url(url)
            return data
    raise AssertionError("unreachable")  # pragma: no cover


def _read_blocks(reader: Any, wanted: Any, shape: tuple[int, int]) -> npt.NDArray[Any]:
    """The cube's ``wanted`` window (a :class:`~.requests.Window`) read block by block of
    the warped VRT, whose blocks lie on the cube's grid from its corner.

    GDAL warps each read at once, its transformer and source window fitted over the
    window asked for (whole blocks or not), so a pixel would depend on the chunk it is
    read in; read one block at a time, the same blocks whatever the chunk, it does not.
    """
    rows, cols = VRT_BLOCK
    height, width = shape
    out: npt.NDArray[Any] | None = None
    for r in range(wanted.row0 - wanted.row0 % rows, wanted.row1, rows):
        for c in range(wanted.col0 - wanted.col0 % cols, wanted.col1, cols):
            block = reader.read(Window(c, r, min(cols, width - c), min(rows, height - r)))
            if out is None:
                out = np.empty((*block.shape[:-2], *wanted.shape), block.dtype)
            top, left = max(r, wanted.row0), max(c, wanted.col0)
            bottom = min(r + block.shape[-2], wanted.row1)
            right = min(c + block.shape[-1], wanted.col1)
            out[
                ...,
                top - wanted.row0 : bottom - wanted.row0,
                left - wanted.col0 : right - wanted.col0,
            ] = block[..., top - r : bottom - r, left - c : right - c]
    assert out is not None, "a window of at least one pixel"
    return out


class GdalReader:
    """The :class:`~xarray_terrascope.engine.requests.Reader` of :class:`GdalRead`: runs
    :func:`read_gdal` in the process's pool of I/O threads, beside the async reads."""

    async def read(self, request: GdalRead) -> npt.NDArray[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(io_pool(), read_gdal, request)
