"""A loopback reverse proxy in front of the sandbox's download server that records every
header a client sends it: where a test needs to see exactly what reached an origin
(``Authorization``, ``Cookie``, headers from a header file...), on a port, host name and
scheme of its own.

Requests are forwarded with the sandbox's own account, whatever the client sent, so the
proxy answers the same bytes to every client and the test decides only what it records.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass
from typing import Self

import aiohttp
from aiohttp import web

from .harness import HOST, Harness

__all__ = ["RecordingProxy", "Seen"]

#: Response headers passed back to the client.
_PASSED = ("Content-Type", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified")


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class RecordingProxy(Harness):
    """Forward ``/download/...`` to ``upstream`` (a root URL ending with ``/download/``)
    with ``auth``, recording each request's headers (names lower-cased)."""

    def __init__(self, upstream: str, auth: tuple[str, str]) -> None:
        self.upstream = upstream
        pair = f"{auth[0]}:{auth[1]}".encode()
        self.authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        self.seen: list[Seen] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def origin(self, host: str = HOST, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}"

    def records(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.seen.append(
                Seen(
                    request.method, request.path, {k.lower(): v for k, v in request.headers.items()}
                )
            )
        assert self._session is not None
        headers = {"Accept-Encoding": "identity", "Authorization": self.authorization}
        if "Range" in request.headers:
            headers["Range"] = request.headers["Range"]
        target = self.upstream + request.path.removeprefix("/download/")
        async with self._session.request(
            request.method, target, headers=headers, allow_redirects=False
        ) as upstream:
            body = await upstream.read()
            passed = {k: upstream.headers[k] for k in _PASSED if k in upstream.headers}
            return web.Response(status=upstream.status, body=body, headers=passed)

    def start(self) -> Self:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def up() -> None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, HOST, 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(up())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="recording-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the recording proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._loop = self._thread = None
