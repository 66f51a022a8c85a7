"""Which pixels a scene classification or cloud mask says to drop: pure numpy.

Used by ``open_dataset(..., mask_clouds=True, min_clear=...)`` inside the reads, and by
the accessor's ``mask_clouds`` on lazy arrays.

Defaults for Sen2Cor's scene classification (SCL): classes 0 (no data), 1 (saturated or
defective), 3 (cloud shadow), 8 and 9 (cloud, medium and high probability) and 10 (thin
cirrus) are dropped; 2 (dark area), 4 (vegetation), 5 (not vegetated), 6 (water),
7 (unclassified) and 11 (snow) are kept. This is openEO's ``to_scl_dilation_mask`` set
without snow, and odc-geo's ``mask_s2`` set with cirrus: snow is a real surface that an
analyst of winter scenes may want (add 11 to ``classes`` to drop it). Only clouds,
shadows and cirrus (3, 8, 9, 10) grow by the dilation: no data and defective pixels are
exact. For Terrascope's ``CLOUDMASK`` asset: 1 (cloud) grows, 255 (no data) is exact.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_DILATION",
    "SCL_MASKED",
    "dilation_pixels",
    "disk",
    "drop_mask",
]

#: SCL classes dropped by default.
SCL_MASKED: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: SCL classes that the dilation grows (clouds, their shadows, cirrus).
SCL_GROWING: frozenset[int] = frozenset({3, 8, 9, 10})
#: Default buffer around clouds and shadows, in metres: three 20 m SCL cells. Sen2Cor
#: classifies on 20 m (and 60 m for cirrus) cells and misses the thin edge of a cloud
#: and of its shadow; a buffer of one or two 60 m cells is the usual remedy (openEO
#: uses far larger kernels, which on a field of a few hectares drops whole dates).
DEFAULT_DILATION = 60.0

CLOUDMASK_CLOUD = 1
CLOUDMASK_NODATA = 255


def disk(radius: int) -> npt.NDArray[np.bool_]:
    """A disk of ``radius`` pixels (a ``2 r + 1`` square footprint).

    Examples
    --------
    >>> disk(1).astype(int).tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    span = np.arange(-radius, radius + 1)
    return np.add.outer(span**2, span**2) <= radius**2


def dilation_pixels(dilation: float, resolution: float) -> int:
    """The dilation's radius in pixels of ``resolution`` metres (rounded to the nearest).

    Examples
    --------
    >>> dilation_pixels(60, 10), dilation_pixels(0, 10), dilation_pixels(25, 10)
    (6, 0, 2)
    """
    return int(np.floor(dilation / resolution + 0.5))


def drop_mask(
    codes: npt.NDArray[np.integer],
    kind: str,
    classes: Iterable[int] | None = None,
    radius: int = 0,
) -> npt.NDArray[np.bool_]:
    """True where a pixel is to be dropped, for codes of shape ``(..., y, x)``.

    Parameters
    ----------
    codes : numpy.ndarray
        Scene classification (``kind="scl"``) or cloud mask (``kind="cloudmask"``) codes.
    kind : {"scl", "cloudmask"}
    classes : iterable of int, optional
        Codes to drop (default: :data:`SCL_MASKED`, or cloud and no data for a cloud
        mask). Of those, clouds, shadows and cirrus grow by ``radius``.
    radius : int
        Dilation radius in pixels (0: none). The result for a pixel depends on the codes
        within ``radius`` of it: give a window with that margin for exact edges.

    Examples
    --------
    >>> scl = np.array([[4, 4, 4, 4], [4, 9, 4, 4], [4, 4, 4, 0]], np.uint8)
    >>> drop_mask(scl, "scl").astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    >>> drop_mask(scl, "scl", radius=1).astype(int).tolist()
    [[0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1]]
    """
    from scipy import ndimage

    if kind == "scl":
        chosen = set(SCL_MASKED if classes is None else (int(c) for c in classes))
        growing = sorted(chosen & SCL_GROWING)
        exact = sorted(chosen - SCL_GROWING)
    elif kind == "cloudmask":
        chosen = {CLOUDMASK_CLOUD, CLOUDMASK_NODATA} if classes is None else set(classes)
        growing = sorted(chosen & {CLOUDMASK_CLOUD})
        exact = sorted(chosen - {CLOUDMASK_CLOUD})
    else:
        raise ValueError(f"kind must be 'scl' or 'cloudmask', got {kind!r}")
    grow = np.isin(codes, growing)
    if radius > 0 and grow.any():
        footprint = disk(radius).reshape((1,) * (codes.ndim - 2) + (2 * radius + 1,) * 2)
        grow = ndimage.binary_dilation(grow, structure=footprint)
    result: npt.NDArray[np.bool_] = grow | np.isin(codes, exact)
    return result
