"""What the async engine learns about each origin (``scheme://host:port``) it reads from,
per event loop (the tables live in :class:`~xarray_terrascope.engine.aio.EngineState`):
its :class:`~xarray_terrascope.engine.limiter.Limiter`, whether it answers several ranges
in one request, whether it answers ranges at all, and the whole files kept from an origin
that does not (per file and account, bounded by the ``whole_files_mb`` option).

The turns (:func:`multirange_turn`, :func:`range_turn`) make the requests that find out
go alone, so that an origin answering with whole files sends one, not one per request
in flight. Only on the loop thread, except :func:`reset_limiters` and
:func:`forget_files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from xarray_terrascope import config
from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.config import origin as _parse_origin
from xarray_terrascope.engine import aio
from xarray_terrascope.engine.limiter import Limiter
from xarray_terrascope.options import get_options

__all__ = [
    "Remote",
    "forget_files",
    "ignores_ranges",
    "keep_whole",
    "learn",
    "limiter",
    "multirange",
    "multirange_turn",
    "origin",
    "range_turn",
    "reset_limiters",
    "saw_ranges",
    "whole",
]

logger = logging.getLogger(__name__)

_public = config.public_url


#: Origins of URLs seen (a pure function of the URL; parsed once, not per request).
origin = functools.lru_cache(maxsize=4096)(_parse_origin)


@dataclass(frozen=True)
class Remote:
    """What a response said about the whole file: its size, ETag and Last-Modified (any
    may be None)."""

    size: int | None
    etag: str | None
    last_modified: str | None = None

    def matches(self, other: Remote) -> bool:
        """Whether ``other`` describes the same file: the sizes agree, and the ETags, or
        the Last-Modified dates when either side has no ETag (an ETag is the stronger
        validator, RFC 9110 8.8.1). Values one side does not know pass.

        Examples
        --------
        >>> Remote(100, '"v1"').matches(Remote(100, '"v2"'))
        False
        >>> Remote(100, None).matches(Remote(99, None))
        False
        >>> Remote(100, None, "Mon, 02 Jun 2025").matches(Remote(100, '"v2"'))
        True
        """
        if self.size is not None and other.size is not None and self.size != other.size:
            return False
        if self.etag and other.etag:
            return self.etag == other.etag
        mine, theirs = self.last_modified, other.last_modified
        return not (mine and theirs and mine != theirs)


def reset_limiters() -> None:
    """Forget what was learnt about every host (its limit, whether it answers multi-range
    or any range requests) and the whole files kept: the next request starts afresh."""

    async def reset() -> None:
        state = aio.engine()
        for table in (state.limiters, state.multirange, state.ignores_ranges, state.ranges_seen):
            table.clear()
        state.whole_files = None

    aio.run(reset())


def forget_files() -> None:
    """Drop the whole files kept for origins that ignore ``Range`` (on a change of
    credentials: what was read with the old ones must not answer a later read)."""

    async def forget() -> None:
        aio.engine().whole_files = None

    if aio.started() is not None and not aio.in_loop_thread():
        aio.run(forget())


def limiter(url: str) -> Limiter:
    limiters = aio.engine().limiters
    key = origin(url) or url
    limiter = limiters.get(key)
    maximum = get_options().max_connections
    if limiter is None or limiter.maximum != maximum:
        limiter = limiters[key] = Limiter(maximum)
    return limiter


def multirange(url: str) -> bool | None:
    """What this loop learnt of the origin's multi-range answers (None: not tried yet)."""
    return aio.engine().multirange.get(origin(url) or url)


@contextlib.asynccontextmanager
async def multirange_turn(url: str) -> AsyncIterator[bool | None]:
    """What is known of the origin's multi-range answers, once no other request of this
    loop is finding it out. None: this request finds out, and the others wait for it, so
    an origin that answers with whole files sends one, not one per request in flight."""
    state, probes = aio.engine().multirange, aio.engine().multirange_probes
    key = origin(url) or url
    while state.get(key) is None and key in probes:
        await probes[key].wait()
    known = state.get(key)
    if known is None:
        probes[key] = asyncio.Event()
    try:
        yield known
    finally:
        if known is None:
            probes.pop(key).set()


def learn(urls: tuple[str, ...], supported: bool) -> None:
    """Remember how the origins of a request (and of its redirect target) answer."""
    known = aio.engine().multirange
    for url in urls:
        known[origin(url) or url] = supported


def keep_whole(
    url: str, target: str, body: bytes, remote: Remote, access: RequestAuth | None
) -> None:
    """Remember that the origin of ``url`` (and of its redirect ``target``) ignores
    ``Range``, saying so once per origin, and keep ``body`` for the file's other ranges
    read with the same ``access``, while the ``whole_files_mb`` option allows."""
    state = aio.engine()
    ignoring = state.ignores_ranges
    for each in (url, target):
        key = origin(each) or each
        if key not in ignoring:
            ignoring.add(key)
            logger.warning(
                "%s answers HTTP Range requests with whole files: each file it serves is "
                "downloaded whole (%.1f MB for %s) and its parts are cut from memory",
                key,
                len(body) / 1e6,
                _public(each),
            )
    budget = get_options().whole_files_mb * 2**20
    files = state.whole_files
    if files is None or files.maxsize != budget:
        files = state.whole_files = (
            files.resized(budget) if files is not None else BoundedCache(budget, getsizeof=_held)
        )
    files.put(whole_key(url, access), (body, remote))


def _held(entry: tuple[bytes, Remote]) -> int:
    return len(entry[0])


def whole_key(url: str, access: RequestAuth | None) -> tuple[str, str]:
    """Whole files are kept, and downloaded once, per file and account: what one
    account read never answers another."""
    return url, access.identity if access is not None else ""


def whole(url: str, access: RequestAuth | None) -> tuple[bytes, Remote] | None:
    """The body of ``url`` when its origin ignores ``Range`` and it is held in memory
    for ``access``."""
    files = aio.engine().whole_files
    return files.get(whole_key(url, access)) if files else None


def ignores_ranges(url: str) -> bool:
    return (origin(url) or url) in aio.engine().ignores_ranges


def saw_ranges(*urls: str) -> None:
    aio.engine().ranges_seen.update(origin(url) or url for url in urls)


@contextlib.asynccontextmanager
async def range_turn(url: str) -> AsyncIterator[None]:
    """Until the origin of ``url`` has answered a ranged request, the requests of one file
    go one at a time (other files' go at once): an origin that answers with whole files
    then sends each file once, its other parts cut from that body, instead of once per
    request in flight. Once known, nothing waits."""
    key = origin(url) or url
    seen, probes = aio.engine().ranges_seen, aio.engine().range_probes
    while url in probes:  # this file's first request: wait even if its origin is known now
        await probes[url].wait()
    probing = key not in seen
    if probing:
        probes[url] = asyncio.Event()
    try:
        yield
    finally:
        if probing:
            probes.pop(url).set()
