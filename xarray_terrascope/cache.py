"""The package's one bounded cache type: cachetools' least-recently-used cache, bounded in
entries or in the sum of a size function (bytes), with an eviction hook and a lock for
callers on several threads.

Every in-memory cache of the package is one of these (COG headers, decoded tiles, warp
plans, open GDAL readers, parsed headers, read patterns, whole files, the items of open
cubes, missing local directories); a cache whose bound is an option that may change is
:meth:`BoundedCache.resized` when it does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import cachetools

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(cachetools.LRUCache[K, V]):
    """A least-recently-used cache bounded in entries, or in bytes with ``getsizeof``.

    Reading an entry (``cache[key]``, ``cache.get(key)``) makes it the most recent; when
    an entry does not fit, the least recently used ones go, each passed to ``on_evict``.
    Not thread-safe by itself: callers on several threads hold :attr:`lock` around their
    use (the event loop's own caches need none).

    Parameters
    ----------
    maxsize : int
        The bound: entries, or the sum of ``getsizeof`` over the entries.
    getsizeof : callable, optional
        An entry's size (default 1: the bound counts entries).
    on_evict : callable, optional
        ``on_evict(key, value)`` for each entry dropped to make room (not for entries
        removed with ``pop``, ``del`` or ``clear``).

    Examples
    --------
    >>> closed = []
    >>> cache = BoundedCache(2, on_evict=lambda key, value: closed.append(key))
    >>> cache["a"], cache["b"] = 1, 2
    >>> cache.get("a")
    1
    >>> cache["c"] = 3  # "b" is the least recently used
    >>> sorted(cache), closed
    (['a', 'c'], ['b'])
    >>> sized = BoundedCache(10, getsizeof=len)
    >>> sized.put("big", b"x" * 11), len(sized)
    (False, 0)
    """

    def __init__(
        self,
        maxsize: int,
        *,
        getsizeof: Callable[[V], int] | None = None,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        super().__init__(maxsize, getsizeof)
        self._size_of = getsizeof
        self._on_evict = on_evict
        self.lock = threading.RLock()

    def popitem(self) -> tuple[K, V]:
        """Remove the least recently used entry, tell ``on_evict``, and return it."""
        key, value = super().popitem()
        if self._on_evict is not None:
            self._on_evict(key, value)
        return key, value

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` (the most recent now) unless it alone exceeds the bound; returns
        whether it is stored. An entry of ``key`` stored before is replaced or removed."""
        if self.getsizeof(value) > self.maxsize:
            self.pop(key, None)
            return False
        self[key] = value
        return True

    def resized(self, maxsize: int) -> BoundedCache[K, V]:
        """A cache with the same settings bounded by ``maxsize``, holding this one's
        entries as far as they fit (the least recently used go, to ``on_evict``). This one
        is emptied."""
        other: BoundedCache[K, V] = BoundedCache(
            maxsize, getsizeof=self._size_of, on_evict=self._on_evict
        )
        while self:
            key, value = cachetools.LRUCache.popitem(self)  # oldest first, not evicted
            if not other.put(key, value) and self._on_evict is not None:
                self._on_evict(key, value)
        return other
