"""Which pixels a scene classification or cloud mask says to drop: pure numpy.

Used by ``open_dataset(..., mask_clouds=True, min_clear=...)`` inside the reads, and by
the accessor's ``mask_clouds`` (:mod:`xarray_terrascope.analysis.clouds`) on lazy arrays;
the choice of default classes and buffer is explained there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUFFERED",
    "DEFAULT_CLOUDMASK_CLASSES",
    "DEFAULT_DILATION",
    "DEFAULT_SCL_CLASSES",
    "dilation_pixels",
    "disk",
    "drop_mask",
]

#: SCL classes dropped by default: no data, defective, shadow, clouds, cirrus.
DEFAULT_SCL_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: CLOUDMASK values dropped by default: cloud and no data.
DEFAULT_CLOUDMASK_CLASSES: tuple[int, ...] = (1, 255)
#: The classes a buffer grows from, per kind: clouds, their shadows and cirrus, never
#: no data or defective pixels.
BUFFERED: dict[str, frozenset[int]] = {
    "scl": frozenset({3, 8, 9, 10}),
    "cloudmask": frozenset({1}),
}
#: Default buffer around clouds and shadows, in metres (two 20 m SCL pixels).
DEFAULT_DILATION = 40.0
_DEFAULTS = {"scl": DEFAULT_SCL_CLASSES, "cloudmask": DEFAULT_CLOUDMASK_CLASSES}


def disk(radius_px: float) -> npt.NDArray[np.bool_]:
    """The footprint of the pixels whose centre lies within ``radius_px`` of the centre.

    Examples
    --------
    >>> disk(1).astype(int).tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    >>> int(disk(4).sum())  # 4 px: 40 m on a 10 m grid
    49
    """
    r = math.floor(radius_px + 1e-9)
    off = np.arange(-r, r + 1)
    footprint: npt.NDArray[np.bool_] = (off[:, None] ** 2 + off[None, :] ** 2) <= (
        radius_px**2 * (1 + 1e-9)
    )
    return footprint


def dilation_pixels(
    dilation: float, resolution: float, crs: object = None, latitude: float | None = None
) -> float:
    """The buffer's radius in pixels of ``resolution`` CRS units.

    Metres in a projected CRS. In a geographic CRS (``crs`` anything
    :meth:`pyproj.CRS.from_user_input` takes) a pixel of ``resolution`` degrees is
    measured at ``latitude`` on the WGS84 ellipsoid, by its shorter side (the east-west
    one away from the equator), so that the buffer reaches ``dilation`` metres every way.

    Examples
    --------
    >>> dilation_pixels(40, 10), dilation_pixels(0, 10), dilation_pixels(25, 10)
    (4.0, 0.0, 2.5)
    >>> round(dilation_pixels(40, 0.0001, "EPSG:4326", latitude=51.2), 1)  # 7.0 m wide
    5.7
    """
    size = float(resolution)
    if crs is not None and dilation:
        from pyproj import CRS, Geod

        if CRS.from_user_input(crs).is_geographic:
            lat = min(max(float(latitude or 0.0), -89.0), 89.0)
            geod = Geod(ellps="WGS84")
            east = geod.inv(0.0, lat, size, lat)[2]
            north = geod.inv(0.0, lat - size / 2, 0.0, lat + size / 2)[2]
            size = min(east, north)
    return float(dilation) / size


def drop_mask(
    codes: npt.NDArray[np.integer],
    kind: str,
    classes: Iterable[int] | None = None,
    radius_px: float = 0.0,
) -> npt.NDArray[np.bool_]:
    """True where a pixel is to be dropped, for codes of shape ``(..., y, x)``.

    Parameters
    ----------
    codes : numpy.ndarray
        Scene classification (``kind="scl"``) or cloud mask (``kind="cloudmask"``) codes.
    kind : {"scl", "cloudmask"}
    classes : iterable of int, optional
        Codes to drop (default: :data:`DEFAULT_SCL_CLASSES` or
        :data:`DEFAULT_CLOUDMASK_CLASSES`). Of those, the :data:`BUFFERED` ones grow by
        ``radius_px``.
    radius_px : float
        Buffer radius in pixels (0: none): a pixel whose centre lies within it of a
        cloud or shadow pixel's centre is dropped too. The result for a pixel depends on
        the codes within the radius: give a window with that margin for exact edges.

    Examples
    --------
    >>> scl = np.array([[4, 4, 4, 4], [4, 9, 4, 4], [4, 4, 4, 0]], np.uint8)
    >>> drop_mask(scl, "scl").astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    >>> drop_mask(scl, "scl", radius_px=1).astype(int).tolist()
    [[0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1]]
    """
    from scipy import ndimage

    if kind not in _DEFAULTS:
        raise ValueError(f"kind must be 'scl' or 'cloudmask', got {kind!r}")
    chosen = set(_DEFAULTS[kind] if classes is None else (int(c) for c in classes))
    growing = sorted(chosen & BUFFERED[kind])
    exact = sorted(chosen - BUFFERED[kind])
    grow = np.isin(codes, growing)
    if radius_px >= 1 and grow.any():
        footprint = disk(radius_px)
        grow = ndimage.binary_dilation(
            grow, structure=footprint.reshape((1,) * (codes.ndim - 2) + footprint.shape)
        )
    result: npt.NDArray[np.bool_] = grow | np.isin(codes, exact)
    return result
