"""The read engine of a process: one asyncio event loop on a thread of its own, and
everything kept on it between reads (:class:`Engine`).

The engine's network I/O runs on that loop, so its concurrency does not depend on how
many threads dask (or the user) calls it from. :func:`run` is a blocking call usable from
any thread, including one that already runs an event loop (a Jupyter kernel) and the task
threads of a ``dask.distributed`` worker.

A forked child gets a new :class:`Engine` (the parent's loop thread does not exist
there); the parent's is kept, never closed, in the child: closing it there would act on
sockets the parent still uses, and collecting it would warn about unclosed sessions.

async-tiff's own runtime (Rust threads that parse and decode COGs) does not survive
``fork()``: once it has started in a process, its calls never finish in a forked child.
:func:`native_started` records that it started; :func:`native_usable` tells a child that
it must read another way (see :mod:`xarray_terrascope.engine.read`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from xarray_terrascope.cache import BoundedCache

if TYPE_CHECKING:  # the engine's other modules import this one
    import aiohttp
    import numpy as np
    from async_tiff import TIFF

    from xarray_terrascope.engine.header_cache import Header
    from xarray_terrascope.engine.limiter import Limiter
    from xarray_terrascope.engine.origins import Remote
    from xarray_terrascope.engine.source import Source
    from xarray_terrascope.engine.tile_store import TileCache
    from xarray_terrascope.engine.warp import Gather

__all__ = [
    "Engine",
    "engine",
    "idle_for",
    "in_loop_thread",
    "native_started",
    "native_usable",
    "retrieve",
    "run",
    "shared",
    "start",
    "submit",
    "wait",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

#: Parsed headers waiting for the first read of their file, at most.
PARSED_ENTRIES = 256


def _tile_cache() -> TileCache:
    from xarray_terrascope.engine.tile_store import TileCache

    return TileCache()


@dataclass(eq=False)
class Engine:
    """The read engine of one process: its event loop and thread, and what the reads keep
    on that loop between them. Its fields are touched from the loop's thread only, except
    :attr:`tiles`'s ``clear()``.

    Attributes
    ----------
    session
        The HTTP session of :mod:`.transport` (created at the first request).
    limiters
        Per origin: its adaptive limit of requests in flight.
    multirange, multirange_probes
        Per origin: whether it answers several ranges in one request (unknown: absent),
        and the request finding that out.
    ranges_seen, range_probes, ignores_ranges
        Origins that answered a ranged request; the first request of each file while its
        origin's answer is unknown; origins that answer ranges with the whole file.
    whole_files
        Bodies of files from origins that ignore ``Range``, by file and account (bounded
        by an option, so made when first needed).
    parsed
        TIFFs parsed by header requests, handed to the first read of their file.
    tiles
        Decoded tiles kept for neighbouring windows, and tiles being fetched.
    readahead, reading
        Windows read ahead (with when they started) and reads under way, by read key.
    warming
        Background fetches of the headers of files about to be read.
    pending_headers, pending_whole_files, pending_gathers
        The one task per key of work that concurrent reads share (see :func:`shared`).
    """

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    pid: int
    session: aiohttp.ClientSession | None = None
    limiters: dict[str, Limiter] = field(default_factory=dict)
    multirange: dict[str, bool] = field(default_factory=dict)
    multirange_probes: dict[str, asyncio.Event] = field(default_factory=dict)
    ranges_seen: set[str] = field(default_factory=set)
    range_probes: dict[str, asyncio.Event] = field(default_factory=dict)
    ignores_ranges: set[str] = field(default_factory=set)
    whole_files: BoundedCache[tuple[str, str], tuple[bytes, Remote]] | None = None
    parsed: BoundedCache[tuple[str, str | None], tuple[TIFF, Source]] = field(
        default_factory=lambda: BoundedCache(PARSED_ENTRIES)
    )
    tiles: TileCache = field(default_factory=_tile_cache)
    readahead: dict[Hashable, tuple[asyncio.Task[np.ndarray], float]] = field(default_factory=dict)
    reading: dict[Hashable, asyncio.Task[np.ndarray]] = field(default_factory=dict)
    warming: set[asyncio.Task[Any]] = field(default_factory=set)
    pending_headers: dict[str, asyncio.Task[Header]] = field(default_factory=dict)
    pending_whole_files: dict[tuple[str, str], asyncio.Task[Any]] = field(default_factory=dict)
    pending_gathers: dict[Hashable, asyncio.Task[Gather]] = field(default_factory=dict)

    def alive(self) -> bool:
        """Whether this engine's loop serves this process."""
        # the loop runs exactly as long as its thread serves it (``is_running`` costs a
        # fraction of ``Thread.is_alive``, which takes a lock: the read path asks often)
        return self.pid == os.getpid() and self.loop.is_running()


_lock = threading.Lock()
_engine: Engine | None = None
#: Work submitted to the loop and not finished yet, and when the last one finished
#: (see :func:`idle_for`).
_in_flight = 0
_idle_since = 0.0
#: In a forked child: the parent's engine, kept (never closed) for good.
_forked_leftovers: list[Engine] = []
#: The process in which async-tiff's runtime started (None: in none of this process's
#: ancestors either).
_native_pid: int | None = None


def _reset_after_fork() -> None:
    """In a forked child: forget the parent's engine (its loop thread does not exist
    here), keeping it referenced so that nothing of it is closed or collected."""
    global _engine, _lock, _in_flight
    _lock = threading.Lock()
    if _engine is not None:
        _forked_leftovers.append(_engine)
    _engine = None
    _in_flight = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (Linux, macOS: a dependency there), which
    spends about a fifth less CPU per request than asyncio's own; asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def engine() -> Engine:
    """This process's engine, its loop started on a thread of its own when needed."""
    global _engine
    current = _engine  # the common case, without the lock: the read path asks often
    if current is not None and current.alive():
        return current
    with _lock:
        if _engine is not None and _engine.alive():
            return _engine
        loop = _new_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, name="terrascope-aio", daemon=True)
        thread.start()
        ready.wait()
        _engine = Engine(loop=loop, thread=thread, pid=os.getpid())
        logger.debug("started the read engine's event loop in pid %d", _engine.pid)
        return _engine


def started() -> Engine | None:
    """This process's engine if it runs, without starting one."""
    current = _engine
    return current if current is not None and current.alive() else None


def in_loop_thread() -> bool:
    """Whether the calling thread is the engine's loop thread."""
    current = _engine
    return current is not None and threading.current_thread() is current.thread


def submit(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the engine's loop and return a ``concurrent.futures.Future``."""
    global _in_flight
    loop = engine().loop
    with _lock:
        _in_flight += 1
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except BaseException:
        _finished(None)
        raise
    future.add_done_callback(_finished)
    return future


def _finished(_future: object) -> None:
    global _in_flight, _idle_since
    with _lock:
        _in_flight -= 1
        _idle_since = time.monotonic()


def idle_for() -> float:
    """Seconds since the engine's loop last had work in flight (what :func:`submit` and
    :func:`run` gave it: reads, header prefetches); 0.0 while it has. Read-ahead tasks,
    which the loop starts for itself and nobody waits for, do not count. Background
    chores, such as writing the header cache, wait for a quiet moment with it.
    """
    if _in_flight > 0:
        return 0.0
    return time.monotonic() - _idle_since


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the process's engine loop and wait for its result.

    Usable from any thread except the loop's own, whether or not that thread runs an
    event loop of its own (which is blocked meanwhile, as for any blocking call).

    Parameters
    ----------
    coro : coroutine
        The work to run.

    Returns
    -------
    object
        What ``coro`` returned; its exception is raised here.

    Examples
    --------
    >>> async def two():
    ...     return 2
    >>> run(two())
    2
    """
    return wait(start(coro))


def start(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Start ``coro`` on the engine's loop for :func:`wait` (the calling thread may do
    other work meanwhile); not from the loop's own thread."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError(
            "called from the engine's own event loop thread, which cannot wait for itself"
        )
    return submit(coro)


def wait(future: Future[T]) -> T:
    """The result of work that :func:`start` started (its exception raised here); the
    work is cancelled when the wait is interrupted."""
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def native_started() -> None:
    """Record that async-tiff's runtime runs in this process (call before its first use)."""
    global _native_pid
    if _native_pid is None:
        _native_pid = os.getpid()


def native_usable() -> bool:
    """Whether async-tiff works in this process: False in a child forked after it had
    started (in the parent, or further up)."""
    return _native_pid is None or _native_pid == os.getpid()


def retrieve(future: asyncio.Future[Any]) -> None:
    """Done callback marking a shared future's exception as seen (its awaiters raise it
    themselves): no "exception was never retrieved" noise."""
    if not future.cancelled():
        future.exception()


async def shared(tasks: dict[K, asyncio.Task[T]], key: K, start: Callable[[], Awaitable[T]]) -> T:
    """The result of the one task for ``key`` in ``tasks`` (a table of the engine): started
    with ``start()`` when none runs, awaited by every caller that asks meanwhile. A
    caller's cancellation leaves it running for the others; when the last caller is
    cancelled it is cancelled too (a cancelled read-ahead or a read abandoned after a
    logout sends no more requests), and the next caller starts a new one. Only on the
    loop thread."""
    task = tasks.get(key)
    if task is None:
        task = tasks[key] = asyncio.ensure_future(start())

        def done(finished: asyncio.Task[T]) -> None:
            if tasks.get(key) is finished:
                del tasks[key]
            retrieve(finished)

        task.add_done_callback(done)
    _waiting[task] = _waiting.get(task, 0) + 1
    try:
        return await asyncio.shield(task)
    finally:
        left = _waiting.get(task, 1) - 1
        if left:
            _waiting[task] = left
        else:
            _waiting.pop(task, None)
            if not task.done():  # nobody waits for it any more
                if tasks.get(key) is task:
                    del tasks[key]
                task.cancel()


#: How many callers of :func:`shared` wait for each of its tasks (weakly held).
_waiting: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
