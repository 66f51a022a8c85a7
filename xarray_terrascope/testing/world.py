"""The synthetic world behind the sandbox: tiles, acquisitions, items and their pixels.

Deterministic from ``seed``. Three Sentinel-2 tiles on the real MGRS grid (10 m
pixels on the real tile origins), clipped to a strip of farmland at latitude
51.2-51.3 N, from the Belgian Kempen (Mol, Lommel) across Dutch Limburg (Weert,
Roermond) into Germany (Niederkruechten), so files stay small:

========  ==========  ======================  =====================================
tile      EPSG        real upper-left corner  clipped to
========  ==========  ======================  =====================================
31UFS     32631       (600000, 5700000)       lon 4.95-6.10 (tile ends ~6.00)
31UGS     32631       (699960, 5700000)       lon 5.80-6.15 (tile starts ~5.86)
32ULB     32632       (199980, 5700000)       lon 6.05-6.30 (tile ends ~6.27)
========  ==========  ======================  =====================================

all for lat 51.20-51.30. Each clip is the UTM envelope of the lon/lat window,
intersected with the real tile and snapped outwards to the 10 m grid.

The land (``_parcels``) is ~20,000 irregular quadrilateral parcels of 1-20 ha with a
crop each (winter wheat, maize, sugar beet, potato, grassland; curves in
``_phenology``), between roads, towns and woods. Each acquisition's NDVI is the
land unit's value for the day plus a fixed texture; clouds and their shadows are
masked (255) and cloud edges are hazy (``_sky``).

Two relative orbits (R051 at 10:36:21 UTC every 5 days from ``start``, R008 at
10:46:51 UTC every 5 days from ``start`` + 2 days), satellites alternating per
orbit; every tile is acquired on every acquisition. Four collections share the
acquisitions and the clouds: ``terrascope-s2-ndvi-v2`` (asset ``NDVI``),
``terrascope-s2-fapar-v2`` (``FAPAR``) and ``terrascope-s2-lai-v2`` (``LAI``), the
last two computed from the same (hazy) NDVI as the first, each with its 20 m scene
classification (``SCENECLASSIFICATION_20M``); and ``terrascope-s2-toc-v2``, the
top-of-canopy reflectance (``_toc``: bands at 10, 20 and 60 m, ``SCL``, ``CLOUDMASK``,
``AOT``) in Terrascope's 2026 item shape (STAC 1.1), with swath edges (``_scene``).
Ground truth at points: ``_truth``; the scene classification: ``_scl``; the parcels'
seasons (noise-free daily curves, phenology dates, mowing and harvest): ``_seasons``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from . import _field, _parcels, _sky, _toc
from ._files import FilesMixin
from ._land import COVER, CROPS, LandMixin
from ._model import (
    NODATA,
    ORBITS,
    PRODUCTS,
    SCL_ASSET,
    TILE_NAMES,
    Acquisition,
    ItemInfo,
    Product,
    Tile,
    TocProduct,
    clip_tile,
)
from ._scene import Scene, SceneCache, make_scene
from ._scl import Sky
from ._seasons import SeasonTruthMixin
from ._stac_json import collection_json, item_json
from ._stac_toc import toc_collection_json, toc_item_json
from ._truth import TruthMixin

__all__ = [
    "COVER",
    "CROPS",
    "EXTENT",
    "PRODUCTS",
    "SAMPLE_FIELD",
    "TOC",
    "Acquisition",
    "Product",
    "Sky",
    "Tile",
    "World",
]

#: The top-of-canopy reflectance product (``terrascope-s2-toc-v2``).
TOC = _toc.TOC

logger = logging.getLogger(__name__)

#: A field (west, south, east, north) inside the overlap of 31UFS and 31UGS.
SAMPLE_FIELD = (5.90, 51.24, 5.96, 51.27)
#: The lon/lat window the sandbox's tiles are clipped to (west, south, east, north).
#: Note: real 32ULB ends near lon 6.27, so its last ~2 km hold no tile at all.
EXTENT = (4.95, 51.20, 6.30, 51.30)


def _as_date(value: str | date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


class World(LandMixin, SeasonTruthMixin, TruthMixin, FilesMixin):
    """The deterministic synthetic Sentinel-2 world served by the sandbox.

    Parameters
    ----------
    seed : int
        Seeds the land (parcels, crops, texture) and the clouds.
    start, end : str or datetime.date
        First and last day (inclusive) of acquisitions.
    cache_dir : str or os.PathLike, optional
        Directory where COGs are written on first use and read afterwards.
        Without it, :meth:`cog_bytes` renders in memory every time.

    Attributes
    ----------
    tiles : dict of str to Tile
        The clipped tile grids, by MGRS name.
    collections : dict of str to dict
        STAC Collection JSON by id (links are added by the STAC API).
    acquisitions : list of Acquisition
        The datatakes, by time; each has its ``clouds`` and ``shadows``.

    Notes
    -----
    ``eo:cloud_cover`` is the percentage of the item's pixels masked by clouds or
    their shadows, estimated on a 200 m grid and rounded to 2 decimals; a TOC item has
    the value of the NDVI item of its acquisition and tile (thin cirrus and the swath
    edge left out).

    The land is rasterised once per UTM zone, on first use of a pixel (about 1 s for
    zone 31), then every item of the zone reuses it.

    Examples
    --------
    >>> world = World(seed=0, start="2025-06-01", end="2025-06-30")
    >>> parcels = world.parcels()  # doctest: +SKIP
    >>> world.parcel_ndvi(parcels.parcel_id.iloc[0], "2025-06-15")  # doctest: +SKIP
    """

    def __init__(
        self,
        seed: int = 0,
        start: str | date = "2025-01-01",
        end: str | date = "2025-12-31",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.seed = int(seed)
        self.start, self.end = _as_date(start), _as_date(end)
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.tiles: dict[str, Tile] = {name: clip_tile(name) for name in TILE_NAMES}
        self.land = _parcels.make_landscape(self.seed, EXTENT)
        self._sky = {name: _sky.TileSky(tile) for name, tile in self.tiles.items()}
        self._zone_specs = self._zone_grids()
        self._zones: dict[int, _parcels.ZoneRaster] = {}
        self._zones_guard = threading.Lock()
        self._parcels = None
        self.acquisitions: list[Acquisition] = self._make_acquisitions()
        sampler = _sky.CoverSampler(self.tiles, EXTENT)
        covers = [sampler.covers(acq) for acq in self.acquisitions]
        self._items: dict[str, ItemInfo] = {}
        self._by_collection: dict[str, list[ItemInfo]] = {}
        products: list[Product | TocProduct] = [*PRODUCTS.values(), TOC]
        for product in products:
            items = []
            for a, acq in enumerate(self.acquisitions):
                for name, tile in self.tiles.items():
                    item = self._make_item(product, tile, a, acq, covers[a][name])
                    items.append(item)
                    self._items[item.id] = item
            self._by_collection[product.collection] = items
        self._by_path = {
            path: (item.id, key)
            for item in self._items.values()
            for key, path in item.files.items()
        }
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._render_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self._scenes = SceneCache(self._build_scene)
        self._rasters: OrderedDict[tuple[str, str, bool], np.ndarray] = OrderedDict()
        self._rasters_guard = threading.Lock()  # rendered rasters (FilesMixin._raster)
        self.collections: dict[str, dict[str, Any]] = {
            cid: (
                collection_json(PRODUCTS[cid], self.item_dicts(cid, ""))
                if cid in PRODUCTS
                else toc_collection_json(self.item_dicts(cid, ""))
            )
            for cid in self._by_collection
        }

    def __repr__(self) -> str:
        return (
            f"World(seed={self.seed}, start='{self.start}', end='{self.end}', "
            f"{len(self.acquisitions)} acquisitions, {len(self._items)} items, "
            f"{self.land.n_parcels} parcels)"
        )

    # --- construction ----------------------------------------------------------------

    def _make_acquisitions(self) -> list[Acquisition]:
        west, south, east, north = EXTENT
        x0, y0 = _field.lonlat_to_km(west, south)
        x1, y1 = _field.lonlat_to_km(east, north)
        extent_km = (float(x0), float(y0), float(x1), float(y1))
        acquisitions = []
        for orbit, offset, clock in ORBITS:
            day, k = self.start + timedelta(days=offset), 0
            while day <= self.end:
                letter = "AB"[(k + (orbit == 8)) % 2]
                moment = datetime.combine(day, clock, tzinfo=UTC)
                clouds = _field.make_clouds(self.seed, day.toordinal(), extent_km)
                doy = day.timetuple().tm_yday
                shadows = _field.make_shadows(clouds, self.seed, day.toordinal(), doy)
                platform = f"sentinel-2{letter.lower()}"
                acquisitions.append(Acquisition(moment, orbit, platform, clouds, shadows))
                day, k = day + timedelta(days=5), k + 1
        acquisitions.sort(key=lambda a: a.datetime)
        return acquisitions

    def _zone_grids(self) -> dict[int, tuple[float, float, int, int]]:
        """The 10 m grid of each UTM zone covering its tiles: ``left, top, width, height``."""
        specs: dict[int, tuple[float, float, int, int]] = {}
        for epsg in sorted({t.epsg for t in self.tiles.values()}):
            bounds = np.array([t.bounds for t in self.tiles.values() if t.epsg == epsg])
            left, bottom = bounds[:, 0].min(), bounds[:, 1].min()
            right, top = bounds[:, 2].max(), bounds[:, 3].max()
            specs[epsg] = (left, top, round((right - left) / 10), round((top - bottom) / 10))
        return specs

    def _zone(self, tile: Tile) -> tuple[_parcels.ZoneRaster, int, int]:
        """The tile's zone raster (made on first use) and the tile's row, column in it."""
        zone = self._zones.get(tile.epsg)
        if zone is None:
            with self._zones_guard:
                zone = self._zones.get(tile.epsg)
                if zone is None:
                    zone = _parcels.ZoneRaster(
                        self.land, self.seed, tile.epsg, *self._zone_specs[tile.epsg]
                    )
                    self._zones[tile.epsg] = zone
        row = round((zone.top - tile.transform.f) / 10)
        col = round((tile.transform.c - zone.left) / 10)
        return zone, row, col

    def _make_item(
        self, product: Product | TocProduct, tile: Tile, a: int, acq: Acquisition, cover: float
    ) -> ItemInfo:
        prefix = f"S2{acq.platform[-1].upper()}_{acq.sensing}_{tile.name}"
        day, version = acq.datetime, product.version
        if isinstance(product, TocProduct):
            item_id = f"{prefix}_TOC_{version}"
            folder = f"Sentinel2/{product.folder}/{day:%Y/%m/%d}/{item_id}/"
            files = {k: folder + _toc.toc_filename(prefix, k, version) for k in _toc.ASSETS}
            return ItemInfo(item_id, product, tile, a, files["B04"], cover, files)
        stem = f"{prefix}_{product.asset}"
        item_id = f"{stem}_10M_{version}"
        folder = f"Sentinel2/{product.folder}/{day:%Y/%m/%d}/{stem}_{version}/"
        files = {
            product.asset: f"{folder}{item_id}.tif",
            SCL_ASSET: f"{folder}{prefix}_SCENECLASSIFICATION_20M_{version}.tif",
        }
        return ItemInfo(item_id, product, tile, a, files[product.asset], cover, files)

    # --- metadata ---------------------------------------------------------------------

    def _get(self, item_id: str) -> ItemInfo:
        try:
            return self._items[item_id]
        except KeyError:
            raise KeyError(f"no item {item_id!r} in {self!r}") from None

    def item_ids(self, collection_id: str | None = None) -> list[str]:
        """Return the item ids (of one collection, or all), by datetime then tile."""
        if collection_id is None:
            return list(self._items)
        return [i.id for i in self._by_collection[collection_id]]

    def item_dicts(self, collection_id: str, download_root: str) -> list[dict[str, Any]]:
        """Return fresh STAC Item dicts of a collection, assets under ``download_root``.

        Parameters
        ----------
        collection_id : str
            ``"terrascope-s2-ndvi-v2"``, ``"terrascope-s2-fapar-v2"``,
            ``"terrascope-s2-lai-v2"`` or ``"terrascope-s2-toc-v2"``.
        download_root : str
            Root of the download server, ending with ``/``, e.g.
            ``"http://127.0.0.1:8765/download/"``.
        """
        if collection_id not in self._by_collection:
            raise KeyError(
                f"unknown collection {collection_id!r}; have {list(self._by_collection)}"
            )
        if download_root and not download_root.endswith("/"):
            download_root += "/"
        make = toc_item_json if collection_id == TOC.collection else item_json
        return [
            make(i, self.acquisitions[i.acq], download_root)
            for i in self._by_collection[collection_id]
        ]

    def item(self, item_id: str) -> dict[str, Any]:
        """Return an item's metadata: id, collection, asset (None for TOC), tile, epsg,
        datetime (STAC string), platform, relative_orbit, cloud_cover, clouds
        (``"clear"``, ``"partly"`` or ``"overcast"``), path (of its main file, relative
        to the download root; B04 for TOC), assets (``{key: path}`` of all its files) and
        the physical ``datetime_obj``.

        Raises
        ------
        KeyError
            For an unknown id.
        """
        item = self._get(item_id)
        acq = self.acquisitions[item.acq]
        return {
            "id": item.id,
            "collection": item.product.collection,
            "asset": item.product.asset,
            "tile": item.tile.name,
            "epsg": item.tile.epsg,
            "datetime": acq.datetime.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "datetime_obj": acq.datetime,
            "platform": acq.platform,
            "relative_orbit": acq.relative_orbit,
            "cloud_cover": item.cloud_cover,
            "clouds": acq.clouds.kind,
            "path": item.path,
            "assets": dict(item.files),
        }

    def item_for_path(self, relative_path: str) -> str | None:
        """Return the id of the item one of whose files is at ``relative_path`` (after
        ``/download/``)."""
        found = self._by_path.get(relative_path.lstrip("/"))
        return None if found is None else found[0]

    def file_for_path(self, relative_path: str) -> tuple[str, str] | None:
        """Return ``(item id, asset key)`` of the file at ``relative_path``, or None."""
        return self._by_path.get(relative_path.lstrip("/"))

    def _asset_key(self, item: ItemInfo, asset: str | None) -> str:
        if asset is None:
            if item.product.asset is None:
                raise ValueError(
                    f"{item.id} has several assets; name one of {', '.join(item.files)}"
                )
            return item.product.asset
        if asset not in item.files:
            raise KeyError(f"{item.id} has no asset {asset!r}; its assets: {', '.join(item.files)}")
        return asset

    # --- scenes and rasters -----------------------------------------------------------

    def _build_scene(self, tile_name: str, a: int) -> Scene:
        tile, acq = self.tiles[tile_name], self.acquisitions[a]
        zone, r0, c0 = self._zone(tile)
        window = np.s_[r0 : r0 + tile.height, c0 : c0 + tile.width]
        labels = zone.labels[window]
        ndvi = self.land.ndvi(acq.doy)[labels]
        ndvi += zone.offset[window]
        return make_scene(tile, acq, ndvi, self.land.code[labels], self._sky[tile_name])

    def _scene(self, item: ItemInfo) -> Scene:
        return self._scenes.get(item.tile.name, item.acq)

    def _render_file(self, item: ItemInfo, key: str, clouds: bool) -> np.ndarray:
        if isinstance(item.product, Product) and key == item.product.asset:
            return self.render(item.id, clouds=clouds)
        if key == SCL_ASSET:
            return _toc.render_scl(self._scene(item), swath=False, clouds=clouds)
        acq = self.acquisitions[item.acq]
        return _toc.render_asset(self._scene(item), acq, self.seed, key, clouds=clouds)

    # --- pixels -----------------------------------------------------------------------

    def _indices(
        self, item: ItemInfo, rows: Any, cols: Any, shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, ...]:
        r, c = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
        out_shape = r.shape
        r = r.ravel().astype(np.intp)
        c = c.ravel().astype(np.intp)
        height, width = shape or (item.tile.height, item.tile.width)
        if r.size and (r.min() < 0 or r.max() >= height or c.min() < 0 or c.max() >= width):
            raise IndexError(f"pixel index outside {item.tile.name}'s {height}x{width} grid")
        return r, c, np.array(out_shape)

    def dn(self, item_id: str, rows: Any, cols: Any, *, asset: str | None = None) -> np.ndarray:
        """Return the value an item's file holds at pixel indices ``rows``, ``cols``.

        Indices are of the file's own grid (10, 20 or 60 m; the clipped tile's upper-left
        corner) and broadcast together. By default the NDVI, FAPAR or LAI item's own
        asset (uint8, clouds and cloud shadows 255); ``asset`` names another file
        (``"SCENECLASSIFICATION_20M"``, or a TOC item's ``"B04"``, ``"SCL"``...).

        Raises
        ------
        IndexError
            When an index is outside the grid.
        """
        item = self._get(item_id)
        key = self._asset_key(item, asset)
        if not (isinstance(item.product, Product) and key == item.product.asset):
            raster = self._raster(item, key)
            r, c, shape = self._indices(item, rows, cols, raster.shape)
            return raster[r, c].reshape(tuple(shape))
        product = item.product
        r, c, shape = self._indices(item, rows, cols)
        acq = self.acquisitions[item.acq]
        zone, r0, c0 = self._zone(item.tile)
        lab = zone.labels[r + r0, c + c0]
        ndvi = self.land.ndvi(acq.doy)[lab] + zone.offset[r + r0, c + c0]
        if acq.cloudy:
            masked, weight = self._sky[item.tile.name].points(acq, r, c)
            ndvi = ndvi + weight * (_sky.HAZE_NDVI - ndvi)
            out = product.to_dn(ndvi)
            out[masked] = NODATA
        else:
            out = product.to_dn(ndvi)
        return out.reshape(tuple(shape))

    def sample(
        self, item_id: str, xs: Any, ys: Any, crs: str = "EPSG:4326", *, asset: str | None = None
    ) -> np.ndarray:
        """Return the value of the file's pixel containing each point, its no-data value
        outside its grid (255 for the NDVI, FAPAR and LAI rasters; 0 for a scene
        classification, which declares none).

        Parameters
        ----------
        item_id : str
            Item id.
        xs, ys : array_like
            Point coordinates in ``crs`` (longitude, latitude for the default).
        crs : str
            CRS of the points.
        asset : str, optional
            The file, as in :meth:`dn`.
        """
        item = self._get(item_id)
        key = self._asset_key(item, asset)
        if isinstance(item.product, Product) and key == item.product.asset:
            row, col, inside = self._locate(item.tile, xs, ys, crs)
            out = np.full(row.shape, NODATA, np.uint8)
            out[inside] = self.dn(item_id, row[inside], col[inside])
            return out
        raster = self._raster(item, key)
        res = 20 if key == SCL_ASSET else _toc.ASSETS[key].res
        nodata = None if key == SCL_ASSET else _toc.ASSETS[key].nodata
        row, col, inside = self._locate(item.tile, xs, ys, crs, res)
        out = np.full(row.shape, nodata or 0, raster.dtype)
        out[inside] = raster[row[inside].astype(np.intp), col[inside].astype(np.intp)]
        return out

    def render(self, item_id: str, *, clouds: bool = True, asset: str | None = None) -> np.ndarray:
        """Return the whole raster of an item's file (its own grid and dtype): by default
        the NDVI, FAPAR or LAI item's own asset, ``(height, width)`` uint8; ``asset`` as
        in :meth:`dn`.

        With ``clouds=False``, the same date without clouds, shadows or haze (a TOC
        item's swath edge stays).
        """
        item = self._get(item_id)
        key = self._asset_key(item, asset)
        if not (isinstance(item.product, Product) and key == item.product.asset):
            return self._raster(item, key, clouds).copy()
        tile, acq = item.tile, self.acquisitions[item.acq]
        zone, r0, c0 = self._zone(tile)
        window = np.s_[r0 : r0 + tile.height, c0 : c0 + tile.width]
        ndvi = self.land.ndvi(acq.doy)[zone.labels[window]]
        ndvi += zone.offset[window]
        if not (clouds and acq.cloudy):
            return item.product.to_dn(ndvi)
        sky = self._sky[tile.name]
        cloud, shadow, weight = sky.cells(acq)
        cells = np.ix_(sky.row_cell, sky.col_cell)
        ndvi = ndvi + weight[cells] * (_sky.HAZE_NDVI - ndvi)
        out = item.product.to_dn(ndvi)
        out[(cloud | shadow)[cells]] = NODATA
        return out
