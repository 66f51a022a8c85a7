"""Which STAC requests opening a cube makes: the search alone, at the API's ``/search``;
an API that serves its search elsewhere is found through its landing page."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import xarray as xr
from werkzeug.serving import WSGIRequestHandler, make_server

import xarray_terrascope as xts
from xarray_terrascope.exceptions import InvalidArgumentError, SearchError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import FAPAR

DAYS = {"start": "2025-05-01", "end": "2025-05-31"}


def _open() -> xr.Dataset:
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **DAYS)


def test_opening_a_cube_makes_one_stac_request_the_search(logged_in):
    """The engine POSTs its search to ``/search`` without reading the landing page first
    (stac-fastapi serves it there): one round trip, not two."""
    before = logged_in.stac.requests
    ds = _open()
    assert ds.sizes["time"] > 0
    assert logged_in.stac.requests - before == 1


class _SearchElsewhere:
    """The sandbox's STAC API with its search moved to ``/api/search``: ``/search``
    answers 404, and the landing page's search links say where it went. Records each
    request's method and path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        self.seen.append((environ["REQUEST_METHOD"], path))
        if path == "/search":
            start_response("404 NOT FOUND", [("Content-Type", "application/json")])
            return [b'{"code": "NotFound", "description": "no such endpoint"}']
        if path == "/api/search":
            environ = {**environ, "PATH_INFO": "/search"}
            return self.app(environ, start_response)
        if path != "/":
            return self.app(environ, start_response)
        status: list[Any] = []
        body = b"".join(self.app(environ, lambda *args: status.append(args)))
        landing = json.loads(body)
        for link in landing["links"]:
            if link["rel"] == "search":
                link["href"] = link["href"].replace("/search", "/api/search")
        out = json.dumps(landing).encode()
        headers = [(k, v) for k, v in status[0][1] if k.lower() != "content-length"]
        start_response(status[0][0], [*headers, ("Content-Length", str(len(out)))])
        return [out]


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` served on a loopback port; yields its root URL."""

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def search_elsewhere(logged_in, monkeypatch) -> Iterator[_SearchElsewhere]:
    app = _SearchElsewhere(logged_in.stac)
    with _serving(app) as url:
        monkeypatch.setenv("TERRASCOPE_STAC_URL", url)
        yield app


def test_an_api_whose_search_is_elsewhere_is_searched_through_its_landing_page(
    logged_in, search_elsewhere
):
    """``/search`` answering 404: the search goes where the landing page's search link
    says, with the same items; the next search there goes straight that way."""
    with xts.set_options(stac_url=logged_in.env["TERRASCOPE_STAC_URL"]):  # at /search
        expected = [str(v) for v in _open().item_ids.values]
    ds = _open()
    assert [str(v) for v in ds.item_ids.values] == expected
    assert search_elsewhere.seen == [("POST", "/search"), ("GET", "/"), ("POST", "/api/search")]
    search_elsewhere.seen.clear()
    _open()
    assert search_elsewhere.seen == [("GET", "/"), ("POST", "/api/search")]


class _RefusesOneCollection:
    """The sandbox's STAC API, its search where it belongs, answering 404 to searches of
    one collection (as a server may for a collection it does not know)."""

    def __init__(self, app: Any, collection: str) -> None:
        self.app = app
        self.collection = collection
        self.seen: list[tuple[str, str]] = []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        if environ["PATH_INFO"] == "/search" and environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ = {**environ, "wsgi.input": io.BytesIO(body)}
            if self.collection in json.loads(body).get("collections", []):
                start_response("404 NOT FOUND", [("Content-Type", "application/json")])
                return [b'{"code": "NotFoundError", "description": "no such collection"}']
        return self.app(environ, start_response)


def test_a_404_about_one_search_keeps_the_direct_route(logged_in, monkeypatch):
    """A 404 from ``/search`` where the landing page says the search is at ``/search``
    is about that search, not the route: it is raised, and the next cube's search goes
    straight to ``/search`` again."""
    app = _RefusesOneCollection(logged_in.stac, FAPAR)
    with _serving(app) as url:
        monkeypatch.setenv("TERRASCOPE_STAC_URL", url)
        with pytest.raises(SearchError, match="404"):
            xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", collection=FAPAR, **DAYS)
        assert ("GET", "/") in app.seen  # the landing page was asked where search is
        app.seen.clear()
        assert _open().sizes["time"] > 0
        assert app.seen == [("POST", "/search")]


class _BadPaging:
    """The sandbox's STAC API, its search pages altered: ``repeat`` sends page 1 again
    for every later page (a ``next`` link back to the start), ``overlap`` starts every
    later page with the last item of the page before (pages of an unstable sort)."""

    def __init__(self, app: Any, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.searches = 0
        self._first: bytes | None = None
        self._last: dict | None = None

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if environ["PATH_INFO"] != "/search" or environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)
        self.searches += 1
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if self.mode == "repeat":
            self._first = self._first or body
            body = self._first
        environ = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        status: list[Any] = []
        page = json.loads(b"".join(self.app(environ, lambda *args: status.append(args))))
        features = page.get("features", [])
        if self.mode == "overlap" and self._last is not None and features:
            page["features"] = [self._last, *features]
        if features:
            self._last = features[-1]
        out = json.dumps(page).encode()
        headers = [(k, v) for k, v in status[0][1] if k.lower() != "content-length"]
        start_response(status[0][0], [*headers, ("Content-Length", str(len(out)))])
        return [out]


@pytest.fixture
def paged(logged_in, monkeypatch):
    """Searches of 3 items a page, through a :class:`_BadPaging` of the given mode."""
    from xarray_terrascope.catalog import search

    monkeypatch.setattr(search, "PAGE_SIZE", 3)

    @contextlib.contextmanager
    def through(mode: str) -> Iterator[_BadPaging]:
        app = _BadPaging(logged_in.stac, mode)
        with _serving(app) as url, xts.set_options(stac_url=url):
            yield app

    return through


def test_paging_that_does_not_move_forward_is_an_error_not_an_endless_search(paged):
    for search in (
        lambda: xts.search("terrascope-s2-ndvi-v2", SAMPLE_FIELD, **DAYS),
        _open,
    ):
        with paged("repeat") as api, pytest.raises(SearchError, match="does not move forward"):
            search()
        assert api.searches == 2


def test_items_repeated_across_pages_are_kept_once(paged, caplog):
    expected = [item.id for item in xts.search("terrascope-s2-ndvi-v2", SAMPLE_FIELD, **DAYS)]
    assert len(expected) > 6, "several pages of 3"
    with paged("overlap") as api:
        found = [item.id for item in xts.search("terrascope-s2-ndvi-v2", SAMPLE_FIELD, **DAYS)]
        ds = _open()
    assert api.searches > 2
    assert found == expected
    assert sorted(" ".join(str(v) for v in ds.item_ids.values).split()) == sorted(expected)
    assert "twice across the pages" in caplog.text


def test_a_filter_joins_max_cloud_cover_as_cql2_json_or_is_refused(logged_in):
    """A CQL2-JSON filter (a dict, or its JSON text) is joined with the cloud cover
    condition; CQL2 text cannot be joined to JSON: refused before any request."""
    platform = {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]}
    kw = {"max_cloud_cover": 50, **DAYS}
    as_dict = xts.search("terrascope-s2-ndvi-v2", SAMPLE_FIELD, filter=platform, **kw)
    as_text = xts.search("terrascope-s2-ndvi-v2", SAMPLE_FIELD, filter=json.dumps(platform), **kw)
    assert [i.id for i in as_dict] == [i.id for i in as_text]
    assert as_dict and {i.properties["platform"] for i in as_dict} == {"sentinel-2a"}
    assert all(i.properties["eo:cloud_cover"] <= 50 for i in as_dict)
    with pytest.raises(InvalidArgumentError, match="CQL2-JSON"):
        xts.search(
            "terrascope-s2-ndvi-v2",
            SAMPLE_FIELD,
            filter="platform = 'sentinel-2a'",
            filter_lang="cql2-text",
            **kw,
        )
