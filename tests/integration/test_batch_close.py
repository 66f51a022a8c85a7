"""The batch's own LocalCluster closes without distributed's heartbeat race in its output.

A worker that closes while its heartbeat waits for the scheduler's answer logs "Failed
to communicate with scheduler during heartbeat." at ERROR with two tracebacks (CI saw it
once at the end of a CLI run that went well). The race is made certain here with a real
scheduler process held by SIGSTOP while a real worker (in this process) heartbeats and
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from xarray_terrascope.analysis.batch_quiet import (  # noqa: E402
    HEARTBEAT_FAILED,
    QuietClose,
    _HeartbeatAtClose,
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def heartbeat_errors(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.msg == HEARTBEAT_FAILED]


@pytest.fixture
def worker_log() -> Iterator[_Records]:
    """What ``distributed.worker`` lets through its filters; the package's filters are
    taken off this process's logger after the test."""
    log = logging.getLogger("distributed.worker")
    handler = _Records()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        for f in [f for f in log.filters if isinstance(f, _HeartbeatAtClose)]:
            log.removeFilter(f)


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A ``dask scheduler`` process on loopback, stopped by its own PID."""
    file = tmp_path / "scheduler.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (file.exists() and file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "no scheduler"
            time.sleep(0.05)
        proc.address = json.loads(file.read_text())["address"]  # type: ignore[attr-defined]
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=30)


async def _close_during_heartbeat(scheduler: subprocess.Popen, quiet: bool) -> None:
    worker = await distributed.Worker(scheduler.address, nthreads=1, dashboard=False)
    if quiet:
        await worker.plugin_add(QuietClose())
    os.kill(scheduler.pid, signal.SIGSTOP)
    try:
        heartbeat = asyncio.ensure_future(worker.heartbeat())
        await asyncio.sleep(0.2)  # the heartbeat is waiting for the stopped scheduler
        await worker.close(timeout=2)
        await heartbeat
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)


def test_a_worker_closing_during_a_heartbeat_logs_nothing_with_the_plugin(scheduler, worker_log):
    """Without the plugin the race logs its ERROR (the test reproduces it); with it, not."""
    asyncio.run(_close_during_heartbeat(scheduler, quiet=False))
    # the worker's own periodic heartbeat may be waiting too: one record or two
    errors = worker_log.heartbeat_errors()
    assert errors and all(r.levelno == logging.ERROR for r in errors)
    worker_log.records.clear()
    asyncio.run(_close_during_heartbeat(scheduler, quiet=True))
    assert worker_log.heartbeat_errors() == []


def test_the_message_is_kept_while_the_worker_runs(scheduler, worker_log):
    """A heartbeat that fails while the worker runs (a scheduler out of reach) keeps its
    ERROR: the message is logged here as distributed logs it, by a running worker with
    the plugin (a real failure would close the worker first, through its broken stream
    to the scheduler)."""

    async def main() -> None:
        worker = await distributed.Worker(scheduler.address, nthreads=1, dashboard=False)
        await worker.plugin_add(QuietClose())
        assert worker.status == distributed.core.Status.running
        logging.getLogger("distributed.worker").error(HEARTBEAT_FAILED)
        await worker.close(timeout=2)

    asyncio.run(main())
    assert len(worker_log.heartbeat_errors()) == 1


def test_the_batchs_own_cluster_registers_the_plugin():
    """Every worker of the batch's LocalCluster has it; a given client's are left alone."""
    from xarray_terrascope.analysis.batch_cluster import cluster_client

    with cluster_client(None, 1, 1) as client:
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all(QuietClose.name in names for names in plugins.values()), plugins
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as given,
        cluster_client(given, None, None) as same,
    ):
        assert same is given
        names = given.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert not any(QuietClose.name in n for n in names.values()), names
