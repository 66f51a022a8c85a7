"""Faults on the read path (async engine and GDAL path): the cube stays exact or the error
names the item and the HTTP status; refusals are AuthenticationError, never NaN."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.engine import read, transport
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.exceptions import AuthenticationError, ReadError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI, tif_records

DAYS = {"start": "2025-05-01", "end": "2025-06-10"}


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    """Every test starts with no header anywhere: first requests of files do happen."""
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    headers.clear_memory()
    read.clear_reader_cache()
    transport.reset_limiters()
    yield
    headers.clear_memory()
    read.clear_reader_cache()


@pytest.fixture
def gdal_only(monkeypatch):
    original = read._request
    monkeypatch.setattr(
        read, "_request", lambda *args, **kw: original(*args, **{**kw, "native": False})
    )
    read.clear_reader_cache()


def _field(**kw):
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS, **kw)


@pytest.fixture
def clean_cube(logged_in, tmp_path, monkeypatch):
    """The fault-free cube; afterwards no header is cached anywhere (first requests redone)."""
    cube = _field().NDVI.load().values
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache-after-clean-read"))
    headers.clear_memory()
    logged_in.log.clear()
    return cube


def test_faults_leave_the_cube_exact(logged_in, clean_cube):
    logged_in.download.fault_rate = 0.10
    logged_in.download.drop_rate = 0.02
    logged_in.download.max_concurrent = 4
    logged_in.download.latency = 0.02  # requests overlap, so more than 4 are in flight
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    faults = {r.fault for r in tif_records(logged_in)}
    assert {"503", "drop", "429"} <= faults, f"the server must have injected faults: {faults}"


def test_dropped_first_requests_are_retried(logged_in, clean_cube):
    logged_in.download.fail_next(6, kind="drop")  # the very first requests: header reads
    got = _field().NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    dropped = [r for r in tif_records(logged_in) if r.fault == "drop"]
    assert len(dropped) == 6 and all(r.range.startswith("bytes=0-") for r in dropped)


def test_one_connection_allowed_still_gives_the_exact_cube(logged_in, clean_cube):
    logged_in.download.max_concurrent = 1
    logged_in.download.latency = 0.01
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    assert any(r.status == 429 for r in tif_records(logged_in))


def test_the_connection_setting_caps_the_requests_in_flight(
    logged_in, clean_cube, monkeypatch, tmp_path
):
    """``TERRASCOPE_MAX_CONNECTIONS=2`` against a server that refuses a fourth concurrent
    request (one above the setting: a server may count a request a moment longer than
    the client): no refusal. Without the setting the same read is refused at times."""
    logged_in.download.max_concurrent = 3
    logged_in.download.latency = 0.01
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "2")
    transport.reset_limiters()
    try:
        np.testing.assert_array_equal(_field(chunks={}).NDVI.load().values, clean_cube)
        capped = tif_records(logged_in)
        assert capped and not [r for r in capped if r.status == 429]
        monkeypatch.delenv("TERRASCOPE_MAX_CONNECTIONS")
        transport.reset_limiters()
        headers.clear_memory()
        monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache-uncapped"))
        read.clear_reader_cache()
        logged_in.log.clear()
        np.testing.assert_array_equal(_field(chunks={}).NDVI.load().values, clean_cube)
        assert [r for r in tif_records(logged_in) if r.status == 429]
    finally:
        transport.reset_limiters()


def test_bad_numeric_settings_warn_and_keep_the_default(monkeypatch, caplog):
    from xarray_terrascope.engine import aio

    tiles = aio.engine().tiles

    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "lots")
    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "-5")
    with caplog.at_level("WARNING", logger="xarray_terrascope.options"):
        assert xts.get_options().max_connections == 32
        assert tiles.max_bytes == 64 * 2**20
        assert tiles.max_bytes == 64 * 2**20  # read per stored tile: warned once
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "TERRASCOPE_MAX_CONNECTIONS='lots'" in m]) == 1, messages
    assert len([m for m in messages if "TERRASCOPE_TILE_CACHE_MB='-5'" in m]) == 1, messages
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "0")  # below its minimum, 1
    assert xts.get_options().max_connections == 32
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", " 7 ")
    assert xts.get_options().max_connections == 7
    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "0")  # allowed: keep no tile
    assert tiles.max_bytes == 0
    with xts.set_options(max_connections=3):  # an option set wins over its variable
        assert xts.get_options().max_connections == 3
    assert xts.get_options().max_connections == 7


def test_a_missing_file_names_the_item_and_the_status(logged_in):
    items = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-01", "2025-06-03")
    broken = items[0].clone()
    broken.assets["NDVI"].href = broken.assets["NDVI"].href.replace(".tif", "_gone.tif")
    ds = xr.open_dataset([broken, *items[1:]], engine="terrascope")
    with pytest.raises(ReadError, match="404") as info:
        ds.NDVI.load()
    assert broken.id in str(info.value)
    assert getattr(info.value, "status_code", None) == 404


def test_a_401_mid_read_is_an_authentication_error(logged_in):
    ds = _field()
    ds.NDVI.isel(time=0).load()  # headers of the whole field are cached from here on
    user = logged_in.username
    password = logged_in.download.users[user]
    logged_in.download.users[user] = password + "-changed"
    try:
        with pytest.raises(AuthenticationError, match="401"):
            ds.NDVI.isel(time=slice(1, None)).load()
    finally:
        logged_in.download.users[user] = password
    assert any(r.status == 401 for r in tif_records(logged_in))
    assert not [r for r in tif_records(logged_in) if r.range == "bytes=0-" and r.status == 401]


def test_redirect_to_another_origin_gets_no_credentials(logged_in, clean_cube):
    bucket = logged_in.start_bucket()
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    served = [r for r in bucket.log.records() if r.path.endswith(".tif")]
    assert served, "the files must have been read from the bucket"
    assert not [r for r in served if r.has_credentials]


# --- the GDAL path (tiles that must be warped) -------------------------------------------


def test_gdal_dropped_first_request_does_not_poison_the_process(logged_in, gdal_only):
    clean = _field().NDVI.isel(time=0).load().values
    read.clear_reader_cache()
    from xarray_terrascope.engine import gdal_cache

    gdal_cache.clear_http_cache()
    ds = _field()
    first = str(ds.item_ids.values[0]).split()[0]
    logged_in.download.fail_next(1, kind="drop", path_contains=first)
    np.testing.assert_array_equal(ds.NDVI.isel(time=0).load().values, clean)
    assert any(r.fault == "drop" and first in r.path for r in tif_records(logged_in))
    again = _field().NDVI.isel(time=0).load().values  # the next open in this process
    np.testing.assert_array_equal(again, clean)


def test_gdal_status_after_the_header_is_cached(logged_in, gdal_only, monkeypatch):
    from xarray_terrascope import auth
    from xarray_terrascope.engine import gdal

    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setattr(gdal, "RETRY", dataclasses.replace(gdal.RETRY, attempts=2))
    ds = _field()
    ds.NDVI.isel(time=0, x=slice(0, 10), y=slice(0, 10)).load()  # headers cached by GDAL
    user = logged_in.username
    password = logged_in.download.users[user]
    logged_in.download.users[user] = password + "-changed"
    try:
        with pytest.raises(AuthenticationError, match="401"):
            ds.NDVI.isel(time=0).load()
    finally:
        logged_in.download.users[user] = password
    read.clear_reader_cache()
    ds = _field()
    ds.NDVI.isel(time=1, x=slice(0, 10), y=slice(0, 10)).load()
    item = str(ds.item_ids.values[1]).split()[0]
    logged_in.download.fail_next(40, kind="503", path_contains=item)
    with pytest.raises(ReadError, match="503") as info:
        ds.NDVI.isel(time=1).load()
    assert item in str(info.value) or item in str(info.value.__cause__)


def test_redirect_on_the_gdal_path_gets_no_credentials(logged_in, gdal_only):
    clean = _field().NDVI.isel(time=slice(0, 3)).load().values
    read.clear_reader_cache()
    from xarray_terrascope.engine import gdal_cache

    gdal_cache.clear_http_cache()
    bucket = logged_in.start_bucket()
    got = _field().NDVI.isel(time=slice(0, 3)).load().values
    np.testing.assert_array_equal(got, clean)
    served = [r for r in bucket.log.records() if r.path.endswith(".tif")]
    assert served and not [r for r in served if r.has_credentials]


def test_the_connection_limit_starts_low_doubles_then_halves_on_refusal():
    """Slow start to the maximum, a halving per refused window, additive growth after."""
    import asyncio

    async def scenario():
        limiter = transport.Limiter(16)
        seen = [limiter.limit]
        for _ in range(3):  # three windows of successes: 4 -> 8 -> 16
            generations = [await limiter.acquire() for _ in range(limiter.limit)]
            for generation in generations:
                await limiter.release(generation, busy=False, success=True)
            seen.append(limiter.limit)
        generations = [await limiter.acquire() for _ in range(limiter.limit)]
        for generation in generations:  # a burst of refusals of one window: one cut
            await limiter.release(generation, busy=True, success=False)
        seen.append(limiter.limit)
        generations = [await limiter.acquire() for _ in range(limiter.limit)]
        for generation in generations:  # after a refusal: +1, not doubling
            await limiter.release(generation, busy=False, success=True)
        seen.append(limiter.limit)
        return seen

    assert asyncio.run(scenario()) == [4, 8, 16, 16, 8, 9]


def test_after_a_429_the_limit_stays_at_the_cut_level():
    """A rate limit (429) is about this client: no growth back towards the refused level
    (each new refusal would pause the host for Retry-After), until a late probe."""
    import asyncio

    async def scenario():
        limiter = transport.Limiter(16)
        generation = await limiter.acquire()
        await limiter.release(generation, busy=True, success=False, rate_limited=True)
        cut = limiter.limit
        for _ in range(4 * cut):
            generations = [await limiter.acquire() for _ in range(limiter.limit)]
            for generation in generations:
                await limiter.release(generation, busy=False, success=True)
        return cut, limiter.limit

    assert asyncio.run(scenario()) == (2, 2)


def test_refusals_at_one_request_pace_the_requests_until_successes_end_it():
    """A host that refuses one request at a time limits the rate: starts are spaced out
    (more after each refusal), and runs of successes shrink the spacing to nothing."""
    import asyncio

    from xarray_terrascope.engine import limiter

    async def scenario():
        limiter = transport.Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1, no pacing yet
            await limiter.release(await limiter.acquire(), busy=True, success=False)
        unpaced = limiter.interval
        intervals = []
        for _ in range(3):  # 429s at one request in flight: a rate limit
            generation = await limiter.acquire()
            await limiter.release(generation, busy=True, success=False, rate_limited=True)
            intervals.append(limiter.interval)
        loop = asyncio.get_running_loop()
        starts = []
        for _ in range(4):
            generation = await limiter.acquire()
            starts.append(loop.time())
            await limiter.release(generation, busy=False, success=True)
        gaps = np.diff(starts)
        successes = 4
        while limiter.interval:
            await limiter.release(await limiter.acquire(), busy=False, success=True)
            successes += 1
        return unpaced, intervals, gaps, successes, limiter.limit

    unpaced, intervals, gaps, successes, limit = asyncio.run(scenario())
    assert limit == 1 and unpaced == 0.0
    up = limiter.PACE_UP
    assert intervals == pytest.approx([limiter.PACE_MIN * f for f in (1, up, up * up)])
    assert (gaps >= 0.9 * intervals[-1]).all(), gaps
    assert successes <= 8 * limiter.PACE_RUN


def test_paced_starts_stay_apart_when_the_machine_stalls():
    """A busy machine wakes a paced request late: the next one must still wait the whole
    interval after that late start, or the server's bucket sees two at once."""
    import asyncio
    import time

    async def scenario():
        limiter = transport.Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1
            await limiter.release(await limiter.acquire(), busy=True, success=False)
        await limiter.release(await limiter.acquire(), busy=True, success=False, rate_limited=True)
        interval = limiter.interval
        loop = asyncio.get_running_loop()
        starts = []
        for stall in (False, True, False):
            if stall:  # the loop blocked through this request's reserved start
                loop.call_later(0.2 * interval, time.sleep, 1.2 * interval)
            generation = await limiter.acquire()
            starts.append(loop.time())
            await limiter.release(generation, busy=False, success=True)
        return interval, np.diff(starts)

    interval, gaps = asyncio.run(scenario())
    assert gaps[0] > 1.2 * interval  # the stalled start came late...
    assert gaps[1] >= 0.95 * interval, (interval, gaps)  # ...and the next waited after it


def test_random_503s_do_not_build_up_pacing(monkeypatch):
    """A flaky server (one request in ten answered 503, whatever the rate) must not be
    taken for a rate limit that slowing down would satisfy: the pacing never grows."""
    import asyncio

    from xarray_terrascope.engine import limiter

    monkeypatch.setattr(limiter, "PACE_MIN", 0.002)  # the same dynamics, faster

    async def scenario():
        limiter = transport.Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1
            await limiter.release(await limiter.acquire(), busy=True, success=False)
        peak = 0.0
        for i in range(150):
            refused = i % 10 == 0
            await limiter.release(await limiter.acquire(), busy=refused, success=not refused)
            peak = max(peak, limiter.interval)
        return peak

    peak = asyncio.run(scenario())
    assert 0 < peak < 1.5 * limiter.PACE_MIN, peak


def test_a_request_rate_limit_gives_the_exact_cube_with_few_refusals(logged_in, clean_cube):
    """As nginx's ``limit_req`` (token bucket, 429 without Retry-After): the limit of
    requests in flight alone cannot satisfy it, pacing does."""
    transport.reset_limiters()  # as in a new process: the clean read grew the limit
    logged_in.download.max_rate = 25.0
    logged_in.download.latency = 0.01
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    records = tif_records(logged_in)
    refused = [r for r in records if r.fault == "rate"]
    served = [r for r in records if r.status == 206]
    assert refused, "the server must have refused some requests"
    assert len(refused) < 0.25 * len(served), (len(refused), len(served))


def test_stac_api_503s_leave_the_cube_exact(logged_in, clean_cube):
    logged_in.stac.fail_next(2)  # the very first STAC requests
    logged_in.stac.fault_rate = 0.3
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    assert logged_in.stac.injected >= 2


def test_retry_after_pauses_the_host_on_the_loop_clock():
    """A refusal with ``Retry-After: 0.3`` holds back the next acquire of the host's
    limiter, whoever asks, until 0.3 s later on the loop's clock (the limiter's own)."""
    import asyncio

    async def scenario():
        loop = asyncio.get_running_loop()
        limiter = transport.Limiter(16)
        refused, other = await limiter.acquire(), await limiter.acquire()
        refused_at = loop.time()
        await limiter.release(refused, busy=True, success=False, retry_after=0.3)
        await limiter.release(other, busy=False, success=True)  # a slot is free
        await limiter.acquire()
        return loop.time() - refused_at

    assert asyncio.run(scenario()) >= 0.3


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
    import asyncio

    from xarray_terrascope.engine import aio

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
