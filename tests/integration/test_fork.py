"""Reads in processes forked after the parent has read: a real ``multiprocessing`` pool
with the ``fork`` start method (the default on Linux before Python 3.14), which
async-tiff's runtime does not survive. The children must read the same, correct values
(through GDAL), never hang, and print nothing about the parent's HTTP session."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.testing import SAMPLE_FIELD

DAYS = {"start": "2025-05-01", "end": "2025-06-10"}
#: Seconds the pool's work may take: a hang fails the test instead of blocking the suite.
POOL_TIMEOUT = 60


def _read_date(args: tuple[xr.DataArray, int]) -> tuple[int, np.ndarray]:
    """In a pool process: one date of the cube."""
    array, t = args
    return os.getpid(), array.isel(time=t).values


@pytest.fixture
def forked_pool():
    """Makes a pool of 2 processes forked when called (after the parent's read); each
    pool is terminated at the end of the test."""
    pools = []

    def make():
        pools.append(multiprocessing.get_context("fork").Pool(2))
        return pools[-1]

    yield make
    for pool in pools:
        pool.terminate()
        pool.join()


def test_a_forked_pool_reads_the_same_cube_after_the_parent_read(logged_in, all_logs, forked_pool):
    from .test_read_engine import _truth

    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS)
    # the parent's engine (and async-tiff's runtime) run now; the children read the
    # dates it did not read, whose files they must open themselves
    ds.NDVI.isel(time=slice(0, 2)).load()
    pool = forked_pool()  # forked now, after the parent's read

    dates = list(range(2, ds.sizes["time"]))
    results = pool.map_async(_read_date, [(ds.NDVI, t) for t in dates]).get(POOL_TIMEOUT)
    pool.close()

    rng = np.random.default_rng(5)
    rows = rng.integers(0, ds.sizes["y"], 400)
    cols = rng.integers(0, ds.sizes["x"], 400)
    truth = _truth(logged_in, ds, rows, cols)  # (time, point) from the world
    parent = ds.NDVI.load().values
    for t, (pid, values) in zip(dates, results, strict=True):
        assert pid != os.getpid()
        np.testing.assert_array_equal(values[rows, cols], truth[t])
        np.testing.assert_array_equal(values, parent[t])
    pool.join()
    warned = [r for r in all_logs.records if "forked after its parent" in r.getMessage()]
    assert warned == [], "the parent itself reads with the async engine"


#: A user's script: read, fork a pool, read in it, exit. Run as a child process so that
#: what it prints is what a user sees (no test harness capturing its logging).
SCRIPT = """
import gc, multiprocessing, os, sys
import xarray as xr
import xarray_terrascope as xts

def read(args):
    array, t = args
    valid = int((array.isel(time=t).values != 255).sum())
    gc.collect()  # what the child's own work would do sooner or later
    return valid

if __name__ == "__main__":
    xts.login()
    ds = xr.open_dataset(list(map(float, sys.argv[1:5])), engine="terrascope", decode=False,
                         start=sys.argv[5], end=sys.argv[6])
    ds.NDVI.isel(time=0).load()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        valid = pool.map_async(read, [(ds.NDVI, t) for t in range(1, 5)]).get(60)
    print("valid", valid)
    ds.NDVI.load()  # reads under way (ahead) at the fork, connections in the pool
    pid = os.fork()  # a child that runs the engine's loop, with nothing to read
    if pid == 0:
        from xarray_terrascope.engine import aio

        async def nothing():
            return None

        aio.run(nothing())
        gc.collect()
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
"""


def test_forked_children_print_no_warnings_about_the_parents_session(logged_in, tmp_path):
    import subprocess

    from ..support.helpers import PYTHON_CHILD

    script = tmp_path / "fork_pool.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, **logged_in.env, TERRASCOPE_CACHE_DIR=str(tmp_path / "cache"))
    args = [*map(str, SAMPLE_FIELD), DAYS["start"], DAYS["end"]]
    done = subprocess.run(
        [*PYTHON_CHILD, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "valid [" in done.stdout
    assert "Unclosed" not in done.stderr, done.stderr[-4000:]
    # each child says why it reads through GDAL (a warning, once per process)
    assert 1 <= done.stderr.count("forked after its parent had started") <= 2, done.stderr


def _read_date_or_error(args: tuple[xr.DataArray, int]) -> tuple[str, object]:
    """In a pool process: one date of the cube, or the error's type and message."""
    array, t = args
    try:
        return "values", array.isel(time=t).values
    except Exception as err:  # handed back to the test, which checks it
        return type(err).__name__, str(err)


def test_a_spawned_pool_reads_with_the_credentials_of_its_environment(logged_in, monkeypatch):
    """Processes started with ``spawn`` do not inherit the parent's login: their reads
    fail naming why (not a logout nobody called) and the fix, and succeed with
    ``TERRASCOPE_USERNAME``/``TERRASCOPE_PASSWORD`` in their environment."""
    ds = xr.open_dataset(list(SAMPLE_FIELD), engine="terrascope", decode=False, **DAYS)
    parent = ds.NDVI.isel(time=slice(0, 2)).load().values
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        kind, message = pool.map_async(_read_date_or_error, [(ds.NDVI, 0)]).get(POOL_TIMEOUT)[0]
    assert kind == "AuthenticationError", (kind, message)
    assert "new process" in message and "TERRASCOPE_USERNAME" in message, message
    assert "logout() was called" not in message
    monkeypatch.setenv("TERRASCOPE_USERNAME", logged_in.username)
    monkeypatch.setenv("TERRASCOPE_PASSWORD", logged_in.password)
    with spawn.Pool(2) as pool:
        got = pool.map_async(_read_date_or_error, [(ds.NDVI, t) for t in (0, 1)]).get(POOL_TIMEOUT)
    for t, (kind, values) in enumerate(got):
        assert kind == "values", values
        np.testing.assert_array_equal(values, parent[t])
