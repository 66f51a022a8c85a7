"""Scoped authentication against the sandbox's real download server."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading

import pytest
import xarray as xr
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

import xarray_terrascope as xts
from xarray_terrascope import auth
from xarray_terrascope.auth import state
from xarray_terrascope.exceptions import AuthenticationError, TerrascopeError
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import tif_records

ONE_DAY = {"start": "2025-06-10", "end": "2025-06-10"}


@contextlib.contextmanager
def _download_service(app, monkeypatch):
    """Serve the WSGI ``app`` on loopback as the download service (URL and allowed host)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_port}"
        monkeypatch.setenv("TERRASCOPE_DOWNLOAD_URL", f"http://{host}/download/")
        monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", f"http://{host}")
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _secret_forms(password: str) -> list[str]:
    return [password, base64.b64encode(password.encode()).decode()]


def test_login_from_arguments_logs_and_keeps_environ_clean(sandbox_urls, all_logs):
    environ_before = dict(os.environ)
    creds = xts.login(sandbox_urls.username, sandbox_urls.password)
    assert creds.username == sandbox_urls.username
    assert auth.current_credentials() is creds
    assert dict(os.environ) == environ_before
    assert any(
        r.getMessage().startswith(f"Authenticated as {sandbox_urls.username}")
        for r in all_logs.records
    )
    probe = sandbox_urls.log.records()[-1]
    assert (probe.path, probe.status, probe.user) == ("/download/", 200, sandbox_urls.username)
    for secret in _secret_forms(sandbox_urls.password):
        assert secret not in all_logs.text
        assert all(secret not in str(v) for v in os.environ.values())


def test_login_from_environment(sandbox_urls, monkeypatch):
    monkeypatch.setenv("TERRASCOPE_USERNAME", sandbox_urls.username)
    monkeypatch.setenv("TERRASCOPE_PASSWORD", sandbox_urls.password)
    assert xts.login().username == sandbox_urls.username


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_login_from_netrc(sandbox_urls, monkeypatch, tmp_path, mode, caplog):
    """A netrc file others may read is used (as curl and GDAL do), with one WARNING
    naming the file and the fix; none for a file of its owner alone."""
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(
        f"machine 127.0.0.1 login {sandbox_urls.username} password {sandbox_urls.password}\n"
    )
    netrc_file.chmod(mode)
    monkeypatch.setenv("NETRC", str(netrc_file))
    caplog.set_level(logging.WARNING, logger="xarray_terrascope")
    assert xts.login().username == sandbox_urls.username
    warned = [r.getMessage() for r in caplog.records if "others may read it" in r.getMessage()]
    if mode == 0o600:
        assert warned == []
    else:
        assert len(warned) == 1 and "mode 0644" in warned[0] and "chmod 600" in warned[0]
        assert sandbox_urls.password not in warned[0]


def test_netrc_for_another_machine_is_not_used(sandbox_urls, monkeypatch, tmp_path):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine example.org login someone password other\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    with pytest.raises(AuthenticationError, match="No Terrascope credentials"):
        xts.login()


def test_missing_credentials_list_the_three_ways(sandbox_urls):
    sandbox_urls.log.clear()
    with pytest.raises(AuthenticationError) as info:
        xts.login()
    message = str(info.value)
    for way in ("login(username, password)", "TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD", "netrc"):
        assert way in message
    assert sandbox_urls.log.records() == []


def test_only_one_of_username_and_password_is_an_error(sandbox_urls):
    with pytest.raises(AuthenticationError, match="both username and password"):
        xts.login(sandbox_urls.username)


def test_wrong_password_fails_fast_naming_the_user_only(sandbox_urls):
    wrong = "not-the-password-4711"
    sandbox_urls.log.clear()
    with pytest.raises(AuthenticationError) as info:
        xts.login(sandbox_urls.username, wrong)
    assert sandbox_urls.username in str(info.value)
    assert wrong not in str(info.value)
    assert auth.current_credentials() is None
    assert [(r.path, r.status) for r in sandbox_urls.log.records()] == [("/download/", 401)]


def test_redirect_to_the_login_page_is_an_authentication_error(sandbox_urls, monkeypatch):
    """A download service that answers with the SSO redirect rejects the credentials.

    The sandbox only redirects requests without credentials (as Terrascope does), so this
    stand-in is a second real server on loopback that always redirects.
    """

    def app(environ, start_response):
        response = Response(
            "",
            status=302,
            headers={
                "Location": "http://127.0.0.1:9/auth/realms/terrascope/protocol/openid-connect/auth?x=1"
            },
        )
        return response(environ, start_response)

    with (
        _download_service(app, monkeypatch),
        pytest.raises(AuthenticationError, match="redirected to the login page"),
    ):
        xts.login("someone", "pw")


def test_validate_false_makes_no_request(sandbox_urls):
    sandbox_urls.log.clear()
    xts.login("anyone", "anything", validate=False)
    assert sandbox_urls.log.records() == []


def test_refuses_to_send_credentials_to_a_host_outside_the_allow_list(sandbox_urls, monkeypatch):
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", "services.terrascope.be")
    sandbox_urls.log.clear()
    with pytest.raises(TerrascopeError, match="TERRASCOPE_DOWNLOAD_HOSTS"):
        xts.login(sandbox_urls.username, sandbox_urls.password)
    assert sandbox_urls.log.records() == []


def test_logout_forgets_the_default(logged_in):
    xts.logout()
    assert auth.current_credentials() is None
    with pytest.raises(AuthenticationError, match="login"):
        auth.resolve(auth.DEFAULT_HANDLE)


def test_gdal_options_are_scoped_to_the_download_hosts(sandbox_urls):
    creds = xts.Credentials("alice", "pw")
    inside = xts.gdal_options(sandbox_urls.download_url + "a.tif", creds)
    assert inside["GDAL_HTTP_AUTH"] == "BASIC"
    assert inside["GDAL_HTTP_USERPWD"] == "alice:pw"
    assert inside["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert int(inside["GDAL_HTTP_MAX_RETRY"]) > 0
    outside = xts.gdal_options("http://127.0.0.1:1/download/a.tif", creds)
    # an empty pair overrides one left in the environment; ANYSAFE never sends it up front
    assert outside["GDAL_HTTP_USERPWD"] == "" and outside["GDAL_HTTP_AUTH"] == "ANYSAFE"
    assert outside["GDAL_HTTP_NETRC"] == "NO"
    assert outside["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


def test_url_outside_the_allowed_hosts_is_read_without_credentials(logged_in, monkeypatch):
    """The download server sees no Authorization header, and the user a named error.

    Authenticated reads come first, so that I/O threads that held credentials are reused.
    """
    xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-06-01", end="2025-06-09"
    ).load()
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", "127.0.0.1:1")
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", **ONE_DAY)
    logged_in.log.clear()
    with pytest.raises(AuthenticationError, match="TERRASCOPE_DOWNLOAD_HOSTS"):
        ds.NDVI.load()
    records = tif_records(logged_in)
    assert records, "the read must reach the download server"
    assert not any(r.has_credentials for r in records)
    assert {r.status for r in records} <= {302}


def test_two_accounts_in_two_threads_do_not_mix(sandbox_urls):
    """Each thread's reads reach the server under its own user."""
    users = dict(list(sandbox_urls.users.items())[:2])
    assert len(users) == 2
    days = {name: day for name, day in zip(users, ("2025-07-05", "2025-07-15"), strict=True)}
    cubes = {
        name: xr.open_dataset(
            list(SAMPLE_FIELD),
            engine="terrascope",
            start=day,
            end=day,
            credentials=xts.Credentials(name, users[name]),
        )
        for name, day in days.items()
    }
    sandbox_urls.log.clear()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            cubes[name].NDVI.load()
        except BaseException as err:  # reported below, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name, day in days.items():
        stamp = day.replace("-", "")
        records = [r for r in tif_records(sandbox_urls) if f"_{stamp}T" in r.path]
        assert records
        assert {r.user for r in records} == {name}


def test_no_gdal_options_linger_in_the_io_threads(logged_in):
    """After authenticated reads, no I/O thread keeps a GDAL environment (the password)."""
    from rasterio.env import hasenv

    from xarray_terrascope.engine import gdal

    xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", start="2025-05-01", end="2025-06-30"
    ).load()
    barrier = threading.Barrier(gdal.IO_THREADS)

    def probe() -> bool:
        barrier.wait(timeout=30)  # one probe per pool thread
        return hasenv()

    pool = gdal.io_pool()
    results = [f.result() for f in [pool.submit(probe) for _ in range(gdal.IO_THREADS)]]
    assert results == [False] * gdal.IO_THREADS


def test_credential_changes_reach_the_subscribers(sandbox_urls):
    calls = []
    auth.subscribe("forget", lambda: calls.append("forget"))
    auth.subscribe("publish", lambda: calls.append("publish"))
    try:
        xts.login("alice", "one", validate=False)
        xts.login("alice", "two", validate=False)
        xts.logout()
    finally:
        for event in ("forget", "publish"):
            state._subscribers[event] = state._subscribers[event][:-1]
    assert calls == ["publish", "forget", "publish", "forget", "publish"]


def test_login_proves_credentials_at_a_root_that_forbids_listing(sandbox_urls):
    """nginx without ``autoindex`` answers the download root 403 once authenticated: the
    credentials passed (without them it asks to sign in), so login succeeds."""
    sandbox_urls.download.listing = False
    sandbox_urls.log.clear()
    creds = xts.login(sandbox_urls.username, sandbox_urls.password)
    assert auth.current_credentials() is creds
    assert [r.status for r in sandbox_urls.log.records()] == [403, 302]
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        xts.login(sandbox_urls.username, "wrong-password")


def test_login_retries_a_busy_download_service(sandbox_urls):
    sandbox_urls.download.fail_next(2, kind="503")
    sandbox_urls.log.clear()
    xts.login(sandbox_urls.username, sandbox_urls.password)
    assert [r.status for r in sandbox_urls.log.records()] == [503, 503, 200]


def test_login_that_cannot_tell_says_so(monkeypatch):
    """A URL that answers the same with and without credentials proves nothing."""

    def app(environ, start_response):
        return Response("Not Found", status=404)(environ, start_response)

    xts.logout()
    with (
        _download_service(app, monkeypatch),
        pytest.raises(TerrascopeError, match="HTTP 404 with the credentials") as info,
    ):
        xts.login("someone", "pw")
    assert not isinstance(info.value, AuthenticationError)
    assert auth.current_credentials() is None
