"""docs/guide/chunks.md, run against the sandbox: its advice opens without xarray's
"separate the stored chunks" warning, and its printed output is what the page says.

The README used to advise ``chunks={"time": 1}``, which splits the engine's partitions
(its preferred chunks: up to 32 dates): that warns, as the last test shows.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest
import xarray as xr

from xarray_terrascope.testing import SAMPLE_FIELD

PAGE = Path(__file__).parents[2] / "docs" / "guide" / "chunks.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_chunk_guide_runs_without_warnings(logged_in):
    blocks = _blocks(PAGE.read_text())
    assert len(blocks) == 2
    namespace: dict = {}
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("error")
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
    assert namespace["bbox"] == list(SAMPLE_FIELD)
    ds, series, daily = namespace["ds"], namespace["series"], namespace["daily"]
    n = ds.sizes["time"]
    preferred = ds.NDVI.encoding["preferred_chunks"]
    assert ds.NDVI.chunks[0] == (preferred["time"],) * (n // preferred["time"]) + (
        (n % preferred["time"],) if n % preferred["time"] else ()
    )
    assert series.NDVI.chunks[0] == (n,) and daily.NDVI.chunks[0] == (1,) * n
    printed = out.getvalue().splitlines()
    # the page's comment after the first print() is its output
    comment = re.search(r"print\(ds\.NDVI\.encoding.*?# (.*)$", blocks[0], re.M)
    assert comment is not None and printed[0] == comment.group(1)
    assert printed[1] == f"{(n,)} {(1,) * n}"


def test_splitting_the_dates_of_a_partition_warns(logged_in):
    """Why the page advises against ``chunks={"time": 1}`` (the README's old advice)."""
    with pytest.warns(UserWarning, match="separate the stored chunks"):
        xr.open_dataset(
            list(SAMPLE_FIELD),
            engine="terrascope",
            start="2025-06-01",
            end="2025-06-30",
            chunks={"time": 1},
        )
