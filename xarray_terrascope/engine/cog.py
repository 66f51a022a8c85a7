"""Async reads of COG pixels on the output grid: header once, coalesced tiles, Rust decode.

For one file and one output window, :func:`read_aligned` takes the file's header from the
header cache (or reads it in one request), parses it with async-tiff, checks that the
file's pixel grid is the one the plan announced (same EPSG, resolution, integer offset),
fetches the internal tiles that intersect the window (their byte ranges coalesced when
the gaps are small), decodes them with async-tiff (Rust, off the event loop) and pastes
them into the window. No TIFF parsing or decompression is written here.

A header read from the persistent cache is validated against the size, ETag and
Last-Modified of the first pixel response: on a mismatch the entry is dropped and the
file is read again from the network, never decoded with the stale header. A file that
does not parse or decode with a header from either cache (a file replaced by another of
the same size, on a server that sends no validator) gets the same treatment: its header
is dropped and read again once; only a failure with a header fetched for the read itself
surfaces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from async_tiff import TIFF, ImageFileDirectory

from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.config import redacted
from xarray_terrascope.engine import aio
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.engine.requests import AlignedRead, Placement
from xarray_terrascope.engine.source import Source, identity, open_tiff
from xarray_terrascope.exceptions import AuthenticationError, ReadError

__all__ = ["AlignedReader", "GridMismatch", "check_grid", "read_aligned"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: TIFF compressions async-tiff decodes bit for bit as GDAL does (checked with
#: predictors 1, 2 and 3 on 8/16-bit integers and float32): none, LZW, Deflate (both
#: codes), ZSTD. Others (JPEG decodes differently, PackBits is not supported, LERC,
#: WebP) go through GDAL.
EXACT_COMPRESSIONS = frozenset({1, 5, 8, 32946, 50000})


class GridMismatch(Exception):
    """The file's header disagrees with the plan's grid: read it another way."""


def _epsg(ifd: ImageFileDirectory) -> int | None:
    geo = ifd.geo_key_directory
    if geo is None:
        return None
    code: int | None = geo.projected_type or geo.geographic_type
    return code


def check_grid(
    ifd: ImageFileDirectory,
    grid: Placement,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    label: str,
) -> None:
    """Raise :class:`GridMismatch` when the file's header says another grid, type,
    layout or compression than the item (the file is then read another way)."""
    scale, tie = ifd.model_pixel_scale, ifd.model_tiepoint
    problems = []
    if ifd.tile_width is None or ifd.tile_height is None:
        problems.append("not tiled")
    if _epsg(ifd) != grid.epsg:
        problems.append(f"EPSG {_epsg(ifd)} != {grid.epsg}")
    if scale is None or tie is None or tie[0] != 0 or tie[1] != 0:
        problems.append("no plain tie point and pixel scale")
    elif (
        abs(scale[0] - grid.resolution) > 1e-9 * grid.resolution
        or abs(scale[1] - grid.resolution) > 1e-9 * grid.resolution
        or abs(tie[3] - grid.x0) > 1e-6
        or abs(tie[4] - grid.y0) > 1e-6
    ):
        problems.append(f"origin/resolution {tie[3:5]}/{scale[:2]} differ from the item's")
    if (ifd.image_height, ifd.image_width) != tuple(shape):
        problems.append(f"shape {(ifd.image_height, ifd.image_width)} != {tuple(shape)}")
    if ifd.samples_per_pixel != 1 or ifd.bits_per_sample != [dtype.itemsize * 8]:
        problems.append("not one band of the expected type")
    if int(ifd.compression) not in EXACT_COMPRESSIONS:
        name = getattr(ifd.compression, "name", ifd.compression)
        problems.append(f"compression {name} is not decoded here exactly")
    if problems:
        raise GridMismatch(f"{label}: {'; '.join(problems)}")


async def read_aligned(request: AlignedRead) -> npt.NDArray[Any]:
    """The window's values from a file whose pixels are pixels of the cube.

    Tiles that cross a side of the window inside the cube (a neighbouring window will
    want them) are kept a while for that neighbour when ``request.cube`` is given.

    Raises
    ------
    GridMismatch
        When the header disagrees with ``request.placement`` (the caller reads the file
        another way).
    AuthenticationError, ReadError
        As :func:`xarray_terrascope.engine.transport.get_ranges`.
    """

    async def body(tiff: TIFF, source: Source) -> npt.NDArray[Any]:
        return await _read_tiles(tiff, source, request)

    return await with_header(request.url, request.label, request.access, body)


class AlignedReader:
    """The :class:`~xarray_terrascope.engine.requests.Reader` of :class:`AlignedRead`."""

    async def read(self, request: AlignedRead) -> npt.NDArray[Any]:
        return await read_aligned(request)


async def with_header(
    url: str,
    label: str,
    access: RequestAuth | None,
    body: Callable[[TIFF, Source], Awaitable[T]],
) -> T:
    """Run ``await body(tiff, source)`` on the file's parsed header; errors surface as the
    package's own.

    A header taken from a cache (memory or disk) gets one more chance from the server:
    when a pixel response shows the file changed (size, ETag, Last-Modified), or when
    the file does not parse or decode with it, the header is dropped and the read done
    again on a header fetched for it. Only a failure with such a fresh header surfaces.
    """
    for attempt in range(2):
        started = time.monotonic()
        try:
            tiff, source, from_disk = await open_tiff(url, label, access)
        except (AuthenticationError, ReadError):  # the header request's own failure
            raise
        except Exception as err:  # a header that fetch_header took from a cache
            if attempt:
                raise ReadError(
                    f"Parsing the header of {label} ({url}) failed: {_describe(err)}. The "
                    "file is not a readable GeoTIFF, or it changed while being read."
                ) from redacted(err)
            logger.info(
                "%s does not parse with its cached header (%s): reading it again",
                label,
                _describe(err),
            )
            headers.drop(url)
            continue
        confirmed = False
        try:
            result = await body(tiff, source)
            confirmed = True
            return result
        except GridMismatch:
            confirmed = True  # the header is the file's; the file is read another way
            raise
        except AuthenticationError:
            raise
        except Exception as err:
            cached = source.header is not None and source.header.fetched < started
            if attempt or not (source.stale or (cached and _not_transport(source))):
                raise _surface(source, err, label, url) from redacted(err)
            if source.stale:
                logger.info("%s changed since its header was cached: reading it again", label)
            else:
                logger.info(
                    "%s does not decode with its cached header (%s): reading it again",
                    label,
                    _describe(err),
                )
            headers.drop(url)
            aio.engine().tiles.clear()  # tiles decoded from the old file must not answer either
        finally:
            if confirmed and from_disk and source.remote is not None and source.header:
                headers.validated(url, source.header)
    raise AssertionError("unreachable")  # pragma: no cover


def _not_transport(source: Source) -> bool:
    """Whether a failed read failed on its bytes, not on the server's answer (a 416 is
    the bytes' too: a stale header may name ranges past the file's end)."""
    error = source.error
    if isinstance(error, AuthenticationError):
        return False
    return not isinstance(error, ReadError) or getattr(error, "status_code", None) == 416


def _describe(err: BaseException) -> str:
    """``str(err)``, or the exception's type when that is empty."""
    return str(err).strip() or type(err).__name__


def _surface(source: Source, err: Exception, label: str, url: str) -> Exception:
    if isinstance(source.error, (AuthenticationError, ReadError)):
        return source.error
    if isinstance(err, (AuthenticationError, ReadError)):
        return err
    if source.stale:
        return ReadError(
            f"{label} ({url}) changed again while being read (its size, ETag or "
            "Last-Modified differ from its header's); read it again later."
        )
    return ReadError(
        f"Decoding {label} ({url}) failed: {_describe(err)}. Its bytes do not decode with "
        "its header: the file is corrupt, or it changed while being read."
    )


async def _read_tiles(tiff: TIFF, source: Source, request: AlignedRead) -> npt.NDArray[Any]:
    ifd = tiff.ifds[0]
    grid, window, dtype, cube = request.placement, request.window, request.dtype, request.cube
    check_grid(ifd, grid, request.shape, dtype, request.label)
    height, width = request.shape
    rows, cols = window.rows, window.cols
    r0 = max(window.row0 + grid.row_offset, 0)
    r1 = min(window.row1 + grid.row_offset, height)
    c0 = max(window.col0 + grid.col_offset, 0)
    c1 = min(window.col1 + grid.col_offset, width)
    size = window.shape
    if (r1 - r0, c1 - c0) == size and request.needed is None:
        out = np.empty(size, dtype=dtype)  # the file covers the window: its tiles fill it
    else:
        out = np.full(size, request.fill, dtype=dtype)
    if r0 >= r1 or c0 >= c1:
        return out
    th, tw = ifd.tile_height, ifd.tile_width
    assert th is not None and tw is not None  # check_grid: the file is tiled
    xy = [
        (tx, ty)
        for ty in range(r0 // th, (r1 - 1) // th + 1)
        for tx in range(c0 // tw, (c1 - 1) // tw + 1)
    ]
    if request.needed is not None:  # the tiles holding a wanted pixel
        xy = [tile for tile in xy if _wanted(request, tile, th, tw)]
    # the window's sides that a neighbouring window of the cube shares (file pixels)
    top, bottom, left, right = (
        (-1, -1, -1, -1)
        if cube is None
        else (
            r0 if rows.start > 0 else -1,
            r1 if rows.stop < cube[0] else -1,
            c0 if cols.start > 0 else -1,
            c1 if cols.stop < cube[1] else -1,
        )
    )

    def shared(tx: int, ty: int) -> bool:  # crosses a side a neighbouring window shares
        return (
            ty * th < top < (ty + 1) * th
            or ty * th < bottom < (ty + 1) * th
            or tx * tw < left < (tx + 1) * tw
            or tx * tw < right < (tx + 1) * tw
        )

    blocks = await tiles_of(tiff, source, xy, shared)
    for (tx, ty), block in zip(xy, blocks, strict=True):
        # this tile's part of the file window, in file pixels
        fr0, fc0 = max(r0, ty * th), max(c0, tx * tw)
        fr1, fc1 = min(r1, (ty + 1) * th), min(c1, (tx + 1) * tw)
        out[
            fr0 - grid.row_offset - rows.start : fr1 - grid.row_offset - rows.start,
            fc0 - grid.col_offset - cols.start : fc1 - grid.col_offset - cols.start,
        ] = block[fr0 - ty * th : fr1 - ty * th, fc0 - tx * tw : fc1 - tx * tw].view(dtype)
    return out


def _wanted(request: AlignedRead, tile: tuple[int, int], th: int, tw: int) -> bool:
    """Whether file tile ``(tx, ty)`` holds a pixel of the window that is wanted."""
    assert request.needed is not None
    tx, ty = tile
    dr, dc = (
        request.placement.row_offset + request.window.row0,
        (request.placement.col_offset + request.window.col0),
    )
    rows = slice(max(ty * th - dr, 0), max((ty + 1) * th - dr, 0))
    cols = slice(max(tx * tw - dc, 0), max((tx + 1) * tw - dc, 0))
    return bool(request.needed[rows, cols].any())


async def tiles_of(
    tiff: TIFF,
    source: Source,
    xy: Sequence[tuple[int, int]],
    keep: Callable[[int, int], bool],
) -> list[npt.NDArray[Any]]:
    """Decoded tiles ``xy`` of the file, through the engine's tile store
    (:class:`~xarray_terrascope.engine.tile_store.TileCache`).

    Tiles another read holds or is fetching are taken from it; the others are fetched in
    one batch (coalesced ranges), and those for which ``keep(tx, ty)`` is true (a
    neighbouring window will want them) are kept; all of them while the store keeps all
    (:meth:`~xarray_terrascope.engine.tile_store.TileCache.keeping_all`).
    """
    tiles = aio.engine().tiles
    found: dict[tuple[int, int], npt.NDArray[Any]] = {}
    waits: dict[tuple[int, int], asyncio.Future[npt.NDArray[Any] | None]] = {}
    mine: list[tuple[int, int]] = []
    for tx, ty in xy:
        entry = tiles.get(_tile_key(source, tx, ty))
        if isinstance(entry, np.ndarray):
            found[tx, ty] = entry
        elif entry is not None:
            waits[tx, ty] = entry
        else:
            tiles.claim(_tile_key(source, tx, ty))
            mine.append((tx, ty))
    try:
        for (tx, ty), block in zip(mine, await _fetch_decode(tiff, source, mine), strict=True):
            tiles.finish(_tile_key(source, tx, ty), block, keep=keep(tx, ty))
            found[tx, ty] = block
    except Exception as err:
        for tx, ty in mine:
            tiles.fail(_tile_key(source, tx, ty), err)
        raise
    except BaseException:  # this read is cancelled: its waiters fetch the tiles themselves
        for tx, ty in mine:
            tiles.finish(_tile_key(source, tx, ty), None, keep=False)
        raise
    for key, future in waits.items():
        try:
            # shielded: this read's cancellation must not cancel the fetch others wait for
            tile = await asyncio.shield(future)
        except Exception:  # the other read failed (its own error): fetch it ourselves
            tile = None
        except asyncio.CancelledError:
            if _cancelling():
                raise
            tile = None  # the read fetching it was cancelled, not this one
        if tile is None:
            (tile,) = await _fetch_decode(tiff, source, [key])
        found[key] = tile
    return [found[key] for key in xy]


def _cancelling() -> bool:
    """Whether the current task is being cancelled (a CancelledError it sees is its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _tile_key(source: Source, tx: int, ty: int) -> Hashable:
    """A tile is shared only between reads with the same credentials: another account's
    read asks the server itself (keyed by their identity, never their value)."""
    return (source.url, identity(source.access), tx, ty)


async def _fetch_decode(
    tiff: TIFF, source: Source, xy: Sequence[tuple[int, int]]
) -> list[npt.NDArray[Any]]:
    if not xy:
        return []
    try:
        fetched = await tiff.fetch_tiles(xy, 0)
    except Exception as err:
        raise source.error or err from redacted(err)
    if source.error is not None:
        raise source.error
    decoded = await asyncio.gather(*(tile.decode() for tile in fetched))
    blocks = [np.asarray(array) for array in decoded]
    return [block[..., 0] if block.ndim == 3 else block for block in blocks]
