"""The one bounded cache type: least recently used first, in entries or bytes, with an
eviction hook, and resized when an option changes its bound."""

from __future__ import annotations

import threading

import numpy as np

from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine.tile_store import TileCache


def test_entries_go_least_recently_used_first_to_the_hook():
    dropped = []
    cache = BoundedCache(3, on_evict=lambda key, value: dropped.append((key, value)))
    for key in "abc":
        cache[key] = key.upper()
    assert cache.get("a") == "A"  # a is now the most recent
    cache["d"] = "D"
    cache["e"] = "E"
    assert dropped == [("b", "B"), ("c", "C")]
    assert sorted(cache) == ["a", "d", "e"]


def test_a_bytes_bound_counts_sizes_and_refuses_what_alone_is_too_big():
    cache = BoundedCache(10, getsizeof=len)
    assert cache.put("x", b"12345")
    assert cache.put("y", b"12345")
    assert cache.put("z", b"1")  # x goes: 11 > 10
    assert sorted(cache) == ["y", "z"] and cache.currsize == 6
    assert not cache.put("y", b"x" * 11)  # too big: not stored, the old entry removed
    assert "y" not in cache and cache.currsize == 1


def test_removals_by_hand_are_not_evictions():
    dropped = []
    cache = BoundedCache(2, on_evict=lambda key, value: dropped.append(key))
    cache["a"] = 1
    cache.pop("a")
    cache["b"] = 2
    del cache["b"]
    cache["c"] = 3
    cache.clear()
    assert dropped == []


def test_resized_keeps_the_most_recent_that_fit():
    dropped = []
    cache = BoundedCache(8, getsizeof=len, on_evict=lambda key, value: dropped.append(key))
    for key in "abcd":
        cache.put(key, b"xx")
    cache.get("a")  # order from the least recent: b, c, d, a
    smaller = cache.resized(4)
    assert sorted(smaller) == ["a", "d"] and smaller.maxsize == 4
    assert dropped == ["b", "c"]
    assert len(cache) == 0
    larger = smaller.resized(100)
    assert sorted(larger) == ["a", "d"]


def test_callers_on_several_threads_share_its_lock():
    cache = BoundedCache(1000)

    def fill(base: int) -> None:
        for i in range(500):
            with cache.lock:
                cache.put(base + i, i)

    threads = [threading.Thread(target=fill, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 1000 and cache.currsize == 1000


def test_the_tile_store_drops_taken_tiles_before_waiting_ones():
    """The tile store's policy on top of two caches sharing one byte budget: a tile
    another read has taken goes before one still waiting for its neighbour."""
    import asyncio

    async def scenario() -> tuple[list, list]:
        store = TileCache(max_bytes=3 * 64)
        tile = np.zeros(64, np.uint8)
        for key in ("a", "b", "c"):
            store.claim(key)
            store.finish(key, tile.copy(), keep=True)
        store.get("a")  # taken: the first to go
        store.claim("d")
        store.finish("d", tile.copy(), keep=True)
        return sorted(store._waiting), sorted(store._taken)

    waiting, taken = asyncio.run(scenario())
    assert (waiting, taken) == (["b", "c", "d"], [])
