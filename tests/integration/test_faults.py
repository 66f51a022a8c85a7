"""Faults on the read path (async engine and GDAL path): the cube stays exact or the error
names the item and the HTTP status; refusals are AuthenticationError, never NaN. (The
limiter alone: ``unit/engine/test_limiter.py``; the transport against servers a test
starts, ``Retry-After`` included: ``unit/engine/test_transport.py``.)"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.engine import origins, read
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.engine.limiter import INITIAL_CONNECTIONS
from xarray_terrascope.exceptions import AuthenticationError, ReadError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI, tif_records

DAYS = {"start": "2025-05-01", "end": "2025-06-10"}


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    """Every test starts with no header anywhere: first requests of files do happen."""
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    headers.clear_memory()
    read.clear_reader_cache()
    origins.reset_limiters()
    yield
    headers.clear_memory()
    read.clear_reader_cache()


@pytest.fixture
def gdal_only(monkeypatch):
    original = read._request
    monkeypatch.setattr(
        read, "_request", lambda *args, **kw: original(*args, **{**kw, "native": False})
    )
    read.clear_reader_cache()


def _field(**kw):
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS, **kw)


@pytest.fixture
def clean_cube(logged_in, tmp_path, monkeypatch):
    """The fault-free cube; afterwards no header is cached anywhere (first requests redone)."""
    cube = _field().NDVI.load().values
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache-after-clean-read"))
    headers.clear_memory()
    logged_in.log.clear()
    return cube


def test_faults_leave_the_cube_exact(logged_in, clean_cube):
    logged_in.download.fault_rate = 0.10
    logged_in.download.drop_rate = 0.02
    logged_in.download.max_concurrent = 4
    logged_in.download.latency = 0.02  # requests overlap, so more than 4 are in flight
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    faults = {r.fault for r in tif_records(logged_in)}
    assert {"503", "drop", "429"} <= faults, f"the server must have injected faults: {faults}"


def test_dropped_first_requests_are_retried(logged_in, clean_cube):
    logged_in.download.fail_next(6, kind="drop")  # the very first requests: header reads
    got = _field().NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    dropped = [r for r in tif_records(logged_in) if r.fault == "drop"]
    assert len(dropped) == 6 and all(r.range.startswith("bytes=0-") for r in dropped)


def test_one_connection_allowed_still_gives_the_exact_cube(logged_in, clean_cube):
    logged_in.download.max_concurrent = 1
    logged_in.download.latency = 0.01
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    assert any(r.status == 429 for r in tif_records(logged_in))


def test_the_connection_setting_caps_the_requests_in_flight(
    logged_in, clean_cube, monkeypatch, tmp_path
):
    """``TERRASCOPE_MAX_CONNECTIONS=2`` against a server that refuses a fourth concurrent
    request (one above the setting: a server may count a request a moment longer than
    the client): no refusal. Without the setting the same read is refused at times."""
    logged_in.download.max_concurrent = 3
    logged_in.download.latency = 0.01
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "2")
    origins.reset_limiters()
    try:
        np.testing.assert_array_equal(_field(chunks={}).NDVI.load().values, clean_cube)
        capped = tif_records(logged_in)
        assert capped and not [r for r in capped if r.status == 429]
        monkeypatch.delenv("TERRASCOPE_MAX_CONNECTIONS")
        origins.reset_limiters()
        headers.clear_memory()
        monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache-uncapped"))
        read.clear_reader_cache()
        logged_in.log.clear()
        np.testing.assert_array_equal(_field(chunks={}).NDVI.load().values, clean_cube)
        assert [r for r in tif_records(logged_in) if r.status == 429]
    finally:
        origins.reset_limiters()


def test_a_missing_file_names_the_item_and_the_status(logged_in):
    items = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-01", "2025-06-03")
    broken = items[0].clone()
    broken.assets["NDVI"].href = broken.assets["NDVI"].href.replace(".tif", "_gone.tif")
    ds = xr.open_dataset([broken, *items[1:]], engine="terrascope")
    with pytest.raises(ReadError, match="404") as info:
        ds.NDVI.load()
    assert broken.id in str(info.value)
    assert getattr(info.value, "status_code", None) == 404


def test_a_401_mid_read_is_an_authentication_error(logged_in):
    ds = _field()
    ds.NDVI.isel(time=0).load()  # headers of the whole field are cached from here on
    user = logged_in.username
    password = logged_in.download.users[user]
    logged_in.download.users[user] = password + "-changed"
    try:
        with pytest.raises(AuthenticationError, match="401"):
            ds.NDVI.isel(time=slice(1, None)).load()
    finally:
        logged_in.download.users[user] = password
    assert any(r.status == 401 for r in tif_records(logged_in))
    assert not [r for r in tif_records(logged_in) if r.range == "bytes=0-" and r.status == 401]


def test_redirect_to_another_origin_gets_no_credentials(logged_in, clean_cube):
    bucket = logged_in.start_bucket()
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    served = [r for r in bucket.log.records() if r.path.endswith(".tif")]
    assert served, "the files must have been read from the bucket"
    assert not [r for r in served if r.has_credentials]


# --- the GDAL path (tiles that must be warped) -------------------------------------------


def test_gdal_dropped_first_request_does_not_poison_the_process(logged_in, gdal_only):
    clean = _field().NDVI.isel(time=0).load().values
    read.clear_reader_cache()
    from xarray_terrascope.engine import gdal_cache

    gdal_cache.clear_http_cache()
    ds = _field()
    first = str(ds.item_ids.values[0]).split()[0]
    logged_in.download.fail_next(1, kind="drop", path_contains=first)
    np.testing.assert_array_equal(ds.NDVI.isel(time=0).load().values, clean)
    assert any(r.fault == "drop" and first in r.path for r in tif_records(logged_in))
    again = _field().NDVI.isel(time=0).load().values  # the next open in this process
    np.testing.assert_array_equal(again, clean)


def test_gdal_status_after_the_header_is_cached(logged_in, gdal_only, monkeypatch):
    from xarray_terrascope import auth
    from xarray_terrascope.engine import gdal

    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setitem(auth.BASE_GDAL_OPTIONS, "GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setattr(gdal, "RETRY", dataclasses.replace(gdal.RETRY, attempts=2))
    ds = _field()
    ds.NDVI.isel(time=0, x=slice(0, 10), y=slice(0, 10)).load()  # headers cached by GDAL
    user = logged_in.username
    password = logged_in.download.users[user]
    logged_in.download.users[user] = password + "-changed"
    try:
        with pytest.raises(AuthenticationError, match="401"):
            ds.NDVI.isel(time=0).load()
    finally:
        logged_in.download.users[user] = password
    read.clear_reader_cache()
    ds = _field()
    ds.NDVI.isel(time=1, x=slice(0, 10), y=slice(0, 10)).load()
    item = str(ds.item_ids.values[1]).split()[0]
    logged_in.download.fail_next(40, kind="503", path_contains=item)
    with pytest.raises(ReadError, match="503") as info:
        ds.NDVI.isel(time=1).load()
    assert item in str(info.value) or item in str(info.value.__cause__)


def test_redirect_on_the_gdal_path_gets_no_credentials(logged_in, gdal_only):
    clean = _field().NDVI.isel(time=slice(0, 3)).load().values
    read.clear_reader_cache()
    from xarray_terrascope.engine import gdal_cache

    gdal_cache.clear_http_cache()
    bucket = logged_in.start_bucket()
    got = _field().NDVI.isel(time=slice(0, 3)).load().values
    np.testing.assert_array_equal(got, clean)
    served = [r for r in bucket.log.records() if r.path.endswith(".tif")]
    assert served and not [r for r in served if r.has_credentials]


@pytest.mark.parametrize("chunks", [{}, {"time": -1}], ids=["tasks-of-dates", "one-task"])
def test_a_request_rate_limit_gives_the_exact_cube_with_few_refusals(logged_in, clean_cube, chunks):
    """As nginx's ``limit_req`` (a token bucket of 5 filled at 25/s, 429 without
    Retry-After): the limit of requests in flight alone cannot satisfy it, pacing does.

    What refusals the client can avoid: when the first 4 requests go at once, they all
    succeed, slow start sends 8 into a bucket of about one token, and up to
    ``2 * INITIAL_CONNECTIONS - 1`` are refused, the price of learning a rate nobody
    announced. From that first 429 on, requests are paced, whose probes refuse about
    6 % of them. In one task (every file's header wanted at once) the first 4 nearly
    always go together: the order in which the read used to get 13 to 17 refusals, its
    limiter cutting 8 -> 4 -> 2 -> 1 before pacing, each cut's requests going at once
    into the empty bucket."""
    origins.reset_limiters()  # as in a new process: the clean read grew the limit
    logged_in.download.max_rate = 25.0
    logged_in.download.latency = 0.01
    got = _field(chunks=chunks).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    records = tif_records(logged_in)
    refused = [r for r in records if r.fault == "rate"]
    served = [r for r in records if r.status == 206]
    assert refused, "the server must have refused some requests"
    learning = 2 * INITIAL_CONNECTIONS - 1
    assert len(refused) <= learning + math.ceil(0.06 * len(served)), (len(refused), len(served))


def test_stac_api_503s_leave_the_cube_exact(logged_in, clean_cube):
    logged_in.stac.fail_next(2)  # the very first STAC requests
    logged_in.stac.fault_rate = 0.3
    got = _field(chunks={}).NDVI.load().values
    np.testing.assert_array_equal(got, clean_cube)
    assert logged_in.stac.injected >= 2
