"""Reading ahead on the engine loop: COG headers of a plan, and windows of the next dates.

dask runs as many read tasks at once as it has threads (often the number of cores), so a
streaming computation over dates would keep only a few files in flight. When reads of one
window come date after date (a sequential pattern, like a file system's read-ahead), the
windows of the next dates are read in the background, bounded in count and bytes, and
handed to the read that asks for them. Every read also has the headers of the files of
the nearest dates fetched in the background (each once per window).

Everything here runs on the loop of :mod:`xarray_terrascope.engine.aio`; results are one-shot
(taken by the read that wants them) and dropped by :func:`clear`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.engine import aio, readers
from xarray_terrascope.engine.mosaic import empty, mosaic
from xarray_terrascope.engine.requests import FileRead, GdalRead, for_pixels
from xarray_terrascope.engine.source import fetch_header
from xarray_terrascope.options import get_options

__all__ = [
    "DateRead",
    "allowed",
    "clear",
    "read",
    "read_ahead",
    "read_rounds",
    "warm_headers",
    "within",
]

logger = logging.getLogger(__name__)

#: What reads one file's request (on the loop).
Reads = Callable[[FileRead], Awaitable[npt.NDArray[Any]]]

#: Headers fetched in the background around each read: those of this many files of the
#: dates nearest the read (a read of one date of a long cube must not fetch the headers
#: of every file).
WARM_FILES = 32
#: Seconds after which a read-ahead result nobody took may make room for others.
READAHEAD_STALE = 30.0

#: The ranges of time steps ``[start, stop)`` of the computations under way in a
#: :func:`within` block, with how many blocks hold each.
_within: collections.Counter[tuple[int, int]] = collections.Counter()
_within_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _within_lock
    _within_lock = threading.Lock()  # another thread may have held it at the fork
    _within.clear()  # the parent's computations under way are not the child's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@contextlib.contextmanager
def within(start: int, stop: int) -> Iterator[None]:
    """Read ahead only the dates (time steps) ``start <= t < stop`` while in the block, or
    those of another computation's block under way in the process.

    For a computation that reads some dates of a cube while another process reads the
    others (a parcel batch gives each worker its own group of dates): the dates beyond
    its own that read-ahead would fetch are the other's, and would be fetched twice.

    Examples
    --------
    >>> with within(0, 37):  # doctest: +SKIP
    ...     stats.compute()
    """
    key = (int(start), int(stop))
    with _within_lock:
        _within[key] += 1
    try:
        yield
    finally:
        with _within_lock:
            _within[key] -= 1
            if _within[key] <= 0:
                del _within[key]


def allowed(t: int) -> bool:
    """Whether read-ahead may read time step ``t`` (:func:`within`: always outside such
    a block)."""
    with _within_lock:
        return not _within or any(start <= t < stop for start, stop in _within)


async def read(request: FileRead | DateRead, one: Reads | None = None) -> npt.NDArray[Any]:
    """Read ``request`` (a file's window, or a whole date's whose files ``one`` reads),
    taking a read-ahead result or a read under way when there is one (on the loop)."""
    state = aio.engine()
    task, _ = state.readahead.pop(request.key, (None, 0.0))
    if task is not None:
        try:
            return await task
        except Exception as err:  # read again below, where the error is raised
            logger.debug("read-ahead of %s failed (%r); reading it again", request.label, err)
    return await aio.shared(state.reading, request.key, lambda: _work(request, one))


def _work(request: FileRead | DateRead, one: Reads | None = None) -> Awaitable[npt.NDArray[Any]]:
    """The read of ``request`` itself, not shared."""
    return request.run(one) if isinstance(request, DateRead) else readers.read(request)


async def read_rounds(
    files: Sequence[FileRead],
    out: npt.NDArray[Any],
    index: int,
    fill: Any,
    wanted: npt.NDArray[np.bool_] | None,
    one: Reads,
) -> None:
    """Read one date's ``files`` into ``out[index]`` in mosaic order (on the loop): the
    first for the ``wanted`` pixels (None: all), each next one only for the wanted
    pixels still empty (the overlap of two tiles: often none, and then neither that file
    nor a later one is read). ``one`` reads a request."""
    for depth, file in enumerate(files):
        want = wanted
        if depth:
            still = empty(out[index], fill)
            want = still if want is None else want & still
        request = for_pixels(file, want)
        if request is None:  # no pixel left for this file, nor for the next ones
            return
        mosaic(out, [(index, await one(request))], fill, fresh=depth == 0)


@dataclass(frozen=True)
class DateRead:
    """A whole date of a window: its files in mosaic order (every one for the async
    engine), read in rounds by :func:`read_rounds`. Read ahead, it spares the read that
    takes it the round trips of the date's later files as well as its first's."""

    key: Hashable
    files: tuple[FileRead, ...]

    @classmethod
    def of(cls, files: Sequence[FileRead]) -> DateRead | None:
        """The whole-date read of a date's ``files`` (in mosaic order), keyed by their
        keys; None when a file is for GDAL (or there is none): such a date is read file
        by file."""
        if not files or any(isinstance(file, GdalRead) for file in files):
            return None
        return cls(("date", *(file.key for file in files)), tuple(files))

    @property
    def label(self) -> str:
        return self.files[0].label

    @property
    def nbytes(self) -> int:
        return self.files[0].nbytes

    async def run(self, one: Reads | None = None) -> npt.NDArray[Any]:
        """The date's window, its files read with ``one`` (default :func:`read`)."""
        first = self.files[0]
        out = np.full((1, *first.window.shape), first.fill, first.dtype)
        await read_rounds(self.files, out, 0, first.fill, None, one or read)
        window: npt.NDArray[Any] = out[0]
        return window


async def _start(requests: Sequence[FileRead | DateRead]) -> None:
    """Start reading ``requests`` ahead while the table has room.

    A result waiting to be taken is never dropped for a newer one (its bytes would be
    fetched twice); only results nobody took within :data:`READAHEAD_STALE` seconds
    make room. A full table starts nothing.
    """
    state = aio.engine()
    table, reading = state.readahead, state.reading
    budget = get_options().readahead_mb * 2**20
    limit = max(4, budget // max(1, max(r.nbytes for r in requests)))
    now = asyncio.get_running_loop().time()
    for key in [k for k, (_, started) in table.items() if now - started > READAHEAD_STALE]:
        table.pop(key)[0].cancel()
    for request in requests:
        if len(table) >= limit:
            logger.debug("read-ahead table full (%d): %s not read ahead", limit, request.label)
            break
        if request.key in table or request.key in reading:
            continue
        task = asyncio.ensure_future(_work(request))
        task.add_done_callback(aio.retrieve)
        table[request.key] = (task, now)


def read_ahead(requests: Sequence[FileRead | DateRead]) -> None:
    """Start reading ``requests`` in the background (from any thread but the loop's)."""
    if requests:
        aio.submit(_start(requests))


def warm_headers(todo: Sequence[tuple[str, str, RequestAuth | None]]) -> None:
    """Fetch the headers of ``(url, label, access)`` in the background."""
    if todo:
        aio.submit(_warm(todo))


async def _warm(todo: Sequence[tuple[str, str, RequestAuth | None]]) -> None:
    warming = aio.engine().warming
    task = asyncio.current_task()
    assert task is not None, "runs as a task of the engine's loop"
    warming.add(task)  # clear() cancels it
    try:
        await _warm_all(todo)
    finally:
        warming.discard(task)


async def _warm_all(todo: Sequence[tuple[str, str, RequestAuth | None]]) -> None:
    first = todo[0]  # one header first: its size sizes the others' single request
    results: list[Any] = list(await asyncio.gather(fetch_header(*first), return_exceptions=True))
    results += await asyncio.gather(
        *(fetch_header(url, label, auth) for url, label, auth in todo[1:]),
        return_exceptions=True,
    )
    failed = sum(isinstance(r, BaseException) for r in results)
    if failed:  # the reads that need these files raise the errors themselves
        logger.debug("%d of %d header prefetches failed", failed, len(todo))


def clear() -> None:
    """Cancel and forget every read-ahead result, header prefetch and parsed header
    waiting for its read (after a change of credentials); returns when they have
    stopped, with the requests only they were waiting for."""

    async def drop() -> None:
        state = aio.engine()
        tasks = [task for task, _ in state.readahead.values()] + list(state.warming)
        for task in tasks:
            task.cancel()
        state.readahead.clear()
        state.parsed.clear()
        # returns once they have ended, with the downloads only they were waiting for
        await asyncio.gather(*tasks, return_exceptions=True)

    if aio.started() is not None and not aio.in_loop_thread():
        aio.run(drop())
