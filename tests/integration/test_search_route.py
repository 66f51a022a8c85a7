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
from xarray_terrascope.exceptions import SearchError
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
