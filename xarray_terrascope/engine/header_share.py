"""COG headers fetched once for a cluster: by the client, handed to every worker.

The workers of a cluster each keep their own header cache; started together, each would
fetch every file's header before another had persisted it (the disk cache is shared
only by processes of one machine, and only once written). :func:`fetch_plan_headers`
fetches, in the calling process, the headers of every file a plan's assets read (through
the process's header cache: none twice), as a picklable :class:`SharedHeaders` keyed by
the cache's key (a hash of the URL: no URL, no secret); :func:`install` puts them in a
worker's in-memory cache, once per worker and blob, so its reads request no header.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from xarray_terrascope import auth
from xarray_terrascope.engine import aio
from xarray_terrascope.engine.header_cache import Header, headers, key_of
from xarray_terrascope.engine.read import _request
from xarray_terrascope.engine.requests import GdalRead, Window
from xarray_terrascope.engine.source import fetch_header
from xarray_terrascope.plan.planner import CubePlan

__all__ = ["SharedHeaders", "fetch_plan_headers", "install"]

logger = logging.getLogger(__name__)

#: Tokens of the blobs this process has installed (each is installed once).
_installed: set[str] = set()


@dataclass(frozen=True)
class SharedHeaders:
    """Headers by header-cache key, with a token that names this blob."""

    entries: dict[str, Header]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def nbytes(self) -> int:
        """Bytes of header data held."""
        return sum(len(h.data) for h in self.entries.values())


def _targets(
    pairs: Iterable[tuple[CubePlan, int]],
) -> list[tuple[str, str, auth.RequestAuth | None]]:
    """``(url, label, access)`` of each file the async engine reads for the pairs'
    whole cube (files it reads through GDAL, or local ones, have no header here)."""
    seen: set[str] = set()
    out = []
    for plan, asset_index in pairs:
        needs_creds = any(plan.send_credentials.values())
        creds = auth.resolve(plan.credentials_handle) if needs_creds else None
        window = Window(0, plan.shape[0], 0, plan.shape[1])
        for group in plan.groups:
            for item_index in group:
                request = _request(plan, asset_index, item_index, window, creds)
                if request is None or isinstance(request, GdalRead) or request.url in seen:
                    continue
                seen.add(request.url)
                out.append((request.url, request.label, request.access))
    return out


def fetch_plan_headers(pairs: Sequence[tuple[CubePlan, int]]) -> SharedHeaders:
    """The headers of the files of ``(plan, asset_index)`` pairs, fetched here (those
    cached here cost no request). A header that fails is left out: the worker that
    reads its file fetches it and raises the error itself.

    Raises
    ------
    AuthenticationError
        When this process has no credentials for a plan that needs them.
    """
    targets = _targets(pairs)
    if not targets or not aio.native_usable():
        return SharedHeaders({})

    async def gather() -> list[tuple[Header, bool] | BaseException]:
        first = await asyncio.gather(fetch_header(*targets[0]), return_exceptions=True)
        rest = await asyncio.gather(
            *(fetch_header(*target) for target in targets[1:]), return_exceptions=True
        )
        return [*first, *rest]

    results = aio.run(gather())
    entries: dict[str, Header] = {}
    for (url, _label, _access), result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            logger.debug("header of %s not shared: %r", _label, result)
            continue
        entries[key_of(url)] = result[0]
    logger.info(
        "fetched %d of %d COG headers to share (%.1f kB)",
        len(entries),
        len(targets),
        sum(len(h.data) for h in entries.values()) / 1e3,
    )
    return SharedHeaders(entries)


def install(shared: SharedHeaders | None) -> int:
    """Put ``shared``'s headers in this process's in-memory header cache (once per
    blob: a header this process later dropped as stale is not put back); returns how
    many were new here."""
    if shared is None or shared.token in _installed:
        return 0
    _installed.add(shared.token)
    return headers.seed(shared.entries)
