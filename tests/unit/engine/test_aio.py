"""The engine's event loop (``engine/aio.py``): one loop on a thread of its own, usable
from any thread but its own. (A forked child's own loop: ``integration/test_read_engine``.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from xarray_terrascope.engine import aio


def test_run_from_many_threads_and_not_from_the_loop():
    async def square(x):
        await asyncio.sleep(0.01)
        return x * x

    results = {}

    def worker(i):
        results[i] = aio.run(square(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: i * i for i in range(12)}

    async def nested():
        return aio.run(square(2))

    with pytest.raises(RuntimeError, match="own event loop"):
        aio.run(nested())


def test_the_engine_loop_is_uvloop_where_installed():
    uvloop = pytest.importorskip("uvloop")

    async def running():
        return asyncio.get_running_loop()

    assert isinstance(aio.run(running()), uvloop.Loop)


def test_shared_work_runs_while_a_caller_waits_and_stops_with_the_last():
    """Two callers share one task; the first one's cancellation leaves it running for
    the second. When its only caller is cancelled, it is cancelled too (before: it ran
    on, and a read-ahead cancelled after a logout still sent its request), and the next
    caller starts it anew."""
    runs: list[str] = []
    ended: list[str] = []

    async def work(name: str) -> str:
        runs.append(name)
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            ended.append(f"{name} cancelled")
            raise
        ended.append(f"{name} done")
        return name

    async def scenario() -> list[object]:
        table: dict[str, asyncio.Task[str]] = {}
        first = asyncio.ensure_future(aio.shared(table, "k", lambda: work("one")))
        second = asyncio.ensure_future(aio.shared(table, "k", lambda: work("two")))
        await asyncio.sleep(0.05)
        first.cancel()
        got = [await second]
        lone = asyncio.ensure_future(aio.shared(table, "k", lambda: work("three")))
        await asyncio.sleep(0.05)
        lone.cancel()
        await asyncio.gather(lone, return_exceptions=True)
        await asyncio.sleep(0.01)
        got.append(dict(table))
        got.append(await aio.shared(table, "k", lambda: work("four")))
        return got

    assert aio.run(scenario()) == ["one", {}, "four"]
    assert runs == ["one", "three", "four"]
    assert ended == ["one done", "three cancelled", "four done"]
