"""The land of the synthetic world: roads, blocks, parcels, towns and woods, as polygons.

The landscape is drawn once per seed in UTM zone 31N metres (EPSG:32631):

* a road network: a rotated grid of irregular spacing (550-1100 m by 420-900 m),
  bent by long waves (road directions turn by up to ~17 degrees) and with jittered
  nodes, so blocks are irregular quadrilaterals; every 4th / 3rd road is a main road
  (18 m wide), the others 10 m;
* blocks near a town centre are built-up, blocks near a wood centre are woods;
* a quarter of the wood blocks are lakes instead (drawn apart, so the rest of the land
  does not depend on them);
* farmland blocks are cut into strips along their longer side and some strips across,
  with cut points that differ on opposite edges: irregular quadrilateral parcels of
  1-20 ha (smaller leftovers become farmsteads, built-up).

Land units are numbered: 0 is the road network (everything outside the polygons),
``1..n_parcels`` the parcels (their ``parcel_id``), then the other polygons.

:class:`ZoneRaster` rasterises the units once per UTM zone on the 10 m grid shared by
the zone's tiles (so overlapping tiles agree pixel for pixel) and holds the texture
added to each unit's NDVI: smooth noise plus pixel noise, with zero mean over each
unit's pixels, so a parcel's mean cloud-free NDVI is exactly its curve's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

from . import _phenology

__all__ = ["GEN_EPSG", "Landscape", "ZoneRaster", "make_landscape"]

#: CRS in which the landscape is drawn (metres).
GEN_EPSG = 32631
_MIN_HA, _MAX_HA = 1.0, 20.0
#: Texture amplitude (NDVI per unit of noise) by land cover code.
_TEXTURE = np.array([0.008, 0.05, 0.025, 0.016, 0.016, 0.016, 0.016, 0.018, 0.01], np.float32)
_LAKE_SHARE = 0.25  # of the wood blocks
_COARSE = 6  # pixels per node of the smooth texture (60 m)
_GRAIN = 0.1  # pixel noise, relative to the smooth texture


@dataclass(frozen=True)
class Landscape:
    """The land units of the world (unit 0, the roads, has no polygon).

    Attributes
    ----------
    quads : numpy.ndarray
        ``(n_units, 4, 2)`` float64 corners in EPSG:32631, counter-clockwise
        (row 0 is NaN: the roads).
    code : numpy.ndarray
        ``(n_units,)`` land cover code, an index into ``_phenology.COVER``.
    params : dict of numpy.ndarray
        Per-unit phenology parameters.
    n_parcels : int
        Units ``1..n_parcels`` are parcels.
    """

    quads: np.ndarray
    code: np.ndarray
    params: dict[str, np.ndarray]
    n_parcels: int

    @property
    def n_units(self) -> int:
        """Units including the roads (unit 0)."""
        return int(self.code.size)

    def area_ha(self) -> np.ndarray:
        """Area (ha, in EPSG:32631) of every unit; 0 for the roads (unit 0)."""
        return np.concatenate([[0.0], np.abs(_shoelace(self.quads[1:])) / 1e4])

    def ndvi(self, doy: int) -> np.ndarray:
        """Cloud-free NDVI (float32) of every unit on day of year ``doy``."""
        return _phenology.ndvi_table(doy, self.code, self.params)


def _shoelace(q: np.ndarray) -> np.ndarray:
    x, y = q[..., 0], q[..., 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1)


def _cumulative(rng: np.random.Generator, lo: float, hi: float, span: float) -> np.ndarray:
    steps = rng.uniform(lo, hi, int(span / lo) + 3)
    return np.concatenate([[0.0], np.cumsum(steps)])


def _inset(quads: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Move each edge ``k`` (corner k -> k+1) of CCW quads inwards by ``half[:, k]``."""
    p = quads
    e = np.roll(p, -1, axis=1) - p
    length = np.hypot(e[..., 0], e[..., 1])[..., None]
    normal = np.stack([-e[..., 1], e[..., 0]], axis=-1) / length  # left of a CCW edge
    base = p + normal * half[..., None]  # a point on each offset edge line
    # corner k is where offset edges k-1 and k meet
    b0, d0 = np.roll(base, 1, axis=1), np.roll(e, 1, axis=1)
    b1, d1 = base, e
    cross = d0[..., 0] * d1[..., 1] - d0[..., 1] * d1[..., 0]
    w = b1 - b0
    s = (w[..., 0] * d1[..., 1] - w[..., 1] * d1[..., 0]) / cross
    return b0 + d0 * s[..., None]


Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _ha(q: Quad) -> float:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = q
    return abs((x0 - x2) * (y1 - y3) - (x1 - x3) * (y0 - y2)) / 2e4


def _split_block(q: Quad, rng: np.random.Generator) -> list[Quad]:
    """Cut a farmland block into strips along its longer side, some strips across."""
    p0, p1, p2, p3 = q
    if math.dist(p0, p1) + math.dist(p3, p2) < math.dist(p0, p3) + math.dist(p1, p2):
        p0, p1, p2, p3 = p1, p2, p3, p0
    n = max(1, round(_ha(q) / rng.uniform(5.0, 11.0)))
    widths = rng.uniform(0.6, 1.4, n)
    a = np.concatenate([[0.0], np.cumsum(widths) / widths.sum()])
    b = a.copy()
    if n > 1:
        room = 0.25 * np.minimum(np.diff(a)[:-1], np.diff(a)[1:])
        b[1:-1] += rng.uniform(-1.0, 1.0, n - 1) * room
    a[-1] = b[-1] = 1.0
    al, bl = a.tolist(), b.tolist()
    out: list[Quad] = []
    for k in range(n):
        strip = (
            _lerp(p0, p1, al[k]),
            _lerp(p0, p1, al[k + 1]),
            _lerp(p3, p2, bl[k + 1]),
            _lerp(p3, p2, bl[k]),
        )
        out.extend(_split_across(strip, rng))
    return out


def _split_across(q: Quad, rng: np.random.Generator) -> list[Quad]:
    area = _ha(q)
    if area <= 9.0 or (area <= _MAX_HA and rng.random() < 0.45):
        return [q]
    q0, q1, q2, q3 = q
    c = rng.uniform(0.35, 0.65)
    d = c + rng.uniform(-0.08, 0.08)
    left, right = _lerp(q0, q3, c), _lerp(q1, q2, d)
    return [*_split_across((q0, q1, right, left), rng), *_split_across((left, right, q2, q3), rng)]


def make_landscape(seed: int, extent: tuple[float, float, float, float]) -> Landscape:
    """Draw the land units covering the lon/lat ``extent`` (with a 0.02 degree margin)."""
    rng = np.random.default_rng([seed, 3])
    west, south, east, north = extent
    m = 0.02
    t = np.linspace(0.0, 1.0, 41)
    lon = np.concatenate([west - m + (east - west + 2 * m) * t, np.full(41, east + m)])
    lon = np.concatenate([lon, east + m - (east - west + 2 * m) * t, np.full(41, west - m)])
    lat = np.concatenate([np.full(41, south - m), south - m + (north - south + 2 * m) * t])
    lat = np.concatenate([lat, np.full(41, north + m), north + m - (north - south + 2 * m) * t])
    gx, gy = Transformer.from_crs(4326, GEN_EPSG, always_xy=True).transform(lon, lat)
    domain = shapely.Polygon(np.column_stack([gx, gy]))

    theta = rng.uniform(math.radians(8.0), math.radians(28.0)) * rng.choice([-1.0, 1.0])
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * gx + sin * gy, -sin * gx + cos * gy
    us = u.min() - 600.0 + _cumulative(rng, 550.0, 1100.0, u.max() - u.min() + 1200.0)
    vs = v.min() - 600.0 + _cumulative(rng, 420.0, 900.0, v.max() - v.min() + 1200.0)
    nu, nv = us.size, vs.size
    nodes_u = us[:, None] + rng.uniform(-85.0, 85.0, (nu, nv))
    nodes_v = vs[None, :] + rng.uniform(-70.0, 70.0, (nu, nv))
    # bend the grid: road directions turn by up to ~17 degrees over a few kilometres
    wave = rng.uniform(6000.0, 12000.0, 2)
    phase = rng.uniform(0.0, 2 * math.pi, 2)
    bend_u = 0.3 * wave[0] / (2 * math.pi) * np.sin(2 * math.pi * vs[None, :] / wave[0] + phase[0])
    bend_v = 0.3 * wave[1] / (2 * math.pi) * np.sin(2 * math.pi * us[:, None] / wave[1] + phase[1])
    nodes_u, nodes_v = nodes_u + bend_u, nodes_v + bend_v
    nodes = np.stack([cos * nodes_u - sin * nodes_v, sin * nodes_u + cos * nodes_v], axis=-1)
    half_u = np.where(np.arange(nu) % 4 == 0, 9.0, 5.0)  # roads along v (constant u)
    half_v = np.where(np.arange(nv) % 3 == 0, 9.0, 5.0)

    i, j = (g.ravel() for g in np.meshgrid(np.arange(nu - 1), np.arange(nv - 1), indexing="ij"))
    blocks = np.stack([nodes[i, j], nodes[i + 1, j], nodes[i + 1, j + 1], nodes[i, j + 1]], 1)
    # a rotation keeps the orientation: corners (i, j), (i+1, j), (i+1, j+1), (i, j+1) are CCW
    half = np.column_stack([half_v[j], half_u[i + 1], half_v[j + 1], half_u[i]])
    blocks = _inset(blocks, half)
    centre = blocks.mean(axis=1)
    keep = shapely.contains_xy(domain, centre[:, 0], centre[:, 1])
    blocks, centre = blocks[keep], centre[keep]

    area_km2 = domain.area / 1e6
    minx, miny, maxx, maxy = domain.bounds

    def near(count: int, lo: float, hi: float) -> np.ndarray:
        cx = rng.uniform(minx, maxx, count)
        cy = rng.uniform(miny, maxy, count)
        r = rng.uniform(lo, hi, count)
        d2 = (centre[:, 0, None] - cx) ** 2 + (centre[:, 1, None] - cy) ** 2
        return (d2 < r**2).any(axis=1) if count else np.zeros(len(centre), bool)

    town = near(rng.poisson(area_km2 / 28.0), 350.0, 1100.0)
    wood = near(rng.poisson(area_km2 / 40.0), 300.0, 1300.0) & ~town

    parcels: list[Quad] = []
    others: list[Quad] = []
    other_code: list[int] = []
    for q, is_town, is_wood in zip(blocks.tolist(), town, wood, strict=True):
        q = tuple(map(tuple, q))
        if is_town or is_wood:
            others.append(q)
            other_code.append(_phenology.BUILT_UP if is_town else _phenology.WOODS)
            continue
        for piece in _split_block(q, rng):
            if _MIN_HA <= _ha(piece) <= _MAX_HA:
                parcels.append(piece)
            else:
                others.append(piece)
                other_code.append(_phenology.BUILT_UP)  # a farmstead
    shares = np.array(list(_phenology.CROPS.values()))
    crop = rng.choice(len(shares), size=len(parcels), p=shares / shares.sum()) + 3
    code = np.concatenate([[_phenology.ROAD], crop, other_code]).astype(np.uint8)
    quads = np.concatenate(
        [
            np.full((1, 4, 2), np.nan),
            np.array(parcels).reshape(-1, 4, 2),
            np.array(others).reshape(-1, 4, 2),
        ]
    )
    params = _phenology.draw_params(rng, code.size)
    lakes = np.random.default_rng([seed, 6]).random(code.size) < _LAKE_SHARE
    code[lakes & (code == _phenology.WOODS)] = _phenology.WATER
    return Landscape(quads, code, params, len(parcels))


class ZoneRaster:
    """Land unit ids and NDVI texture on the 10 m grid of one UTM zone's tiles.

    Parameters
    ----------
    land : Landscape
        The land units.
    seed : int
        World seed (the texture's).
    epsg : int
        UTM EPSG code of the zone.
    left, top : float
        Upper-left corner (metres, on the zone's 10 m grid).
    width, height : int
        Grid size in pixels.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(height, width)`` unit id of each pixel (pixel centre inside the polygon).
    offset : numpy.ndarray
        ``(height, width)`` float32 NDVI added to the unit's value, zero mean per unit.
    """

    def __init__(
        self,
        land: Landscape,
        seed: int,
        epsg: int,
        left: float,
        top: float,
        width: int,
        height: int,
    ) -> None:
        self.epsg, self.left, self.top = epsg, float(left), float(top)
        self.width, self.height = int(width), int(height)
        transform = Affine(10.0, 0.0, self.left, 0.0, -10.0, self.top)
        quads = land.quads[1:]
        if epsg != GEN_EPSG:
            x, y = Transformer.from_crs(GEN_EPSG, epsg, always_xy=True).transform(
                quads[..., 0], quads[..., 1]
            )
            quads = np.stack([x, y], axis=-1)
        right, bottom = self.left + 10.0 * width, self.top - 10.0 * height
        inside = (
            (quads[..., 0].max(axis=1) > self.left)
            & (quads[..., 0].min(axis=1) < right)
            & (quads[..., 1].max(axis=1) > bottom)
            & (quads[..., 1].min(axis=1) < self.top)
        )
        ids = np.flatnonzero(inside) + 1
        shapes = (
            ({"type": "Polygon", "coordinates": [[*q.tolist(), q[0].tolist()]]}, int(k))
            for q, k in zip(quads[ids - 1], ids, strict=True)
        )
        dtype = "uint16" if land.n_units <= 65535 else "uint32"
        self.labels = rasterio.features.rasterize(
            shapes, out_shape=(height, width), transform=transform, fill=0, dtype=dtype
        )
        self.offset = self._texture(land, seed)

    def _texture(self, land: Landscape, seed: int) -> np.ndarray:
        h, w = self.height, self.width
        rng = np.random.default_rng([seed, 4, self.epsg])
        coarse = rng.standard_normal((h // _COARSE + 6, w // _COARSE + 6), dtype=np.float32)
        for axis in (0, 1):  # a 3-cell moving average per axis
            coarse = (
                np.take(coarse, range(0, coarse.shape[axis] - 2), axis=axis)
                + np.take(coarse, range(1, coarse.shape[axis] - 1), axis=axis)
                + np.take(coarse, range(2, coarse.shape[axis]), axis=axis)
            )
        coarse *= np.float32(1.0 / max(float(coarse.std()), 1e-6))
        # bilinear upsampling to 10 m, one axis at a time
        pos = (np.arange(w) + 0.5) / _COARSE
        i0 = pos.astype(np.intp)
        f = (pos - i0).astype(np.float32)
        cols = coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f
        pos = (np.arange(h) + 0.5) / _COARSE
        j0 = pos.astype(np.intp)
        g = (pos - j0).astype(np.float32)[:, None]
        tex = cols[j0] * (1 - g) + cols[j0 + 1] * g
        tex += np.float32(_GRAIN) * rng.standard_normal((h, w), dtype=np.float32)
        np.clip(tex, -2.5, 2.5, out=tex)
        flat = self.labels.ravel()
        sums = np.bincount(flat, weights=tex.ravel(), minlength=land.n_units)
        counts = np.bincount(flat, minlength=land.n_units)
        mean = (sums / np.maximum(counts, 1)).astype(np.float32)
        tex -= mean[self.labels]
        tex *= _TEXTURE[land.code][self.labels]
        return tex
