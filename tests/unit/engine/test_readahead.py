"""Reading ahead (``engine/readahead.py``) on the engine's real loop: how many windows the
table holds (the ``readahead_mb`` option), results nobody took dropped once stale, and a
read taking a result read ahead instead of reading again.

The requests are of a kind of their own, :class:`CountedRead`, whose reader (registered in
``engine.readers.READERS``, the table the engine dispatches on, for the test only) counts
its calls and can be held until the test lets it finish: what is asserted is which reads
happened, not what a COG holds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import xarray_terrascope as xts
from xarray_terrascope.engine import aio, readahead, readers
from xarray_terrascope.engine.requests import FileRead, Window

#: 512 x 512 bytes: a quarter of a MiB per window.
WINDOW = Window(0, 512, 0, 512)


@dataclass(frozen=True, kw_only=True)
class CountedRead(FileRead):
    """A window of a file that :class:`CountingReader` "reads"."""


def _request(n: int) -> CountedRead:
    return CountedRead(
        url=f"counted://{n}", label=f"item-{n}", window=WINDOW, dtype=np.dtype("uint8"), fill=0
    )


class CountingReader:
    """Returns the file's number in every pixel; counts calls per file; while
    :attr:`held` is set, a read waits until :meth:`release`; :attr:`failing` files raise
    once."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.held = False
        self.failing: set[str] = set()
        self._gate: asyncio.Event | None = None

    async def read(self, request: FileRead) -> np.ndarray:
        self.calls[request.url] += 1
        if self.held:
            if self._gate is None:
                self._gate = asyncio.Event()
            await self._gate.wait()
        if request.url in self.failing:
            self.failing.discard(request.url)
            raise ConnectionResetError(f"{request.url} dropped")
        return np.full(request.window.shape, int(request.url.rsplit("/", 1)[1]), request.dtype)

    def release(self) -> None:
        """Let the held reads finish (from the test's thread)."""

        async def open_gate() -> None:
            self.held = False
            if self._gate is not None:
                self._gate.set()

        aio.run(open_gate())


@pytest.fixture
def reader(monkeypatch) -> CountingReader:
    counting = CountingReader()
    monkeypatch.setitem(readers.READERS, CountedRead, counting)
    return counting


def _table() -> dict[Any, asyncio.Task]:
    """The read-ahead table now (its tasks by request key), read on the loop.

    The loop runs what is submitted to it in order, so this sees every
    :func:`readahead.read_ahead` called before it done.
    """

    async def snapshot() -> dict[Any, asyncio.Task]:
        return {key: task for key, (task, _) in aio.engine().readahead.items()}

    return aio.run(snapshot())


def _read(request: CountedRead) -> np.ndarray:
    return aio.run(readahead.read(request))


@pytest.mark.parametrize(("mb", "limit"), [(2, 8), (3, 12), (0, 4)])
def test_the_table_holds_readahead_mb_of_windows_and_at_least_four(reader, mb, limit):
    """Windows of 256 KiB: 2 MiB hold 8, 3 MiB 12, and a budget too small for four
    still reads four ahead."""
    reader.held = True
    with xts.set_options(readahead_mb=mb):
        readahead.read_ahead([_request(n) for n in range(20)])
        first = set(_table())
        readahead.read_ahead([_request(n) for n in range(20, 24)])  # the table is full
        second = set(_table())
    reader.release()
    assert first == {_request(n).key for n in range(limit)}
    assert second == first  # results waiting are not dropped for newer ones
    assert sorted(reader.calls) == sorted(f"counted://{n}" for n in range(limit))


def test_a_request_in_the_table_or_being_read_is_not_read_ahead_again(reader):
    reader.held = True
    under_way = aio.submit(readahead.read(_request(1)))
    readahead.read_ahead([_request(0)])
    readahead.read_ahead([_request(0), _request(1), _request(2)])
    keys = set(_table())
    reader.release()
    assert under_way.result(10)[0, 0] == 1
    assert keys == {_request(0).key, _request(2).key}
    assert reader.calls == Counter({"counted://0": 1, "counted://1": 1, "counted://2": 1})


def test_a_read_takes_the_result_read_ahead_instead_of_reading_again(reader):
    readahead.read_ahead([_request(3)])
    assert _request(3).key in _table()
    values = _read(_request(3))
    assert values.shape == WINDOW.shape and (values == 3).all()
    assert reader.calls["counted://3"] == 1
    assert _request(3).key not in _table()  # one-shot: taken
    _read(_request(3))
    assert reader.calls["counted://3"] == 2  # a later read reads


def test_a_read_ahead_that_failed_is_read_again_by_the_read(reader):
    reader.failing.add("counted://4")
    readahead.read_ahead([_request(4)])
    assert (_read(_request(4)) == 4).all()
    assert reader.calls["counted://4"] == 2


def test_reads_of_the_same_window_at_once_share_one_read(reader):
    reader.held = True
    first = aio.submit(readahead.read(_request(5)))
    second = aio.submit(readahead.read(_request(5)))
    _table()  # both reads have started (the loop ran them in order before this)
    reader.release()
    assert (first.result(10) == 5).all() and (second.result(10) == 5).all()
    assert reader.calls["counted://5"] == 1


@pytest.mark.parametrize("stale", [True, False])
def test_results_nobody_took_make_room_once_stale(reader, monkeypatch, stale):
    """A result older than ``READAHEAD_STALE`` seconds (on the loop's clock) is dropped
    and its read cancelled at the next read-ahead; a younger one stays."""
    monkeypatch.setattr(readahead, "READAHEAD_STALE", 0.05 if stale else 3600.0)
    reader.held = True
    readahead.read_ahead([_request(0)])
    (old,) = _table().values()

    async def until_stale() -> None:  # the loop's clock past the limit (if it is 0.05)
        loop = asyncio.get_running_loop()
        _, started = aio.engine().readahead[_request(0).key]
        while loop.time() - started <= 0.05:
            await asyncio.sleep(0.05)

    aio.run(until_stale())
    readahead.read_ahead([_request(1)])
    keys = set(_table())
    reader.release()
    if stale:
        assert keys == {_request(1).key}
        assert old.cancelled()
    else:
        assert keys == {_request(0).key, _request(1).key}
        assert not old.cancelled()


def test_read_ahead_stays_within_the_dates_of_the_computations_under_way():
    """A batch unit reads some of a cube's dates; read-ahead must not read the others
    (another worker's): allowed only inside a block's range, or any block's when two
    computations of the process are under way; anything outside every block."""
    assert readahead.allowed(100)
    with readahead.within(0, 5):
        assert readahead.allowed(0) and readahead.allowed(4)
        assert not readahead.allowed(5) and not readahead.allowed(-1)
        with readahead.within(10, 12), readahead.within(10, 12):
            assert readahead.allowed(11) and readahead.allowed(3)
            assert not readahead.allowed(7)
        assert not readahead.allowed(11)  # both blocks of (10, 12) are done
    assert readahead.allowed(7)
    with pytest.raises(RuntimeError), readahead.within(0, 1):
        raise RuntimeError("a failed computation leaves no range behind")
    assert readahead.allowed(7)


def test_a_forked_child_is_not_held_to_its_parents_computations():
    """A child forked while the parent is inside a ``within`` block never leaves that
    block (it is the parent's computation): the child reads ahead freely."""
    import os

    with readahead.within(0, 5):
        assert not readahead.allowed(7)
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 when nothing holds it, without cleanup
            os._exit(0 if readahead.allowed(7) else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_reads_of_one_file_with_other_fill_values_share_nothing():
    """A request's key holds the value of the window's pixels outside the file: reads
    that fill them otherwise never answer each other; equal fills, NaN included, share."""

    def request(fill, dtype="uint8"):
        return FileRead(
            url="https://host/a.tif", label="a", window=Window(0, 4, 0, 4),
            dtype=np.dtype(dtype), fill=fill,
        )  # fmt: skip

    assert request(255).key != request(0).key
    assert request(np.uint8(255)).key == request(255).key
    assert request(np.nan, "float32").key == request(float("nan"), "float32").key
