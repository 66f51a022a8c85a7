"""HTTP range requests for the async engine: per-host adaptive limits, retries, exact errors.

One ``aiohttp`` session per event loop (see :mod:`xarray_terrascope.engine.aio`) sends every
ranged ``GET``; it never sends ``HEAD``. Several ranges of one file go in one request
(answered ``multipart/byteranges``) while the origin answers them so; an origin that
answers with the whole file (S3, nginx with ``max_ranges 1``) gets one request per range
from then on, the whole-file body left unread (the first multi-range request to an origin
goes alone, so that happens once, not once per request in flight). Each origin
(``scheme://host:port``) has a :class:`Limiter`: at most the ``max_connections`` option
(``TERRASCOPE_MAX_CONNECTIONS``) requests in flight, halved on 429/503 (pausing
the host for ``Retry-After``), grown by one after a run of successes (AIMD), and paced
when even one request at a time is refused (a request-rate limit). Failed requests (5xx,
429, dropped or cut connections, timeouts) are retried with exponential backoff and
jitter, the first request of a file included. What is learnt of each origin, and the
whole files kept from one that ignores ``Range``, lives in :mod:`.origins`.

Credentials: HTTP Basic, UTF-8 encoded (RFC 7617), or an OpenID Connect access token
(``Bearer``, never both), added per request, only when the caller says the URL's origin
may receive them, and never on a redirect to another origin (redirects are followed by
hand). An access token about to expire is refreshed before the request (in a worker
thread, off the loop); a 401 to a request that carried one refreshes it and tries once
more. The session itself holds no secret and ignores netrc
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
import logging
import os
import re
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from xarray_terrascope import config, http_policy
from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.engine import aio, origins
from xarray_terrascope.engine.limiter import Limiter
from xarray_terrascope.engine.origins import Remote, origin
from xarray_terrascope.exceptions import AuthenticationError, ReadError

__all__ = [
    "Limiter",
    "Remote",
    "get_range",
    "get_ranges",
]

logger = logging.getLogger(__name__)

#: How requests are retried (attempts, backoff, transient statuses, ``Retry-After``).
RETRY = http_policy.ENGINE
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Times one request refreshes a refused access token and tries again (a token can expire
#: while requests that will carry it wait for their turn; refused again, it is no expiry).
MAX_RENEWALS = 2
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
#: Byte ranges sent in one multi-range request (keeps the Range header well under 4 KiB).
MAX_RANGES_PER_REQUEST = 64
#: A 200 answer to a multi-range request larger than this many times the bytes asked for
#: is not read: the origin ignores multi-range requests and gets one range per request.
WHOLE_FILE_FACTOR = 4


_public = config.public_url


class _Renew(Exception):
    """A 401 to a request that carried a Bearer token: refresh it and try again (once)."""

    def __init__(self, generation: int, status: int) -> None:
        super().__init__(f"HTTP {status} to an access token")
        self.generation = generation
        self.status = status


class _Retry(Exception):
    """A transient failure worth another attempt."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


def _session() -> aiohttp.ClientSession:
    state = aio.engine()
    session = state.session
    if session is None or session.closed:
        from xarray_terrascope._version import __version__

        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no netrc or proxy credentials picked up behind our back
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
            headers={"User-Agent": f"xarray-terrascope/{__version__}"},
            auto_decompress=False,
            # no cookies kept: aiohttp's jar would send one the allowed origin set to
            # other ports and subdomains, and on requests that carry no credentials
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        state.session = session
    return session


def close_session() -> None:
    """Close this process's HTTP session (at exit; a later request opens a new one)."""
    current = aio.started()
    session = current.session if current is not None else None
    if session is None or session.closed or aio.in_loop_thread():
        return
    try:
        aio.run(asyncio.wait_for(session.close(), 5))
    except (RuntimeError, TimeoutError) as err:  # interpreter shutting down
        logger.debug("could not close the HTTP session: %s", err)


atexit.register(close_session)


def _disown_parent_session() -> None:
    """In a forked child: mark the parent's session (kept, never closed, by
    :mod:`~xarray_terrascope.engine.aio`) as closed without closing its sockets, which the
    parent still uses; collected at the child's exit, it then warns about nothing."""
    for parent in aio._forked_leftovers[-1:]:
        session = parent.session
        connector = session.connector if session is not None else None
        if connector is not None:
            # aiohttp has no public way to let go of a connector without closing it
            connector._closed = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_parent_session)


def _fail(status: int, label: str, url: str, sent: bool, detail: str = "") -> Exception:
    return http_policy.error_for(
        status, what=f"reading {label}", url=url, credentials_sent=sent, detail=detail
    )


class _NoMultiRange(Exception):
    """The origin answered a multi-range request with something else: ask range by range."""


async def _attempt(
    url: str, spans: list[tuple[int, int]], access: RequestAuth | None, label: str
) -> tuple[list[bytes], Remote]:
    """One ranged GET of ``spans`` (redirects followed by hand); raises :class:`_Retry`
    when transient, :class:`_NoMultiRange` when several spans did not come back as such."""
    if len(spans) > 1 and origins.multirange(url) is False:
        raise _NoMultiRange(f"{_public(url)} ignores multi-range requests")  # learnt meanwhile
    session = _session()
    first_origin = origin(url)  # None for a URL that may not carry credentials
    target = url
    ranges = ",".join(f"{start}-{end - 1}" for start, end in spans)
    generation = access.generation if access is not None else 0
    for _hop in range(6):
        sent = access is not None and first_origin is not None and origin(target) == first_origin
        if sent:
            config.note_credentials_to(first_origin)
        # the Authorization value goes straight into the request: no local variable of
        # this frame holds it (a traceback printed with its locals shows none)
        async with session.get(
            target, headers=_headers(ranges, access if sent else None), allow_redirects=False
        ) as resp:
            status = resp.status
            if status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise _fail(status, label, url, sent, " (redirect without Location)")
                try:
                    target = urljoin(target, location)
                    bad = origin(target) is None
                except ValueError:  # not a URL at all ("http://[::1/x")
                    target, bad = location, True
                if bad:  # another scheme, user information, a bad port
                    raise ReadError(
                        f"Reading {label} ({_public(url)}) failed: HTTP {status} redirects to "
                        f"{_public(target)!r}, which is not a plain http(s) URL (another "
                        "scheme, user information or a bad port); such redirects are refused"
                    )
                if origin(target) != first_origin:
                    logger.debug(
                        "%s redirects to another origin: following without credentials",
                        _public(url),
                    )
                continue
            if status in RETRY.transient:
                wait = RETRY.retry_after(resp.headers.get("Retry-After"))
                raise _Retry(f"HTTP {status}", status, wait)
            if status == 401 and sent and access is not None and access.renewable:
                raise _Renew(generation, status)
            if status not in (200, 206):
                raise _fail(status, label, url, sent)
            kind = resp.headers.get("Content-Type", "")
            if "html" in kind.lower():
                raise AuthenticationError(
                    f"{label} ({_public(url)}) answered with a web page (most likely "
                    "Terrascope's login page) instead of data"
                    + (
                        ""
                        if access
                        else ": no credentials were sent because its origin is not in "
                        "TERRASCOPE_DOWNLOAD_HOSTS"
                    )
                )
            coding = resp.headers.get("Content-Encoding", "").strip().lower()
            if coding not in ("", "identity"):  # its bytes are not the file's bytes
                raise ReadError(
                    f"Reading {label} ({_public(url)}) failed: the server answered with "
                    f"Content-Encoding {coding!r} although the request asked for "
                    "'identity': its bytes are not the file's. A proxy or server that "
                    "compresses range answers must leave these files as they are"
                )
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            if status == 200:  # the server ignored Range: the body is the whole file
                asked = sum(end - start for start, end in spans)
                length = resp.content_length
                if len(spans) > 1 and length is not None and length > WHOLE_FILE_FACTOR * asked:
                    origins.learn((url, target), False)  # the body is left unread
                    raise _NoMultiRange(f"{_public(target)} ignores multi-range requests")
                body = await resp.read()
                if any(start >= len(body) for start, _ in spans):
                    raise _fail(416, label, url, sent, f" (the file has {len(body)} bytes)")
                remote = Remote(len(body), etag, modified)
                origins.saw_ranges(url, target)
                origins.keep_whole(url, target, body, remote, access)
                return [body[start:end] for start, end in spans], remote
            if kind.lower().startswith("multipart/byteranges"):
                parts = _parts(kind, await resp.read())
            else:
                parts = [(resp.headers.get("Content-Range", ""), await resp.read())]
            origins.saw_ranges(url, target)
            try:
                blobs, size = _cut(parts, spans, label, url, sent)
            except _NoMultiRange:
                origins.learn((url, target), False)
                raise
            if len(spans) > 1:  # several ranges answered as asked, in one part or more
                origins.learn((url, target), True)
            return blobs, Remote(size, etag, modified)
    raise _fail(310, label, url, access is not None, " (too many redirects)")


def _headers(ranges: str, access: RequestAuth | None) -> dict[str, str]:
    """Request headers for byte ``ranges`` (``"0-99,200-299"``), with ``access``'s
    ``Authorization`` value when given."""
    headers = {"Range": f"bytes={ranges}", "Accept-Encoding": "identity"}
    if access is not None:
        headers["Authorization"] = access.header()
    return headers


#: The request headers an aiohttp error keeps once scrubbed (:func:`_scrubbed`).
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def _parts(kind: str, body: bytes) -> list[tuple[str, bytes]]:
    """``(Content-Range, bytes)`` of each part of a ``multipart/byteranges`` body.

    Each part's length comes from its ``Content-Range``, so the binary data is never
    searched for the boundary (fast for large parts, exact whatever bytes they hold).
    """
    found = _BOUNDARY.search(kind)
    if found is None:
        raise _Retry("multipart answer without a boundary")
    delimiter = b"--" + found.group(1).encode("latin-1")
    parts: list[tuple[str, bytes]] = []
    pos = body.find(delimiter)
    while pos >= 0:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":  # the closing delimiter
            return parts
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        content_range = ""
        for line in body[pos:head_end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-range":
                content_range = value.strip()
        match = _CONTENT_RANGE.match(content_range)
        if match is None:
            raise _Retry("multipart part without a Content-Range")
        start = head_end + 4
        stop = start + int(match.group(2)) + 1 - int(match.group(1))
        if stop > len(body):
            break
        parts.append((content_range, body[start:stop]))
        pos = body.find(delimiter, stop)
    raise _Retry("short multipart answer")


def _cut(
    parts: list[tuple[str, bytes]], spans: list[tuple[int, int]], label: str, url: str, sent: bool
) -> tuple[list[bytes], int | None]:
    """Each span's bytes from the answered parts (a part may hold several spans)."""
    held = []
    size = None
    for content_range, body in parts:
        match = _CONTENT_RANGE.match(content_range)
        if match is None:
            raise _fail(206, label, url, sent, " (unexpected Content-Range)")
        first, last = int(match.group(1)), int(match.group(2))
        if match.group(3) != "*":
            size = int(match.group(3))
        if len(body) != last + 1 - first:
            raise _Retry(f"short body ({len(body)} of {last + 1 - first} bytes)")
        held.append((first, body))
    blobs = []
    for start, end in spans:
        stop = min(end, size) if size is not None else end
        for first, body in held:
            if first <= start and stop <= first + len(body):
                blobs.append(body[start - first : stop - first])
                break
        else:
            if size is not None and start >= size:  # past the file's end: not the origin's
                raise _fail(416, label, url, sent, f" (the file has {size} bytes)")
            if len(spans) > 1:
                raise _NoMultiRange(f"{_public(url)} answered other ranges than asked")
            raise _fail(206, label, url, sent, " (unexpected Content-Range)")
    return blobs, size


def _scrubbed(err: BaseException) -> BaseException:
    """``err`` (and the exceptions it chains) without tracebacks: aiohttp's frames keep
    the request's headers, ``Authorization`` included, as local variables, which a
    traceback printed with its locals would show. The type and message stay (URLs in it
    redacted)."""
    seen: set[int] = set()
    each: BaseException | None = err
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        each.__traceback__ = None
        if isinstance(each, aiohttp.ClientResponseError):
            # its request_info (shown by repr) holds the request's headers, and history
            # the responses, each with its own request_info
            if each.request_info is not None:
                each.request_info = each.request_info._replace(headers=_NO_HEADERS)
            each.history = ()
        each = each.__cause__ or each.__context__
    return config.redacted(err)


async def get_range(
    url: str, start: int, end: int, *, access: RequestAuth | None, label: str
) -> tuple[bytes, Remote]:
    """GET bytes ``[start, end)`` of ``url``: :func:`get_ranges` with one range."""
    (blob,), remote = await get_ranges(url, [(start, end)], access=access, label=label)
    return blob, remote


async def get_ranges(
    url: str, spans: list[tuple[int, int]], *, access: RequestAuth | None, label: str
) -> tuple[list[bytes], Remote]:
    """GET byte ranges ``spans`` (``[start, end)`` each) of ``url``, with retries.

    Several ranges go in one multi-range request (``multipart/byteranges`` answer) while
    the origin answers them as such; an origin that does not gets one request per range
    from then on (learnt once per process and origin). Each request passes the host's
    limiter.

    Parameters
    ----------
    url : str
        The file.
    spans : list of (int, int)
        Byte ranges, end exclusive (clipped by the server at the file's end), sorted and
        not overlapping.
    access : str or None
        ``Authorization`` value for ``url``'s own origin (None: send none).
    label : str
        What the file is to the user (the item id), named in errors.

    Returns
    -------
    list of bytes, Remote
        The bodies, one per span, and what the responses said about the file.

    Raises
    ------
    AuthenticationError
        On 401/403 or a login page.
    ReadError
        On any other failure, after retrying the transient ones.
    """
    async with origins.range_turn(url):
        return await _get_ranges(url, spans, access, label)


async def _get_ranges(
    url: str, spans: list[tuple[int, int]], access: RequestAuth | None, label: str
) -> tuple[list[bytes], Remote]:
    whole = origins.whole(url, access)
    if whole is None and origins.ignores_ranges(url):
        # one download of the file for every read that wants a part of it meanwhile
        pending = aio.engine().pending_whole_files
        key = origins.whole_key(url, access)
        await aio.shared(pending, key, lambda: _with_retries(url, spans[:1], access, label))
        whole = origins.whole(url, access)
        if whole is None:  # answered with the range after all: the origin honours them now
            aio.engine().ignores_ranges.discard(origin(url) or url)
    if whole is not None:
        body, remote = whole
        return [body[start:end] for start, end in spans], remote
    if len(spans) > 1:
        async with origins.multirange_turn(url) as known:
            if known is not False:
                try:
                    answers = [  # rarely more than one group: one after the other
                        await _with_retries(
                            url, spans[i : i + MAX_RANGES_PER_REQUEST], access, label
                        )
                        for i in range(0, len(spans), MAX_RANGES_PER_REQUEST)
                    ]
                except _NoMultiRange as err:
                    logger.debug("%s; one request per range from now on", err)
                else:
                    return [blob for blobs, _ in answers for blob in blobs], _one_file(url, answers)
    if len(spans) == 1:
        return await _with_retries(url, spans, access, label)
    if (origin(url) or url) not in aio.engine().ranges_seen:
        # the first range alone: an origin that answers with the whole file sends it once
        first = await _with_retries(url, spans[:1], access, label)
        whole = origins.whole(url, access)
        if whole is not None:
            body, remote = whole
            return [body[start:end] for start, end in spans], remote
        rest = await asyncio.gather(
            *(_with_retries(url, [span], access, label) for span in spans[1:])
        )
        return [first[0][0], *(blobs[0] for blobs, _ in rest)], _one_file(url, [first, *rest])
    answers = await asyncio.gather(*(_with_retries(url, [span], access, label) for span in spans))
    return [blobs[0] for blobs, _ in answers], _one_file(url, answers)


class FileChanged(Exception):
    """The answers to one read's requests describe different files: the file was
    replaced between them (their bytes must not be put together)."""


def _one_file(url: str, answers: list[tuple[list[bytes], Remote]]) -> Remote:
    """What the answers said about the file, when they all describe the same one."""
    first = answers[0][1]
    if any(not first.matches(remote) for _, remote in answers[1:]):
        raise FileChanged(f"{_public(url)} changed between the requests of one read")
    return first


async def _with_retries(
    url: str, spans: list[tuple[int, int]], access: RequestAuth | None, label: str
) -> tuple[list[bytes], Remote]:
    """One request of ``spans`` through the host's limiter, retried when transient."""
    start, end = spans[0][0], spans[-1][1]
    limiter = origins.limiter(url)
    last: BaseException | None = None
    renewals = 0
    for attempt in range(RETRY.attempts):
        if access is not None and access.needs_refresh():
            # a token refresh is a blocking request: off the loop, once for all waiting
            await asyncio.to_thread(access.refresh_if_needed)
        generation = await limiter.acquire()
        busy = success = rate_limited = False
        retry_after = None
        refused: _Renew | None = None
        try:
            result = await _attempt(url, spans, access, label)
            success = True
            return result
        except _Renew as err:
            refused = err
        except _Retry as err:
            last, retry_after = err, err.retry_after
            busy, rate_limited = err.status in (429, 503), err.status == 429
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            last = _scrubbed(err)
        except aiohttp.ClientError as err:  # an invalid URL (from a redirect), not transient
            raise ReadError(
                f"Reading {label} ({_public(url)}) failed: {type(err).__name__}: "
                f"{config.redact(str(err))}"
            ) from _scrubbed(err)
        finally:
            await limiter.release(generation, busy, success, retry_after, rate_limited)
        if refused is not None:
            assert access is not None
            if renewals >= MAX_RENEWALS:  # refused with fresh tokens too: not an expiry
                raise _fail(refused.status, label, url, True, " (with a refreshed access token)")
            renewals += 1
            logger.debug("%s refused the access token; refreshing it", _public(url))
            await asyncio.to_thread(access.renew, refused.generation)
            continue
        if attempt == RETRY.attempts - 1:
            break  # no wait after the last attempt
        delay = RETRY.delay(attempt, retry_after)
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
        detail = f" after {RETRY.attempts} attempts"
        raise _fail(status, label, url, access is not None, detail) from last
    raise ReadError(
        f"Reading {label} ({_public(url)}) failed after {RETRY.attempts} attempts: "
        f"{config.redact(repr(last))}"
    ) from last


def probe_status(url: str, access: RequestAuth | None) -> int | None:
    """HTTP status of one small ranged GET of ``url`` (no retries); None when unreachable.

    Used to name the status behind a GDAL "Read failed". Call from outside the loop thread.
    """

    async def probe() -> int | None:
        session = _session()
        try:
            async with session.get(
                url, headers=_headers("0-0", access), allow_redirects=False
            ) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    return aio.run(probe())
