"""The console script's progress display, on a real dask computation (local scheduler)."""

from __future__ import annotations

import io

import dask.array as da

from xarray_terrascope.cli.progress import progress


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (what a console's stderr answers)."""

    def isatty(self) -> bool:
        return True


def _compute() -> float:
    return float(da.ones((40, 40), chunks=10).sum().compute(scheduler="sync"))


def test_off_a_terminal_progress_is_plain_lines():
    out = io.StringIO()
    with progress("writing", out):
        assert _compute() == 1600.0
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("writing: 0% of ") and lines[-1].startswith("writing: 100% of ")
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and len(percents) == len(set(percents))


def test_on_a_terminal_progress_is_dasks_bar():
    out = _Terminal()
    with progress("writing", out):
        _compute()
    assert "\r" in out.getvalue() and "100% Completed" in out.getvalue()
    assert "writing:" not in out.getvalue()
