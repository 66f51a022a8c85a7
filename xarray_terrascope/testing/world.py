"""The synthetic world behind the sandbox: tiles, acquisitions, items and their pixels.

Deterministic from ``seed``. Three Sentinel-2 tiles on the real MGRS grid (10 m
pixels on the real tile origins), clipped to a small window on the Dutch-German
border (Sittard / Heinsberg) so files stay small:

========  ==========  ======================  =====================================
tile      EPSG        real upper-left corner  clipped to
========  ==========  ======================  =====================================
31UFS     32631       (600000, 5700000)       lon 5.80-6.10 (tile ends ~6.00)
31UGS     32631       (699960, 5700000)       lon 5.80-6.15 (tile starts ~5.86)
32ULB     32632       (199980, 5700000)       lon 6.05-6.30 (tile ends ~6.27)
========  ==========  ======================  =====================================

all for lat 51.20-51.30. Each clip is the UTM envelope of the lon/lat window,
intersected with the real tile and snapped outwards to the 10 m grid.

Two relative orbits (R051 at 10:36:21 UTC every 5 days from ``start``, R008 at
10:46:51 UTC every 5 days from ``start`` + 2 days), satellites alternating per
orbit; every tile is acquired on every acquisition. Two collections share the
acquisitions and the clouds: ``terrascope-s2-ndvi-v2`` (asset ``NDVI``) and
``terrascope-s2-fapar-v2`` (asset ``FAPAR``). The physics is in ``_field``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.io import MemoryFile

from . import _field
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

__all__ = ["EXTENT", "PRODUCTS", "SAMPLE_FIELD", "Acquisition", "Product", "Tile", "World"]

logger = logging.getLogger(__name__)

#: A field (west, south, east, north) inside the overlap of 31UFS and 31UGS.
SAMPLE_FIELD = (5.90, 51.24, 5.96, 51.27)
#: The lon/lat window the sandbox's tiles are clipped to (west, south, east, north).
#: Note: real 32ULB ends near lon 6.27, so its last ~2 km hold no tile at all.
EXTENT = (5.80, 51.20, 6.30, 51.30)

_COVER_STEP = 6  # eo:cloud_cover is counted on every 6th pixel in each direction


def _as_date(value: str | date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


@functools.lru_cache(maxsize=32)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


class World:
    """The deterministic synthetic Sentinel-2 world served by the sandbox.

    Parameters
    ----------
    seed : int
        Seeds the NDVI field and the clouds.
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
        The datatakes, by time; each has its ``clouds``.

    Notes
    -----
    ``eo:cloud_cover`` is the percentage of cloudy pixels counted on every 6th
    pixel (rows and columns 3, 9, 15...) of the item's grid, rounded to 2 decimals.
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
        self.field = _field.Field(self.seed)
        self.tiles: dict[str, Tile] = {name: clip_tile(name) for name in TILE_NAMES}
        self._geo = {
            name: _field.TileGeo(t.epsg, t.transform.c, t.transform.f, t.width, t.height)
            for name, t in self.tiles.items()
        }
        self.acquisitions: list[Acquisition] = self._make_acquisitions()
        self._blob_utm = self._blob_centres()
        covers = self._cloud_covers()
        self._items: dict[str, ItemInfo] = {}
        self._by_collection: dict[str, list[ItemInfo]] = {}
        for product in PRODUCTS.values():
            items = []
            for a, acq in enumerate(self.acquisitions):
                for name, tile in self.tiles.items():
                    item = self._make_item(product, tile, a, acq, covers[a, name])
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
            f"{len(self.acquisitions)} acquisitions, {len(self._items)} items)"
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
                moment = datetime.combine(day, clock, tzinfo=timezone.utc)
                clouds = _field.make_clouds(self.seed, day.toordinal(), extent_km)
                platform = f"sentinel-2{letter.lower()}"
                acquisitions.append(Acquisition(moment, orbit, platform, clouds))
                day, k = day + timedelta(days=5), k + 1
        acquisitions.sort(key=lambda a: a.datetime)
        return acquisitions

    def _blob_centres(self) -> dict[tuple[int, str], np.ndarray]:
        counts = [len(a.clouds.blobs) for a in self.acquisitions]
        blobs = [a.clouds.blobs for a in self.acquisitions if len(a.clouds.blobs)]
        allb = np.concatenate(blobs) if blobs else np.zeros((0, 8))
        lon, lat = _field.km_to_lonlat(allb[:, 0], allb[:, 1])
        out: dict[tuple[int, str], np.ndarray] = {}
        for name, tile in self.tiles.items():
            x, y = _transformer("EPSG:4326", tile.crs).transform(lon, lat)
            xy = np.column_stack([x, y])
            pos = 0
            for a, n in enumerate(counts):
                out[a, name] = xy[pos : pos + n]
                pos += n
        return out

    def _windows(
        self, a: int, tile: Tile, rows: np.ndarray, cols: np.ndarray
    ) -> list[tuple[int, int, int, int] | None]:
        """Per blob, index ranges of ``rows`` x ``cols`` holding its cut-off disk."""
        left, top = tile.transform.c, tile.transform.f
        windows: list[tuple[int, int, int, int] | None] = []
        for blob, (ux, uy) in zip(
            self.acquisitions[a].clouds.blobs, self._blob_utm[a, tile.name], strict=True
        ):
            reach = blob[7] * 1000.0 * 1.01 + 20.0  # km disk -> metres, generously
            c_lo = math.ceil((ux - reach - left) / 10.0 - 0.5)
            c_hi = math.floor((ux + reach - left) / 10.0 - 0.5)
            r_lo = math.ceil((top - uy - reach) / 10.0 - 0.5)
            r_hi = math.floor((top - uy + reach) / 10.0 - 0.5)
            c0, c1 = np.searchsorted(cols, c_lo, "left"), np.searchsorted(cols, c_hi, "right")
            r0, r1 = np.searchsorted(rows, r_lo, "left"), np.searchsorted(rows, r_hi, "right")
            windows.append((int(r0), int(r1), int(c0), int(c1)) if r1 > r0 and c1 > c0 else None)
        return windows

    def _cloud_covers(self) -> dict[tuple[int, str], float]:
        covers: dict[tuple[int, str], float] = {}
        for name, tile in self.tiles.items():
            rows = np.arange(_COVER_STEP // 2, tile.height, _COVER_STEP)
            cols = np.arange(_COVER_STEP // 2, tile.width, _COVER_STEP)
            x, y = self._geo[name].km_grid(rows, cols)
            for a, acq in enumerate(self.acquisitions):
                clouds = acq.clouds
                if clouds.base == 0.0 and not len(clouds.blobs):
                    covers[a, name] = 0.0
                    continue
                density = _field.density_grid(clouds, x, y, self._windows(a, tile, rows, cols))
                covers[a, name] = round(100.0 * float(np.mean(density > 0.5)), 2)
        return covers

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
            ``"terrascope-s2-ndvi-v2"`` or ``"terrascope-s2-fapar-v2"``.
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
        string), platform, relative_orbit, cloud_cover, path (relative to the download
        root) and the physical ``datetime_obj``.

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

    def dn(self, item_id: str, rows: Any, cols: Any) -> np.ndarray:
        """Return the uint8 DN the item's raster holds at pixel indices ``rows``, ``cols``.

        Indices are of the item's (clipped) grid and broadcast together; clouds are 255.

        Raises
        ------
        IndexError
            When an index is outside the grid.
        """
        item = self._get(item_id)
        r, c = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
        shape = r.shape
        r = r.ravel().astype(np.intp)
        c = c.ravel().astype(np.intp)
        tile = item.tile
        if r.size and (
            r.min() < 0 or r.max() >= tile.height or c.min() < 0 or c.max() >= tile.width
        ):
            raise IndexError(f"pixel index outside {tile.name}'s {tile.height}x{tile.width} grid")
        acq = self.acquisitions[item.acq]
        x, y = self._geo[tile.name].km_points(r, c)
        out = item.product.to_dn(self.field.ndvi(x, y, acq.doy))
        if acq.clouds.base or len(acq.clouds.blobs):
            out[acq.clouds.density_points(x, y) > 0.5] = NODATA
        return out.reshape(shape)

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
        xs, ys = np.broadcast_arrays(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
        x, y = _transformer(crs, tile.crs).transform(xs.ravel(), ys.ravel())
        col = np.floor((np.asarray(x) - tile.transform.c) / 10.0)
        row = np.floor((tile.transform.f - np.asarray(y)) / 10.0)
        inside = (col >= 0) & (col < tile.width) & (row >= 0) & (row < tile.height)
        out = np.full(col.shape, NODATA, np.uint8)
        out[inside] = self.dn(item_id, row[inside], col[inside])
        return out.reshape(xs.shape)

    def render(self, item_id: str) -> np.ndarray:
        """Return the item's whole raster, ``(height, width)`` uint8."""
        item = self._get(item_id)
        tile, acq = item.tile, self.acquisitions[item.acq]
        geo = self._geo[tile.name]
        cloudy = bool(acq.clouds.base or len(acq.clouds.blobs))
        out = np.empty((tile.height, tile.width), np.uint8)
        cols = np.arange(tile.width)
        step = max(1, _field.CHUNK // tile.width)
        all_rows = np.arange(tile.height)
        windows = self._windows(item.acq, tile, all_rows, cols) if cloudy else []
        for r0 in range(0, tile.height, step):
            r1 = min(tile.height, r0 + step)
            x, y = geo.km_grid(all_rows[r0:r1], cols)
            block = item.product.to_dn(self.field.ndvi(x, y, acq.doy))
            if cloudy:
                local = [
                    None
                    if w is None or w[1] <= r0 or w[0] >= r1
                    else (max(w[0], r0) - r0, min(w[1], r1) - r0, w[2], w[3])
                    for w in windows
                ]
                block[_field.density_grid(acq.clouds, x, y, local) > 0.5] = NODATA
            out[r0:r1] = block
        return out

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
