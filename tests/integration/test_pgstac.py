"""The package's search against a real stac-fastapi-pgstac (not our sandbox's STAC API).

One stac-fastapi-pgstac on PostgreSQL + PostGIS (:class:`tests.support.pgstac.Pgstac`) holds
the sandbox's collections and items, their assets on the sandbox's download server,
for the whole module. Each test runs the package's public functions with
``TERRASCOPE_STAC_URL`` at the sandbox's own STAC API, then at pgstac (the download
server and the credentials stay the sandbox's), and checks that both give the same
items in the same order: bbox and dates, a date-only end, the cloud filter, ``limit``,
paging, ``intersects``, ``ids``, the collections, the opened cube (bit for bit), and
the error for a query pgstac's database rejects (HTTP 500). The sandbox's STAC API is
lenient where pgstac is not (pgstac answers some bad queries with 500, pages
``/collections`` by 10, leaves ``numberMatched`` out); these tests keep the package
honest against the real server.

The tests skip when there is no stac-fastapi-pgstac virtualenv (``TERRASCOPE_TEST_PGSTAC``)
or no PostgreSQL 15 / PostGIS; ``scripts/run.sh test`` installs both.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any, TypeVar

import numpy as np
import pytest
import shapely.geometry
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.engine import origins, read
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.exceptions import CollectionNotFoundError, SearchError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import FAPAR, NDVI, missing_tier
from ..support.pgstac import ENV_PGSTAC, Pgstac, unavailable


@pytest.fixture(autouse=True, scope="module")
def _pgstac_available():
    """Skip this module's tests when stac-fastapi-pgstac cannot run here (fail them in CI)."""
    reason = unavailable()
    if reason is not None:
        missing_tier(f"no stac-fastapi-pgstac: {reason}")


# the package exports the function `search`, which shadows the module of the same name
search_module = importlib.import_module("xarray_terrascope.catalog.search")

#: Collections with no items loaded beside the world's three: 15 in all, so that
#: pgstac's ``/collections`` (10 a page, latest loaded first) has a second page, with
#: ``aa-extra-00`` on it.
EXTRA_COLLECTIONS = [f"aa-extra-{i:02d}" for i in range(12)]
#: A small polygon in the field (tiles 31UFS and 31UGS).
POLYGON = {
    "type": "Polygon",
    "coordinates": [[[5.9, 51.24], [5.96, 51.24], [5.93, 51.27], [5.9, 51.24]]],
}

T = TypeVar("T")


@pytest.fixture(scope="module")
def pgstac(terrascope_sandbox: Any) -> Iterator[Pgstac]:
    """stac-fastapi-pgstac holding the session sandbox's catalogue (and
    :data:`EXTRA_COLLECTIONS`): one start and one load for the module, stopped after its
    last test (not idling through the rest of the session)."""
    reason = unavailable()
    if reason is not None:
        missing_tier(f"no stac-fastapi-pgstac: {reason}")
    template = terrascope_sandbox.world.collections[NDVI]
    extra = [dict(template, id=cid, title=f"Empty collection {cid}") for cid in EXTRA_COLLECTIONS]
    server = Pgstac(os.environ[ENV_PGSTAC], terrascope_sandbox, collections=extra).start()
    try:
        yield server
    finally:
        server.stop()


class Both:
    """Runs a call with ``TERRASCOPE_STAC_URL`` at the sandbox, then at pgstac."""

    def __init__(self, sandbox: Any, pgstac: Pgstac, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sandbox = sandbox
        self.pgstac = pgstac
        self.monkeypatch = monkeypatch

    def at_sandbox(self) -> None:
        self.monkeypatch.setenv("TERRASCOPE_STAC_URL", self.sandbox.env["TERRASCOPE_STAC_URL"])

    def at_pgstac(self) -> None:
        self.monkeypatch.setenv("TERRASCOPE_STAC_URL", self.pgstac.url)

    def __call__(self, call: Callable[[], T]) -> tuple[T, T]:
        """``(result at the sandbox, result at pgstac)``."""
        self.at_sandbox()
        reference = call()
        self.at_pgstac()
        return reference, call()

    def ids(self, *args: Any, **kw: Any) -> list[str]:
        """Ids of ``xts.search(*args, **kw)``, checked the same, in the same order, at
        the sandbox and at pgstac."""
        reference, got = self(lambda: [item.id for item in xts.search(*args, **kw)])
        assert got == reference, _difference(reference, got)
        return got


def _difference(reference: list[str], got: list[str]) -> str:
    missing, extra = sorted(set(reference) - set(got)), sorted(set(got) - set(reference))
    return (
        f"sandbox {len(reference)} items, pgstac {len(got)}; only at the sandbox "
        f"{missing[:5]}, only at pgstac {extra[:5]}"
        + ("; same items, another order" if not missing and not extra else "")
    )


@pytest.fixture
def both(sandbox_urls: Any, pgstac: Pgstac, monkeypatch: pytest.MonkeyPatch) -> Both:
    """The sandbox's endpoints (no credentials); each call picks the STAC API."""
    return Both(sandbox_urls, pgstac, monkeypatch)


# --- search ---------------------------------------------------------------------------


def test_bbox_and_dates_give_the_same_items_and_metadata(both):
    def dicts() -> list[dict[str, Any]]:
        out = []
        for item in xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-05-31"):
            d = item.to_dict(transform_hrefs=False)
            d.pop("links")  # each server links to itself
            out.append(d)
        return out

    reference, got = both(dicts)
    assert [d["id"] for d in got] == [d["id"] for d in reference]
    assert len(reference) > 10, "May must have items over the field"
    assert got == reference  # properties, geometry, assets with their hrefs, extensions
    hrefs = [d["assets"]["NDVI"]["href"] for d in got]
    assert all(h.startswith(both.sandbox.download_url) for h in hrefs)
    assert all(d["properties"]["datetime"].startswith("2025-05-") for d in got)


def test_date_only_end_includes_the_whole_day(both):
    year = both.ids(NDVI, SAMPLE_FIELD, "2025-01-01", "2025-12-31")
    world = both.sandbox.world
    assert len(year) == len(set(year)) > 100
    last = max(world.item(i)["datetime_obj"] for i in year).date()
    day = both.ids(NDVI, SAMPLE_FIELD, last.isoformat(), last.isoformat())
    assert day, f"the items of {last} (acquired after midnight) must be found"
    assert {world.item(i)["datetime_obj"].date() for i in day} == {last}
    as_dates = both.ids(NDVI, SAMPLE_FIELD, date(2025, 1, 1), last)
    assert as_dates == year


def test_another_collection_without_bbox(both):
    day = both.ids(FAPAR, None, "2025-06-10", "2025-06-10")
    world = both.sandbox.world
    expected = sorted(
        i["id"]
        for i in world.item_dicts(FAPAR, "")
        if i["properties"]["datetime"].startswith("2025-06-10")
    )
    assert sorted(day) == expected and len(expected) >= 2, (day, expected)


def test_max_cloud_cover_is_an_inclusive_upper_bound(both):
    days = (NDVI, SAMPLE_FIELD, "2025-03-01", "2025-08-31")
    everything = both.ids(*days)
    clouds = sorted(both.sandbox.world.item(i)["cloud_cover"] for i in everything)
    threshold = clouds[len(clouds) // 2]
    clear = both.ids(*days, max_cloud_cover=threshold)
    expected = [i for i in everything if both.sandbox.world.item(i)["cloud_cover"] <= threshold]
    assert clear == expected
    assert 0 < len(clear) < len(everything)
    at_threshold = [i for i in clear if both.sandbox.world.item(i)["cloud_cover"] == threshold]
    assert at_threshold, "an item at exactly the threshold is kept"
    none = both.ids(*days, max_cloud_cover=0)
    assert none and all(both.sandbox.world.item(i)["cloud_cover"] == 0 for i in none)


def test_a_cql2_text_filter_gives_the_same_items(both):
    """stac-fastapi takes CQL2 text in a GET search only (a POST answers 400): the same
    items as the JSON form, at both servers."""
    days = (NDVI, SAMPLE_FIELD, "2025-03-01", "2025-08-31")
    as_json = both.ids(*days, filter={"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]})
    as_text = both.ids(*days, filter="eo:cloud_cover <= 30", filter_lang="cql2-text")
    assert as_text == as_json and 0 < len(as_json) < len(both.ids(*days))


def test_limit_returns_the_earliest_items_ties_broken_by_id(both):
    days = (NDVI, SAMPLE_FIELD, "2025-05-01", "2025-06-30")
    everything = both.ids(*days)

    def moment(item_id: str) -> Any:
        return both.sandbox.world.item(item_id)["datetime_obj"]

    moments = [moment(i) for i in everything]
    # a limit that cuts an acquisition (tiles of one datetime) in two
    cut = next(n for n in range(3, len(moments)) if moments[n - 1] == moments[n])
    first = both.ids(*days, limit=cut)
    assert first == everything[:cut]
    one = both.ids(NDVI, None, None, None, limit=1)
    earliest = min(both.sandbox.world.item_ids(NDVI), key=lambda i: (moment(i), i))
    assert one == [earliest]


def test_paging_returns_every_item(both, monkeypatch):
    days = (NDVI, SAMPLE_FIELD, "2025-06-01", "2025-07-31")
    unpaged = both.ids(*days)
    cloudy = both.ids(*days, max_cloud_cover=50)
    monkeypatch.setattr(search_module, "PAGE_SIZE", 7)
    before = len(both.pgstac.searches())
    paged = both.ids(*days)
    pages = both.pgstac.searches()[before:]
    assert paged == unpaged and len(paged) > 3 * 7
    needed = math.ceil(len(paged) / 7)
    assert needed <= len(pages) <= needed + 1, pages  # + an empty last page, at most
    assert {r.status for r in pages} == {200}
    assert both.ids(*days, max_cloud_cover=50) == cloudy  # the filter goes with each page
    limited = both.ids(*days, limit=17)  # the sort and the limit go with each page
    assert limited == unpaged[:17]


def test_intersects_a_polygon(both):
    found = both.ids(NDVI, None, "2025-06-01", "2025-06-30", intersects=POLYGON)
    assert found
    shape = shapely.geometry.shape(POLYGON)
    geometries = {i["id"]: i["geometry"] for i in both.sandbox.world.item_dicts(NDVI, "")}
    for item_id in found:
        assert shapely.geometry.shape(geometries[item_id]).intersects(shape), item_id
    tiles = {i.split("_")[2] for i in found}
    assert tiles == {"31UFS", "31UGS"}, tiles
    boxed = both.ids(NDVI, shape.bounds, "2025-06-01", "2025-06-30")
    assert set(found) <= set(boxed)


def test_ids(both):
    june = both.ids(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-30")
    wanted = [june[-1], june[0], june[len(june) // 2]]
    found = both.ids(NDVI, None, None, None, ids=wanted)
    assert found == [i for i in june if i in wanted]
    assert both.ids(NDVI, None, None, None, ids=["S2A_20990101T000000_31UFS_NDVI_10M_V210"]) == []


def test_list_collections_pages_through_pgstac(both):
    before = len(both.pgstac.records())
    reference, got = both(xts.list_collections)
    world = sorted(both.sandbox.world.collections)
    assert reference == world
    assert got == sorted(world + EXTRA_COLLECTIONS)
    pages = [r for r in both.pgstac.records()[before:] if r.path == "/collections"]
    assert len(pages) >= 2, f"15 collections come 10 a page: {pages}"


def test_empty_results_and_unknown_collections_as_at_the_sandbox(both):
    # no items: the package checks that the collection exists, in every page of them
    assert both.ids(NDVI, [10.0, 40.0, 11.0, 41.0], "2025-06-01", "2025-06-30") == []
    both.at_pgstac()
    assert xts.search("aa-extra-00", SAMPLE_FIELD, "2025-06-01", "2025-06-30") == []

    def misspelt() -> str:
        with pytest.raises(CollectionNotFoundError) as info:
            xts.search("terrascope-s2-nvdi-v2", SAMPLE_FIELD, "2025-05-01", "2025-05-31")
        return str(info.value).split(". Available: ")[1]

    reference, got = both(misspelt)
    assert NDVI in reference and NDVI in got and "aa-extra-00" in got


def test_a_query_the_database_rejects_is_a_search_error_after_one_retry(both):
    both.at_pgstac()
    before = len(both.pgstac.searches())
    with pytest.raises(SearchError, match="database rejects a query") as info:
        xts.search(
            NDVI,
            SAMPLE_FIELD,
            "2025-06-01",
            "2025-06-10",
            filter={"op": "frobnicate", "args": [{"property": "eo:cloud_cover"}, 1]},
            filter_lang="cql2-json",
        )
    assert info.value.status_code == 500
    assert not isinstance(info.value, CollectionNotFoundError)
    sent = both.pgstac.searches()[before:]
    assert 1 <= len(sent) <= 2 and {r.status for r in sent} == {500}, sent


# --- the cube -------------------------------------------------------------------------


def _clear_caches() -> None:
    headers.clear_memory()
    read.clear_reader_cache()
    origins.reset_limiters()


def test_open_dataset_gives_the_same_cube(both, logged_in):
    def cube() -> xr.Dataset:
        _clear_caches()
        ds = xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-05-01", end="2025-06-10"
        )
        return ds.load()

    reference, got = both(cube)
    assert reference.sizes["time"] > 5
    for name in reference.variables:
        np.testing.assert_array_equal(got[name].values, reference[name].values, err_msg=name)
    assert set(got.variables) == set(reference.variables)
    values = got[next(iter(got.data_vars))].values
    assert np.isnan(values).any() and np.isfinite(values).any()
    per_call = {"stac_url", "terrascope_items_key"}
    assert got.attrs["stac_url"] == both.pgstac.url
    for ds in (reference, got):
        for key in per_call:
            ds.attrs.pop(key, None)
    xr.testing.assert_identical(got, reference)
