"""dask.distributed: workers get credentials through the plugin, never through the graph."""

from __future__ import annotations

import base64
import gc
import logging
import os
import pickle
import subprocess
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr

distributed = pytest.importorskip("distributed")

import xarray_terrascope as xts  # noqa: E402
from xarray_terrascope import auth  # noqa: E402
from xarray_terrascope.auth import state  # noqa: E402
from xarray_terrascope.exceptions import AuthenticationError  # noqa: E402
from xarray_terrascope.testing import SAMPLE_FIELD  # noqa: E402

from ..support.helpers import NDVI, PYTHON_CHILD, TERRASCOPE_VARS, tif_records  # noqa: E402

#: The name the package registers its worker plugins under, each followed by its
#: sender's id (one per client of each process: ``plugin_name(client)``).
PLUGIN = "xarray-terrascope-credentials"


def _ours(plugins) -> list[str]:
    """The package's plugins among a scheduler's (any sender's)."""
    return [name for name in plugins if str(name).startswith(PLUGIN)]


def plugin_name(client) -> str:
    from xarray_terrascope.auth.plugin import plugin_name as of_the_client

    name = of_the_client(client)
    assert name is not None, "this process shares nothing with that client"
    return name


DAYS = {"start": "2025-05-01", "end": "2025-06-30"}


def _forms(secret: str) -> list[bytes]:
    return [secret.encode(), base64.b64encode(secret.encode())]


def _assert_absent(blob: bytes | str, secret: str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in _forms(secret):
        assert form not in data, f"password found in {where}"


@pytest.fixture(autouse=True)
def no_credentials_left_on_the_scheduler(cluster):
    """Each test starts and ends with no credentials on the module's scheduler: a test
    that left them there (a client closed before logout()) fails, and cannot make the
    next one pass or fail by accident. (The LocalCluster's scheduler runs in this
    process: its ``worker_plugins`` are read directly.)"""
    assert not _ours(cluster.scheduler.worker_plugins), "left by an earlier test"
    yield
    assert not _ours(cluster.scheduler.worker_plugins), "left on the scheduler"


@pytest.fixture
def client(cluster, sandbox_urls):
    with distributed.Client(cluster) as c:
        yield c
        xts.logout()  # removes the credentials from the scheduler while the client is open


def _worker_env(client):
    return client.run(lambda: {k: os.environ.get(k) for k in TERRASCOPE_VARS})


def _scheduler_plugins(client) -> dict[str, bytes]:
    """The worker plugins the scheduler keeps, as any client of it can read them."""
    return client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.worker_plugins))


def _worker_users(client) -> set[str | None]:
    """The user of the default credentials each worker has."""

    def user():

        creds = auth.current_credentials()
        return creds.username if creds else None

    return set(client.run(user).values())


def test_cluster_result_equals_threads_without_extra_steps(client, sandbox_urls):
    assert all(v == dict.fromkeys(TERRASCOPE_VARS) for v in _worker_env(client).values())
    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, chunksize=128, **DAYS)
    threaded = ds.NDVI.mean(["x", "y"]).compute(scheduler="threads")
    assert not _ours(_scheduler_plugins(client))  # nothing before a graph is computed
    sandbox_urls.log.clear()
    on_cluster = client.compute(ds.NDVI.mean(["x", "y"])).result()
    np.testing.assert_allclose(on_cluster.values, threaded.values, rtol=1e-6)
    assert np.isfinite(on_cluster.values).sum() > 5
    records = tif_records(sandbox_urls)
    assert records and all(r.user == sandbox_urls.username for r in records)
    # the computation put them there: any client of this scheduler can read them now
    assert sandbox_urls.password.encode() in _scheduler_plugins(client)[plugin_name(client)]


_READ_THE_SCHEDULER = """
import pickle, sys
from distributed import Client

with Client(sys.argv[1], timeout=30) as c:
    plugins = c.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.worker_plugins))
sys.stdout.buffer.write(pickle.dumps(plugins))
"""


def test_login_gives_nothing_to_a_client_that_computes_no_cube(cluster, sandbox_urls):
    """login() registers nothing on an unrelated client: neither its scheduler nor its
    workers get the credentials, and another process that never logged in and connects
    to that scheduler reads nothing secret there."""
    xts.login(sandbox_urls.username, sandbox_urls.password)
    with distributed.Client(cluster) as c:
        assert not _ours(_scheduler_plugins(c))
        assert _worker_users(c) == {None}
        env = {k: v for k, v in os.environ.items() if k not in TERRASCOPE_VARS}
        child = subprocess.run(
            [*PYTHON_CHILD, "-c", _READ_THE_SCHEDULER, cluster.scheduler_address],
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr.decode()[-3000:]
        assert not _ours(pickle.loads(child.stdout))
        _assert_absent(child.stdout, sandbox_urls.password, "what another process read")


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
        assert np.isfinite(c.compute(ds.NDVI.isel(time=1).mean()).result())  # shared now
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
            xts.logout()
            cluster.scale(2)
            c.wait_for_workers(2, timeout=60)


def test_client_created_after_login_works(cluster, sandbox_urls):
    """A client created after login() gets the credentials with its first computation
    of a cube; removing the plugin removes them from the workers."""
    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
    expected = float(ds.NDVI.isel(time=0).mean().compute(scheduler="threads"))
    with distributed.Client(cluster) as c:
        try:
            assert _worker_users(c) == {None}
            sandbox_urls.log.clear()
            assert float(c.compute(ds.NDVI.isel(time=0).mean()).result()) == pytest.approx(
                expected, rel=1e-6
            )
            assert {r.user for r in tif_records(sandbox_urls)} == {sandbox_urls.username}
            assert _worker_users(c) == {sandbox_urls.username}
            c.unregister_worker_plugin(plugin_name(c))
            assert _worker_users(c) == {None}  # removing the plugin removes the secret
        finally:
            xts.logout()


def test_reads_wait_for_credentials_that_are_still_on_their_way(cluster, sandbox_urls):
    """The plugin is registered while the graph goes out, so it may reach the workers
    after the first tasks: they wait for it. Made certain here by holding the
    registration at the (real, in-process) scheduler for 3 s before it proceeds."""
    import asyncio

    handlers = cluster.scheduler.handlers
    register = handlers["register_worker_plugin"]

    async def late_register(comm, **msg):
        await asyncio.sleep(3)
        return await register(comm, **msg)

    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
    expected = ds.NDVI.isel(time=slice(0, 4)).mean(["x", "y"]).compute(scheduler="threads")
    handlers["register_worker_plugin"] = late_register
    try:
        with distributed.Client(cluster) as c:
            try:
                got = c.compute(ds.NDVI.isel(time=slice(0, 4)).mean(["x", "y"])).result()
            finally:
                xts.logout()
    finally:
        handlers["register_worker_plugin"] = register
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-6)


def test_explicit_credentials_are_forgotten_with_their_cubes_and_on_logout(sandbox_urls):
    items = xts.search(NDVI, list(SAMPLE_FIELD), "2025-06-01", "2025-06-10")
    for _ in range(200):
        ds = xr.open_dataset(
            items,
            engine="terrascope",
            credentials=xts.Credentials(sandbox_urls.username, sandbox_urls.password),
        )
    del ds
    gc.collect()
    assert len(state._registry) == 0

    ds = xr.open_dataset(
        items,
        engine="terrascope",
        credentials=xts.Credentials(sandbox_urls.username, sandbox_urls.password),
    )
    gc.collect()
    assert len(state._registry) == 1  # the open cube keeps its credentials known
    xts.logout()
    assert len(state._registry) == 0
    with pytest.raises(AuthenticationError, match="open the cube again"):
        ds.NDVI.load()


def test_the_plugin_carries_only_what_the_computed_graphs_need(client, sandbox_urls):
    """The login default is not shipped for a graph that reads with explicit
    credentials, nor are the explicit credentials of a cube that was not computed."""
    (login_user, login_pw), (user, password) = list(sandbox_urls.users.items())[:2]
    xts.login(login_user, login_pw)
    used, unused = xts.Credentials(user, password), xts.Credentials(login_user, login_pw)
    ds = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", chunks={}, credentials=used, **DAYS
    )
    other = xr.open_dataset(
        list(SAMPLE_FIELD), engine="terrascope", chunks={}, credentials=unused, **DAYS
    )
    expected = float(ds.NDVI.isel(time=0).mean().compute(scheduler="threads"))
    sandbox_urls.log.clear()
    got = float(client.compute(ds.NDVI.isel(time=0).mean()).result())
    assert got == pytest.approx(expected, rel=1e-6)
    assert {r.user for r in tif_records(sandbox_urls)} == {user}
    shipped = _scheduler_plugins(client)[plugin_name(client)]
    _assert_absent(shipped, login_pw, "the plugin of a graph that does not use the login")
    plugin = pickle.loads(shipped)
    assert plugin._default is None
    assert set(plugin._handles) == {used.token}
    assert other.NDVI.shape  # (kept open: its credentials were registered, not shipped)


def test_share_credentials_registers_them_now(cluster, sandbox_urls):
    with distributed.Client(cluster) as c:
        with pytest.raises(AuthenticationError, match="login"):
            xts.share_credentials(c)  # nothing to share before a login
        xts.login(sandbox_urls.username, sandbox_urls.password)
        try:
            assert _worker_users(c) == {None}
            assert xts.share_credentials() is None  # the default client: c
            assert _worker_users(c) == {sandbox_urls.username}  # there when it returns
        finally:
            xts.logout()
        assert not _ours(_scheduler_plugins(c))
        assert _worker_users(c) == {None}


def test_an_asynchronous_client_gets_them_with_its_graphs(cluster, sandbox_urls):
    """An asynchronous client serializes graphs on its own event loop: the credentials
    are scheduled there too, and its logout() removes them without blocking the loop."""
    import asyncio
    import time

    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
    expected = float(ds.NDVI.isel(time=0).mean().compute(scheduler="threads"))

    async def main() -> tuple[float, set]:
        async with distributed.Client(cluster.scheduler_address, asynchronous=True) as c:
            got = float(await c.compute(ds.NDVI.isel(time=0).mean()))
            users = set((await c.run(lambda: xts.auth.current_credentials().username)).values())
            xts.logout()
            deadline = time.monotonic() + 30
            while _ours(
                await c.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.worker_plugins))
            ):
                assert time.monotonic() < deadline, "logout() did not remove the plugin"
                await asyncio.sleep(0.05)
            return got, users

    got, users = asyncio.run(main())
    assert got == pytest.approx(expected, rel=1e-6)
    assert users == {sandbox_urls.username}


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
        assert _worker_users(c) == {None}  # no plugin: the workers have only their environment
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


def _settle_read_ahead() -> int:
    """On a worker: wait until every read the engine started ahead of dask has ended;
    return how many such reads there are (results nobody has taken yet).

    A read that starts reading ahead submits that to the engine's loop before it
    returns, and the loop runs submissions in order: by the time this runs there, every
    read ahead of the reads before it has started, and is in the table awaited here."""
    import asyncio

    from xarray_terrascope.engine import aio

    async def settle() -> int:
        tasks = [task for task, _started in aio.engine().readahead.values()]
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    return aio.run(settle())


def test_a_worker_reads_ahead_only_as_far_as_its_own_run_of_dates(client, sandbox_urls):
    """Workers take turns on a window's partitions, so a worker reads ahead only while it
    has read the window's dates as one unbroken run, and only as many dates as that run
    held: dates 0, 2, 3 (date 1 went to another worker) read nothing ahead; dates 5, 6, 7
    read date 7 ahead after date 6, then dates 8 and 9 after 7, and no further. (One
    process reads ahead up to 32 files at once: ``test_read_engine``.)

    What was read is taken from the server's log once the worker's reads ahead have all
    ended (nothing else reads then), so a read ahead of one date too many cannot go
    unseen for having been slow."""
    from .test_read_engine import _pixel_requests, files_per_date

    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS)
    assert ds.sizes["time"] > 11
    names = files_per_date(ds)
    worker = sorted(client.scheduler_info()["workers"])[0]

    fetched: list[str] = []

    def read_on_the_worker(array: xr.DataArray, dates: list[int]) -> tuple[int, list[int]]:
        """Read ``dates`` on the worker; the reads it left ahead, and the dates fetched
        (the files' paths in ``fetched``)."""
        sandbox_urls.log.clear()
        client.submit(_read_dates, array, dates, workers=[worker], pure=False).result()
        waiting = client.submit(_settle_read_ahead, workers=[worker], pure=False).result()
        paths = [r.path for r in _pixel_requests(tif_records(sandbox_urls)) if r.status == 206]
        fetched[:] = paths
        return waiting, [
            t for t, files in enumerate(names) for p in paths if any(n in p for n in files)
        ]

    waiting, dates = read_on_the_worker(ds.NDVI, [0, 2, 3])
    assert (waiting, sorted(set(dates))) == (0, [0, 2, 3])

    window = ds.NDVI.isel(y=slice(0, 200))  # another window: its own run of dates
    waiting, dates = read_on_the_worker(window, [5, 6, 7])
    assert sorted(set(dates)) == [5, 6, 7, 8, 9]
    # read ahead, not taken by a read: each date's first file (its others are read only
    # where the first leaves pixels empty, by the read itself)
    assert waiting == 2
    assert len(fetched) == len(set(fetched))  # each file fetched once


def test_after_logout_the_workers_credential_error_comes_without_the_engines_frames(
    client, sandbox_urls
):
    """After logout(), a computation on the cluster raises the worker's AuthenticationError
    on the client, its message self-contained (what happened, what to do), without the
    read engine's and credential store's frames or a chained cause: the remote traceback
    ends at the cube's ``__getitem__``, and so does the worker's "Compute Failed" log."""
    import traceback

    xts.login(sandbox_urls.username, sandbox_urls.password)
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
    assert np.isfinite(float(ds.NDVI.isel(time=0).mean().compute()))
    xts.logout()
    with pytest.raises(AuthenticationError) as exc:
        ds.NDVI.isel(time=1).mean().compute()
    err = exc.value
    assert str(err).startswith("No Terrascope credentials in this dask worker")
    assert "xarray_terrascope.login() on the client" in str(err)
    package = [
        f.filename
        for f in traceback.extract_tb(err.__traceback__)
        if "xarray_terrascope" in f.filename
    ]
    assert len(package) == 1 and package[0].endswith("cube/dataset.py"), package
    assert err.__cause__ is None and err.__suppress_context__
    failed = [
        message
        for logs in client.get_worker_logs().values()
        for _, message in logs
        if "Compute Failed" in message and "No Terrascope credentials" in message
    ]
    assert failed and not any("engine/read.py" in m or "auth/state.py" in m for m in failed)


# --- a scheduler shared by several clients ---------------------------------------------------


def _settle_background() -> None:
    """On a worker: wait until the reads ahead and header prefetches it started end."""
    import asyncio

    from xarray_terrascope.engine import aio

    async def settle() -> None:
        engine = aio.engine()
        tasks = [task for task, _ in engine.readahead.values()] + list(engine.warming)
        await asyncio.gather(*tasks, return_exceptions=True)

    aio.run(settle())


_COMPUTE_AS_ENVIRONMENT = """
import sys, xarray as xr
from distributed import Client
from xarray_terrascope.testing import SAMPLE_FIELD
with Client(sys.argv[1], timeout=30) as c:
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={},
                         start="2025-06-10", end="2025-06-10")
    print(float(c.compute(ds.NDVI.mean()).result()))
"""


def test_a_graph_that_shares_nothing_never_reads_with_another_clients_credentials(
    client, sandbox_urls
):
    """On a scheduler shared with others, a user who gives the workers their own
    credentials (their environment) and shares none: their graph reads with those, even
    after another client of the scheduler shared its login."""
    (first, first_pw), (second, second_pw) = list(sandbox_urls.users.items())[:2]
    creds = {"TERRASCOPE_USERNAME": second, "TERRASCOPE_PASSWORD": second_pw}
    client.run(lambda values: os.environ.update(values), creds)
    try:
        xts.login(first, first_pw)  # another user, another client of the scheduler
        ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
        client.compute(ds.NDVI.isel(time=0).mean()).result()
        client.run(_settle_background)  # its reads ahead, with the first user's
        sandbox_urls.log.clear()
        env = {k: v for k, v in os.environ.items() if k not in TERRASCOPE_VARS}
        child = subprocess.run(
            [*PYTHON_CHILD, "-c", _COMPUTE_AS_ENVIRONMENT, client.scheduler.address],
            capture_output=True,
            env={**env, **creds},
            timeout=300,
            check=False,
        )
        assert child.returncode == 0, child.stderr.decode()[-2000:]
        assert {r.user for r in tif_records(sandbox_urls)} == {second}
    finally:
        client.run(lambda names: [os.environ.pop(n, None) for n in names], list(creds))


def test_two_clients_of_one_scheduler_keep_their_own_credentials(cluster, sandbox_urls):
    """Each client's plugin has a name of its own: the second client's does not replace
    (and tear down) the first's, whose later graphs still read with its login."""
    (first, first_pw), (second, second_pw) = list(sandbox_urls.users.items())[:2]
    xts.login(first, first_pw)
    with distributed.Client(cluster) as one, distributed.Client(cluster) as two:
        try:
            ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", chunks={}, **DAYS)
            one.compute(ds.NDVI.isel(time=0).mean()).result()
            other = xr.open_dataset(
                list(SAMPLE_FIELD), engine="terrascope", chunks={},
                credentials=xts.Credentials(second, second_pw), **DAYS,
            )  # fmt: skip
            two.compute(other.NDVI.isel(time=1).mean()).result()
            assert plugin_name(one) != plugin_name(two)
            one.run(_settle_background)  # its reads ahead, with the second user's
            sandbox_urls.log.clear()
            later = xr.open_dataset(
                list(SAMPLE_FIELD), engine="terrascope", chunks={}, start="2025-06-15",
                end="2025-06-20",
            )  # fmt: skip
            one.compute(later.NDVI.mean()).result()
            assert {r.user for r in tif_records(sandbox_urls)} == {first}
        finally:
            xts.logout()
