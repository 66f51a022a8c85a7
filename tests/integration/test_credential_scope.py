"""Where credentials may go: exact origins, never a redirect target, UTF-8 on the wire."""

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
CREDS = xts.Credentials("alice", "pw")


@pytest.mark.parametrize(
    ("hosts", "url", "sends"),
    [
        # a bare entry means https on its default port
        ("services.terrascope.be", "https://services.terrascope.be/download/x.tif", True),
        ("services.terrascope.be", "https://services.terrascope.be:443/download/x.tif", True),
        ("services.terrascope.be", "http://services.terrascope.be/download/x.tif", False),
        ("services.terrascope.be", "http://services.terrascope.be:8080/x.tif", False),
        ("services.terrascope.be", "https://services.terrascope.be:8443/x.tif", False),
        ("services.terrascope.be", "https://SERVICES.terrascope.be/x.tif", True),
        ("services.terrascope.be:8443", "https://services.terrascope.be:8443/x.tif", True),
        ("services.terrascope.be:8443", "https://services.terrascope.be/x.tif", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/download/x.tif", True),
        ("http://127.0.0.1:8080", "https://127.0.0.1:8080/download/x.tif", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8081/download/x.tif", False),
        ("https://a.example, http://b.example", "http://b.example/x.tif", True),
        ("https://a.example, http://b.example", "http://a.example/x.tif", False),
        # user information or a backslash: never, whatever the allow-list says
        ("services.terrascope.be", "https://u:p@services.terrascope.be/x.tif", False),
        ("services.terrascope.be", "https://services.terrascope.be@evil.example/x.tif", False),
        ("services.terrascope.be", "https://services.terrascope.be\\@evil.example/x.tif", False),
        ("services.terrascope.be", "ftp://services.terrascope.be/x.tif", False),
    ],
)
def test_credentials_go_to_the_exact_origin_only(monkeypatch, hosts, url, sends):
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", hosts)
    options = xts.gdal_options(url, CREDS)
    assert (options["GDAL_HTTP_USERPWD"] == "alice:pw") is sends, url
    assert options["GDAL_HTTP_AUTH"] == ("BASIC" if sends else "ANYSAFE"), url


def test_the_default_allow_list_is_the_download_url_origin(monkeypatch):
    monkeypatch.delenv("TERRASCOPE_DOWNLOAD_HOSTS", raising=False)
    monkeypatch.delenv("TERRASCOPE_DOWNLOAD_URL", raising=False)
    assert xts.get_options().allowed_origins == {"https://services.terrascope.be:443"}
    assert (
        xts.gdal_options("http://services.terrascope.be/download/x.tif", CREDS)["GDAL_HTTP_USERPWD"]
        == ""
    )


@pytest.mark.parametrize("entry", ["https://host/path", "https://u:p@host", "host:notaport"])
def test_an_allow_list_entry_that_is_no_origin_is_refused(monkeypatch, entry):
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", entry)
    with pytest.raises(InvalidArgumentError, match="TERRASCOPE_DOWNLOAD_HOSTS"):
        xts.get_options().allowed_origins  # noqa: B018 (checked when used)


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


@pytest.mark.parametrize("username", ["a:b", "line\nbreak"])
def test_usernames_basic_auth_cannot_carry_are_refused(username):
    with pytest.raises(AuthenticationError, match="username"):
        xts.Credentials(username, "pw")


def test_items_opened_from_a_list_keep_their_hrefs(logged_in):
    """The forged-href test above must fail for the href, not for the item list."""
    item = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-10", "2025-06-10")[0]
    assert isinstance(item, pystac.Item)
    ds = xr.open_dataset([item], engine="terrascope", bbox=list(SAMPLE_FIELD))
    assert ds.sizes["time"] == 1
