"""The GDAL path's error classification (``engine/gdal.py``): what a GDAL message says,
without a server."""

from __future__ import annotations

from rasterio.errors import RasterioIOError

import xarray_terrascope as xts
from xarray_terrascope.engine.gdal import _explain
from xarray_terrascope.exceptions import AuthenticationError


def test_error_classification_does_not_read_dates_as_status_codes():
    """A URL holding "0401" in a GDAL message is not an HTTP 401 (pure function: no server
    can be made to serve a corrupt file, so this one is a unit test)."""
    url = "http://127.0.0.1:1/download/Sentinel2/NDVI_V2/2025/04/01/S2A_20250401T103621.tif"
    creds = xts.Credentials("alice", "pw")
    corrupt = RasterioIOError(f"'/vsicurl/{url}' not recognized as being in a supported format")
    assert type(_explain(corrupt, url, creds, sent=True)) is xts.ReadError
    refused = RasterioIOError("HTTP response code: 401")
    assert type(_explain(refused, url, creds, sent=True)) is AuthenticationError
