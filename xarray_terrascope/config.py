"""Endpoints, environment variable names and the collection table.

Everything here is read at call time: changing ``TERRASCOPE_STAC_URL`` (or any other
variable) between two calls takes effect on the second call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "COLLECTIONS",
    "DEFAULT_COLLECTION",
    "CollectionInfo",
    "DecodeInfo",
    "download_hosts",
    "download_url",
    "stac_url",
]

ENV_STAC_URL = "TERRASCOPE_STAC_URL"
ENV_DOWNLOAD_URL = "TERRASCOPE_DOWNLOAD_URL"
ENV_DOWNLOAD_HOSTS = "TERRASCOPE_DOWNLOAD_HOSTS"
ENV_USERNAME = "TERRASCOPE_USERNAME"
ENV_PASSWORD = "TERRASCOPE_PASSWORD"
ENV_NETRC = "NETRC"

DEFAULT_STAC_URL = "https://stac.terrascope.be"
DEFAULT_DOWNLOAD_URL = "https://services.terrascope.be/download/"
DEFAULT_COLLECTION = "terrascope-s2-ndvi-v2"


def stac_url() -> str:
    """Return the STAC API root, from ``TERRASCOPE_STAC_URL`` or the public default."""
    return os.environ.get(ENV_STAC_URL) or DEFAULT_STAC_URL


def download_url() -> str:
    """Return the download service root, from ``TERRASCOPE_DOWNLOAD_URL`` or the default."""
    return os.environ.get(ENV_DOWNLOAD_URL) or DEFAULT_DOWNLOAD_URL


def host_key(url: str) -> str:
    """Return ``host`` or ``host:port`` (lower case) of a URL, as the allow-list spells it."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def download_hosts() -> frozenset[str]:
    """Return the hosts that may receive credentials.

    From ``TERRASCOPE_DOWNLOAD_HOSTS`` (comma-separated ``host`` or ``host:port``),
    else the host of :func:`download_url`.
    """
    raw = os.environ.get(ENV_DOWNLOAD_HOSTS)
    if raw:
        return frozenset(h.strip().lower() for h in raw.split(",") if h.strip())
    return frozenset({host_key(download_url())})


@dataclass(frozen=True)
class DecodeInfo:
    """How to turn stored digital numbers (DN) into physical values.

    ``physical = scale * DN + offset`` for DN != ``nodata``.
    """

    dtype: str
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class CollectionInfo:
    """What the package knows of a collection before asking the catalogue."""

    id: str
    assets: tuple[str, ...]
    decode: dict[str, DecodeInfo]


_UINT8_NODATA_255 = {"dtype": "uint8", "nodata": 255}

#: Collections the package knows. ``decode`` holds fallbacks used only when an
#: item's asset has no ``raster:bands``; values a collection's items carry always win.
#: Only NDVI's scaling is a published fact (0.004 * DN - 0.08); the other biophysical
#: products are decoded from their items' ``raster:bands``.
COLLECTIONS: dict[str, CollectionInfo] = {
    info.id: info
    for info in (
        CollectionInfo(
            "terrascope-s2-ndvi-v2",
            ("NDVI",),
            {"NDVI": DecodeInfo(scale=0.004, offset=-0.08, **_UINT8_NODATA_255)},
        ),
        CollectionInfo("terrascope-s2-fapar-v2", ("FAPAR",), {}),
        CollectionInfo("terrascope-s2-fcover-v2", ("FCOVER",), {}),
        CollectionInfo("terrascope-s2-lai-v2", ("LAI",), {}),
        CollectionInfo("terrascope-s1-grd-sigma0-v1", ("VV", "VH"), {}),
        CollectionInfo("esa-worldcover-map-10m-2021-v2", ("Map",), {}),
    )
}
