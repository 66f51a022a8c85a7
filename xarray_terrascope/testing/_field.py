"""The sky of the synthetic world: where ground points are, and where clouds and shadows are.

Clouds are a function of the ground point, expressed in local kilometres ``(X, Y)``
east and north of (``LON0``, ``LAT0``) (an equirectangular scaling of longitude and
latitude), and of the date. They are evaluated on 20 m cells (as Sen2Cor's scene
classification, which Terrascope masks with), aligned on the UTM zone.

Exactness matters more than speed here: ``World.dn`` at a few pixels must equal
the COG written for the whole tile, and two tiles of the same UTM zone must give
the same DN where their pixels coincide. So each quantity is computed by a single
sequence of elementwise operations, whatever the layout of the request (whole
grid, window or scattered points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pyproj import Transformer

__all__ = [
    "CELL",
    "CHUNK",
    "Clouds",
    "TileGeo",
    "blob_contribution",
    "density_grid",
    "make_clouds",
    "make_shadows",
]

#: Origin of the local kilometre coordinates (the middle of the sandbox's extent).
LON0, LAT0 = 5.625, 51.25
#: Kilometres per degree at ``LAT0`` (fixed constants: they define the coordinates).
KM_PER_DEG_LON = 111.320 * math.cos(math.radians(LAT0))
KM_PER_DEG_LAT = 111.25
#: Values per vectorised chunk.
CHUNK = 65536
#: Spacing (m) of the UTM-zone-aligned nodes between which ``(X, Y)`` is interpolated.
NODE_SPACING = 640.0
#: Pixel size (m) of the Sentinel-2 10 m grid.
PIXEL = 10.0
#: Size (m) of the cells on which clouds are evaluated (Sen2Cor's 20 m).
CELL = 20.0


def lonlat_to_km(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return local ``(X, Y)`` kilometres (float64) of longitudes and latitudes."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    return (lon - LON0) * KM_PER_DEG_LON, (lat - LAT0) * KM_PER_DEG_LAT


def km_to_lonlat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lonlat_to_km`."""
    return np.asarray(x) / KM_PER_DEG_LON + LON0, np.asarray(y) / KM_PER_DEG_LAT + LAT0


class TileGeo:
    """Ground coordinates ``(X, Y)`` (km, float32) of the pixel centres of one tile grid.

    The exact UTM -> WGS84 projection is evaluated by pyproj at nodes every
    :data:`NODE_SPACING` metres, aligned on the UTM zone (not on the tile), and
    bilinearly interpolated in between (error well below a millimetre). Because
    the nodes belong to the zone, two tiles of one zone give bit-identical
    coordinates for the same pixel centre.

    Parameters
    ----------
    epsg : int
        UTM EPSG code of the tile.
    left, top : float
        Upper-left corner of the (clipped) grid, in metres.
    width, height : int
        Grid size in pixels.
    pixel : float
        Pixel size in metres (a divisor of :data:`NODE_SPACING`).
    """

    def __init__(
        self, epsg: int, left: float, top: float, width: int, height: int, pixel: float = PIXEL
    ) -> None:
        self.left = float(left)
        self.top = float(top)
        self.width = int(width)
        self.height = int(height)
        self.pixel = float(pixel)
        x_first, x_last = self.left + pixel / 2, self.left + pixel * (width - 0.5)
        y_first, y_last = self.top - pixel / 2, self.top - pixel * (height - 0.5)
        self._i0 = math.floor(x_first / NODE_SPACING)
        self._j0 = math.floor(y_last / NODE_SPACING)
        ni = math.floor(x_last / NODE_SPACING) - self._i0 + 2
        nj = math.floor(y_first / NODE_SPACING) - self._j0 + 2
        xs = (self._i0 + np.arange(ni)) * NODE_SPACING
        ys = (self._j0 + np.arange(nj)) * NODE_SPACING
        gx, gy = np.meshgrid(xs, ys)
        to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
        lon, lat = to_wgs84.transform(gx, gy)
        kx, ky = lonlat_to_km(lon, lat)
        # node tables indexed [j (north), i (east)]
        self._nx = kx.astype(np.float32)
        self._ny = ky.astype(np.float32)

    def _weights_cols(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.left + self.pixel * np.asarray(cols, dtype=np.float64) + self.pixel / 2
        f = x / NODE_SPACING
        i = np.floor(f)
        return (i - self._i0).astype(np.intp), (f - i).astype(np.float32)

    def _weights_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.top - self.pixel * np.asarray(rows, dtype=np.float64) - self.pixel / 2
        f = y / NODE_SPACING
        j = np.floor(f)
        return (j - self._j0).astype(np.intp), (f - j).astype(np.float32)

    def km_points(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(X, Y)`` of pixels given by 1-D integer arrays ``rows`` and ``cols``."""
        ii, fx = self._weights_cols(cols)
        jj, fy = self._weights_rows(rows)
        out = []
        for table in (self._nx, self._ny):
            a0, a1 = table[jj, ii], table[jj, ii + 1]
            b0, b1 = table[jj + 1, ii], table[jj + 1, ii + 1]
            a = a0 + fx * (a1 - a0)
            b = b0 + fx * (b1 - b0)
            out.append(a + fy * (b - a))
        return out[0], out[1]

    def km_grid(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(X, Y)`` of shape ``(len(rows), len(cols))`` for the outer product.

        The same operations as :meth:`km_points`, reordered (interpolation along
        each node row first), so the results are bit-identical.
        """
        ii, fx = self._weights_cols(cols)
        jj, fy = self._weights_rows(rows)
        fy = fy[:, None]
        out = []
        for table in (self._nx, self._ny):
            t0, t1 = table[:, ii], table[:, ii + 1]
            along = t0 + fx * (t1 - t0)  # (node rows, cols)
            a, b = along[jj], along[jj + 1]
            out.append(a + fy * (b - a))
        return out[0], out[1]


@dataclass(frozen=True)
class Clouds:
    """The clouds of one acquisition date: soft elliptical blobs on a base level.

    Cloud density is ``base + sum(weight * exp(-q))`` where ``q`` is the squared
    normalised elliptical distance to a blob's centre, cut to 0 beyond ``q = 4``
    (twice the blob's scale). A pixel is cloudy where the density exceeds 0.5.
    Partly cloudy dates have blobs of weight +1 on base 0; overcast dates have
    base 1 and a few clear holes (weight -1).

    Attributes
    ----------
    kind : str
        ``"clear"``, ``"partly"`` or ``"overcast"``; ``"shadow"`` for the shadows of a
        partly cloudy date, ``"none"`` when there are none.
    base : float
        Density everywhere before the blobs.
    blobs : numpy.ndarray
        ``(n, 8)`` float64: ``cx, cy`` (km), the 2x2 matrix ``a11 a12 a21 a22``
        mapping ``(dx, dy)`` km to normalised ``(u, v)``, ``weight``, and the
        cut-off radius in km.
    """

    kind: str
    base: float
    blobs: np.ndarray

    def density_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the float32 cloud density at points ``x``, ``y`` (km, 1-D)."""
        out = np.full(np.shape(x), self.base, np.float32)
        for s in range(0, out.size, CHUNK):
            part = out[s : s + CHUNK]
            for blob in self.blobs:
                part += blob_contribution(blob, x[s : s + CHUNK], y[s : s + CHUNK])
        return out


def blob_contribution(blob: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return one blob's float32 density at ``x``, ``y`` (km), 0 beyond its cut-off."""
    cx, cy, a11, a12, a21, a22, weight, _ = (np.float32(v) for v in blob)
    dx = x - cx
    dy = y - cy
    u = a11 * dx + a12 * dy
    v = a21 * dx + a22 * dy
    q = u * u + v * v
    return np.where(q < 4.0, weight * np.exp(-q), np.float32(0.0))


def make_clouds(seed: int, ordinal: int, extent_km: tuple[float, float, float, float]) -> Clouds:
    """Draw the clouds of the day ``ordinal`` (``date.toordinal()``).

    The draw depends on ``seed`` and the day only, not on the world's period.

    Parameters
    ----------
    seed : int
        World seed.
    ordinal : int
        Proleptic Gregorian ordinal of the acquisition date.
    extent_km : tuple of float
        ``(xmin, ymin, xmax, ymax)`` km where blob centres may fall (a margin is added).
    """
    rng = np.random.default_rng([seed, 2, ordinal])
    draw = rng.random()
    if draw < 0.30:
        return Clouds("clear", 0.0, np.zeros((0, 8)))
    if draw < 0.88:
        kind, base, weight, count = "partly", 0.0, 1.0, int(rng.integers(2, 40))
    else:
        kind, base, weight, count = "overcast", 1.0, -1.0, int(rng.integers(0, 12))
    xmin, ymin, xmax, ymax = extent_km
    blobs = np.zeros((count, 8))
    for n in range(count):
        cx = rng.uniform(xmin - 4.0, xmax + 4.0)
        cy = rng.uniform(ymin - 4.0, ymax + 4.0)
        radius = math.exp(rng.uniform(math.log(0.5), math.log(4.0)))  # km, density 0.5 there
        scale = radius / math.sqrt(math.log(2.0))
        ratio = rng.uniform(0.5, 1.0)
        angle = rng.uniform(0.0, math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        blobs[n] = (
            cx,
            cy,
            cos / scale,
            sin / scale,
            -sin / (scale * ratio),
            cos / (scale * ratio),
            weight,
            2.0 * scale,
        )
    return Clouds(kind, base, blobs)


def density_grid(
    clouds: Clouds,
    x: np.ndarray,
    y: np.ndarray,
    windows: list[tuple[int, int, int, int] | None],
) -> np.ndarray:
    """Return the float32 cloud density on a grid of ground points.

    Parameters
    ----------
    clouds : Clouds
        The date's clouds.
    x, y : numpy.ndarray
        ``(rows, cols)`` km coordinates of the grid.
    windows : list
        Per blob, ``(r0, r1, c0, c1)`` index ranges of the grid that contain every
        point within the blob's cut-off (``None``: the blob misses the grid).
        Outside its window a blob contributes exactly 0, so the result equals
        :meth:`Clouds.density_points` bit for bit.
    """
    out = np.full(x.shape, clouds.base, np.float32)
    for blob, window in zip(clouds.blobs, windows, strict=True):
        if window is None:
            continue
        r0, r1, c0, c1 = window
        out[r0:r1, c0:c1] += blob_contribution(blob, x[r0:r1, c0:c1], y[r0:r1, c0:c1])
    return out


def make_shadows(clouds: Clouds, seed: int, ordinal: int, doy: int) -> Clouds:
    """Return the shadows that the clouds of a partly cloudy date cast on the ground.

    The clouds' blobs, moved away from the late-morning sun (azimuth 150-165 degrees,
    zenith from the date's solar declination) by ``height * tan(zenith)`` for a cloud
    height of 0.8-2.5 km drawn per date (at most 8 km, in winter). Overcast and
    clear dates have no shadows (``kind="none"``).
    """
    if clouds.kind != "partly":
        return Clouds("none", 0.0, np.zeros((0, 8)))
    rng = np.random.default_rng([seed, 5, ordinal])
    height = rng.uniform(0.8, 2.5)
    azimuth = math.radians(rng.uniform(150.0, 165.0))
    declination = 23.44 * math.sin(2 * math.pi * (284 + doy) / 365.0)
    reach = min(height * math.tan(math.radians(LAT0 - declination)), 8.0)
    blobs = clouds.blobs.copy()
    blobs[:, 0] -= reach * math.sin(azimuth)
    blobs[:, 1] -= reach * math.cos(azimuth)
    return Clouds("shadow", 0.0, blobs)
