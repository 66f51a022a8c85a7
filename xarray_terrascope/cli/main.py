"""The ``xarray-terrascope`` console script: search, ndvi export, zonal, sandbox, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from xarray_terrascope.catalog.collections import COLLECTIONS, DEFAULT_COLLECTION
from xarray_terrascope.cli.demo import run_demo
from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError

logger = logging.getLogger("xarray_terrascope.cli")

__all__ = ["build_parser", "main", "run_demo", "zonal_table"]


def _bbox(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        return [float(p) for p in parts]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"bbox must be west,south,east,north in degrees, got {text!r}"
        ) from err


def _add_query_args(parser: argparse.ArgumentParser, *, bbox_required: bool) -> None:
    parser.add_argument(
        "--bbox", type=_bbox, required=bbox_required, help="west,south,east,north in WGS84 degrees"
    )
    parser.add_argument("--start", help="first date, e.g. 2025-05-01")
    parser.add_argument("--end", help="last date (a date includes that whole day)")
    parser.add_argument("--max-cloud-cover", type=float, help="percent, inclusive")


def _add_collection_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"collection id (default: {DEFAULT_COLLECTION})",
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from xarray_terrascope.catalog.search import search

    items = search(
        args.collection,
        args.bbox,
        args.start,
        args.end,
        max_cloud_cover=args.max_cloud_cover,
        limit=args.limit,
    )
    print(f"{'datetime':<22} {'cloud %':>7}  id")
    for item in items:
        cloud = item.properties.get("eo:cloud_cover")
        cloud_text = f"{cloud:7.2f}" if cloud is not None else "      -"
        print(f"{item.datetime:%Y-%m-%dT%H:%M:%SZ}  {cloud_text}  {item.id}")
    print(f"{len(items)} item(s)")
    return 0


#: ``--out`` suffixes and the format each one writes.
OUTPUT_FORMATS = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".netcdf": "netcdf",
    ".zarr": "zarr",
    ".tif": "geotiff",
    ".tiff": "geotiff",
}
# Dataset attributes that only mean something inside this process (the key under which
# the cube's items are remembered): never written to a file.
_PROCESS_LOCAL_ATTRS = ("terrascope_items_key",)


def _out_path(text: str) -> Path:
    """``--out``: checked when the arguments are parsed, before any request."""
    path = Path(text)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        allowed = ", ".join(OUTPUT_FORMATS)
        raise argparse.ArgumentTypeError(
            f"the output format comes from the suffix: one of {allowed} (got {text!r})"
        )
    return path


def _export_attrs(ds) -> dict:
    """The Dataset's attributes as they are written to a file (search parameters, no secret)."""
    return {k: v for k, v in ds.attrs.items() if k not in _PROCESS_LOCAL_ATTRS}


def _tag_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _write_geotiff(da, attrs: dict, path: Path) -> None:
    """One band per date: description ``YYYY-MM-DD``, tags ``date``, ``item_ids``, ..."""
    import rasterio

    dates = da.terrascope.dates()
    out = da.copy()
    # rioxarray writes a sequence long_name as the band descriptions
    out.attrs = {"long_name": tuple(dates)}
    out.rio.to_raster(path, tiled=True, compress="DEFLATE")
    per_date = {c: da[c].values for c in ("platform", "cloud_cover", "item_ids") if c in da.coords}
    times = da["time"].values
    with rasterio.open(path, "r+") as dst:
        tags = {k: _tag_text(v) for k, v in attrs.items()}
        tags.update(variable=str(da.name), dates=",".join(dates))
        dst.update_tags(**tags)
        for band, day in enumerate(dates, start=1):
            dst.set_band_description(band, day)
            tags = {"date": day, "datetime": str(times[band - 1])[:19] + "Z"}
            tags.update({name: str(values[band - 1]) for name, values in per_date.items()})
            dst.update_tags(band, **tags)


def _write_zarr(da, attrs: dict, path: Path) -> None:
    """Zarr format 2 with consolidated metadata: float32 values, NaN for no data.

    Format 2 because zarr-python 3 warns on both alternatives in format 3 (fixed-length
    strings have no v3 specification; consolidated metadata is not in the v3 spec, and
    without it ``xr.open_zarr`` warns). Values are written decoded, as float32: JSON
    attributes cannot keep ``scale_factor`` a float32, so packed bytes would reopen as
    float64.
    """
    ds = da.to_dataset()
    ds.attrs = attrs
    grid_mapping = da.encoding.get("grid_mapping")
    ds[da.name].encoding = {"grid_mapping": grid_mapping} if grid_mapping else {}
    for name, coord in list(ds.coords.items()):
        if coord.dtype.kind == "U":  # variable-length strings instead of fixed-length
            ds.coords[name] = (coord.dims, coord.values.astype(object), coord.attrs)
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)


def _write(da, attrs: dict, path: Path) -> None:
    from dask.diagnostics import ProgressBar

    kind = OUTPUT_FORMATS[path.suffix.lower()]
    with ProgressBar(out=sys.stderr):
        if kind == "netcdf":
            ds = da.to_dataset()
            ds.attrs = attrs
            ds.to_netcdf(path)  # packed to the stored bytes again (uint8, scale, offset)
        elif kind == "zarr":
            _write_zarr(da, attrs, path)
        else:
            _write_geotiff(da, attrs, path)


def _output_path(out: Path) -> Path:
    """``--out`` with its parent directories created; a one-line error when impossible."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(
            f"--out: cannot create the directory {str(out.parent)!r}: {err.strerror or err}"
        ) from err
    return out


def _export_asset(collection: str, asset: str | None) -> None:
    """``ndvi --asset``: checked against what the package knows of the collection, before
    any request (a collection it does not know is checked once the cube is open)."""
    info = COLLECTIONS.get(collection)
    if info is None:
        return
    if asset is None and len(info.assets) > 1:
        raise InvalidArgumentError(
            f"--asset: {collection} has several assets ({', '.join(info.assets)}); "
            "choose the one to export with --asset"
        )
    if asset is not None and asset not in info.assets:
        raise InvalidArgumentError(
            f"--asset: {collection} has no asset {asset!r}; its assets: {', '.join(info.assets)}"
        )


def _cmd_ndvi(args: argparse.Namespace) -> int:
    import xarray as xr

    from xarray_terrascope import auth
    from xarray_terrascope.accessor import decode_raw

    _export_asset(args.collection, args.asset)
    out = _output_path(args.out)
    auth.login(validate=True)
    ds = xr.open_dataset(
        args.bbox,
        engine="terrascope",
        start=args.start,
        end=args.end,
        collection=args.collection,
        assets=None if args.asset is None else [args.asset],
        max_cloud_cover=args.max_cloud_cover,
        chunks={},
    )
    if len(ds.data_vars) != 1:  # a collection the package does not know beforehand
        raise InvalidArgumentError(
            f"--asset: {args.collection} has several assets ({', '.join(map(str, ds.data_vars))}); "
            "choose the one to export with --asset"
        )
    (name,) = ds.data_vars
    cube = decode_raw(ds[name])  # physical values, NaN for no data
    print(f"{len(ds.time)} date(s) of {name}, {ds.sizes['y']} x {ds.sizes['x']} px, writing {out}")
    try:
        _write(cube, _export_attrs(ds), out)
    except OSError as err:
        raise InvalidArgumentError(f"--out: cannot write {str(out)!r}: {err}") from err
    print(f"wrote {out}")
    return 0


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


def _cmd_zonal(args: argparse.Namespace) -> int:
    import xarray as xr
    from dask.diagnostics import ProgressBar

    from xarray_terrascope import auth

    parcels = _read_parcels(args.parcels, args.id_column)
    out = _output_path(args.out)
    bbox = [float(v) for v in parcels.to_crs("EPSG:4326").total_bounds]
    auth.login(validate=True)
    ds = xr.open_dataset(
        bbox,
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
    with ProgressBar(out=sys.stderr):
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


def _print_exports(sandbox) -> None:
    for key, value in sandbox.env.items():
        print(f"export {key}={value}")


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, docker stop, systemd) stops as Ctrl-C does


def _cmd_sandbox(args: argparse.Namespace) -> int:
    import signal
    import threading

    from xarray_terrascope.testing import Sandbox

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        sandbox = Sandbox(
            seed=args.seed,
            latency=args.latency,
            cache_dir=args.cache_dir,
            max_concurrent=args.max_concurrent,
            max_rate=args.max_rate,
            fault_rate=args.fault_rate,
            drop_rate=args.drop_rate,
        ).start()
        try:
            print("# Terrascope sandbox running on loopback; paste these lines in another shell:")
            _print_exports(sandbox)
            print("# Ctrl-C (or SIGTERM) stops it.", flush=True)
            sandbox.serve_forever()  # returns after Ctrl-C, with the servers stopped
        except KeyboardInterrupt:  # Ctrl-C before serve_forever took over
            sandbox.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.out), seed=args.seed)
    print(
        f"{result['parcels']} parcels, {result['dates']} dates in {result['seconds']:.0f} s; "
        f"the download server logged {result['requests']} requests"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the console script."""
    from xarray_terrascope._version import __version__

    parser = argparse.ArgumentParser(
        prog="xarray-terrascope",
        description="Terrascope Sentinel products as xarray data: search, export, "
        "parcel statistics, sandbox, demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )

    p = sub.add_parser("search", help="search a collection and list the items")
    p.add_argument(
        "collection",
        nargs="?",
        default=DEFAULT_COLLECTION,
        help=f"collection id (default: {DEFAULT_COLLECTION})",
    )
    _add_query_args(p, bbox_required=False)
    p.add_argument("--limit", type=int, help="at most this many items, the earliest (default: all)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "ndvi",
        help="export an NDVI cube (or another collection's) to NetCDF, Zarr or GeoTIFF",
        description="Export one variable of a collection (NDVI by default) as physical "
        "values, NaN for no data.",
    )
    _add_query_args(p, bbox_required=True)
    _add_collection_arg(p)
    p.add_argument(
        "--asset",
        help="the asset to export, for a collection with several (e.g. VV of "
        "terrascope-s1-grd-sigma0-v1; default: the collection's only one)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=_out_path,
        help="output path ending in .nc (NetCDF), .zarr (Zarr) or .tif (GeoTIFF, one band "
        "per date); missing parent directories are created",
    )
    p.set_defaults(func=_cmd_ndvi)

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
    p.add_argument("--start", help="first date, e.g. 2025-04-01")
    p.add_argument("--end", help="last date (a date includes that whole day)")
    p.add_argument("--max-cloud-cover", type=float, help="percent, inclusive")
    _add_collection_arg(p)
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
    p.set_defaults(func=_cmd_zonal)

    p = sub.add_parser("sandbox", help="run the local Terrascope stand-in until Ctrl-C")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added per download")
    p.add_argument("--cache-dir", help="keep generated COGs here between runs")
    p.add_argument("--max-concurrent", type=int, help="downloads in flight allowed; more get 429")
    p.add_argument(
        "--max-rate", type=float, help="downloads per second allowed (a bucket of 5); more get 429"
    )
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of downloads answered 503")
    p.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of downloads dropped mid-answer"
    )
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser(
        "demo",
        help="the main job on the embedded sandbox: parcel NDVI per crop, monthly "
        "max-NDVI composites, the time slider with the parcels",
    )
    p.add_argument("--out", default="demo-output", help="directory for the PNGs and the HTML")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xarray-terrascope``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TerrascopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
