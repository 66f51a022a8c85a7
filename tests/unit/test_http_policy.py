"""The HTTP policy (:mod:`xarray_terrascope.http_policy`): delays, ``Retry-After``, the
status-to-exception map, and the urllib3 ``Retry`` the STAC search and login use.

Delays and the status map are pure functions, tested as such; the urllib3 ``Retry`` is
tested against a real HTTP server on 127.0.0.1 that answers from a script, counting the
requests it receives. Expected values are written out from the numbers the callers had
before the policy was declared in one place (and, for the urllib3 timing, urllib3's own
``Retry`` with those numbers), never read from the policy under test.
"""

from __future__ import annotations

import dataclasses
import http.server
import pickle
import threading
from collections.abc import Iterator

import pytest
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.response import HTTPResponse
from urllib3.util.retry import Retry

from xarray_terrascope import http_policy
from xarray_terrascope.catalog import search
from xarray_terrascope.exceptions import (
    AuthenticationError,
    ReadError,
    SearchError,
    TerrascopeError,
)
from xarray_terrascope.http_policy import ENGINE, GDAL, LOGIN, SEARCH, RetryPolicy, error_for

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


# --- delays ------------------------------------------------------------------------------


def test_backoff_doubles_per_retry_up_to_its_cap():
    policy = RetryPolicy(attempts=8, backoff_base=0.1, backoff_cap=1.0, jitter=0.0)
    delays = [policy.delay(attempt) for attempt in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_jitter_takes_up_to_its_fraction_off_each_backoff():
    """Each of many delays lies in [backoff/2, backoff] (jitter 0.5), and they spread over
    that range (2000 draws: all above 0.6 of it, or all below 0.9, has odds below 1e-190)."""
    for attempt, full in [(0, 0.05), (3, 0.4), (9, 4.0)]:  # 0.05 * 2**9 is past the cap
        delays = [ENGINE.delay(attempt) for _ in range(2000)]
        assert all(full / 2 <= d <= full for d in delays), (attempt, min(delays), max(delays))
        assert min(delays) < 0.6 * full and max(delays) > 0.9 * full


def test_the_callers_numbers_are_kept():
    """The numbers the engine (10 attempts, 0.05 s doubling to 4 s, jitter 0.5, Retry-After
    up to 60 s) and the GDAL path (6 attempts, 0.1 s to 4 s) had before; the search and
    login numbers are checked against urllib3 below."""
    fields = ("attempts", "backoff_base", "backoff_cap", "jitter", "retry_after_cap")
    assert [getattr(ENGINE, f) for f in fields] == [10, 0.05, 4.0, 0.5, 60.0]
    assert [getattr(GDAL, f) for f in fields[:4]] == [6, 0.1, 4.0, 0.5]
    read_statuses = {408, 425, 429, 500, 502, 503, 504}
    assert ENGINE.transient == GDAL.transient == read_statuses
    assert SEARCH.transient == LOGIN.transient == {429, 500, 502, 503, 504}
    assert all(1.6 <= GDAL.delay(5) <= 3.2 for _ in range(200))  # min(4, 0.1 * 32) * [0.5, 1]


def test_a_longer_retry_after_is_waited_and_capped():
    policy = RetryPolicy(attempts=5, backoff_base=1.0, backoff_cap=8.0, jitter=0.0)
    assert policy.delay(0, retry_after=5.0) == 5.0  # longer than the backoff: honoured
    assert policy.delay(2, retry_after=1.0) == 4.0  # shorter: the backoff stands
    assert policy.delay(0, retry_after=3600.0) == 60.0  # an hour: cut to the cap
    assert policy.retry_after("3600") == 60.0
    assert ENGINE.retry_after("7") == 7.0
    assert dataclasses.replace(policy, retry_after_cap=None).retry_after("3600") == 3600.0


@pytest.mark.parametrize("value", [HTTP_DATE, "soon", "nan", "inf", "", None])
def test_a_retry_after_that_is_no_number_of_seconds_falls_back_to_the_backoff(value):
    assert http_policy.parse_retry_after(value) is None
    policy = RetryPolicy(attempts=5, backoff_base=0.25, backoff_cap=8.0, jitter=0.0)
    assert policy.delay(2, retry_after=policy.retry_after(value)) == 1.0


def test_retry_after_seconds_are_read_as_such():
    assert http_policy.parse_retry_after("120") == 120.0
    assert http_policy.parse_retry_after(" 1.5 ") == 1.5
    assert http_policy.parse_retry_after("-3") == 0.0


# --- the status-to-exception map -----------------------------------------------------------

SIGNED = "https://alice:s3cret@download.example/a/S2A_1.tif?X-Amz-Signature=sig123#frag"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_read_is_an_authentication_error_saying_what_to_check(status):
    err = error_for(status, what="reading S2A_1", url=SIGNED, credentials_sent=True, user="bob")
    assert type(err) is AuthenticationError and err.status_code == status
    text = str(err)
    assert "refused user 'bob' reading S2A_1 (https://download.example/a/S2A_1.tif)" in text
    assert f"HTTP {status}" in text
    assert "Check the credentials (login()'s, or the credentials= the cube was opened with)" in text
    assert "TERRASCOPE_DOWNLOAD_HOSTS" in text
    for secret in ("s3cret", "sig123", "frag", "alice"):
        assert secret not in text
    anonymous = error_for(status, what="reading S2A_1", url=SIGNED, credentials_sent=False)
    assert "refused a request without credentials reading S2A_1" in str(anonymous)
    unnamed = error_for(status, what="reading S2A_1", url=SIGNED, credentials_sent=True)
    assert "refused the credentials reading S2A_1" in str(unnamed)


@pytest.mark.parametrize("status", [404, 429, 500])
def test_other_statuses_are_read_errors_naming_the_file_and_status(status):
    err = error_for(
        status, what="reading S2A_1", url=SIGNED, credentials_sent=True, detail=" after 6 tries"
    )
    assert type(err) is ReadError and err.status_code == status
    assert str(err) == (
        f"Reading S2A_1 (https://download.example/a/S2A_1.tif) failed: HTTP {status} after 6 tries"
    )


@pytest.mark.parametrize("status", [401, 404, 500, 503])
def test_a_search_asks_for_search_errors_even_on_401(status):
    """The STAC API receives no credentials: its refusals are no credential problem."""
    err = error_for(
        status,
        what="the STAC search",
        url="http://127.0.0.1:9/stac/?token=t0k",
        credentials_sent=False,
        kind=SearchError,
    )
    assert type(err) is SearchError and err.status_code == status
    assert str(err) == f"The STAC search (http://127.0.0.1:9/stac/) failed: HTTP {status}"


def test_a_url_that_the_message_redaction_cannot_delimit_is_shown_without_its_query():
    """A href with a space (an unencoded one, as a catalogue may hold): the redaction of
    the message text stops at the space, so the map must shorten the URL itself."""
    url = "https://download.example/a dir/S2A_1.tif?X-Amz-Signature=sig123"
    for status in (403, 404):
        text = str(error_for(status, what="reading S2A_1", url=url, credentials_sent=True))
        assert "(https://download.example/a dir/S2A_1.tif)" in text and "sig123" not in text


def test_no_answer_is_said_so():
    err = error_for(None, what="reading S2A_1", url=SIGNED, credentials_sent=True)
    assert type(err) is ReadError and err.status_code is None
    assert str(err).endswith("failed: no HTTP answer")


def test_the_status_is_declared_on_every_error_and_survives_pickling():
    """Errors raised on dask workers reach the client pickled: the status comes along."""
    assert TerrascopeError("plain").status_code is None
    err = ReadError("Reading https://h.example/x.tif?sig=1 failed", status_code=416)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ReadError and back.status_code == 416
    assert str(back) == "Reading https://h.example/x.tif failed"


# --- the urllib3 Retry of the requests-based callers -----------------------------------------


def _backoffs(retry: Retry, failures: int) -> list[float]:
    """The waits ``retry`` asks for after each of ``failures`` failed (503) answers."""
    waits = []
    for _ in range(failures):
        retry = retry.increment("POST", "/search", response=HTTPResponse(status=503))
        waits.append(retry.get_backoff_time())
    return waits


@pytest.mark.parametrize(
    ("policy", "total", "factor"), [(SEARCH, 5, 0.5), (LOGIN, 4, 0.25)], ids=["search", "login"]
)
def test_the_urllib3_retry_waits_as_urllib3_did_with_the_old_numbers(policy, total, factor):
    """Search had ``Retry(total=5, backoff_factor=0.5)``, login ``total=4, 0.25``: the
    policy's Retry waits the same, first retry at once (urllib3's own formula is the
    oracle)."""
    built = policy.urllib3_retry()
    old = Retry(total=total, backoff_factor=factor, allowed_methods=None)
    assert built.total == total
    assert _backoffs(built, total) == _backoffs(old, total)
    assert _backoffs(built, total)[:3] == [0.0, 2 * factor, 4 * factor]


def test_the_urllib3_retry_caps_retry_after_as_its_policy_says():
    capped = dataclasses.replace(SEARCH, retry_after_cap=2.0).urllib3_retry()
    assert capped.parse_retry_after("100") == 2.0
    assert SEARCH.urllib3_retry().parse_retry_after("100") == 100.0  # as urllib3 had it


class _Scripted(http.server.ThreadingHTTPServer):
    """Answers each request with the next status of ``script`` (200 once it runs out)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script: list[int] = []
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/search"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: _Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with self.server.lock:
            self.server.requests += 1
            status = self.server.script.pop(0) if self.server.script else 200
        body = b'{"type": "FeatureCollection", "features": []}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    server = _Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _post(server: _Scripted, retry: Retry) -> str:
    """One STAC search POST through pystac-client's I/O, as the package sends it."""
    io = StacApiIO(timeout=(5.0, 10.0), max_retries=retry)
    return io.request(server.url, method="POST", parameters={"collections": ["c"]})


def test_search_retries_a_500_once_only(scripted):
    """stac-fastapi answers 500 for a query its database rejects: one retry, then the
    answer (500 twice, then 200: two requests, and the error keeps the 500)."""
    scripted.script = [500, 500]
    with pytest.raises(APIError) as info:
        _post(scripted, search.RETRY)
    assert info.value.status_code == 500
    assert scripted.requests == 2
    scripted.requests, scripted.script = 0, [500]
    assert '"features"' in _post(scripted, search.RETRY)  # one 500 and its retry
    assert scripted.requests == 2


def test_search_retries_a_503_several_times(scripted):
    scripted.script = [503, 503]  # waits of 0 and 1 s
    assert '"features"' in _post(scripted, search.RETRY)
    assert scripted.requests == 3


def test_search_gives_up_after_its_attempts(scripted):
    """A server that answers 503 for ever gets the policy's attempts, no more (the
    search's own Retry subclass, with the waits shortened)."""
    quick = dataclasses.replace(SEARCH, backoff_base=0.001)
    scripted.script = [503] * 20
    with pytest.raises(APIError) as info:
        _post(scripted, quick.urllib3_retry(search._StacRetry))
    assert info.value.status_code == 503
    assert scripted.requests == 6


def test_query_strings_the_url_redaction_does_not_delimit_are_left_out():
    """Libraries quote a file with its query but no scheme (libtiff's ``x.tif?sig=``,
    urllib3's ``with url: /download/?token=``), or a URL the redaction's pattern does not
    take (an IPv6 literal); and rasterio keeps its message in ``errmsg``, not only in its
    arguments: none of them keeps the query once redacted."""
    from xarray_terrascope import config

    for text in (
        "bad.tif?X-Amz-Signature=s3cret: TIFFReadDirectory failed",
        "Max retries exceeded with url: /download/?token=s3cret (Caused by ...)",
        "GDAL: http://[::1]:8080/x.tif?X-Amz-Signature=s3cret end",
    ):
        assert "s3cret" not in config.redact(text), text
    assert config.redact("what? nothing=here") == "what? nothing=here"

    class Quoting(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(1, message)
            self.errmsg = message

        def __str__(self) -> str:
            return self.errmsg

    inner = Quoting("x.tif?sig=s3cret not recognized")
    outer = ReadError("reading failed")
    outer.__context__ = inner
    config.redacted(outer)
    assert "s3cret" not in str(inner) and "s3cret" not in repr(inner.args)
