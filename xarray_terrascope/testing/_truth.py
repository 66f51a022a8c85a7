"""Ground truth of :class:`~xarray_terrascope.testing.World` at points: reflectance, the
cloud-free NDVI, what the sky does, and the scene classification.

Every accessor takes an item id and point coordinates ``xs``, ``ys`` (broadcast together,
in ``crs``) and answers for the pixel of the item's grid holding each point, the shape of
the broadcast points. A 10 m cube grid in EPSG:32631 given by its pixel centres ``x`` and
``y`` is ``xs=x[None, :], ys=y[:, None], crs="EPSG:32631"``.

The truth comes from the world's model (land units, their curves, the clouds), the same
that renders the files, never from the package. For an NDVI, FAPAR or LAI item the sky and
the land are those of its acquisition and tile; only the TOC items have swath edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _sky as sky_module
from ._model import SCL_ASSET, Acquisition, ItemInfo, TocProduct
from ._scene import grid
from ._scl import Sky
from ._toc import ASSETS

if TYPE_CHECKING:
    from ._model import Tile
    from ._scene import Scene
    from ._sky import TileSky

__all__ = ["TruthMixin"]


class TruthMixin:
    """Ground-truth accessors (mixed into ``World``)."""

    acquisitions: list[Acquisition]
    _sky: dict[str, TileSky]

    def _get(self, item_id: str) -> ItemInfo:
        raise NotImplementedError

    def _scene(self, item: ItemInfo) -> Scene:
        raise NotImplementedError

    if TYPE_CHECKING:  # FilesMixin's, not a stub here (which would hide it)

        def _raster(self, item: ItemInfo, key: str, clouds: bool = True) -> np.ndarray: ...

    def _locate(
        self, tile: Tile, xs: Any, ys: Any, crs: str, res: int = 10
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys = np.broadcast_arrays(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
        x, y = sky_module._transformer(crs, tile.crs).transform(xs.ravel(), ys.ravel())
        _, width, height = grid(tile, res)
        col = np.floor((np.asarray(x) - tile.transform.c) / res).reshape(xs.shape)
        row = np.floor((tile.transform.f - np.asarray(y)) / res).reshape(xs.shape)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        return row, col, inside

    def _at(
        self, item: ItemInfo, values: np.ndarray, res: int, xs: Any, ys: Any, crs: str, fill: Any
    ) -> np.ndarray:
        row, col, inside = self._locate(item.tile, xs, ys, crs, res)
        out = np.full(row.shape, fill, values.dtype if not np.isnan(fill) else np.float64)
        out[inside] = values[row[inside].astype(np.intp), col[inside].astype(np.intp)]
        return out

    def reflectance(
        self,
        item_id: str,
        band: str,
        xs: Any,
        ys: Any,
        crs: str = "EPSG:4326",
        *,
        clouds: bool = True,
    ) -> np.ndarray:
        """Return a TOC band's physical value at points: what a correct decoder reads.

        ``DN * raster:scale`` of the band's own pixel (10, 20 or 60 m) holding each point,
        float64, NaN where the file holds no data (32767, outside the swath) and outside
        the grid. Within 0.00005 of the world's unquantised reflectance there.

        Parameters
        ----------
        item_id : str
            A ``terrascope-s2-toc-v2`` item id.
        band : str
            ``"B01"``, ``"B02"``... ``"B11"`` or ``"AOT"``.
        xs, ys : array_like
            Point coordinates in ``crs``, broadcast together.
        crs : str
            CRS of the points.
        clouds : bool
            False: the same date without clouds, shadows or haze (the swath stays).

        Raises
        ------
        KeyError
            For an unknown item or band, or an item that is not a TOC item.
        """
        item = self._get(item_id)
        asset = ASSETS.get(band)
        if not isinstance(item.product, TocProduct) or asset is None or asset.nodata is None:
            raise KeyError(f"{item_id} has no reflectance band {band!r}")
        raster = self._raster(item, band, clouds)
        values = np.where(raster == asset.nodata, np.nan, raster * asset.scale)
        return self._at(item, values, asset.res, xs, ys, crs, np.nan)

    def ground_ndvi(self, item_id: str, xs: Any, ys: Any, crs: str = "EPSG:4326") -> np.ndarray:
        """Return the cloud-free NDVI of the 10 m pixel holding each point (float64).

        The land unit's value for the item's day plus the pixel's texture: what the NDVI
        product quantises (``0.004 * DN - 0.08``, clipped to -0.08..0.92) and what
        ``(B08 - B04) / (B08 + B04)`` of the TOC product equals on clear pixels (before
        its int16 quantisation). NaN outside the grid; clouds and swath play no part.
        """
        item = self._get(item_id)
        return self._at(item, self._scene(item).ndvi, 10, xs, ys, crs, np.nan)

    def cloud_truth(self, item_id: str, xs: Any, ys: Any, crs: str = "EPSG:4326") -> np.ndarray:
        """Return what the sky does to the 10 m pixel holding each point: a uint8
        :class:`~xarray_terrascope.testing.Sky` class.

        ``CLEAR`` (the ground unaltered), ``HAZE`` (altered, not flagged by SCL),
        ``CIRRUS`` (SCL 10), ``SHADOW`` (SCL 3), ``CLOUD_MEDIUM`` (SCL 8), ``CLOUD_HIGH``
        (SCL 9), ``NODATA`` (outside the grid, or outside the swath for a TOC item). By
        severity: ``truth >= Sky.SHADOW`` is exactly where the NDVI products hold 255.

        Examples
        --------
        >>> world = World(seed=0, start="2025-06-01", end="2025-06-10")  # doctest: +SKIP
        >>> toc = world.item_ids("terrascope-s2-toc-v2")[0]  # doctest: +SKIP
        >>> x = 640000.0 + 10.0 * np.arange(500) + 5.0  # doctest: +SKIP
        >>> y = 5687000.0 - 10.0 * np.arange(300) - 5.0  # doctest: +SKIP
        >>> sky = world.cloud_truth(toc, x[None, :], y[:, None], "EPSG:32631")  # doctest: +SKIP
        >>> cloudy = sky >= Sky.CLOUD_MEDIUM  # doctest: +SKIP
        """
        item = self._get(item_id)
        scene = self._scene(item)
        sky = scene.sky_at(10, swath=isinstance(item.product, TocProduct))
        return self._at(item, sky, 10, xs, ys, crs, np.uint8(Sky.NODATA))

    def scl_truth(self, item_id: str, xs: Any, ys: Any, crs: str = "EPSG:4326") -> np.ndarray:
        """Return the scene classification (Sen2Cor SCL, uint8) of the 20 m pixel holding
        each point: the TOC item's ``SCL`` or the NDVI, FAPAR or LAI item's
        ``SCENECLASSIFICATION_20M``, as the world derives it (see ``_scl``); 0 outside the
        grid."""
        item = self._get(item_id)
        key = "SCL" if isinstance(item.product, TocProduct) else SCL_ASSET
        return self._at(item, self._raster(item, key), 20, xs, ys, crs, np.uint8(0))

    def cloud_masks(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the item's ``(cloud, shadow)`` masks, boolean ``(height, width)`` on its
        10 m grid.

        Both are no data in the NDVI, FAPAR and LAI items; where both are set, the cloud
        hides its shadow. (:meth:`cloud_truth` says more: haze, cirrus, the swath.)
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
