"""Cloud masks applied while reading: ``open_dataset(..., mask_clouds=True, min_clear=...)``.

With ``mask_clouds=True`` every measurement's read first reads the scene classification
(or cloud mask) of its window, with a margin as wide as the dilation so that a pixel's
mask never depends on the chunking, and asks the engine only for the file tiles that
hold a pixel the mask keeps: a band tile under cloud is never fetched. The mask of a
window is computed once for all the measurements that share it.

With ``min_clear``, the opening reads the mask of every date over the whole cube (the
mask files are small: 20 m, uint8) and leaves out the dates whose clear share is below
the threshold.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xarray_terrascope import auth
from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.catalog.assets import CLOUDMASK_KEYS, SCL_KEYS
from xarray_terrascope.cube.clouds import drop_mask
from xarray_terrascope.engine.read import read_window
from xarray_terrascope.engine.windows import plan_key
from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.plan.planner import CubePlan

__all__ = [
    "MaskSpec",
    "check_mask_arguments",
    "clear",
    "clear_shares",
    "dropped_pixels",
    "find_mask_asset",
]

logger = logging.getLogger(__name__)

#: Bytes of computed window masks kept per process (shared by a window's measurements).
MASK_CACHE_BYTES = 64 * 2**20
#: Dates whose mask is read at once when ``min_clear`` decides which dates to keep.
DATES_PER_READ = 8


@dataclass(frozen=True)
class MaskSpec:
    """Which asset of a plan masks the others, and how (picklable, no secret).

    Attributes
    ----------
    asset_index : int
        The mask asset's index in the plan.
    kind : {"scl", "cloudmask"}
    classes : tuple of int or None
        Codes to drop (None: the defaults of :func:`~xarray_terrascope.cube.clouds.drop_mask`).
    radius : float
        Buffer around clouds and shadows, in cube pixels.
    """

    asset_index: int
    kind: str
    classes: tuple[int, ...] | None = None
    radius: float = 0.0


def check_mask_arguments(mask_clouds: Any, min_clear: Any) -> float | None:
    """Refuse bad ``mask_clouds`` / ``min_clear`` before any request; ``min_clear`` as a
    float (or None).

    Examples
    --------
    >>> check_mask_arguments(True, 0.8)
    0.8
    >>> check_mask_arguments(False, 80)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xarray_terrascope.exceptions.InvalidArgumentError: min_clear must be a share ... got 80
    """
    if not isinstance(mask_clouds, bool | np.bool_):
        raise InvalidArgumentError(f"mask_clouds must be True or False, got {mask_clouds!r}")
    if min_clear is None:
        return None
    valid = isinstance(min_clear, int | float | np.integer | np.floating) and not isinstance(
        min_clear, bool
    )
    if not valid or not 0.0 <= float(min_clear) <= 1.0:
        raise InvalidArgumentError(
            "min_clear must be a share between 0 and 1 (e.g. 0.8 for 80 % clear), "
            f"got {min_clear!r}"
        )
    return float(min_clear)


def find_mask_asset(items: Iterable[Any], collection: str) -> str:
    """The key of the items' scene classification (preferred) or cloud mask asset.

    Raises
    ------
    InvalidArgumentError
        When no item has one.
    """
    scl, cloud = None, None
    keys: set[str] = set()
    for item in items:
        assets = item["assets"] if isinstance(item, dict) else item.assets
        for key, asset in assets.items():
            keys.add(key)
            roles = set((asset.get("roles") if isinstance(asset, dict) else asset.roles) or ())
            if key.upper() in SCL_KEYS:
                scl = scl or key
            elif key.upper() in CLOUDMASK_KEYS or {"data-mask", "cloud"} <= roles:
                cloud = cloud or key
    found = scl or cloud
    if found is None:
        raise InvalidArgumentError(
            f"mask_clouds and min_clear need a scene classification or cloud mask asset, "
            f"and the {collection} items have none (assets: {', '.join(sorted(keys))}). "
            "Terrascope's TOC items carry SCL and CLOUDMASK, its NDVI/FAPAR/LAI/FCOVER V2 "
            "items SCENECLASSIFICATION_20M; for other collections mask the clouds yourself."
        )
    return found


_windows: BoundedCache[Hashable, npt.NDArray[np.bool_]] = BoundedCache(
    MASK_CACHE_BYTES, getsizeof=lambda mask: mask.nbytes
)


def clear() -> None:
    """Forget every computed window mask (on a logout or new credentials too: a mask was
    read with the old ones)."""
    with _windows.lock:
        _windows.clear()


auth.subscribe("forget", clear)


def _new_lock_after_fork() -> None:
    _windows.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def dropped_pixels(
    plan: CubePlan, mask: MaskSpec, times: Sequence[int], rows: slice, cols: slice
) -> npt.NDArray[np.bool_]:
    """True where ``mask`` drops a pixel of the window, ``(len(times), rows, cols)``.

    The mask asset is read with a margin of ``mask.radius`` pixels (clipped to the cube)
    so that a dilated cloud just outside the window still reaches into it.
    """
    # the plan's key holds its dates' items: a min_clear cube's date t is another item
    key = (plan_key(plan), mask, tuple(times), rows.start, rows.stop, cols.start, cols.stop)
    with _windows.lock:
        cached = _windows.get(key)
    if cached is not None:
        return cached
    height, width = plan.shape
    m = math.floor(mask.radius + 1e-9)
    r0, r1 = max(rows.start - m, 0), min(rows.stop + m, height)
    c0, c1 = max(cols.start - m, 0), min(cols.stop + m, width)
    codes = read_window(plan, mask.asset_index, list(times), slice(r0, r1), slice(c0, c1))
    dropped = drop_mask(codes, mask.kind, mask.classes, mask.radius)
    window = np.ascontiguousarray(
        dropped[:, rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]
    )
    with _windows.lock:
        _windows.put(key, window)
    return window


def clear_shares(plan: CubePlan, mask: MaskSpec) -> npt.NDArray[np.float64]:
    """Per date, the share of the cube's pixels that ``mask`` keeps (no dilation: a
    date's share is that of its clear pixels, with no-data pixels counted as not clear).
    Reads the mask asset only."""
    height, width = plan.shape
    exact = MaskSpec(mask.asset_index, mask.kind, mask.classes, 0)
    shares = np.empty(len(plan.groups))
    for first in range(0, len(plan.groups), DATES_PER_READ):
        times = list(range(first, min(first + DATES_PER_READ, len(plan.groups))))
        codes = read_window(plan, mask.asset_index, times, slice(0, height), slice(0, width))
        dropped = drop_mask(codes, exact.kind, exact.classes)
        shares[times] = 1.0 - dropped.reshape(len(times), -1).mean(axis=1)
    return shares
