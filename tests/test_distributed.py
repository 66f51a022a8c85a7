"""dask.distributed: workers get credentials through the plugin, never through the graph."""

from __future__ import annotations

import base64
import logging
import os
import pickle
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr

distributed = pytest.importorskip("distributed")

import xarray_terrascope as xts  # noqa: E402
from xarray_terrascope.exceptions import AuthenticationError  # noqa: E402
from xarray_terrascope.testing import SAMPLE_FIELD  # noqa: E402

from .conftest import TERRASCOPE_VARS, tif_records  # noqa: E402

DAYS = {"start": "2025-05-01", "end": "2025-06-30"}


def _forms(secret: str) -> list[bytes]:
    return [secret.encode(), base64.b64encode(secret.encode())]


def _assert_absent(blob: bytes | str, secret: str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in _forms(secret):
        assert form not in data, f"password found in {where}"


@pytest.fixture
def client(cluster, sandbox_urls):
    with distributed.Client(cluster) as c:
        yield c


def _worker_env(client):
    return client.run(lambda: {k: os.environ.get(k) for k in TERRASCOPE_VARS})


def test_cluster_result_equals_threads_without_extra_steps(client, sandbox_urls):
    assert all(v == dict.fromkeys(TERRASCOPE_VARS) for v in _worker_env(client).values())
    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, chunksize=128, **DAYS)
    threaded = ds.NDVI.mean(["x", "y"]).compute(scheduler="threads")
    sandbox_urls.log.clear()
    on_cluster = client.compute(ds.NDVI.mean(["x", "y"])).result()
    np.testing.assert_allclose(on_cluster.values, threaded.values, rtol=1e-6)
    assert np.isfinite(on_cluster.values).sum() > 5
    records = tif_records(sandbox_urls)
    assert records and all(r.user == sandbox_urls.username for r in records)


def test_password_is_nowhere_in_what_travels_or_is_written(client, sandbox_urls, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password = sandbox_urls.password
    xts.login(sandbox_urls.username, password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, chunksize=128, **DAYS)
    _assert_absent(cloudpickle.dumps(ds), password, "cloudpickle.dumps(ds)")
    graph = ds.NDVI.data.__dask_graph__()
    _assert_absent(cloudpickle.dumps(dict(graph)), password, "the task graph")
    _assert_absent(repr(ds) + repr(ds.attrs) + ds._repr_html_(), password, "repr/attrs")

    mean = ds.NDVI.mean(["x", "y"])
    client.compute(mean).result()

    def scheduler_tasks(dask_scheduler):
        return pickle.dumps([ts.run_spec for ts in dask_scheduler.tasks.values()])

    _assert_absent(client.run_on_scheduler(scheduler_tasks), password, "the scheduler's tasks")

    nc, zarr_dir = tmp_path / "c.nc", tmp_path / "c.zarr"
    # computed first: netCDF4/HDF5 files cannot be written from several worker processes
    subset = ds.isel(time=slice(0, 3)).compute()
    subset.to_netcdf(nc)
    subset.drop_vars("spatial_ref").to_zarr(zarr_dir)
    _assert_absent(nc.read_bytes(), password, "the NetCDF file")
    for path in Path(zarr_dir).rglob("*"):
        if path.is_file():
            _assert_absent(path.read_bytes(), password, f"zarr file {path.name}")
    _assert_absent(caplog.text, password, "log records")


def test_worker_that_joins_later_gets_the_credentials(cluster, sandbox_urls):
    xts.login(sandbox_urls.username, sandbox_urls.password)
    with distributed.Client(cluster) as c:
        ds = xr.open_dataset(
            list(SAMPLE_FIELD), engine="terrascope", chunks={}, chunksize=64, **DAYS
        )
        cluster.scale(3)
        c.wait_for_workers(3, timeout=60)
        try:
            newest = max(
                c.scheduler_info()["workers"], key=lambda w: c.scheduler_info()["workers"][w]["id"]
            )
            fut = c.compute(
                ds.NDVI.isel(time=0).mean(), workers=[newest], allow_other_workers=False
            )
            assert np.isfinite(fut.result())
        finally:
            cluster.scale(2)
            c.wait_for_workers(2, timeout=60)


def _worker_users(client):
    from xarray_terrascope import auth

    def user():
        creds = auth.current_credentials()
        return creds.username if creds else None

    return set(client.run(user).values())


def test_client_created_after_login_works(cluster, sandbox_urls):
    xts.login(sandbox_urls.username, sandbox_urls.password)
    with distributed.Client(cluster) as c:
        assert _worker_users(c) == {sandbox_urls.username}
        c.unregister_worker_plugin("xarray-terrascope-credentials")
        assert _worker_users(c) == {None}  # removing the plugin removes the secret
    # a brand-new client: the client preload registers the plugin again
    with distributed.Client(cluster) as c:
        assert _worker_users(c) == {sandbox_urls.username}
        ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
        assert np.isfinite(c.compute(ds.NDVI.isel(time=0).mean()).result())


def test_logout_and_new_credentials_reach_later_computations(client, sandbox_urls):
    users = list(sandbox_urls.users.items())
    (first_user, first_pw), (second_user, second_pw) = users[0], users[1]
    xts.login(first_user, first_pw)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
    client.compute(ds.NDVI.isel(time=0).mean()).result()

    xts.logout()
    with pytest.raises(AuthenticationError) as info:
        client.compute(ds.NDVI.isel(time=1).mean()).result()
    message = str(info.value)
    assert "login()" in message and "TERRASCOPE_USERNAME" in message
    assert first_pw not in message

    xts.login(second_user, second_pw)
    sandbox_urls.log.clear()
    client.compute(ds.NDVI.isel(time=0).mean()).result()
    assert {r.user for r in tif_records(sandbox_urls)} == {second_user}


def test_workers_can_use_their_own_environment(cluster, sandbox_urls, monkeypatch):
    """With no login anywhere, each process reads TERRASCOPE_USERNAME/PASSWORD itself."""
    env = {
        "TERRASCOPE_USERNAME": sandbox_urls.username,
        "TERRASCOPE_PASSWORD": sandbox_urls.password,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with distributed.Client(cluster) as c:
        xts.logout()  # the workers' plugin now carries no default credentials
        # (a lambda: a pickled `os.environ.update` would update a copy of the client's environ)
        c.run(lambda values: os.environ.update(values), env)
        assert all(v == env for v in _worker_env(c).values())
        try:
            ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
            assert np.isfinite(c.compute(ds.NDVI.isel(time=0).mean()).result())
        finally:
            c.run(lambda: [os.environ.pop(k, None) for k in TERRASCOPE_VARS])


def _read_dates(array: xr.DataArray, dates: list[int]) -> None:
    """On a worker: read one date after another (each ``load`` is one read)."""
    for t in dates:
        array.isel(time=t).load()


def test_a_worker_reads_ahead_only_as_far_as_its_own_run_of_dates(client, sandbox_urls):
    """Workers take turns on a window's partitions, so a worker reads ahead only while it
    has read the window's dates as one unbroken run, and only as many dates as that run
    held: dates 0, 2, 3 (date 1 went to another worker) read nothing ahead; dates 5, 6, 7
    read date 7 ahead after date 6, then dates 8 and 9 after 7, and no further. (One
    process reads ahead up to 32 files at once: ``test_read_engine``.)"""
    import time

    from .test_read_engine import _pixel_requests, files_per_date

    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS)
    assert ds.sizes["time"] > 11
    names = files_per_date(ds)
    worker = sorted(client.scheduler_info()["workers"])[0]

    def fetched_dates() -> list[int]:
        time.sleep(1.0)  # any read ahead has started by now
        paths = [r.path for r in _pixel_requests(tif_records(sandbox_urls)) if r.status == 206]
        return [t for t, files in enumerate(names) for p in paths if any(n in p for n in files)]

    sandbox_urls.log.clear()
    client.submit(_read_dates, ds.NDVI, [0, 2, 3], workers=[worker], pure=False).result()
    assert sorted(set(fetched_dates())) == [0, 2, 3]

    window = ds.NDVI.isel(y=slice(0, 200))  # another window: its own run of dates
    sandbox_urls.log.clear()
    client.submit(_read_dates, window, [5, 6, 7], workers=[worker], pure=False).result()
    dates = fetched_dates()
    assert sorted(set(dates)) == [5, 6, 7, 8, 9]
    assert len(dates) == sum(len(names[t]) for t in set(dates))  # each file fetched once
