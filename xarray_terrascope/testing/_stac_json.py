"""STAC JSON (Items and Collections) of the synthetic world, shaped like Terrascope's."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from pyproj import Transformer

from ._model import SCL_ASSET, Product

if TYPE_CHECKING:
    from ._model import Acquisition, ItemInfo, Tile

__all__ = ["ITEM_EXTENSIONS", "MEDIA_TYPE", "collection_json", "footprint", "item_json"]

STAC_VERSION = "1.0.0"
MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
]
_DIGITS = 7  # about 1 cm
_SCL_BAND = {"data_type": "uint8", "spatial_resolution": 20}


@functools.cache
def footprint(tile: Tile) -> tuple[dict[str, Any], list[float]]:
    """Return the WGS84 GeoJSON Polygon of a tile's corners and the bbox of its outline.

    The polygon joins the four corners (counter-clockwise, as the real items do);
    the bbox is taken from the densified outline, so it contains the whole raster.
    """
    left, bottom, right, top = tile.bounds
    to_wgs84 = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
    xs = [left, left, right, right, left]
    ys = [top, bottom, bottom, top, top]
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [
        [round(float(a), _DIGITS), round(float(b), _DIGITS)] for a, b in zip(lon, lat, strict=True)
    ]
    t = np.linspace(0.0, 1.0, 65)
    ox = np.concatenate(
        [
            np.full(65, left),
            left + (right - left) * t,
            np.full(65, right),
            right - (right - left) * t,
        ]
    )
    oy = np.concatenate(
        [
            top - (top - bottom) * t,
            np.full(65, bottom),
            bottom + (top - bottom) * t,
            np.full(65, top),
        ]
    )
    olon, olat = to_wgs84.transform(ox, oy)
    bbox = [
        round(float(np.min(olon)), _DIGITS),
        round(float(np.min(olat)), _DIGITS),
        round(float(np.max(olon)), _DIGITS),
        round(float(np.max(olat)), _DIGITS),
    ]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def feature_head(
    item_id: str,
    collection: str,
    extensions: Any,
    bbox: Any,
    geometry: dict[str, Any],
    version: str | None = None,
) -> dict[str, Any]:
    """The keys of a STAC Item that come before its properties (a fresh dict)."""
    return {
        "type": "Feature",
        "stac_version": version or STAC_VERSION,
        "stac_extensions": list(extensions),
        "id": item_id,
        "collection": collection,
        "bbox": list(bbox),
        "geometry": {
            "type": "Polygon",
            "coordinates": [[list(p) for p in geometry["coordinates"][0]]],
        },
    }


def _stamp(acq: Acquisition) -> str:
    return acq.datetime.strftime("%Y-%m-%dT%H:%M:%SZ")


def _raster_band(product: Product) -> dict[str, Any]:
    return {"data_type": "uint8", "nodata": 255, "scale": product.scale, "offset": product.offset}


def item_json(item: ItemInfo, acq: Acquisition, download_root: str) -> dict[str, Any]:
    """Return a fresh STAC Item dict for ``item`` with its asset under ``download_root``."""
    tile, product = item.tile, item.product
    if not isinstance(product, Product):
        raise TypeError(f"{item.id} is not an NDVI-like item; see _stac_toc")
    geometry, bbox = footprint(tile)
    t = tile.transform
    stamp = _stamp(acq)
    return {
        **feature_head(item.id, product.collection, ITEM_EXTENSIONS, bbox, geometry),
        "properties": {
            "datetime": stamp,
            "start_datetime": stamp,
            "end_datetime": stamp,
            "eo:cloud_cover": item.cloud_cover,
            "platform": acq.platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "mgrs:utm_zone": tile.utm_zone,
            "mgrs:latitude_band": tile.latitude_band,
            "mgrs:grid_square": tile.grid_square,
            "sat:relative_orbit": acq.relative_orbit,
            "sat:orbit_state": "descending",
        },
        "assets": {
            product.asset: {
                "href": f"{download_root}{item.path}",
                "type": MEDIA_TYPE,
                "roles": ["data"],
                "title": f"{product.asset} 10M",
                "proj:epsg": tile.epsg,
                "proj:shape": [tile.height, tile.width],
                "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
                "raster:bands": [_raster_band(product)],
                "alternate": {
                    "local": {"href": f"/data/MTDA/TERRASCOPE_{item.path}"},
                },
            },
            **{
                key: _scl_asset(tile, f"{download_root}{path}", path)
                for key, path in item.files.items()
                if key == SCL_ASSET
            },
        },
        "links": [],
    }


def _scl_asset(tile: Tile, href: str, path: str) -> dict[str, Any]:
    """The 20 m scene classification beside an NDVI, FAPAR or LAI file (no ``nodata``)."""
    t = tile.transform
    return {
        "href": href,
        "type": MEDIA_TYPE,
        "roles": ["data-mask"],
        "title": "SCENECLASSIFICATION 20M",
        "description": "Scene classification (Sen2Cor classes 0-11) at 20 m",
        "proj:epsg": tile.epsg,
        "proj:shape": [-(-tile.height // 2), -(-tile.width // 2)],
        "proj:transform": [20.0, 0.0, t.c, 0.0, -20.0, t.f, 0.0, 0.0, 1.0],
        "raster:bands": [dict(_SCL_BAND)],
        "alternate": {"local": {"href": f"/data/MTDA/TERRASCOPE_{path}"}},
    }


def collection_json(product: Product, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the STAC Collection dict of ``product``, its extent taken from ``items``."""
    boxes = np.array([i["bbox"] for i in items]) if items else np.zeros((0, 4))
    bbox = (
        [
            float(boxes[:, 0].min()),
            float(boxes[:, 1].min()),
            float(boxes[:, 2].max()),
            float(boxes[:, 3].max()),
        ]
        if items
        else [-180, -90, 180, 90]
    )
    times = sorted(i["properties"]["datetime"] for i in items)
    covers = [i["properties"]["eo:cloud_cover"] for i in items]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
        ],
        "id": product.collection,
        "title": product.title,
        "description": product.description,
        "license": "proprietary",
        "keywords": ["sentinel-2", product.asset.lower(), "terrascope", "sandbox"],
        "providers": [
            {
                "name": "xarray-terrascope sandbox (stand-in for VITO Terrascope)",
                "roles": ["producer", "processor", "host"],
            }
        ],
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]},
        },
        "summaries": {
            "platform": sorted({i["properties"]["platform"] for i in items}),
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
            "gsd": [10],
            "proj:epsg": sorted({i["assets"][product.asset]["proj:epsg"] for i in items}),
            "eo:cloud_cover": {
                "minimum": min(covers, default=0.0),
                "maximum": max(covers, default=0.0),
            },
        },
        "item_assets": {
            product.asset: {
                "type": MEDIA_TYPE,
                "roles": ["data"],
                "title": f"{product.asset} 10M",
                "raster:bands": [_raster_band(product)],
            },
            SCL_ASSET: {
                "type": MEDIA_TYPE,
                "roles": ["data-mask"],
                "title": "SCENECLASSIFICATION 20M",
                "raster:bands": [dict(_SCL_BAND)],
            },
        },
        "links": [],
    }
