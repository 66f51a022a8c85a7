"""The adaptive limit of requests in flight to one host (``engine/limiter.py``), on a real
asyncio loop: slow start, one cut per window of refusals, growth after runs of successes,
probing above a refused level, pacing at one request or at once after a 429 without
``Retry-After``, ``Retry-After``.

Assertions are on the limit's values, on the order in which waiting requests get a slot,
and on the loop's own clock (the limiter's), never on the wall clock.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from xarray_terrascope.engine import limiter as limits
from xarray_terrascope.engine.limiter import INITIAL_CONNECTIONS, Limiter


async def _window(limiter: Limiter, *, busy: bool = False, rate_limited: bool = False) -> None:
    """As many requests as the limit allows, sent at once, then all answered alike."""
    generations = [await limiter.acquire() for _ in range(limiter.limit)]
    for generation in generations:
        await limiter.release(
            generation, busy=busy, success=not busy, rate_limited=rate_limited and busy
        )


async def _one(limiter: Limiter, *, busy: bool = False, rate_limited: bool = False) -> None:
    """One request, answered."""
    generation = await limiter.acquire()
    await limiter.release(generation, busy=busy, success=not busy, rate_limited=rate_limited)


def test_the_connection_limit_starts_low_doubles_then_halves_on_refusal():
    """Slow start to the maximum, a halving per refused window, additive growth after."""

    async def scenario():
        limiter = Limiter(16)
        seen = [limiter.limit]
        for _ in range(3):  # three windows of successes: 4 -> 8 -> 16
            await _window(limiter)
            seen.append(limiter.limit)
        await _window(limiter, busy=True)  # a burst of refusals of one window: one cut
        seen.append(limiter.limit)
        await _window(limiter)  # after a refusal: +1, not doubling
        seen.append(limiter.limit)
        return seen

    assert asyncio.run(scenario()) == [4, 8, 16, 16, 8, 9]


@pytest.mark.parametrize(("maximum", "start"), [(0, 1), (1, 1), (2, 2), (100, 4)])
def test_a_new_host_starts_at_the_initial_level_or_the_maximum_below_it(maximum, start):
    async def scenario():
        return Limiter(maximum).limit

    assert INITIAL_CONNECTIONS == 4
    assert asyncio.run(scenario()) == start


def test_a_request_beyond_the_limit_waits_for_a_slot_and_gets_the_first_one_freed():
    """Four slots taken: the fifth and sixth requests wait (however often the loop turns)
    and start in order, each as one request ends."""

    async def scenario():
        limiter = Limiter(16)
        held = [await limiter.acquire() for _ in range(limiter.limit)]
        order: list[str] = []

        async def request(name: str) -> int:
            generation = await limiter.acquire()
            order.append(name)
            return generation

        fifth = asyncio.ensure_future(request("fifth"))
        sixth = asyncio.ensure_future(request("sixth"))
        for _ in range(20):
            await asyncio.sleep(0)
        waited = (fifth.done(), sixth.done(), limiter.in_flight)
        await limiter.release(held.pop(), busy=False, success=True)
        await fifth
        for _ in range(20):
            await asyncio.sleep(0)
        still = sixth.done()
        await limiter.release(held.pop(), busy=False, success=True)
        await sixth
        return waited, still, order, limiter.in_flight

    waited, still, order, in_flight = asyncio.run(scenario())
    assert waited == (False, False, 4)
    assert still is False
    assert order == ["fifth", "sixth"]
    assert in_flight == 4  # two of the first four ended, the fifth and sixth took over


def test_a_refusal_in_the_window_after_a_cut_cuts_again():
    """A request sent after the cut (at the new limit) and refused halves the limit
    again; a late refusal of one sent before the cut does not."""

    async def scenario():
        limiter = Limiter(16)
        before = await limiter.acquire()  # sent at 4
        await _one(limiter, busy=True)  # 4 -> 2
        after_first = limiter.limit
        await limiter.release(before, busy=True, success=False)  # of the old window
        after_late = limiter.limit
        await _one(limiter, busy=True)  # sent at 2, refused: 2 -> 1
        return after_first, after_late, limiter.limit

    assert asyncio.run(scenario()) == (2, 2, 1)


def test_growth_after_a_cut_needs_a_whole_run_of_successes():
    """After a 503 at 16 (cut to 8), the limit grows by one per run of ``limit``
    successes: ``limit - 1`` successes are not enough."""

    async def scenario():
        limiter = Limiter(16)
        for _ in range(2):
            await _window(limiter)  # 4 -> 8 -> 16
        await _window(limiter, busy=True)  # 16 -> 8
        for _ in range(limiter.limit - 1):
            await _one(limiter)
        short = limiter.limit
        await _one(limiter)
        return short, limiter.limit

    assert asyncio.run(scenario()) == (8, 9)


def test_growth_stops_below_the_refused_level_until_a_late_probe(monkeypatch):
    """After a 503 at 16, growth goes back to 15 and stops there: going to 16 again (the
    refused level) is a probe, made only :data:`PROBE_AFTER` seconds after the cut (on
    the loop's clock) and :data:`PROBE_SUCCESSES` successes later."""
    monkeypatch.setattr(limits, "PROBE_SUCCESSES", 40)

    async def grow(limiter: Limiter, runs: int) -> None:
        for _ in range(runs):
            await _window(limiter)

    async def scenario(probe_after: float):
        monkeypatch.setattr(limits, "PROBE_AFTER", probe_after)
        limiter = Limiter(16)
        await grow(limiter, 2)  # 4 -> 8 -> 16
        await _window(limiter, busy=True)  # 16 -> 8, refused at 16
        await grow(limiter, 7)  # 8 -> 15
        reached = limiter.limit
        await grow(limiter, 10)  # 150 more successes
        return reached, limiter.limit

    assert asyncio.run(scenario(probe_after=3600.0)) == (15, 15)  # too soon after the cut
    assert asyncio.run(scenario(probe_after=0.0)) == (15, 16)  # the probe, once allowed


def test_after_a_429_the_limit_stays_at_the_cut_level():
    """A rate limit (429) is about this client: no growth back towards the refused level
    (each new refusal would pause the host for Retry-After), until a late probe."""

    async def scenario():
        limiter = Limiter(16)
        await _one(limiter, busy=True, rate_limited=True)
        cut = limiter.limit
        for _ in range(4 * cut):
            await _window(limiter)
        return cut, limiter.limit

    assert asyncio.run(scenario()) == (2, 2)


def test_refusals_at_one_request_pace_the_requests_until_successes_end_it():
    """A host that refuses one request at a time limits the rate: starts are spaced out
    (more after each refusal), and runs of successes shrink the spacing to nothing."""

    async def scenario():
        limiter = Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1, no pacing yet
            await _one(limiter, busy=True)
        unpaced = limiter.interval
        intervals = []
        for _ in range(3):  # 429s at one request in flight: a rate limit
            await _one(limiter, busy=True, rate_limited=True)
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
            await _one(limiter)
            successes += 1
        return unpaced, intervals, gaps, successes, limiter.limit

    unpaced, intervals, gaps, successes, limit = asyncio.run(scenario())
    assert limit == 1 and unpaced == 0.0
    up = limits.PACE_UP
    assert intervals == pytest.approx([limits.PACE_MIN * f for f in (1, up, up * up)])
    assert (gaps >= 0.9 * intervals[-1]).all(), gaps
    assert successes <= 8 * limits.PACE_RUN


@pytest.mark.parametrize(
    ("status", "retry_after", "paced"),
    [(429, None, True), (429, 0.01, False), (503, None, False)],
)
def test_a_429_naming_no_wait_paces_at_once_whatever_the_limit(status, retry_after, paced):
    """Slow start at 8, the whole window refused. A 429 without ``Retry-After`` (nginx's
    ``limit_req``: a token bucket) is a limit of the request rate: pacing starts with
    the one cut, not after two more cuts brought the limit to one, each sending its
    requests at once into the empty bucket; the next request starts one interval after
    the refusal, and the window's other refusals neither cut again nor lengthen it. A
    429 naming its wait (the host's pause) and a 503 only cut."""

    async def scenario():
        loop = asyncio.get_running_loop()
        limiter = Limiter(16)
        await _window(limiter)  # 4 -> 8
        window = [await limiter.acquire() for _ in range(limiter.limit)]
        refused_at = loop.time()
        for generation in window:
            await limiter.release(
                generation,
                busy=True,
                success=False,
                retry_after=retry_after,
                rate_limited=status == 429,
            )
        interval = limiter.interval
        await limiter.acquire()
        return limiter.limit, interval, loop.time() - refused_at

    limit, interval, waited = asyncio.run(scenario())
    assert limit == 4
    if paced:
        assert interval == limits.PACE_MIN
        assert waited >= limits.PACE_MIN, waited
    else:
        assert interval == 0.0


def test_paced_starts_stay_apart_when_the_machine_stalls():
    """A busy machine wakes a paced request late: the next one must still wait the whole
    interval after that late start, or the server's bucket sees two at once."""

    async def scenario():
        limiter = Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1
            await _one(limiter, busy=True)
        await _one(limiter, busy=True, rate_limited=True)
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
    monkeypatch.setattr(limits, "PACE_MIN", 0.002)  # the same dynamics, faster

    async def scenario():
        limiter = Limiter(16)
        for _ in range(2):  # 4 -> 2 -> 1
            await _one(limiter, busy=True)
        peak = 0.0
        for i in range(150):
            await _one(limiter, busy=i % 10 == 0)
            peak = max(peak, limiter.interval)
        return peak

    peak = asyncio.run(scenario())
    assert 0 < peak < 1.5 * limits.PACE_MIN, peak


def test_retry_after_pauses_the_host_on_the_loop_clock():
    """A refusal with ``Retry-After: 0.3`` holds back the next acquire of the host's
    limiter, whoever asks, until 0.3 s later on the loop's clock (the limiter's own)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        limiter = Limiter(16)
        refused, other = await limiter.acquire(), await limiter.acquire()
        refused_at = loop.time()
        await limiter.release(refused, busy=True, success=False, retry_after=0.3)
        await limiter.release(other, busy=False, success=True)  # a slot is free
        await limiter.acquire()
        return loop.time() - refused_at

    assert asyncio.run(scenario()) >= 0.3


def test_a_refusal_of_an_older_window_does_not_cut_again_but_its_wait_holds():
    """A late refusal of a request sent before the cut does not cut the limit again,
    but the host's ``Retry-After`` in it holds: a host that asks for 1 s, then (to the
    requests already under way) for a longer wait, gets the longer one, not requests
    at the first deadline."""

    async def scenario():
        loop = asyncio.get_running_loop()
        limiter = Limiter(16)
        old = await limiter.acquire()
        first, other = await limiter.acquire(), await limiter.acquire()
        start = loop.time()
        await limiter.release(first, busy=True, success=False, retry_after=0.1)  # the cut
        await limiter.release(old, busy=True, success=False, retry_after=0.5)
        await limiter.release(other, busy=False, success=True)  # a slot is free
        await limiter.acquire()
        return limiter.limit, loop.time() - start

    limit, waited = asyncio.run(scenario())
    assert limit == 2 and waited >= 0.5
