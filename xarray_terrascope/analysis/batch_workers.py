"""The batch's watch on the workers of its cluster, and what it does when one dies.

distributed itself recovers from a dead worker: the scheduler computes again, on the
other workers, the tasks the dead one was running and the results it held, and a
Nanny (every worker of a LocalCluster, and of ``dask worker``) starts a new worker
process, at a new address. :class:`WorkerWatch` follows the scheduler's events so the
batch can say so (one WARNING per worker lost, naming the partitions computed again)
and give the new worker the dead one's run of batches
(:meth:`~xarray_terrascope.analysis.batch_cluster.Queues.join`). A task whose workers die
more often than ``distributed.scheduler.allowed-failures`` allows fails with
distributed's ``KilledWorker``: :func:`killed_worker_error` makes it a
:class:`~xarray_terrascope.exceptions.BatchWorkerError` that names the partition and
how to resume.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from xarray_terrascope.exceptions import BatchWorkerError

__all__ = ["WorkerWatch", "killed_worker_error"]

logger = logging.getLogger("xarray_terrascope.analysis.batch")

#: The scheduler's event topic with the workers' arrivals and departures.
_TOPIC = "all"


class WorkerWatch:
    """Subscribes to the scheduler's worker events while a batch runs (a context manager).

    Parameters
    ----------
    client : distributed.Client
        The batch's client. A handler the client had for the topic keeps being called,
        and is set back at the end.
    partition_of : callable
        A task key to the partition it computes, or None when it is not the batch's.

    Attributes
    ----------
    changes : collections.deque of (str, str)
        ``("left", address)`` and ``("joined", address)`` in the order the scheduler
        told them; the batch's loop takes them (the handler runs on the client's event
        loop thread, the loop on the caller's: a deque's appends and pops are atomic).
    lost : int
        Workers gone without being asked to (died, or cut off from the scheduler).
    """

    def __init__(self, client: Any, partition_of: Callable[[Any], int | None]) -> None:
        self.client = client
        self.partition_of = partition_of
        self.changes: collections.deque[tuple[str, str]] = collections.deque()
        self.lost = 0
        self._previous: Callable[[Any], Any] | None = None

    def __enter__(self) -> WorkerWatch:
        # distributed keeps one handler per topic: call the caller's too
        self._previous = getattr(self.client, "_event_handlers", {}).get(_TOPIC)
        self.client.subscribe_topic(_TOPIC, self._on_event)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._previous is None:
            self.client.unsubscribe_topic(_TOPIC)
        else:
            self.client.subscribe_topic(_TOPIC, self._previous)

    def _on_event(self, event: Any) -> Any:
        _, message = event
        if isinstance(message, dict):
            self.note(message)
        if self._previous is not None:
            return self._previous(event)
        return None

    def note(self, message: dict[str, Any]) -> None:
        """Take one scheduler event: log a worker's departure, queue the change."""
        action, address = message.get("action"), message.get("worker")
        if not isinstance(address, str):
            return
        if action == "add-worker":
            logger.info("batch: worker %s joined the cluster", address)
            self.changes.append(("joined", address))
        elif action == "remove-worker":
            self.changes.append(("left", address))
            if message.get("expected"):
                logger.info("batch: worker %s left the cluster (retired)", address)
                return
            self.lost += 1
            again = self._partitions(
                [*message.get("processing-tasks", ()), *message.get("lost-computed-tasks", ())]
            )
            logger.warning(
                "batch: worker %s died or was cut off from the scheduler; %s",
                address,
                f"distributed computes the partition(s) it was computing or holding "
                f"({', '.join(map(str, again))}) again on another worker, unless their "
                "workers died more often than distributed.scheduler.allowed-failures"
                if again
                else "it was computing no partition of this run",
            )

    def _partitions(self, keys: Iterable[Any]) -> list[int]:
        found = {self.partition_of(key) for key in keys}
        return sorted(k for k in found if k is not None)


def killed_worker_error(
    err: BaseException, partition: int, written: int, folder: Path
) -> BatchWorkerError:
    """The error that ends a run whose ``partition`` failed with ``KilledWorker``
    (``err``), or was cancelled by the cluster too often: what happened, what to change,
    how to resume."""
    from distributed import KilledWorker

    if not isinstance(err, KilledWorker):
        return BatchWorkerError(
            f"batch: partition {partition} could not be computed: the cluster cancelled "
            f"it ({err}) after losing its workers too often. The {written} partition(s) "
            f"written stay in {str(folder)!r}: run the same command again to resume"
        )
    allowed = getattr(err, "allowed_failures", None)
    if isinstance(allowed, int):
        times = "once" if allowed == 0 else f"{allowed + 1} times"
    else:
        times = "too often"
    return BatchWorkerError(
        f"batch: partition {partition} could not be computed: the workers computing it "
        f"died {times} (dask's distributed.scheduler.allowed-failures is "
        f"{allowed if allowed is not None else 'set'}). If they ran out of memory, give "
        "them more or compute fewer batches at a time (max_in_flight, --max-in-flight). The "
        f"{written} partition(s) written stay in {str(folder)!r}: run the same command "
        "again to resume"
    )
