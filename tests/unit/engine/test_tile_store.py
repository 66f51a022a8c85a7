"""The store of decoded tiles shared by neighbouring windows (``engine/tile_store.py``):
claims and their waiters, what is kept within the ``tile_cache_mb`` option's bytes, and
in which order tiles go. On a real asyncio loop; tiles are small numpy arrays."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import xarray_terrascope as xts
from xarray_terrascope.engine.tile_store import TileCache

#: A tile of 256 KiB: four fill a MiB of the option.
QUARTER_MB = (512, 512)


def _tile(value: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


async def _waiter(store: TileCache, key) -> np.ndarray | None:
    """What a second read of ``key`` gets while the first fetches it."""
    pending = store.get(key)
    assert isinstance(pending, asyncio.Future), pending
    return await asyncio.wait_for(pending, 10)


def test_waiters_of_a_claimed_tile_get_it_and_the_store_keeps_it():
    async def scenario():
        store = TileCache(max_bytes=10_000)
        assert store.get("t") is None  # nobody fetches it: the caller does
        store.claim("t")
        waiters = [asyncio.ensure_future(_waiter(store, "t")) for _ in range(3)]
        await asyncio.sleep(0)
        store.finish("t", _tile(7), keep=True)
        got = await asyncio.gather(*waiters)
        return got, store.get("t"), len(store)

    got, later, kept = asyncio.run(scenario())
    assert [g[0, 0] for g in got] == [7, 7, 7]
    assert later is not None and later[0, 0] == 7  # kept for the next window
    assert kept == 1


def test_a_tile_fetched_for_one_window_only_is_handed_over_but_not_kept():
    async def scenario():
        store = TileCache(max_bytes=10_000)
        store.claim("t")
        waiter = asyncio.ensure_future(_waiter(store, "t"))
        await asyncio.sleep(0)
        store.finish("t", _tile(3), keep=False)
        return (await waiter)[0, 0], store.get("t"), len(store)

    assert asyncio.run(scenario()) == (3, None, 0)


def test_waiters_of_a_failed_fetch_get_its_error_and_nothing_stays():
    async def scenario():
        store = TileCache(max_bytes=10_000)
        store.claim("t")
        waiters = [asyncio.ensure_future(_waiter(store, "t")) for _ in range(2)]
        await asyncio.sleep(0)
        error = ConnectionResetError("dropped")
        store.fail("t", error)
        results = await asyncio.gather(*waiters, return_exceptions=True)
        return error, results, store.get("t")

    error, results, after = asyncio.run(scenario())
    assert results == [error, error]
    assert after is None  # neither stored nor pending: the next read fetches it


def test_a_budget_of_zero_keeps_nothing_but_waiters_still_get_the_tile(options):
    options(tile_cache_mb=0)

    async def scenario():
        store = TileCache()
        store.claim("t")
        waiter = asyncio.ensure_future(_waiter(store, "t"))
        await asyncio.sleep(0)
        store.finish("t", _tile(5), keep=True)
        return (await waiter)[0, 0], len(store), store.get("t")

    assert asyncio.run(scenario()) == (5, 0, None)


def test_the_option_is_read_at_each_store():
    """``tile_cache_mb`` changed between stores: the next store keeps what the new
    value allows, in either direction."""

    def store_many(store: TileCache, keys: range) -> int:
        async def scenario():
            for key in keys:
                store.claim(key)
                store.finish(key, _tile(key % 256, QUARTER_MB), keep=True)
            return len(store)

        return asyncio.run(scenario())

    with xts.set_options(tile_cache_mb=1):
        store = TileCache()  # its caches are made for 1 MiB
        assert store.max_bytes == 2**20
        assert store_many(store, range(0, 6)) == 4
    with xts.set_options(tile_cache_mb=2):
        assert store_many(store, range(6, 12)) == 8
    with xts.set_options(tile_cache_mb=1):
        assert store_many(store, range(12, 13)) == 4
    with xts.set_options(tile_cache_mb=0):
        assert store_many(store, range(13, 14)) == 0


def test_a_given_bound_ignores_the_option():
    with xts.set_options(tile_cache_mb=0):
        assert TileCache(max_bytes=3 * 64).max_bytes == 192


def test_clear_forgets_stored_tiles_and_keeps_fetches_in_progress():
    async def scenario():
        store = TileCache(max_bytes=10_000)
        store.claim("old")
        store.finish("old", _tile(1), keep=True)
        store.claim("new")
        waiter = asyncio.ensure_future(_waiter(store, "new"))
        await asyncio.sleep(0)
        store.clear()
        cleared = (len(store), store.get("old"))
        store.finish("new", _tile(2), keep=False)
        return cleared, (await waiter)[0, 0]

    assert asyncio.run(scenario()) == ((0, None), 2)


@pytest.mark.parametrize("keep", [True, False])
def test_finishing_a_key_nobody_claimed_is_harmless(keep):
    async def scenario():
        store = TileCache(max_bytes=10_000)
        store.finish("t", _tile(4), keep=keep)
        store.fail("u", RuntimeError("x"))
        return len(store)

    assert asyncio.run(scenario()) == (1 if keep else 0)


def test_tile_store_lets_taken_tiles_go_before_waiting_ones():
    """When full, the store drops tiles another read has already taken (oldest use first)
    before the ones still waiting for their neighbour (oldest first). Plain LRU dropped
    the waiting ones: taking a tile made it the newest."""
    store = TileCache(max_bytes=3 * 64)

    def put(key):
        store.claim(key)
        store.finish(key, np.full(64, key, np.uint8), keep=True)

    async def scenario():
        for key in (1, 2, 3):
            put(key)
        assert store.get(1)[0] == 1  # taken by the neighbouring window
        put(4)  # full: 1 (taken) goes, 2 and 3 still wait
        assert store.get(1) is None
        assert [store.get(key)[0] for key in (2, 3)] == [2, 3]  # both taken now
        put(5)
        assert store.get(2) is None and store.get(4)[0] == 4  # the oldest taken went
        put(6)
        put(7)  # 3, then 4 (taken, oldest uses) made room; 5 and 6 wait, 7 is new
        assert (store.get(3), store.get(4)) == (None, None)
        assert [store.get(key)[0] for key in (5, 6, 7)] == [5, 6, 7]
        put(8)  # only taken tiles now: the one taken longest ago (5) goes
        assert store.get(5) is None and len(store) == 3
        future = store.claim(9)  # a fetch in progress answers with its future
        assert store.get(9) is future
        store.finish(9, None, keep=True)  # nothing to keep: the store is unchanged
        assert len(store) == 3 and await future is None
        store.clear()
        assert len(store) == 0

    asyncio.run(scenario())


def test_while_keeping_all_a_tile_no_neighbour_shares_is_kept_as_a_spare():
    """Inside ``keeping_all`` (a worker's batch of parcels), a tile fetched for one
    window only is kept too (the next batch's windows overlap this one's); outside, it
    is not."""

    async def scenario():
        store = TileCache(max_bytes=10_000)
        with store.keeping_all():
            assert store.keep_all
            store.claim("inside")
            store.finish("inside", _tile(1), keep=False)
        assert not store.keep_all
        store.claim("after")
        store.finish("after", _tile(2), keep=False)
        return store.get("inside"), store.get("after")

    inside, after = asyncio.run(scenario())
    assert inside is not None and inside[0, 0] == 1
    assert after is None


def test_spares_give_way_before_the_tiles_a_neighbouring_window_waits_for():
    """A store of 4 tiles holding 2 a neighbour waits for and 2 spares: 2 more waiting
    tiles push the spares out, not the older waiting ones (a batch over a whole season,
    whose tiles do not fit, keeps what it kept without spares)."""

    async def scenario():
        store = TileCache(max_bytes=4 * 64)
        for key in ("w1", "w2"):
            store.claim(key)
            store.finish(key, _tile(1), keep=True)
        with store.keeping_all():
            for key in ("s1", "s2"):
                store.claim(key)
                store.finish(key, _tile(2), keep=False)
            for key in ("w3", "w4"):
                store.claim(key)
                store.finish(key, _tile(3), keep=True)
        return {key: store.get(key) is not None for key in ("w1", "w2", "w3", "w4", "s1", "s2")}

    assert asyncio.run(scenario()) == {
        "w1": True,
        "w2": True,
        "w3": True,
        "w4": True,
        "s1": False,
        "s2": False,
    }


def test_keeping_all_with_least_bytes_holds_more_than_the_option_from_then_on():
    """``keeping_all(least_bytes)`` (a worker's batch, ``tile_store_mb``) raises the
    store's bound above the ``tile_cache_mb`` option, and the bound stays raised after
    the batch, so its tiles wait for the next one."""

    async def scenario():
        store = TileCache()  # the option's bound: 1 MiB, 4 tiles of 256 KiB
        with store.keeping_all(least_bytes=2 * 2**20):
            for k in range(8):
                store.claim(k)
                store.finish(k, _tile(k, QUARTER_MB), keep=False)
        kept_after = len(store)
        store.claim("next")
        store.finish("next", _tile(9, QUARTER_MB), keep=True)  # the next batch's
        return kept_after, store.max_bytes, store.get(1) is not None

    with xts.set_options(tile_cache_mb=1):
        kept, bound, second = asyncio.run(scenario())
    assert kept == 8 and bound == 2 * 2**20
    assert second  # the oldest spare gave way to "next", the second one is still there


def test_clearing_from_another_thread_waits_for_the_engines_loop():
    """The loop thread alone changes the store: ``clear()`` from another thread runs on
    the loop, so it cannot cut into a change under way there (here, while the loop is
    held, nothing is cleared; once it is free, everything is)."""
    import threading

    from xarray_terrascope.engine import aio

    store = aio.engine().tiles
    store.clear()

    async def keep_one() -> None:
        store.claim("t")
        store.finish("t", _tile(1), keep=True)

    aio.run(keep_one())
    assert len(store) == 1
    busy, release = threading.Event(), threading.Event()

    async def hold_the_loop() -> None:
        busy.set()
        release.wait(10)  # blocks the loop thread itself

    held = aio.submit(hold_the_loop())
    assert busy.wait(10)
    clearing = threading.Thread(target=store.clear)
    clearing.start()
    clearing.join(0.3)
    try:
        assert clearing.is_alive() and len(store) == 1, "cleared off the loop"
    finally:
        release.set()
        held.result(10)
        clearing.join(10)
    assert len(store) == 0
