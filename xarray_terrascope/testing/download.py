"""The sandbox's authenticated download server: its decisions, free of any web framework.

``GET``/``HEAD /download/<path>`` serves the world's COGs with HTTP ranges (single,
multipart for several ranges, 416 when unsatisfiable); ``GET /download/`` lists the
root. Like Terrascope: no credentials -> 302 to the SSO login page (HTML), wrong
credentials or an expired token -> 401, too many parallel requests (or, with
``max_rate``, too many per second) -> 429.

Switches (constructor arguments, and attributes settable at any time from any
thread): ``latency``, ``max_concurrent``, ``max_rate``, ``fault_rate``, ``drop_rate``,
``bearer``, ``token_lifetime``, ``redirect_to`` (answer authenticated file requests with
a 302 to an S3-presigned-looking URL under that root, as a download service that moved
its files to object storage would), ``multirange`` (False: a request for several ranges
gets the whole file, 200, as from S3 or nginx with ``max_ranges 1``), ``ranges`` (False:
every request gets the whole file, 200, as from a host that ignores ``Range``), ``listing``
(False: the root answers an authenticated request 403, as nginx without ``autoindex``); plus
:meth:`DownloadApp.fail_next` for exact faults and :meth:`DownloadApp.expire_tokens`.
Every request is recorded in ``log``.

A server (``server.py``: aiohttp, on an event loop of its own) drives one
:class:`Exchange` per request: :meth:`~DownloadApp.arrive`, ``await``
:meth:`~DownloadApp.respond`, send the chunks of :meth:`~DownloadApp.body` (cutting the
connection on :class:`Dropped`), and in every case :meth:`~DownloadApp.finish`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

from werkzeug.sansio.request import Request

from . import _sso
from ._exchange import Dropped, Exchange, Fault, check_switch
from ._oidc import REFRESH_LIFETIME, TokenIssuer, same_secret
from ._replies import Reply, file_reply, presigned_redirect, text_reply
from .request_log import RequestLog, RequestRecord
from .world import World

__all__ = [
    "DownloadApp",
    "Dropped",
    "Exchange",
    "Reply",
    "RequestLog",
    "RequestRecord",
]

logger = logging.getLogger(__name__)

PREFIX = "/download"
_LISTING = (
    "<!DOCTYPE html><html><head><title>Index of /download/</title></head>"
    "<body><h1>Index of /download/</h1><ul>"
    "<li><a href='Sentinel2/'>Sentinel2/</a></li></ul></body></html>"
)
_SWITCHES = (
    "latency",
    "max_concurrent",
    "max_rate",
    "fault_rate",
    "drop_rate",
    "bearer",
    "token_lifetime",
    "device_flow",
    "device_interval",
    "redirect_to",
    "multirange",
    "ranges",
    "listing",
)


class DownloadApp:
    """The download server's behaviour, driven request by request by a server.

    Parameters
    ----------
    world : World
        Source of the files (with a ``cache_dir``).
    users : dict
        ``{username: password}`` accepted with HTTP Basic (and the token endpoint).
    latency : float
        Seconds slept at the start of every ``/download`` request.
    max_concurrent : int, optional
        In-flight ``/download`` requests allowed; more get 429 with ``Retry-After``.
    max_rate : float, optional
        ``/download`` requests per second allowed, as nginx's ``limit_req`` with
        ``nodelay`` does it: a token bucket of ``rate_burst`` tokens filled at
        ``max_rate`` per second; a request finding it empty gets 429 without
        ``Retry-After``, before any authentication.
    rate_burst : int
        Size of that bucket (requests allowed at once after a quiet spell).
    fault_rate, drop_rate : float
        Fractions of authenticated ``/download`` requests answered 503, or dropped
        (connection closed half-way through the body, or before any response).
    bearer : bool
        Enable the token endpoint and ``Authorization: Bearer`` (Basic still works).
    token_lifetime : float
        Seconds an access token lives (``expires_in``).
    device_flow : bool
        Offer the device authorization grant (its endpoint, in the discovery document).
    device_interval : float
        Seconds a device-flow client is told to wait between polls (``interval``).
    seed : int
        Seeds the fault draws.
    retry_after : int
        Seconds announced in ``Retry-After`` on 429.
    clock : callable
        Monotonic clock used for token expiry (tests may substitute one).
    redirect_to : str, optional
        Root URL (ending with ``/``) of another server holding the same files: answer
        authenticated file requests with a 302 to ``<root><path>?X-Amz-Date=<now>&...``.
    public : bool
        Serve files without asking for credentials (an object store behind presigned
        URLs); requests are still logged with ``has_credentials``.
    multirange : bool
        Answer a request for several ranges with ``multipart/byteranges`` (True), or
        with the whole file (False).
    ranges : bool
        Answer ranged requests with their ranges (True), or every request with the whole
        file (False), as a host that ignores ``Range`` does.
    listing : bool
        Answer ``GET /download/`` with a directory listing (True), or 403 (False).
    """

    # the switches: set in __init__ and by tests, each checked by __setattr__
    latency: float
    max_concurrent: int | None
    max_rate: float | None
    fault_rate: float
    drop_rate: float
    bearer: bool
    token_lifetime: float
    device_flow: bool
    device_interval: float
    redirect_to: str | None
    multirange: bool
    ranges: bool
    listing: bool

    def __init__(
        self,
        world: World,
        users: dict[str, str],
        *,
        latency: float = 0.0,
        max_concurrent: int | None = None,
        max_rate: float | None = None,
        rate_burst: int = 5,
        fault_rate: float = 0.0,
        drop_rate: float = 0.0,
        bearer: bool = False,
        token_lifetime: float = 300.0,
        device_flow: bool = True,
        device_interval: float = 0.05,
        seed: int = 0,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
        redirect_to: str | None = None,
        multirange: bool = True,
        ranges: bool = True,
        listing: bool = True,
        public: bool = False,
    ) -> None:
        self.world = world
        self.users = dict(users)
        self.seed = seed
        self.retry_after = retry_after
        if int(rate_burst) < 1:
            raise ValueError(f"rate_burst must be >= 1, got {rate_burst!r}")
        self.rate_burst = int(rate_burst)
        self._bucket = (float(self.rate_burst), time.monotonic())  # (tokens, when)
        self.clock = clock
        self.public = bool(public)
        self._default_clock = clock
        self.log = RequestLog()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._rng = random.Random(seed)
        self._faults: list[Fault] = []
        self._issuer = TokenIssuer()
        self._rendered: set[tuple[str, str]] = set()  # (item, asset) whose COG is cached
        self._defaults = {
            "latency": latency,
            "max_concurrent": max_concurrent,
            "max_rate": max_rate,
            "fault_rate": fault_rate,
            "drop_rate": drop_rate,
            "bearer": bearer,
            "token_lifetime": token_lifetime,
            "device_flow": device_flow,
            "device_interval": device_interval,
            "redirect_to": redirect_to,
            "multirange": multirange,
            "ranges": ranges,
            "listing": listing,
        }
        for name, value in self._defaults.items():
            setattr(self, name, value)

    # --- switches ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SWITCHES:
            value = check_switch(name, value)
        object.__setattr__(self, name, value)

    def reset(self) -> None:
        """Restore the constructor's switches and clock; forget faults, tokens and the log."""
        with self._lock:
            for name, value in self._defaults.items():
                setattr(self, name, value)
            self._faults.clear()
            self._bucket = (float(self.rate_burst), time.monotonic())
            self._issuer.clear()
            self._issuer.refresh_lifetime = REFRESH_LIFETIME
            self._rng.seed(self.seed)
            self.clock = self._default_clock
        self.log.clear()

    def fail_next(
        self, count: int = 1, kind: str = "503", path_contains: str | None = None
    ) -> None:
        """Make the next ``count`` authenticated ``/download`` requests fail.

        Parameters
        ----------
        count : int
            How many requests fail.
        kind : {"503", "drop"}
            Answer 503, or drop the connection.
        path_contains : str, optional
            Only requests whose path contains this string count.
        """
        kind = str(kind)
        if kind not in ("503", "drop"):
            raise ValueError(f"kind must be '503' or 'drop', got {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, int(count), path_contains))

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired."""
        self._issuer.expire_all()

    @property
    def issuer(self) -> TokenIssuer:
        """The token issuer: its ``log`` of token requests, ``roles`` by user,
        ``disabled`` accounts, ``refresh_lifetime``, ``revoke_refresh`` (all settable;
        :meth:`reset` restores them)."""
        return self._issuer

    def approve_device(self, user_code: str, username: str | None = None) -> bool:
        """Approve a pending device code as ``username`` (default: the first account)
        would at the verification page; False when no such code is pending."""
        return self._issuer.approve(user_code, username or next(iter(self.users)))

    def token_roles(self, token: str) -> set[str] | None:
        """Roles of a valid access token's user (None when unknown or expired); what the
        STAC API checks protected collections with."""
        return self._issuer.roles_of(token, self.clock())

    @property
    def in_flight(self) -> int:
        """``/download`` requests being answered now."""
        return self._in_flight

    # --- one exchange ---------------------------------------------------------------------

    def arrive(self, request: Request, form: Mapping[str, str] | None = None) -> Exchange:
        """Start an exchange for a request that just came in.

        Parameters
        ----------
        request : werkzeug.sansio.request.Request
            Method, path, query string and headers of the request.
        form : Mapping, optional
            Its decoded form body (for the token endpoint).

        Returns
        -------
        Exchange
            To pass to :meth:`respond`, :meth:`body` and, in every case, :meth:`finish`.
        """
        return Exchange(request, {} if form is None else form, time.time())

    async def respond(self, exchange: Exchange) -> Reply:
        """Decide the answer: routing, rate limit, latency, credentials, faults, file.

        The latency is slept with :func:`asyncio.sleep` and a COG not yet in the cache
        is written in a worker thread, so the event loop keeps serving other requests.
        """
        try:
            reply = await self._dispatch(exchange)
        except Exception:  # pragma: no cover - a bug in the sandbox
            logger.exception("download server error on %s", exchange.request.path)
            reply = text_reply(500, "Internal Server Error")
        exchange.status, exchange.fault = reply.status, reply.fault
        return reply

    def body(self, exchange: Exchange, reply: Reply) -> Generator[bytes, None, None]:
        """Yield the body chunks to send (none for ``HEAD``).

        The record is written (and the request leaves the in-flight count) just before
        the last chunk is yielded, so a client that got its answer always finds it in
        the log, and may send its next request without a spurious 429.

        Raises
        ------
        Dropped
            Where the connection must be cut: before anything is sent when the reply
            has no body (``HEAD``, empty), otherwise after half of it.
        """
        head = exchange.request.method == "HEAD"
        budget = None
        if reply.drop:
            length = dict((k.lower(), v) for k, v in reply.headers).get("content-length")
            budget = 0 if head else int(length or 0) // 2
            if budget == 0:
                exchange.status = 0
                self.finish(exchange)
                raise Dropped("sandbox: connection dropped on purpose")
        chunks = iter(() if head else reply.body)
        chunk = next(chunks, None)
        while chunk is not None:
            if budget is not None and exchange.sent + len(chunk) >= budget:
                part = chunk[: budget - exchange.sent]
                exchange.sent += len(part)
                self.finish(exchange)
                if part:
                    yield part
                raise Dropped("sandbox: connection dropped on purpose")
            following = next(chunks, None)
            exchange.sent += len(chunk)
            if following is None:
                self.finish(exchange)
            yield chunk
            chunk = following
        self.finish(exchange)

    def finish(self, exchange: Exchange) -> None:
        """Log the exchange and take it out of the in-flight count (once; later calls
        do nothing)."""
        if exchange.done:
            return
        exchange.done = True
        if exchange.counted:
            with self._lock:
                self._in_flight -= 1
        req = exchange.request
        auth = req.headers.get("Authorization")
        self.log.append(
            RequestRecord(
                time=exchange.started,
                method=req.method,
                path=req.path,
                range=req.headers.get("Range"),
                status=exchange.status,
                bytes=exchange.sent,
                has_credentials=bool(auth),
                user=exchange.user,
                auth_scheme=auth.split(None, 1)[0].lower() if auth else None,
                user_agent=req.headers.get("User-Agent"),
                duration=time.time() - exchange.started,
                fault=exchange.fault,
            )
        )

    # --- routing ------------------------------------------------------------------------

    async def _dispatch(self, ctx: Exchange) -> Reply:
        req = ctx.request
        if req.path in _sso.PATHS:
            return _sso.answer(
                req,
                ctx.form,
                self._issuer,
                self.users,
                self.clock(),
                bearer=self.bearer,
                device_flow=self.device_flow,
                token_lifetime=self.token_lifetime,
                device_interval=self.device_interval,
            )
        if req.path != PREFIX and not req.path.startswith(PREFIX + "/"):
            return text_reply(404, "Not Found")
        with self._lock:
            if self.max_rate is not None and not self._take_token(self.max_rate):
                reply = text_reply(429, "Too Many Requests")
                reply.fault = "rate"
                return reply
            limit = self.max_concurrent
            if limit is not None and self._in_flight >= limit:
                reply = text_reply(
                    429, "Too Many Requests", extra=[("Retry-After", str(self.retry_after))]
                )
                reply.fault = "429"
                return reply
            self._in_flight += 1
            ctx.counted = True
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        outcome = "ok" if self.public else self._authenticate(ctx)
        if outcome == "none":
            return _sso.login_redirect(req)
        if outcome == "bad":
            challenge = [("WWW-Authenticate", 'Basic realm="terrascope"')]
            if ctx.scheme == "bearer":
                challenge.append(
                    ("WWW-Authenticate", 'Bearer realm="terrascope", error="invalid_token"')
                )
            return text_reply(401, "Unauthorized", extra=challenge)
        fault = self._draw_fault(req.path)
        if fault == "503":
            reply = text_reply(503, "Service Unavailable")
            reply.fault = "503"
            return reply
        if self.redirect_to is not None and req.path.rstrip("/") != PREFIX:
            return presigned_redirect(req.path[len(PREFIX) :].lstrip("/"), self.redirect_to)
        reply = await self._serve(req)
        if fault == "drop":
            reply.drop, reply.fault = True, "drop"
        return reply

    def _take_token(self, rate: float) -> bool:
        """Take a token from the rate bucket (call with ``_lock`` held); False if empty."""
        tokens, when = self._bucket
        now = time.monotonic()
        tokens = min(float(self.rate_burst), tokens + (now - when) * rate)
        taken = tokens >= 1.0
        self._bucket = (tokens - 1.0 if taken else tokens, now)
        return taken

    def _authenticate(self, ctx: Exchange) -> str:
        header = ctx.request.headers.get("Authorization")
        if not header:
            return "none"
        ctx.scheme = header.split(None, 1)[0].lower()
        auth = ctx.request.authorization
        if auth is None:
            return "bad"
        if auth.type == "basic":
            if same_secret(self.users.get(auth.username or ""), auth.password or ""):
                ctx.user = auth.username
                return "ok"
            return "bad"
        if auth.type == "bearer" and self.bearer and auth.token:
            ctx.user = self._issuer.user_of(auth.token, self.clock())
            if ctx.user is not None:
                return "ok"
        return "bad"

    def _draw_fault(self, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains is None or fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault.kind
            if self.fault_rate or self.drop_rate:
                draw = self._rng.random()
                if draw < self.fault_rate:
                    return "503"
                if draw < self.fault_rate + self.drop_rate:
                    return "drop"
        return None

    # --- files ----------------------------------------------------------------------------

    async def _cog_path(self, item_id: str, asset: str) -> Path:
        """An item's COG; written in a worker thread the first time (seconds of CPU)."""
        if (item_id, asset) in self._rendered:
            return self.world.cog_path(item_id, asset)
        path = await asyncio.to_thread(self.world.cog_path, item_id, asset)
        self._rendered.add((item_id, asset))
        return path

    async def _serve(self, req: Request) -> Reply:
        rel = req.path[len(PREFIX) :].lstrip("/")
        if rel == "" and not self.listing:
            return text_reply(403, "Forbidden")
        if rel == "":
            return text_reply(200, _LISTING, "text/html; charset=utf-8")
        found = self.world.file_for_path(rel)
        if found is None or req.method not in ("GET", "HEAD"):
            return text_reply(
                404 if found is None else 405,
                "Not Found" if found is None else "Method Not Allowed",
            )
        path = await self._cog_path(*found)
        last_modified = self.world.acquisitions[0].datetime.timestamp() + 86400
        base = [
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{self.world.seed:x}-{path.stem}"'),  # the item id for its main file
            ("Last-Modified", formatdate(last_modified, usegmt=True)),
        ]
        range_header = req.headers.get("Range")
        if not self.ranges or (not self.multirange and range_header and "," in range_header):
            range_header = None  # like S3, or nginx with max_ranges 1: the whole file
        return file_reply(path, range_header, base)
