"""Running a parcel batch on a ``dask.distributed`` cluster: the client (given, at an
address, or a LocalCluster of the batch's own, quiet after Ctrl-C), the batches dealt
to the workers in contiguous runs of the Hilbert order (:class:`Queues`), the COG
headers fetched once and shared (:class:`SharedHeaders`), one task per batch computed
inside its worker (:func:`_compute_here`), and the loop that writes each finished batch
and survives dead workers (:func:`compute_batches`). :mod:`.batch` plans the run and
writes its partitions."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from xarray_terrascope.analysis.batch_workers import WorkerWatch, killed_worker_error
from xarray_terrascope.exceptions import InvalidArgumentError

if TYPE_CHECKING:
    from xarray_terrascope.analysis.batch import _Job, _Tracker

__all__ = [
    "LOCAL_CLUSTER_CONFIG",
    "PostStep",
    "Queues",
    "SharedHeaders",
    "cluster_client",
    "compute_batches",
]

#: The batch's one logger (its messages are the run's, whichever module says them).
logger = logging.getLogger("xarray_terrascope.analysis.batch")

#: Dask settings of the LocalCluster :func:`run_zonal_batch` starts itself (not of a
#: given client's cluster): distributed's statistical profiler samples every worker
#: thread's stack 100 times a second, a cost the threaded scheduler does not pay; and
#: the scheduler's work stealing would move a batch waiting on one worker to another
#: that is idle for a moment (between two batches, while the client writes), in the
#: middle of the first worker's run: both workers then read that batch's tiles. The
#: Nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` is not set for the workers: with it a worker
#: spent 1.2-1.27x the threaded scheduler's CPU per parcel (4,000 parcels x 74 dates, 99 %
#: of it inside the batch's compute), without it 1.0-1.08x (glibc documents that setting
#: a malloc threshold turns off its dynamic mmap threshold: the likely cause, not
#: measured apart). A Nanny also writes the variable into its own process's environment,
#: which later workers inherit: a process that started another cluster before keeps it.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
#: Batches a run submits again after the cluster cancelled them (it lost their input,
#: the shared COG headers, with the workers holding it) before it gives up.
_MAX_RESENT = 20
#: A post-step: the computed statistics of one batch (``(geometry, zonal_statistics,
#: time)``, with the id column as a coordinate along ``geometry``) to a table.
PostStep = Callable[[Any], Any]


@contextlib.contextmanager
def cluster_client(
    client: Any, n_workers: int | None, threads_per_worker: int | None
) -> Iterator[Any]:
    """The given client, a client of the scheduler at an address, or a LocalCluster's."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "run_zonal_batch needs dask.distributed: pip install 'xarray-terrascope[distributed]'"
        ) from err
    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        try:
            own = Client(client, timeout="30s")
        except OSError as err:
            raise InvalidArgumentError(
                f"client: no dask scheduler answers at {client!r} ({err}); start one "
                "(dask scheduler) or leave the address out for a LocalCluster"
            ) from err
        with own:
            yield own
        return
    if client is not None:
        raise InvalidArgumentError(
            "client must be a distributed.Client, a scheduler address or None "
            f"(a LocalCluster), got {type(client).__name__}"
        )
    import dask

    muted: dict[str, int] = {}
    try:
        with (
            dask.config.set(LOCAL_CLUSTER_CONFIG),  # the Nanny passes it on to its worker
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as own,
        ):
            logger.info("started a LocalCluster: %s", cluster)
            try:
                yield own
            except KeyboardInterrupt:
                # closing a cluster in the middle of its work, distributed logs the
                # connections it cuts, with tracebacks that tell an interrupting user
                # nothing: quiet while this package's own cluster closes
                muted = _mute("distributed", "tornado")
                raise
    finally:
        for name, level in muted.items():
            logging.getLogger(name).setLevel(level)


def _mute(*names: str) -> dict[str, int]:
    """Set the loggers ``names`` to CRITICAL; returns their levels before."""
    levels = {}
    for name in names:
        levels[name] = logging.getLogger(name).level
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return levels


def _apply_step(step: PostStep, stats: Any) -> Any:
    return step(stats)


def _without_geometry(stats: Any) -> Any:
    """A batch's statistics without the geometry coordinate, for the client: it has the
    geometries already (:meth:`_Job.write` takes them from the parcels), and shapely's
    WKB pickling of them costs the worker and the client CPU."""
    return stats.drop_vars("geometry", errors="ignore")


def _cube_reads(lazy: Any) -> list[tuple[Any, int]]:
    """``(plan, asset_index)`` of each cube variable the lazy result reads (the
    :class:`~xarray_terrascope.cube.dataset.CubeArray` objects in its dask graph)."""
    from xarray_terrascope.cube.dataset import CubeArray

    found: dict[tuple[int, int], tuple[Any, int]] = {}
    for node in dict(lazy.__dask_graph__()).values():
        value = getattr(node, "value", node)  # a dask DataNode holds the array
        for _ in range(8):  # xarray's adapters around the backend array
            if isinstance(value, CubeArray):
                found[id(value.plan), value.asset_index] = (value.plan, value.asset_index)
                break
            value = getattr(value, "array", None)
            if value is None:
                break
    return list(found.values())


def _compute_here(lazy: Any, shared_headers: Any = None, tile_store_mb: int = 0) -> Any:
    """One batch, computed in the worker process that runs this task with dask's
    threaded scheduler (as many threads as the worker has): its reads share the
    process's COG headers and tiles, and no task of it costs the cluster's per-task
    bookkeeping or moves data between workers. ``shared_headers`` (the COG headers the
    client fetched for the whole run) go into the worker's header cache first, so no
    worker requests a header.

    Every tile the batch fetches is kept in the worker's tile store (bounded by the
    ``tile_cache_mb`` option, or ``tile_store_mb`` if larger): the worker's next batch
    is the next one along the Hilbert curve, whose windows overlap this one's, and the
    store's own rule (tiles crossing a side of the window) keeps only some of the tiles
    both need, depending on which of the two is read first (a run done backwards read
    more again than forwards)."""
    from distributed import get_worker

    from xarray_terrascope.engine import aio, header_share

    header_share.install(shared_headers)

    try:
        threads = get_worker().state.nthreads
    except ValueError:  # not on a worker (a client without workers never gets here)
        threads = None
    with aio.engine().tiles.keeping_all(tile_store_mb * 2**20):
        return lazy.compute(scheduler="threads", num_workers=threads)


class Queues:
    """The batches to do, cut into one contiguous run of the Hilbert order per worker:
    neighbouring batches share tiles, which a worker then reads once (its tile store)
    instead of each worker reading them.

    Runs go in turn forwards and backwards (the second run from its last batch down), so
    the workers of two neighbouring runs move towards their common boundary. A worker
    whose run is done takes a batch from the longest other run, at the end nearest the
    batch it did last: next to its own area, so the two areas stay one contiguous run
    each and share only the tiles of one boundary (a batch from the far end would start
    a new boundary, whose tiles both workers read)."""

    def __init__(self, todo: list[int], workers: list[str]) -> None:
        n = max(1, len(workers))
        edges = [round(i * len(todo) / n) for i in range(n + 1)]
        self.runs = {
            w: collections.deque(todo[edges[i] : edges[i + 1]][:: -1 if i % 2 else 1])
            for i, w in enumerate(workers)
        }
        self.shared = collections.deque(todo if not workers else [])
        self.last: dict[str, int] = {}
        self.rebalanced = 0
        #: workers gone whose run waits for a new worker, and new workers without a run
        self.gone: collections.deque[str] = collections.deque()
        self.spare: collections.deque[str] = collections.deque()
        #: a gone worker -> the new worker that took its run
        self.successor: dict[str, str] = {}

    def leave(self, worker: str) -> None:
        """``worker`` is gone (a dead worker process): its run goes to the next worker
        that joins. Until one does, the batches asked for in its name are computed by
        whichever worker the scheduler picks."""
        if worker in self.spare:
            self.spare.remove(worker)
        elif worker in self.runs and worker not in self.gone:
            self.gone.append(worker)
            self._match()

    def join(self, worker: str) -> None:
        """A new ``worker`` (a Nanny's restart of a dead one, at a new address) takes the
        run of the worker gone first, and the batches asked for in that one's name."""
        if worker not in self.runs and worker not in self.spare:
            self.spare.append(worker)
            self._match()

    def _match(self) -> None:
        while self.gone and self.spare:
            old, new = self.gone.popleft(), self.spare.popleft()
            self.runs[new] = self.runs.pop(old)
            if old in self.last:
                self.last[new] = self.last.pop(old)
            self.successor[old] = new
            logger.info(
                "batch: worker %s takes over the %d batch(es) left of the run of %s",
                new,
                len(self.runs[new]),
                old,
            )

    def current(self, worker: str | None) -> str | None:
        """The worker that does ``worker``'s run now: itself, or the worker that took it
        over when it was gone."""
        while worker is not None and worker in self.successor:
            worker = self.successor[worker]
        return worker

    def next(self, worker: str | None) -> int | None:
        own = self.runs.get(worker) if worker is not None else None
        if own:
            k = own.popleft()
        else:
            longest = max(self.runs.values(), key=len, default=self.shared)
            if not longest:
                return self.shared.popleft() if self.shared else None
            last = self.last.get(worker) if worker is not None else None
            near_first = last is not None and abs(longest[0] - last) < abs(longest[-1] - last)
            k = longest.popleft() if near_first else longest.pop()
            self.rebalanced += longest is not self.shared
        if worker is not None:
            self.last[worker] = k
        return k


class SharedHeaders:
    """The COG headers of every file the run reads, fetched here once and sent to every
    worker (``client.scatter(..., broadcast=True)``): each header is requested once per
    cluster, not once per worker.

    Scattered data lives on the workers only: when every worker holding it is gone (the
    only worker died, or all at once) distributed forgets it and cancels the batches
    that need it. :meth:`future` then scatters the headers again from the client's copy
    (no request), and the batch's loop submits the cancelled batches again."""

    def __init__(self, client: Any, lazy: Any) -> None:
        from xarray_terrascope.engine import header_share

        self.client = client
        shared = header_share.fetch_plan_headers(_cube_reads(lazy))
        self.data = shared if shared.entries else None
        self._future = self._scatter(broadcast=True)

    def _scatter(self, broadcast: bool) -> Any:
        if self.data is None:
            return None
        return self.client.scatter(self.data, broadcast=broadcast, hash=False)

    def future(self) -> Any:
        """The headers' future on the cluster (None when the run reads no file), scattered
        again when the cluster lost them."""
        if self._future is not None and self._future.status != "finished":
            logger.warning(
                "batch: the cluster lost the shared COG headers with its workers; sent again"
            )
            # to one worker (the others fetch it from there): a broadcast while the
            # Nannies restarted their workers failed here with distributed 2026.8 (the
            # scheduler could not serialize a WorkerState and dropped the client)
            self._future = self._scatter(broadcast=False)
        return self._future


def compute_batches(
    client: Any, job: _Job, todo: list[int], in_flight: int, tracker: _Tracker
) -> int:
    """Compute the batches ``todo`` on ``client``, at most ``in_flight`` at a time, and
    write each as it finishes; on any error (or Ctrl-C) cancel those in flight. Returns
    how many batches a worker took from another's run.

    Each batch is one task (:func:`_compute_here`) sent to one worker (a loose
    restriction: another takes it when that worker is gone); a worker takes a contiguous
    run of batches (:class:`Queues`), so neighbours share its tile store. A worker that
    dies is logged (:class:`~.batch_workers.WorkerWatch`), distributed computes its
    batches again on the others, and the worker that replaces it takes over its run; a
    batch whose workers die too often ends the run with
    :class:`~xarray_terrascope.exceptions.BatchWorkerError`."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    from xarray_terrascope.auth.cluster import share_credentials

    # the batch's graph travels as a task's argument: give the workers the login's
    # credentials now (graphs sent to a scheduler get them by themselves)
    share_credentials(client)
    workers = sorted(client.scheduler_info().get("workers", {}))
    queues = Queues(todo, workers)
    headers = SharedHeaders(client, job.lazy(todo[0]))
    running: dict[str, tuple[int, Any, dict[str, Any], str | None]] = {}
    partition_of: dict[Any, int] = {}  # task key -> batch, read by the watch's thread
    finished = as_completed()
    resent = 0

    def submit(worker: str | None, again: int | None = None) -> None:
        worker = queues.current(worker)
        k = queues.next(worker) if again is None else again
        if k is None:
            return
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = client.submit(
            _compute_here, job.lazy(k), headers.future(), job.tile_store_mb, pure=False, **where
        )
        steps = {
            name: client.submit(_apply_step, step, future, pure=False, **where)
            for name, step in job.steps.items()
        }
        bare = client.submit(_without_geometry, future, pure=False, **where)
        for task in (future, bare, *steps.values()):
            partition_of[task.key] = k
        # "" (no post-step has that name) holds the full result on the worker until written
        running[bare.key] = (k, bare, {"": future, **steps}, worker)
        finished.add(bare)

    def follow(watch: WorkerWatch) -> None:
        while watch.changes:
            change, address = watch.changes.popleft()
            (queues.join if change == "joined" else queues.leave)(address)

    try:
        with WorkerWatch(client, partition_of.get) as watch:
            slots = [workers[i % len(workers)] if workers else None for i in range(in_flight)]
            for worker in slots:
                submit(worker)
            for future in finished:
                k, _, steps, worker = running.pop(future.key)
                try:
                    stats = future.result()
                    tables = {name: step.result() for name, step in steps.items() if name}
                except CancelledError as err:
                    # distributed cancels the batches whose input, the scattered
                    # headers, went with the workers that held it (the future may say
                    # so only when its result is asked for): the same batch again
                    if resent >= _MAX_RESENT:
                        raise killed_worker_error(
                            err, k, tracker.partitions_done, job.folder
                        ) from err
                    resent += 1
                    for task in (future, *steps.values()):
                        partition_of.pop(task.key, None)
                    logger.info("batch: partition %d cancelled by the cluster; sent again", k)
                    submit(worker, again=k)
                    continue
                except KilledWorker as err:
                    raise killed_worker_error(err, k, tracker.partitions_done, job.folder) from err
                job.write(k, stats, tables)
                n = len(job.members(k))
                logger.info("batch: partition %d written (%d parcels)", k, n)
                tracker.add(n)
                for task in (future, *steps.values()):
                    partition_of.pop(task.key, None)
                del stats, tables, future, steps
                follow(watch)
                submit(worker)
        tracker.workers_lost = watch.lost
        return queues.rebalanced
    except BaseException:
        pending = [f for _, f, _, _ in running.values()] + [
            f for _, _, s, _ in running.values() for f in s.values()
        ]
        client.cancel(pending)
        raise
