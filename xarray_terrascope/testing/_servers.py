"""The sandbox's two kinds of loopback server: werkzeug's threaded WSGI server (the STAC
API) and an aiohttp server on an event loop of its own in a daemon thread (the download
server and the "bucket"), which drives a :class:`~.download.DownloadApp` exchange by
exchange. Both are stopped by their own handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from werkzeug.datastructures import Headers
from werkzeug.sansio.request import Request
from werkzeug.serving import WSGIRequestHandler, make_server

from ._replies import PHRASES, Reply
from .download import DownloadApp, Dropped

__all__ = ["DownloadServer", "Server", "WsgiServer"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Seconds stop() lets requests being answered finish (then they are cancelled).
SHUTDOWN_TIMEOUT = 5.0
#: Seconds an idle keep-alive connection stays open (like the STAC server's socket timeout).
KEEPALIVE_TIMEOUT = 60.0


class _QuietHandler(WSGIRequestHandler):
    """Request handler logging to this module's logger at DEBUG, with a socket timeout."""

    timeout = 60  # a client that never sends its request cannot block stop() forever

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, getattr(self, "path", "?"), code)

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug("werkzeug %s: " + message.rstrip(), type, *args)


class Server(Protocol):
    port: int

    def stop(self) -> None: ...


class WsgiServer:
    """A WSGI app on werkzeug's threaded server, in a daemon thread."""

    def __init__(self, app: Any, name: str) -> None:
        self._server = make_server(HOST, 0, app, threaded=True, request_handler=_QuietHandler)
        self.port: int = self._server.port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"terrascope-sandbox-{name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=30)
        self._server.server_close()


class _AccessLog(AbstractAccessLogger):
    """aiohttp's access log, at DEBUG on this module's logger."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug("%s %s -> %s", request.method, request.path, response.status)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def _text_fields(form: Mapping[str, object]) -> dict[str, str]:
    """The text fields of a decoded form body, the first value of each name (as the
    multidict's ``get`` gives it); files and binary parts are no text and left out."""
    fields: dict[str, str] = {}
    for name, value in form.items():
        if isinstance(value, str):
            fields.setdefault(name, value)
    return fields


class DownloadServer:
    """A :class:`DownloadApp` served by aiohttp on an event loop in a daemon thread.

    A plain HTTP/1.1 file server: keep-alive, no compression either way, every header
    of the app's reply as it is (with aiohttp's ``Date`` and ``Server``).
    """

    def __init__(self, app: DownloadApp, name: str) -> None:
        self.app = app
        self.port = 0
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name=f"terrascope-sandbox-{name}", daemon=True
        )
        self._thread.start()
        self.port = self._ready.result(timeout=30)

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = web.Server(
            self._handle,
            access_log_class=_AccessLog,
            access_log=logger,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            auto_decompress=False,
        )
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.TCPSite(runner, HOST, 0).start()
        except Exception as exc:  # e.g. no port: raised again by __init__
            self._ready.set_exception(exc)
            await runner.cleanup()
            return
        self._ready.set_result(runner.addresses[0][1])
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()  # closes the port, then the connections

    def stop(self) -> None:
        """Close the port and the connections (answering requests get a few seconds),
        end the loop and its thread."""
        if self._thread.is_alive() and self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        app = self.app
        if request.headers.get("Expect", "").strip().lower() == "100-continue":
            # As werkzeug does (aiohttp leaves it to web.Application's router).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not begun
        form = _text_fields(await request.post()) if request.method == "POST" else None
        exchange = app.arrive(self._sansio(request), form)
        try:
            reply = await app.respond(exchange)
            chunks = []
            try:
                for chunk in app.body(exchange, reply):  # logged before the last one
                    chunks.append(chunk)
            except Dropped:
                return await self._cut(request, reply, b"".join(chunks))
        finally:
            app.finish(exchange)  # when cancelled or failed; else done already
        # One write of headers and body (tile ranges are small).
        return web.Response(
            status=reply.status,
            reason=PHRASES.get(reply.status),
            headers=reply.headers,
            body=b"".join(chunks) or None,
        )

    def _sansio(self, request: web.BaseRequest) -> Request:
        return Request(
            method=request.method,
            scheme="http",
            server=(HOST, self.port),
            root_path="",
            path=request.path,
            query_string=request.rel_url.raw_query_string.encode("latin-1"),
            headers=Headers(list(request.headers.items())),
            remote_addr=request.remote,
        )

    @staticmethod
    async def _cut(request: web.BaseRequest, reply: Reply, part: bytes) -> web.StreamResponse:
        """Send the status, headers and ``part`` of the body (if any), then close the
        connection: the client sees a truncated body, or no response at all."""
        response = web.StreamResponse(
            status=reply.status, reason=PHRASES.get(reply.status), headers=reply.headers
        )
        if part:
            try:
                await response.prepare(request)
                await response.write(part)
            except ConnectionError as exc:
                logger.debug("%s %s: client gone: %s", request.method, request.path, exc)
        logger.debug("%s %s: connection dropped on purpose", request.method, request.path)
        if request.transport is not None:
            request.transport.close()  # after sending what was written
        # aiohttp then finds the connection closed, and lets the exchange be.
        return response
