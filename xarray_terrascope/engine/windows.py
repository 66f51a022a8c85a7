"""What this process remembers of the windows it reads, and the work it starts around
each read: the headers of the nearest dates' files, and the next dates read ahead.

A window (of one plan and asset) keeps the dates read in the current pass, which tell a
run of reads date after date (up or down) and so the direction to read ahead in, the
files whose headers were warmed, and each date's requests (made once per credentials).
Windows are keyed by :func:`plan_key`: the plan's files, the grid they land on and how
they are read, so two cubes of the same items over other bboxes never share one.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from xarray_terrascope import auth
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import readahead
from xarray_terrascope.engine.requests import FileRead, GdalRead, Window
from xarray_terrascope.options import get_options
from xarray_terrascope.plan.planner import CubePlan

__all__ = [
    "RECENT_SIZE",
    "MakeRequest",
    "WindowState",
    "clear",
    "plan_key",
    "prefetch_around",
    "window_state",
]

#: How a file's request for a window is made (``read._request``'s signature).
MakeRequest = Callable[..., FileRead | None]


def clear() -> None:
    """Forget every window's read pattern, warmed headers and requests."""
    with _recent.lock:
        _recent.clear()


#: Windows this process has read recently, with the dates read (for warm-up and read-ahead).
RECENT_SIZE = 256
_recent: BoundedCache[Hashable, WindowState] = BoundedCache(RECENT_SIZE)


@dataclass(eq=False)
class WindowState:
    """What this process remembers of a window of a plan: the dates read in the current
    pass, the files whose headers were warmed, and each date's requests (made once per
    credentials: the reads of a long series ask for the same dates' requests again and
    again, to warm their headers and read them ahead)."""

    seen: set[int] = field(default_factory=set)
    warmed: set[str] = field(default_factory=set)
    creds: object = None
    files: dict[int, list[FileRead]] = field(default_factory=dict)

    def requests(
        self,
        plan: CubePlan,
        asset_index: int,
        window: Window,
        creds: auth.AnyCredentials | None,
        t: int,
        make: MakeRequest,
        *,
        native: bool = True,
    ) -> list[FileRead]:
        """Date ``t``'s requests of the window, in mosaic order (files that miss the
        window left out), each made by ``make``; ``native`` False: a process where
        async-tiff does not run (every file through GDAL, made afresh). Threads may race
        to make the same date's: same result."""

        def made() -> list[FileRead]:
            return [
                request
                for item_index in plan.groups[t]
                if (request := make(plan, asset_index, item_index, window, creds, native=native))
                is not None
            ]

        if not native:
            return made()
        if self.creds is not creds:  # other credentials: other requests
            self.files = {}
            self.creds = creds
        found = self.files.get(t)
        if found is not None and any(r.access is not None and not r.access.current for r in found):
            found = None  # made before a logout (by a read under way then)
        if found is None:
            found = self.files[t] = made()
        return found


def window_state(plan: CubePlan, asset_index: int, window: Window) -> WindowState:
    """What this process remembers of the window (made when new; now the most recent)."""
    key = (plan_key(plan), asset_index, window)
    with _recent.lock:
        state = _recent.get(key)
        if state is None:
            state = WindowState()
            _recent.put(key, state)
        return state


def _reset_after_fork() -> None:
    _recent.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def prefetch_around(
    plan: CubePlan,
    asset_index: int,
    time_indices: Sequence[int],
    window: Window,
    creds: auth.AnyCredentials | None,
    make: MakeRequest,
) -> None:
    """Fetch the headers of the files of the dates nearest the read (up to
    :data:`~xarray_terrascope.engine.readahead.WARM_FILES` files: the dates' first files,
    its own dates' first, then their later files) in the background. Reads of a window
    date after date, up or down: read the next dates' files ahead in that direction."""
    state = window_state(plan, asset_index, window)
    with _recent.lock:
        seen, warmed = state.seen, state.warmed
        if any(t in seen for t in time_indices):  # the window is read again: a new pass
            seen.clear()
        lo, hi = min(time_indices), max(time_indices)
        forwards = any(t - 1 in seen for t in time_indices)
        # dask often takes a window's dates from the last partition down
        backwards = not forwards and any(t + 1 in seen for t in time_indices)
        # At an end of the series the run of dates read goes on the other way: dask
        # starts the last two partitions at once, and the last one may come second.
        if forwards and hi == len(plan.groups) - 1:
            forwards, backwards = False, True
        elif backwards and lo == 0:
            forwards, backwards = True, False
        seen.update(time_indices)
        seen_now = set(seen)
    dates_ahead = len(plan.groups)
    files_ahead = get_options().readahead_files
    if _in_worker():
        # The workers of a cluster take turns on a window's partitions: dates read ahead
        # here would often be read again by the worker that gets them. A worker reads
        # ahead only while it has read the window's dates as one unbroken run, and only
        # as many dates as that run held before this read.
        unbroken = max(seen_now) - min(seen_now) + 1 == len(seen_now)
        dates_ahead = len(seen_now) - len(set(time_indices)) if unbroken else 0

    def async_reads(
        times: Iterable[int], first: bool = False, later: bool = False
    ) -> Iterator[FileRead]:
        """The async engine's requests of the window for dates ``times`` (``first``: of
        each date's first file only, the one a read takes whole; ``later``: of the files
        after it only, read where the first leaves the window empty)."""
        for t in times:
            files = state.requests(plan, asset_index, window, creds, t, make)
            chosen = files[:1] if first else files[1:] if later else files
            yield from (request for request in chosen if not isinstance(request, GdalRead))

    # The headers of the files of the nearest dates (a window that moves with the
    # reads): each date's first file, which its read takes whole, before the later ones,
    # which it reads only where the first leaves the window empty (often not at all).
    dates = list(_outwards(lo, hi, len(plan.groups)))
    nearest = itertools.islice(
        itertools.chain(async_reads(dates, first=True), async_reads(dates, later=True)),
        readahead.WARM_FILES,
    )
    with _recent.lock:
        new = [request for request in nearest if request.url not in warmed]
        warmed.update(request.url for request in new)
    readahead.warm_headers([(r.url, r.label, r.access) for r in new])
    if (forwards or backwards) and dates_ahead:
        later = (
            range(max(time_indices) + 1, len(plan.groups))
            if forwards
            else range(min(time_indices) - 1, -1, -1)
        )
        # Whole dates (every file of the date, in rounds, as the read itself would), so
        # the read that takes a date makes no round trip for its later files either; a
        # date with a file for GDAL has its first file read ahead only.
        ahead: list[FileRead | readahead.DateRead] = []
        for t in later:
            if len(ahead) >= files_ahead or dates_ahead == 0:
                break
            if not readahead.allowed(t):  # another worker's dates, say
                break
            if t in seen_now:
                continue
            dates_ahead -= 1
            files = state.requests(plan, asset_index, window, creds, t, make)
            whole = readahead.DateRead.of(files)
            if whole is not None:
                ahead.append(whole)
            else:
                ahead.extend(async_reads([t], first=True))
        readahead.read_ahead(ahead)


def plan_key(plan: CubePlan) -> Hashable:
    """What tells two plans' windows apart: their files, which of them make each date,
    the grid the files land on, and how they are read. Two cubes of the same items over
    other bboxes have the same windows, at other places in the files; a cube opened with
    ``min_clear`` has the same files as the whole one, but its date ``t`` is another
    item. The parts themselves, not a hash of them: a window's requests feed its reads."""
    return (
        plan.urls,
        plan.groups,
        plan.epsg,
        plan.bounds,
        plan.resolution,
        plan.native,
        plan.local_hrefs,
        plan.prefer_local,
        plan.resampling,
        plan.asset_resampling,
        plan.packing,
        plan.credentials_handle,
        tuple(sorted(plan.send_credentials.items())),
    )


def _in_worker() -> bool:
    """Whether this thread runs a task of a ``dask.distributed`` worker."""
    distributed = sys.modules.get("distributed")
    if distributed is None:  # never imported: no worker in this process
        return False
    try:
        distributed.get_worker()
    except ValueError:  # distributed's answer outside a worker's task
        return False
    return True


def _outwards(lo: int, hi: int, size: int) -> Iterator[int]:
    """Time indices from ``lo..hi`` outwards: ``lo..hi``, then ``hi + 1``, ``lo - 1``, ...

    Examples
    --------
    >>> list(_outwards(3, 4, 7))
    [3, 4, 5, 2, 6, 1, 0]
    """
    yield from range(lo, hi + 1)
    for step in range(1, size):
        if hi + step >= size and lo - step < 0:
            return
        if hi + step < size:
            yield hi + step
        if lo - step >= 0:
            yield lo - step
