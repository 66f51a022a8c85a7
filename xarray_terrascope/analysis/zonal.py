"""Zonal statistics of a Terrascope cube per geometry, reading only what the geometries touch.

:func:`zonal_stats` takes xvec's arguments and returns xvec's layout (a ``geometry``
dimension indexed by :class:`xvec.GeometryIndex`, the cube's other dimensions such as
``time``, and ``zonal_statistics`` when several statistics are asked), so code written
for ``ds.xvec.zonal_stats`` switches by changing the accessor. Unlike xvec on a lazy cube,
it never reads the whole bounding box: :mod:`xarray_terrascope.plan.sparse` plans block
windows around the geometries and only those windows of the lazy arrays are indexed.

The graph (:mod:`xarray_terrascope.analysis.zonal_tasks`) reads each planned window once and
computes the statistics per batch of nearby geometries; NaN (no data, clouds) is ignored.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine

from xarray_terrascope.analysis import zonal_tasks
from xarray_terrascope.cube.decode import Decoder, packed
from xarray_terrascope.cube.grid import grid_transform
from xarray_terrascope.exceptions import (
    GeometriesOutsideWarning,
    InvalidArgumentError,
    TerrascopeError,
)
from xarray_terrascope.plan import sparse

__all__ = ["STATS", "zonal_stats", "zonal_stats_of_steps"]

logger = logging.getLogger(__name__)

#: Statistics :func:`zonal_stats` computes, over the valid (not NaN) pixels.
STATS: tuple[str, ...] = (
    "mean",
    "median",
    "std",
    "min",
    "max",
    "sum",
    "count",
    "valid_fraction",
)
METHODS = ("rasterize", "iterate")
#: Geometries per statistics task (batches are made of spatial neighbours).
BATCH_SIZE = 256
#: Touched blocks side by side read as one window: one request per file and run, as a
#: row of adjacent tiles is one byte range in a COG (fewer, larger requests are faster).
#: 32 x 256 px x 8 steps of float32 is 67 MB per window read.
RUN_BLOCKS = 32
_ANALYSIS_EXTRA = "pip install 'xarray-terrascope[analysis]'"


def _import_analysis() -> tuple[Any, Any]:
    try:
        import geopandas
        import xvec  # registers GeometryIndex and the .xvec accessor
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"zonal_stats needs geopandas and xvec ({err.name} is missing): {_ANALYSIS_EXTRA}"
        ) from err
    return geopandas, xvec


def _check_stats(stats: Any) -> tuple[list[str], bool]:
    """The statistics' names and whether a ``zonal_statistics`` dimension is wanted."""
    single = isinstance(stats, str)
    names = [stats] if single else stats
    if not isinstance(names, (list, tuple)) or not names:
        raise InvalidArgumentError(
            f"stats must be one of {', '.join(STATS)} or a non-empty list of them, got {stats!r}"
        )
    bad = [s for s in names if not isinstance(s, str) or s not in STATS]
    if bad:
        raise InvalidArgumentError(f"stats {bad!r} not supported; choose from {', '.join(STATS)}")
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"stats lists a statistic twice: {names!r}")
    return list(names), not single


def _as_geoseries(geometries: Any) -> Any:
    """A GeoSeries with a CRS (EPSG:4326 for bare shapely geometries)."""
    gpd, _ = _import_analysis()
    import shapely

    if isinstance(geometries, gpd.GeoDataFrame):
        series = geometries.geometry
    elif isinstance(geometries, gpd.GeoSeries):
        series = geometries
    else:
        try:
            array = np.asarray(
                [geometries] if isinstance(geometries, shapely.Geometry) else geometries,
                dtype=object,
            ).ravel()
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError(
                "geometries must be a GeoSeries, a GeoDataFrame or shapely geometries, "
                f"got {type(geometries).__name__}"
            ) from err
        if not all(g is None or isinstance(g, shapely.Geometry) for g in array):
            raise InvalidArgumentError(
                "geometries must be a GeoSeries, a GeoDataFrame or shapely geometries; "
                f"got elements of type {sorted({type(g).__name__ for g in array})}"
            )
        series = gpd.GeoSeries(array, crs="EPSG:4326")
    if len(series) == 0:
        raise InvalidArgumentError("geometries must hold at least one geometry")
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise InvalidArgumentError(
            f"geometries hold {missing.size} missing geometry(ies) (None), at positions "
            f"{missing[:5].tolist()}{' ...' if missing.size > 5 else ''}: drop them "
            "(an empty geometry is fine: its count is 0)"
        )
    if series.crs is None:
        raise InvalidArgumentError(
            "geometries have no CRS: set one (gdf.set_crs(...)) so they can be "
            "reprojected to the cube's"
        )
    return series


def _spatial(obj: xr.Dataset | xr.DataArray) -> tuple[str, str, Any, Affine]:
    try:
        y_dim, x_dim = obj.rio.y_dim, obj.rio.x_dim
        crs = obj.rio.crs
        transform = grid_transform(obj)  # not rio.transform(): it warns with affine 3
    except Exception as err:  # rioxarray raises several types for a cube it cannot read
        raise TerrascopeError(
            "zonal_stats needs a cube with x/y coordinates on a regular grid and a CRS "
            f"(ds.rio.crs), like the terrascope engine's: {err}"
        ) from err
    if crs is None:
        raise TerrascopeError("zonal_stats needs the cube's CRS: ds.rio.write_crs(...)")
    if transform.b or transform.d:
        raise TerrascopeError("zonal_stats needs a north-up grid (no rotation)")
    return y_dim, x_dim, crs, transform


def _block_origin(obj, transform: Affine, crs: Any, block_size: int, items) -> tuple[int, int]:
    if items is None:
        return 0, 0
    assets = list(obj.data_vars) if isinstance(obj, xr.Dataset) else [obj.name]
    grids = sparse.item_grids(items, [str(a) for a in assets])
    epsg = crs.to_epsg()
    return sparse.grid_origin(transform, grids, epsg, block_size) if epsg else (0, 0)


def _warn_outside(shapes: np.ndarray, transform: Affine, shape: tuple[int, int]) -> None:
    """Warn (:class:`GeometriesOutsideWarning`, and log) when geometries miss the cube:
    their statistics are NaN, ``count`` 0, for every date, which looks like clouds."""
    import shapely

    height, width = shape
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + transform.a * width, y0 + transform.e * height
    footprint = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    given = ~shapely.is_empty(shapes) & ~shapely.is_missing(shapes)
    outside = int((given & ~shapely.intersects(shapes, footprint)).sum())
    if not outside:
        return
    message = (
        f"{outside} of {len(shapes)} geometries lie outside the cube (they do not intersect "
        f"its {height} x {width} px grid): their statistics are NaN, count 0, for every "
        "date. Open the cube over the geometries' bounds, or check their CRS."
    )
    logger.warning("zonal_stats: %s", message)
    warnings.warn(message, GeometriesOutsideWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package, for a warning given
    by this function's caller: the user's line (``ds.terrascope.zonal_stats(...)``,
    ``zonal_stats(ds, ...)``), however many of the package's calls lie between."""
    package = str(Path(__file__).parents[1]) + "/"  # as the frames name it
    frame: FrameType | None = sys._getframe(2)  # the caller's caller: stacklevel 2
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def _result_dtype(source: np.dtype, stats: Sequence[str]) -> np.dtype:
    base = source if source.kind == "f" else np.dtype("float64")
    return np.dtype("float64") if "count" in stats and len(stats) > 1 else base


def zonal_stats(
    obj: xr.Dataset | xr.DataArray,
    geometries: Any,
    stats: str | Sequence[str] = "mean",
    *,
    name: str = "geometry",
    index: bool | None = None,
    all_touched: bool = False,
    method: str = "rasterize",
    block_size: int = sparse.DEFAULT_BLOCK_SIZE,
    items: Sequence[Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Statistics of the cube's valid pixels in each geometry, per time step.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A (lazy) cube with ``y``/``x`` dimensions and a CRS, e.g. from
        ``xr.open_dataset(bbox, engine="terrascope", chunks={})``. Variables without
        both spatial dimensions are dropped. Stored integers with CF packing attributes
        (a ``decode=False`` cube) give the statistics of their physical values, their
        no-data value left out.
    geometries : geopandas.GeoSeries, geopandas.GeoDataFrame or shapely geometries
        Polygons in any CRS; reprojected to the cube's. A list or array of shapely
        geometries has no CRS: it is taken as longitude/latitude (EPSG:4326).
    stats : str or list of str
        Among ``mean``, ``median``, ``std`` (ddof 0), ``min``, ``max``, ``sum``,
        ``count`` (valid pixels) and ``valid_fraction`` (valid pixels / pixels in the
        geometry). A list adds a ``zonal_statistics`` dimension, as in xvec.
    name : str
        Name of the geometry dimension.
    index : bool, optional
        As in xvec: attach the GeoSeries' index as a coordinate (``None``: when it is
        named or not the default ``RangeIndex``).
    all_touched : bool
        Take every pixel a geometry touches, not only those whose centre it covers.
    method : {"rasterize", "iterate"}
        ``"rasterize"`` burns all geometries into one label raster, like xvec's
        ``method="rasterize"``: a pixel covered by overlapping geometries belongs to
        the last one. ``"iterate"`` masks each geometry on its own (overlaps count in
        every geometry), like xvec's ``method="iterate"``.
    block_size : int
        Side in pixels of the read blocks, aligned to the COGs' internal tiles when
        ``items`` tell where the files' grids lie (256 matches the sandbox and GDAL's
        default COG tiling).
    items : sequence of pystac.Item, optional
        The items behind the cube (``ds.terrascope.items`` does this for you): their
        ``proj:transform`` aligns the blocks to the files' tiles.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        ``(geometry[, zonal_statistics], *other dims)``; the geometry dimension holds
        the geometries as given (their CRS in the xvec ``GeometryIndex``). Dask-backed
        (nothing read yet) when the cube is; computed otherwise. A geometry covering no
        pixel centre has ``count`` 0 and NaN for the other statistics.

    Raises
    ------
    InvalidArgumentError
        For unknown ``stats`` or ``method``, a bad ``block_size`` or ``geometries``.

    Notes
    -----
    To a table and GeoParquet: ``result.NDVI.xvec.to_geodataframe(long=True)`` gives one
    row per geometry, statistic and date with the geometry column and its CRS;
    ``.to_parquet(path)`` writes GeoParquet. With ``parcels.set_index("parcel_id")`` the
    id is a coordinate of the result and a column of that table, to join the parcels'
    other columns (``frame.join(parcels[["crop"]], on="parcel_id")``). Without
    geometries, ``result.NDVI.drop_vars("geometry").to_dataframe()`` is a plain table.

    Examples
    --------
    >>> ds = xr.open_dataset(bbox, engine="terrascope", start="2025-05-01",
    ...                      end="2025-09-30", chunks={})  # doctest: +SKIP
    >>> parcels = gpd.read_file("parcels.gpkg").set_index("parcel_id")  # doctest: +SKIP
    >>> curves = ds.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"])  # doctest: +SKIP
    >>> curves.NDVI.sel(zonal_statistics="mean").compute()  # doctest: +SKIP
    >>> curves.NDVI.xvec.to_geodataframe(long=True).to_parquet("ndvi.parquet")  # doctest: +SKIP
    """
    return zonal_stats_of_steps(
        obj,
        geometries,
        stats,
        None,
        name=name,
        index=index,
        all_touched=all_touched,
        method=method,
        block_size=block_size,
        items=items,
    )


def zonal_stats_of_steps(
    obj: xr.Dataset | xr.DataArray,
    geometries: Any,
    stats: str | Sequence[str],
    steps: slice | None,
    *,
    name: str = "geometry",
    index: bool | None = None,
    all_touched: bool = False,
    method: str = "rasterize",
    block_size: int = sparse.DEFAULT_BLOCK_SIZE,
    items: Sequence[Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """:func:`zonal_stats` of the steps ``steps`` (a slice with step 1, or None: all) of
    the first non-spatial dimension (time) only.

    The same as ``zonal_stats(obj.isel(time=steps), ...)``, but the windows of a cube as
    the engine made it are still read in one call each (the sliced cube's windows would
    be read chunk by chunk, fetching a COG tile twice where a chunk boundary cuts it):
    what lets the batch give each worker its own dates (:mod:`.batch_cluster`).
    """
    names, with_dim = _check_stats(stats)
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or (block_size < 1)
    ):
        raise InvalidArgumentError(
            f"block_size must be a positive int (pixels), got {block_size!r}"
        )
    if not isinstance(name, Hashable) or name is None:
        raise InvalidArgumentError(f"name must be a hashable dimension name, got {name!r}")
    series = _as_geoseries(geometries)
    y_dim, x_dim, crs, transform = _spatial(obj)
    in_cube = series.to_crs(crs)
    shapes = np.asarray(in_cube.values, dtype=object)
    bounds = in_cube.bounds.to_numpy()
    shape = (obj.sizes[y_dim], obj.sizes[x_dim])
    _warn_outside(shapes, transform, shape)
    boxes = sparse.pixel_boxes(bounds, transform, shape, pad=1 if all_touched else 0)
    origin = _block_origin(obj, transform, crs, int(block_size), items)
    plan = sparse.plan_blocks(boxes, int(block_size), origin, max_run=RUN_BLOCKS)
    batches = zonal_tasks.batches(plan, len(series), BATCH_SIZE)
    logger.info(
        "zonal_stats: %d geometries -> %d block window(s), %d px per time step (cube %d x %d)",
        len(series),
        len(plan.blocks),
        plan.window_pixels(),
        *shape,
    )
    inverse = np.argsort(np.concatenate(batches)) if batches else np.arange(0)

    def one(da: xr.DataArray) -> xr.DataArray:
        da = da.transpose(..., y_dim, x_dim)
        # stored numbers (decode=False): statistics of the physical values, no data left out
        decoder = Decoder(da.dtype, da.attrs) if packed(da) else None
        dtype = _result_dtype(da.dtype if decoder is None else decoder.dtype, names)
        data = zonal_tasks.variable_stats(
            da.variable,
            plan,
            batches,
            shapes,
            transform,
            names,
            all_touched,
            method,
            dtype,
            steps,
            decoder,
        )
        data = data[inverse]
        if not with_dim:
            data = data[:, 0]
        other_dims = da.dims[:-2]
        if steps is not None and other_dims:
            da = da.isel({other_dims[0]: steps})  # for its coordinates (lazy, nothing read)
        dims = (name, *(["zonal_statistics"] if with_dim else []), *other_dims)
        coords = {
            k: v.variable
            for k, v in da.coords.items()
            if k not in (y_dim, x_dim) and set(v.dims) <= set(other_dims)
        }
        result = xr.DataArray(data, dims=dims, coords=coords, name=da.name, attrs=_attrs(da))
        return result

    if isinstance(obj, xr.Dataset):
        keep = [k for k, v in obj.data_vars.items() if {y_dim, x_dim} <= set(v.dims)]
        if not keep:
            raise TerrascopeError("this Dataset has no variable with both spatial dimensions")
        result: xr.Dataset | xr.DataArray = xr.Dataset(
            {k: one(obj[k]) for k in keep}, attrs=_attrs(obj)
        )
    else:
        result = one(obj)
    result = result.assign_coords({name: np.asarray(series.values, dtype=object)})
    if with_dim:
        result = result.assign_coords(zonal_statistics=np.array(names))
    result = result.xvec.set_geom_indexes(name, crs=series.crs)
    if index is None:
        index = series.index.name is not None or not series.index.equals(
            pd.RangeIndex(0, len(series))
        )
    if index:
        index_name = series.index.name if series.index.name is not None else "index"
        result = result.assign_coords({index_name: (name, series.index.to_numpy())})
    if compute_now(obj):
        result = result.compute(scheduler="threads")
    return result


def compute_now(obj: xr.Dataset | xr.DataArray) -> bool:
    """Whether ``obj`` is not dask-backed (then results are computed, as xvec does)."""
    variables = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    return all(v.chunks is None for v in variables)


def _attrs(obj: xr.Dataset | xr.DataArray) -> dict[str, Any]:
    skip = {"scale_factor", "add_offset", "_FillValue", "terrascope_items_key"}
    return {k: v for k, v in obj.attrs.items() if k not in skip}
