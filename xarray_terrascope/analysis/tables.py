"""Zonal statistics as a table: one row per geometry and date, one column per statistic
(the layout of ``xarray-terrascope zonal`` and of the batch's partitions)."""

from __future__ import annotations

from typing import Any

from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = [
    "attribute_dtypes",
    "check_parcel_table",
    "check_parcels",
    "read_parcels",
    "table_columns",
    "zonal_table",
]


def table_columns(stats: list[str], variables: list[str]) -> list[str]:
    """The columns :func:`zonal_table` adds to the parcels' attributes.

    Examples
    --------
    >>> table_columns(["mean", "count"], ["NDVI"])
    ['date', 'mean', 'count']
    >>> table_columns(["mean"], ["B04", "B08"])
    ['date', 'B04_mean', 'B08_mean']
    """
    if len(variables) == 1:
        return ["date", *stats]
    return ["date", *(f"{var}_{name}" for var in variables for name in stats)]


def read_parcels(path: Any, argument: str) -> Any:
    """The vector file at ``path`` as a GeoDataFrame (``.parquet``: GeoParquet, else any
    format :func:`geopandas.read_file` reads); ``argument`` names it in the error."""
    import geopandas

    try:
        if str(path).lower().endswith(".parquet"):
            return geopandas.read_parquet(path)
        return geopandas.read_file(path)
    except Exception as err:  # pyogrio and pyarrow raise several types
        raise InvalidArgumentError(f"{argument}: cannot read {str(path)!r}: {err}") from err


def check_parcels(parcels: Any, id_column: str) -> tuple[str, str] | None:
    """What makes ``parcels`` unusable as parcels, as ``(which, problem)`` with
    ``which`` "parcels" or "id_column", or None: no rows, no CRS, no ``id_column`` or
    values of it that repeat."""
    if len(parcels) == 0:
        return "parcels", "holds no geometry"
    if parcels.crs is None:
        return "parcels", "has no CRS: set one (gdf.set_crs(...))"
    if id_column not in parcels.columns:
        columns = ", ".join(str(c) for c in parcels.columns if c != parcels.geometry.name)
        return "id_column", f"the parcels have no column {id_column!r}; their columns: {columns}"
    if parcels[id_column].duplicated().any():
        return "id_column", f"the values of {id_column!r} are not unique"
    return None


def check_parcel_table(
    parcels: Any, id_column: str, stats: list[str], variables: list[str] | None = None
) -> str | None:
    """What makes ``parcels`` unfit for a table of their statistics, or None: parcels
    without a geometry (missing or empty), or attribute columns named as the table's own
    (``date``, the statistics: they would be overwritten). ``variables`` None: one."""
    geometry = parcels.geometry
    missing = geometry.isna() | geometry.is_empty
    if missing.any():
        ids = ", ".join(repr(v) for v in parcels.loc[missing, id_column].tolist()[:5])
        return (
            f"{int(missing.sum())} parcel(s) have no geometry (missing or empty), "
            f"{id_column} {ids}{', ...' if missing.sum() > 5 else ''}: drop or fix them"
        )
    attributes = {str(c) for c in parcels.columns if c != geometry.name}
    clash = [c for c in table_columns(stats, variables or ["value"]) if c in attributes]
    if clash:
        return (
            f"the parcels have columns named as the table's own ({', '.join(clash)}), which "
            "would be overwritten: rename them (parcels.rename(columns=...))"
        )
    return None


def attribute_dtypes(parcels: Any) -> dict[str, Any]:
    """pandas' Arrow dtype of each text-like (``object``) attribute column of the whole
    table, for the tables of parts of it: a part whose values of such a column are all
    missing would otherwise be written as an Arrow ``null`` column, which dataset
    readers refuse beside the ``string`` column of another part.

    Raises
    ------
    InvalidArgumentError
        For a column whose values no single Arrow type holds (numbers and text, say).
    """
    import pandas as pd
    import pyarrow as pa

    dtypes = {}
    for column in parcels.columns:
        if column == parcels.geometry.name or parcels[column].dtype != object:
            continue
        try:
            kind = pa.Array.from_pandas(parcels[column]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise InvalidArgumentError(
                f"parcels: column {column!r} mixes types that no Parquet column holds "
                f"({err}): convert it, e.g. parcels[{column!r}].astype(str)"
            ) from err
        if kind != pa.null():
            dtypes[str(column)] = pd.ArrowDtype(kind)
    return dtypes


def zonal_table(stats: Any, parcels: Any, id_column: str) -> Any:
    """The result of ``zonal_stats`` as one row per parcel and date, one column per statistic.

    ``stats`` is the Dataset :func:`xarray_terrascope.analysis.zonal.zonal_stats` returns for
    ``parcels`` (in their order) with a ``zonal_statistics`` dimension. Columns: the
    parcels' attributes (``id_column`` first, no geometry), ``date``, then the
    statistics (``<variable>_<stat>`` when the cube has several variables).
    """
    import numpy as np
    import pandas as pd

    names = [str(n) for n in stats["zonal_statistics"].values]
    variables = list(stats.data_vars)
    problem = check_parcel_table(parcels, id_column, names, [str(v) for v in variables])
    if problem is not None:
        raise InvalidArgumentError(f"parcels: {problem}")
    attributes = [c for c in parcels.columns if c != parcels.geometry.name]
    attributes.remove(id_column)
    dates = pd.DatetimeIndex(stats["time"].values).normalize()
    n_parcels, n_dates = len(parcels), len(dates)
    table: dict[str, Any] = {  # Series.repeat keeps the dtypes (nullable, categorical...)
        col: parcels[col].repeat(n_dates).reset_index(drop=True) for col in [id_column, *attributes]
    }
    table["date"] = np.tile(dates.to_numpy(), n_parcels)
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
