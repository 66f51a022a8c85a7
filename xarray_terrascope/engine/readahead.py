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
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from xarray_terrascope.auth import RequestAuth
from xarray_terrascope.engine import aio
from xarray_terrascope.engine.cog import Grid, fetch_header, forget_parsed, read_aligned
from xarray_terrascope.engine.warp import read_warped
from xarray_terrascope.options import get_options
from xarray_terrascope.plan.planner import NativeGrid, OutputGrid

__all__ = ["Spec", "clear", "read", "read_ahead", "warm_headers"]

logger = logging.getLogger(__name__)

#: Headers fetched in the background around each read: those of this many files of the
#: dates nearest the read (a read of one date of a long cube must not fetch the headers
#: of every file).
WARM_FILES = 32
#: Seconds after which a read-ahead result nobody took may make room for others.
READAHEAD_STALE = 30.0


@dataclass(frozen=True)
class Spec:
    """One file's part of one output window (the arguments of
    :func:`~xarray_terrascope.engine.cog.read_aligned`)."""

    url: str
    label: str
    access: RequestAuth | None
    grid: Grid | None
    shape: tuple[int, int]
    rows: slice
    cols: slice
    dtype: Any
    fill: Any
    cube: tuple[int, int] | None = None
    #: for a file on another grid: its grid and the output grid (nearest-neighbour warp)
    warp: tuple[NativeGrid, OutputGrid] | None = None

    @property
    def key(self) -> tuple:
        # the credentials' identity is part of the key: another user reads anew
        return (
            self.url,
            self.rows.start,
            self.rows.stop,
            self.cols.start,
            self.cols.stop,
            str(self.dtype),
            None if self.access is None else self.access.identity,
        )

    @property
    def nbytes(self) -> int:
        size = (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start)
        return size * np.dtype(self.dtype).itemsize

    def run(self):
        if self.warp is not None:
            native, target = self.warp
            return read_warped(
                self.url,
                label=self.label,
                access=self.access,
                native=native,
                target=target,
                rows=self.rows,
                cols=self.cols,
                dtype=self.dtype,
                fill=self.fill,
            )
        return read_aligned(
            self.url,
            label=self.label,
            access=self.access,
            grid=self.grid,
            shape=self.shape,
            rows=self.rows,
            cols=self.cols,
            dtype=self.dtype,
            fill=self.fill,
            cube=self.cube,
        )


def _table() -> OrderedDict[tuple, tuple[asyncio.Future, float]]:
    """Read-ahead results by :attr:`Spec.key`: the task and the loop time it started."""
    return aio.loop_state().setdefault("readahead", OrderedDict())


#: ``loop_state()`` table of the reads under way that a caller asked for (never evicted,
#: never read ahead again).
_READING = "reading"


async def read(spec: Spec) -> np.ndarray:
    """Read ``spec``, taking a read-ahead result or a read under way when there is one
    (on the loop)."""
    task, _ = _table().pop(spec.key, (None, 0.0))
    if task is not None:
        try:
            return await task
        except Exception:
            logger.debug("read-ahead of %s failed; reading it again", spec.label)
    return await aio.shared(_READING, spec.key, spec.run)


async def _start(specs: list[Spec]) -> None:
    """Start reading ``specs`` ahead while the table has room.

    A result waiting to be taken is never dropped for a newer one (its bytes would be
    fetched twice); only results nobody took within :data:`READAHEAD_STALE` seconds
    make room. A full table starts nothing.
    """
    table, reading = _table(), aio.loop_state().setdefault(_READING, {})
    budget = get_options().readahead_mb * 2**20
    limit = max(4, budget // max(1, max(s.nbytes for s in specs)))
    now = asyncio.get_running_loop().time()
    for key in [k for k, (_, started) in table.items() if now - started > READAHEAD_STALE]:
        table.pop(key)[0].cancel()
    for spec in specs:
        if len(table) >= limit:
            logger.debug("read-ahead table full (%d): %s not read ahead", limit, spec.label)
            break
        if spec.key in table or spec.key in reading:
            continue
        task = asyncio.ensure_future(spec.run())
        task.add_done_callback(aio.retrieve)
        table[spec.key] = (task, now)


def read_ahead(specs: list[Spec]) -> None:
    """Start reading ``specs`` in the background (from any thread but the loop's)."""
    if specs:
        aio.submit(_start(specs))


def warm_headers(todo: list[tuple[str, str, str | None]]) -> None:
    """Fetch the headers of ``(url, label, access)`` in the background."""
    if todo:
        aio.submit(_warm(todo))


async def _warm(todo: list[tuple[str, str, str | None]]) -> None:
    first = todo[0]  # one header first: its size sizes the others' single request
    results: list[Any] = await asyncio.gather(fetch_header(*first), return_exceptions=True)
    results += await asyncio.gather(
        *(fetch_header(url, label, auth) for url, label, auth in todo[1:]),
        return_exceptions=True,
    )
    failed = sum(isinstance(r, BaseException) for r in results)
    if failed:  # the reads that need these files raise the errors themselves
        logger.debug("%d of %d header prefetches failed", failed, len(todo))


def clear() -> None:
    """Cancel and forget every read-ahead result and parsed header waiting for its read
    (after a change of credentials)."""

    async def drop() -> None:
        table = _table()
        for task, _ in table.values():
            task.cancel()
        table.clear()
        forget_parsed()

    if not aio.in_loop_thread():
        aio.run(drop())
