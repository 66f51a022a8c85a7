"""The adaptive (AIMD) limit of requests in flight to one host, for the async engine.

Slow start from :data:`INITIAL_CONNECTIONS`, halving on 429/503 with ``Retry-After``
honoured, additive growth after runs of successes, careful probing above the level a
host refused last. :mod:`xarray_terrascope._transport` keeps one per origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["INITIAL_CONNECTIONS", "PROBE_AFTER", "PROBE_SUCCESSES", "Limiter"]

logger = logging.getLogger(__name__)

#: Requests in flight to a host not heard from yet; doubled after each run of successes
#: (slow start) up to the maximum, until the host first refuses one.
INITIAL_CONNECTIONS = 4
#: Growing past the last refused limit waits this long after the cut, and this many
#: successes.
PROBE_AFTER = 10.0
PROBE_SUCCESSES = 64


class Limiter:
    """Adaptive (AIMD) limit of requests in flight to one host; use on the engine loop.

    A new host starts at :data:`INITIAL_CONNECTIONS` and doubles after each run of
    ``limit`` successes (slow start) until the maximum or a first refusal, so a host that
    allows few connections is not flooded at once. A 429/503 halves the limit, once per
    window: only a refusal of a request sent at the current limit cuts again, so a burst
    of refusals counts once. The cut also pauses the host for ``Retry-After``. After a
    503 a run of ``limit`` successes grows the limit by one up to the level that was
    refused; after a 429 (a rate limit on this client) the cut level is kept. Growth
    above that waits for :data:`PROBE_AFTER` seconds and :data:`PROBE_SUCCESSES`
    successes, so a server that allows N connections is not probed (and paused for its
    ``Retry-After``) over and over.

    Parameters
    ----------
    maximum : int
        The ceiling.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, int(maximum))
        self.limit = min(self.maximum, INITIAL_CONNECTIONS)
        self._slow_start = True
        self.in_flight = 0
        self.generation = 0
        self._refused_at = self.maximum + 1
        self._successes = 0
        self._paused_until = 0.0
        self._last_cut = float("-inf")
        self._cond = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a free slot (and the end of a pause); returns the window's generation."""
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                pause = self._paused_until - loop.time()
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), pause)
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    return self.generation
                await self._cond.wait()

    async def release(
        self,
        generation: int,
        busy: bool,
        success: bool,
        retry_after: float | None = None,
        rate_limited: bool = False,
    ) -> None:
        """Free a slot; ``busy`` (429/503) may cut the limit, successes grow it.

        ``rate_limited`` (a 429: this client sends too many) makes every level above the
        cut one a probe; after a 503 (the server is busy for everyone) the limit grows
        back by one per run of successes up to the level refused.
        """
        loop = asyncio.get_running_loop()
        async with self._cond:
            self.in_flight -= 1
            now = loop.time()
            if busy and generation == self.generation:
                self._slow_start = False
                self.generation += 1
                self._successes = 0
                old, self.limit = self.limit, max(1, self.limit // 2)
                self._refused_at = self.limit + 1 if rate_limited else old
                self._last_cut = now
                if retry_after:
                    self._paused_until = max(self._paused_until, now + retry_after)
                logger.debug("host busy: connection limit %d -> %d", old, self.limit)
            elif success and self.limit < self.maximum:
                self._successes += 1
                if self._slow_start:
                    if self._successes >= self.limit:
                        self.limit = min(self.maximum, 2 * self.limit)
                        self._successes = 0
                    self._cond.notify_all()
                    return
                probing = self.limit + 1 >= self._refused_at
                if not probing and self._successes >= self.limit:
                    self.limit += 1
                    self._successes = 0
                elif (
                    probing
                    and self._successes >= PROBE_SUCCESSES
                    and now - self._last_cut >= PROBE_AFTER
                ):
                    self.limit += 1
                    self._refused_at = self.limit + 1
                    self._successes = 0
            self._cond.notify_all()
