"""Where credentials go on real reads: never to hrefs hiding their destination nor to a
redirect target, UTF-8 on the wire (the allow-list alone: ``unit/auth/test_scope.py``)."""

from __future__ import annotations

import base64

import numpy as np
import pystac
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.exceptions import AuthenticationError, InvalidArgumentError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI, tif_records

TEN_DAYS = {"start": "2025-06-01", "end": "2025-06-10"}


@pytest.mark.parametrize(
    "href",
    [
        "http://user:pw@{host}/download/x.tif",
        "http://{host}\\@127.0.0.2/download/x.tif",
    ],
)
def test_hrefs_hiding_their_destination_are_refused_before_any_request(logged_in, href):
    item = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-10", "2025-06-10")[0]
    forged = item.clone()
    forged.assets["NDVI"].href = href.format(host=logged_in.download_host)
    logged_in.log.clear()
    with pytest.raises(InvalidArgumentError, match="not a plain URL"):
        xr.open_dataset([forged], engine="terrascope")
    assert logged_in.log.records() == []


def test_a_redirect_to_an_object_store_never_carries_the_password(logged_in):
    """A 302 from the allowed download host to an S3-presigned-looking URL on another
    loopback host (X-Amz-Date = now): GDAL must not remember the target and send the
    password there with later range requests."""
    bucket = logged_in.start_bucket()
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **TEN_DAYS)
    ndvi = ds.NDVI.load()
    assert int(np.isfinite(ndvi.values).sum()) > 0, "the redirected reads must give pixels"
    reached = [r for r in bucket.log.records() if r.path.endswith(".tif")]
    assert len(reached) >= len(ds.time), "every file must be read from the bucket"
    assert not any(r.has_credentials for r in reached)
    redirects = tif_records(logged_in)
    assert redirects and {r.status for r in redirects} == {302}
    # and the values equal a read without the redirect
    logged_in.reset()
    direct = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **TEN_DAYS).NDVI.load()
    xr.testing.assert_identical(ndvi, direct)


@pytest.fixture
def unicode_account(logged_in):
    """A second account whose password is not ASCII (Latin-1 letters and a euro sign)."""
    password = "pässwörd-€-ünïcode"
    logged_in.download.users["jürgen"] = password
    yield "jürgen", password
    del logged_in.download.users["jürgen"]


def test_non_ascii_passwords_work_for_login_and_reads(logged_in, unicode_account):
    user, password = unicode_account
    logged_in.log.clear()
    creds = xts.login(user, password)  # validated with one request: UTF-8 like the reads
    assert creds.username == user
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **TEN_DAYS)
    assert int(np.isfinite(ds.NDVI.load().values).sum()) > 0
    users = {r.user for r in logged_in.log.records() if r.has_credentials}
    assert users == {user}


def test_a_wrong_non_ascii_password_never_shows_in_the_error(logged_in, unicode_account):
    user, _password = unicode_account
    wrong = "falsch-€-pässwort"
    with pytest.raises(AuthenticationError) as info:
        xts.login(user, wrong)
    text = repr(info.value) + str(info.value) + repr(info.value.__cause__)
    for secret in (wrong, base64.b64encode(f"{user}:{wrong}".encode()).decode()):
        assert secret not in text


def test_items_opened_from_a_list_keep_their_hrefs(logged_in):
    """The forged-href test above must fail for the href, not for the item list."""
    item = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-10", "2025-06-10")[0]
    assert isinstance(item, pystac.Item)
    ds = xr.open_dataset([item], engine="terrascope", bbox=list(SAMPLE_FIELD))
    assert ds.sizes["time"] == 1


def test_a_signed_url_never_shows_in_a_gdal_read_error(logged_in, monkeypatch):
    """A file read through GDAL (here: bilinear resampling) that is not a raster fails;
    GDAL's message quotes the file with its query string (``bad.tif?X-Amz-Signature=``),
    which neither the error nor the exceptions it chains may show."""
    import dataclasses
    import traceback

    from aiohttp import web

    from xarray_terrascope.engine import gdal

    from ..support.loopback import LoopbackServer

    secret = "sig-must-stay-secret"
    monkeypatch.setattr(gdal, "RETRY", dataclasses.replace(gdal.RETRY, attempts=2))

    async def not_a_raster(request: web.Request) -> web.Response:
        body = b"II*\x00\x08\x00\x00\x00" + b"\0" * 50
        return web.Response(body=body, content_type="application/octet-stream")

    with LoopbackServer(not_a_raster) as server:
        items = []
        for item in xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-10", "2025-06-10"):
            moved = item.clone()
            moved.assets["NDVI"].href = server.url("/bad.tif") + f"?X-Amz-Signature={secret}"
            items.append(moved)
        ds = xr.open_dataset(
            items, engine="terrascope", bbox=list(SAMPLE_FIELD), resolution=20,
            resampling="bilinear",
        )  # fmt: skip
        with pytest.raises(xts.TerrascopeError) as info:
            ds.NDVI.load()
    shown = "".join(traceback.TracebackException.from_exception(info.value).format())
    assert "bad.tif" in shown and secret not in shown


def test_stac_requests_never_carry_a_netrc_password(logged_in, tmp_path, monkeypatch, caplog):
    """A netrc entry for the STAC API's host is not the package's to send: requests
    would add it to every STAC request (and pystac-client's DEBUG lines would show it)."""
    import logging

    from ..support.loopback import HOST

    secret = "netrc-password-must-stay-home"
    netrc = tmp_path / "netrc"
    netrc.write_text(
        f"machine {HOST} login netrc-user password {secret}\ndefault login d password {secret}\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    caplog.set_level(logging.DEBUG)
    seen: list[str | None] = []
    app = logged_in.stac

    def recording(environ, start_response):
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        return app(environ, start_response)

    from .test_search_route import _serving

    with _serving(recording) as url, xts.set_options(stac_url=url):
        assert xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-10", "2025-06-10")
        xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", start="2025-06-10", end="2025-06-10"
        )
    assert seen and seen == [None] * len(seen)
    pair = base64.b64encode(f"netrc-user:{secret}".encode()).decode()
    assert secret not in caplog.text and pair not in caplog.text
