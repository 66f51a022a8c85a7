"""``xarray-terrascope zonal``: per-parcel statistics over time, one row per parcel and
date, to Parquet or CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from xarray_terrascope.cli.arguments import add_collection_arg, add_dates_args, output_path
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["DEFAULT_ZONAL_STATS", "TABLE_FORMATS", "register", "zonal_table"]


#: ``zonal --out`` suffixes and the format each one writes.
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv"}
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
        import geopandas
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError(
            "zonal needs geopandas and xvec: pip install 'xarray-terrascope[analysis]'"
        ) from err
    try:
        parcels = geopandas.read_file(path)
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise InvalidArgumentError(f"--parcels: cannot read {path!r}: {err}") from err
    if len(parcels) == 0:
        raise InvalidArgumentError(f"--parcels: {path!r} holds no geometry")
    if parcels.crs is None:
        raise InvalidArgumentError(f"--parcels: {path!r} has no CRS")
    if id_column not in parcels.columns:
        columns = ", ".join(str(c) for c in parcels.columns if c != parcels.geometry.name)
        raise InvalidArgumentError(
            f"--id-column: {path!r} has no column {id_column!r}; its columns: {columns}"
        )
    if parcels[id_column].duplicated().any():
        raise InvalidArgumentError(f"--id-column: the values of {id_column!r} are not unique")
    return parcels


def zonal_table(stats, parcels, id_column: str):
    """The result of ``zonal_stats`` as one row per parcel and date, one column per statistic.

    ``stats`` is the Dataset :func:`xarray_terrascope.analysis.zonal.zonal_stats` returns for
    ``parcels`` (in their order) with a ``zonal_statistics`` dimension. Columns: the
    parcels' attributes (``id_column`` first, no geometry), ``date``, then the
    statistics (``<variable>_<stat>`` when the cube has several variables).
    """
    import numpy as np
    import pandas as pd

    attributes = [c for c in parcels.columns if c != parcels.geometry.name]
    attributes.remove(id_column)
    dates = pd.DatetimeIndex(stats["time"].values).normalize()
    n_parcels, n_dates = len(parcels), len(dates)
    table = {col: np.repeat(parcels[col].to_numpy(), n_dates) for col in [id_column, *attributes]}
    table["date"] = np.tile(dates.to_numpy(), n_parcels)
    names = [str(n) for n in stats["zonal_statistics"].values]
    variables = list(stats.data_vars)
    for var in variables:
        values = stats[var].transpose(stats[var].dims[0], "time", "zonal_statistics").values
        for k, name in enumerate(names):
            column = name if len(variables) == 1 else f"{var}_{name}"
            table[column] = values[:, :, k].reshape(n_parcels * n_dates)
    frame = pd.DataFrame(table)
    for var in variables:  # pixel counts as integers
        column = "count" if len(variables) == 1 else f"{var}_count"
        if column in frame and frame[column].notna().all():
            frame[column] = frame[column].astype("int64")
    return frame


def _run(args: argparse.Namespace) -> int:
    import xarray as xr

    from xarray_terrascope.cli.login import login_for_command
    from xarray_terrascope.cli.progress import progress

    parcels = _read_parcels(args.parcels, args.id_column)
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
    p.add_argument(
        "--out",
        required=True,
        type=_table_path,
        help="output path ending in .parquet or .csv; missing parent directories are created",
    )
    p.set_defaults(func=_run)
