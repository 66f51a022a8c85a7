"""Searching the Terrascope STAC API: argument checks, search, collections, item helpers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timezone
from typing import Any, Union

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from . import config
from .exceptions import CollectionNotFoundError, InvalidArgumentError, SearchError

__all__ = [
    "BBoxLike",
    "DatetimeLike",
    "asset_urls",
    "check_bbox",
    "check_dates",
    "item_dates",
    "list_collections",
    "search",
    "search_ndvi",
    "stac_client",
]

logger = logging.getLogger(__name__)

BBoxLike = Sequence[float]
DatetimeLike = Union[str, date, datetime, None]  # noqa: UP007 (a runtime alias, py3.10)

#: Items per page: a year of one tile (~150 items) comes back in one round trip.
PAGE_SIZE = 500
#: Seconds to wait for the STAC API to connect and to answer.
TIMEOUT = (10.0, 120.0)
#: Retries with exponential backoff on connection errors and 429/5xx answers (POST included).
RETRY = Retry(
    total=5,
    backoff_factor=0.5,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,
    respect_retry_after_header=True,
    raise_on_status=False,
)


# --- argument checks -----------------------------------------------------------------


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


def _to_datetime(value: DatetimeLike, name: str, *, end: bool) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time.max if end else time.min)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:  # YYYY-MM-DD: a whole day
                moment = datetime.combine(date.fromisoformat(text), time.max if end else time.min)
            else:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as err:
            raise InvalidArgumentError(
                f"{name} must be a date or datetime (e.g. '2025-05-01' or "
                f"'2025-05-01T10:00:00Z'), got {value!r}"
            ) from err
    else:
        raise InvalidArgumentError(
            f"{name} must be a str, datetime.date or datetime.datetime, got {type(value).__name__}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def check_dates(start: DatetimeLike, end: DatetimeLike) -> tuple[datetime | None, datetime | None]:
    """Return ``(start, end)`` as UTC datetimes; a date-only ``end`` covers its whole day.

    Naive datetimes are taken as UTC.

    Raises
    ------
    InvalidArgumentError
        For an unparsable value or ``start`` after ``end``.

    Examples
    --------
    >>> check_dates("2025-05-01", "2025-05-31")[1].isoformat()
    '2025-05-31T23:59:59.999999+00:00'
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
            f"collection must be a collection id such as {config.DEFAULT_COLLECTION!r}, "
            f"got {collection!r}"
        )
    return collection


# --- the client --------------------------------------------------------------------------


def stac_client() -> Client:
    """Open a pystac-client ``Client`` on ``TERRASCOPE_STAC_URL`` (read now, never cached).

    It retries 429/5xx answers with backoff and times out after two minutes.

    Examples
    --------
    >>> client = stac_client()  # doctest: +SKIP
    >>> client.id  # doctest: +SKIP
    'terrascope'
    """
    url = config.stac_url()
    try:
        return Client.open(url, stac_io=StacApiIO(timeout=TIMEOUT, max_retries=RETRY))
    except (APIError, requests.RequestException) as err:
        raise _failure(err, f"Opening the STAC API at {url}") from err


def _failure(err: Exception, what: str) -> SearchError:
    """A SearchError for a failed STAC request, keeping the HTTP status when there was one."""
    status = getattr(err, "status_code", None)
    if status is None:
        return SearchError(
            f"{what} failed: the server could not be reached ({str(err)[:300]}). Check the "
            f"network or TERRASCOPE_STAC_URL (now {config.stac_url()})."
        )
    return SearchError(f"{what} failed with HTTP {status}: {str(err)[:500]}", status_code=status)


def list_collections() -> list[str]:
    """Return the ids of the catalogue's collections, sorted.

    Examples
    --------
    >>> "terrascope-s2-ndvi-v2" in list_collections()  # doctest: +SKIP
    True
    """
    client = stac_client()
    try:
        return sorted(c.id for c in client.get_collections())
    except (APIError, requests.RequestException) as err:
        raise _failure(err, f"Listing collections at {config.stac_url()}") from err


def _ensure_collection_exists(collection: str) -> None:
    available = list_collections()
    if collection not in available:
        raise CollectionNotFoundError(
            f"Unknown collection {collection!r} at {config.stac_url()}. "
            f"Available: {', '.join(available)}"
        )


def search(
    collection: str,
    bbox: BBoxLike | None = None,
    start: DatetimeLike = None,
    end: DatetimeLike = None,
    *,
    max_cloud_cover: float | None = None,
    limit: int | None = None,
    **query: Any,
) -> list[pystac.Item]:
    """Search a Terrascope collection; return every matching item, sorted by datetime.

    No tile is dropped: items of the same date (neighbouring tiles) are all returned
    and merged later, when stacking.

    Parameters
    ----------
    collection : str
        Collection id, e.g. ``"terrascope-s2-ndvi-v2"``.
    bbox : sequence of 4 floats, optional
        ``[west, south, east, north]`` in WGS84 degrees.
    start, end : str, date or datetime, optional
        Naive datetimes are UTC; a date-only ``end`` includes that whole day.
    max_cloud_cover : float, optional
        Upper bound (percent, inclusive) on ``eo:cloud_cover``, sent as a CQL2-JSON filter.
    limit : int, optional
        Return at most this many items (the earliest ones).
    **query
        Passed to :meth:`pystac_client.Client.search` (e.g. ``intersects``, ``ids``, ``filter``).

    Returns
    -------
    list of pystac.Item

    Raises
    ------
    InvalidArgumentError
        For a bad bbox, date, cloud cover or limit.
    CollectionNotFoundError
        When the collection does not exist (the message lists the available ones).
    SearchError
        When the STAC API fails.

    Examples
    --------
    >>> items = search("terrascope-s2-ndvi-v2", [5.0, 51.2, 5.1, 51.3],
    ...                "2025-05-01", "2025-06-01", max_cloud_cover=20)  # doctest: +SKIP
    """
    collection = _check_collection(collection)
    box = check_bbox(bbox) if bbox is not None else None
    first, last = check_dates(start, end)
    cloud = _check_cloud(max_cloud_cover)
    limit = _check_limit(limit)

    params: dict[str, Any] = dict(query)
    params["collections"] = [collection]
    if box is not None:
        params["bbox"] = list(box)
    interval = _interval(first, last)
    if interval is not None:
        params["datetime"] = interval
    if cloud is not None:
        cloud_filter = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, cloud]}
        user_filter = params.get("filter")
        params["filter"] = (
            {"op": "and", "args": [user_filter, cloud_filter]} if user_filter else cloud_filter
        )
        params["filter_lang"] = "cql2-json"
    if limit is not None:
        # The earliest `limit` items: ask the server to sort ascending and stop there.
        params.setdefault("sortby", [{"field": "properties.datetime", "direction": "asc"}])
        params["max_items"] = limit
    params.setdefault("limit", min(PAGE_SIZE, limit or PAGE_SIZE))

    client = stac_client()
    logger.debug("STAC search at %s: %s", config.stac_url(), params)
    try:
        items = list(client.search(**params).items())
    except (APIError, requests.RequestException) as err:
        if getattr(err, "status_code", None) in (400, 404):
            _ensure_collection_exists(collection)
        raise _failure(err, f"The STAC search at {config.stac_url()}") from err
    if not items:
        _ensure_collection_exists(collection)
    items.sort(
        key=lambda item: (item.datetime or datetime.min.replace(tzinfo=timezone.utc), item.id)
    )
    logger.info("Found %d item(s) in %s", len(items), collection)
    return items


def search_ndvi(
    bbox: BBoxLike,
    start: DatetimeLike,
    end: DatetimeLike,
    max_cloud_cover: float | None = 10.0,
    **kw: Any,
) -> list[pystac.Item]:
    """Search Sentinel-2 NDVI (``terrascope-s2-ndvi-v2``); see :func:`search`.

    Examples
    --------
    >>> items = search_ndvi([5.0, 51.2, 5.1, 51.3], "2025-05-01", "2025-06-01")  # doctest: +SKIP
    """
    return search("terrascope-s2-ndvi-v2", bbox, start, end, max_cloud_cover=max_cloud_cover, **kw)


# --- helpers on lists of items -------------------------------------------------------


def asset_urls(items: Iterable[pystac.Item], asset: str = "NDVI") -> list[str]:
    """Return the href of ``asset`` of each item that has it, in the items' order.

    Raises
    ------
    InvalidArgumentError
        When no item has that asset (the message lists the assets they have).

    Examples
    --------
    >>> asset_urls([])
    []
    """
    items = list(items)
    urls = [item.assets[asset].href for item in items if asset in item.assets]
    if items and not urls:
        keys = sorted({key for item in items for key in item.assets})
        raise InvalidArgumentError(
            f"No item has an asset {asset!r}; their assets are: {', '.join(keys)}"
        )
    if len(urls) < len(items):
        logger.warning(
            "%d of %d item(s) have no %r asset", len(items) - len(urls), len(items), asset
        )
    return urls


def item_dates(items: Iterable[pystac.Item]) -> list[str]:
    """Return the sorted, unique acquisition dates (UTC, ``YYYY-MM-DD``) of the items.

    Examples
    --------
    >>> item_dates([])
    []
    """
    return sorted({_item_day(item).isoformat() for item in items})


def _item_day(item: pystac.Item) -> date:
    moment = item.datetime
    if moment is None:
        start = item.common_metadata.start_datetime
        if start is None:
            raise InvalidArgumentError(f"Item {item.id!r} has no datetime nor start_datetime")
        moment = start
    return moment.astimezone(timezone.utc).date() if moment.tzinfo else moment.date()
