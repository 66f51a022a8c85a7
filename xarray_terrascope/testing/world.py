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
orbit; every tile is acquired on every acquisition. Three collections share the
acquisitions and the clouds: ``terrascope-s2-ndvi-v2`` (asset ``NDVI``),
``terrascope-s2-fapar-v2`` (``FAPAR``) and ``terrascope-s2-lai-v2`` (``LAI``), the
last two computed from the same (hazy) NDVI as the first.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from . import _field, _parcels, _sky
from ._land import COVER, CROPS, LandMixin
from ._model import (
    NODATA,
    ORBITS,
    PRODUCTS,
    TILE_NAMES,
    Acquisition,
    ItemInfo,
    Product,
    Tile,
    clip_tile,
)
from ._stac_json import collection_json, item_json

__all__ = [
    "COVER",
    "CROPS",
    "EXTENT",
    "PRODUCTS",
    "SAMPLE_FIELD",
    "Acquisition",
    "Product",
    "Tile",
    "World",
]

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


class World(LandMixin):
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
    their shadows, estimated on a 200 m grid and rounded to 2 decimals.

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
        for product in PRODUCTS.values():
            items = []
            for a, acq in enumerate(self.acquisitions):
                for name, tile in self.tiles.items():
                    item = self._make_item(product, tile, a, acq, covers[a][name])
                    items.append(item)
                    self._items[item.id] = item
            self._by_collection[product.collection] = items
        self._by_path = {item.path: item.id for item in self._items.values()}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._render_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self.collections: dict[str, dict[str, Any]] = {
            cid: collection_json(
                PRODUCTS[cid],
                [item_json(i, self.acquisitions[i.acq], "") for i in items],
            )
            for cid, items in self._by_collection.items()
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
        self, product: Product, tile: Tile, a: int, acq: Acquisition, cover: float
    ) -> ItemInfo:
        stem = f"S2{acq.platform[-1].upper()}_{acq.sensing}_{tile.name}_{product.asset}"
        item_id = f"{stem}_10M_{product.version}"
        day = acq.datetime
        path = f"Sentinel2/{product.folder}/{day:%Y/%m/%d}/{stem}_{product.version}/{item_id}.tif"
        return ItemInfo(item_id, product, tile, a, path, cover)

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
            ``"terrascope-s2-ndvi-v2"``, ``"terrascope-s2-fapar-v2"`` or
            ``"terrascope-s2-lai-v2"``.
        download_root : str
            Root of the download server, ending with ``/``, e.g.
            ``"http://127.0.0.1:8765/download/"``.
        """
        if collection_id not in self._by_collection:
            raise KeyError(f"unknown collection {collection_id!r}; have {list(self.collections)}")
        if download_root and not download_root.endswith("/"):
            download_root += "/"
        return [
            item_json(i, self.acquisitions[i.acq], download_root)
            for i in self._by_collection[collection_id]
        ]

    def item(self, item_id: str) -> dict[str, Any]:
        """Return an item's metadata: id, collection, asset, tile, epsg, datetime (STAC
        string), platform, relative_orbit, cloud_cover, clouds (``"clear"``,
        ``"partly"`` or ``"overcast"``), path (relative to the download root) and the
        physical ``datetime_obj``.

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
        }

    def item_for_path(self, relative_path: str) -> str | None:
        """Return the id of the item stored at ``relative_path`` (after ``/download/``)."""
        return self._by_path.get(relative_path.lstrip("/"))

    # --- pixels -----------------------------------------------------------------------

    def _indices(self, item: ItemInfo, rows: Any, cols: Any) -> tuple[np.ndarray, ...]:
        r, c = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
        shape = r.shape
        r = r.ravel().astype(np.intp)
        c = c.ravel().astype(np.intp)
        tile = item.tile
        if r.size and (
            r.min() < 0 or r.max() >= tile.height or c.min() < 0 or c.max() >= tile.width
        ):
            raise IndexError(f"pixel index outside {tile.name}'s {tile.height}x{tile.width} grid")
        return r, c, np.array(shape)

    def dn(self, item_id: str, rows: Any, cols: Any) -> np.ndarray:
        """Return the uint8 DN the item's raster holds at pixel indices ``rows``, ``cols``.

        Indices are of the item's (clipped) grid and broadcast together; clouds and
        cloud shadows are 255.

        Raises
        ------
        IndexError
            When an index is outside the grid.
        """
        item = self._get(item_id)
        r, c, shape = self._indices(item, rows, cols)
        acq = self.acquisitions[item.acq]
        zone, r0, c0 = self._zone(item.tile)
        lab = zone.labels[r + r0, c + c0]
        ndvi = self.land.ndvi(acq.doy)[lab] + zone.offset[r + r0, c + c0]
        if acq.cloudy:
            masked, weight = self._sky[item.tile.name].points(acq, r, c)
            ndvi = ndvi + weight * (_sky.HAZE_NDVI - ndvi)
            out = item.product.to_dn(ndvi)
            out[masked] = NODATA
        else:
            out = item.product.to_dn(ndvi)
        return out.reshape(tuple(shape))

    def sample(self, item_id: str, xs: Any, ys: Any, crs: str = "EPSG:4326") -> np.ndarray:
        """Return the DN of the item's pixel containing each point, 255 outside its grid.

        Parameters
        ----------
        item_id : str
            Item id.
        xs, ys : array_like
            Point coordinates in ``crs`` (longitude, latitude for the default).
        crs : str
            CRS of the points.
        """
        tile = self._get(item_id).tile
        row, col, inside = self._locate(tile, xs, ys, crs)
        out = np.full(row.shape, NODATA, np.uint8)
        out[inside] = self.dn(item_id, row[inside], col[inside])
        return out

    def _locate(
        self, tile: Tile, xs: Any, ys: Any, crs: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys = np.broadcast_arrays(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
        x, y = _sky._transformer(crs, tile.crs).transform(xs.ravel(), ys.ravel())
        col = np.floor((np.asarray(x) - tile.transform.c) / 10.0).reshape(xs.shape)
        row = np.floor((tile.transform.f - np.asarray(y)) / 10.0).reshape(xs.shape)
        inside = (col >= 0) & (col < tile.width) & (row >= 0) & (row < tile.height)
        return row, col, inside

    def render(self, item_id: str, *, clouds: bool = True) -> np.ndarray:
        """Return the item's whole raster, ``(height, width)`` uint8.

        With ``clouds=False``, the same date without clouds, shadows or haze.
        """
        item = self._get(item_id)
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

    def cloud_masks(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the item's ``(cloud, shadow)`` masks, boolean ``(height, width)``.

        Both are no data in the item; where both are set, the cloud hides its shadow.
        """
        item = self._get(item_id)
        tile, acq = item.tile, self.acquisitions[item.acq]
        if not acq.cloudy:
            empty = np.zeros((tile.height, tile.width), bool)
            return empty, empty.copy()
        sky = self._sky[tile.name]
        cloud, shadow, _ = sky.cells(acq)
        cells = np.ix_(sky.row_cell, sky.col_cell)
        return cloud[cells], shadow[cells]

    # --- files ------------------------------------------------------------------------

    def _write_cog(self, item: ItemInfo, mem: MemoryFile | None, path: str | None) -> None:
        data = self.render(item.id)
        profile = {
            "driver": "COG",
            "width": item.tile.width,
            "height": item.tile.height,
            "count": 1,
            "dtype": "uint8",
            "crs": item.tile.crs,
            "transform": item.tile.transform,
            "nodata": NODATA,
            "blocksize": 256,
            "compress": "DEFLATE",
            "predictor": 2,
            "level": 1,  # 3-4x faster than the default 6, files ~1% larger
            "overview_resampling": "nearest",
            "bigtiff": "NO",
        }
        with (
            rasterio.Env(GDAL_NUM_THREADS=1),
            mem.open(**profile) if mem is not None else rasterio.open(path, "w", **profile) as out,
        ):
            out.write(data, 1)
            out.update_tags(PRODUCT=item.id, SANDBOX_SEED=str(self.seed))
            out.set_band_description(1, item.product.asset)

    def cog_path(self, item_id: str) -> Path:
        """Return the path of the item's COG in ``cache_dir``, writing it on first use.

        A per-item lock makes concurrent callers wait for one writer.

        Raises
        ------
        RuntimeError
            When the world has no ``cache_dir``.
        """
        if self.cache_dir is None:
            raise RuntimeError("this World has no cache_dir; use cog_bytes() instead")
        item = self._get(item_id)
        path = self.cache_dir / f"{item.id}.tif"
        if path.exists():
            return path
        with self._locks_guard:
            lock = self._locks.setdefault(item.id, threading.Lock())
        with lock:
            if not path.exists():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".tif", dir=self.cache_dir)
                os.close(fd)
                try:
                    with self._render_slots:
                        self._write_cog(item, None, tmp)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                logger.debug("wrote %s (%d bytes)", path, path.stat().st_size)
        return path

    def cog_bytes(self, item_id: str) -> bytes:
        """Return the item's Cloud-Optimized GeoTIFF (tiled 256x256, DEFLATE, overviews).

        Its pixels equal :meth:`dn`. Read from ``cache_dir`` when the world has one
        (written on first use), else rendered in memory.
        """
        if self.cache_dir is not None:
            return self.cog_path(item_id).read_bytes()
        item = self._get(item_id)
        with MemoryFile() as mem:
            with self._render_slots:
                self._write_cog(item, mem, None)
            mem.seek(0)
            return bytes(mem.read())
