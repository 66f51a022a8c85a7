"""The async engine's HTTP transport (``engine/transport.py``) against servers started
here on 127.0.0.1 (port 0): multi-range answers, short and wrong answers, refusals,
``Retry-After``, and where redirects may take credentials.

Each test's server has a port of its own, so what the engine learns of an origin (its
limit, whether it answers several ranges at once) is the test's alone.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import re
import threading
import time

import pytest
from aiohttp import web

from xarray_terrascope.auth import Credentials, RequestAuth
from xarray_terrascope.auth.credentials import basic_header
from xarray_terrascope.engine import aio, origins, transport
from xarray_terrascope.exceptions import AuthenticationError, ReadError

from ...support.harness import HOST
from ...support.loopback import LoopbackServer, Redirector

#: The boundary of the multipart answers below; the file holds it too, inside a part.
BOUNDARY = "3d6b6a416f9b5"
#: The file the servers serve: 16 KiB of varied bytes, the boundary line written into it
#: at 5010 (inside the part 5000-5099 asked below).
FILE = bytearray(bytes(range(256)) * 64)
FILE[5010 : 5010 + len(BOUNDARY) + 4] = f"\r\n--{BOUNDARY}".encode()
FILE = bytes(FILE)
SIZE = len(FILE)
#: The credentials the requests carry, made afresh for each test (a logout in another
#: test makes the requests of before send nothing: see ``RequestAuth.header``).
ACCESS = RequestAuth(Credentials("u", "p"))


@pytest.fixture(autouse=True)
def _fresh_access():
    global ACCESS
    ACCESS = RequestAuth(Credentials("u", "p"))


def _asked(request: web.Request) -> list[tuple[int, int]]:
    """The request's byte ranges, end exclusive."""
    header = request.headers.get("Range", "")
    return [(int(a), int(b) + 1) for a, b in re.findall(r"(\d+)-(\d+)", header)]


def _ranged(start: int, end: int, *, claimed: tuple[int, int] | None = None) -> web.Response:
    """206 with ``FILE[start:end]``, its ``Content-Range`` saying ``claimed`` (default:
    the truth)."""
    first, stop = claimed or (start, end)
    return web.Response(
        status=206,
        body=FILE[start:end],
        headers={"Content-Range": f"bytes {first}-{stop - 1}/{SIZE}"},
    )


def _multipart(parts: list[tuple[int, int]]) -> web.Response:
    """206 ``multipart/byteranges`` with one part per ``(start, end)``, in that order."""
    body = b""
    for start, end in parts:
        body += (
            (
                f"--{BOUNDARY}\r\nContent-Type: image/tiff\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{SIZE}\r\n\r\n"
            ).encode()
            + FILE[start:end]
            + b"\r\n"
        )
    body += f"--{BOUNDARY}--\r\n".encode()
    return web.Response(
        status=206,
        body=body,
        headers={"Content-Type": f'multipart/byteranges; boundary="{BOUNDARY}"'},
    )


def _get(url: str, spans: list[tuple[int, int]], access: RequestAuth | str | None = "ACCESS"):
    """The bodies of ``spans`` of ``url``, read by the engine (label ``ITEM-7``), with
    ``ACCESS`` unless told otherwise."""
    if access == "ACCESS":
        access = ACCESS
    blobs, _remote = aio.run(transport.get_ranges(url, spans, access=access, label="ITEM-7"))
    return blobs


# --- multi-range answers ------------------------------------------------------------------

SPANS = [(0, 10), (5000, 5100), (9000, 9500)]


def test_a_multipart_answer_of_several_parts_gives_each_span():
    async def answer(request: web.Request) -> web.Response:
        return _multipart(_asked(request))

    with LoopbackServer(answer) as server:
        got = _get(server.url("/a.tif"), SPANS)
    assert got == [FILE[start:end] for start, end in SPANS]
    assert [seen.headers["Range"] for seen in server.seen] == ["bytes=0-9,5000-5099,9000-9499"]


def test_parts_holding_several_spans_in_any_order_give_each_span():
    """A server may merge nearby ranges into one part (RFC 9110 14.6) and send the
    parts in another order than asked."""

    async def answer(request: web.Request) -> web.Response:
        assert _asked(request) == SPANS
        return _multipart([(8990, 9600), (0, 5100)])

    with LoopbackServer(answer) as server:
        got = _get(server.url("/a.tif"), SPANS)
    assert got == [FILE[start:end] for start, end in SPANS]
    assert len(server.seen) == 1


def test_a_server_answering_other_ranges_than_asked_is_asked_range_by_range():
    """Several ranges answered with one part of the first alone: the engine asks for
    each range on its own from then on, and the bodies are exact."""

    async def answer(request: web.Request) -> web.Response:
        asked = _asked(request)
        return _ranged(*asked[0])

    with LoopbackServer(answer) as server:
        got = _get(server.url("/a.tif"), SPANS)
        again = _get(server.url("/b.tif"), SPANS)
    assert got == again == [FILE[start:end] for start, end in SPANS]
    ranges = [seen.headers["Range"] for seen in server.seen]
    assert ranges[0] == "bytes=0-9,5000-5099,9000-9499"
    assert sorted(ranges[1:4]) == ["bytes=0-9", "bytes=5000-5099", "bytes=9000-9499"]
    assert all("," not in r for r in ranges[4:]) and len(ranges) == 7  # b.tif: learnt


# --- short and wrong answers ---------------------------------------------------------------


def test_a_short_body_is_retried():
    """A body shorter than its ``Content-Range`` (a proxy cut it) is asked again."""
    answers = iter(["short", "whole"])

    async def answer(request: web.Request) -> web.Response:
        ((start, end),) = _asked(request)
        if next(answers) == "short":
            return _ranged(start, end - 40, claimed=(start, end))
        return _ranged(start, end)

    with LoopbackServer(answer) as server:
        got = _get(server.url("/a.tif"), [(100, 200)])
    assert got == [FILE[100:200]]
    assert [seen.headers["Range"] for seen in server.seen] == ["bytes=100-199"] * 2


@pytest.mark.parametrize("content_range", [f"bytes 500-599/{SIZE}", "bytes 100-199", "garbage", ""])
def test_a_wrong_content_range_is_an_error_naming_the_item(content_range):
    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            status=206, body=FILE[100:200], headers={"Content-Range": content_range}
        )

    with LoopbackServer(answer) as server, pytest.raises(ReadError) as info:
        _get(server.url("/a.tif"), [(100, 200)])
    message = str(info.value)
    assert "ITEM-7" in message and "/a.tif" in message, message
    assert "unexpected Content-Range" in message, message
    assert len(server.seen) == 1  # not a transient failure: not retried


@pytest.mark.parametrize("status", [206, 200])
def test_a_compressed_answer_is_a_read_error_naming_the_encoding(status):
    """The request asks for ``identity``; a server (or proxy) gzipping the answer anyway
    sends bytes that are not the file's: one error naming the encoding, not ten retries
    of a "short body" nor a whole file taken for a GeoTIFF that is not one."""
    import gzip

    async def answer(request: web.Request) -> web.Response:
        ((start, end),) = _asked(request)
        body, headers = (FILE[start:end], {"Content-Range": f"bytes {start}-{end - 1}/{SIZE}"})
        if status == 200:
            body, headers = FILE, {}
        return web.Response(
            status=status, body=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
        )

    with LoopbackServer(answer) as server, pytest.raises(ReadError) as info:
        _get(server.url("/a.tif"), [(100, 4100)])
    assert "Content-Encoding 'gzip'" in str(info.value) and "ITEM-7" in str(info.value)
    assert len(server.seen) == 1
    assert server.seen[0].headers["Accept-Encoding"] == "identity"


def test_416_is_a_read_error_naming_the_item_and_the_status():
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{SIZE}"})

    with LoopbackServer(answer) as server, pytest.raises(ReadError) as info:
        _get(server.url("/a.tif"), [(SIZE + 10, SIZE + 20)])
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.status_code == 416
    assert "ITEM-7" in str(info.value) and "HTTP 416" in str(info.value)
    assert len(server.seen) == 1


@pytest.mark.parametrize("access", ["ACCESS", None], ids=["credentials", "none"])
def test_a_web_page_instead_of_data_is_an_authentication_error(access):
    """A 200 with HTML (Terrascope's login page) is no data; without credentials the
    error says why none were sent."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=200, text="<html>Sign in</html>", content_type="text/html")

    with LoopbackServer(answer) as server, pytest.raises(AuthenticationError) as info:
        _get(server.url("/a.tif"), [(0, 100)], access=access)
    message = str(info.value)
    assert "ITEM-7" in message and "web page" in message, message
    assert ("TERRASCOPE_DOWNLOAD_HOSTS" in message) is (access is None), message
    assert len(server.seen) == 1


# --- redirects -------------------------------------------------------------------------------


def _authorization(seen) -> str | None:
    return {k.lower(): v for k, v in seen.headers.items()}.get("authorization")


def test_a_redirect_within_the_origin_keeps_the_credentials():
    async def answer(request: web.Request) -> web.Response:
        if request.path == "/a.tif":
            return web.Response(status=302, headers={"Location": "/moved/a.tif"})
        return _ranged(*_asked(request)[0])

    with LoopbackServer(answer) as server:
        got = _get(server.url("/a.tif"), [(0, 100)])
    assert got == [FILE[:100]]
    assert [seen.path for seen in server.seen] == ["/a.tif", "/moved/a.tif"]
    assert [_authorization(seen) for seen in server.seen] == [basic_header("u", "p")] * 2


def test_a_redirect_to_another_origin_gets_no_credentials():
    """Another port of the same host is another origin: the bytes come from there,
    without the ``Authorization`` header the first origin got."""

    async def data(request: web.Request) -> web.Response:
        return _ranged(*_asked(request)[0])

    with LoopbackServer(data) as bucket:

        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=307, headers={"Location": bucket.url("/signed/a.tif")})

        with LoopbackServer(answer) as server:
            got = _get(server.url("/a.tif"), [(0, 100)])
    assert got == [FILE[:100]]
    assert [_authorization(seen) for seen in server.seen] == [basic_header("u", "p")]
    assert [seen.path for seen in bucket.seen] == ["/signed/a.tif"]
    assert _authorization(bucket.seen[0]) is None


def test_credentials_over_plain_http_to_another_machine_are_warned_once(monkeypatch, caplog):
    """An http origin set by hand gets its credentials (it is allowed), with one WARNING
    per origin naming the risk; loopback http gets none. The other machine is a name
    that resolves to 127.0.0.1 in this test only (aiohttp's resolver, patched): every
    byte stays on loopback."""
    import aiohttp.resolver

    from xarray_terrascope import config

    real = aiohttp.resolver.ThreadedResolver.resolve

    async def alias(self, host, port=0, family=0):
        if host != "dl.example.invalid":
            raise OSError(f"this test resolves only its alias, not {host!r}")
        return await real(self, "127.0.0.1", port, family)

    monkeypatch.setattr(aiohttp.resolver.ThreadedResolver, "resolve", alias)
    monkeypatch.setattr(config, "_noted", set())
    caplog.set_level(logging.WARNING, logger="xarray_terrascope")

    async def data(request: web.Request) -> web.Response:
        return _ranged(*_asked(request)[0])

    with LoopbackServer(data) as server:
        port = server.url("/").split(":")[2].split("/")[0]
        for _ in range(2):
            got = _get(f"http://dl.example.invalid:{port}/a.tif", [(0, 100)])
            assert got == [FILE[:100]]
        _get(server.url("/b.tif"), [(0, 100)])
    assert [_authorization(seen) for seen in server.seen] == [basic_header("u", "p")] * 3
    warned = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert warned == [
        f"Sending Terrascope credentials to http://dl.example.invalid:{port} over plain http: "
        "anyone on the network path can read them. Use its https URL "
        "(TERRASCOPE_DOWNLOAD_HOSTS, TERRASCOPE_DOWNLOAD_URL, TERRASCOPE_STAC_URL)"
    ]


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/x.tif",
        "http://127.0.0.1.:{port}/x.tif",  # a trailing dot: aiohttp's InvalidURL
        "http://someone:s3cret@127.0.0.1:{other}/x.tif",  # aiohttp would send it as Basic
        "http://[::1/x.tif",  # not a URL at all: urljoin raises ValueError
    ],
)
def test_redirects_that_are_not_plain_urls_are_read_errors_naming_the_item(location):
    with Redirector() as server, Redirector() as other:
        other.location = ""  # answers data, if anything reached it
        server.location = location.replace("{other}", str(other.port))
        url = f"http://{HOST}:{server.port}/x.tif"
        with pytest.raises(ReadError, match="ITEM-42") as info:
            aio.run(
                transport.get_ranges(
                    url, [(0, 16)], access=RequestAuth(Credentials("u", "p")), label="ITEM-42"
                )
            )
        assert "s3cret" not in str(info.value)
        assert other.seen == [], "a refused redirect target gets no request"


# --- Retry-After ---------------------------------------------------------------------------


#: Seconds the server of :class:`_RefuseFirstHandler` announces in ``Retry-After``.
RETRY_AFTER = 1


class _RefuseFirstHandler(http.server.BaseHTTPRequestHandler):
    """Answers the first request 429 with ``Retry-After: 1``, every other one the bytes
    asked for; records arrivals and the 429's departure on the server's clock."""

    def do_GET(self):
        server = self.server
        arrived = time.monotonic()
        with server.lock:
            server.arrivals.append((arrived, self.path))
            first = server.refused_at is None
            if first:
                server.refused_at = time.monotonic()  # before a byte of the answer leaves
        if first:
            self.send_response(429)
            self.send_header("Retry-After", str(RETRY_AFTER))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = (int(v) for v in self.headers["Range"].split("=")[1].split("-"))
        body = bytes(range(start, end + 1))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/256")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def refuse_first_server():
    """A loopback server of :class:`_RefuseFirstHandler` on a free port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefuseFirstHandler)
    server.lock, server.arrivals, server.refused_at = threading.Lock(), [], None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_429_with_retry_after_holds_back_every_request_to_the_host(
    refuse_first_server, monkeypatch
):
    """One request at a time to the host (``TERRASCOPE_MAX_CONNECTIONS=1``), two files to
    read: the first request gets ``429, Retry-After: 1``. Neither its retry nor the
    other file's request may reach the server sooner than 1 s after the 429 left it
    (server-side clock; 10 ms allowed for the client loop's millisecond clock)."""
    server, root = refuse_first_server
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "1")

    async def both():
        return await asyncio.gather(
            *(
                transport.get_range(f"{root}/{name}.tif", 10, 20, access=None, label=name)
                for name in ("a", "b")
            )
        )

    answers = aio.run(both())
    assert [blob for blob, _ in answers] == [bytes(range(10, 20))] * 2
    after = sorted(t for t, _ in server.arrivals if t > server.refused_at)
    assert len(server.arrivals) == 3 and len(after) == 2, server.arrivals
    assert after[0] - server.refused_at >= RETRY_AFTER - 0.01, (after, server.refused_at)


# --- a request-rate limit ----------------------------------------------------------------


class _TokenBucket:
    """A request-rate limit as nginx's ``limit_req ... nodelay`` applies it: a bucket of
    ``burst`` tokens filled at ``rate`` per second; a request finding it empty gets 429
    without ``Retry-After`` at once, the others 10 ms later the 10 bytes asked for.
    Answers are recorded in order (the handler runs on the server's one loop)."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens, self.when = float(burst), time.monotonic()
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.when) * self.rate)
        self.when = now
        if self.tokens < 1:
            self.statuses.append(429)
            return web.Response(status=429, text="Too Many Requests")
        self.tokens -= 1
        self.statuses.append(206)
        await asyncio.sleep(0.01)
        (start, end), *_ = _asked(request)
        return _ranged(start, end)


def test_a_429_without_retry_after_is_met_by_pacing_at_once():
    """24 files' first requests at once against a bucket of 2 tokens filled at 25/s
    (less than the 4 requests a new host gets at once): 2 of the first 4 are refused.
    From that refusal on the requests are paced, so at most one more is refused (a
    probe of the pacing as it shortens). A limiter that only cut its requests in
    flight (4 -> 2 -> 1) before pacing sent each cut's requests at once into the empty
    bucket: 5 or 6 refusals."""
    bucket = _TokenBucket(burst=2, rate=25.0)
    with LoopbackServer(bucket.handle) as server:

        async def every_file():
            return await asyncio.gather(
                *(
                    transport.get_range(
                        server.url(f"/f{k}.tif"), 100, 110, access=None, label=f"f{k}"
                    )
                    for k in range(24)
                )
            )

        answers = aio.run(every_file())
    assert [blob for blob, _ in answers] == [FILE[100:110]] * 24
    assert bucket.statuses.count(206) == 24
    assert bucket.statuses.count(429) <= 3, bucket.statuses


# --- origins that ignore Range ------------------------------------------------------------


def test_a_whole_file_kept_for_one_account_never_answers_another():
    """An origin that answers every range with the whole file: the file is kept for the
    other parts of it that the same account reads, but another account's read goes to
    the server under its own name (before: served from the first account's download)."""

    async def whole(request: web.Request) -> web.Response:
        return web.Response(status=200, body=FILE)

    other = RequestAuth(Credentials("v", "q"))
    with LoopbackServer(whole) as server:
        url = server.url("/a.tif")
        assert _get(url, [(0, 100)]) == [FILE[:100]]
        assert _get(url, [(200, 300)]) == [FILE[200:300]]  # from memory
        assert _get(url, [(400, 500)], access=other) == [FILE[400:500]]
    assert [_authorization(seen) for seen in server.seen] == [
        basic_header("u", "p"),
        basic_header("v", "q"),
    ]


def test_a_whole_file_under_way_for_one_account_is_not_joined_by_another():
    """Two accounts ask at once for parts of a file from an origin known to ignore
    Range: each download carries its own account's credentials (before: the second
    read waited for the first account's download and was answered from it)."""

    async def whole(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(status=200, body=FILE)

    other = RequestAuth(Credentials("v", "q"))
    with LoopbackServer(whole) as server:
        url = server.url("/a.tif")
        _get(url, [(0, 100)])  # the origin is now known to ignore Range
        server.seen.clear()
        origins.forget_files()

        async def both():
            return await asyncio.gather(
                transport.get_ranges(url, [(0, 10), (100, 110)], access=ACCESS, label="A"),
                transport.get_ranges(url, [(0, 10), (100, 110)], access=other, label="B"),
            )

        answers = aio.run(both())
    assert [blobs for blobs, _ in answers] == [[FILE[:10], FILE[100:110]]] * 2
    assert sorted(_authorization(seen) or "" for seen in server.seen) == sorted(
        [basic_header("u", "p"), basic_header("v", "q")]
    )


# --- what must not leak, mix or be learnt wrong ----------------------------------------------


def test_cookies_are_neither_kept_nor_sent():
    """A cookie the allowed origin sets (a session) is a credential the package does not
    scope: it goes back to no one, neither to another origin after a redirect nor with a
    request that carries no credentials. (``localhost``: aiohttp keeps no cookie of a
    bare IP address.)"""

    async def data(request: web.Request) -> web.Response:
        return _ranged(0, 100)

    with LoopbackServer(data) as other:

        async def allowed(request: web.Request) -> web.Response:
            if request.path == "/b.tif":
                return web.Response(
                    status=302, headers={"Location": f"http://localhost:{other.port}/b.tif"}
                )
            response = _ranged(0, 100)
            response.headers["Set-Cookie"] = "session=S3CRET-SESSION; Path=/; HttpOnly"
            return response

        with LoopbackServer(allowed) as server:
            base = f"http://localhost:{server.port}"
            for path, access in [("/a.tif", ACCESS), ("/b.tif", ACCESS), ("/c.tif", None)]:
                assert _get(base + path, [(0, 100)], access) == [FILE[:100]]
    cookies = [seen.headers.get("Cookie") for seen in server.seen + other.seen]
    assert len(cookies) == 4 and cookies == [None] * 4, cookies


def test_a_file_replaced_between_the_requests_of_one_read_is_never_put_together():
    """An origin answering one range per request, the file replaced (same size, new
    ETag) after the first answer: the read's bytes would mix both files, so it fails
    as a changed file (the reader then reads it again from its header)."""
    answered = []

    async def answer(request: web.Request) -> web.Response:
        asked = _asked(request)
        start, end = asked[0]  # the first range only: no multi-range here
        if len(asked) == 1:
            answered.append(start)
        response = _ranged(start, end)
        response.headers["ETag"] = '"v1"' if len(answered) <= 1 else '"v2"'
        return response

    with LoopbackServer(answer) as server, pytest.raises(transport.FileChanged):
        _get(server.url("/a.tif"), SPANS)
    assert len(answered) >= 2


def test_an_unreadable_answer_keeps_the_password_out_of_the_errors_it_chains():
    """A garbled response head (a flaky proxy) is an error naming the item; aiohttp's
    exception, chained as its cause, no longer holds the request's headers."""
    import socket

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1x0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"http://{HOST}:{listener.getsockname()[1]}/a.tif"
        with pytest.raises(ReadError, match="ITEM-7") as info:
            _get(url, [(0, 10)])
    finally:
        listener.close()
    chain, each = [], info.value
    while each is not None:
        chain.append(each)
        each = each.__cause__ or each.__context__
    secret = basic_header("u", "p")
    assert len(chain) > 1 and not any(secret in repr(e) or secret in str(e) for e in chain)


def _nginx_like(request: web.Request) -> web.Response:
    """As nginx answers ranges: the unsatisfiable ones (past the end) dropped, one range
    left answered as a plain 206, none left a 416."""
    ok = [(start, min(end, SIZE)) for start, end in _asked(request) if start < SIZE]
    if not ok:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{SIZE}"})
    return _ranged(*ok[0]) if len(ok) == 1 else _multipart(ok)


def test_a_range_past_the_end_is_a_416_and_the_origin_still_answers_several_ranges():
    """A read whose header went stale (the file shrank) asks for a range past the end:
    that is the read's 416, not a sign that the origin ignores multi-range requests,
    which later files keep using."""

    async def answer(request: web.Request) -> web.Response:
        return _nginx_like(request)

    with LoopbackServer(answer) as server:
        assert _get(server.url("/a.tif"), SPANS) == [FILE[s:e] for s, e in SPANS]
        with pytest.raises(ReadError) as info:
            _get(server.url("/a.tif"), [(0, 10), (SIZE + 100, SIZE + 200)])
        assert getattr(info.value, "status_code", None) == 416
        assert aio.run(_multirange(server.url("/b.tif"))) is True
        before = len(server.seen)
        assert _get(server.url("/b.tif"), SPANS) == [FILE[s:e] for s, e in SPANS]
        assert len(server.seen) - before == 1


async def _multirange(url: str) -> bool | None:
    return origins.multirange(url)


def test_a_whole_file_answer_shorter_than_a_range_asked_is_a_416():
    """A host ignoring ``Range`` answers 200 with the whole file; a span starting past
    its end is not an empty span but the read's 416 (a stale header)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=200, body=FILE[:5000])

    with LoopbackServer(answer) as server, pytest.raises(ReadError) as info:
        _get(server.url("/a.tif"), [(6000, 6100)])
    assert getattr(info.value, "status_code", None) == 416


def test_a_read_whose_file_changes_after_its_first_answer_is_stale():
    """A read with no cached header (its header read now, through the read itself): a
    later answer describing another file (new ETag) makes the read stale, not a mix."""
    from xarray_terrascope.engine.source import Source, StaleHeader

    etags = iter(['"v1"', '"v2"'])

    async def answer(request: web.Request) -> web.Response:
        response = _ranged(*_asked(request)[0])
        response.headers["ETag"] = next(etags)
        return response

    with LoopbackServer(answer) as server:
        source = Source(server.url("/a.tif"), "ITEM-7", None, None)

        async def two_reads() -> None:
            await source.fetch_many([(0, 100)])
            await source.fetch_many([(5000, 5100)])

        with pytest.raises(StaleHeader):
            aio.run(two_reads())
    assert source.stale
