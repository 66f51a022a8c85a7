"""Decoded COG tiles shared between neighbouring windows of one process.

A dask chunk boundary rarely falls on a COG tile boundary, so the tiles along it are
needed by two windows. Without sharing, each window fetches and decodes them: more
requests and bytes than the file's tiles (and, when both windows are read at once, the
same range twice at the same moment). :class:`TileCache` keeps the decoded tiles that a
window used only in part (the ones a neighbour will want), bounded in bytes, and lets a
read wait for a tile another read is fetching instead of fetching it again.

Used on the engine's event loop only (no locks); :meth:`TileCache.clear` may be called
from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Hashable, Iterator

import numpy as np

from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import aio
from xarray_terrascope.options import get_options

__all__ = ["TileCache"]


class TileCache:
    """A bounded store of decoded tiles plus the tiles being fetched right now.

    A stored tile waits for a neighbouring window; once another read has taken it, it has
    most likely served its purpose (only a tile at a chunk corner, or one wider than a
    chunk, serves more than two windows). When the store is full, the tiles already taken
    go first, oldest use first; then the waiting ones, oldest first. Plain LRU would do
    worse when dask reads one spatial chunk for every date before its neighbour (the
    order of a reduction over time): the neighbour's tiles would be the oldest, so the
    first to go.

    Parameters
    ----------
    max_bytes : int, optional
        Decoded bytes kept at most; by default the ``tile_cache_mb`` option (read at each
        store).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max_bytes = None if max_bytes is None else int(max_bytes)
        self._least = 0  # bytes the store keeps at least (keeping_all's least_bytes)
        budget = self.max_bytes
        self._waiting: BoundedCache[Hashable, np.ndarray] = BoundedCache(budget, getsizeof=_nbytes)
        self._taken: BoundedCache[Hashable, np.ndarray] = BoundedCache(budget, getsizeof=_nbytes)
        # tiles kept only because the store keeps all (keeping_all): evicted first
        self._spare: BoundedCache[Hashable, np.ndarray] = BoundedCache(budget, getsizeof=_nbytes)
        self._pending: dict[Hashable, asyncio.Future[np.ndarray | None]] = {}
        self._keep_all = 0
        self._keep_all_lock = threading.Lock()

    @property
    def keep_all(self) -> bool:
        """Whether every fetched tile is kept now (inside :meth:`keeping_all`)."""
        return self._keep_all > 0

    @contextlib.contextmanager
    def keeping_all(self, least_bytes: int = 0) -> Iterator[None]:
        """Keep every tile fetched meanwhile, not only those a neighbouring window of the
        same cube shares: for work whose next piece is a neighbour the reads cannot
        know, such as the next batch of parcels along a Hilbert curve, whose windows
        overlap this one's (a tile inside one batch's window is often in the next's).

        Those extra tiles are the first to go when the store is full, before the tiles a
        neighbouring window waits for: a piece of work whose tiles do not fit (a batch
        over a whole season) keeps what it kept before. The store stays bounded by
        :attr:`max_bytes`. Any thread; nests.

        Parameters
        ----------
        least_bytes : int
            From now on the store holds up to at least this many bytes (for the rest of
            the process, so that the tiles wait for the next piece of work): the tiles a
            piece of work shares with the next are kept only if both fit.
        """
        with self._keep_all_lock:
            self._keep_all += 1
            self._least = max(self._least, int(least_bytes))
        try:
            yield
        finally:
            with self._keep_all_lock:
                self._keep_all -= 1

    @property
    def max_bytes(self) -> int:
        """Decoded bytes kept at most (read now)."""
        if self._max_bytes is not None:
            return max(self._max_bytes, self._least)
        return max(get_options().tile_cache_mb * 2**20, self._least)

    def get(self, key: Hashable) -> np.ndarray | asyncio.Future[np.ndarray | None] | None:
        """The tile (now counted as taken), the future of its fetch in progress, or None."""
        tile = self._pop(key)
        if tile is not None:
            self._taken.put(key, tile)
            return tile
        return self._pending.get(key)

    def _pop(self, key: Hashable) -> np.ndarray | None:
        """Remove the stored tile ``key`` (waiting, taken or spare) and return it, or None."""
        for store in (self._waiting, self._taken, self._spare):
            tile = store.pop(key, None)
            if tile is not None:
                return tile
        return None

    def claim(self, key: Hashable) -> asyncio.Future[np.ndarray | None]:
        """Announce that the caller fetches ``key``; others may await the returned future."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(aio.retrieve)
        self._pending[key] = future
        return future

    def finish(self, key: Hashable, tile: np.ndarray | None, *, keep: bool) -> None:
        """Resolve the claim on ``key`` with ``tile``; ``keep`` stores it for later reads
        (and, inside :meth:`keeping_all`, any tile is stored, as a spare)."""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(tile)
        if tile is None or not (keep or self.keep_all):
            return
        budget = self.max_bytes
        if budget != self._waiting.maxsize:  # the option changed
            self._waiting, self._taken, self._spare = (
                store.resized(budget) for store in (self._waiting, self._taken, self._spare)
            )
        self._pop(key)
        (self._waiting if keep else self._spare).put(key, tile)
        stores = (self._spare, self._taken, self._waiting)  # the order they give way in
        while sum(store.currsize for store in stores) > budget:
            next(store for store in stores if store).popitem()

    def fail(self, key: Hashable, error: BaseException) -> None:
        """Resolve the claim on ``key`` with ``error`` (its waiters raise it)."""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def clear(self) -> None:
        """Forget every stored tile (fetches in progress finish for their waiters). From
        any thread: the stores change on the engine's loop, the only thread using them."""
        if aio.started() is not None and not aio.in_loop_thread():

            async def on_the_loop() -> None:
                self._clear()

            aio.run(on_the_loop())
        else:
            self._clear()

    def _clear(self) -> None:
        self._waiting.clear()
        self._taken.clear()
        self._spare.clear()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._taken) + len(self._spare)


def _nbytes(tile: np.ndarray) -> int:
    return int(tile.nbytes)
