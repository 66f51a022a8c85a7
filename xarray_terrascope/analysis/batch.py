"""Zonal statistics of every parcel of a large file on a ``dask.distributed`` cluster, as
partitioned GeoParquet, resumable after a kill.

:func:`run_zonal_batch` sorts the parcels along a Hilbert curve (neighbours share a batch,
so a batch reads few tiles), cuts them into batches of ``batch_size`` and computes each
batch's :func:`~xarray_terrascope.analysis.zonal.zonal_stats` on the cluster, at most
``max_in_flight`` batches at a time (what bounds the memory of each worker). The client
writes each finished batch as ``part-NNNNN.parquet`` (atomically, see
:mod:`.batch_output`); a rerun with the same arguments skips the partitions already
there, and a run with other arguments is refused (:class:`BatchOutputError`).

Post-steps (``post_steps={"name": callable}``) run on the workers on each batch's computed
statistics and write ``<name>/part-NNNNN.parquet``: the place for smoothed series or
phenology per parcel.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xarray_terrascope.analysis import batch_output
from xarray_terrascope.analysis.batch_workers import WorkerWatch, killed_worker_error
from xarray_terrascope.analysis.tables import zonal_table
from xarray_terrascope.catalog.collections import DEFAULT_COLLECTION
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_STATS",
    "BatchProgress",
    "BatchResult",
    "run_zonal_batch",
]

logger = logging.getLogger(__name__)

#: Parcels per batch (and partition) when not given.
DEFAULT_BATCH_SIZE = 500
#: Statistics when not given.
DEFAULT_STATS = ("mean", "median", "std", "count", "valid_fraction")
#: Dask settings of the LocalCluster :func:`run_zonal_batch` starts itself (not of a
#: given client's cluster): distributed's statistical profiler samples every worker
#: thread's stack 100 times a second, a cost the threaded scheduler does not pay; and
#: the scheduler's work stealing would move a batch waiting on one worker to another
#: that is idle for a moment (between two batches, while the client writes), in the
#: middle of the first worker's run: both workers then read that batch's tiles.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
}
#: MiB of decoded tiles a worker's tile store holds at least while it runs batches (and
#: after): a batch's tiles plus those of the next one it shares. 64 (the
#: ``tile_cache_mb`` default) held too few for a 74-date season of 500-parcel batches
#: on the sandbox (35 % of the bytes read were tiles fetched again by the next batches),
#: 256 all of them (none fetched again).
DEFAULT_TILE_STORE_MB = 256
#: Batches a run submits again after the cluster cancelled them (it lost their input,
#: the shared COG headers, with the workers holding it) before it gives up.
_MAX_RESENT = 20
#: A post-step: the computed statistics of one batch (``(geometry, zonal_statistics,
#: time)``, with the id column as a coordinate along ``geometry``) to a table.
PostStep = Callable[[Any], Any]


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch run stands; given to ``progress`` after each partition."""

    parcels_done: int
    parcels_total: int
    partitions_done: int
    partitions_total: int
    #: Parcels found done at the start (skipped).
    parcels_skipped: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Parcels per second computed by this run (skipped ones left out)."""
        made = self.parcels_done - self.parcels_skipped
        return made / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None before the first partition."""
        rate = self.rate
        return (self.parcels_total - self.parcels_done) / rate if rate > 0 else None


@dataclass(frozen=True)
class BatchResult:
    """What :func:`run_zonal_batch` did."""

    out_dir: Path
    partitions: int
    written: int
    skipped: int
    parcels: int
    dates: int
    elapsed_s: float
    #: Batches a worker took from the end of another worker's run (its own was done):
    #: each reads tiles the other worker reads too.
    rebalanced: int = 0
    #: Workers that died (or were cut off) during the run; their batches were computed
    #: again on the others.
    workers_lost: int = 0


def _step_token(step: PostStep) -> str:
    """What identifies a post-step in the manifest: its ``batch_token`` attribute, else
    its qualified name (with the bound arguments of a ``functools.partial``)."""
    token = getattr(step, "batch_token", None)
    if isinstance(token, str):
        return token
    if isinstance(step, functools.partial):
        inner = _step_token(step.func)
        return f"{inner}(*{step.args!r}, **{sorted(step.keywords.items())!r})"
    return f"{getattr(step, '__module__', '?')}.{getattr(step, '__qualname__', repr(step))}"


def _check(
    parcels: Any, id_column: str, batch_size: int, max_in_flight: int | None, steps: Mapping
) -> None:
    import geopandas

    if not isinstance(parcels, geopandas.GeoDataFrame):
        raise InvalidArgumentError(
            f"parcels must be a GeoDataFrame or a vector file's path, got {type(parcels).__name__}"
        )
    if len(parcels) == 0:
        raise InvalidArgumentError("parcels holds no geometry")
    if parcels.crs is None:
        raise InvalidArgumentError("parcels has no CRS: set one (gdf.set_crs(...))")
    if id_column not in parcels.columns:
        raise InvalidArgumentError(
            f"id_column: parcels has no column {id_column!r}; its columns: "
            + ", ".join(str(c) for c in parcels.columns if c != parcels.geometry.name)
        )
    if parcels[id_column].duplicated().any():
        raise InvalidArgumentError(f"id_column: the values of {id_column!r} are not unique")
    for name, value in (("batch_size", batch_size), ("max_in_flight", max_in_flight)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    for name, step in steps.items():
        if not isinstance(name, str) or not name.isidentifier() or not callable(step):
            raise InvalidArgumentError(
                f"post_steps maps names (identifiers, the sub-folders) to callables, "
                f"got {name!r}: {step!r}"
            )


def _read(path: str | Path) -> Any:
    import geopandas

    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            return geopandas.read_parquet(path)
        return geopandas.read_file(path)
    except Exception as err:  # pyogrio and pyarrow raise several types
        raise InvalidArgumentError(f"parcels: cannot read {str(path)!r}: {err}") from err


def _hilbert_order(parcels: Any) -> np.ndarray:
    """Positions of the parcels along a Hilbert curve over their bounds (stable)."""
    geometry = parcels.geometry
    distance = geometry.hilbert_distance(total_bounds=geometry.total_bounds, level=16)
    return np.argsort(distance.to_numpy(), kind="stable")


@contextlib.contextmanager
def _client(client: Any, n_workers: int | None, threads_per_worker: int | None) -> Iterator[Any]:
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


def run_zonal_batch(
    parcels: Any,
    out_dir: str | Path,
    *,
    start: Any = None,
    end: Any = None,
    collection: str = DEFAULT_COLLECTION,
    stats: Sequence[str] = DEFAULT_STATS,
    id_column: str = "parcel_id",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_cloud_cover: float | None = None,
    client: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    max_in_flight: int | None = None,
    tile_store_mb: int = DEFAULT_TILE_STORE_MB,
    post_steps: Mapping[str, PostStep] | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
) -> BatchResult:
    """Zonal statistics of every parcel, one GeoParquet partition per batch, resumable.

    Parameters
    ----------
    parcels : geopandas.GeoDataFrame or path
        Polygons with a CRS and a unique ``id_column`` (a ``.parquet`` path is read as
        GeoParquet, any other with :func:`geopandas.read_file`).
    out_dir : str or Path
        A new or empty folder, or the folder of an interrupted run with the same
        arguments (its finished partitions are kept).
    start, end, collection, max_cloud_cover
        The cube, as in ``xr.open_dataset(..., engine="terrascope")``; its bbox is the
        parcels' bounds.
    stats : list of str
        Statistics, as in :func:`~xarray_terrascope.analysis.zonal.zonal_stats`.
    id_column : str
        The parcels' unique id, first column of every partition.
    batch_size : int
        Parcels per batch and partition.
    client : distributed.Client, str or None
        A client, a scheduler address (``"tcp://host:8786"``), or None for a
        LocalCluster of ``n_workers`` processes with ``threads_per_worker`` threads,
        closed at the end.
    max_in_flight : int, optional
        Batches computed at a time (default: 2 per worker); bounds each
        worker's memory.
    tile_store_mb : int
        MiB of decoded COG tiles each worker keeps at least (its read engine's tile
        store, for the rest of the worker process's life): the tiles a batch shares
        with the next batch of the worker's run are fetched once if both batches' tiles
        fit (two batches of 500 parcels of 1-20 ha: about 2-3.5 MiB per date; 128 MiB
        was too few for 74 dates on the sandbox, 256 enough; 0: the ``tile_cache_mb``
        option only).
    post_steps : dict of str to callable, optional
        ``name -> f(stats) -> pandas.DataFrame``, run on a worker on each batch's
        computed Dataset; written to ``out_dir/name/part-NNNNN.parquet``. Identified in
        the manifest by ``f.batch_token`` if set, else by its qualified name.
    progress : callable, optional
        Called with a :class:`BatchProgress` once at the start and after each partition.

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchOutputError
        When ``out_dir`` holds another run's partitions, or files without a manifest.
    InvalidArgumentError
        For bad parcels or arguments.
    BatchWorkerError
        When the workers computing a batch died more often than dask allows
        (``distributed.scheduler.allowed-failures``); a worker that dies less often is
        replaced and its batches computed again on the others (logged as a WARNING).
    """
    import xarray as xr

    from xarray_terrascope.analysis.zonal import _check_stats

    source = str(parcels) if isinstance(parcels, (str, Path)) else None
    if source is not None:
        parcels = _read(parcels)
    steps = dict(post_steps or {})
    _check(parcels, id_column, batch_size, max_in_flight, steps)
    if isinstance(tile_store_mb, bool) or not isinstance(tile_store_mb, (int, np.integer)):
        raise InvalidArgumentError(f"tile_store_mb must be an int, got {tile_store_mb!r}")
    if tile_store_mb < 0:
        raise InvalidArgumentError(f"tile_store_mb must be 0 or more, got {tile_store_mb!r}")
    names, _ = _check_stats(list(stats))
    folder = Path(out_dir)
    order = _hilbert_order(parcels)
    ordered = parcels.iloc[order].reset_index(drop=True)
    bbox = [float(v) for v in parcels.to_crs("EPSG:4326").total_bounds]
    ds = xr.open_dataset(
        bbox,  # type: ignore[arg-type]  # the terrascope engine takes a bbox
        engine="terrascope",
        start=start,
        end=end,
        collection=collection,
        max_cloud_cover=max_cloud_cover,
        chunks={},
    )
    item_ids = sorted(i.id for i in ds.terrascope.items)
    arguments = {
        "parcels": batch_output.fingerprint(parcels),
        "parcel_count": len(parcels),
        "id_column": id_column,
        "start": None if start is None else str(start),
        "end": None if end is None else str(end),
        "collection": collection,
        "max_cloud_cover": None if max_cloud_cover is None else float(max_cloud_cover),
        "stats": names,
        "batch_size": int(batch_size),
        "order": "hilbert",
        "post_steps": {name: _step_token(step) for name, step in sorted(steps.items())},
        "items": batch_output.fingerprint_text("\n".join(item_ids)),
    }
    from xarray_terrascope._version import __version__

    total = -(-len(ordered) // batch_size)
    batch_output.check_or_create(
        folder,
        arguments,
        {"partitions": total, "parcels_source": source, "package_version": __version__},
    )
    for name in steps:
        (folder / name).mkdir(exist_ok=True)
    done = batch_output.done_partitions(folder)
    todo = [k for k in range(total) if k not in done]

    def size(k: int) -> int:
        return min(batch_size, len(ordered) - k * batch_size)

    skipped = sum(size(k) for k in done if k < total)
    logger.info(
        "batch: %d parcels in %d partition(s) of %d, %d done before, %d date(s) of %s -> %s",
        len(ordered),
        total,
        batch_size,
        len(done),
        ds.sizes.get("time", 0),
        collection,
        folder,
    )
    tracker = _Tracker(len(ordered), total, skipped, total - len(todo), progress)
    tracker.report()
    rebalanced = 0
    if todo:
        with _client(client, n_workers, threads_per_worker) as dask_client:
            workers = len(dask_client.scheduler_info().get("workers", {})) or 1
            in_flight = max_in_flight or 2 * workers
            job = _Job(ds, ordered, folder, names, id_column, batch_size, steps, tile_store_mb)
            rebalanced = _compute(dask_client, job, todo, in_flight, tracker)
    elapsed = tracker.elapsed()
    logger.info(
        "batch: %d partition(s) written (%d taken from another worker's run), %d found done, "
        "%d worker(s) lost, in %.1f s",
        len(todo),
        rebalanced,
        len(done),
        tracker.workers_lost,
        elapsed,
    )
    return BatchResult(
        folder,
        total,
        len(todo),
        total - len(todo),
        len(ordered),
        ds.sizes.get("time", 0),
        elapsed,
        rebalanced,
        tracker.workers_lost,
    )


class _Tracker:
    """Counts what is done and tells ``progress``."""

    def __init__(
        self,
        parcels: int,
        partitions: int,
        skipped: int,
        done: int,
        progress: Callable[[BatchProgress], None] | None,
    ) -> None:
        self.parcels, self.partitions, self.skipped = parcels, partitions, skipped
        self.parcels_done, self.partitions_done = skipped, done
        self.progress = progress
        self.t0 = time.perf_counter()
        self.workers_lost = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, parcels: int) -> None:
        self.parcels_done += parcels
        self.partitions_done += 1
        self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(
                BatchProgress(
                    self.parcels_done,
                    self.parcels,
                    self.partitions_done,
                    self.partitions,
                    self.skipped,
                    self.elapsed(),
                )
            )


@dataclass(frozen=True)
class _Job:
    """What every batch of a run shares."""

    cube: Any
    parcels: Any  # in batch order
    folder: Path
    stats: list[str]
    id_column: str
    batch_size: int
    steps: dict[str, PostStep]
    tile_store_mb: int = 0

    def members(self, k: int) -> Any:
        return self.parcels.iloc[k * self.batch_size : (k + 1) * self.batch_size]

    def lazy(self, k: int) -> Any:
        """Batch ``k``'s statistics, lazy, with the id column along ``geometry``."""
        members = self.members(k)
        result = self.cube.terrascope.zonal_stats(members.geometry, self.stats, index=False)
        return result.assign_coords({self.id_column: ("geometry", members[self.id_column].values)})

    def write(self, k: int, stats: Any, tables: Mapping[str, Any]) -> None:
        """The post-steps' tables, then the main partition (the mark of a done batch)."""
        import geopandas

        name = batch_output.part_name(k)
        for step, table in tables.items():
            batch_output.write_atomic(
                self.folder / step / name, functools.partial(_to_parquet, table)
            )
        members = self.members(k)
        frame = zonal_table(stats.drop_vars(self.id_column), members, self.id_column)
        n_dates = stats.sizes["time"]
        geometry = np.repeat(members.geometry.to_numpy(), n_dates)
        table = geopandas.GeoDataFrame(frame, geometry=geometry, crs=members.crs)
        batch_output.write_atomic(self.folder / name, functools.partial(_to_parquet, table))


def _to_parquet(table: Any, path: Path) -> None:
    table.to_parquet(path, index=False)


class _Queues:
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


class _SharedHeaders:
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


def _compute(client: Any, job: _Job, todo: list[int], in_flight: int, tracker: _Tracker) -> int:
    """Compute the batches ``todo`` on ``client``, at most ``in_flight`` at a time, and
    write each as it finishes; on any error (or Ctrl-C) cancel those in flight. Returns
    how many batches a worker took from another's run.

    Each batch is one task (:func:`_compute_here`) sent to one worker (a loose
    restriction: another takes it when that worker is gone); a worker takes a contiguous
    run of batches (:class:`_Queues`), so neighbours share its tile store. A worker that
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
    queues = _Queues(todo, workers)
    headers = _SharedHeaders(client, job.lazy(todo[0]))
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
