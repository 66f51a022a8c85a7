"""Keeps distributed's teardown race out of a batch run's output (:class:`QuietClose`).

Imported only where ``dask.distributed`` is (by
:func:`~xarray_terrascope.analysis.batch_cluster.cluster_client`, for the batch's own
LocalCluster).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["QuietClose"]

logger = logging.getLogger("xarray_terrascope.analysis.batch")

#: What ``distributed.worker`` logs, at ERROR with two tracebacks, when a heartbeat to
#: the scheduler fails.
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat."
_CLOSING = (Status.closing, Status.closing_gracefully, Status.closed)


class QuietClose(WorkerPlugin):
    """A heartbeat cut by its worker's own close is not logged.

    A worker that closes (every worker, at the end of every run) closes its connections
    while a heartbeat to the scheduler may still be waiting for its answer; distributed
    then logs :data:`HEARTBEAT_FAILED` at ERROR, with two tracebacks, at the end of a run
    that went well. The plugin's filter drops that one message while its worker is
    closing or closed, and keeps it while the worker runs (a scheduler out of reach is
    worth an ERROR). Registered with the scheduler, it reaches the workers that a Nanny
    starts again after a death too. The batch registers it on its own LocalCluster only:
    the workers of a cluster the user gives are left as they are.
    """

    name = "xarray-terrascope-quiet-close"
    idempotent = True

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(_HeartbeatAtClose(worker))

    # no teardown: the worker removes its plugins before it closes its connections, and
    # the filter has to outlive that (it goes with the worker's process)


class _HeartbeatAtClose(logging.Filter):
    """Drops :data:`HEARTBEAT_FAILED` once the worker it watches is closing."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self._worker = weakref.ref(worker)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != HEARTBEAT_FAILED:
            return True
        worker = self._worker()
        if worker is None or worker.status not in _CLOSING:
            return True
        logger.debug("batch: a heartbeat cut by its worker's own close, not logged")
        return False
