"""The read engine against a real nginx (not our sandbox's download server).

nginx serves the sandbox's COGs (symbolic links in a directory of this module) behind
HTTP Basic auth; a STAC API of the sandbox's world points the items at it. Each test
starts its own nginx (on a new port: the engine learns per origin whether multi-range
requests are answered, so no test inherits another's lesson) and checks what nginx's
own answers do to a read of the field cube: ``multipart/byteranges`` answers,
``max_ranges 1`` (the whole file for several ranges), injected 503s and dropped
connections (``return 444``), ``limit_conn`` and ``limit_req`` rejections, a wrong
password, a missing file, a 302 to an unauthenticated "object store", and ``login``'s
validation request. The cube read through nginx must equal, bit for bit, the cube read
from the sandbox; nginx's access log tells what happened on the wire.

The tests skip when no nginx is found (``TERRASCOPE_TEST_NGINX``, ``nginx`` on ``PATH``
or ``/usr/sbin/nginx``); ``scripts/run.sh test`` extracts Debian's package into the
virtualenv when none is installed.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from werkzeug.serving import make_server

import xarray_terrascope as xts
from xarray_terrascope.engine import origins, read
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.exceptions import AuthenticationError, ReadError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI, missing_tier
from ..support.nginx import ENV_NGINX, Nginx, Record, find_nginx


@pytest.fixture(autouse=True, scope="module")
def _nginx_binary():
    """Skip this module's tests when there is no nginx (fail them in CI)."""
    if find_nginx() is None:
        missing_tier(
            f"no nginx binary: set {ENV_NGINX}, put nginx on PATH, or run `bash "
            "scripts/run.sh test` (which extracts Debian's nginx package into the virtualenv)"
        )


DAYS = {"start": "2025-05-01", "end": "2025-06-10"}
ENDPOINTS = ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS")


def _field(**kw: Any) -> xr.Dataset:
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS, **kw)


def _clear_caches() -> None:
    headers.clear_memory()
    read.clear_reader_cache()
    origins.reset_limiters()


def _tifs(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.path.endswith(".tif")]


def _assert_exact(got: np.ndarray, reference: np.ndarray) -> None:
    np.testing.assert_array_equal(got, reference)
    assert got.dtype == reference.dtype and got.tobytes() == reference.tobytes()


class _Front:
    """WSGI app handing every request to the STAC API of the current test."""

    def __init__(self) -> None:
        self.app: Callable[..., Iterable[bytes]] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.app is None:
            raise RuntimeError("no STAC API is set")
        return self.app(environ, start_response)


@dataclass
class Field:
    """What the module's tests share.

    Attributes
    ----------
    root : pathlib.Path
        Directory tree of symbolic links to the field's COGs, as nginx serves it.
    files : dict
        ``{item id: path relative to root}`` of the field's items.
    reference : numpy.ndarray
        The field cube read from the sandbox (``decode=False``).
    username, password : str
        The account nginx accepts.
    stac_url : str
        The module's STAC API, pointing at the nginx of the current test.
    world : xarray_terrascope.testing.World
        The sandbox's world (for a STAC API per test).
    front : _Front
        The app behind ``stac_url``; ``front.app`` is the current test's STAC API.
    """

    root: Path
    files: dict[str, str]
    reference: np.ndarray
    username: str
    password: str
    stac_url: str
    world: Any
    front: _Front


@pytest.fixture(scope="module")
def field(terrascope_sandbox: Any) -> Iterator[Field]:
    """The field's COGs linked into a directory, its cube read from the sandbox, and a
    STAC API whose items each test points at its own nginx."""
    sandbox = terrascope_sandbox
    work = Path(tempfile.mkdtemp(prefix="terrascope-nginx-field-"))
    front = _Front()
    server = make_server("127.0.0.1", 0, front, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="nginx-stac", daemon=True)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
                mp.delenv(key, raising=False)
            for key in ENDPOINTS:
                mp.setenv(key, sandbox.env[key])
            mp.setenv("NETRC", str(work / "no-netrc"))
            mp.setenv("TERRASCOPE_CACHE_DIR", str(work / "cache"))
            _clear_caches()
            xts.login(sandbox.username, sandbox.password, validate=False)
            try:
                items = xts.search(NDVI, list(SAMPLE_FIELD), **DAYS)
                reference = _field().NDVI.load().values
            finally:
                xts.logout()
                _clear_caches()
        root = work / "root"
        files = {}
        for item in items:
            rel = item.assets["NDVI"].href.removeprefix(sandbox.download_url)
            link = root / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(sandbox.world.cog_path(item.id))
            files[item.id] = rel
        assert files, "the field must have items in DAYS"
        yield Field(
            root=root,
            files=files,
            reference=reference,
            username=sandbox.username,
            password=sandbox.password,
            stac_url=f"http://127.0.0.1:{server.server_port}/",
            world=sandbox.world,
            front=front,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def serve(
    field: Field, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Nginx]]:
    """Start nginx(es) for one test: ``serve(**Nginx keywords)`` starts one serving the
    field's root (unless ``root=`` is given) to the field's account, points the STAC API
    and the ``TERRASCOPE_*`` variables at it, and returns it. All are stopped after the
    test, the credentials forgotten and the engine's caches cleared."""
    from xarray_terrascope.testing.stac_api import StacApi

    started: list[Nginx] = []
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TERRASCOPE_STAC_URL", field.stac_url)
    xts.logout()
    _clear_caches()

    def start(root: Path | None = None, **kw: Any) -> Nginx:
        server = Nginx(root or field.root, {field.username: field.password}, **kw)
        started.append(server.start())
        field.front.app = StacApi(field.world, server.download_url)
        monkeypatch.setenv("TERRASCOPE_DOWNLOAD_URL", server.download_url)
        monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", server.origin)
        return server

    try:
        yield start
    finally:
        xts.logout()
        _clear_caches()
        field.front.app = None
        for server in started:
            server.stop()


def _read_through(field: Field) -> np.ndarray:
    """Log in (without the validation request) and read the field cube through nginx."""
    xts.login(field.username, field.password, validate=False)
    return _field(chunks={}).NDVI.load().values


def test_multipart_answers_give_the_exact_cube(field, serve):
    server = serve()
    _assert_exact(_read_through(field), field.reference)
    tifs = _tifs(server.records())
    assert tifs and {r.status for r in tifs} == {206}, Counter(r.status for r in tifs)
    multi = [r for r in tifs if r.ranges > 1]
    assert multi, "several ranges of a file must have gone in one request"
    assert all(r.has_auth for r in tifs), "credentials go with every request to the host"


def test_max_ranges_1_whole_file_answers_then_range_by_range(field, serve):
    server = serve(location="max_ranges 1;")
    _assert_exact(_read_through(field), field.reference)
    tifs = _tifs(server.records())
    whole = [r for r in tifs if r.status == 200]
    assert len(whole) == 1, "the first multi-range request goes alone and teaches the rest"
    assert whole[0].ranges > 1, "only multi-range requests get the whole file"
    single = [r for r in tifs if r.status == 206]
    assert single and all(r.ranges == 1 for r in single)
    assert single[-1].time > max(r.time for r in whole), "ranges are asked one by one after"
    sizes = {rel: (field.root / rel).stat().st_size for rel in field.files.values()}
    total = sum(sizes.values())
    sent = sum(r.bytes_sent for r in tifs)
    assert sent < 0.5 * total, f"{sent} bytes sent for files of {total} bytes in all"
    per_file = Counter(r.path for r in whole)
    assert max(per_file.values()) == 1, f"a file was sent whole more than once: {per_file}"


def test_503s_and_dropped_connections_leave_the_cube_exact(field, serve):
    # 10 % of requests answered 503 and 2 % dropped (``return 444``: nginx closes the
    # connection without a word) at random, and surely the request on each of nginx's
    # connections 2-5 (1 was the harness's check that nginx listens; a dropped
    # connection is closed, so these are four different requests): the package's first
    # header reads. Requests over 4 in flight are refused with 429.
    server = serve(
        http="""
        split_clients "${request_id}" $random_fault { 10% "503"; 2% "drop"; * ""; }
        map $connection $fault { ~^[2-5]$ "drop"; default $random_fault; }
        limit_conn_zone $binary_remote_addr zone=per_ip:1m;
        limit_conn_status 429;
        """,
        location="""
        if ($fault = "503") { return 503; }
        if ($fault = "drop") { return 444; }
        limit_conn per_ip 4;
        """,
        listen="sndbuf=4k",
    )
    _assert_exact(_read_through(field), field.reference)
    statuses = Counter(r.status for r in _tifs(server.records()))
    assert statuses[503] and statuses[444] >= 4, f"nginx must have injected faults: {statuses}"


def test_connection_limit_leaves_the_cube_exact(field, serve):
    # A small socket send buffer keeps answers going until the client has read them, so
    # requests overlap in nginx as over a real network and more than 4 get a 429.
    server = serve(
        http="""
        limit_conn_zone $binary_remote_addr zone=per_ip:1m;
        limit_conn_status 429;
        """,
        location="limit_conn per_ip 4;",
        listen="sndbuf=4k",
    )
    _assert_exact(_read_through(field), field.reference)
    statuses = Counter(r.status for r in _tifs(server.records()))
    assert statuses[429], f"more than 4 requests must have been in flight: {statuses}"
    assert set(statuses) == {206, 429}, statuses


def test_request_rate_limit_leaves_the_cube_exact(field, serve):
    server = serve(
        http="""
        limit_req_zone $binary_remote_addr zone=per_ip_rate:1m rate=20r/s;
        limit_req_status 429;
        """,
        location="limit_req zone=per_ip_rate burst=5 nodelay;",
    )
    _assert_exact(_read_through(field), field.reference)
    statuses = Counter(r.status for r in _tifs(server.records()))
    assert statuses[429], f"the rate limit must have been hit: {statuses}"
    # A client that keeps to the rate once refused has few refusals per answer; one that
    # only cuts its concurrency keeps sending faster than 20 per second (~3 refusals per
    # answer before the pacing of the limiter, and ReadError at 5 r/s).
    assert statuses[429] < statuses[206] / 2, f"too many refusals: {statuses}"


def test_wrong_password_is_an_authentication_error(field, serve):
    server = serve()
    xts.login(field.username, field.password + "-wrong", validate=False)
    with pytest.raises(AuthenticationError, match="401"):
        _field().NDVI.load()
    tifs = _tifs(server.records())
    assert tifs and {r.status for r in tifs} == {401}
    assert all(r.has_auth for r in tifs)


def test_missing_file_is_a_read_error_naming_the_item(field, serve, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    server = serve(root=root)  # nginx looks for the files at each request
    xts.login(field.username, field.password, validate=False)
    cube = _field()  # opening reads no file
    # a date's first file in mosaic order (its second is read only where it is empty)
    firsts = sorted(str(ids).split()[0] for ids in cube.item_ids.values)
    gone = firsts[len(firsts) // 2]
    for item_id, rel in field.files.items():
        if item_id != gone:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).symlink_to(field.root / rel)
    with pytest.raises(ReadError, match="404") as info:
        cube.NDVI.load()
    assert gone in str(info.value)
    assert getattr(info.value, "status_code", None) == 404
    missing = [r for r in server.records() if r.status == 404]
    assert missing and {r.path for r in missing} == {f"/download/{field.files[gone]}"}


def test_redirect_to_the_bucket_sends_no_credentials_there(field, serve):
    server = serve(redirect_to_bucket=True)
    _assert_exact(_read_through(field), field.reference)
    redirects = _tifs(server.records())
    assert redirects and {r.status for r in redirects} == {302}
    assert all(r.has_auth for r in redirects)
    served = _tifs(server.records("bucket"))
    assert served, "the files must have been read from the bucket"
    assert {r.status for r in served} <= {200, 206}
    assert all("X-Amz-Signature=" in r.query for r in served)
    with_auth = [r for r in served if r.has_auth]
    assert not with_auth, f"{len(with_auth)} requests carried credentials to the bucket"


def test_login_validates_against_a_root_answering_403(field, serve):
    server = serve()
    creds = xts.login(field.username, field.password)  # nginx: 403 (no directory index)
    assert creds.username == field.username
    with pytest.raises(AuthenticationError):
        xts.login(field.username, field.password + "-wrong")  # nginx: 401
    roots = [(r.status, r.has_auth) for r in server.records() if r.path == "/download/"]
    assert (403, True) in roots and (401, True) in roots, roots
