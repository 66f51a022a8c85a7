"""Hints for a search that found nothing: a bbox given as (lat, lon) instead of (lon, lat).

A bbox typed from a map app often comes latitude first: ``[51.2, 5.0, 51.3, 5.1]`` is
the Indian Ocean, where Terrascope has nothing. When the swapped box lies in Terrascope's
plausible coverage (Europe, roughly) and the given one does not, or when the swapped box
finds items (one more search, of one item, made only after an empty search outside that
coverage), the "no items" error says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from xarray_terrascope.catalog.arguments import DatetimeLike
from xarray_terrascope.exceptions import TerrascopeError

__all__ = ["COVERAGE", "swapped_bbox_hint"]

logger = logging.getLogger(__name__)

#: Terrascope's plausible coverage, ``(west, south, east, north)`` in degrees: Europe,
#: roughly (its Sentinel products are over Europe; some are global).
COVERAGE = (-25.0, 34.0, 45.0, 72.0)


def _centre_covered(box: Sequence[float]) -> bool:
    west, south, east, north = COVERAGE
    lon, lat = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return west <= lon <= east and south <= lat <= north


def swapped_bbox_hint(
    collection: str,
    box: Sequence[float],
    start: DatetimeLike = None,
    end: DatetimeLike = None,
    max_cloud_cover: float | None = None,
) -> str:
    """A sentence suggesting the bbox with longitude and latitude swapped, or ``""``.

    Parameters
    ----------
    collection, box, start, end, max_cloud_cover
        The search that found nothing (``box`` checked: west, south, east, north).

    Returns
    -------
    str
        ``" Did you swap longitude and latitude? try [...]"`` (with a leading space) when
        the swapped box lies in :data:`COVERAGE` and ``box`` does not, or when ``box``
        lies outside it and the swapped box finds items; otherwise ``""``.

    Examples
    --------
    >>> swapped_bbox_hint("terrascope-s2-ndvi-v2", (51.2, 5.0, 51.3, 5.1))
    ' Did you swap longitude and latitude? try [5.0, 51.2, 5.1, 51.3] (west, south, east, north).'
    >>> swapped_bbox_hint("terrascope-s2-ndvi-v2", (5.0, 51.2, 5.1, 51.3))
    ''
    """
    swapped = [float(box[1]), float(box[0]), float(box[3]), float(box[2])]
    if _centre_covered(box) or not all(-90 <= v <= 90 for v in swapped[1::2]):
        return ""
    hint = f" Did you swap longitude and latitude? try {swapped} (west, south, east, north)."
    if _centre_covered(swapped):
        return hint
    from xarray_terrascope.catalog.search import search

    try:
        found = search(collection, swapped, start, end, max_cloud_cover=max_cloud_cover, limit=1)
    except TerrascopeError as err:  # a hint is not worth a second error
        logger.debug("no swapped-bbox hint: the search of %s failed: %s", swapped, err)
        return ""
    return hint if found else ""
