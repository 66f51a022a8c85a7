"""``xarray-terrascope zonal``: per-parcel statistics over time, one row per parcel and
date, to Parquet or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xarray_terrascope.analysis.tables import (
    check_parcel_table,
    check_parcels,
    read_parcels,
    zonal_table,
)
from xarray_terrascope.cli.arguments import add_collection_arg, add_dates_args, output_path
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["DEFAULT_ZONAL_STATS", "TABLE_FORMATS", "register", "zonal_table"]


#: ``zonal --out`` suffixes and the format each one writes.
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv"}
#: ``zonal --batch-size`` when not given.
DEFAULT_BATCH_SIZE = 500
#: ``zonal --stats`` when not given.
DEFAULT_ZONAL_STATS = ("mean", "median", "std", "count", "valid_fraction")


def _table_path(text: str) -> Path:
    """``zonal --out``: checked when the arguments are parsed, before any request."""
    path = Path(text)
    if path.suffix.lower() not in TABLE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"the table format comes from the suffix: one of {', '.join(TABLE_FORMATS)} "
            f"(got {text!r})"
        )
    return path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text!r}")
    return value


def _mebibytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a whole number of MiB (0 or more), got {text!r}")
    return value


def _stats_list(text: str) -> list[str]:
    """``zonal --stats``: comma-separated names among
    :data:`xarray_terrascope.analysis.zonal.STATS`."""
    from xarray_terrascope.analysis.zonal import STATS

    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in STATS]
    if not names or bad or len(set(names)) != len(names):
        what = f"unknown {', '.join(bad)}" if bad else "each statistic once, at least one"
        raise argparse.ArgumentTypeError(
            f"{what}: choose a comma-separated list from {', '.join(STATS)} (got {text!r})"
        )
    return names


def _read_parcels(path: str, id_column: str):
    """The parcels file as a GeoDataFrame with a CRS and a unique ``id_column``."""
    try:
        import geopandas  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError(
            "zonal needs geopandas and xvec: pip install 'xarray-terrascope[analysis]'"
        ) from err
    parcels = read_parcels(path, "--parcels")
    problem = check_parcels(parcels, id_column)
    if problem is not None:
        which, text = problem
        option = "--parcels" if which == "parcels" else "--id-column"
        raise InvalidArgumentError(f"{option}: {path!r}: {text}")
    return parcels


def _check_table(parcels, args: argparse.Namespace) -> None:
    problem = check_parcel_table(parcels, args.id_column, list(args.stats))
    if problem is not None:
        raise InvalidArgumentError(f"--parcels: {problem}")


def _run_batch(args: argparse.Namespace) -> int:
    from xarray_terrascope.analysis.batch import run_zonal_batch
    from xarray_terrascope.cli.batch_progress import ProgressBar, duration
    from xarray_terrascope.cli.login import login_for_command

    parcels = _read_parcels(args.parcels, args.id_column)
    _check_table(parcels, args)
    login_for_command()  # the stored login of `xarray-terrascope login` too, as without --out-dir
    try:
        result = run_zonal_batch(
            args.parcels,
            args.out_dir,
            start=args.start,
            end=args.end,
            collection=args.collection,
            stats=args.stats,
            id_column=args.id_column,
            batch_size=args.batch_size,
            max_cloud_cover=args.max_cloud_cover,
            client=args.scheduler,
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            max_in_flight=args.max_in_flight,
            **({} if args.tile_store_mb is None else {"tile_store_mb": args.tile_store_mb}),
            progress=ProgressBar(sys.stderr),
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: the partitions written so far stay in {args.out_dir}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    lost = f"; {result.workers_lost} worker(s) lost" if result.workers_lost else ""
    print(
        f"wrote {result.written} partition(s) of {result.partitions} to {result.out_dir} "
        f"({result.skipped} found done; {len(parcels)} parcels x {result.dates} date(s)"
        f"{lost}) in {duration(result.elapsed_s)}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.out_dir is not None:
        return _run_batch(args)
    import xarray as xr

    from xarray_terrascope.cli.login import login_for_command
    from xarray_terrascope.cli.progress import progress

    parcels = _read_parcels(args.parcels, args.id_column)
    _check_table(parcels, args)
    out = output_path(args.out)
    bbox = [float(v) for v in parcels.to_crs("EPSG:4326").total_bounds]
    login_for_command()
    ds = xr.open_dataset(
        # xarray types a path or a store here: the terrascope engine takes a bbox too
        bbox,  # type: ignore[arg-type]
        engine="terrascope",
        start=args.start,
        end=args.end,
        collection=args.collection,
        max_cloud_cover=args.max_cloud_cover,
        chunks={},
    )
    print(
        f"{len(parcels)} parcel(s), {len(ds.time)} date(s) of {args.collection}, "
        f"statistics {', '.join(args.stats)}"
    )
    stats = ds.terrascope.zonal_stats(parcels.geometry, list(args.stats), index=False)
    with progress("statistics"):
        stats = stats.compute()
    frame = zonal_table(stats, parcels, args.id_column)
    try:
        if TABLE_FORMATS[out.suffix.lower()] == "parquet":
            frame.to_parquet(out, index=False)
        else:
            frame.to_csv(out, index=False)
    except OSError as err:
        raise InvalidArgumentError(f"--out: cannot write {str(out)!r}: {err}") from err
    print(f"wrote {out} ({len(frame)} rows: parcel x date)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``zonal`` command to the console script's subcommands."""
    p = sub.add_parser(
        "zonal",
        help="per-parcel statistics over time to Parquet or CSV",
        description="Statistics of the valid pixels in each parcel on each date, read only "
        "where the parcels are. Writes one row per parcel and date: the parcel's "
        "attributes (the id column first, no geometry), 'date', one column per statistic. "
        "Dates where a parcel is fully clouded have count 0 and NaN statistics.",
    )
    p.add_argument(
        "--parcels",
        required=True,
        help="a vector file with polygons and a CRS (GeoJSON, GeoPackage, Shapefile, ...); "
        "the search's bbox is their bounds",
    )
    add_dates_args(p, example="2025-04-01")
    add_collection_arg(p)
    p.add_argument(
        "--stats",
        type=_stats_list,
        default=list(DEFAULT_ZONAL_STATS),
        help="comma-separated, among mean, median, std, min, max, sum, count, valid_fraction "
        f"(default: {','.join(DEFAULT_ZONAL_STATS)})",
    )
    p.add_argument(
        "--id-column",
        default="parcel_id",
        help="the parcels' unique id column, first in the output (default: parcel_id)",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--out",
        type=_table_path,
        help="output path ending in .parquet or .csv; missing parent directories are created",
    )
    out.add_argument(
        "--out-dir",
        type=Path,
        help="batch mode, for many parcels: a folder of GeoParquet partitions "
        "(part-00000.parquet, ... one per batch of parcels) computed on a dask.distributed "
        "cluster; rerun the same command to resume an interrupted run",
    )
    batch = p.add_argument_group("batch mode (--out-dir)")
    batch.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"parcels per partition (default: {DEFAULT_BATCH_SIZE})",
    )
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a dask scheduler's address (tcp://host:8786); default: a LocalCluster",
    )
    batch.add_argument(
        "--workers", type=_positive, help="LocalCluster worker processes (default: dask's)"
    )
    batch.add_argument(
        "--threads-per-worker", type=_positive, help="LocalCluster threads per worker"
    )
    batch.add_argument(
        "--max-in-flight",
        type=_positive,
        help="units (a batch's dates of one worker) computed at a time (default: 2 per "
        "worker); bounds worker memory",
    )
    batch.add_argument(
        "--tile-store-mb",
        type=_mebibytes,
        help="MiB of decoded tiles each worker keeps for its next batches, at least "
        "(default: run_zonal_batch's, 256; about 1 GB per worker for a season)",
    )
    p.set_defaults(func=_run)
