"""Fixtures of every test, unit and integration. The sandbox itself comes from the
package's pytest plugin (``terrascope_sandbox``, registered as a ``pytest11`` entry
point); helpers that tests import are in :mod:`tests.support`.

Layout: ``unit/<subpackage>/`` tests one module or engine piece with no server but one
it starts itself on 127.0.0.1 (the base modules' tests sit in ``unit/`` itself);
``integration/`` starts the sandbox, nginx, pgstac, a LocalCluster, a browser or
subprocesses.
"""

from __future__ import annotations

import logging
import os

import pytest

import xarray_terrascope as xts
from xarray_terrascope.engine import aio, gdal, origins, read
from xarray_terrascope.engine.header_cache import headers

from .support.helpers import TERRASCOPE_VARS

#: Helper modules, not tests: ``--doctest-modules`` (for the package's docstrings) must
#: not collect them from here.
collect_ignore = ["support"]


@pytest.fixture(autouse=True)
def fresh_engine_state():
    """After every test: forget what the read engine learnt and kept in this process, so
    no test depends on the ones before it (a per-origin limit of 1 taught by one test
    would otherwise hold back the next). Cleared: the per-origin limiters and multi-range
    knowledge, the tile store, COG headers in memory, read-ahead results, GDAL readers.

    Cheap, and it starts no event loop: the loop's state is touched only when the loop
    runs (a test that never read anything has none).
    """
    yield
    headers.clear_memory()
    gdal.clear_readers()
    if aio.started() is not None:  # the engine runs in this process (not inherited)
        read.clear_reader_cache()  # tiles, read-ahead and parsed headers live on its loop
        origins.reset_limiters()


@pytest.fixture
def sandbox_urls(terrascope_sandbox, monkeypatch, tmp_path):
    """Point the package at the sandbox by its endpoints only: no credentials anywhere.

    Tests log in explicitly; the process default is reset afterwards.
    """
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(
        "TERRASCOPE_CONFIG_DIR", str(tmp_path / "config")
    )  # logout() deletes a store
    for key in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS"):
        monkeypatch.setenv(key, terrascope_sandbox.env[key])
    terrascope_sandbox.reset()
    xts.logout()
    yield terrascope_sandbox
    xts.logout()
    read.clear_reader_cache()
    terrascope_sandbox.reset()  # latency, rate limits, faults back to their defaults


@pytest.fixture
def sb(terrascope_sandbox):
    """The session sandbox, with default switches and an empty log before and after."""
    terrascope_sandbox.reset()
    yield terrascope_sandbox
    terrascope_sandbox.reset()


@pytest.fixture(scope="module")
def world(terrascope_sandbox):
    """The session sandbox's world (its ground truth)."""
    return terrascope_sandbox.world


@pytest.fixture
def options():
    """``xts.set_options`` for one test, as ``monkeypatch`` is for attributes: whatever
    it sets is undone after the test."""
    import contextlib

    with contextlib.ExitStack() as stack:
        yield lambda **values: stack.enter_context(xts.set_options(**values))


@pytest.fixture
def logged_in(sandbox_urls):
    """The sandbox, with its main account logged in as the process default."""
    xts.login(sandbox_urls.username, sandbox_urls.password)
    return sandbox_urls


@pytest.fixture
def all_logs(caplog):
    """Capture every log record of every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster of two worker processes whose environment has no Terrascope
    credentials: whatever they read, they got from the package's worker plugin."""
    distributed = pytest.importorskip("distributed")
    saved = {k: os.environ.pop(k) for k in TERRASCOPE_VARS if k in os.environ}
    try:
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
            worker_dashboard_address=":0",
        ) as local:
            yield local
    finally:
        os.environ.update(saved)
