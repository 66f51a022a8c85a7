"""COG encodings the async engine does not decode bit for bit as GDAL (PackBits, JPEG,
LERC, WebP...) are read through GDAL instead, exactly, from a real server (which
compressions stay on the async path: ``unit/engine/test_cog.py``)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import xarray as xr
from async_tiff import TIFF
from obstore.store import LocalStore

import xarray_terrascope as xts
from xarray_terrascope.engine import origins, read
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox

ONE_DAY = {"start": "2025-06-10", "end": "2025-06-10"}


def _reencode(path, compress: str) -> None:
    """Rewrite a COG in place as a tiled GeoTIFF with another compression (same tiling
    and pixels; the COG driver does not offer PackBits)."""
    tmp = path.with_suffix(".tmp.tif")
    rasterio.shutil.copy(
        path, tmp, driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress=compress
    )
    tmp.replace(path)


def _compression(path) -> object:
    async def first_ifd():
        tiff = await TIFF.open(path.name, store=LocalStore(str(path.parent)))
        return tiff.ifds[0]

    return asyncio.run(first_ifd()).compression


@pytest.fixture
def own_sandbox(tmp_path, monkeypatch):
    """A sandbox whose COG files this test may rewrite (the shared one's stay intact)."""
    with Sandbox(seed=0, cache_dir=tmp_path / "cogs") as sandbox:
        for key, value in sandbox.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
        xts.login(sandbox.username, sandbox.password)
        yield sandbox
        xts.logout()
        read.clear_reader_cache()
        origins.reset_limiters()


def test_packbits_cogs_are_read_through_gdal_exactly(own_sandbox, tmp_path, monkeypatch, caplog):
    def cube():
        return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **ONE_DAY)

    reference = cube().NDVI.load().values  # DEFLATE files, read by the async engine
    items = cube().terrascope.items
    assert len(items) >= 2, "one date of the field spans two tiles"
    for item in items:
        path = own_sandbox.world.cog_path(item.id)
        _reencode(path, "PACKBITS")
        assert int(_compression(path)) == 32773  # PackBits
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache-after"))
    headers.clear_memory()
    read.clear_reader_cache()
    caplog.set_level(logging.WARNING, logger="xarray_terrascope.engine.read")
    got = cube().NDVI.load().values
    np.testing.assert_array_equal(got, reference)
    warned = [r.getMessage() for r in caplog.records if "reading it through GDAL" in r.getMessage()]
    # each file read says so (a date's second tile is read only where the first is empty)
    first = str(cube().item_ids.values[0]).split()[0]
    assert any(first in m for m in warned) and len(warned) <= len(items), warned
    assert all("PackBits" in m for m in warned), warned
