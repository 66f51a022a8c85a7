"""Search against the sandbox STAC API, checked against the synthetic world's ground truth."""

from __future__ import annotations

import importlib
import logging
from datetime import UTC, date, datetime

import pytest
import shapely.geometry
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.exceptions import (
    AuthenticationError,
    CollectionNotFoundError,
    InvalidArgumentError,
    ProtectedCollectionError,
    SearchError,
)
from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox

from ..support.helpers import FAPAR, NDVI

# the package exports the function `search`, which shadows the module of the same name
search_module = importlib.import_module("xarray_terrascope.catalog.search")


def _truth(sandbox, collection, bbox=None, start=None, end=None, max_cloud=None):
    """Ids of the world's items matching, computed without the STAC API."""
    found = []
    box = shapely.geometry.box(*bbox) if bbox else None
    for item in sandbox.world.item_dicts(collection, sandbox.download_url):
        when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        if start and when < start:
            continue
        if end and when > end:
            continue
        if box is not None and not shapely.geometry.shape(item["geometry"]).intersects(box):
            continue
        if max_cloud is not None and item["properties"]["eo:cloud_cover"] > max_cloud:
            continue
        found.append(item["id"])
    return set(found)


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_bbox_and_inclusive_dates_match_the_world(sandbox_urls):
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-05-31")
    expected = _truth(
        sandbox_urls, NDVI, SAMPLE_FIELD, _utc(2025, 5, 1), _utc(2025, 5, 31, 23, 59, 59)
    )
    assert {i.id for i in items} == expected
    assert len(items) == len(expected)  # no duplicates
    # every tile kept: the field lies in the overlap of 31UFS and 31UGS
    tiles = {i.id.split("_")[2] for i in items}
    assert {"31UFS", "31UGS"} <= tiles
    days = [i.datetime for i in items]
    assert days == sorted(days)


def test_date_only_end_includes_that_whole_day(sandbox_urls):
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-01-01", "2025-12-31")
    last_day = items[-1].datetime.date()
    assert items[-1].datetime.hour > 0  # acquisitions happen around 10:40 UTC
    same_day = xts.search(NDVI, SAMPLE_FIELD, last_day.isoformat(), last_day.isoformat())
    assert same_day and all(i.datetime.date() == last_day for i in same_day)
    as_date = xts.search(NDVI, SAMPLE_FIELD, last_day, last_day)
    assert {i.id for i in as_date} == {i.id for i in same_day}
    # naive datetime = UTC; an instant before the acquisition excludes it
    before = xts.search(
        NDVI,
        SAMPLE_FIELD,
        datetime(last_day.year, last_day.month, last_day.day),
        datetime(last_day.year, last_day.month, last_day.day, 9, 0),
    )
    assert before == []


def test_cloud_filter_matches_the_world(sandbox_urls):
    start, end = _utc(2025, 3, 1), _utc(2025, 8, 31, 23, 59, 59)
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-03-01", "2025-08-31", max_cloud_cover=20)
    assert {i.id for i in items} == _truth(sandbox_urls, NDVI, SAMPLE_FIELD, start, end, 20)
    assert all(i.properties["eo:cloud_cover"] <= 20 for i in items)
    everything = _truth(sandbox_urls, NDVI, SAMPLE_FIELD, start, end)
    assert len(items) < len(everything), "the world must have cloudy items for this to test"


def test_search_ndvi_defaults_to_ten_percent_clouds(sandbox_urls):
    items = xts.search_ndvi(SAMPLE_FIELD, "2025-04-01", "2025-09-30")
    assert items and all(i.properties["eo:cloud_cover"] <= 10 for i in items)
    assert all(i.collection_id == NDVI for i in items)


def test_pagination_over_several_pages_returns_everything(sandbox_urls, monkeypatch):
    monkeypatch.setattr(search_module, "PAGE_SIZE", 40)
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-01-01", "2025-12-31")
    expected = _truth(
        sandbox_urls, NDVI, SAMPLE_FIELD, _utc(2025, 1, 1), _utc(2025, 12, 31, 23, 59, 59)
    )
    assert len(expected) > 3 * 40
    assert [i.id for i in items] != [] and {i.id for i in items} == expected
    assert len(items) == len(expected)


def test_limit_returns_the_earliest_items(sandbox_urls):
    everything = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-30")
    first = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-30", limit=5)
    assert [i.id for i in first] == [i.id for i in everything[:5]]


def test_other_collection_is_not_hard_wired_to_ndvi(sandbox_urls):
    items = xts.search(FAPAR, SAMPLE_FIELD, "2025-06-01", "2025-06-30")
    assert items and all("FAPAR" in i.assets for i in items)
    assert {i.id for i in items} == _truth(
        sandbox_urls, FAPAR, SAMPLE_FIELD, _utc(2025, 6, 1), _utc(2025, 6, 30, 23, 59, 59)
    )


def test_list_collections_and_item_helpers(sandbox_urls):
    assert {NDVI, FAPAR} <= set(xts.list_collections())
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-15")
    urls = xts.asset_urls(items, "NDVI")
    assert len(urls) == len(items)
    assert all(u.startswith(sandbox_urls.download_url + "Sentinel2/NDVI_V2/2025/06/") for u in urls)
    dates = xts.item_dates(items)
    assert dates == sorted(set(dates)) and len(dates) < len(items)  # same-date tiles
    with pytest.raises(InvalidArgumentError, match="NDVI"):
        xts.asset_urls(items, "B04")


def test_unknown_collection_lists_the_available_ones(sandbox_urls):
    with pytest.raises(CollectionNotFoundError) as info:
        xts.search("terrascope-s2-nvdi-v2", SAMPLE_FIELD, "2025-05-01", "2025-05-31")
    assert NDVI in str(info.value) and FAPAR in str(info.value)


def test_a_changed_stac_url_is_seen_by_the_next_call(sandbox_urls, monkeypatch):
    with Sandbox(seed=7) as other:
        monkeypatch.setenv("TERRASCOPE_STAC_URL", other.stac_url)
        items = xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
        assert items and all(i.assets["NDVI"].href.startswith(other.download_url) for i in items)
    monkeypatch.setenv("TERRASCOPE_STAC_URL", sandbox_urls.stac_url)
    items = xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    assert all(i.assets["NDVI"].href.startswith(sandbox_urls.download_url) for i in items)


def test_unreachable_stac_api_is_a_search_error(sandbox_urls, monkeypatch):
    monkeypatch.setenv("TERRASCOPE_STAC_URL", "http://127.0.0.1:1/")
    monkeypatch.setattr(search_module, "RETRY", 0)
    with pytest.raises(SearchError, match=r"127\.0\.0\.1:1"):
        xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bbox": [5.0, 51.2, 5.1]}, "4 numbers"),
        ({"bbox": "5,51,6,52"}, "4 numbers"),
        ({"bbox": [5.0, 51.2, "east", 51.3]}, "numbers only"),
        ({"bbox": [6.0, 51.2, 5.0, 51.3]}, "west .* must be less than east"),
        ({"bbox": [5.0, 51.3, 5.1, 51.2]}, "south .* must be less than north"),
        ({"bbox": [5.0, 51.2, 190.0, 51.3]}, r"longitudes must be within \[-180, 180\]"),
        ({"bbox": [5.0, -91.0, 5.1, 51.3]}, r"latitudes must be within \[-90, 90\]"),
        ({"start": "2025-06-01", "end": "2025-05-01"}, "start .* is after end"),
        ({"start": "first of may"}, "start must be a valid date"),
        ({"end": 20250501}, "end must be a str"),
        ({"max_cloud_cover": 101}, "max_cloud_cover must be from 0 to 100"),
        ({"max_cloud_cover": "low"}, "max_cloud_cover must be a number"),
        ({"limit": 0}, "limit must be a positive int"),
        ({"collection": ""}, "collection must be a collection id"),
    ],
)
def test_each_bad_argument_has_its_own_error(sandbox_urls, kwargs, match):
    args = {"collection": NDVI, "bbox": SAMPLE_FIELD, "start": "2025-05-01", "end": "2025-05-31"}
    args.update(kwargs)
    sandbox_urls.log.clear()
    with pytest.raises(InvalidArgumentError, match=match) as info:
        xts.search(args.pop("collection"), **args)
    assert isinstance(info.value, ValueError)
    if "bbox" in kwargs:
        assert "bbox" in str(info.value)


def test_date_objects_and_timezones(sandbox_urls):
    first, last = search_module.check_dates(date(2025, 5, 1), "2025-05-31T12:00:00+02:00")
    assert first == _utc(2025, 5, 1)
    assert last == _utc(2025, 5, 31, 10, 0)


def test_retries_of_an_unreachable_stac_api_log_at_debug_only(sandbox_urls, monkeypatch, caplog):
    """The retries stay, but the user sees one SearchError, not a warning per attempt."""
    from urllib3.util.retry import Retry

    monkeypatch.setenv("TERRASCOPE_STAC_URL", "http://127.0.0.1:1/")
    retry = Retry(total=2, backoff_factor=0, allowed_methods=None, raise_on_status=False)
    monkeypatch.setattr(search_module, "RETRY", retry)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SearchError, match=r"127\.0\.0\.1:1"):
        xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    retries = [r for r in caplog.records if str(r.msg).startswith("Retrying")]
    assert len(retries) >= 2, "the retries must still happen"
    assert all(r.levelno == logging.DEBUG for r in retries)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_500_is_retried_once_and_named(sandbox_urls):
    """stac-fastapi answers 500 for a query its database rejects: one retry, then an
    error that says so (not five retries and a quarter of a minute of backoff)."""
    sandbox_urls.stac.fail_next(5, status=500)
    with pytest.raises(SearchError, match=r"HTTP 500.*database rejects") as info:
        xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    assert info.value.status_code == 500
    assert sandbox_urls.stac.requests == 2
    sandbox_urls.stac.reset_faults()
    sandbox_urls.stac.fail_next(1, status=500)
    assert xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")


def test_a_protected_collection_is_named_not_retried(sandbox_urls):
    """Terrascope keeps some collections for OIDC roles: its STAC API answers 401 with
    ``WWW-Authenticate: Bearer``. That is an authentication problem of this collection,
    said at once, not a failed search retried five times."""
    import requests

    protected = FAPAR  # protected here
    sandbox_urls.stac.protected = {protected}
    answer = requests.post(
        f"{sandbox_urls.env['TERRASCOPE_STAC_URL']}search",
        json={"collections": [protected]},
        timeout=10,
    )
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
    before = sandbox_urls.stac.requests
    with pytest.raises(
        ProtectedCollectionError, match=rf"{protected}.*HTTP 401.*access token"
    ) as info:
        xts.search(protected, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    assert isinstance(info.value, AuthenticationError) and isinstance(info.value, SearchError)
    assert info.value.status_code == 401
    assert sandbox_urls.stac.requests - before == 2  # the landing page and one search
    xts.login(sandbox_urls.username, sandbox_urls.password)
    with pytest.raises(ProtectedCollectionError, match=protected):
        xr.open_dataset(
            list(SAMPLE_FIELD),
            engine="terrascope",
            collection=protected,
            start="2025-06-01",
            end="2025-06-10",
        )
    # a search of another collection still works, and a Bearer token the issuer did not
    # issue is refused as Keycloak refuses it: 401 (403 with a valid token lacking the
    # role: tests/integration/test_oidc.py)
    assert xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    refused = requests.post(
        f"{sandbox_urls.env['TERRASCOPE_STAC_URL']}search",
        json={"collections": [protected]},
        headers={"Authorization": "Bearer some-token"},
        timeout=10,
    )
    assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]


def test_busy_stac_api_answers_are_retried(sandbox_urls):
    sandbox_urls.stac.fail_next(3, status=503)
    got = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-10")
    start, end = _utc(2025, 5, 1), _utc(2025, 6, 10, 23, 59, 59)
    assert {i.id for i in got} == _truth(sandbox_urls, NDVI, SAMPLE_FIELD, start, end)
    assert sandbox_urls.stac.injected == 3


def test_a_later_stac_api_version_is_taken_as_conforming(sandbox_urls):
    """stac-fastapi 5+ declares ``.../v1.1.0/item-search#sort``; pystac-client 0.9 knows
    ``v1.0.*`` only: a sorted search must neither warn nor sort differently."""
    import warnings

    from xarray_terrascope.testing.stac_api import CONFORMANCE

    expected = [i.id for i in xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-10", limit=5)]
    sandbox_urls.stac.conforms_to = [u.replace("/v1.0.0/", "/v1.1.0/") for u in CONFORMANCE]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-10", limit=5)
    assert [i.id for i in got] == expected


def test_query_extension_filters_like_cql2(sandbox_urls):
    """Terrascope's API takes the Query extension too (``query=``), beside CQL2."""
    start, end = _utc(2025, 3, 1), _utc(2025, 8, 31, 23, 59, 59)
    got = xts.search(
        NDVI, SAMPLE_FIELD, "2025-03-01", "2025-08-31", query={"eo:cloud_cover": {"lte": 20}}
    )
    assert {i.id for i in got} == _truth(sandbox_urls, NDVI, SAMPLE_FIELD, start, end, 20)
    both = xts.search(
        NDVI,
        SAMPLE_FIELD,
        "2025-03-01",
        "2025-08-31",
        max_cloud_cover=20,
        query={"platform": {"eq": "sentinel-2a"}},
    )
    assert both and {i.properties["platform"] for i in both} == {"sentinel-2a"}
    assert {i.id for i in both} < {i.id for i in got}
