"""Which origins may receive credentials: the ``TERRASCOPE_DOWNLOAD_HOSTS`` allow-list,
exact origins only, as the GDAL options of a URL show it."""

from __future__ import annotations

import pytest

import xarray_terrascope as xts
from xarray_terrascope.exceptions import InvalidArgumentError

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
