"""One COG file as async-tiff's store (obspec): its header from memory, the rest over HTTP.

A :class:`Source` is made per read, so the credentials, the error seen and the
validation state belong to that read only. Its tile ranges are coalesced when the gaps
are small (:func:`coalesce`) and the bytes already held are not asked for again.
:func:`fetch_header` reads a file's header in one request (sized from the headers seen
so far of the same family of files, :func:`file_family`), shared by concurrent reads of
the file and kept in the header cache; :func:`open_tiff` parses it into an async-tiff
``TIFF`` for one read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from async_tiff import TIFF

from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.config import redacted
from xarray_terrascope.engine import aio, origins, transport
from xarray_terrascope.engine.header_cache import Header, headers
from xarray_terrascope.exceptions import ReadError

__all__ = [
    "COALESCE_BYTES",
    "COALESCE_BYTES_MULTIRANGE",
    "COALESCE_FRACTION",
    "Source",
    "StaleHeader",
    "coalesce",
    "fetch_header",
    "file_family",
    "identity",
    "open_tiff",
]

#: First header read when nothing is known yet (Terrascope headers are a few KiB).
DEFAULT_PREFETCH = 16 * 1024
MAX_PREFETCH = 256 * 1024
#: Bytes read beyond the largest header seen in a file's family (:func:`file_family`),
#: at least: the files of one product and band share their layout, so their headers
#: differ by a few bytes of text tags. The margin is an eighth of that header when
#: larger (a family that holds files of two layouts, by a coarser name). A longer
#: header costs one more request (for its tail), and raises the family's size for the
#: next files.
FAMILY_MARGIN = 256
#: Families whose header size is kept (the oldest is forgotten first).
FAMILIES = 256
#: Two tile ranges of one file are fetched together when the bytes between them are at
#: most this many, or at most this fraction of the useful bytes of the merged request.
COALESCE_BYTES = 2048
COALESCE_FRACTION = 0.1
#: The same, for an origin known to answer multi-range requests: all the ranges go in
#: one request anyway, so bridging a gap saves only the part's own header in the
#: ``multipart/byteranges`` answer (about 100 bytes), and would fetch the tiles in the
#: gap (tiles a cloud mask covers, tiles outside the window) for nothing.
COALESCE_BYTES_MULTIRANGE = 128

#: The largest header seen per file family, in this process.
_learned: dict[str, int] = {}
_VARYING = re.compile(r"[A-Za-z]*[0-9][A-Za-z0-9]*")


def file_family(url: str) -> str:
    """The family of a file, by its URL: the origin and the path with every word that
    holds a digit (dates, tile ids, platforms, band numbers, versions) made ``#``.

    Files of one family (one product's band at one resolution, whatever the date and
    tile) have headers of the same layout, so of about the same size.

    Examples
    --------
    >>> file_family("https://h/Sentinel2/TOC_V2/2025/04/01/S2A_20250401T103621_31UFS"
    ...             "_TOC-B04_10M_V220.tif")
    'https://h/#/TOC_#/#/#/#/#_#_#_TOC-#_#_#.tif'
    >>> file_family("https://h/S2B_20250516T104619_31UFS_SCENECLASSIFICATION_20M_V220.tif")
    'https://h/#_#_#_SCENECLASSIFICATION_#_#.tif'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{_VARYING.sub('#', parts.path)}"


def _prefetch(url: str) -> int:
    """Bytes of the first request for ``url``'s header: the largest header of its family
    and a margin (:data:`FAMILY_MARGIN`, or an eighth of it), in steps of 256 bytes;
    else, from another family's, the largest header seen with a quarter and a KiB more;
    else :data:`DEFAULT_PREFETCH`."""
    family = _learned.get(file_family(url))
    if family:
        size = family + max(FAMILY_MARGIN, family // 8)
        return min(MAX_PREFETCH, -(-size // 256) * 256)
    seen = max(_learned.values(), default=0)
    if not seen:
        return DEFAULT_PREFETCH
    size = int(seen * 1.25) + 1024
    return min(MAX_PREFETCH, -(-size // 4096) * 4096)


def _learn(url: str, size: int) -> None:
    family = file_family(url)
    _learned[family] = max(_learned.pop(family, 0), size)  # now the most recent
    while len(_learned) > FAMILIES:
        del _learned[next(iter(_learned))]


class StaleHeader(Exception):
    """A pixel response describes another file than the cached header."""


def coalesce(
    ranges: Sequence[tuple[int, int]],
    gap_bytes: int = COALESCE_BYTES,
    gap_fraction: float = COALESCE_FRACTION,
) -> list[tuple[int, int]]:
    """Merge sorted-or-not byte ranges whose gaps are small (at most ``gap_bytes``, or
    ``gap_fraction`` of the useful bytes of the merged range); returns sorted ranges.

    Examples
    --------
    >>> coalesce([(10, 20), (0, 5), (5000, 6000)])
    [(0, 20), (5000, 6000)]
    >>> coalesce([(0, 5000), (5500, 9000)], gap_bytes=128, gap_fraction=0)
    [(0, 5000), (5500, 9000)]
    """
    merged: list[list[int]] = []
    useful = 0
    for start, end in sorted(ranges):
        if merged:
            gap = start - merged[-1][1]
            if gap <= max(gap_bytes, gap_fraction * (useful + end - start)):
                merged[-1][1] = max(merged[-1][1], end)
                useful += end - start
                continue
        merged.append([start, end])
        useful = end - start
    return [(s, e) for s, e in merged]


class Source:
    """obspec input for async-tiff: one file, header bytes from memory, the rest over HTTP.

    Made per read, so the credentials, the error seen and the validation state belong to
    that read only.
    """

    def __init__(
        self, url: str, label: str, access: RequestAuth | None, header: Header | None
    ) -> None:
        self.url, self.label, self.access = url, label, access
        self.header = header
        self.prefix = header.data if header is not None else b""
        self.remote: transport.Remote | None = None
        self.error: BaseException | None = None
        self.stale = False
        self.requests = 0

    async def fetch(self, start: int, end: int) -> bytes:
        held = len(self.prefix)
        if end <= held:
            return self.prefix[start:end]
        if start < held:  # the bytes held are not asked for again
            return self.prefix[start:] + bytes(await self.fetch(held, end))
        (data,) = await self.fetch_many([(start, end)])
        if start == held and self.header is None:
            self.prefix += bytes(data)  # header reads past the prefix extend it
        return data

    async def fetch_many(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """Byte ranges of the file in one request (multi-range) where the server allows."""
        self.requests += 1
        try:
            blobs, remote = await transport.get_ranges(
                self.url, spans, access=self.access, label=self.label
            )
        except transport.FileChanged:
            remote = None
        except BaseException as err:
            self.error = self.error or err
            raise
        # every answer of the read must describe the file its header came from: the
        # header's (cached or read now), else this read's first answer
        header = self.header
        seen = (
            self.remote
            if header is None
            else origins.Remote(header.size, header.etag, header.last_modified)
        )
        if remote is None or (seen is not None and not seen.matches(remote)):
            self.stale = True
            self.error = self.error or StaleHeader(self.url)
            raise self.error
        self.remote = self.remote or remote
        return blobs

    async def get_range_async(
        self, path: str, *, start: int, end: int | None = None, length: int | None = None
    ) -> bytes:
        """obspec's single range (async-tiff asks for the header this way)."""
        if end is None:
            assert length is not None, "obspec gives an end or a length"
            end = start + length
        return await self.fetch(start, end)

    async def get_ranges_async(
        self,
        path: str,
        *,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> list[memoryview]:
        """obspec's several ranges (async-tiff asks for tiles this way): one request."""
        if ends is None:
            assert lengths is not None, "obspec gives ends or lengths"
            ends = [s + n for s, n in zip(starts, lengths, strict=True)]
        wanted = list(zip(starts, ends, strict=True))
        if origins.multirange(self.url):  # one request for all: bridge only tiny gaps
            spans = coalesce(wanted, COALESCE_BYTES_MULTIRANGE, 0.0)
        else:  # unknown yet, or one range per request: a bridged gap saves a request
            spans = coalesce(wanted)
        # The bytes held (the header request's, often the first tiles' too) are not
        # asked for again: a span across their end is fetched from there.
        held = len(self.prefix)
        beyond = [(max(s, held), e) for s, e in spans if e > held]
        fetched = dict(zip(beyond, await self.fetch_many(beyond), strict=True)) if beyond else {}
        blobs: list[bytes | memoryview] = []
        for s, e in spans:
            if e <= held:
                blobs.append(self.prefix[s:e])
            elif s >= held:
                blobs.append(fetched[s, e])
            else:
                blobs.append(self.prefix[s:] + bytes(fetched[held, e]))
        out: list[memoryview] = []
        for start, end in wanted:
            for (s, e), blob in zip(spans, blobs, strict=True):
                if s <= start and end <= e:
                    out.append(memoryview(blob)[start - s : end - s])
                    break
        return out


async def fetch_header(url: str, label: str, access: RequestAuth | None) -> tuple[Header, bool]:
    """The file's header: from the cache, else in one request (then cached).

    Concurrent calls for one URL share one request. Returns the header and whether it
    came from disk (so is not validated in this process yet).
    """
    cached, from_disk = headers.get(url)
    if cached is not None:
        return cached, from_disk
    pending = aio.engine().pending_headers
    header = await aio.shared(pending, url, lambda: _fetch_header(url, label, access))
    return header, False


async def _fetch_header(url: str, label: str, access: RequestAuth | None) -> Header:
    source = Source(url, label, access, None)
    await source.fetch(0, _prefetch(url))  # fills source.prefix
    try:
        aio.native_started()
        tiff = await TIFF.open(url, store=source, prefetch=len(source.prefix))
    except Exception as err:
        if source.error is not None:
            raise source.error from None
        raise ReadError(f"{label} ({url}) is not a readable GeoTIFF: {err}") from redacted(err)
    if source.error is not None:
        raise source.error
    need = tiff.header_byte_size or len(source.prefix)
    if need > len(source.prefix):
        await source.fetch(len(source.prefix), need)  # extends source.prefix
    _learn(url, need)
    remote = source.remote
    header = Header(
        bytes(source.prefix[:need]),
        remote.size if remote else None,
        remote.etag if remote else None,
        remote.last_modified if remote else None,
        fetched=time.monotonic(),
    )
    headers.put(url, header)
    source.header = header  # from here on it reads as any source of a known header
    # handed to the first read of the file, which then does not parse the header again
    aio.engine().parsed.put((url, identity(access)), (tiff, source))
    return header


def identity(access: RequestAuth | None) -> str | None:
    """What caches of this module key by for ``access``: never the secret itself."""
    return access.identity if access is not None else None


async def open_tiff(url: str, label: str, access: RequestAuth | None) -> tuple[TIFF, Source, bool]:
    """Parse the file's header (no request when it is cached) into a TIFF for one read."""
    header, from_disk = await fetch_header(url, label, access)
    parsed = aio.engine().parsed.pop((url, identity(access)), None)
    if parsed is not None and parsed[1].header is header:  # parsed by its header request
        kept = parsed[1].access
        if kept is None or kept.current:  # (its source, made before a logout, sends nothing)
            return parsed[0], parsed[1], from_disk
    source = Source(url, label, access, header)
    aio.native_started()
    tiff = await TIFF.open(url, store=source, prefetch=len(header.data))
    return tiff, source, from_disk
