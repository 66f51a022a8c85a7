"""Zonal statistics as a table: one row per geometry and date, one column per statistic
(the layout of ``xarray-terrascope zonal`` and of the batch's partitions)."""

from __future__ import annotations

from typing import Any

__all__ = ["zonal_table"]


def zonal_table(stats: Any, parcels: Any, id_column: str) -> Any:
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
