"""The batch's progress on the terminal: a bar redrawn in place on a tty, plain lines
(at most one every :data:`LINE_SECONDS`, and the last) otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from xarray_terrascope.analysis.batch import BatchProgress

__all__ = ["ProgressBar", "duration"]

#: Seconds between two plain lines when the output is not a terminal.
LINE_SECONDS = 5.0
_WIDTH = 30


def duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ProgressBar:
    """Callable given to :func:`~xarray_terrascope.analysis.batch.run_zonal_batch`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = float("-inf")

    def text(self, p: BatchProgress) -> str:
        share = p.parcels_done / p.parcels_total if p.parcels_total else 1.0
        filled = round(_WIDTH * share)
        return (
            f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {p.parcels_done}/{p.parcels_total} "
            f"parcels ({p.partitions_done}/{p.partitions_total} partitions), "
            f"{p.rate:.1f} parcels/s, {duration(p.eta_s)} left"
        )

    def __call__(self, p: BatchProgress) -> None:
        last = p.partitions_done == p.partitions_total
        if self.tty:
            self.stream.write("\r" + self.text(p) + ("\n" if last else ""))
        else:
            now = time.monotonic()
            if not last and now - self._last < LINE_SECONDS:
                return
            self._last = now
            self.stream.write(self.text(p) + "\n")
        self.stream.flush()
