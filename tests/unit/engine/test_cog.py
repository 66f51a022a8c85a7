"""Pure parts of the COG reader (``engine/cog.py``): coalescing tile byte ranges, the
compressions kept on the async path (real COGs written with rasterio, parsed by
async-tiff from the local disk), error messages."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import rasterio
from async_tiff import TIFF
from obstore.store import LocalStore

from xarray_terrascope.engine import cog
from xarray_terrascope.engine import source as cog_source
from xarray_terrascope.engine.requests import Placement
from xarray_terrascope.engine.source import COALESCE_BYTES, COALESCE_FRACTION, coalesce

# --- coalescing -------------------------------------------------------------------------


def test_coalescing_merges_small_gaps_only():
    assert cog_source.coalesce([(0, 100), (100, 200)]) == [(0, 200)]
    assert cog_source.coalesce([(5000, 6000), (0, 100), (1000, 1100)]) == [(0, 1100), (5000, 6000)]
    far = cog_source.COALESCE_BYTES + 10_000
    assert cog_source.coalesce([(0, 1000), (1000 + far, 2000 + far)]) == [
        (0, 1000),
        (1000 + far, 2000 + far),
    ]


def test_the_coalescing_constants_are_the_ones_these_tests_assume():
    assert (COALESCE_BYTES, COALESCE_FRACTION) == (2048, 0.1)


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([], []),
        ([(0, 100)], [(0, 100)]),
        # a gap of COALESCE_BYTES merges, one byte more does not (small ranges: the bytes
        # rule, not the fraction, decides)
        ([(0, 100), (2148, 2248)], [(0, 2248)]),
        ([(0, 100), (2149, 2249)], [(0, 100), (2149, 2249)]),
        # large ranges: a gap up to a tenth of the merged request's useful bytes merges
        # (30000 + 30000 useful: 6000)
        ([(0, 30000), (36000, 66000)], [(0, 66000)]),
        ([(0, 30000), (36001, 66001)], [(0, 30000), (36001, 66001)]),
        # the useful bytes are those of every range merged so far: 20000 + 20000 merged
        # (a 2000-byte gap), then 10000 more after a 4100-byte gap (a tenth of 50000)
        ([(0, 20000), (22000, 42000), (46100, 56100)], [(0, 56100)]),
        # ...but the gaps merged are not useful bytes: 10000 + 10000 (a 2000-byte gap)
        # and 10000 more make 3000, under the 3100-byte gap
        ([(0, 10000), (12000, 22000), (25100, 35100)], [(0, 22000), (25100, 35100)]),
        # unsorted input, sorted output
        ([(5000, 6000), (0, 100), (1000, 1100)], [(0, 1100), (5000, 6000)]),
        ([(9000, 9100), (100, 200), (0, 50)], [(0, 200), (9000, 9100)]),
        # overlapping, contained and repeated ranges: the union
        ([(0, 1000), (900, 2000)], [(0, 2000)]),
        ([(0, 1000), (500, 800)], [(0, 1000)]),
        ([(0, 1000), (500, 800), (1200, 1300)], [(0, 1300)]),
        ([(10, 20), (10, 20)], [(10, 20)]),
    ],
)
def test_coalesce(ranges, merged):
    assert coalesce(ranges) == merged


def test_coalesced_ranges_cover_every_range_and_do_not_touch():
    """Random ranges: every input range lies inside one output range, and the output is
    sorted with gaps larger than the bytes rule allows."""
    rng = np.random.default_rng(7)
    starts = rng.integers(0, 2_000_000, 300)
    ranges = [(int(s), int(s + rng.integers(1, 40_000))) for s in starts]
    out = coalesce(ranges)
    assert out == sorted(out)
    for (_, end), (start, _) in itertools.pairwise(out):
        assert start - end > COALESCE_BYTES
    for start, end in ranges:
        assert any(s <= start and end <= e for s, e in out), (start, end)


# --- the compressions the async path keeps ------------------------------------------------


@pytest.mark.parametrize(
    ("compress", "exact"),
    [("DEFLATE", True), ("LZW", True), ("ZSTD", True), ("JPEG", False), ("LERC", False)],
)
def test_only_exactly_decoded_compressions_stay_on_the_async_path(tmp_path, compress, exact):
    path = tmp_path / f"{compress}.tif"
    data = np.arange(512 * 512, dtype="uint32").reshape(512, 512).astype("uint8")
    profile = {"driver": "COG", "width": 512, "height": 512, "count": 1, "dtype": "uint8"}
    transform = rasterio.transform.from_origin(600000, 5700000, 10, 10)
    with rasterio.open(
        path, "w", crs="EPSG:32631", transform=transform, compress=compress, **profile
    ) as out:
        out.write(data, 1)

    async def first_ifd():
        tiff = await TIFF.open(path.name, store=LocalStore(str(tmp_path)))
        return tiff.ifds[0]

    ifd = asyncio.run(first_ifd())
    grid = Placement(32631, 600000.0, 5700000.0, 10.0, 0, 0)
    if exact:
        cog.check_grid(ifd, grid, (512, 512), np.dtype("uint8"), "x")
    else:
        with pytest.raises(cog.GridMismatch, match="compression"):
            cog.check_grid(ifd, grid, (512, 512), np.dtype("uint8"), "x")


# --- error messages ---------------------------------------------------------------------


def test_an_error_without_words_is_named_by_its_type():
    """A decoder exception whose text is empty must not give ``... failed: ``."""
    url = "http://127.0.0.1:9/x.tif"
    source = cog_source.Source(url, "item", None, None)
    message = str(cog._surface(source, TimeoutError(), "item", url))
    assert "TimeoutError" in message and not message.rstrip().endswith("failed:"), message
