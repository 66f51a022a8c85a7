"""Temporal composites of a cube over its valid pixels (monthly max-NDVI and the like).

:func:`composite` is xarray's ``resample(time=freq)`` with NaN (no data, clouds)
skipped, plus the number of valid observations behind each composite pixel. With a
dask-backed cube (``chunks={}``) everything stays lazy until computed.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xarray_terrascope.analysis.clouds import is_mask_variable
from xarray_terrascope.cube.decode import decode_cf_array, packed
from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError

__all__ = ["HOWS", "composite"]

#: Reductions :func:`composite` offers; ``first``/``last`` take the first/last valid value.
HOWS = ("median", "mean", "max", "min", "first", "last")


def _check_freq(obj: xr.Dataset | xr.DataArray, freq: object) -> str:
    import pandas as pd

    if not isinstance(freq, str):
        raise InvalidArgumentError(
            f"freq must be a pandas frequency string such as '1MS', '10D' or '1YS', got {freq!r}"
        )
    try:
        pd.tseries.frequencies.to_offset(freq)
    except ValueError as err:
        raise InvalidArgumentError(
            f"freq must be a pandas frequency string such as '1MS', '10D' or '1YS', got {freq!r}"
        ) from err
    if "time" not in obj.dims:
        raise TerrascopeError("composite needs a 'time' dimension")
    times = obj["time"].values
    if times.size == 0:
        raise InvalidArgumentError("composite needs at least one date; this cube has none")
    if times.size > 1 and not (np.diff(times) >= np.timedelta64(0, "ns")).all():
        raise InvalidArgumentError(
            "composite needs the dates in increasing order: sort them (obj.sortby('time'))"
        )
    return freq


def composite(obj: xr.Dataset | xr.DataArray, freq: str = "1MS", how: str = "median") -> xr.Dataset:
    """Composite every ``freq`` period over the valid (not NaN) observations.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        A ``(time, y, x)`` cube with NaN for no data, e.g. from the terrascope engine.
        Stored integers with CF packing attributes (a ``decode=False`` cube) are
        composited in physical values, their no-data value left out. Class and mask
        variables of a Dataset (a scene classification such as ``SCL``) are left out:
        their codes have no mean or median.
    freq : str
        A pandas frequency: ``"1MS"`` (calendar months, labelled by their first day),
        ``"10D"``, ``"QS-DEC"`` (seasons)...
    how : {"median", "mean", "max", "min", "first", "last"}
        The reduction over each period's valid observations; ``"max"`` gives max-NDVI
        composites, ``"first"``/``"last"`` the first/last valid observation.

    Returns
    -------
    xarray.Dataset
        The composite variable(s), one step per period, and the number of valid
        observations per pixel and period (int64): ``valid_count`` for a DataArray or a
        one-variable Dataset, ``<variable>_valid_count`` for each variable otherwise.
        Periods without a valid observation are NaN (count 0). Dask-backed when the
        cube is.

    Raises
    ------
    InvalidArgumentError
        For an unknown ``how`` or a ``freq`` pandas does not understand.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> t = pd.to_datetime(["2025-05-02", "2025-05-20", "2025-06-03"])
    >>> da = xr.DataArray(np.array([0.2, np.nan, 0.5]), dims="time", coords={"time": t},
    ...                   name="NDVI")
    >>> out = composite(da, "1MS", "max")
    >>> out.NDVI.values.tolist(), out.valid_count.values.tolist()
    ([0.2, 0.5], [1, 1])
    """
    if how not in HOWS:
        raise InvalidArgumentError(f"how must be one of {', '.join(HOWS)}, got {how!r}")
    freq = _check_freq(obj, freq)
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else "composite"
        ds = obj.to_dataset(name=name)
        count_names = {name: "valid_count"}
    else:
        # class codes (SCL) have no mean or median: left out, as smooth() leaves them
        ds = obj[
            [k for k, v in obj.data_vars.items() if "time" in v.dims and not is_mask_variable(k, v)]
        ]
        if not ds.data_vars:
            raise TerrascopeError(
                "this Dataset has no variable with a 'time' dimension to composite (class "
                "and mask variables such as SCL are left out)"
            )
        single = len(ds.data_vars) == 1
        count_names = {k: "valid_count" if single else f"{k}_valid_count" for k in ds.data_vars}
    # per-date coordinates (item ids, platform, cloud cover) do not survive a composite
    ds = ds.drop_vars([k for k, v in ds.coords.items() if "time" in v.dims and k != "time"])
    # stored numbers (decode=False) in physical values: their no-data value is no value
    ds = ds.assign(
        {k: decode_cf_array(v).astype("float32") for k, v in ds.data_vars.items() if packed(v)}
    )
    resampler = ds.resample(time=freq)
    reduced = getattr(resampler, how)(skipna=True, keep_attrs=True)
    # a period with no date at all sums to NaN, not 0
    counts = ds.notnull().resample(time=freq).sum().fillna(0).astype("int64")
    out = reduced.assign({count_names[k]: counts[k] for k in ds.data_vars})
    for k, count_name in count_names.items():
        out[count_name].attrs = {"long_name": f"valid observations of {k} per period"}
    out.attrs = {**obj.attrs, "composite": how, "composite_freq": freq}
    out.attrs.pop("terrascope_items_key", None)
    return out
