"""Searching the Terrascope STAC API: argument checks, search, collections, item helpers."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any, cast

import pystac
import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.item_search import ItemSearch
from pystac_client.stac_api_io import StacApiIO
from requests.adapters import HTTPAdapter

from xarray_terrascope import auth, config, http_policy
from xarray_terrascope.catalog.arguments import (
    BBoxLike,
    DatetimeLike,
    _check_cloud,
    _check_collection,
    _check_limit,
    _check_query,
    _interval,
    check_bbox,
    check_dates,
)
from xarray_terrascope.catalog.items import item_day, item_moment
from xarray_terrascope.exceptions import (
    CollectionNotFoundError,
    InvalidArgumentError,
    ProtectedCollectionError,
    SearchError,
    TerrascopeError,
)
from xarray_terrascope.options import get_options

__all__ = [
    "BBoxLike",
    "DatetimeLike",
    "asset_urls",
    "check_bbox",
    "check_dates",
    "item_dates",
    "list_collections",
    "search",
    "search_dicts",
    "search_ndvi",
    "stac_client",
]

logger = logging.getLogger(__name__)


#: Items per page: a year of one tile (~150 items) comes back in one round trip.
PAGE_SIZE = 500
#: Seconds to wait for the STAC API to connect and to answer.
TIMEOUT = (10.0, 120.0)


class _StacRetry(http_policy.PolicyRetry):
    """The search policy's urllib3 ``Retry``, but a 500 is retried once only.

    stac-fastapi answers 500 for a query its database rejects (pgstac: an unknown
    operator, a bad paging token), which no retry mends; 429/502/503/504 and dropped
    connections are the transient ones.
    """

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 500 and any(h.status == 500 for h in self.history or ()):
            return False
        return super().is_retry(method, status_code, has_retry_after)


#: Retries with exponential backoff on connection errors and 429/5xx answers (POST
#: included), as :data:`~xarray_terrascope.http_policy.SEARCH` says.
RETRY = http_policy.SEARCH.urllib3_retry(_StacRetry)


# --- the client --------------------------------------------------------------------------

_IN_STAC_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xarray_terrascope_stac_call", default=False
)


class _RetriesAtDebug(logging.Filter):
    """Demote urllib3's "Retrying (...)" warnings to DEBUG during this package's STAC calls.

    The retries stay (see :data:`RETRY`); a user waiting for a down server gets one
    clear :class:`SearchError` instead of a warning per attempt. Other code's urllib3
    warnings are left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _IN_STAC_CALL.get() and str(record.msg).startswith("Retrying"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logger.isEnabledFor(logging.DEBUG)
        return True


_retry_filter = _RetriesAtDebug()
logging.getLogger("urllib3.connectionpool").addFilter(_retry_filter)


@contextlib.contextmanager
def _stac_call() -> Iterator[None]:
    token = _IN_STAC_CALL.set(True)
    try:
        yield
    finally:
        _IN_STAC_CALL.reset(token)


class _BearerAdapter(HTTPAdapter):
    """The transport of requests to the STAC API's own origin when logged in with
    OpenID Connect: adds ``Authorization: Bearer`` (the access token as of the request,
    refreshed when about to expire) as the request leaves, after pystac-client has
    logged it. Mounted for that origin only, so a redirect elsewhere goes through
    another adapter, without it (requests itself drops the header when the host changes).
    """

    def __init__(self, origin: str, access: auth.RequestAuth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._origin = origin
        self._access = access

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.url is not None and config.origin(request.url) == self._origin:
            config.note_credentials_to(self._origin)
            request.headers["Authorization"] = self._access.header()
        return super().send(request, *args, **kwargs)


def _stac_io() -> StacApiIO:
    """pystac-client's I/O with the package's retries, and, after an OpenID Connect
    login, the access token for the STAC API's origin (Basic credentials never go
    there: they are for the download service)."""
    stac_io = StacApiIO(timeout=TIMEOUT, max_retries=RETRY)
    # no netrc or proxy credentials from the environment: requests would send a netrc
    # entry's password to the STAC API (and log it with pystac-client's DEBUG lines)
    stac_io.session.trust_env = False
    creds = auth.current_credentials()
    origin = config.origin(get_options().stac_url)
    if isinstance(creds, auth.TokenCredentials) and origin is not None:
        # on the scheme, not the origin: requests picks an adapter by the URL's text,
        # where the default port is not written ("https://stac.terrascope.be/search");
        # the adapter itself adds the token for that origin only
        scheme = origin.split(":", 1)[0]
        stac_io.session.mount(
            f"{scheme}://", _BearerAdapter(origin, auth.RequestAuth(creds), max_retries=RETRY)
        )
    return stac_io


def stac_client() -> Client:
    """Open a pystac-client ``Client`` on ``TERRASCOPE_STAC_URL`` (read now, never cached).

    It retries 429/5xx answers with backoff and times out after two minutes. After
    ``login(method="oidc")`` its requests to the STAC API carry the access token.

    Examples
    --------
    >>> client = stac_client()  # doctest: +SKIP
    >>> client.id  # doctest: +SKIP
    'terrascope'
    """
    url = get_options().stac_url
    try:
        with _stac_call():
            client = Client.open(url, stac_io=_stac_io())
    except (APIError, requests.RequestException) as err:
        raise _failure(err, "opening the STAC API") from err
    _accept_later_versions(client)
    return client


def _accept_later_versions(client: Client) -> None:
    """Count conformance to a later STAC API 1.x (``.../v1.1.0/item-search#sort``, as
    stac-fastapi 5+ declares it) as conformance: pystac-client 0.9 matches ``v1.0.*``
    only, and would warn ``DoesNotConformTo`` on every sorted search."""
    declared = client.get_conforms_to()
    for conformance in ConformanceClasses:
        later = re.compile(
            rf"https://api\.stacspec\.org/v1\.\d+\.[^/]*{re.escape(conformance.value)}$"
        )
        if not client.conforms_to(conformance) and any(later.match(u) for u in declared):
            client.add_conforms_to(conformance.name)


def _failure(err: Exception, what: str) -> TerrascopeError:
    """The :class:`SearchError` for a failed STAC request (``what``: "listing
    collections"), keeping the HTTP status when there was one."""
    status = getattr(err, "status_code", None)
    if status is None:
        detail = f" ({str(err)[:300]}). Check the network or TERRASCOPE_STAC_URL."
    elif status == 500:
        detail = (
            f": {str(err)[:500]} (stac-fastapi answers 500 when its database rejects a "
            "query: check the filter and the other search arguments)"
        )
    else:
        detail = f": {str(err)[:500]}"
    return http_policy.error_for(
        status,
        what=what,
        url=get_options().stac_url,
        credentials_sent=False,
        detail=detail,
        kind=SearchError,
    )


_ROLE = re.compile(r"role\s+'?\"?([^'\"\s]+)")


def _protected(collection: str, status: int, detail: str = "") -> ProtectedCollectionError:
    """The error of a 401/403 to a search of ``collection``; ``detail`` is the server's
    message, which may name the role."""
    creds = auth.current_credentials()
    tokens = isinstance(creds, auth.TokenCredentials)
    role = _ROLE.search(detail)
    needed = f"the role {role.group(1)!r}" if role else "the role that grants reading it"
    if status == 403:
        why = (
            f"the account {creds.username!r} lacks {needed}"
            if tokens and creds is not None
            else f"the access token lacks {needed}"
        ) + "; ask Terrascope for access to this collection"
    elif tokens:
        why = (
            "the access token was refused (the login may have ended): log in again with "
            "xarray_terrascope.login(method='oidc')"
        )
    else:
        why = (
            "it is one of Terrascope's protected collections, which need an OIDC access "
            f"token with {needed}: log in with xarray_terrascope.login(method='oidc') (Basic "
            "credentials are for the download service only)"
        )
    return ProtectedCollectionError(
        f"The STAC API at {get_options().stac_url} refused to search {collection!r} (HTTP "
        f"{status}): {why}.",
        status_code=status,
    )


def list_collections() -> list[str]:
    """Return the ids of the catalogue's collections, sorted.

    Examples
    --------
    >>> "terrascope-s2-ndvi-v2" in list_collections()  # doctest: +SKIP
    True
    """
    client = stac_client()
    try:
        with _stac_call():
            return sorted(c.id for c in client.get_collections())
    except (APIError, requests.RequestException) as err:
        raise _failure(err, "listing collections") from err


def _ensure_collection_exists(collection: str) -> None:
    available = list_collections()
    if collection not in available:
        raise CollectionNotFoundError(
            f"Unknown collection {collection!r} at {get_options().stac_url}. "
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
    items = _run(collection, bbox, start, end, max_cloud_cover, limit, query, as_dicts=False)
    return cast("list[pystac.Item]", items)


def search_dicts(
    collection: str,
    bbox: BBoxLike | None = None,
    start: DatetimeLike = None,
    end: DatetimeLike = None,
    *,
    max_cloud_cover: float | None = None,
    limit: int | None = None,
    **query: Any,
) -> list[dict[str, Any]]:
    """:func:`search`, returning the items as the API sent them (dicts, sorted alike).

    For the engine, which plans from dicts: building a :class:`pystac.Item` copies and
    migrates the whole dict and makes an object per link, which takes most of the time
    of opening a cube of a few hundred items. ``ds.terrascope.items`` builds the Items
    when asked.
    """
    found = _run(collection, bbox, start, end, max_cloud_cover, limit, query, as_dicts=True)
    return cast("list[dict[str, Any]]", found)


def _run(
    collection: str,
    bbox: BBoxLike | None,
    start: DatetimeLike,
    end: DatetimeLike,
    max_cloud_cover: float | None,
    limit: int | None,
    query: dict[str, Any],
    *,
    as_dicts: bool,
) -> list[pystac.Item] | list[dict[str, Any]]:
    collection = _check_collection(collection)
    _check_query(query)
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
        # terra-stac-api (OpenSearch) needs the full path; pgstac takes either name.
        prop = {"property": "properties.eo:cloud_cover"}
        cloud_filter = {"op": "<=", "args": [prop, cloud]}
        user_filter = _json_filter(params.get("filter"))
        params["filter"] = (
            {"op": "and", "args": [user_filter, cloud_filter]} if user_filter else cloud_filter
        )
        params["filter_lang"] = "cql2-json"
    elif isinstance(params.get("filter"), str):
        _text_filter(params)
    if limit is not None:
        # The earliest `limit` items: ask the server to sort ascending and stop there;
        # tiles of one acquisition share a datetime, so the id orders them the same on
        # every server.
        params.setdefault(
            "sortby",
            [
                {"field": "properties.datetime", "direction": "asc"},
                {"field": "id", "direction": "asc"},
            ],
        )
        params["max_items"] = limit
    params.setdefault("limit", min(PAGE_SIZE, limit or PAGE_SIZE))

    logger.debug("STAC search at %s: %s", get_options().stac_url, params)
    try:
        with _stac_call():
            items = _found(params, as_dicts=as_dicts)
    except (APIError, requests.RequestException) as err:
        status = getattr(err, "status_code", None)
        if status in (400, 404):
            _ensure_collection_exists(collection)
        if status in (401, 403):
            raise _protected(collection, status, str(err)[:500]) from err
        raise _failure(err, "the STAC search") from err
    if not items:
        _ensure_collection_exists(collection)
    items.sort(key=lambda item: (item_moment(item), item["id"] if as_dicts else item.id))
    logger.info("Found %d item(s) in %s", len(items), collection)
    return items


def _text_filter(params: dict[str, Any]) -> None:
    """A ``filter`` given as text: its JSON, or a CQL2-text filter sent by GET.

    A POST body carries CQL2-JSON only (stac-fastapi refuses text there with a 400);
    CQL2 text goes in a GET's query string, which has no room for ``intersects``."""
    text = params["filter"]
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            params["filter"], params["filter_lang"] = parsed, "cql2-json"
            return
    if "intersects" in params:
        raise InvalidArgumentError(
            f"filter={text!r} is CQL2 text, which a STAC API takes only in a GET search, "
            "and a GET search cannot carry intersects: give the filter as CQL2-JSON (a "
            "dict), or search by bbox"
        )
    params["filter_lang"] = "cql2-text"
    params["method"] = "GET"


def _json_filter(given: Any) -> dict[str, Any] | None:
    """The user's ``filter`` as CQL2-JSON, to be joined with the cloud-cover condition
    (a dict, or its JSON text); a CQL2-text filter cannot be joined to JSON."""
    if given is None or isinstance(given, dict):
        return given
    if isinstance(given, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(given)
            if isinstance(parsed, dict):
                return parsed
    raise InvalidArgumentError(
        f"max_cloud_cover is sent as a CQL2-JSON filter, and filter={given!r} is not "
        "CQL2-JSON (a dict such as {'op': '=', 'args': [{'property': 'platform'}, "
        "'sentinel-2a']}): give the filter as CQL2-JSON, or put the cloud-cover condition "
        "in your own filter and leave max_cloud_cover out"
    )


#: STAC API roots whose ``/search`` answered 404 or 405 and whose landing page links
#: their search elsewhere: searched there from then on.
_no_direct_search: set[str] = set()


def _found(params: dict[str, Any], *, as_dicts: bool) -> list[Any]:
    """The items of a search with ``params`` (pystac-client's ``ItemSearch`` arguments).

    Item dicts (``as_dicts``, the engine's way) are searched by a POST to the API's
    ``/search`` (where stac-fastapi, and so Terrascope, serves it) without reading the
    landing page first: that spares a round trip, and pystac's parsing of the landing
    page as a Catalog, whose first one in a process looks up every installed pystac
    extension (50-90 ms). When ``/search`` answers 404 or 405, the search goes through
    the landing page's search link, as pystac-client does; and from then on for that
    API when the link names another URL. pystac Items are searched that way always
    (their root is the Client).
    """
    root = get_options().stac_url
    direct = f"{root.rstrip('/')}/search"
    client = None
    if as_dicts and root not in _no_direct_search:
        search = ItemSearch(url=direct, stac_io=_stac_io(), client=None, **params)
        pages = search.pages_as_dicts()
        try:
            first = next(pages, None)
        except APIError as err:
            if getattr(err, "status_code", None) not in (404, 405):
                raise
            # Served elsewhere, or an answer about this search (an unknown collection,
            # say): the landing page tells which; its search link then has its say.
            client = stac_client()
            link = client.get_search_link()
            if link is not None and link.href.rstrip("/") != direct:
                logger.debug("%s answered %s; searching at %s", direct, err, link.href)
                _no_direct_search.add(root)
        else:
            return list(_features(itertools.chain([first] if first else [], pages)))
    found = (client or stac_client()).search(**params)
    features = _features(found.pages_as_dicts())
    if as_dicts:
        return list(features)
    return [pystac.Item.from_dict(f, root=found.client, preserve_dict=False) for f in features]


def _features(pages: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The items of a search's pages, each once (by id), in the order they came.

    Pages that overlap (a server sorting on a value many items share) repeat items:
    each is kept once, and a warning says how many came twice. A page that brings no
    new item means the paging does not move forward (a ``next`` link back to a page
    already read): that is an error, not an endless loop.
    """
    seen: set[str] = set()
    repeated = 0
    for number, page in enumerate(pages, start=1):
        features = page.get("features", [])
        new = [feature for feature in features if feature.get("id") not in seen]
        if features and not new:
            raise SearchError(
                f"The STAC API's paging does not move forward: page {number} of the search "
                f"holds only items of the pages before it ({len(seen)} items so far). "
                "Search a shorter period or a smaller bbox, so that fewer pages are needed, "
                "and report it to the service."
            )
        repeated += len(features) - len(new)
        seen.update(feature.get("id") for feature in new)
        yield from new
    if repeated:
        logger.warning(
            "The STAC API sent %d item(s) twice across the pages of a search (pages that "
            "overlap): each is kept once",
            repeated,
        )


def search_ndvi(
    bbox: BBoxLike,
    start: DatetimeLike,
    end: DatetimeLike,
    max_cloud_cover: float | None = 10.0,
    **kw: Any,
) -> list[pystac.Item]:
    """Search Sentinel-2 NDVI (``terrascope-s2-ndvi-v2``); see :func:`search`.

    Raises
    ------
    InvalidArgumentError
        When ``bbox`` is None (a bbox is required: the whole catalogue is not an area).

    Examples
    --------
    >>> items = search_ndvi([5.0, 51.2, 5.1, 51.3], "2025-05-01", "2025-06-01")  # doctest: +SKIP
    """
    if bbox is None:
        raise InvalidArgumentError(
            "search_ndvi needs a bbox [west, south, east, north] in degrees; for another "
            "area selection use search('terrascope-s2-ndvi-v2', intersects=...)"
        )
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
    return sorted({item_day(item).isoformat() for item in items})
