"""The land side of :class:`~xarray_terrascope.testing.World`: parcels and their truth."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from . import _parcels, _phenology

if TYPE_CHECKING:
    import geopandas

    from ._model import ItemInfo, Tile
    from ._parcels import ZoneRaster

__all__ = ["COVER", "CROPS", "LandMixin"]

#: Land cover classes by code (:meth:`World.land_cover`): not parcels, then the crops.
COVER = _phenology.COVER
#: The crops of the parcels.
CROPS = tuple(_phenology.CROPS)


def _day_of_year(value: str | date) -> int:
    if isinstance(value, datetime):
        value = value.date()
    elif not isinstance(value, date):
        value = date.fromisoformat(value)
    return value.timetuple().tm_yday


class LandMixin:
    """Parcels, land cover and per-parcel ground truth (mixed into ``World``)."""

    land: _parcels.Landscape
    tiles: dict[str, Tile]
    _parcels: geopandas.GeoDataFrame | None

    def _get(self, item_id: str) -> ItemInfo:
        raise NotImplementedError

    def _indices(self, item: ItemInfo, rows: Any, cols: Any) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    # ZoneRaster, not _parcels.ZoneRaster: in this class `_parcels` is the attribute
    def _zone(self, tile: Tile) -> tuple[ZoneRaster, int, int]:
        raise NotImplementedError

    def land_cover(self, item_id: str, rows: Any, cols: Any) -> np.ndarray:
        """Return the land cover code (index into :data:`COVER`) at pixel indices.

        Codes: 0 road, 1 built-up, 2 woods, 3-7 the crops in :data:`CROPS` order, 8 water.
        """
        return self.land.code[self.parcel_ids(item_id, rows, cols, units=True)]

    def parcel_ids(self, item_id: str, rows: Any, cols: Any, *, units: bool = False) -> np.ndarray:
        """Return the ``parcel_id`` of the parcel holding each pixel, 0 outside parcels.

        A pixel belongs to the polygon that contains its centre. With ``units``, the
        land unit id of every pixel instead (roads 0, then parcels, towns, woods and lakes).
        """
        item = self._get(item_id)
        r, c, shape = self._indices(item, rows, cols)
        zone, r0, c0 = self._zone(item.tile)
        ids = zone.labels[r + r0, c + c0].astype(np.int64)
        if not units:
            ids[ids > self.land.n_parcels] = 0
        return ids.reshape(tuple(shape))

    def parcels(self) -> geopandas.GeoDataFrame:
        """Return the farmland parcels inside the tiles as a GeoDataFrame (EPSG:4326).

        Columns ``parcel_id`` (int), ``crop`` (one of :data:`CROPS`), ``area_ha`` (in
        UTM 31N, within 0.1% of the geodesic area) and ``geometry`` (a quadrilateral).
        Only parcels that lie wholly inside a tile's footprint are listed.

        Requires geopandas (the ``sandbox`` extra).
        """
        if self._parcels is None:
            self._parcels = self._parcel_frame()
        return self._parcels.copy()

    def _parcel_frame(self) -> geopandas.GeoDataFrame:
        import geopandas
        import shapely
        from pyproj import Transformer

        from ._stac_json import footprint

        n = self.land.n_parcels
        quads = self.land.quads[1 : n + 1]
        lon, lat = Transformer.from_crs(_parcels.GEN_EPSG, 4326, always_xy=True).transform(
            quads[..., 0], quads[..., 1]
        )
        # (n, 4, 2) corners give an array of polygons (the stubs: a polygon or an array)
        polygons = cast("npt.NDArray[np.object_]", shapely.polygons(np.stack([lon, lat], axis=-1)))
        covered = shapely.union_all(
            [shapely.geometry.shape(footprint(t)[0]) for t in self.tiles.values()]
        )
        keep = shapely.covered_by(polygons, covered)
        ids = np.arange(1, n + 1)[keep]
        crop = np.array(CROPS)[self.land.code[ids] - _phenology.FIRST_CROP]
        return geopandas.GeoDataFrame(
            {
                "parcel_id": ids.astype(np.int64),
                "crop": crop.astype(object),
                "area_ha": np.round(self.land.area_ha()[ids], 4),
            },
            geometry=polygons[keep],
            crs="EPSG:4326",
        )

    def parcel_ndvi(self, parcel_id: Any, day: str | date) -> Any:
        """Return the ground truth: a parcel's mean cloud-free NDVI on ``day``.

        The mean over the pixels whose centre is in the parcel, before the 8-bit
        quantisation of the files (texture has zero mean over each parcel on each
        zone's grid), on any day, acquired or not.

        Parameters
        ----------
        parcel_id : int or array_like of int
            Parcel id(s), as in :meth:`parcels`.
        day : str or datetime.date
            The day (``datetime`` values use their UTC date).

        Returns
        -------
        float or numpy.ndarray
            float64, the shape of ``parcel_id``.

        Raises
        ------
        KeyError
            For an id that is not a parcel.
        """
        ids = np.asarray(parcel_id)
        n = self.land.n_parcels
        if ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 1 or ids.max() > n)):
            raise KeyError(f"not a parcel id of this world (1..{n}): {parcel_id!r}")
        values = self.land.ndvi(_day_of_year(day))[ids].astype(np.float64)
        return float(values) if values.ndim == 0 else values

    def write_parcels(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`parcels` as GeoJSON (``.geojson``/``.json``) or GeoParquet
        (``.parquet``, needs pyarrow); return the path.

        Raises
        ------
        ValueError
            For another suffix.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".geojson", ".json", ".parquet"):
            raise ValueError(f"path must end with .geojson, .json or .parquet, got {path.name!r}")
        frame = self.parcels()
        if suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            path.write_text(frame.to_json(drop_id=True), encoding="utf-8")
        return path
