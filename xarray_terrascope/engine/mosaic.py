"""Per-date mosaics of a window: pure arithmetic on arrays, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["empty", "mosaic"]


def empty(values: npt.NDArray[Any], nodata: Any) -> npt.NDArray[np.bool_]:
    """Where ``values`` hold ``nodata`` (NaN counts when ``nodata`` is NaN).

    Examples
    --------
    >>> empty(np.array([1.0, np.nan]), np.nan).tolist(), empty(np.array([255, 3]), 255).tolist()
    ([False, True], [True, False])
    """
    result: npt.NDArray[np.bool_]
    if values.dtype.kind == "f" and bool(np.isnan(nodata)):
        result = np.isnan(values)
    else:
        result = values == nodata
    return result


def mosaic(
    out: npt.NDArray[Any],
    layers: Sequence[tuple[int, npt.NDArray[Any]]],
    nodata: Any,
    *,
    fresh: bool = True,
) -> npt.NDArray[Any]:
    """Paste ``(date index, values)`` layers into ``out`` (``(dates, rows, cols)``), in
    the mosaic's priority order: a date's first layer fills its window, each later one
    only the pixels still ``nodata`` (NaN counts as nodata when ``nodata`` is NaN). Dates
    without a layer are left as they are. With ``fresh`` False, ``out`` already holds
    earlier layers: every layer fills only the pixels still ``nodata``. Returns ``out``.

    Examples
    --------
    >>> out = np.full((2, 1, 3), 255, np.uint8)
    >>> first = np.array([[1, 255, 255]], np.uint8)
    >>> second = np.array([[7, 8, 255]], np.uint8)
    >>> mosaic(out, [(0, first), (0, second)], 255)[0].tolist()
    [[1, 8, 255]]
    """
    filled: set[int] = set()
    for index, values in layers:
        target = out[index]
        if fresh and index not in filled:  # the date's first file: the window is nodata
            target[...] = values
            filled.add(index)
        else:
            np.copyto(target, values, where=empty(target, nodata))
    return out
