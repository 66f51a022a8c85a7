"""STAC 1.1 Items and Collection of ``terrascope-s2-toc-v2``, in the shape Terrascope's
catalogue serves in 2026 (``shared/reference/terrascope-toc-item-2026.example.json``):
item-level ``proj:code``, ``proj:bbox``, ``gsd``, ``product:type``, ``processing:version``
and ``auth:schemes``; every asset with its own ``data_type``, ``nodata``, ``raster:scale``,
``raster:offset``, ``bands``, ``proj:shape``, 9-number ``proj:transform``, ``file:size``,
``alternate.local`` (``file:///data/MTDA/...``) and ``auth:refs``.

The geometry is the data footprint: where a swath edge crosses the tile (``_scene``), the
part beyond it is left out, as in the real items.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry.polygon import orient

from ._files import declared_size
from ._scene import grid, swath_line
from ._stac_json import MEDIA_TYPE, feature_head, footprint
from ._toc import ASSETS, BANDS, TOC

if TYPE_CHECKING:
    from ._model import Acquisition, ItemInfo, Tile

__all__ = ["OIDC_CONFIG_PATH", "TOC_EXTENSIONS", "toc_collection_json", "toc_item_json"]

STAC_VERSION = "1.1.0"
TOC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/product/v0.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
    "https://stac-extensions.github.io/authentication/v1.1.0/schema.json",
]
#: Where the download server answers the OpenID Connect discovery document.
OIDC_CONFIG_PATH = "auth/realms/terrascope/.well-known/openid-configuration"
_DIGITS = 7


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


@functools.cache
def toc_footprint(tile: Tile, orbit: int) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """Return the WGS84 footprint (GeoJSON), its bbox and the UTM footprint
    (``proj:geometry``) of a TOC item: the tile less what lies beyond a swath edge."""
    line = swath_line(tile, orbit)
    left, bottom, right, top = tile.bounds
    box = shapely.box(left, bottom, right, top)
    if line is not None:
        point, direction, sign = line
        unit = direction / np.hypot(*direction)
        outward = sign * np.array([-unit[1], unit[0]])  # towards the no-data side
        far = 1e6
        a, b = point - far * unit, point + far * unit
        half = shapely.Polygon([a, b, b - far * outward, a - far * outward])
        box = cast("shapely.Polygon", box.intersection(half))
    box = orient(box, 1.0)
    if line is None:
        geometry, bbox = footprint(tile)
    else:
        to_wgs84 = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
        ring = np.asarray(box.exterior.coords)
        lon, lat = to_wgs84.transform(ring[:, 0], ring[:, 1])
        coords = [
            [round(float(x), _DIGITS), round(float(y), _DIGITS)]
            for x, y in zip(lon, lat, strict=True)
        ]
        geometry = {"type": "Polygon", "coordinates": [coords]}
        dense = np.asarray(shapely.segmentize(box, 500.0).exterior.coords)
        olon, olat = to_wgs84.transform(dense[:, 0], dense[:, 1])
        bbox = [
            round(float(np.min(olon)), _DIGITS),
            round(float(np.min(olat)), _DIGITS),
            round(float(np.max(olon)), _DIGITS),
            round(float(np.max(olat)), _DIGITS),
        ]
    utm = [[round(float(x), 2), round(float(y), 2)] for x, y in box.exterior.coords]
    return geometry, bbox, {"type": "Polygon", "coordinates": [utm]}


def _asset_json(tile: Tile, key: str, path: str, root: str) -> dict[str, Any]:
    asset, band = ASSETS[key], BANDS.get(key)
    transform, width, height = grid(tile, asset.res)
    out: dict[str, Any] = {"href": f"{root}{path}", "type": MEDIA_TYPE, "title": key}
    if asset.description:
        out["description"] = asset.description
    out["roles"] = list(asset.roles)
    out["file:size"] = declared_size(width, height, asset.dtype)
    out["data_type"] = asset.dtype
    out["raster:scale"] = _number(asset.scale)
    out["raster:offset"] = 0
    out["raster:sampling"] = "area"
    if asset.nodata is not None:
        out["nodata"] = asset.nodata
    if asset.unit is not None:
        out["unit"] = asset.unit
    if band is not None:
        out["bands"] = [
            {
                "name": key,
                "eo:common_name": band.common_name,
                "eo:center_wavelength": band.wavelength,
                "eo:full_width_half_max": band.fwhm,
            }
        ]
    elif key != "CLOUDMASK":
        out["bands"] = [{"name": key}]
    out["proj:shape"] = [height, width]
    out["proj:transform"] = [_number(v) for v in (*list(transform)[:6], 0, 0, 1)]
    if asset.res != 10:
        out["gsd"] = asset.res
    out["alternate"] = {"local": {"href": f"file:///data/MTDA/TERRASCOPE_{path}"}}
    out["auth:refs"] = ["oidc"]
    return out


def _origin(download_root: str) -> str:
    """The download server's root (``http://host:port/``) from its ``/download/`` root."""
    return download_root[: -len("download/")] if download_root.endswith("download/") else ""


def toc_item_json(item: ItemInfo, acq: Acquisition, download_root: str) -> dict[str, Any]:
    """Return a fresh STAC 1.1 Item dict for a TOC item, its files under ``download_root``."""
    tile = item.tile
    geometry, bbox, utm = toc_footprint(tile, acq.relative_orbit)
    stamp = acq.datetime.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        **feature_head(item.id, TOC.collection, TOC_EXTENSIONS, bbox, geometry, STAC_VERSION),
        "properties": {
            "datetime": stamp,
            "start_datetime": stamp,
            "end_datetime": stamp,
            "platform": acq.platform,
            "instruments": ["msi"],
            "constellation": "sentinel-2",
            "gsd": 10,
            "eo:cloud_cover": item.cloud_cover,
            "sat:relative_orbit": acq.relative_orbit,
            "sat:orbit_state": "descending",
            "product:type": "TOC",
            "mgrs:utm_zone": tile.utm_zone,
            "mgrs:latitude_band": tile.latitude_band,
            "mgrs:grid_square": tile.grid_square,
            "grid:code": f"MGRS-{tile.name}",
            "processing:version": TOC.version.lstrip("V"),
            "proj:code": tile.crs,
            "proj:bbox": [_number(v) for v in tile.bounds],
            "proj:geometry": {
                "type": "Polygon",
                "coordinates": [[list(p) for p in utm["coordinates"][0]]],
            },
            "auth:schemes": {
                "oidc": {
                    "type": "openIdConnect",
                    "description": "Authenticate with Terrascope OpenID Connect",
                    "openIdConnectUrl": f"{_origin(download_root)}{OIDC_CONFIG_PATH}",
                }
            },
        },
        "assets": {
            key: _asset_json(tile, key, path, download_root) for key, path in item.files.items()
        },
        "links": [],
    }


def toc_collection_json(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the TOC Collection dict, its extent and summaries taken from ``items``."""
    boxes = np.array([i["bbox"] for i in items]) if items else np.array([[-180, -90, 180, 90]])
    times = sorted(i["properties"]["datetime"] for i in items)
    covers = [i["properties"]["eo:cloud_cover"] for i in items]
    item_assets = {}
    for key, asset in items[0]["assets"].items() if items else ():
        keep = (
            "type",
            "title",
            "description",
            "roles",
            "data_type",
            "raster:scale",
            "raster:offset",
            "raster:sampling",
            "nodata",
            "unit",
            "bands",
            "gsd",
        )
        item_assets[key] = {k: asset[k] for k in keep if k in asset}
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [TOC_EXTENSIONS[0], *TOC_EXTENSIONS[7:9]],
        "id": TOC.collection,
        "title": TOC.title,
        "description": TOC.description,
        "license": "proprietary",
        "keywords": ["sentinel-2", "toc", "reflectance", "terrascope", "sandbox"],
        "providers": [
            {
                "name": "xarray-terrascope sandbox (stand-in for VITO Terrascope)",
                "roles": ["producer", "processor", "host"],
            }
        ],
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        float(boxes[:, 0].min()),
                        float(boxes[:, 1].min()),
                        float(boxes[:, 2].max()),
                        float(boxes[:, 3].max()),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]},
        },
        "summaries": {
            "platform": sorted({i["properties"]["platform"] for i in items}),
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
            "proj:code": sorted({i["properties"]["proj:code"] for i in items}),
            "eo:cloud_cover": {
                "minimum": min(covers, default=0.0),
                "maximum": max(covers, default=0.0),
            },
        },
        "item_assets": item_assets,
        "links": [],
    }
