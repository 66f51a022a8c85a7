"""Who receives credentials, checked on the wire for both read paths (the async engine and
GDAL's warper) with one table of origins: only the exact allowed origin, never another
port, host name or scheme, whatever ``~/.netrc`` or GDAL settings left in the
environment say."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.engine import read
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI
from ..support.recording import RecordingProxy

DAY = "2025-06-10"
NETRC_PASSWORD = "netrc-password-must-stay-home"
LEFTOVER_SECRETS = (
    "leftover-userpwd",
    "leftover-bearer",
    "leftover-header-file",
    "leftover-cookie",
)


@pytest.fixture
def proxies(logged_in):
    """Two recording proxies (two ports) in front of the sandbox's download server."""
    auth = (logged_in.username, logged_in.password)
    with (
        RecordingProxy(logged_in.download_url, auth) as main,
        RecordingProxy(logged_in.download_url, auth) as other,
    ):
        yield main, other


@pytest.fixture
def home_netrc(tmp_path, monkeypatch):
    """A ``~/.netrc`` naming both loopback host names, as a user of curl (and of this
    package's login) would have; ``NETRC`` names it too (curl reads that variable)."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(
        f"machine 127.0.0.1 login netrc-user password {NETRC_PASSWORD}\n"
        f"machine localhost login netrc-user password {NETRC_PASSWORD}\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(netrc))


def _items_at(sandbox, origin: str):
    """The field's items of one day, their hrefs moved to ``origin``."""
    items = []
    for item in xts.search(NDVI, list(SAMPLE_FIELD), DAY, DAY):
        moved = item.clone()
        asset = moved.assets["NDVI"]
        asset.href = asset.href.replace(sandbox.download_origin, origin)
        items.append(moved)
    return items


#: (allowed hosts, where the hrefs point, whether that origin gets the credentials);
#: ``{main}`` and ``{other}`` are the two proxies' ports.
ORIGINS = {
    "exact origin": ("http://127.0.0.1:{main}", "http://127.0.0.1:{main}", True),
    "another port": ("http://127.0.0.1:{main}", "http://127.0.0.1:{other}", False),
    "another host name": ("http://127.0.0.1:{main}", "http://localhost:{main}", False),
    "plain http, https allowed": ("127.0.0.1:{main}", "http://127.0.0.1:{main}", False),
}
#: The async engine reads at the native grid; a resampling other than nearest at another
#: resolution goes through GDAL's warper.
PATHS = {"async": {}, "gdal": {"resolution": 20, "resampling": "bilinear"}}


def _read(sandbox, monkeypatch, proxies, case: str, path: str) -> np.ndarray:
    main, other = proxies
    allowed, href_origin, _ = ORIGINS[case]
    ports = {"main": main.port, "other": other.port}
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", allowed.format(**ports))
    items = _items_at(sandbox, href_origin.format(**ports))
    read.clear_reader_cache()
    ds = xr.open_dataset(items, engine="terrascope", bbox=list(SAMPLE_FIELD), **PATHS[path])
    return ds.NDVI.load().values


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ORIGINS)
def test_credentials_reach_the_exact_origin_only(
    logged_in, proxies, home_netrc, monkeypatch, case, path
):
    values = _read(logged_in, monkeypatch, proxies, case, path)
    assert int(np.isfinite(values).sum()) > 0, "the proxy serves the pixels to anyone"
    seen = proxies[0].records() + proxies[1].records()
    assert seen, "the reads must go through the proxies"
    expected = base64.b64encode(f"{logged_in.username}:{logged_in.password}".encode()).decode()
    sends = ORIGINS[case][2]
    for request in seen:
        assert request.authorization == (f"Basic {expected}" if sends else None), request
    netrc_pair = base64.b64encode(f"netrc-user:{NETRC_PASSWORD}".encode()).decode()
    assert not any(netrc_pair in str(r.headers) for r in seen)


@pytest.fixture
def gdal_leftovers(tmp_path, monkeypatch):
    """GDAL settings another tool (leafmap writes GDAL_HTTP_USERPWD and a header file with
    a bearer token) left in the environment."""
    header_file = tmp_path / "gdal-headers.txt"
    header_file.write_text(
        "Authorization: Bearer leftover-header-file\nX-Leftover: leftover-header-file\n"
    )
    monkeypatch.setenv("GDAL_HTTP_USERPWD", "someone:leftover-userpwd")
    monkeypatch.setenv("GDAL_HTTP_AUTH", "BEARER")
    monkeypatch.setenv("GDAL_HTTP_BEARER", "leftover-bearer")
    monkeypatch.setenv("GDAL_HTTP_HEADER_FILE", str(header_file))
    monkeypatch.setenv("GDAL_HTTP_COOKIE", "session=leftover-cookie")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["exact origin", "another port"])
def test_gdal_settings_left_in_the_environment_reach_no_request(
    logged_in, proxies, gdal_leftovers, monkeypatch, case, path
):
    values = _read(logged_in, monkeypatch, proxies, case, path)
    assert int(np.isfinite(values).sum()) > 0
    seen = proxies[0].records() + proxies[1].records()
    assert seen
    for request in seen:
        text = str(request.headers)
        assert not any(secret in text for secret in LEFTOVER_SECRETS), request
        if ORIGINS[case][2]:
            assert request.authorization is not None
            assert request.authorization.startswith("Basic "), request
        else:
            assert request.authorization is None, request


def test_gdal_cache_answers_no_open_without_credentials(logged_in):
    """After the package's GDAL reads (a warped read with credentials), a plain
    ``rasterio.open(url)`` of the same file without credentials in the same process is
    refused as by the server (GDAL's ``/vsicurl/`` cache would have answered it)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start=DAY, end=DAY, **PATHS["gdal"]
    )
    assert int(np.isfinite(ds.NDVI.load().values).sum()) > 0
    url = xts.search(NDVI, list(SAMPLE_FIELD), DAY, DAY)[0].assets["NDVI"].href
    logged_in.log.clear()
    with (
        rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_NETRC="NO"),
        pytest.raises(RasterioIOError, match="not recognized"),  # the login page
    ):
        rasterio.open(url).close()
    asked = [r for r in logged_in.log.records() if r.path.endswith(".tif")]
    assert asked and not any(r.has_credentials for r in asked)


def _secret_forms(sandbox) -> list[str]:
    pair = f"{sandbox.username}:{sandbox.password}"
    return [sandbox.password, base64.b64encode(pair.encode()).decode()]


def _locals_text(err: BaseException) -> str:
    """A failed read as ``traceback`` prints it with every frame's local variables (as
    Sentry, rich and ``pytest --showlocals`` do), causes included."""
    import traceback

    return "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format())


@pytest.mark.parametrize("fault", ["404", "drop"])
@pytest.mark.parametrize("path", PATHS)
def test_a_failed_read_shows_no_secret_in_its_traceback_locals(logged_in, monkeypatch, fault, path):
    """A read that fails (a missing file; connections dropped until the retries run
    out) raises an error whose frames, printed with their locals, hold the credentials'
    identity only: no password, no ``Authorization`` value."""

    items = _items_at(logged_in, logged_in.download_origin)
    if fault == "404":
        for item in items:
            item.assets["NDVI"].href = item.assets["NDVI"].href.replace(".tif", "-gone.tif")
    else:
        from xarray_terrascope import auth
        from xarray_terrascope.engine import gdal, transport

        quick = dataclasses.replace(transport.RETRY, attempts=2, backoff_base=0.01)
        monkeypatch.setattr(transport, "RETRY", quick)
        monkeypatch.setattr(gdal, "RETRY", dataclasses.replace(gdal.RETRY, attempts=1))
        monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY", "0")
        logged_in.download.drop_rate = 1.0
    ds = xr.open_dataset(items, engine="terrascope", bbox=list(SAMPLE_FIELD), **PATHS[path])
    with pytest.raises(xts.TerrascopeError) as info:
        ds.NDVI.load()
    text = _locals_text(info.value)
    assert "access" in text or "creds" in text, "the frames of the read are in the text"
    for secret in _secret_forms(logged_in):
        assert secret not in text


def test_caches_key_by_the_credentials_identity_not_their_value(logged_in):
    """After reads, no key of the tile store or of the read-ahead holds the secret."""
    from xarray_terrascope.engine import aio

    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", chunks={}, chunksize=128, start=DAY, end=DAY
    )
    ds.NDVI.load()
    tiles = aio.engine().tiles
    keys = list(tiles._waiting) + list(tiles._taken)
    assert keys, "windows of 128 px share tiles: the store keeps some"
    for secret in _secret_forms(logged_in):
        assert secret not in repr(keys)


SIGNATURE = "X-Amz-Signature=sig-must-stay-secret"


def _chain_text(err: BaseException) -> str:
    """Every message of an error and of the errors it chains."""
    import traceback

    return "".join(traceback.TracebackException.from_exception(err).format())


@pytest.mark.parametrize("path", PATHS)
def test_presigned_signatures_appear_in_no_error_message(logged_in, path):
    """A presigned-looking href whose file is missing: the error and its causes (GDAL's
    messages quote the URL) show the URL without its query string."""
    items = _items_at(logged_in, logged_in.download_origin)
    for item in items:
        asset = item.assets["NDVI"]
        asset.href = asset.href.replace(".tif", "-gone.tif") + "?" + SIGNATURE
    ds = xr.open_dataset(items, engine="terrascope", bbox=list(SAMPLE_FIELD), **PATHS[path])
    with pytest.raises(xts.TerrascopeError) as info:
        ds.NDVI.load()
    text = _chain_text(info.value)
    assert "-gone.tif" in text, text
    assert "sig-must-stay-secret" not in text, text


def test_a_decode_error_shows_no_signature(tmp_path):
    """A file that is no GeoTIFF, behind a presigned-looking URL: the package's error and
    async-tiff's cause show the URL without its query string."""
    from xarray_terrascope.engine import aio
    from xarray_terrascope.engine import source as cog_source
    from xarray_terrascope.exceptions import ReadError

    from ..support.loopback import Redirector

    with Redirector() as server:  # answers 64 zero bytes: no TIFF
        url = f"http://127.0.0.1:{server.port}/bad.tif?{SIGNATURE}"
        with pytest.raises(ReadError) as info:
            aio.run(cog_source.fetch_header(url, "ITEM-7", None))
    text = _chain_text(info.value)
    assert "ITEM-7" in text and "bad.tif" in text, text
    assert "sig-must-stay-secret" not in text, text
