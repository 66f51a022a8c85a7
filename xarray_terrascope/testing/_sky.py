"""Clouds, shadows and haze of the synthetic world on each tile's 20 m cells.

A pixel belongs to the 20 m cell of its zone that contains its centre (cells are
aligned on multiples of 20 m of the UTM zone, so overlapping tiles of one zone share
them). A pixel is masked (no data) where its cell's cloud or shadow density exceeds
0.5. Around clouds, cells with a density between 0.2 and 0.5 are not masked but hazy:
their NDVI is pulled towards :data:`HAZE_NDVI` by ``min(2 * (density - 0.2), 0.6)``,
the soft edge that cloud masks miss in real data.
"""

from __future__ import annotations

import math

import numpy as np
from pyproj import Transformer

from . import _field
from ._model import Acquisition, Tile

__all__ = ["HAZE_NDVI", "CoverSampler", "TileSky", "haze"]

#: NDVI of a thick cloud, towards which hazy pixels are pulled.
HAZE_NDVI = np.float32(0.02)
_SAMPLE_KM = 0.2  # spacing of the points on which eo:cloud_cover is estimated


def haze(cloud: np.ndarray) -> np.ndarray:
    """Return the float32 haze weight of cells with cloud density ``cloud``."""
    return np.clip((cloud - np.float32(0.2)) * np.float32(2.0), 0.0, 0.6).astype(np.float32)


class TileSky:
    """The 20 m cell grid of one tile and its cloud densities.

    Parameters
    ----------
    tile : Tile
        The clipped tile.

    Attributes
    ----------
    row_cell, col_cell : numpy.ndarray
        Cell row of each pixel row, cell column of each pixel column.
    geo : _field.TileGeo
        Ground coordinates of the cell centres.
    """

    def __init__(self, tile: Tile) -> None:
        left, top = round(tile.transform.c / 10.0), round(tile.transform.f / 10.0)
        cols = np.arange(tile.width)
        rows = np.arange(tile.height)
        self.col_cell = (left + cols) // 2 - left // 2
        first = (top - 1) // 2  # zone cell index (northwards) of row 0
        self.row_cell = first - (top - rows - 1) // 2
        self.width = int(self.col_cell[-1]) + 1
        self.height = int(self.row_cell[-1]) + 1
        self.left, self.top = _field.CELL * (left // 2), _field.CELL * (first + 1)
        self.geo = _field.TileGeo(
            tile.epsg, self.left, self.top, self.width, self.height, pixel=_field.CELL
        )
        self.crs = tile.crs

    def centres(self, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
        """UTM ``(x, y)`` of the cloud and shadow blob centres of an acquisition."""
        blobs = np.concatenate([acq.clouds.blobs, acq.shadows.blobs])
        lon, lat = _field.km_to_lonlat(blobs[:, 0], blobs[:, 1])
        x, y = _transformer("EPSG:4326", self.crs).transform(lon, lat)
        return np.asarray(x), np.asarray(y)

    def _density(self, clouds: _field.Clouds, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        out = np.full((self.height, self.width), clouds.base, np.float32)
        for blob, cx, cy in zip(clouds.blobs, ux, uy, strict=True):
            reach = blob[7] * 1000.0 * 1.01 + 2 * _field.CELL
            c0 = max(0, math.ceil((cx - reach - self.left) / _field.CELL - 0.5))
            c1 = min(self.width, math.floor((cx + reach - self.left) / _field.CELL - 0.5) + 1)
            r0 = max(0, math.ceil((self.top - cy - reach) / _field.CELL - 0.5))
            r1 = min(self.height, math.floor((self.top - cy + reach) / _field.CELL - 0.5) + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            x, y = self.geo.km_grid(np.arange(r0, r1), np.arange(c0, c1))
            out[r0:r1, c0:c1] += _field.blob_contribution(blob, x, y)
        return out

    def densities(self, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
        """Return the float32 ``(cloud, shadow)`` densities on the whole cell grid."""
        ux, uy = self.centres(acq)
        n = len(acq.clouds.blobs)
        return self._density(acq.clouds, ux[:n], uy[:n]), self._density(acq.shadows, ux[n:], uy[n:])

    def cells(self, acq: Acquisition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(cloud, shadow, haze)`` on the whole cell grid for an acquisition:
        the two masks (density > 0.5) and the haze weight."""
        cloud, shadow = self.densities(acq)
        return cloud > 0.5, shadow > 0.5, haze(cloud)

    def points(
        self, acq: Acquisition, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(masked, haze)`` at pixels ``rows``, ``cols`` (1-D)."""
        x, y = self.geo.km_points(self.row_cell[rows], self.col_cell[cols])
        cloud = acq.clouds.density_points(x, y)
        shadow = acq.shadows.density_points(x, y)
        return (cloud > 0.5) | (shadow > 0.5), haze(cloud)


class CoverSampler:
    """Estimates ``eo:cloud_cover`` (the masked percentage) of every tile of a date.

    Cloud and shadow densities are evaluated on a regular 200 m grid of local
    kilometres over ``extent``; a tile's cover is the masked share of the grid points
    inside it.
    """

    def __init__(self, tiles: dict[str, Tile], extent: tuple[float, float, float, float]):
        west, south, east, north = extent
        x0, y0 = _field.lonlat_to_km(west - 0.1, south - 0.1)  # tiles are UTM envelopes
        x1, y1 = _field.lonlat_to_km(east + 0.1, north + 0.1)
        self.xs = np.arange(float(x0), float(x1), _SAMPLE_KM)
        self.ys = np.arange(float(y0), float(y1), _SAMPLE_KM)
        gx, gy = np.meshgrid(self.xs, self.ys)
        lon, lat = _field.km_to_lonlat(gx, gy)
        self.inside: dict[str, np.ndarray] = {}
        for name, tile in tiles.items():
            x, y = _transformer("EPSG:4326", tile.crs).transform(lon, lat)
            left, bottom, right, top = tile.bounds
            self.inside[name] = (x >= left) & (x < right) & (y > bottom) & (y <= top)
        self._x = gx.astype(np.float32)
        self._y = gy.astype(np.float32)

    def _density(self, clouds: _field.Clouds) -> np.ndarray:
        out = np.full(self._x.shape, clouds.base, np.float32)
        for blob in clouds.blobs:
            reach = blob[7] * 1.01 + _SAMPLE_KM
            c0, c1 = np.searchsorted(self.xs, [blob[0] - reach, blob[0] + reach])
            r0, r1 = np.searchsorted(self.ys, [blob[1] - reach, blob[1] + reach])
            if r1 > r0 and c1 > c0:
                win = np.s_[r0:r1, c0:c1]
                out[win] += _field.blob_contribution(blob, self._x[win], self._y[win])
        return out

    def covers(self, acq: Acquisition) -> dict[str, float]:
        """Return the percentage of masked pixels per tile, rounded to 2 decimals."""
        if not acq.cloudy:
            return dict.fromkeys(self.inside, 0.0)
        masked = (self._density(acq.clouds) > 0.5) | (self._density(acq.shadows) > 0.5)
        return {
            name: round(100.0 * float(masked[inside].mean()), 2)
            for name, inside in self.inside.items()
        }


_TRANSFORMERS: dict[tuple[str, str], Transformer] = {}


def _transformer(src: str, dst: str) -> Transformer:
    key = (src, dst)
    if key not in _TRANSFORMERS:
        _TRANSFORMERS[key] = Transformer.from_crs(src, dst, always_xy=True)
    return _TRANSFORMERS[key]
