"""Shared fixtures. The sandbox itself comes from the package's pytest plugin
(``terrascope_sandbox``, registered as a ``pytest11`` entry point)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

import xarray_terrascope as xts
from xarray_terrascope.engine import aio, gdal, read, transport
from xarray_terrascope.engine.header_cache import headers

#: In CI (``CI=true``, set by GitHub Actions and .ci/run) a real-server tier that is
#: missing fails its tests: a green run must not hide that they never ran.
IN_CI = os.environ.get("CI") == "true"


def missing_tier(reason: str) -> None:
    """Skip the test for want of a real server or browser (``reason``); fail it in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing test tier fails the run)", pytrace=False)
    pytest.skip(reason)


#: Credentials a process may take from its environment (the workers must not have them).
TERRASCOPE_VARS = ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD")
NDVI = "terrascope-s2-ndvi-v2"
FAPAR = "terrascope-s2-fapar-v2"


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
        transport.reset_limiters()


@pytest.fixture
def sandbox_urls(terrascope_sandbox, monkeypatch, tmp_path):
    """Point the package at the sandbox by its endpoints only: no credentials anywhere.

    Tests log in explicitly; the process default is reset afterwards.
    """
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS"):
        monkeypatch.setenv(key, terrascope_sandbox.env[key])
    terrascope_sandbox.reset()
    xts.logout()
    yield terrascope_sandbox
    xts.logout()
    read.clear_reader_cache()
    terrascope_sandbox.reset()  # latency, rate limits, faults back to their defaults


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


def tif_records(sandbox, **kw):
    """Download-server records of COG requests."""
    return [r for r in sandbox.log.records(**kw) if r.path.endswith(".tif")]


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


def interrupt(proc) -> None:
    """Stop a child process the way a user does (Ctrl-C), by its own PID; close its
    pipes. ``proc.returncode`` tells how it ended.

    A child that has not exited 30 s later fails the test: it gets SIGABRT, which a
    child started with ``-X faulthandler`` (:data:`PYTHON_CHILD`) answers by writing the
    stack of each of its threads to stderr, and that stderr goes into the failure.
    """
    import signal
    import subprocess

    proc.send_signal(signal.SIGINT)
    try:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            tail = proc.stderr.read()[-8000:] if proc.stderr is not None else ""
            raise AssertionError(
                f"{proc.args} did not stop within 30 s of Ctrl-C; its stderr ends with:\n{tail}"
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


#: How tests start a Python child that :func:`interrupt` may have to diagnose.
PYTHON_CHILD = [sys.executable, "-X", "faulthandler"]


def restore_sigint() -> None:
    """``preexec_fn`` of a child that :func:`interrupt` stops: Ctrl-C's default action
    in it even when this test run itself ignores SIGINT, as a background job of a
    non-interactive shell (or ``nohup``) does, which a child would inherit and Python
    would honour by never raising ``KeyboardInterrupt``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def benchmark_module(name: str):
    """A module of ``benchmarks/`` (not a package: its scripts import each other by
    file), loaded from its file; e.g. ``_floor``, the read floors that tests measure
    against."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # what the module imports of its siblings
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
