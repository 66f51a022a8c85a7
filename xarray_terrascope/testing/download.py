"""The sandbox's authenticated download server, as a werkzeug WSGI app.

``GET``/``HEAD /download/<path>`` serves the world's COGs with HTTP ranges (single,
multipart for several ranges, 416 when unsatisfiable); ``GET /download/`` lists the
root. Like Terrascope: no credentials -> 302 to the SSO login page (HTML), wrong
credentials or an expired token -> 401, too many parallel requests -> 429.

Switches (constructor arguments, and attributes settable at any time from any
thread): ``latency``, ``max_concurrent``, ``fault_rate``, ``drop_rate``,
``bearer``, ``token_lifetime``, ``redirect_to`` (answer authenticated file requests with
a 302 to an S3-presigned-looking URL under that root, as a download service that moved
its files to object storage would); plus :meth:`DownloadApp.fail_next` for exact faults
and :meth:`DownloadApp.expire_tokens`. Every request is recorded in ``log``.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from werkzeug.http import parse_range_header
from werkzeug.wrappers import Request

from ._oidc import TokenIssuer, same_secret
from .request_log import RequestLog, RequestRecord
from .world import World

__all__ = ["SSO_PATH", "TOKEN_PATH", "DownloadApp", "RequestLog", "RequestRecord"]

logger = logging.getLogger(__name__)

SSO_PATH = "/auth/realms/terrascope/protocol/openid-connect/auth"
TOKEN_PATH = "/auth/realms/terrascope/protocol/openid-connect/token"
PREFIX = "/download"
_CHUNK = 65536
_SIGN_IN = (
    "<!DOCTYPE html><html><head><title>Sign in to terrascope</title></head><body>"
    "<h1>Sign in to your account</h1><form method='post' action='#'>"
    "<input name='username'><input name='password' type='password'>"
    "<input type='submit' value='Sign In'></form></body></html>"
)
_SWITCHES = (
    "latency",
    "max_concurrent",
    "fault_rate",
    "drop_rate",
    "bearer",
    "token_lifetime",
    "redirect_to",
)


@dataclass
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes] = ()
    drop: bool = False  # cut the connection (half-way through the body, if any)
    fault: str | None = None


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str | None


@dataclass
class _Context:
    request: Request
    started: float
    counted: bool = False
    user: str | None = None
    scheme: str | None = None
    status: int = 0
    sent: int = 0
    fault: str | None = None
    done: bool = field(default=False)


def _text(
    status: int,
    text: str,
    mimetype: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> _Reply:
    body = text.encode()
    headers = [("Content-Type", mimetype), ("Content-Length", str(len(body))), *(extra or [])]
    return _Reply(status, headers, [body])


class DownloadApp:
    """WSGI app of the download server.

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
    fault_rate, drop_rate : float
        Fractions of authenticated ``/download`` requests answered 503, or dropped
        (connection closed half-way through the body, or before any response).
    bearer : bool
        Enable the token endpoint and ``Authorization: Bearer`` (Basic still works).
    token_lifetime : float
        Seconds an access token lives (``expires_in``).
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
    """

    def __init__(
        self,
        world: World,
        users: dict[str, str],
        *,
        latency: float = 0.0,
        max_concurrent: int | None = None,
        fault_rate: float = 0.0,
        drop_rate: float = 0.0,
        bearer: bool = False,
        token_lifetime: float = 300.0,
        seed: int = 0,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
        redirect_to: str | None = None,
        public: bool = False,
    ) -> None:
        self.world = world
        self.users = dict(users)
        self.seed = seed
        self.retry_after = retry_after
        self.clock = clock
        self.public = bool(public)
        self._default_clock = clock
        self.log = RequestLog()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._rng = random.Random(seed)
        self._faults: list[_Fault] = []
        self._issuer = TokenIssuer()
        self._defaults = {
            "latency": latency,
            "max_concurrent": max_concurrent,
            "fault_rate": fault_rate,
            "drop_rate": drop_rate,
            "bearer": bearer,
            "token_lifetime": token_lifetime,
            "redirect_to": redirect_to,
        }
        for name, value in self._defaults.items():
            setattr(self, name, value)

    # --- switches ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SWITCHES:
            value = self._check_switch(name, value)
        object.__setattr__(self, name, value)

    @staticmethod
    def _check_switch(name: str, value: Any) -> Any:
        if name in ("fault_rate", "drop_rate"):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
            return float(value)
        if name == "max_concurrent":
            if value is not None and int(value) < 1:
                raise ValueError(f"max_concurrent must be None or >= 1, got {value!r}")
            return None if value is None else int(value)
        if name == "redirect_to":
            if value is not None and not str(value).endswith("/"):
                raise ValueError(f"redirect_to must be None or a URL ending with '/': {value!r}")
            return None if value is None else str(value)
        if name in ("latency", "token_lifetime"):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
            return float(value)
        return bool(value)

    def reset(self) -> None:
        """Restore the constructor's switches and clock; forget faults, tokens and the log."""
        with self._lock:
            for name, value in self._defaults.items():
                setattr(self, name, value)
            self._faults.clear()
            self._issuer.clear()
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
            self._faults.append(_Fault(kind, int(count), path_contains))

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired."""
        self._issuer.expire_all()

    @property
    def in_flight(self) -> int:
        """``/download`` requests being answered now."""
        return self._in_flight

    # --- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        ctx = _Context(Request(environ), time.time())
        try:
            reply = self._dispatch(ctx)
        except Exception:  # pragma: no cover - a bug in the sandbox
            logger.exception("download server error on %s", ctx.request.path)
            reply = _text(500, "Internal Server Error")
        ctx.status, ctx.fault = reply.status, reply.fault
        head = ctx.request.method == "HEAD"
        # werkzeug sends the status line with the first body bytes, so a drop before
        # any byte leaves the client without a response.
        start_response(f"{reply.status} {_PHRASES.get(reply.status, 'Unknown')}", reply.headers)
        return _Body(
            self, ctx, () if head else reply.body, reply, environ.get("werkzeug.socket"), head=head
        )

    def _finish(self, ctx: _Context) -> None:
        if ctx.done:
            return
        ctx.done = True
        if ctx.counted:
            with self._lock:
                self._in_flight -= 1
        req = ctx.request
        auth = req.headers.get("Authorization")
        self.log.append(
            RequestRecord(
                time=ctx.started,
                method=req.method,
                path=req.path,
                range=req.headers.get("Range"),
                status=ctx.status,
                bytes=ctx.sent,
                has_credentials=bool(auth),
                user=ctx.user,
                auth_scheme=auth.split(None, 1)[0].lower() if auth else None,
                user_agent=req.headers.get("User-Agent"),
                duration=time.time() - ctx.started,
                fault=ctx.fault,
            )
        )

    # --- routing ------------------------------------------------------------------------

    def _dispatch(self, ctx: _Context) -> _Reply:
        req = ctx.request
        if req.path == SSO_PATH:
            return _text(200, _SIGN_IN, "text/html; charset=utf-8")
        if req.path == TOKEN_PATH:
            return self._token(req)
        if req.path != PREFIX and not req.path.startswith(PREFIX + "/"):
            return _text(404, "Not Found")
        with self._lock:
            limit = self.max_concurrent
            if limit is not None and self._in_flight >= limit:
                reply = _text(
                    429, "Too Many Requests", extra=[("Retry-After", str(self.retry_after))]
                )
                reply.fault = "429"
                return reply
            self._in_flight += 1
            ctx.counted = True
        if self.latency > 0:
            time.sleep(self.latency)
        outcome = "ok" if self.public else self._authenticate(ctx)
        if outcome == "none":
            return self._to_login(req)
        if outcome == "bad":
            challenge = [("WWW-Authenticate", 'Basic realm="terrascope"')]
            if ctx.scheme == "bearer":
                challenge.append(
                    ("WWW-Authenticate", 'Bearer realm="terrascope", error="invalid_token"')
                )
            return _text(401, "Unauthorized", extra=challenge)
        fault = self._draw_fault(req.path)
        if fault == "503":
            reply = _text(503, "Service Unavailable")
            reply.fault = "503"
            return reply
        if self.redirect_to is not None and req.path.rstrip("/") != PREFIX:
            return self._presigned_redirect(req)
        reply = self._serve(req)
        if fault == "drop":
            reply.drop, reply.fault = True, "drop"
        return reply

    def _authenticate(self, ctx: _Context) -> str:
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

    def _to_login(self, req: Request) -> _Reply:
        location = (
            f"{req.host_url.rstrip('/')}{SSO_PATH}?client_id=terrascope-download"
            f"&redirect_uri={quote(req.url, safe='')}&response_type=code&scope=openid"
        )
        page = (
            f"<html><body>Redirecting to <a href='{html.escape(location)}'>sign in</a>"
            "</body></html>"
        )
        return _text(302, page, "text/html; charset=utf-8", [("Location", location)])

    def _presigned_redirect(self, req: Request) -> _Reply:
        """302 to the object store, with the query string of an S3 presigned URL."""
        rel = req.path[len(PREFIX) :].lstrip("/")
        now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=SANDBOX%2F{now[:8]}%2Feu-west-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date={now}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={secrets.token_hex(32)}"
        )
        return _text(302, "Found", extra=[("Location", f"{self.redirect_to}{rel}?{query}")])

    # --- token endpoint ---------------------------------------------------------------------

    def _token(self, req: Request) -> _Reply:
        if not self.bearer:
            return _text(404, "Not Found")
        if req.method != "POST":
            return _text(405, "Method Not Allowed")
        status, body = self._issuer.grant(req.form, self.users, self.clock(), self.token_lifetime)
        return _text(status, json.dumps(body), "application/json")

    # --- files ----------------------------------------------------------------------------

    def _serve(self, req: Request) -> _Reply:
        rel = req.path[len(PREFIX) :].lstrip("/")
        if rel == "":
            listing = (
                "<!DOCTYPE html><html><head><title>Index of /download/</title></head>"
                "<body><h1>Index of /download/</h1><ul>"
                "<li><a href='Sentinel2/'>Sentinel2/</a></li></ul></body></html>"
            )
            return _text(200, listing, "text/html; charset=utf-8")
        item_id = self.world.item_for_path(rel)
        if item_id is None or req.method not in ("GET", "HEAD"):
            return _text(
                404 if item_id is None else 405,
                "Not Found" if item_id is None else "Method Not Allowed",
            )
        path = self.world.cog_path(item_id)
        size = os.stat(path).st_size
        base = [
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{self.world.seed:x}-{item_id}"'),
            (
                "Last-Modified",
                formatdate(self.world.acquisitions[0].datetime.timestamp() + 86400, usegmt=True),
            ),
        ]
        spec = parse_range_header(req.headers.get("Range"))
        if spec is None or spec.units != "bytes":
            return _Reply(
                200,
                [("Content-Type", "image/tiff"), ("Content-Length", str(size)), *base],
                _read(path, [(0, size)]),
            )
        spans = []
        for start, stop in spec.ranges:
            if start < 0:
                start, stop = max(0, size + start), size
            stop = size if stop is None else min(stop, size)
            if start < stop:
                spans.append((start, stop))
        if not spans:
            return _Reply(
                416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0"), *base]
            )
        if len(spans) == 1:
            ((start, stop),) = spans
            return _Reply(
                206,
                [
                    ("Content-Type", "image/tiff"),
                    ("Content-Range", f"bytes {start}-{stop - 1}/{size}"),
                    ("Content-Length", str(stop - start)),
                    *base,
                ],
                _read(path, spans),
            )
        boundary = secrets.token_hex(12)
        parts = []
        with open(path, "rb") as handle:
            for start, stop in spans:
                handle.seek(start)
                parts.append(
                    f"--{boundary}\r\nContent-Type: image/tiff\r\nContent-Range: "
                    f"bytes {start}-{stop - 1}/{size}\r\n\r\n".encode()
                )
                parts.append(handle.read(stop - start))
                parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        body = b"".join(parts)
        return _Reply(
            206,
            [
                ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
                ("Content-Length", str(len(body))),
                *base,
            ],
            [body],
        )


def _read(path: os.PathLike[str] | str, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for start, stop in spans:
            handle.seek(start)
            left = stop - start
            while left > 0:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


class _Body:
    """The response body: counts bytes, cuts dropped connections, logs on close."""

    def __init__(
        self,
        app: DownloadApp,
        ctx: _Context,
        body: Iterable[bytes],
        reply: _Reply,
        sock: socket.socket | None,
        *,
        head: bool,
    ) -> None:
        self._app, self._ctx, self._body, self._reply, self._sock = app, ctx, body, reply, sock
        self._head = head

    def _abort(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        raise ConnectionAbortedError("sandbox: connection dropped on purpose")

    def __iter__(self) -> Iterator[bytes]:
        # The record is written (and the request leaves the in-flight count) just
        # before the last bytes go out, so a client that got its answer always
        # finds it in the log, and may send its next request without a spurious 429.
        ctx, finish = self._ctx, self._app._finish
        budget = None
        if self._reply.drop:
            length = dict((k.lower(), v) for k, v in self._reply.headers).get("content-length")
            budget = 0 if self._head else int(length or 0) // 2
            if budget == 0:
                ctx.status = 0
                finish(ctx)
                self._abort()
        chunks = iter(self._body)
        chunk = next(chunks, None)
        while chunk is not None:
            if budget is not None and ctx.sent + len(chunk) >= budget:
                part = chunk[: budget - ctx.sent]
                ctx.sent += len(part)
                finish(ctx)
                if part:
                    yield part
                self._abort()
            following = next(chunks, None)
            ctx.sent += len(chunk)
            if following is None:
                finish(ctx)
            yield chunk
            chunk = following
        finish(ctx)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._app._finish(self._ctx)


_PHRASES = {
    200: "OK",
    206: "Partial Content",
    302: "Found",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    400: "Bad Request",
}
