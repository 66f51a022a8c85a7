"""The adaptive (AIMD) limit of requests in flight to one host, for the async engine.

Slow start from :data:`INITIAL_CONNECTIONS`, halving on 429/503 with ``Retry-After``
honoured, additive growth after runs of successes, careful probing above the level a
host refused last. A host that still refuses one request at a time, or answers 429
without ``Retry-After``, limits the request *rate* (nginx's ``limit_req``, a token
bucket), not the concurrency: requests are then also paced, a minimum interval between
their starts that grows on each refusal and shrinks after runs of successes.
:mod:`xarray_terrascope.engine.transport` keeps one per origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = [
    "INITIAL_CONNECTIONS",
    "PACE_DOWN",
    "PACE_MAX",
    "PACE_MIN",
    "PACE_RUN",
    "PACE_RUN_BUSY",
    "PACE_UP",
    "PACE_UP_BUSY",
    "PROBE_AFTER",
    "PROBE_SUCCESSES",
    "Limiter",
]

logger = logging.getLogger(__name__)

#: Requests in flight to a host not heard from yet; doubled after each run of successes
#: (slow start) up to the maximum, until the host first refuses one.
INITIAL_CONNECTIONS = 4
#: Growing past the last refused limit waits this long after the cut, and this many
#: successes.
PROBE_AFTER = 10.0
PROBE_SUCCESSES = 64
#: Pacing (seconds between request starts) set by the first refusal at one request in
#: flight or by a 429 without ``Retry-After``, and the most it grows to. A refusal
#: lengthens it by :data:`PACE_UP` (429: a rate limit on this client) or
#: :data:`PACE_UP_BUSY` (503: busy, or a random fault); a run of :data:`PACE_RUN` (429)
#: or :data:`PACE_RUN_BUSY` (503) successes shortens it by
#: :data:`PACE_DOWN`; it ends below half of :data:`PACE_MIN`. The pacing settles where
#: about 6 % (429) or 20 % (503) of the requests are refused: random 503s of a flaky
#: server (10 % or so) end it instead of feeding it.
PACE_MIN = 0.05
PACE_MAX = 2.0
PACE_UP, PACE_UP_BUSY = 1.5, 1.25
PACE_RUN, PACE_RUN_BUSY = 8, 4
PACE_DOWN = 0.8


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

    A refusal while the limit is already one means the host limits the request rate,
    and so does a 429 without ``Retry-After`` at any limit (RFC 6585's "too many
    requests in a given amount of time", nginx's ``limit_req``): requests are then
    paced (``interval`` seconds between starts, the first an interval after the
    refusal, from :data:`PACE_MIN`, longer after each refusal, shorter after runs of
    successes, see :data:`PACE_UP`); the limit grows again only once the pacing has
    ended. Pacing at the first such 429, not after the cuts down to one request, spares
    the requests each cut would send at once into the emptied bucket. A 429 with
    ``Retry-After`` (the host names its pause) and a 503 only cut the limit.

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
        self.interval = 0.0
        self._pace_run = PACE_RUN
        self._next_start = 0.0
        self._last_start = float("-inf")
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
                    generation = self.generation
                    now = loop.time()
                    start = max(now, self._next_start)
                    self._next_start = start + self.interval if self.interval else 0.0
                    break
                await self._cond.wait()
        if start > now or self.interval:
            try:
                await self._pace(start - now)
            except asyncio.CancelledError:
                async with self._cond:
                    self.in_flight -= 1
                    self._cond.notify_all()
                raise
        return generation

    async def _pace(self, delay: float) -> None:
        """Sleep ``delay`` (the slot reserved), then until ``interval`` after the last
        actual start: requests whose sleeps all ended late (a busy machine) go one by
        one, not as a burst the server's bucket refuses."""
        loop = asyncio.get_running_loop()
        if delay > 0:
            await asyncio.sleep(delay)
        while (wait := self._last_start + self.interval - loop.time()) > 0:
            await asyncio.sleep(wait)
        self._last_start = loop.time()

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
            # every answer's wait is kept, an older generation's too (the host may ask
            # for a longer one later: the limit is cut once, the pause is the longest)
            if busy and retry_after:
                self._paused_until = max(self._paused_until, now + retry_after)
            if busy and generation == self.generation:
                self._slow_start = False
                self.generation += 1
                self._successes = 0
                old, self.limit = self.limit, max(1, self.limit // 2)
                self._refused_at = self.limit + 1 if rate_limited else old
                self._last_cut = now
                # refused one at a time, or a 429 that names no time to wait: a limit
                # of the request rate, which no number of requests in flight satisfies
                if old == 1 or (rate_limited and not retry_after):
                    up = PACE_UP if rate_limited else PACE_UP_BUSY
                    self._pace_run = PACE_RUN if rate_limited else PACE_RUN_BUSY
                    self.interval = min(PACE_MAX, max(PACE_MIN, up * self.interval))
                    # the next request starts an interval after the refusal, not at once
                    # into the bucket that just ran dry
                    self._next_start = max(self._next_start, now + self.interval)
                    logger.debug(
                        "host limits the request rate: %.3f s between requests (limit %d)",
                        self.interval,
                        self.limit,
                    )
                else:
                    logger.debug("host busy: connection limit %d -> %d", old, self.limit)
            elif success and self.interval:
                self._successes += 1
                if self._successes >= self._pace_run:
                    self._successes = 0
                    self.interval *= PACE_DOWN
                    if self.interval < PACE_MIN / 2:
                        self.interval = 0.0
                        logger.debug("pacing ended")
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
