"""``xarray-terrascope ndvi``: export one variable of a cube (NDVI by default) as
physical values to NetCDF, Zarr or GeoTIFF."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from xarray_terrascope.catalog.collections import COLLECTIONS
from xarray_terrascope.cli.arguments import add_collection_arg, add_query_args, output_path
from xarray_terrascope.cli.progress import progress
from xarray_terrascope.cube.grid import grid_transform
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["OUTPUT_FORMATS", "register"]


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
    """One band per date: description ``YYYY-MM-DD``, tags ``date``, ``item_ids``, ...

    The values are packed as the cube's encoding says (stored dtype, scale, offset and
    fill value, as xarray would encode them) and written with rasterio, not rioxarray's
    ``to_raster``: rioxarray 0.19 rebuilds the transform from the coordinates as
    ``Affine.translation(...) * Affine.scale(...)``, which affine 3 warns about
    (``PendingDeprecationWarning: Use `@` matmul``) on every export.
    """
    import numpy as np
    import rasterio
    from xarray.conventions import encode_cf_variable

    dates = da.terrascope.dates()
    packed = encode_cf_variable(da.transpose("time", "y", "x").variable)
    values = np.asarray(packed.values)  # the export's one computation
    nodata = packed.attrs.get("_FillValue", np.nan if values.dtype.kind == "f" else None)
    count = len(dates)
    profile = {
        "driver": "GTiff",
        "width": da.sizes["x"],
        "height": da.sizes["y"],
        "count": count,
        "dtype": values.dtype,
        "crs": da.rio.crs,
        "transform": grid_transform(da),
        "nodata": nodata,
        "tiled": True,
        "compress": "DEFLATE",
    }
    per_date = {c: da[c].values for c in ("platform", "cloud_cover", "item_ids") if c in da.coords}
    times = da["time"].values
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
        dst.scales = [float(packed.attrs.get("scale_factor", 1.0))] * count
        dst.offsets = [float(packed.attrs.get("add_offset", 0.0))] * count
        tags = {k: _tag_text(v) for k, v in attrs.items()}
        tags.update(variable=str(da.name), dates=",".join(dates))
        dst.update_tags(**tags)
        for band, day in enumerate(dates, start=1):
            dst.set_band_description(band, day)
            tags = {"date": day, "datetime": str(times[band - 1])[:19] + "Z"}
            tags.update({name: str(column[band - 1]) for name, column in per_date.items()})
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


def _load_coords(da):
    """``da`` with its non-index coordinates (platform, cloud cover, item ids per date)
    loaded: computed together, once, before the export's progress display, instead of
    one computation (and one progress bar) each while the file is written."""
    import dask

    lazy = {name: c for name, c in da.coords.items() if name not in da.dims and c.chunks}
    if not lazy:
        return da
    (loaded,) = dask.compute(lazy)
    return da.assign_coords(loaded)


def _write(da, attrs: dict, path: Path) -> None:
    """Write ``da`` to a temporary name beside ``path``, then rename it into place: an
    interrupted export leaves no file that looks like a result, and the one it replaces
    stays whole until then."""
    kind = OUTPUT_FORMATS[path.suffix.lower()]
    da = _load_coords(da)
    part = path.with_name(f".{path.stem}.part-{os.getpid()}{path.suffix}")
    try:
        with progress("writing"):
            if kind == "netcdf":
                ds = da.to_dataset()
                ds.attrs = attrs
                ds.to_netcdf(part)  # packed to the stored bytes again (uint8, scale, offset)
            elif kind == "zarr":
                _write_zarr(da, attrs, part)
            else:
                _write_geotiff(da, attrs, part)
        if path.is_dir() and not path.is_symlink():  # a Zarr store given --overwrite
            shutil.rmtree(path)
        os.replace(part, path)
    except BaseException:
        _remove(part)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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


def _run(args: argparse.Namespace) -> int:
    import xarray as xr

    from xarray_terrascope.accessor import decode_raw
    from xarray_terrascope.cli.login import login_for_command

    _export_asset(args.collection, args.asset)
    out = output_path(args.out)
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise InvalidArgumentError(
            f"--out: {str(out)!r} exists; give --overwrite to replace it, or another path"
        )
    login_for_command()
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ndvi`` command to the console script's subcommands."""
    p = sub.add_parser(
        "ndvi",
        help="export an NDVI cube (or another collection's) to NetCDF, Zarr or GeoTIFF",
        description="Export one variable of a collection (NDVI by default) as physical "
        "values, NaN for no data.",
    )
    add_query_args(p, bbox_required=True)
    add_collection_arg(p)
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
        "per date); missing parent directories are created; an existing one is refused "
        "unless --overwrite. Written to a temporary name beside it, then renamed: an "
        "interrupted export leaves nothing",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (a Zarr store as a whole)",
    )
    p.set_defaults(func=_run)
