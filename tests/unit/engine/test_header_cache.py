"""The COG header cache (``engine/header_cache.py``) without a server: the memory part
(least recently used first, bounded in bytes; keys without query string or user), entries
confirmed or dropped, and the disk writer's order and timing against the engine's idle
clock, in a directory under ``tmp_path``. (Files that change under the cache, several
processes sharing it, planted files: ``integration/test_header_cache.py``.)"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from xarray_terrascope.engine import aio, header_share
from xarray_terrascope.engine.header_cache import Header, HeaderCache, headers, key_of

URL = "https://example.test/download/a.tif"


def _header(tag: str, size: int = 40) -> Header:
    """A header of ``size`` bytes (what the memory bound counts) with ETag ``tag``."""
    return Header(b"II*\x00" + tag.encode().ljust(size - 4, b"."), 10_000, f'"{tag}"')


@pytest.fixture
def memory_only(options) -> None:
    """No disk: what a cache holds is in its memory."""
    options(header_cache=False)


@pytest.fixture
def header_cache_dir(tmp_path, monkeypatch):
    """A fresh persistent header cache per test, and nothing in memory."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(folder))
    monkeypatch.delenv("TERRASCOPE_HEADER_CACHE", raising=False)
    headers.clear_memory()
    yield folder
    assert headers.flush(30), "the header cache's writer thread is stuck"
    headers.clear_memory()


# --- memory ------------------------------------------------------------------------------


def test_memory_is_bounded_in_bytes_and_drops_the_least_recently_used(memory_only):
    cache = HeaderCache(max_bytes=100)
    a, b, c = (f"https://example.test/{name}.tif" for name in "abc")
    cache.put(a, _header("a"))
    cache.put(b, _header("b"))
    assert cache.get(a) == (_header("a"), False)  # a use: b is now the oldest
    cache.put(c, _header("c"))  # 120 bytes: one must go
    assert cache.get(b) == (None, False)
    assert cache.get(a) == (_header("a"), False)
    assert cache.get(c) == (_header("c"), False)


def test_a_header_larger_than_the_memory_bound_is_not_kept(memory_only):
    cache = HeaderCache(max_bytes=100)
    cache.put(URL, _header("small"))
    cache.put("https://example.test/big.tif", _header("big", size=101))
    assert cache.get("https://example.test/big.tif") == (None, False)
    assert cache.get(URL) == (_header("small"), False)  # nothing made room for it


@pytest.mark.parametrize(
    ("stored", "asked", "found"),
    [
        (URL, URL + "?X-Amz-Signature=abc", True),  # the query string is no part of it
        (URL, "https://alice:pw@example.test/download/a.tif", True),  # nor the user
        (URL + "?token=1", URL + "?token=2", True),
        (URL, "https://example.test/download/b.tif", False),
        (URL, "http://example.test/download/a.tif", False),  # another scheme
        (URL, "https://example.test:8443/download/a.tif", False),  # another port
    ],
)
def test_entries_are_keyed_by_the_url_without_query_or_user(memory_only, stored, asked, found):
    cache = HeaderCache()
    cache.put(stored, _header("x"))
    assert (cache.get(asked)[0] is not None) is found


def test_validated_keeps_a_disk_entry_in_memory_and_drop_forgets_it(memory_only):
    cache = HeaderCache()
    cache.validated(URL, _header("v"))
    assert cache.get(URL) == (_header("v"), False)
    cache.drop(URL)
    assert cache.get(URL) == (None, False)
    cache.put(URL, _header("w"))
    cache.clear_memory()
    assert cache.get(URL) == (None, False)


def test_seed_adds_headers_by_key_without_replacing_held_ones(memory_only):
    cache = HeaderCache()
    other = "https://example.test/download/b.tif"
    cache.put(URL, _header("mine"))
    fetched = Header(_header("theirs").data, 10_000, '"theirs"', fetched=123.0)
    added = cache.seed({key_of(URL): fetched, key_of(other): fetched})
    assert added == 1
    assert cache.get(URL) == (_header("mine"), False)  # this process's own is kept
    got, from_disk = cache.get(other + "?token=1")
    assert got == fetched and not from_disk
    assert got.fetched == 0.0  # a cached header: a read that fails with it fetches again


def test_a_shared_blob_is_installed_once_per_process(memory_only, monkeypatch):
    cache = HeaderCache()
    monkeypatch.setattr(header_share, "headers", cache)
    monkeypatch.setattr(header_share, "_installed", set())
    blob = header_share.SharedHeaders({key_of(URL): _header("shared")})
    assert header_share.install(blob) == 1
    cache.drop(URL)  # found stale by a read
    assert header_share.install(blob) == 0  # the stale header is not put back
    assert cache.get(URL) == (None, False)
    assert header_share.install(None) == 0


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ((100, '"a"', None), (100, '"a"', None), True),
        ((100, '"a"', None), (101, '"a"', None), False),  # the size differs
        ((100, '"a"', None), (100, '"b"', None), False),
        ((100, '"a"', "Mon"), (100, '"a"', "Tue"), True),  # the ETag decides
        ((100, None, "Mon"), (100, '"b"', "Tue"), False),  # no ETag on one side: the date
        ((100, None, "Mon"), (100, None, "Mon"), True),
        ((None, None, None), (100, '"b"', "Tue"), True),  # nothing known: nothing differs
    ],
)
def test_a_header_matches_a_response_by_size_then_etag_then_date(old, new, same):
    assert Header(b"II*\x00", *old).matches(*new) is same


# --- disk: confirmation, removal, the writer -----------------------------------------------


def test_a_header_from_disk_is_unconfirmed_until_validated(header_cache_dir):
    headers.put(URL, _header("d"))
    assert headers.flush(30)
    headers.clear_memory()  # as a new process
    assert headers.get(URL) == (_header("d"), True)  # from disk: the reader validates it
    headers.validated(URL, _header("d"))
    assert headers.get(URL) == (_header("d"), False)
    headers.drop(URL)
    assert headers.get(URL) == (None, False)
    assert headers.flush(30)
    headers.clear_memory()
    assert headers.get(URL) == (None, False)  # gone from the disk too
    assert list(header_cache_dir.glob("headers/*/*")) == []


def test_a_header_without_validator_stays_in_memory_only(header_cache_dir):
    headers.put(URL, Header(b"II*\x00", 100, None, None))
    assert headers.flush(30)
    assert headers.get(URL)[0] is not None
    assert list(header_cache_dir.glob("headers/*/*")) == []


def test_a_dropped_header_is_not_loaded_again_before_its_removal_lands(
    header_cache_dir, monkeypatch
):
    """``drop`` (a header found stale) is queued behind the writes before it; meanwhile
    the disk entry must not be read back."""
    url, other = "https://example.test/download/a.tif", "https://example.test/download/b.tif"
    headers.put(url, Header(b"II*\x00old", 100, '"v1"'))
    assert headers.flush(30)
    headers.clear_memory()
    assert headers.get(url)[0].etag == '"v1"'  # from disk
    gate, store = threading.Event(), headers._store
    monkeypatch.setattr(headers, "_store", lambda *args: (gate.wait(30), store(*args)))
    try:
        headers.put(other, Header(b"II*\x00new", 50, '"v2"'))  # the writer waits on the gate
        headers.drop(url)  # its removal is queued behind that write
        assert headers.get(url) == (None, False)
        assert headers.flush(0.2) is False
    finally:
        gate.set()
    assert headers.flush(30)
    assert headers.get(url) == (None, False)
    (left,) = header_cache_dir.glob("headers/*/*")
    assert left.read_bytes().endswith(b"II*\x00new")


def test_disk_writes_wait_for_the_engine_to_be_idle(header_cache_dir, monkeypatch, options):
    """A header reaches the disk once the read engine has been idle a moment (the writes
    would take CPU and the GIL from the reads), at once on ``flush()``, and after
    the ``header_write_defer`` option's seconds even while the engine never stops.

    "Not written yet" is asserted once the writer has been seen to hold the write back:
    the engine's idle clock it consults is wrapped (the real one, counted, not replaced).
    """

    def on_disk() -> int:
        return len(list(header_cache_dir.glob("headers/*/*")))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 20
        while on_disk() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert on_disk() == count

    busy_seen = []  # one entry each time the writer found the engine busy

    def idle_for() -> float:
        quiet = aio.idle_for()
        if quiet == 0.0:
            busy_seen.append(time.monotonic())
        return quiet

    def put_and_see_it_held_back(url: str, data: bytes) -> None:
        """Put a header and wait until the writer has twice found the engine busy since
        (it checks again after IDLE_SECONDS): it is holding that write back."""
        before = len(busy_seen)
        headers.put(url, Header(data, 7, '"e"'))
        deadline = time.monotonic() + 20
        while len(busy_seen) < before + 2:
            assert time.monotonic() < deadline, "the writer never asked whether the engine reads"
            time.sleep(0.02)

    monkeypatch.setattr(headers, "_idle_for", idle_for)
    release = threading.Event()

    async def reading():  # the engine has work in flight until released
        while not release.is_set():
            await asyncio.sleep(0.01)

    options(header_write_defer=30.0)
    running = aio.submit(reading())
    try:
        assert aio.idle_for() == 0.0
        put_and_see_it_held_back("https://example.test/download/a.tif", b"II*\x00a")
        assert on_disk() == 0  # held back while the engine reads
        assert headers.flush(30)  # written now, busy or not
        assert on_disk() == 1
        options(header_write_defer=0.5)
        headers.put("https://example.test/download/b.tif", Header(b"II*\x00b", 7, '"e"'))
        wait_for(2)  # no longer held back than that
        assert not running.done()
        options(header_write_defer=30.0)
        put_and_see_it_held_back("https://example.test/download/c.tif", b"II*\x00c")
        assert on_disk() == 2
    finally:
        release.set()
        running.result(10)
    wait_for(3)  # the engine is idle: written without a flush
    assert aio.idle_for() > 0.0
