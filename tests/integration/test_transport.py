"""The async engine's HTTP transport against the sandbox: hosts that ignore ``Range``
(the transport alone, against servers a test starts, is in ``unit/engine``)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.engine import origins
from xarray_terrascope.testing import SAMPLE_FIELD

DAYS = {"start": "2025-06-01", "end": "2025-06-20"}


def _field(**kw):
    return xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS, **kw)


@pytest.fixture
def engine_afresh():
    """What the engine learns of the sandbox's origin here must not outlive the test."""
    from xarray_terrascope.engine import read

    origins.reset_limiters()
    read.clear_reader_cache()
    yield
    origins.reset_limiters()
    read.clear_reader_cache()


def _quiet(sandbox) -> None:
    """Wait until the download server answers nothing (reads under way have ended)."""
    deadline = time.monotonic() + 30
    while sandbox.download.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.download.in_flight == 0


def test_a_host_ignoring_range_sends_each_file_once(logged_in, all_logs, engine_afresh):
    """Every request answered with the whole file: each file is downloaded once and its
    header and tiles are cut from it (before: a whole file per header and tile request)."""
    clean = _field(chunks={}, chunksize=128).NDVI.load().values
    origins.reset_limiters()
    logged_in.download.ranges = False
    logged_in.log.clear()
    all_logs.clear()
    got = _field(chunks={}, chunksize=128).NDVI.load().values
    np.testing.assert_array_equal(got, clean)
    records = [r for r in logged_in.log.records() if r.path.endswith(".tif")]
    assert records and {r.status for r in records} == {200}
    per_file: dict[str, int] = {}
    for r in records:
        per_file[r.path] = per_file.get(r.path, 0) + 1
    assert set(per_file.values()) == {1}, per_file
    sizes = {r.path: r.bytes for r in records}
    assert logged_in.log.total_bytes(".tif") == sum(sizes.values())
    warnings = [
        r.getMessage()
        for r in all_logs.records
        if r.levelno == logging.WARNING and "whole files" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert logged_in.download_host in warnings[0]


def test_an_origin_that_honours_ranges_again_is_asked_ranges_again(logged_in, engine_afresh):
    """After whole files, the origin serves ranges again: one request finds it out, and
    the file's later requests are ranged (206)."""
    logged_in.download.ranges = False
    first = _field().NDVI.isel(time=0).load().values
    assert int((first != 255).sum()) > 0
    from xarray_terrascope.engine import read

    read.clear_reader_cache()  # stops reading ahead
    _quiet(logged_in)
    logged_in.download.ranges = True
    logged_in.log.clear()
    values = _field().NDVI.isel(time=slice(0, 3)).load().values
    np.testing.assert_array_equal(values[0], first)
    statuses = [r.status for r in logged_in.log.records() if r.path.endswith(".tif")]
    assert statuses and set(statuses) == {206}


def test_whole_files_read_with_old_credentials_do_not_answer_new_ones(logged_in, engine_afresh):
    """A logout and another account's login forget the whole files kept: the new
    account's read reaches the server under its own name."""
    (_, _), (second, second_pw) = list(logged_in.users.items())[:2]
    logged_in.download.ranges = False
    _field().NDVI.isel(time=0).load()
    import xarray_terrascope as xts

    xts.logout()  # stops reading ahead
    _quiet(logged_in)
    xts.login(second, second_pw)
    logged_in.log.clear()
    _field().NDVI.isel(time=0).load()
    users = {r.user for r in logged_in.log.records() if r.path.endswith(".tif")}
    assert users == {second}


def test_logout_stops_the_background_requests_of_the_old_credentials(
    logged_in, engine_afresh, tmp_path
):
    """A read prefetches the headers of the nearby dates' files in the background, one
    request at a time here (200 ms each). A logout cancels that work: once it returns,
    no request reaches the server but the one already on the wire (before: the
    prefetches ran on, for seconds, with the logged-out credentials)."""
    import xarray_terrascope as xts

    logged_in.download.latency = 0.2
    with xts.set_options(max_connections=1, cache_dir=tmp_path / "cache"):
        _field().NDVI.isel(time=0, x=slice(0, 64), y=slice(0, 64)).load()
        xts.logout()
        after = time.time()
        _quiet(logged_in)
        # absence can only be watched for: the prefetch would send one a 200 ms
        time.sleep(1.5)
    # (a request sent just before the logout may arrive just after it under load)
    late = [r for r in logged_in.log.records() if r.time > after]
    assert len(late) <= 1, [(r.path, r.user, r.time - after) for r in late]


def test_a_logout_stops_the_reads_under_way_from_sending_the_old_credentials(
    logged_in, engine_afresh, tmp_path
):
    """A read of a whole field (a request at a time, 200 ms each) with a logout in the
    middle: the read fails with an AuthenticationError and no request with the old
    credentials reaches the server after the logout but the one already on the wire
    (before: the read ran on to its end, for seconds, then failed all the same)."""
    import threading

    import xarray_terrascope as xts
    from xarray_terrascope.exceptions import AuthenticationError

    logged_in.download.latency = 0.2
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            _field().NDVI.load()
            outcome.append(None)
        except BaseException as err:  # handed to the test's thread
            outcome.append(err)

    with xts.set_options(max_connections=1, cache_dir=tmp_path / "cache"):
        logged_in.log.clear()
        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 30
        while len(logged_in.log.records()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        xts.logout()
        after = time.time()
        reader.join(60)
        _quiet(logged_in)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], AuthenticationError), outcome
    assert "Logged out during this read" in str(outcome[0])
    late = [r for r in logged_in.log.records() if r.time > after and r.user]
    assert len(late) <= 1, [(r.path, r.user, r.time - after) for r in late]


def test_ranges_to_a_multirange_origin_leave_the_gaps_between_them(logged_in, engine_afresh):
    """Tile ranges with a 4 KiB gap between them (a tile a cloud mask covers, say): to an
    origin not known yet, or one that answers a range per request, they go as one range
    across the gap (a request saved); to an origin known to answer multi-range
    requests, as two ranges in one request, and the gap is not fetched (before, it was
    fetched there too: 4 KiB for the ~100 bytes of a part's header)."""
    from xarray_terrascope import auth
    from xarray_terrascope.engine import aio
    from xarray_terrascope.engine.source import Source

    from ..support.helpers import tif_records

    sandbox = logged_in
    url = _field().terrascope.asset_urls()[0]
    access = auth.RequestAuth(auth.current_credentials())
    wanted = ([100_000, 164_096], [160_000, 224_096])  # two 60 kB ranges, 4 KiB apart

    async def read(starts, ends) -> list[bytes]:
        source = Source(url, "ITEM", access, None)
        got = await source.get_ranges_async(url, starts=starts, ends=ends)
        return [bytes(blob) for blob in got]

    def logged(starts, ends) -> tuple[list[bytes], list[str | None]]:
        sandbox.log.clear()
        blobs = aio.run(read(starts, ends))
        return blobs, [r.range for r in tif_records(sandbox)]

    blobs, ranges = logged(*wanted)
    assert ranges == ["bytes=100000-224095"]  # not known yet: bridged
    assert origins.multirange(url) is None
    logged([0, 200_000], [1_000, 201_000])  # far apart: a multi-range request, answered
    assert origins.multirange(url) is True
    blobs, ranges = logged(*wanted)
    assert [len(b) for b in blobs] == [60_000, 60_000]
    assert ranges == ["bytes=100000-159999,164096-224095"]
    whole = aio.run(_whole(url, access))
    assert blobs == [whole[100_000:160_000], whole[164_096:224_096]]


async def _whole(url: str, access) -> bytes:
    from xarray_terrascope.engine import transport

    blob, _ = await transport.get_range(url, 0, 300_000, access=access, label="ITEM")
    return bytes(blob)
