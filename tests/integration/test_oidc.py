"""OpenID Connect login against the sandbox's Keycloak-like issuer: password and device
grants, tokens refreshed during long reads (one process and a LocalCluster), a refused
refresh, protected collections, redirects, and the opt-in refresh-token store.

Time: the sandbox's token issuer and download server run on a settable clock
(:class:`Ticker`) that moves one tick per request it checks, so an access token of 20
ticks expires after about 20 download requests: a read of a few hundred requests spans
several token lifetimes without waiting. In this process the package's token holder
reads the same clock (``tokens.clock``, the package's own seam for it); dask workers in
other processes keep the real clock, so there the server's 401 is what makes them
refresh.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope import auth
from xarray_terrascope.auth import tokens
from xarray_terrascope.exceptions import (
    AuthenticationError,
    CredentialStoreError,
    ProtectedCollectionError,
)
from xarray_terrascope.testing import SAMPLE_FIELD
from xarray_terrascope.testing.stac_api import role_for

from ..support.helpers import FAPAR, NDVI, tif_records
from .test_read_engine import _truth

DAYS = {"start": "2025-05-01", "end": "2025-06-30"}
DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


class Ticker:
    """A clock for token lifetimes: the server's reading moves it one tick on, the
    client's reading does not."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def server(self) -> float:
        with self._lock:
            self.now += 1.0
            return self.now

    def client(self) -> float:
        return self.now


@pytest.fixture
def oidc(sandbox_urls, monkeypatch, tmp_path):
    """The sandbox with its token endpoints on, the package pointed at its OpenID
    Connect configuration, and a config directory of the test's own."""
    sandbox_urls.download.bearer = True
    monkeypatch.setenv("TERRASCOPE_OIDC_URL", sandbox_urls.oidc_url)
    monkeypatch.setenv("TERRASCOPE_CONFIG_DIR", str(tmp_path / "config"))
    yield sandbox_urls
    xts.logout()


@pytest.fixture
def ticking(oidc, monkeypatch):
    clock = Ticker()
    oidc.download.clock = clock.server
    monkeypatch.setattr(tokens, "clock", clock.client)
    return clock


def _grants(sandbox, kind=None):
    return [g for g in sandbox.download.issuer.log if kind is None or g.grant_type == kind]


def _refreshes(sandbox):
    return [g for g in _grants(sandbox, "refresh_token") if g.status == 200]


def _assert_exact(sandbox, ds, values):
    rng = np.random.default_rng(5)
    rows = rng.integers(0, ds.sizes["y"], 400)
    cols = rng.integers(0, ds.sizes["x"], 400)
    want = _truth(sandbox, ds, rows, cols)
    assert (want != 255).sum() > 500
    np.testing.assert_array_equal(values[:, rows, cols], want)


def _open(**kw):
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS, **kw)


# --- logging in ------------------------------------------------------------------------


def test_password_grant_keeps_secrets_out_of_environ_logs_and_reprs(oidc, all_logs):
    environ = dict(os.environ)
    creds = xts.login(oidc.username, oidc.password, method="oidc")
    assert isinstance(creds, auth.TokenCredentials)
    assert creds.username == oidc.username and auth.current_credentials() is creds
    assert [(g.grant_type, g.status) for g in _grants(oidc)] == [("password", 200)]
    assert dict(os.environ) == environ
    access, refresh = creds.holder.access_token(), creds.holder.refresh_token()
    shown = repr(creds) + str(creds) + repr(creds.holder) + all_logs.text
    for secret in (oidc.password, access, refresh):
        assert secret not in shown
    with pytest.raises(TypeError, match="cannot be pickled"):
        cloudpickle.dumps(creds)


def test_wrong_password_is_an_authentication_error(oidc):
    with pytest.raises(AuthenticationError, match="refused the password login") as info:
        xts.login(oidc.username, "not-the-password", method="oidc")
    assert "not-the-password" not in str(info.value)


def test_device_flow_shows_the_code_and_polls_until_approved(oidc, all_logs):
    """No password anywhere: the device flow. The verification URL and code are logged
    (the default prompt) and the package polls until the user approves; the "user" here
    approves once a poll was answered ``authorization_pending``."""
    done: dict = {}

    def log_in():
        try:
            done["creds"] = xts.login(method="oidc")
        except BaseException as err:  # handed to the test thread
            done["error"] = err

    thread = threading.Thread(target=log_in)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(g.error == "authorization_pending" for g in _grants(oidc, DEVICE)):
        assert time.monotonic() < deadline, "the package never polled the token endpoint"
        time.sleep(0.01)
    (code,) = oidc.download.issuer.pending_user_codes()
    assert oidc.download.approve_device(code, oidc.username)
    thread.join(30)
    assert "error" not in done, done.get("error")
    creds = done["creds"]
    assert creds.username == oidc.username  # named by the token's preferred_username
    assert _grants(oidc, DEVICE)[-1].status == 200 and not _grants(oidc, "password")
    shown = [r.getMessage() for r in all_logs.records if r.levelno == logging.INFO]
    assert any(code in m and "/auth/realms/terrascope/device" in m for m in shown)


def test_no_password_and_no_device_grant_says_how_to_log_in(oidc):
    oidc.download.device_flow = False  # the provider offers no device grant
    with pytest.raises(AuthenticationError, match="no device login"):
        xts.login(method="oidc")


# --- tokens that stay fresh --------------------------------------------------------------


def test_requests_waiting_for_their_turn_carry_a_fresh_token(oidc, ticking):
    """Sixty requests queued behind a limit of one connection, access tokens of 20
    ticks: the token is looked at when each request is built, after its wait, so the
    holder refreshes it on the way and none is refused (a check made only before the
    wait would send the 21st and later requests with an expired token)."""
    import asyncio

    from xarray_terrascope.engine import aio, origins, transport

    oidc.download.token_lifetime = 20
    xts.login(oidc.username, oidc.password, method="oidc")
    url = _open().terrascope.asset_urls()[0]
    access = auth.RequestAuth(auth.current_credentials())
    origins.reset_limiters()
    oidc.log.clear()

    async def all_at_once():
        return await asyncio.gather(
            *(transport.get_range(url, 0, 100, access=access, label="ITEM") for _ in range(60))
        )

    with xts.set_options(max_connections=1):
        answers = aio.run(all_at_once())
    assert len({blob for blob, _ in answers}) == 1
    records = tif_records(oidc)
    assert len(records) == 60
    assert [r.status for r in records] == [206] * 60
    assert len(_refreshes(oidc)) >= 2


def test_a_read_spanning_three_token_lifetimes_is_exact(oidc, ticking):
    """Access tokens of 20 ticks, a read of hundreds of requests: the holder refreshes
    before expiry (no request is refused), every file request carries a Bearer token and
    no Basic credentials, and the cube is the world's."""
    oidc.download.token_lifetime = 20
    xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={})
    oidc.log.clear()
    start = ticking.now
    with xts.set_options(max_connections=2):
        values = ds.NDVI.values
    records = tif_records(oidc)
    assert ticking.now - start >= 3 * 20, "the read did not span three lifetimes"
    assert len(_refreshes(oidc)) >= 3
    assert all(r.auth_scheme == "bearer" and r.status in (200, 206) for r in records), [
        r for r in records if r.auth_scheme != "bearer" or r.status not in (200, 206)
    ]
    _assert_exact(oidc, ds, values)


def test_threads_that_find_the_token_stale_together_cause_one_refresh(oidc, ticking):
    oidc.download.token_lifetime = 20
    creds = xts.login(oidc.username, oidc.password, method="oidc")
    first = creds.holder.access_token()
    ticking.now += 19  # within the refresh margin (20 % of 20 ticks)
    start = threading.Barrier(16)
    got: list[str] = []

    def use():
        start.wait(10)
        got.append(creds.holder.access_token())

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 16 and len(set(got)) == 1 and got[0] != first
    assert len(_refreshes(oidc)) == 1


def _max_connections(count: int) -> None:
    xts.set_options(max_connections=count)


def test_a_cluster_read_spanning_three_lifetimes_is_exact_and_the_graph_holds_no_secret(
    cluster, oidc, ticking
):
    """Two worker processes get the login from the plugin (not the graph) and refresh
    it themselves: on the real clock their tokens look fresh, so the server's 401s make
    them refresh. No token, refresh token or password is in the pickled graph or the
    scheduler's tasks; the plugin on the scheduler holds the tokens (documented)."""
    distributed = pytest.importorskip("distributed")
    oidc.download.token_lifetime = 40
    creds = xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={}, chunksize=128)
    graph = cloudpickle.dumps(dict(ds.NDVI.data.__dask_graph__()))
    oidc.log.clear()
    start = ticking.now
    with distributed.Client(cluster) as client:
        # few requests in flight, so that a token just refreshed is not outlived by the
        # requests queued before it (the sandbox's clock moves per request)
        client.run(_max_connections, 4)
        try:
            values = client.compute(ds.NDVI).result().values
        finally:
            client.run(_max_connections, xts.get_options().max_connections)
        tasks = client.run_on_scheduler(
            lambda dask_scheduler: cloudpickle.dumps(
                [ts.run_spec for ts in dask_scheduler.tasks.values()]
            )
        )
        xts.logout()  # removes the plugin while the client is open
    assert ticking.now - start >= 3 * 40, "the read did not span three lifetimes"
    refreshed = _refreshes(oidc)
    assert len(refreshed) >= 3 and creds.holder.refreshes == 0  # the workers refreshed
    assert any(r.status == 401 and r.auth_scheme == "bearer" for r in oidc.log.records())
    records = tif_records(oidc)
    assert all(r.auth_scheme == "bearer" for r in records)
    secrets = [oidc.password, *oidc.download.issuer.issued_tokens()]
    assert len(secrets) > 2 * len(refreshed)
    for secret in secrets:
        assert secret.encode() not in graph and secret.encode() not in tasks
    _assert_exact(oidc, ds, values)


def test_a_token_refused_before_its_expiry_is_refreshed_once(oidc):
    """The server ends the access tokens early (the client's clock says they are good):
    the 401 makes the holder refresh, once for every request refused with that token."""
    creds = xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={})
    oidc.download.expire_tokens()
    oidc.log.clear()
    values = ds.NDVI.values
    assert len(_refreshes(oidc)) == 1 and creds.holder.refreshes == 1
    assert any(r.status == 401 for r in oidc.log.records())
    _assert_exact(oidc, ds, values)


def test_an_expired_refresh_token_is_one_clear_error(oidc):
    xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={})
    oidc.download.expire_tokens()
    oidc.download.issuer.expire_refresh_tokens()
    with pytest.raises(AuthenticationError, match=r"(?i)log in again"):
        ds.NDVI.values  # noqa: B018
    assert [g.status for g in _grants(oidc, "refresh_token")] == [400]
    with pytest.raises(AuthenticationError, match=r"(?i)log in again"):
        ds.NDVI.values  # noqa: B018
    assert len(_grants(oidc, "refresh_token")) == 1, "asked the provider again"


def test_a_disabled_account_is_one_clear_error(oidc, ticking):
    oidc.download.token_lifetime = 20
    xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={})
    oidc.download.issuer.disabled.add(oidc.username)
    with pytest.raises(AuthenticationError, match=r"(?i)log in again"):
        ds.NDVI.values  # noqa: B018
    assert [g.error for g in _grants(oidc, "refresh_token")] == ["invalid_grant"]


def test_a_redirect_to_another_origin_gets_no_authorization(oidc):
    xts.login(oidc.username, oidc.password, method="oidc")
    bucket = oidc.start_bucket()
    ds = _open(chunks={})
    values = ds.NDVI.values
    assert bucket.log.records() and not any(r.has_credentials for r in bucket.log.records())
    asked = [r for r in oidc.log.records() if r.path.endswith(".tif")]
    assert asked and all(r.status == 302 and r.auth_scheme == "bearer" for r in asked)
    _assert_exact(oidc, ds, values)


def test_the_gdal_path_reads_with_the_bearer_token_and_a_fresh_one_after_expiry(oidc, monkeypatch):
    """Files read by GDAL (the fallback path) carry the access token as of the reader's
    opening; readers opened with a token since refreshed are not reused."""
    from xarray_terrascope.engine import read

    original = read._request
    monkeypatch.setattr(
        read, "_request", lambda *args, **kw: original(*args, **{**kw, "native": False})
    )
    read.clear_reader_cache()
    creds = xts.login(oidc.username, oidc.password, method="oidc")
    ds = _open(chunks={})
    oidc.log.clear()
    values = ds.NDVI.values
    records = tif_records(oidc)
    assert records and all(r.auth_scheme == "bearer" for r in records)
    assert any(r.method == "HEAD" or (r.user_agent and "GDAL" in r.user_agent) for r in records)
    _assert_exact(oidc, ds, values)
    oidc.download.expire_tokens()  # server side: every open reader's token is dead now
    creds.holder.renew(creds.holder.generation)  # what a refused request does
    oidc.log.clear()
    again = _open(chunks={}).NDVI.values
    np.testing.assert_array_equal(again, values)
    assert not [r for r in oidc.log.records() if r.status == 401]


# --- protected collections ---------------------------------------------------------------


def test_a_protected_collection_401_then_403_then_data_with_the_role(oidc):
    oidc.stac.protected = {FAPAR}
    with pytest.raises(ProtectedCollectionError, match=rf"{FAPAR}.*HTTP 401.*method='oidc'"):
        xts.search(FAPAR, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    xts.login(oidc.username, oidc.password, method="oidc")
    with pytest.raises(ProtectedCollectionError, match=rf"HTTP 403.*{role_for(FAPAR)}") as info:
        xts.search(FAPAR, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    assert info.value.status_code == 403 and oidc.username in str(info.value)
    oidc.download.issuer.roles[oidc.username] = {role_for(FAPAR)}
    items = xts.search(FAPAR, SAMPLE_FIELD, "2025-06-01", "2025-06-10")
    assert items and {i.collection_id for i in items} == {FAPAR}
    for item in items:  # they say where to log in, as Terrascope's 2026 items do
        scheme = item.properties["auth:schemes"]["oidc"]
        assert scheme["openIdConnectUrl"] == oidc.oidc_url
        assert all(a.extra_fields["auth:refs"] == ["oidc"] for a in item.assets.values())
    ds = xr.open_dataset(
        list(SAMPLE_FIELD),
        engine="terrascope",
        collection=FAPAR,
        decode=False,
        start="2025-06-01",
        end="2025-06-10",
    )
    values = ds[next(iter(ds.data_vars))].values
    _assert_exact(oidc, ds, values)
    # the unprotected collections still search, with the token
    assert xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-10")


def _record_stac_requests(monkeypatch) -> list:
    """Replace the network send of requests' adapters by one that records each prepared
    request and answers 200 ``{}``: for hosts that are unreachable here (no traffic)."""
    import requests
    from requests.adapters import HTTPAdapter

    sent: list[requests.PreparedRequest] = []

    def record(self, request, *args, **kwargs):
        sent.append(request)
        response = requests.Response()
        response.status_code, response._content = 200, b"{}"
        response.url, response.request = request.url, request
        return response

    monkeypatch.setattr(HTTPAdapter, "send", record)
    return sent


def test_the_token_goes_to_a_stac_url_written_without_its_default_port(oidc, monkeypatch):
    """requests picks a transport adapter by the URL's text, and Terrascope's STAC URL
    names no port (``https://stac.terrascope.be``): its requests carry the access token
    all the same, and another host's do not. The sandbox's URLs all name their port, so
    they cannot show this; the real host is unreachable here, so the adapters' network
    send is replaced by one that records the request (no traffic leaves)."""
    from xarray_terrascope.catalog import search

    xts.login(oidc.username, oidc.password, method="oidc")
    monkeypatch.setenv("TERRASCOPE_STAC_URL", "https://stac.terrascope.be")
    sent = _record_stac_requests(monkeypatch)
    session = search._stac_io().session
    for url in (
        "https://stac.terrascope.be/search",
        "https://STAC.terrascope.be:443/collections",
        "https://stac.terrascope.be.example.org/search",
        "http://stac.terrascope.be/search",
    ):
        session.get(url)
    bearer = [r.headers.get("Authorization", "").startswith("Bearer ") for r in sent]
    assert bearer == [True, True, False, False]


def test_a_token_to_a_plain_http_stac_url_elsewhere_is_warned_once(oidc, monkeypatch, caplog):
    """A STAC URL set by hand to plain http on another machine gets the token (it is the
    STAC API the user named), with one WARNING naming the risk. The host is unreachable
    here: the adapters' network send is replaced by one that records (no traffic)."""
    from xarray_terrascope import config
    from xarray_terrascope.catalog import search

    xts.login(oidc.username, oidc.password, method="oidc")
    monkeypatch.setenv("TERRASCOPE_STAC_URL", "http://stac.example.invalid")
    monkeypatch.setattr(config, "_noted", set())
    caplog.set_level(logging.WARNING, logger="xarray_terrascope")
    sent = _record_stac_requests(monkeypatch)
    session = search._stac_io().session
    session.get("http://stac.example.invalid/search")
    session.get("http://stac.example.invalid/collections")
    assert all(r.headers["Authorization"].startswith("Bearer ") for r in sent)
    warned = [r.getMessage() for r in caplog.records if "over plain http" in r.getMessage()]
    assert len(warned) == 1 and "http://stac.example.invalid:80" in warned[0]


# --- the refresh-token store -------------------------------------------------------------


def test_the_store_is_0600_used_later_and_deleted_on_logout(oidc, all_logs):
    creds = xts.login(oidc.username, oidc.password, method="oidc", store=True)
    path = auth.store.path()
    assert str(path).startswith(os.environ["TERRASCOPE_CONFIG_DIR"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = path.read_text()
    assert creds.holder.refresh_token() in body and oidc.password not in body
    auth.state._forget_all()  # the process forgets the login; the file stays
    again = xts.login(method="oidc", store=True)  # no password anywhere: the store
    assert isinstance(again, auth.TokenCredentials) and again.username == oidc.username
    assert [g.grant_type for g in _grants(oidc)] == ["password", "refresh_token"]
    xts.logout()
    assert not path.exists()
    assert oidc.password not in all_logs.text


def test_a_world_readable_store_is_refused(oidc):
    xts.login(oidc.username, oidc.password, method="oidc", store=True)
    path = auth.store.path()
    path.chmod(0o644)
    auth.state._forget_all()
    with pytest.raises(CredentialStoreError, match="0644"):
        xts.login(method="oidc", store=True)
    assert path.exists()  # left for the user to look at


# --- the command line --------------------------------------------------------------------


def test_cli_login_device_flow_prints_the_code_stores_and_logout_deletes(oidc, capsys):
    from xarray_terrascope import cli

    def approve():
        deadline = time.monotonic() + 30
        while not oidc.download.issuer.pending_user_codes():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        oidc.download.approve_device(oidc.download.issuer.pending_user_codes()[0])

    user = threading.Thread(target=approve)
    user.start()
    try:
        assert cli.main(["login"]) == 0
    finally:
        user.join(30)
    out, err = capsys.readouterr()
    assert _grants(oidc, DEVICE)[-1].status == 200
    (code,) = [line.split()[-1] for line in err.splitlines() if line.startswith("and enter")]
    assert "/auth/realms/terrascope/device?user_code=" + code in err
    path = auth.store.path()
    assert f"Logged in as {oidc.username} with OpenID Connect" in out and str(path) in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a later command (its own process's login is gone) uses the stored refresh token
    auth.state._forget_all()
    oidc.log.clear()
    window = ["--start", "2025-06-01", "--end", "2025-06-12"]
    bbox = ",".join(str(v) for v in SAMPLE_FIELD)
    target = path.parent.parent / "ndvi.nc"
    assert cli.main(["ndvi", "--bbox", bbox, *window, "--out", str(target)]) == 0
    assert target.exists() and [g.grant_type for g in _grants(oidc)][-1] == "refresh_token"
    assert tif_records(oidc) and all(r.auth_scheme == "bearer" for r in tif_records(oidc))
    assert cli.main(["logout"]) == 0
    assert not path.exists() and f"Deleted {path}" in capsys.readouterr().out


def test_the_cli_batch_reads_with_the_login_the_cli_stored(oidc, tmp_path, monkeypatch):
    """After ``xarray-terrascope login`` (OpenID Connect, the refresh token stored; no
    password in the environment or netrc), ``zonal --out-dir`` reads with that login on
    its cluster, as ``zonal --out`` does. (No terminal here: the password prompt is
    answered by a stand-in for getpass.)"""
    import getpass

    import shapely

    from xarray_terrascope import cli

    monkeypatch.setattr(getpass, "getpass", lambda prompt="": oidc.password)
    parcels = oidc.parcels()
    parcels = parcels[parcels.within(shapely.box(*SAMPLE_FIELD))].head(4)
    path = tmp_path / "parcels.parquet"
    parcels.to_parquet(path)
    window = ["--start", "2025-06-01", "--end", "2025-06-12", "--stats", "mean"]
    try:
        assert cli.main(["login", "--username", oidc.username]) == 0
        auth.state._forget_all()  # a new process: only the stored login is left
        oidc.log.clear()
        out = tmp_path / "stats"
        argv = ["zonal", "--parcels", str(path), *window, "--out-dir", str(out)]
        assert cli.main([*argv, "--workers", "1"]) == 0
    finally:
        xts.logout()
    records = tif_records(oidc)
    assert records and {r.auth_scheme for r in records} == {"bearer"}
    assert list(out.glob("part-*.parquet"))
