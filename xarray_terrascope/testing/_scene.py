"""One acquisition over one tile at 10 m: the ground, the sky and the swath.

A :class:`Scene` is shared by every file rendered for that acquisition and tile (the TOC
bands, SCL, CLOUDMASK, the NDVI products' scene classification) and by the world's
ground-truth accessors, so that files and truth agree by construction.

The 20 m and 60 m grids of a tile share the 10 m grid's upper-left corner: pixel ``(r, c)``
of the 10 m grid lies in pixel ``(r // 2, c // 2)`` at 20 m and ``(r // 6, c // 6)`` at
60 m; the last row or column of a coarser grid may reach past the 10 m grid, and a coarse
pixel is the mean (or, for classes, the most severe) of the 10 m pixels it covers.

Swath edges: the Sentinel-2 swath is 290 km wide, so some tiles lie at its edge on one of
the two relative orbits and are partly outside it (no data). :data:`SWATH_EDGES` holds the
two edges that cross the sandbox's tiles, as straight lines in the tile's UTM coordinates
through two lon/lat points, slanted as the descending ground track is (about 17 degrees
from north at 51 N). A 60 m block whose centre lies beyond the edge is no data at every
resolution. Only the TOC product has these edges: the sandbox's NDVI, FAPAR and LAI files
(and their scene classification) predate them and cover their tiles whole.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from affine import Affine
from pyproj import Transformer

from ._model import Acquisition, Tile
from ._phenology import WATER
from ._scl import Sky, sky_classes
from ._sky import TileSky

__all__ = [
    "SWATH_EDGES",
    "Scene",
    "SceneCache",
    "block_max",
    "block_mean",
    "grid",
    "make_scene",
    "opacity",
    "shadow_dim",
    "swath_line",
    "swath_nodata",
]

#: ``(relative orbit, tile) -> ((lon, lat) north, (lon, lat) south, side of no data)``.
SWATH_EDGES: dict[tuple[int, str], tuple[tuple[float, float], tuple[float, float], str]] = {
    (8, "32ULB"): ((6.240, 51.30), (6.191, 51.20), "east"),  # the east edge of R008
    (51, "31UFS"): ((4.995, 51.30), (4.946, 51.20), "west"),  # the west edge of R051
}


def grid(tile: Tile, res: int) -> tuple[Affine, int, int]:
    """Return ``(transform, width, height)`` of the tile's grid at ``res`` metres (10, 20
    or 60), with the 10 m grid's upper-left corner."""
    f = res // 10
    t = tile.transform
    return (
        Affine(float(res), 0.0, t.c, 0.0, -float(res), t.f),
        -(-tile.width // f),
        -(-tile.height // f),
    )


def _starts(n: int, f: int) -> np.ndarray:
    return np.arange(0, n, f)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Return the float32 mean of every ``f`` x ``f`` block of ``a`` (partial blocks at
    the right and bottom: the mean of the pixels they hold)."""
    if f == 1:
        return a
    rows, cols = _starts(a.shape[0], f), _starts(a.shape[1], f)
    sums = np.add.reduceat(np.add.reduceat(a, rows, axis=0, dtype=np.float32), cols, axis=1)
    height = np.diff(np.append(rows, a.shape[0])).astype(np.float32)
    width = np.diff(np.append(cols, a.shape[1])).astype(np.float32)
    sums /= height[:, None] * width[None, :]
    return sums


def block_max(a: np.ndarray, f: int) -> np.ndarray:
    """Return the maximum of every ``f`` x ``f`` block of ``a`` (partial blocks too)."""
    if f == 1:
        return a
    rows, cols = _starts(a.shape[0], f), _starts(a.shape[1], f)
    return np.maximum.reduceat(np.maximum.reduceat(a, rows, axis=0), cols, axis=1)


def opacity(cloud: np.ndarray) -> np.ndarray:
    """Return the float32 weight pulling the reflectance towards the cloud's, by cloud
    density: the NDVI products' haze weight ``min(2 (d - 0.2), 0.6)`` up to 0.5, then
    ``0.6 + 1.6 (d - 0.5)`` (opaque from 0.75)."""
    hazy = np.clip((cloud - np.float32(0.2)) * np.float32(2.0), 0.0, 0.6)
    thick = np.minimum(np.float32(0.6) + np.float32(1.6) * (cloud - np.float32(0.5)), 1.0)
    return np.where(cloud > 0.5, thick, hazy).astype(np.float32)


def shadow_dim(shadow: np.ndarray) -> np.ndarray:
    """Return the float32 share of direct light a shadow of this density blocks:
    ``0.85 * clip((s - 0.2) / 0.35, 0, 1)`` (from 0.73 where it is masked, s > 0.5)."""
    share = np.clip((shadow - np.float32(0.2)) / np.float32(0.35), 0.0, 1.0)
    return (np.float32(0.85) * share).astype(np.float32)


@functools.cache
def swath_line(tile: Tile, orbit: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Return the swath edge crossing ``tile`` on ``orbit`` in the tile's UTM metres:
    ``(point, direction, sign)`` where a point ``p`` is outside the swath when
    ``sign * cross(direction, p - point) > 0``; None when the tile is inside the swath."""
    edge = SWATH_EDGES.get((orbit, tile.name))
    if edge is None:
        return None
    north, south, side = edge
    x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(
        [north[0], south[0]], [north[1], south[1]]
    )
    point = np.array([x[0], y[0]])
    direction = np.array([x[1] - x[0], y[1] - y[0]])
    # walking south along the edge, east is on the left (cross > 0)
    return point, direction, 1.0 if side == "east" else -1.0


def outside_swath(tile: Tile, orbit: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return whether UTM points ``x``, ``y`` of ``tile`` lie beyond the swath edge."""
    line = swath_line(tile, orbit)
    if line is None:
        return np.zeros(np.shape(x), bool)
    point, direction, sign = line
    cross = direction[0] * (np.asarray(y) - point[1]) - direction[1] * (np.asarray(x) - point[0])
    return np.asarray(sign * cross > 0)


@functools.cache
def swath_nodata(tile: Tile, orbit: int) -> np.ndarray | None:
    """Return the 60 m blocks of ``tile`` outside the swath on ``orbit`` (bool, the 60 m
    grid's shape), or None when the tile lies wholly inside the swath."""
    if swath_line(tile, orbit) is None:
        return None
    transform, width, height = grid(tile, 60)
    x = transform.c + 60.0 * (np.arange(width) + 0.5)
    y = transform.f - 60.0 * (np.arange(height) + 0.5)
    out = outside_swath(tile, orbit, x[None, :], y[:, None])
    out.setflags(write=False)
    return out


def expand(blocks: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Replicate each value of a coarse grid ``f`` x ``f`` times and crop to ``shape``."""
    if f == 1:
        return blocks[: shape[0], : shape[1]]
    rows = np.arange(shape[0]) // f
    cols = np.arange(shape[1]) // f
    return blocks[np.ix_(rows, cols)]


@dataclass(frozen=True)
class Scene:
    """An acquisition over a tile, on the tile's 10 m grid.

    Attributes
    ----------
    tile : Tile
        The tile.
    orbit : int
        The acquisition's relative orbit (which swath edge applies).
    ndvi : numpy.ndarray
        ``(height, width)`` float32 cloud-free NDVI: the land unit's value for the day
        plus its texture (what the NDVI product quantises).
    code : numpy.ndarray
        ``(height, width)`` uint8 land cover code (index into ``COVER``).
    sky : numpy.ndarray
        ``(height, width)`` uint8 :class:`~._scl.Sky` class (the swath left out).
    weight : numpy.ndarray or None
        ``(height, width)`` float32 cloud opacity (:func:`opacity`); None on a clear date.
    dim : numpy.ndarray or None
        ``(height, width)`` float32 shadow dimming (:func:`shadow_dim`), 0 under clouds;
        None without shadows.
    """

    tile: Tile
    orbit: int
    ndvi: np.ndarray
    code: np.ndarray
    sky: np.ndarray
    weight: np.ndarray | None
    dim: np.ndarray | None

    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _memo_guard: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def memo(self, name: str, make: Callable[[], Any]) -> Any:
        """Return what ``make()`` returns, made once per scene (``name`` keys it; ``make``
        may ask for another memo: the lock is re-entrant)."""
        with self._memo_guard:
            if name not in self._memo:
                self._memo[name] = make()
            return self._memo[name]

    @property
    def water(self) -> np.ndarray:
        """Where the ground is water (bool, 10 m)."""
        return cast("np.ndarray", self.memo("water", lambda: self.code == WATER))

    def swath(self, res: int) -> np.ndarray | None:
        """Return where the grid at ``res`` metres is outside the swath (bool), or None."""
        blocks = swath_nodata(self.tile, self.orbit)
        if blocks is None:
            return None
        _, width, height = grid(self.tile, res)
        return expand(blocks, 60 // res, (height, width))

    def sky_at(self, res: int, *, swath: bool, clouds: bool = True) -> np.ndarray:
        """Return the uint8 sky class on the grid at ``res`` metres: the most severe of
        the 10 m pixels each pixel covers (all clear without ``clouds``), and
        :attr:`Sky.NODATA` outside the swath when ``swath``."""
        _, width, height = grid(self.tile, res)
        out = block_max(self.sky, res // 10) if clouds else np.zeros((height, width), np.uint8)
        outside = self.swath(res) if swath else None
        if outside is not None:
            out = out.copy() if out is self.sky else out
            out[outside] = Sky.NODATA
        return out


def make_scene(
    tile: Tile, acq: Acquisition, ndvi: np.ndarray, code: np.ndarray, sky: TileSky
) -> Scene:
    """Return the scene of an acquisition over a tile from its ground (cloud-free NDVI
    and cover codes on the 10 m grid) and the tile's cloud cells."""
    weight = dim = None
    if acq.cloudy:
        cloud, shadow = sky.densities(acq)
        cells = np.ix_(sky.row_cell, sky.col_cell)
        classes = sky_classes(cloud, shadow)[cells]
        weight = opacity(cloud)[cells]
        if len(acq.shadows.blobs):  # a cloud hides its shadow
            dim = np.where(cloud > 0.5, np.float32(0.0), shadow_dim(shadow))[cells]
    else:
        classes = np.zeros(ndvi.shape, np.uint8)
    return Scene(tile, acq.relative_orbit, ndvi, code, classes, weight, dim)


class SceneCache:
    """The last few scenes, built once each (concurrent callers wait for one builder).

    Parameters
    ----------
    build : callable
        ``build(tile_name, acquisition_index) -> Scene``.
    size : int
        Scenes kept (a scene of 31UFS holds ~150 MB).
    """

    def __init__(self, build: Callable[[str, int], Scene], size: int = 2) -> None:
        self._build = build
        self._size = size
        self._scenes: OrderedDict[tuple[str, int], Scene] = OrderedDict()
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}

    def get(self, tile_name: str, acq: int) -> Scene:
        """Return the scene of a tile on an acquisition (by index)."""
        key = (tile_name, acq)
        with self._guard:
            scene = self._scenes.get(key)
            if scene is not None:
                self._scenes.move_to_end(key)
                return scene
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                scene = self._scenes.get(key)
            if scene is None:
                scene = self._build(tile_name, acq)
                with self._guard:
                    self._scenes[key] = scene
                    while len(self._scenes) > self._size:
                        self._scenes.popitem(last=False)
                    self._locks.pop(key, None)
            return scene
