"""One asyncio event loop per process, on its own daemon thread, shared by every caller.

The read engine's network I/O runs here, so its concurrency does not depend on how many
threads dask (or the user) calls it from. :func:`run` is a blocking call usable from any
thread, including one that already runs an event loop (a Jupyter kernel) and the task
threads of a ``dask.distributed`` worker. After ``fork()`` the child gets a new loop (the
parent's loop thread does not exist there).

Per-loop state (HTTP sessions, limiters) is kept with :func:`loop_state`, so it is
rebuilt together with the loop in a forked child. The parent's loop and state are kept,
never closed, in the child: closing them there would act on sockets the parent still
uses, and collecting them would warn about unclosed sessions.

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
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

__all__ = [
    "idle_for",
    "in_loop_thread",
    "loop_state",
    "native_started",
    "native_usable",
    "retrieve",
    "run",
    "shared",
    "submit",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None
_state: dict[str, Any] = {}
#: Work submitted to the loop and not finished yet, and when the last one finished
#: (see :func:`idle_for`).
_in_flight = 0
_idle_since = 0.0


#: In a forked child: the parent's loop and loop state, kept (never closed) for good.
_forked_leftovers: list[tuple[asyncio.AbstractEventLoop | None, dict[str, Any]]] = []
#: The process in which async-tiff's runtime started (None: in none of this process's
#: ancestors either).
_native_pid: int | None = None


def _reset_after_fork() -> None:
    """In a forked child: forget the parent's loop (its thread does not exist here)."""
    global _loop, _thread, _pid, _lock, _in_flight, _state
    _lock = threading.Lock()
    _forked_leftovers.append((_loop, _state))
    _loop = _thread = _pid = None
    _in_flight = 0
    _state = {}


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


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread, _pid
    with _lock:
        if _loop is not None and _pid == os.getpid() and _thread is not None and _thread.is_alive():
            return _loop
        if _pid != os.getpid():
            _state.clear()
        loop = _new_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, name="terrascope-aio", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread, _pid = loop, thread, os.getpid()
        logger.debug("started the read engine's event loop in pid %d", _pid)
        return loop


def in_loop_thread() -> bool:
    """Whether the calling thread is the engine's loop thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]):
    """Schedule ``coro`` on the engine's loop and return a ``concurrent.futures.Future``."""
    global _in_flight
    loop = _get_loop()
    with _lock:
        _in_flight += 1
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except BaseException:
        _finished(None)
        raise
    future.add_done_callback(_finished)
    return future


def _finished(_future) -> None:
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
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run() was called from the engine's own event loop thread")
    future = submit(coro)
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


def loop_state() -> dict[str, Any]:
    """A dict that lives as long as the current loop (cleared in a forked child).

    Only touch it from the loop thread.
    """
    return _state


def retrieve(future: asyncio.Future) -> None:
    """Done callback marking a shared future's exception as seen (its awaiters raise it
    themselves): no "exception was never retrieved" noise."""
    if not future.cancelled():
        future.exception()


async def shared(table: str, key: Hashable, start: Callable[[], Awaitable[T]]) -> T:
    """The result of the one task for ``key`` in ``loop_state()[table]``: started with
    ``start()`` when none runs, awaited by every caller that asks meanwhile (a caller's
    cancellation does not cancel it). Only on the loop thread."""
    pending = loop_state().setdefault(table, {})
    task = pending.get(key)
    if task is None:
        task = pending[key] = asyncio.ensure_future(start())
        task.add_done_callback(lambda done: (pending.pop(key, None), retrieve(done)))
    return await asyncio.shield(task)
