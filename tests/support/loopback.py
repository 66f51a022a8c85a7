"""Small aiohttp servers on 127.0.0.1 (port 0), each on an event loop of its own thread,
for tests of the HTTP transport: a test gives the handler, the server records what it
received.

>>> async def hello(request):  # doctest: +SKIP
...     return web.Response(body=b"hi")
>>> with LoopbackServer(hello) as server:  # doctest: +SKIP
...     server.url("/x.tif")  # 'http://127.0.0.1:PORT/x.tif'
...     server.seen  # [Seen(method, path, headers), ...] of the requests so far
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web

from .harness import HOST

__all__ = ["Handler", "LoopbackServer", "Redirector", "Seen"]

#: What answers each request.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request as the server received it (header names as sent)."""

    method: str
    path: str
    headers: dict[str, str]


class LoopbackServer:
    """``handler`` behind ``http://127.0.0.1:<port>/``, every path and method; started
    and stopped by ``with``, recording each request in :attr:`seen` before ``handler``
    runs."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` on this server."""
        return f"http://{HOST}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer ``request`` (subclasses may override instead of giving a handler)."""
        assert self.handler is not None, "no handler"
        return await self.handler(request)

    async def _record(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
        return await self.handle(request)

    def __enter__(self) -> Self:
        ready = threading.Event()

        async def up() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._record)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, HOST, 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def serve() -> None:
            self._loop.run_until_complete(up())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="loopback-server", daemon=True)
        self._thread.start()
        assert ready.wait(30), "the loopback server did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._runner is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


class Redirector(LoopbackServer):
    """Answers every request with a 302 to :attr:`location` (formatted with ``{port}``,
    its own port), or, while :attr:`location` is empty, with 64 zero bytes (206)."""

    def __init__(self) -> None:
        super().__init__()
        self.location = ""

    async def handle(self, request: web.Request) -> web.Response:
        if not self.location:
            return web.Response(
                body=b"\0" * 64, status=206, headers={"Content-Range": "bytes 0-63/64"}
            )
        return web.Response(status=302, headers={"Location": self.location.format(port=self.port)})
