"""Zonal statistics of every parcel of a large file on a ``dask.distributed`` cluster, as
partitioned GeoParquet, resumable after a kill.

:func:`run_zonal_batch` sorts the parcels along a Hilbert curve (neighbours share a batch,
so a batch reads few tiles), cuts them into batches of ``batch_size`` and computes each
batch's :func:`~xarray_terrascope.analysis.zonal.zonal_stats` on the cluster, at most
``max_in_flight`` units (a batch's group of dates, one group per worker) at a time
(what bounds the memory of each worker). The client
writes each finished batch as ``part-NNNNN.parquet`` (atomically, see
:mod:`.batch_output`); a rerun with the same arguments skips the partitions already
there, and a run with other arguments is refused (:class:`BatchOutputError`).

Post-steps (``post_steps={"name": callable}``) run on the workers on each batch's computed
statistics and write ``_steps/<name>/part-NNNNN.parquet``: the place for smoothed series or
phenology per parcel.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xarray_terrascope.analysis import batch_output
from xarray_terrascope.analysis.batch_cluster import PostStep, cluster_client, compute_batches
from xarray_terrascope.analysis.tables import (
    attribute_dtypes,
    check_parcel_table,
    check_parcels,
    read_parcels,
    zonal_table,
)
from xarray_terrascope.analysis.zonal import zonal_stats_of_steps
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
#: MiB of decoded tiles a worker's tile store holds at least while it runs batches (and
#: after): a batch's tiles plus those of the next one it shares. 64 (the
#: ``tile_cache_mb`` default) held too few for a 74-date season of 500-parcel batches
#: on the sandbox (35 % of the bytes read were tiles fetched again by the next batches),
#: 256 all of them (none fetched again).
DEFAULT_TILE_STORE_MB = 256


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
    #: Units (a batch's group of dates) a worker took from the end of another worker's
    #: run (its own was done): each reads tiles the other worker reads too.
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
    problem = check_parcels(parcels, id_column)
    if problem is not None:
        raise InvalidArgumentError(f"{problem[0]}: {problem[1]}")
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


def _hilbert_order(parcels: Any) -> np.ndarray:
    """Positions of the parcels along a Hilbert curve over their bounds (stable)."""
    geometry = parcels.geometry
    distance = geometry.hilbert_distance(total_bounds=geometry.total_bounds, level=16)
    return np.argsort(distance.to_numpy(), kind="stable")


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
        arguments (its finished partitions are kept). One run at a time writes into it.
    start, end, collection, max_cloud_cover
        The cube, as in ``xr.open_dataset(..., engine="terrascope")``; its bbox is the
        parcels' bounds.
    stats : str or list of str
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
        Units computed at a time (default: 2 per worker; a unit is one batch's
        statistics over one worker's group of dates); bounds each worker's memory.
    tile_store_mb : int
        MiB of decoded COG tiles each worker keeps at least (its read engine's tile
        store, for the rest of the worker process's life): the tiles a batch shares
        with the next batch of the worker's run are fetched once if both batches' tiles
        fit (two batches of 500 parcels of 1-20 ha: about 2-3.5 MiB per date; 128 MiB
        was too few for 74 dates on the sandbox, 256 enough; 0: the ``tile_cache_mb``
        option only).
    post_steps : dict of str to callable, optional
        ``name -> f(stats) -> pandas.DataFrame``, run on a worker on each batch's
        computed Dataset; written to ``out_dir/_steps/name/part-NNNNN.parquet``. Identified in
        the manifest by ``f.batch_token`` if set, else by its qualified name.
    progress : callable, optional
        Called with a :class:`BatchProgress` once at the start and after each partition.

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchOutputError
        When ``out_dir`` holds another run's partitions, or files without a manifest, or
        another run is writing into it.
    InvalidArgumentError
        For bad parcels or arguments (an attribute column of mixed types, which no
        Parquet column can hold, included).
    BatchWorkerError
        When the workers computing a batch died more often than dask allows
        (``distributed.scheduler.allowed-failures``); a worker that dies less often is
        replaced and its batches computed again on the others (logged as a WARNING).
    """
    import xarray as xr

    from xarray_terrascope.analysis.zonal import _check_stats

    source = str(parcels) if isinstance(parcels, (str, Path)) else None
    if source is not None:
        parcels = read_parcels(parcels, "parcels")
    steps = dict(post_steps or {})
    _check(parcels, id_column, batch_size, max_in_flight, steps)
    if isinstance(tile_store_mb, bool) or not isinstance(tile_store_mb, (int, np.integer)):
        raise InvalidArgumentError(f"tile_store_mb must be an int, got {tile_store_mb!r}")
    if tile_store_mb < 0:
        raise InvalidArgumentError(f"tile_store_mb must be 0 or more, got {tile_store_mb!r}")
    names, _ = _check_stats([stats] if isinstance(stats, str) else list(stats))
    problem = check_parcel_table(parcels, id_column, names)
    if problem is not None:
        raise InvalidArgumentError(f"parcels: {problem}")
    folder = Path(out_dir)
    dtypes = attribute_dtypes(parcels)
    with batch_output.hold(folder):
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
            batch_output.step_folder(folder, name).mkdir(parents=True, exist_ok=True)
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
            with cluster_client(client, n_workers, threads_per_worker) as dask_client:
                workers = len(dask_client.scheduler_info().get("workers", {})) or 1
                in_flight = max_in_flight or 2 * workers
                job = _Job(
                    ds,
                    ordered,
                    folder,
                    names,
                    id_column,
                    batch_size,
                    steps,
                    tile_store_mb,
                    ds.terrascope.items,
                    dtypes,
                )
                rebalanced = compute_batches(dask_client, job, todo, in_flight, tracker)
        elapsed = tracker.elapsed()
        logger.info(
            "batch: %d partition(s) written (%d unit(s) taken from another worker's run), "
            "%d found done, "
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
    #: The cube's STAC items (their grids align the read windows to the COG tiles).
    items: Sequence[Any] | None = None
    #: The dtypes of the parcels' text-like columns (one schema in every partition).
    dtypes: Mapping[str, Any] | None = None

    def members(self, k: int) -> Any:
        return self.parcels.iloc[k * self.batch_size : (k + 1) * self.batch_size]

    def lazy(self, k: int, dates: slice | None = None) -> Any:
        """Batch ``k``'s statistics (of the time steps ``dates`` only, if given), lazy, with
        the id column along ``geometry``."""
        members = self.members(k)
        result = zonal_stats_of_steps(
            self.cube, members.geometry, self.stats, dates, index=False, items=self.items
        )
        return result.assign_coords({self.id_column: ("geometry", members[self.id_column].values)})

    def write(self, k: int, stats: Any, tables: Mapping[str, Any]) -> None:
        """The post-steps' tables, then the main partition (the mark of a done batch)."""
        import geopandas

        name = batch_output.part_name(k)
        for step, table in tables.items():
            batch_output.write_atomic(
                batch_output.step_folder(self.folder, step) / name,
                functools.partial(_to_parquet, table),
            )
        members = self.members(k)
        frame = zonal_table(stats.drop_vars(self.id_column), members, self.id_column)
        frame = frame.astype(dict(self.dtypes or {}))
        n_dates = stats.sizes["time"]
        geometry = np.repeat(members.geometry.to_numpy(), n_dates)
        table = geopandas.GeoDataFrame(frame, geometry=geometry, crs=members.crs)
        batch_output.write_atomic(self.folder / name, functools.partial(_to_parquet, table))


def _to_parquet(table: Any, path: Path) -> None:
    table.to_parquet(path, index=False)
