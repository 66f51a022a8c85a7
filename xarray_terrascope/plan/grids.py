"""Grids from STAC metadata: a file's own pixel grid (:class:`NativeGrid`), the cube's
grid as a warp sees it (:class:`OutputGrid`), EPSG codes from ``proj:epsg`` or
``proj:code`` and from user input, and the checks of ``crs=`` and ``resolution=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = [
    "NativeGrid",
    "OutputGrid",
    "asset_epsg",
    "check_resolution",
    "epsg_of",
    "native_grid",
    "utm_epsg",
]


def utm_epsg(lon: float, lat: float) -> int:
    """Return the EPSG code of the WGS84 UTM zone containing ``(lon, lat)``.

    Examples
    --------
    >>> utm_epsg(5.05, 51.25)
    32631
    """
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def epsg_of(crs: Any) -> int:
    if isinstance(crs, bool):
        raise InvalidArgumentError(f"crs must be an EPSG code or CRS, got {crs!r}")
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        parsed = CRS.from_epsg(int(crs)) if isinstance(crs, (int, np.integer)) else None
        parsed = parsed or CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError, OverflowError) as err:
        raise InvalidArgumentError(
            f"crs must be an EPSG code (e.g. 32631 or 'EPSG:32631') or a CRS, got {crs!r}"
        ) from err
    code = parsed.to_epsg()
    if code is None:
        raise InvalidArgumentError(f"crs {crs!r} has no EPSG code; give one that does")
    return code


def check_resolution(resolution: Any) -> float | None:
    if resolution is None:
        return None
    if isinstance(resolution, (bool, np.bool_)) or not isinstance(
        resolution, (int, float, np.integer, np.floating)
    ):
        raise InvalidArgumentError(
            f"resolution must be a positive number of CRS units (e.g. 10 or 20.0), "
            f"got {resolution!r} ({type(resolution).__name__})"
        )
    value = float(resolution)
    if not np.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"resolution must be a positive number, got {resolution!r}")
    return value


def asset_epsg(item: dict[str, Any], asset: dict[str, Any]) -> int | None:
    """``proj:epsg`` of an asset, filled from ``proj:code`` (pystac >= 1.12 writes only that)."""
    for source in (asset, item["properties"]):
        if source.get("proj:epsg") is not None:
            return int(source["proj:epsg"])
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
    return None


@dataclass(frozen=True)
class NativeGrid:
    """A file's own pixel grid, from its item's ``proj:*`` metadata.

    Attributes
    ----------
    epsg : int
    transform : tuple of float
        The affine ``(a, b, c, d, e, f)``.
    shape : tuple of int
        ``(height, width)``.
    """

    epsg: int
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]


@dataclass(frozen=True)
class OutputGrid:
    """The cube's grid as a warp sees it: its CRS and north-up transform (``resolution``,
    upper-left corner ``x0, y0``)."""

    epsg: int
    resolution: float
    x0: float
    y0: float


def native_grid(item: dict[str, Any], key: str) -> NativeGrid | None:
    """An asset's own pixel grid from its ``proj:*`` fields (or the item's), or None."""
    asset = item["assets"].get(key)
    if asset is None:
        return None
    props = item["properties"]
    transform = asset.get("proj:transform") or props.get("proj:transform")
    shape = asset.get("proj:shape") or props.get("proj:shape")
    epsg = asset_epsg(item, asset)
    if epsg is None or not transform or len(transform) < 6 or not shape or len(shape) != 2:
        return None
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    return NativeGrid(int(epsg), (a, b, c, d, e, f), (int(shape[0]), int(shape[1])))
