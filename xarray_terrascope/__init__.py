"""Terrascope (VITO) Sentinel-1/2 products as a first-class xarray data source.

Examples
--------
>>> import xarray as xr
>>> import xarray_terrascope as xts
>>> xts.login()  # doctest: +SKIP
>>> ds = xr.open_dataset([5.0, 51.2, 5.1, 51.3], engine="terrascope",
...                      start="2025-05-01", end="2025-06-01", chunks={})  # doctest: +SKIP
>>> ndvi = ds.terrascope.ndvi()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from xarray_terrascope import accessor as _accessor  # noqa: F401  (registers ds.terrascope)
from xarray_terrascope._version import __version__
from xarray_terrascope.auth import Credentials, gdal_options, login, logout
from xarray_terrascope.auth.cluster import share_credentials
from xarray_terrascope.catalog.search import (
    asset_urls,
    item_dates,
    list_collections,
    search,
    search_ndvi,
    stac_client,
)
from xarray_terrascope.exceptions import (
    AuthenticationError,
    BatchOutputError,
    BatchWorkerError,
    CollectionNotFoundError,
    GeometriesOutsideWarning,
    InvalidArgumentError,
    NoItemsFoundError,
    ProtectedCollectionError,
    ReadError,
    SearchError,
    TerrascopeError,
    TerrascopeWarning,
)
from xarray_terrascope.options import get_options, set_options

__all__ = [
    "AuthenticationError",
    "BatchOutputError",
    "BatchWorkerError",
    "CollectionNotFoundError",
    "Credentials",
    "GeometriesOutsideWarning",
    "InvalidArgumentError",
    "NoItemsFoundError",
    "ProtectedCollectionError",
    "ReadError",
    "SearchError",
    "TerrascopeError",
    "TerrascopeWarning",
    "__version__",
    "asset_urls",
    "gdal_options",
    "get_options",
    "item_dates",
    "list_collections",
    "login",
    "logout",
    "open_dataset",
    "search",
    "search_ndvi",
    "set_options",
    "share_credentials",
    "stac_client",
]


def open_dataset(bbox: Any, /, **kwargs: Any):
    """``xr.open_dataset(bbox, engine="terrascope", **kwargs)``.

    Examples
    --------
    >>> ds = open_dataset([5.90, 51.24, 5.96, 51.27], start="2025-05-01",
    ...                   end="2025-06-30", chunks={})  # doctest: +SKIP
    """
    import xarray as xr

    return xr.open_dataset(bbox, engine="terrascope", **kwargs)
