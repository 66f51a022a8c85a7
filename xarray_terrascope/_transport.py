"""HTTP range requests for the async engine: per-host adaptive limits, retries, exact errors.

One ``aiohttp`` session per event loop (see :mod:`xarray_terrascope._aio`) sends every
ranged ``GET``; it never sends ``HEAD``. Each origin (``scheme://host:port``) has a
:class:`Limiter`: at most ``TERRASCOPE_MAX_CONNECTIONS`` requests in flight (default
:data:`DEFAULT_MAX_CONNECTIONS`), halved on 429/503 (pausing the host for ``Retry-After``),
grown by one after a run of successes (AIMD). Failed requests (5xx, 429, dropped or cut
connections, timeouts) are retried with exponential backoff and jitter, the first request
of a file included.

Credentials: HTTP Basic, UTF-8 encoded (RFC 7617), added per request, only when the
caller says the URL's origin may receive them, and never on a redirect to another origin
(redirects are followed by hand). The session itself holds no secret and ignores netrc
and proxy credentials from the environment (``trust_env=False``). Log lines name URLs
(without query strings) and statuses, never an ``Authorization`` value.

Errors: 401/403 (and a login page instead of data) raise
:class:`~xarray_terrascope.exceptions.AuthenticationError`; anything else
:class:`~xarray_terrascope.exceptions.ReadError` naming the item, the URL and the HTTP
status (also kept as the exception's ``status_code`` attribute).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import logging
import os
import random
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from . import _aio
from .config import origin as _parse_origin
from .exceptions import AuthenticationError, ReadError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "ENV_MAX_CONNECTIONS",
    "Limiter",
    "Remote",
    "basic_header",
    "get_range",
    "max_connections",
]

logger = logging.getLogger(__name__)

#: Environment variable: the most requests in flight per host and process.
ENV_MAX_CONNECTIONS = "TERRASCOPE_MAX_CONNECTIONS"
#: Requests in flight per host when ``TERRASCOPE_MAX_CONNECTIONS`` is not set.
DEFAULT_MAX_CONNECTIONS = 32
#: Attempts per request before giving up on a transient failure.
MAX_ATTEMPTS = 10
#: Backoff: first delay and cap, seconds (doubled per attempt, with jitter).
BACKOFF_BASE = 0.05
BACKOFF_CAP = 4.0
#: Requests in flight to a host not heard from yet; doubled after each run of successes
#: (slow start) up to the maximum, until the host first refuses one.
INITIAL_CONNECTIONS = 4
#: Growing past the last refused limit waits this long after the cut, and this many
#: successes.
PROBE_AFTER = 10.0
PROBE_SUCCESSES = 64
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


#: Origins of URLs seen (a pure function of the URL; parsed once, not per request).
origin = functools.lru_cache(maxsize=4096)(_parse_origin)


def _public(url: str) -> str:
    """``url`` without query string or fragment (presigned URLs carry signatures there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def max_connections() -> int:
    """Requests in flight allowed per host, from ``TERRASCOPE_MAX_CONNECTIONS`` (read now)."""
    raw = os.environ.get(ENV_MAX_CONNECTIONS, "").strip()
    if not raw:
        return DEFAULT_MAX_CONNECTIONS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        logger.warning(
            "%s=%r is not a positive integer; using %d",
            ENV_MAX_CONNECTIONS,
            raw,
            DEFAULT_MAX_CONNECTIONS,
        )
        return DEFAULT_MAX_CONNECTIONS
    return value


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic, UTF-8 encoded as RFC 7617 says.

    Examples
    --------
    >>> basic_header("u", "p")
    'Basic dTpw'
    """
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class Limiter:
    """Adaptive (AIMD) limit of requests in flight to one host; use on the engine loop.

    A new host starts at :data:`INITIAL_CONNECTIONS` and doubles after each run of
    ``limit`` successes (slow start) until the maximum or a first refusal, so a host that
    allows few connections is not flooded at once. A 429/503 halves the limit, once per
    window: only a refusal of a request sent at the current limit cuts again, so a burst
    of refusals counts once. The cut also pauses the host for ``Retry-After``. Then a run
    of ``limit`` successes grows the limit by one up to the level that was refused last;
    above it, growth waits for :data:`PROBE_AFTER` seconds and :data:`PROBE_SUCCESSES`
    successes, so a server that allows N connections is not probed (and paused) over
    and over.

    Parameters
    ----------
    maximum : int
        The ceiling.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, int(maximum))
        self.limit = min(self.maximum, INITIAL_CONNECTIONS)
        self._slow_start = True
        self.in_flight = 0
        self.generation = 0
        self._refused_at = self.maximum + 1
        self._successes = 0
        self._paused_until = 0.0
        self._last_cut = float("-inf")
        self._cond = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a free slot (and the end of a pause); returns the window's generation."""
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                pause = self._paused_until - loop.time()
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), pause)
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    return self.generation
                await self._cond.wait()

    async def release(
        self, generation: int, busy: bool, success: bool, retry_after: float | None = None
    ) -> None:
        """Free a slot; ``busy`` (429/503) may cut the limit, successes grow it."""
        loop = asyncio.get_running_loop()
        async with self._cond:
            self.in_flight -= 1
            now = loop.time()
            if busy and generation == self.generation:
                self._slow_start = False
                self.generation += 1
                self._successes = 0
                self._refused_at = self.limit
                self._last_cut = now
                old, self.limit = self.limit, max(1, self.limit // 2)
                if retry_after:
                    self._paused_until = max(self._paused_until, now + retry_after)
                logger.debug("host busy: connection limit %d -> %d", old, self.limit)
            elif success and self.limit < self.maximum:
                self._successes += 1
                if self._slow_start:
                    if self._successes >= self.limit:
                        self.limit = min(self.maximum, 2 * self.limit)
                        self._successes = 0
                    self._cond.notify_all()
                    return
                probing = self.limit + 1 >= self._refused_at
                if not probing and self._successes >= self.limit:
                    self.limit += 1
                    self._successes = 0
                elif (
                    probing
                    and self._successes >= PROBE_SUCCESSES
                    and now - self._last_cut >= PROBE_AFTER
                ):
                    self.limit += 1
                    self._refused_at = self.limit + 1
                    self._successes = 0
            self._cond.notify_all()


@dataclass(frozen=True)
class Remote:
    """What a response said about the whole file: its size and ETag (either may be None)."""

    size: int | None
    etag: str | None


class _Retry(Exception):
    """A transient failure worth another attempt."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


def _session() -> aiohttp.ClientSession:
    state = _aio.loop_state()
    session = state.get("session")
    if session is None or session.closed:
        from . import __version__

        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no netrc or proxy credentials picked up behind our back
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
            headers={"User-Agent": f"xarray-terrascope/{__version__}"},
            auto_decompress=False,
        )
        state["session"] = session
    return session


def close_session() -> None:
    """Close this process's HTTP session (at exit; a later request opens a new one)."""
    session = _aio.loop_state().get("session")
    if session is None or session.closed or _aio.in_loop_thread():
        return
    try:
        _aio.run(asyncio.wait_for(session.close(), 5))
    except (RuntimeError, TimeoutError) as err:  # interpreter shutting down
        logger.debug("could not close the HTTP session: %s", err)


atexit.register(close_session)


def reset_limiters() -> None:
    """Forget what was learnt about every host's limit (the next request starts afresh)."""

    async def reset() -> None:
        _aio.loop_state().pop("limiters", None)

    _aio.run(reset())


def _limiter(url: str) -> Limiter:
    limiters = _aio.loop_state().setdefault("limiters", {})
    key = origin(url) or url
    limiter = limiters.get(key)
    maximum = max_connections()
    if limiter is None or limiter.maximum != maximum:
        limiter = limiters[key] = Limiter(maximum)
    return limiter


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _fail(status: int, label: str, url: str, sent: bool, detail: str = "") -> Exception:
    where = f"{label} ({_public(url)})"
    if status in (401, 403):
        who = "the credentials" if sent else "a request without credentials"
        err: Exception = AuthenticationError(
            f"Terrascope refused {who} reading {where}: HTTP {status}. Check the credentials "
            "(xarray_terrascope.login) and TERRASCOPE_DOWNLOAD_HOSTS."
        )
    else:
        err = ReadError(f"Reading {where} failed: HTTP {status}{detail}")
    err.status_code = status  # type: ignore[attr-defined]
    return err


async def _attempt(
    url: str, start: int, end: int, auth_header: str | None, label: str
) -> tuple[bytes, Remote]:
    """One ranged GET (redirects followed by hand); raises :class:`_Retry` when transient."""
    session = _session()
    first_origin = origin(url)  # None for a URL that may not carry credentials
    target = url
    for _hop in range(6):
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        sent = (
            auth_header is not None and first_origin is not None and origin(target) == first_origin
        )
        if sent:
            headers["Authorization"] = auth_header
        async with session.get(target, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            if status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise _fail(status, label, url, sent, " (redirect without Location)")
                target = urljoin(target, location)
                if origin(target) != first_origin:
                    logger.debug(
                        "%s redirects to another origin: following without credentials",
                        _public(url),
                    )
                continue
            if status in _RETRY_STATUS:
                wait = _retry_after(resp.headers.get("Retry-After"))
                raise _Retry(f"HTTP {status}", status, wait)
            if status not in (200, 206):
                raise _fail(status, label, url, sent)
            kind = resp.headers.get("Content-Type", "")
            if "html" in kind.lower():
                raise AuthenticationError(
                    f"{label} ({_public(url)}) answered with a web page (most likely "
                    "Terrascope's login page) instead of data"
                    + (
                        ""
                        if auth_header
                        else ": no credentials were sent because its origin is not in "
                        "TERRASCOPE_DOWNLOAD_HOSTS"
                    )
                )
            body = await resp.read()
            etag = resp.headers.get("ETag")
            if status == 200:  # the server ignored Range: the body is the whole file
                logger.debug("%s ignored the Range header", _public(url))
                return body[start:end], Remote(len(body), etag)
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != start:
                raise _fail(status, label, url, sent, " (unexpected Content-Range)")
            size = None if match.group(3) == "*" else int(match.group(3))
            want = min(end, size) - start if size is not None else end - start
            if len(body) != want:
                raise _Retry(f"short body ({len(body)} of {want} bytes)")
            return body, Remote(size, etag)
    raise _fail(310, label, url, auth_header is not None, " (too many redirects)")


async def get_range(
    url: str, start: int, end: int, *, auth_header: str | None, label: str
) -> tuple[bytes, Remote]:
    """GET bytes ``[start, end)`` of ``url`` through the host's limiter, with retries.

    Parameters
    ----------
    url : str
        The file.
    start, end : int
        Byte range, end exclusive (clipped by the server at the file's end).
    auth_header : str or None
        ``Authorization`` value for ``url``'s own origin (None: send none).
    label : str
        What the file is to the user (the item id), named in errors.

    Returns
    -------
    bytes, Remote
        The body and what the response said about the file.

    Raises
    ------
    AuthenticationError
        On 401/403 or a login page.
    ReadError
        On any other failure, after retrying the transient ones.
    """
    limiter = _limiter(url)
    last: _Retry | Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        generation = await limiter.acquire()
        busy = success = False
        retry_after = None
        try:
            result = await _attempt(url, start, end, auth_header, label)
            success = True
            return result
        except _Retry as err:
            last, retry_after = err, err.retry_after
            busy = err.status in (429, 503)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            last = err
        finally:
            await limiter.release(generation, busy, success, retry_after)
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after:
            delay = max(delay, retry_after)
        logger.debug(
            "%s bytes %d-%d: %s; retry %d in %.2f s",
            _public(url),
            start,
            end - 1,
            last if isinstance(last, _Retry) else type(last).__name__,
            attempt + 1,
            delay,
        )
        await asyncio.sleep(delay)
    status = last.status if isinstance(last, _Retry) else None
    if status is not None:
        detail = f" after {MAX_ATTEMPTS} attempts"
        raise _fail(status, label, url, auth_header is not None, detail) from last
    raise ReadError(
        f"Reading {label} ({_public(url)}) failed after {MAX_ATTEMPTS} attempts: {last!r}"
    ) from last


def probe_status(url: str, auth_header: str | None) -> int | None:
    """HTTP status of one small ranged GET of ``url`` (no retries); None when unreachable.

    Used to name the status behind a GDAL "Read failed". Call from outside the loop thread.
    """

    async def probe() -> int | None:
        session = _session()
        headers: dict[str, Any] = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
        if auth_header is not None:
            headers["Authorization"] = auth_header
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    return _aio.run(probe())
