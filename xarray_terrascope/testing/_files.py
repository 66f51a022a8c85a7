"""The files of :class:`~xarray_terrascope.testing.World`: Cloud-Optimized GeoTIFFs,
written to its cache on first use.

Every file is tiled 256 x 256 with DEFLATE (level 1, horizontal predictor) and its no-data
value tagged (the scene classification declares none and tags none). The NDVI, FAPAR and
LAI rasters keep their overviews, as before; the other files have none.

``file:size``: the TOC items declare each file's size, and are served before any file is
written, so a TOC file is padded to a size fixed by its grid and data type
(:func:`declared_size`, an upper bound of its compressed size) with a sparse hole after
its last tile: no reader reaches the padding (the TIFF's offsets end before it), a full
download gets zeros there, and the disk keeps only the compressed bytes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from ._model import NODATA, SCL_ASSET, ItemInfo, Product, TocProduct
from ._scene import grid

if TYPE_CHECKING:
    from affine import Affine

__all__ = ["BLOCK", "FilesMixin", "declared_size", "file_layout"]

logger = logging.getLogger(__name__)

BLOCK = 256
#: Rendered rasters kept for dn(), sample() and the truth (and the next file written).
RASTERS_KEPT = 8
_HEADER_BOUND = 16384  # TIFF header, ghost area, IFD, tags, GDAL metadata
_TILE_OVERHEAD = 64  # zlib's stored-block worst case, GDAL's block leader and trailer


def declared_size(width: int, height: int, dtype: str) -> int:
    """Return the size a padded file of this grid and data type has: every 256 x 256
    tile stored uncompressed plus its overhead, plus the header's bound.

    Examples
    --------
    >>> declared_size(256, 256, "uint8") == 16384 + 65536 + 64
    True
    """
    tiles = -(-width // BLOCK) * -(-height // BLOCK)
    return _HEADER_BOUND + tiles * (BLOCK * BLOCK * np.dtype(dtype).itemsize + _TILE_OVERHEAD)


def file_layout(item: ItemInfo, key: str) -> tuple[Affine, int, int, str, int | None]:
    """Return ``(transform, width, height, dtype, nodata)`` of an item's file ``key``."""
    from ._toc import ASSETS

    if isinstance(item.product, Product) and key == item.product.asset:
        t = item.tile
        return t.transform, t.width, t.height, "uint8", NODATA
    if key == SCL_ASSET:
        return (*grid(item.tile, 20), "uint8", None)
    asset = ASSETS[key]
    return (*grid(item.tile, asset.res), asset.dtype, asset.nodata)


class FilesMixin:
    """Writing and caching the world's files (mixed into ``World``)."""

    seed: int
    cache_dir: Path | None
    _locks: dict[str, threading.Lock]
    _locks_guard: threading.Lock
    _render_slots: threading.BoundedSemaphore
    _rasters: OrderedDict[tuple[str, str, bool], np.ndarray]
    _rasters_guard: threading.Lock

    def _get(self, item_id: str) -> ItemInfo:
        raise NotImplementedError

    def _asset_key(self, item: ItemInfo, asset: str | None) -> str:
        raise NotImplementedError

    def _render_file(self, item: ItemInfo, key: str, clouds: bool) -> np.ndarray:
        raise NotImplementedError

    def _raster(self, item: ItemInfo, key: str, clouds: bool = True) -> np.ndarray:
        """The (read-only) raster of an item's file, kept for the next few calls."""
        cache_key = (item.id, key, clouds)
        with self._rasters_guard:
            found = self._rasters.get(cache_key)
            if found is not None:
                self._rasters.move_to_end(cache_key)
                return found
        raster = self._render_file(item, key, clouds)
        raster.setflags(write=False)
        with self._rasters_guard:
            self._rasters[cache_key] = raster
            while len(self._rasters) > RASTERS_KEPT:
                self._rasters.popitem(last=False)
        return raster

    def _write_cog(
        self, item: ItemInfo, key: str, mem: MemoryFile | None, path: str | None
    ) -> None:
        main = isinstance(item.product, Product) and key == item.product.asset
        # the NDVI-like rasters are not kept (the test suite writes hundreds of them)
        data = self._render_file(item, key, True) if main else self._raster(item, key)
        transform, width, height, dtype, nodata = file_layout(item, key)
        profile: dict[str, Any] = {
            "driver": "COG",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": dtype,
            "crs": item.tile.crs,
            "transform": transform,
            "nodata": nodata,
            "blocksize": BLOCK,
            "compress": "DEFLATE",
            "predictor": 2,
            "level": 1,  # 3-4x faster than the default 6, files ~1% larger
            "bigtiff": "NO",
        }
        if main:
            profile["overview_resampling"] = "nearest"
        else:
            profile["overviews"] = "NONE"
        name = Path(item.files[key]).stem
        with (
            rasterio.Env(GDAL_NUM_THREADS=1),
            mem.open(**profile) if mem is not None else rasterio.open(path, "w", **profile) as out,
        ):
            out.write(data, 1)
            out.update_tags(PRODUCT=item.id if main else name, SANDBOX_SEED=str(self.seed))
            out.set_band_description(1, key)

    def _padded_size(self, item: ItemInfo, key: str) -> int | None:
        if not isinstance(item.product, TocProduct):
            return None
        _, width, height, dtype, _ = file_layout(item, key)
        return declared_size(width, height, dtype)

    def _pad(self, item: ItemInfo, key: str, size: int) -> int | None:
        """The size to pad a written file of ``size`` bytes to (None: keep it)."""
        target = self._padded_size(item, key)
        if target is not None and size > target:  # pragma: no cover - a sandbox bug
            raise RuntimeError(f"{item.files[key]} is {size} bytes, over its declared {target}")
        return target

    def cog_path(self, item_id: str, asset: str | None = None) -> Path:
        """Return the path of an item's COG in ``cache_dir``, writing it on first use.

        The file is named as the served one (the last part of its path). A per-file lock
        makes concurrent callers wait for one writer.

        Parameters
        ----------
        item_id : str
            Item id.
        asset : str, optional
            Asset key; by default the NDVI, FAPAR or LAI item's own asset (a TOC item
            has no default).

        Raises
        ------
        RuntimeError
            When the world has no ``cache_dir``.
        KeyError
            For an unknown item, or an asset the item does not have.
        """
        if self.cache_dir is None:
            raise RuntimeError("this World has no cache_dir; use cog_bytes() instead")
        item = self._get(item_id)
        key = self._asset_key(item, asset)
        name = Path(item.files[key]).name
        path = self.cache_dir / name
        if path.exists():
            return path
        with self._locks_guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if not path.exists():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".tif", dir=self.cache_dir)
                os.close(fd)
                try:
                    with self._render_slots:
                        self._write_cog(item, key, None, tmp)
                    target = self._pad(item, key, os.path.getsize(tmp))
                    if target is not None:
                        os.truncate(tmp, target)  # a hole: no disk blocks
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                logger.debug("wrote %s (%d bytes)", path, path.stat().st_size)
        return path

    def cog_bytes(self, item_id: str, asset: str | None = None) -> bytes:
        """Return an item's Cloud-Optimized GeoTIFF (see :meth:`cog_path` for ``asset``).

        Its pixels equal :meth:`dn`. Read from ``cache_dir`` when the world has one
        (written on first use), else rendered in memory.
        """
        if self.cache_dir is not None:
            return self.cog_path(item_id, asset).read_bytes()
        item = self._get(item_id)
        key = self._asset_key(item, asset)
        with MemoryFile() as mem:
            with self._render_slots:
                self._write_cog(item, key, mem, None)
            mem.seek(0)
            data = bytes(mem.read())
        target = self._pad(item, key, len(data))
        return data if target is None else data + bytes(target - len(data))
