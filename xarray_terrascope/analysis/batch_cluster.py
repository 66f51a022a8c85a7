"""Running a parcel batch on a ``dask.distributed`` cluster: the client (given, at an
address, or a LocalCluster of the batch's own, quiet after Ctrl-C and as it closes),
the dates cut into one group per worker (:func:`date_groups`), the units (a batch's
group of dates) dealt to the workers in runs of the Hilbert order (:class:`Queues`),
the COG headers fetched once and shared (:class:`SharedHeaders`), one task per unit
computed inside its worker (:func:`_compute_here`), and the loop that joins a batch's
units, writes each finished batch and survives dead workers (:func:`compute_batches`).
:mod:`.batch` plans the run and writes its partitions."""

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
    "date_groups",
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


def _check_address(address: str) -> None:
    """Refuse a scheduler address distributed cannot parse, before a ``Client`` is made
    for it: one that fails on it stays the process's default (dask's ``scheduler``
    setting too), and the next ``compute`` of anything waits for it for ever."""
    from distributed.comm import parse_address, registry
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        registry.get_backend(scheme)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise InvalidArgumentError(
            f"client: {address!r} is not a dask scheduler address ({err}); give one such "
            "as 'tcp://host:8786', or leave it out for a LocalCluster"
        ) from err


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
        _check_address(client)
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
            from xarray_terrascope.analysis.batch_quiet import QuietClose

            own.register_plugin(QuietClose())
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


#: What a batch's task imports in a worker process (its first task would otherwise pay
#: for it: about a second, while a warm worker goes through two of its units).
_TASK_MODULES = (
    "rasterio.features",
    "xvec",
    "xarray_terrascope.analysis.zonal",
    "xarray_terrascope.cube.backend",
    "xarray_terrascope.engine.read",
)


def _warm_up() -> None:
    """Import what a batch's task needs (in each worker, all at once, before the first
    units are dealt): a worker that starts a second later than the other ends its run
    later, and the other then takes units of its run, reading the tiles around them too."""
    import importlib

    for name in _TASK_MODULES:
        importlib.import_module(name)


def _compute_here(
    lazy: Any,
    shared_headers: Any = None,
    tile_store_mb: int = 0,
    dates: tuple[int, int] | None = None,
) -> Any:
    """One unit (a batch's statistics over a group of dates), computed in the worker
    process that runs this task with dask's threaded scheduler (as many threads as the
    worker has): its reads share the process's COG headers and tiles, and no task of it
    costs the cluster's per-task bookkeeping or moves data between workers.
    ``shared_headers`` (the COG headers the client fetched for the whole run) go into the
    worker's header cache first, so no worker requests a header.

    Every tile the unit fetches is kept in the worker's tile store (bounded by the
    ``tile_cache_mb`` option, or ``tile_store_mb`` if larger): the worker's next unit
    is the next batch along the Hilbert curve, whose windows overlap this one's, and the
    store's own rule (tiles crossing a side of the window) keeps only some of the tiles
    both need, depending on which of the two is read first (a run done backwards read
    more again than forwards).

    ``dates`` (``(start, stop)``, the unit's time steps) bounds the engine's read-ahead:
    the dates beyond are another worker's."""
    from distributed import get_worker

    from xarray_terrascope.engine import aio, header_share, readahead

    header_share.install(shared_headers)

    try:
        threads = get_worker().state.nthreads
    except ValueError:  # not on a worker (a client without workers never gets here)
        threads = None
    within = readahead.within(*dates) if dates is not None else contextlib.nullcontext()
    with aio.engine().tiles.keeping_all(tile_store_mb * 2**20), within:
        return lazy.compute(scheduler="threads", num_workers=threads)


class Queues:
    """The work to do, dealt to the workers in contiguous runs: a unit is a batch's dates
    of one group, ``(batch, group)``.

    With as many groups of dates as workers (:func:`date_groups`), each worker takes one
    group and every batch in the Hilbert order: a file, a date's, is then read by one
    worker only, and each worker's tile store keeps the tiles its next batch shares with
    the last (2 workers read what 1 reads). With fewer groups than workers (fewer dates
    than workers), each group's workers split its batches into contiguous runs of the
    Hilbert order instead: neighbouring batches share tiles, which a worker reads once,
    and two runs share the tiles of their boundary.

    Runs of a group go in turn forwards and backwards (the second run from its last batch
    down), so the workers of two neighbouring runs move towards their common boundary. A
    worker whose run is done takes a unit from the longest other run, at the end nearest
    the batch it did last: next to its own area, so the areas stay one contiguous run
    each and share only the tiles of one boundary (a batch from the far end would start
    a new boundary, whose tiles both workers read). It leaves a run's last unit to the
    run's worker (unless that one is gone): that worker asks for it when one of its
    units in flight is done, and taking it would not end the work sooner."""

    def __init__(self, todo: list[int], workers: list[str], groups: int = 1) -> None:
        self.runs: dict[str, collections.deque[tuple[int, int]]] = {}
        for g in range(groups):
            members = workers[g::groups]
            n = max(1, len(members))
            edges = [round(i * len(todo) / n) for i in range(n + 1)]
            for i, w in enumerate(members):
                run = todo[edges[i] : edges[i + 1]][:: -1 if i % 2 else 1]
                self.runs[w] = collections.deque((k, g) for k in run)
        self.shared = collections.deque(
            (k, g) for k in (todo if not workers else []) for g in range(groups)
        )
        self.last: dict[str, tuple[int, int]] = {}
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

    def _orphan(self, run: collections.deque[tuple[int, int]]) -> bool:
        """Whether ``run`` belongs to a worker gone (no one asks for it in its name)."""
        return any(self.runs.get(w) is run for w in self.gone)

    def current(self, worker: str | None) -> str | None:
        """The worker that does ``worker``'s run now: itself, or the worker that took it
        over when it was gone."""
        while worker is not None and worker in self.successor:
            worker = self.successor[worker]
        return worker

    def next(self, worker: str | None) -> tuple[int, int] | None:
        """The next unit ``(batch, group)`` for ``worker`` (None: any), or None when all
        are dealt."""
        own = self.runs.get(worker) if worker is not None else None
        if own:
            unit = own.popleft()
        else:
            longest = max(self.runs.values(), key=len, default=self.shared)
            if not longest:
                return self.shared.popleft() if self.shared else None
            if len(longest) == 1 and longest is not self.shared and not self._orphan(longest):
                # its worker, busy with its units in flight, asks for it next: taking it
                # would not end the run sooner (this worker is busy as long), and two
                # workers would read the tiles around it
                return None
            last = self.last[worker][0] if worker in self.last else None
            near_first = last is not None and abs(longest[0][0] - last) < abs(longest[-1][0] - last)
            unit = longest.popleft() if near_first else longest.pop()
            self.rebalanced += longest is not self.shared
        if worker is not None:
            self.last[worker] = unit
        return unit


def date_groups(dates: int, workers: int) -> list[slice]:
    """The time steps cut into ``min(workers, dates)`` contiguous groups of (nearly)
    equal size; one group (all) for 1 worker or none."""
    n = max(1, min(workers, dates))
    edges = [round(i * dates / n) for i in range(n + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(n)]


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


def _join_dates(*parts: Any) -> Any:
    """A batch's statistics from those of its groups of dates (in order)."""
    import xarray as xr

    if len(parts) == 1:
        return parts[0]
    # the parts differ only along time: the rest (geometries, ids) is taken from the first
    return xr.concat(
        parts,
        dim="time",
        data_vars="all",
        coords="minimal",
        compat="override",
        join="override",
        combine_attrs="override",
    )


def compute_batches(
    client: Any, job: _Job, todo: list[int], in_flight: int, tracker: _Tracker
) -> int:
    """Compute the batches ``todo`` on ``client``, at most ``in_flight`` units at a time,
    and write each batch as it finishes; on any error (or Ctrl-C) cancel those in
    flight. Returns how many units a worker took from another's run.

    The dates are cut into one group per worker (:func:`date_groups`): a unit, one
    batch's statistics over one group of dates, is one task (:func:`_compute_here`) sent
    to the group's worker (a loose restriction: another takes it when that worker is
    gone), which goes through every batch in the Hilbert order (:class:`Queues`); a
    batch's units are joined along time on the cluster, its post-steps run there, and
    the client writes it. Each file is then read by one worker, and its tiles once
    (the worker's tile store keeps those the next batch shares). A worker that dies is
    logged (:class:`~.batch_workers.WorkerWatch`), distributed computes its units again
    on the others, and the worker that replaces it takes over its run; a unit whose
    workers die too often ends the run with
    :class:`~xarray_terrascope.exceptions.BatchWorkerError`."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    from xarray_terrascope.auth.cluster import share_credentials

    # the batch's graph travels as a task's argument: give the workers the login's
    # credentials now (graphs sent to a scheduler get them by themselves)
    share_credentials(client)
    client.run(_warm_up)
    workers = sorted(client.scheduler_info().get("workers", {}))
    groups = date_groups(job.cube.sizes.get("time", 0), len(workers))
    queues = Queues(todo, workers, len(groups))
    headers = SharedHeaders(client, job.lazy(todo[0]))
    #: a unit's task key -> (batch, group, the worker asked, the task, whether its end
    #: sends the worker's next unit), and a batch's finished units: group -> (the task,
    #: the worker asked)
    units: dict[Any, tuple[int, int, str | None, Any, bool]] = {}
    parts: dict[int, dict[int, tuple[Any, str | None]]] = collections.defaultdict(dict)
    #: a batch's joined task key -> (batch, the task, its post-steps)
    joined: dict[Any, tuple[int, Any, dict[str, Any]]] = {}
    partition_of: dict[Any, int] = {}  # task key -> batch, read by the watch's thread
    finished = as_completed()
    resent = 0

    def submit(
        worker: str | None, again: tuple[int, int] | None = None, chain: bool = True
    ) -> None:
        worker = queues.current(worker)
        unit = queues.next(worker) if again is None else again
        if unit is None:
            return
        k, g = unit
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        dates = groups[g] if len(groups) > 1 else None
        future = client.submit(
            _compute_here,
            job.lazy(k, dates),
            headers.future(),
            job.tile_store_mb,
            None if dates is None else (dates.start, dates.stop),
            pure=False,
            **where,
        )
        units[future.key] = (k, g, worker, future, chain)
        logger.debug("batch: unit (%d, %d) sent to %s", k, g, worker)
        partition_of[future.key] = k
        finished.add(future)

    def join(k: int) -> None:
        """Batch ``k``'s units are all computed: join them, and run its post-steps."""
        inputs = [parts[k][g][0] for g in range(len(groups))]
        whole = client.submit(_join_dates, *inputs, pure=False) if len(inputs) > 1 else inputs[0]
        steps = {
            name: client.submit(_apply_step, step, whole, pure=False)
            for name, step in job.steps.items()
        }
        bare = client.submit(_without_geometry, whole, pure=False)
        for task in (whole, bare, *steps.values()):
            partition_of[task.key] = k
        # "" (no post-step has that name) holds the full result on the cluster until written
        joined[bare.key] = (k, bare, {"": whole, **steps})
        finished.add(bare)

    def resend(k: int, g: int, worker: str | None, err: BaseException, chain: bool = True) -> None:
        """Unit ``(k, g)`` was cancelled by the cluster (it lost its input, the shared
        headers, with the workers that held it; the future may say so only when its
        result is asked for): the same unit again."""
        nonlocal resent
        if resent >= _MAX_RESENT:
            raise killed_worker_error(err, k, tracker.partitions_done, job.folder) from err
        resent += 1
        logger.info("batch: partition %d cancelled by the cluster; sent again", k)
        submit(worker, again=(k, g), chain=chain)

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
                if future.key in units:  # a unit: keep its worker busy, join a full batch
                    k, g, worker, _, chain = units.pop(future.key)
                    logger.debug("batch: unit (%d, %d) of %s done", k, g, worker)
                    try:
                        if future.status != "finished":
                            future.result()  # raises what the task or the cluster did
                    except CancelledError as err:
                        partition_of.pop(future.key, None)
                        resend(k, g, worker, err, chain)
                        continue
                    except KilledWorker as err:
                        raise killed_worker_error(
                            err, k, tracker.partitions_done, job.folder
                        ) from err
                    parts[k][g] = (future, worker)
                    if len(parts[k]) == len(groups):
                        join(k)
                    follow(watch)
                    if chain:
                        submit(worker)
                    continue
                k, _, steps = joined.pop(future.key)
                try:
                    stats = future.result()
                    tables = {name: step.result() for name, step in steps.items() if name}
                except CancelledError as err:
                    # the units' results went with their workers and could not be
                    # computed again (the headers went too): every unit again
                    for task in (future, *steps.values(), *(t for t, _ in parts[k].values())):
                        partition_of.pop(task.key, None)
                    for g, (_, asked) in sorted(parts.pop(k).items()):
                        # not in a worker's slot: its end sends no other unit
                        resend(k, g, asked, err, chain=False)
                    continue
                except KilledWorker as err:
                    raise killed_worker_error(err, k, tracker.partitions_done, job.folder) from err
                job.write(k, stats, tables)
                n = len(job.members(k))
                logger.info("batch: partition %d written (%d parcels)", k, n)
                tracker.add(n)
                for task in (future, *steps.values(), *(t for t, _ in parts[k].values())):
                    partition_of.pop(task.key, None)
                del parts[k], stats, tables, future, steps
                follow(watch)
        tracker.workers_lost = watch.lost
        return queues.rebalanced
    except BaseException:
        pending = (
            [f for _, f, _ in joined.values()]
            + [f for _, _, s in joined.values() for f in s.values()]
            + [f for p in parts.values() for f, _ in p.values()]
            + [f for _, _, _, f, _ in units.values()]
        )
        client.cancel(pending)
        raise
