"""The console script's progress display: dask's bar on a terminal, plain lines otherwise.

dask's :class:`~dask.diagnostics.ProgressBar` redraws one line with carriage returns,
which runs together in a log file or a CI log; when the stream is not a terminal, a
line is written at every quarter instead (``writing: 50% of 120 tasks, 2.1 s``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from dask.callbacks import Callback

__all__ = ["LineProgress", "progress"]


class LineProgress(Callback):
    """Plain progress lines of the local dask scheduler's computations: one line when a
    computation starts, one at each quarter of its tasks, one when it ends.

    Parameters
    ----------
    label
        The first word of each line (what is being computed).
    out
        The stream written to.
    """

    def __init__(self, label: str, out: TextIO) -> None:
        super().__init__()
        self._label = label
        self._out = out
        self._t0 = 0.0
        self._quarter = 0

    def _line(self, text: str) -> None:
        print(f"{self._label}: {text}, {time.perf_counter() - self._t0:.1f} s", file=self._out)
        self._out.flush()

    def _start_state(self, dsk: Any, state: dict) -> None:
        self._t0 = time.perf_counter()
        self._quarter = 0
        self._line(f"0% of {self._ntasks(state)} tasks")

    @staticmethod
    def _ntasks(state: dict) -> int:
        return sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
        total = self._ntasks(state)
        quarter = 4 * len(state["finished"]) // max(total, 1)
        if 0 < quarter < 4 and quarter > self._quarter:
            self._quarter = quarter
            self._line(f"{25 * quarter}% of {total} tasks")

    def _finish(self, dsk: Any, state: dict, errored: bool) -> None:
        if errored:
            self._line("stopped by an error")
        else:
            self._line(f"100% of {self._ntasks(state)} tasks")


@contextmanager
def progress(label: str, out: TextIO | None = None) -> Iterator[None]:
    """Show the progress of the dask computations run inside the block.

    Parameters
    ----------
    label
        What is computed (``writing``, ``statistics``): the plain lines' first word.
    out
        The stream, ``sys.stderr`` by default: dask's bar if it is a terminal, plain
        lines (:class:`LineProgress`) if not.
    """
    from dask.diagnostics import ProgressBar

    stream = sys.stderr if out is None else out
    isatty = getattr(stream, "isatty", None)
    display = ProgressBar(out=stream) if isatty is not None and isatty() else None
    with display if display is not None else LineProgress(label, stream):
        yield
