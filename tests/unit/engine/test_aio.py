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
