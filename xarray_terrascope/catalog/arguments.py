"""Checking search arguments: bbox, dates (every spelling a user may write), cloud
cover, limit, collection, pystac-client keywords and ``intersects`` geometries."""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time
from typing import Any, Union

import numpy as np

from xarray_terrascope.catalog.collections import DEFAULT_COLLECTION
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["BBoxLike", "DatetimeLike", "check_bbox", "check_dates"]

BBoxLike = Sequence[float]
#: A date (the whole day), a month ``"2025-05"``, a year, or an instant; also
#: ``numpy.datetime64`` and ``pandas.Timestamp``. Naive values are UTC.
DatetimeLike = Union[str, date, datetime, np.datetime64, None]  # noqa: UP007 (runtime alias)


def check_bbox(bbox: Any, name: str = "bbox") -> tuple[float, float, float, float]:
    """Return ``bbox`` as four floats ``(west, south, east, north)`` in WGS84, or raise.

    Raises
    ------
    InvalidArgumentError
        Naming the bbox and what is wrong with it.

    Examples
    --------
    >>> check_bbox([5.0, 51.2, 5.1, 51.3])
    (5.0, 51.2, 5.1, 51.3)
    """
    if isinstance(bbox, (str, bytes)) or not isinstance(bbox, Iterable):
        raise InvalidArgumentError(
            f"{name} must be 4 numbers [west, south, east, north] in degrees, got {bbox!r}"
        )
    values = list(bbox)
    if len(values) != 4:
        raise InvalidArgumentError(
            f"{name} must have 4 numbers [west, south, east, north], got {len(values)}: {bbox!r}"
        )
    try:
        west, south, east, north = (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(f"{name} must contain numbers only, got {bbox!r}") from err
    if not all(abs(v) < float("inf") for v in (west, south, east, north)):
        raise InvalidArgumentError(f"{name} must contain finite numbers, got {bbox!r}")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise InvalidArgumentError(f"{name} longitudes must be within [-180, 180], got {bbox!r}")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise InvalidArgumentError(f"{name} latitudes must be within [-90, 90], got {bbox!r}")
    if west >= east:
        raise InvalidArgumentError(
            f"{name} west ({west}) must be less than east ({east}): {bbox!r} "
            "(order is [west, south, east, north])"
        )
    if south >= north:
        raise InvalidArgumentError(
            f"{name} south ({south}) must be less than north ({north}): {bbox!r} "
            "(order is [west, south, east, north])"
        )
    return (west, south, east, north)


#: Date-only spellings, each a whole period: a year, a month or a day ("Z" is allowed).
_PERIOD = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2}))?|(?P<m8>\d{2})(?P<d8>\d{2}))?[Zz]?$"
)


def _period(text: str, *, end: bool) -> datetime | None:
    """The first (or, for ``end``, last) instant of a date-only string, or None."""
    match = _PERIOD.match(text)
    if match is None:
        return None
    year = int(match["y"])
    month = match["m"] or match["m8"]
    day = match["d"] or match["d8"]
    if month is None:  # a year
        first, last = date(year, 1, 1), date(year, 12, 31)
    elif day is None:  # a month
        first = date(year, int(month), 1)
        last = date(year, int(month), calendar.monthrange(year, int(month))[1])
    else:
        first = last = date(year, int(month), int(day))
    return datetime.combine(last, time.max) if end else datetime.combine(first, time.min)


def _to_datetime(value: Any, name: str, *, end: bool) -> datetime | None:
    if value is None:
        return None
    example = "e.g. '2025-05', '2025-05-01' or '2025-05-01T10:00:00Z'"
    try:
        if _is_nat(value):
            raise InvalidArgumentError(f"{name} is NaT (not a time); give a date ({example})")
        if isinstance(value, np.datetime64):
            value = _from_datetime64(value, name)
        if isinstance(value, datetime):
            moment = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
        elif isinstance(value, date):
            moment = datetime.combine(value, time.max if end else time.min)
        elif isinstance(value, str):
            text = value.strip()
            moment = _period(text, end=end) or datetime.fromisoformat(
                text.replace("Z", "+00:00").replace("z", "+00:00")
            )
        else:
            raise InvalidArgumentError(
                f"{name} must be a str, datetime.date, datetime.datetime, numpy.datetime64 "
                f"or pandas.Timestamp, got {type(value).__name__}"
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        if isinstance(err, InvalidArgumentError):
            raise
        raise InvalidArgumentError(
            f"{name} must be a valid date or datetime ({example}), got {value!r}"
        ) from err


def _is_nat(value: Any) -> bool:
    if isinstance(value, np.datetime64):
        return bool(np.isnat(value))
    return type(value).__name__ == "NaTType"


def _from_datetime64(value: np.datetime64, name: str) -> str | date | datetime:
    """A year or month as text (a whole period, see :func:`_period`), a day as a date,
    anything finer as a datetime."""
    unit = np.datetime_data(value.dtype)[0]
    if unit in ("Y", "M"):
        result: Any = value.item()
        if isinstance(result, date):
            return str(value)
    else:
        result = value.astype("datetime64[D]" if unit in ("W", "D") else "datetime64[us]").item()
    if not isinstance(result, (date, datetime)):  # outside datetime's years 1..9999
        raise InvalidArgumentError(f"{name} {value!r} is outside the years 1 to 9999")
    return result


def check_dates(start: DatetimeLike, end: DatetimeLike) -> tuple[datetime | None, datetime | None]:
    """Return ``(start, end)`` as UTC datetimes.

    Date-only values are whole periods, as pystac-client reads them: ``start`` is the
    first instant of its day (``"2025-06-07"``, ``"20250607"``, ``"2025-06-07Z"``), month
    (``"2025-05"``) or year (``"2025"``), ``end`` the last instant of its period.
    ``datetime.date``, ``numpy.datetime64`` of day precision or coarser likewise.
    Naive datetimes are taken as UTC.

    Raises
    ------
    InvalidArgumentError
        For an unparsable value, ``NaT``, a date outside years 1..9999, or ``start``
        after ``end``; the message names the argument.

    Examples
    --------
    >>> check_dates("2025-05-01", "2025-05-31")[1].isoformat()
    '2025-05-31T23:59:59.999999+00:00'
    >>> [d.date().isoformat() for d in check_dates("2025-02", "2025-02")]
    ['2025-02-01', '2025-02-28']
    """
    first = _to_datetime(start, "start", end=False)
    last = _to_datetime(end, "end", end=True)
    if first is not None and last is not None and first > last:
        raise InvalidArgumentError(
            f"start ({first.isoformat()}) is after end ({last.isoformat()}); swap them."
        )
    return first, last


def _interval(first: datetime | None, last: datetime | None) -> str | None:
    if first is None and last is None:
        return None

    def fmt(moment: datetime | None) -> str:
        if moment is None:
            return ".."
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return f"{fmt(first)}/{fmt(last)}"


def _check_cloud(max_cloud_cover: Any) -> float | None:
    if max_cloud_cover is None:
        return None
    try:
        value = float(max_cloud_cover)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"max_cloud_cover must be a number from 0 to 100 (percent), got {max_cloud_cover!r}"
        ) from err
    if not 0 <= value <= 100:
        raise InvalidArgumentError(
            f"max_cloud_cover must be from 0 to 100 (percent), got {max_cloud_cover!r}"
        )
    return value


def _check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit must be a positive int or None, got {limit!r}")
    return limit


def _check_collection(collection: Any) -> str:
    if not isinstance(collection, str) or not collection:
        raise InvalidArgumentError(
            f"collection must be a collection id such as {DEFAULT_COLLECTION!r}, got {collection!r}"
        )
    return collection


#: Keywords passed on to pystac-client's ``Client.search``; the others are ours.
_QUERY_KEYWORDS = ("ids", "intersects", "query", "filter", "filter_lang", "sortby", "fields")
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


def _check_query(query: dict[str, Any]) -> None:
    unknown = sorted(set(query) - set(_QUERY_KEYWORDS))
    if unknown:
        raise InvalidArgumentError(
            f"search() got unknown keyword(s) {', '.join(unknown)}; it takes collection, "
            "bbox, start, end, max_cloud_cover, limit and the STAC parameters "
            f"{', '.join(_QUERY_KEYWORDS)}"
        )
    if "intersects" in query and query["intersects"] is not None:
        query["intersects"] = _check_intersects(query["intersects"])


def _check_intersects(value: Any) -> dict[str, Any]:
    """A GeoJSON geometry dict from a dict, a JSON string or a ``__geo_interface__``."""
    geometry = getattr(value, "__geo_interface__", value)
    if isinstance(geometry, str):
        try:
            geometry = json.loads(geometry)
        except ValueError as err:
            raise InvalidArgumentError(
                f"intersects must be a GeoJSON geometry (dict, JSON text or an object with "
                f"__geo_interface__), got text that is not JSON: {value[:80]!r}"
            ) from err
    if isinstance(geometry, dict) and geometry.get("type") == "Feature":
        geometry = geometry.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") not in _GEOMETRY_TYPES:
        raise InvalidArgumentError(
            f"intersects must be a GeoJSON geometry with a type among "
            f"{', '.join(_GEOMETRY_TYPES)}, got {str(value)[:80]!r}"
        )
    return geometry
