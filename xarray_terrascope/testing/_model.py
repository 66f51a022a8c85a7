"""The catalogue model of the synthetic world: tiles, products and acquisitions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time

import numpy as np
from affine import Affine
from pyproj import Transformer

from . import _field

__all__ = [
    "FULL_TILE",
    "NODATA",
    "ORBITS",
    "PRODUCTS",
    "SCL_ASSET",
    "TILE_NAMES",
    "Acquisition",
    "ItemInfo",
    "Product",
    "Tile",
    "TocProduct",
    "clip_tile",
]

NODATA = 255
#: Asset key of the 20 m scene classification that the NDVI, FAPAR and LAI items carry.
SCL_ASSET = "SCENECLASSIFICATION_20M"
FULL_TILE = 10980  # pixels per side of a real Sentinel-2 tile
_TILE_SPECS = {
    "31UFS": (32631, 600000.0, 5700000.0, (4.95, 6.10)),
    "31UGS": (32631, 699960.0, 5700000.0, (5.80, 6.15)),
    "32ULB": (32632, 199980.0, 5700000.0, (6.05, 6.30)),
}
TILE_NAMES = tuple(_TILE_SPECS)
_LAT_WINDOW = (51.20, 51.30)
ORBITS = ((51, 0, time(10, 36, 21)), (8, 2, time(10, 46, 51)))  # (orbit, day offset, time)


@dataclass(frozen=True)
class Tile:
    """A clipped Sentinel-2 tile grid (10 m pixels on the real tile's origin)."""

    name: str
    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the tile's UTM CRS."""
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        return (left, top + self.transform.e * self.height, right, top)

    @property
    def crs(self) -> str:
        """``"EPSG:326xx"``."""
        return f"EPSG:{self.epsg}"

    @property
    def utm_zone(self) -> int:
        """UTM zone number (``mgrs:utm_zone``)."""
        return int(self.name[:2])

    @property
    def latitude_band(self) -> str:
        """MGRS latitude band (``mgrs:latitude_band``)."""
        return self.name[2]

    @property
    def grid_square(self) -> str:
        """MGRS 100 km grid square (``mgrs:grid_square``)."""
        return self.name[3:]


@dataclass(frozen=True)
class Product:
    """One collection's product: naming, scaling and the DN it stores for an NDVI."""

    collection: str
    asset: str
    folder: str
    version: str
    scale: float
    offset: float
    max_dn: int
    title: str
    description: str

    def to_dn(self, ndvi: np.ndarray) -> np.ndarray:
        """Return the uint8 DN stored for (float32) NDVI values.

        FAPAR = clip(1.25 * NDVI - 0.1, 0, 1); LAI = -ln(1 - min(FAPAR, 0.95)) / 0.5
        (Beer's law with an extinction coefficient of 0.5, so LAI <= 6); each divided by
        its scale and rounded.
        """
        if self.asset == "NDVI":
            return _round_dn((ndvi + np.float32(0.08)) * np.float32(250.0), self.max_dn)
        fapar = np.clip(np.float32(1.25) * ndvi - np.float32(0.1), 0.0, 1.0)
        if self.asset == "FAPAR":
            return _round_dn(fapar * np.float32(200.0), self.max_dn)
        lai = -np.log1p(-np.minimum(fapar, np.float32(0.95))) * np.float32(2.0)
        return _round_dn(lai / np.float32(self.scale), self.max_dn)


def _round_dn(value: np.ndarray, max_dn: int) -> np.ndarray:
    return np.clip(np.rint(value), 0, max_dn).astype(np.uint8)


PRODUCTS: dict[str, Product] = {
    p.collection: p
    for p in (
        Product(
            "terrascope-s2-ndvi-v2",
            "NDVI",
            "NDVI_V2",
            "V210",
            0.004,
            -0.08,
            250,
            "Sentinel-2 NDVI, 10 m, V2 (sandbox)",
            "Normalized Difference Vegetation Index from Sentinel-2 L2A, 10 m, on the "
            "Sentinel-2 tile grid. Synthetic data of the xarray-terrascope sandbox. "
            "NDVI = 0.004 * DN - 0.08 for DN 0..250; 255 is no data (clouds included).",
        ),
        Product(
            "terrascope-s2-fapar-v2",
            "FAPAR",
            "FAPAR_V2",
            "V200",
            0.005,
            0.0,
            200,
            "Sentinel-2 FAPAR, 10 m, V2 (sandbox)",
            "Fraction of Absorbed Photosynthetically Active Radiation from Sentinel-2, "
            "10 m. Synthetic data of the xarray-terrascope sandbox. FAPAR = 0.005 * DN "
            "for DN 0..200; 255 is no data (clouds included).",
        ),
        Product(
            "terrascope-s2-lai-v2",
            "LAI",
            "LAI_V2",
            "V200",
            0.03,
            0.0,
            250,
            "Sentinel-2 LAI, 10 m, V2 (sandbox)",
            "Leaf Area Index from Sentinel-2, 10 m. Synthetic data of the xarray-terrascope "
            "sandbox. LAI = 0.03 * DN for DN 0..250; 255 is no data (clouds included).",
        ),
    )
}


@dataclass(frozen=True)
class TocProduct:
    """A product whose items hold several files (the TOC reflectance, ``_toc.ASSETS``)."""

    collection: str
    folder: str
    version: str
    title: str
    description: str

    @property
    def asset(self) -> None:
        """No single asset (an NDVI-like product names its one asset here)."""
        return None


@dataclass(frozen=True)
class Acquisition:
    """One datatake: every tile is acquired at the same instant."""

    datetime: datetime
    relative_orbit: int
    platform: str
    clouds: _field.Clouds
    shadows: _field.Clouds

    @property
    def sensing(self) -> str:
        """``YYYYMMDDTHHMMSS`` as in product names."""
        return self.datetime.strftime("%Y%m%dT%H%M%S")

    @property
    def doy(self) -> int:
        """Day of year."""
        return self.datetime.timetuple().tm_yday

    @property
    def cloudy(self) -> bool:
        """Whether any pixel may be masked (clouds or shadows)."""
        return bool(self.clouds.base or len(self.clouds.blobs) or len(self.shadows.blobs))


@dataclass(frozen=True)
class ItemInfo:
    """Where an item's metadata comes from (private to the sandbox)."""

    id: str
    product: Product | TocProduct
    tile: Tile
    acq: int
    path: str  # of the main file (the product's asset; B04 for TOC)
    cloud_cover: float
    files: Mapping[str, str] = field(default_factory=dict)  # asset key -> path


def clip_tile(name: str) -> Tile:
    """Return the clipped grid of the tile ``name`` (UTM envelope of its lon/lat window,
    within the real tile, snapped outwards to its 10 m grid)."""
    epsg, x0, y0, (west, east) = _TILE_SPECS[name]
    south, north = _LAT_WINDOW
    t = np.linspace(0.0, 1.0, 101)
    lon = np.concatenate(
        [west + (east - west) * t, np.full(101, east), east - (east - west) * t, np.full(101, west)]
    )
    lat = np.concatenate(
        [
            np.full(101, south),
            south + (north - south) * t,
            np.full(101, north),
            north - (north - south) * t,
        ]
    )
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    size = 10.0 * FULL_TILE
    xmin, xmax = max(x.min(), x0), min(x.max(), x0 + size)
    ymin, ymax = max(y.min(), y0 - size), min(y.max(), y0)
    left = x0 + 10.0 * math.floor((xmin - x0) / 10.0)
    right = x0 + 10.0 * math.ceil((xmax - x0) / 10.0)
    top = y0 - 10.0 * math.floor((y0 - ymax) / 10.0)
    bottom = y0 - 10.0 * math.ceil((y0 - ymin) / 10.0)
    width, height = round((right - left) / 10.0), round((top - bottom) / 10.0)
    return Tile(name, epsg, Affine(10.0, 0.0, left, 0.0, -10.0, top), width, height)
