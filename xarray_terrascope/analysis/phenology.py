"""Season metrics of smoothed series: start, peak and end of season, their values, the
season's length and amplitude, and the rates of green-up and senescence.

Definitions (the seasonal-amplitude method of TIMESAT and Phenolopy, on one season per
series, measured on a daily curve):

- **maximum** (``pos_value``): the curve's largest value (TIMESAT's "largest data
  value" of the season).
- **left and right minima** (``left_min``, ``right_min``): the curve's minimum before
  and after the maximum.
- **start of season** (``sos_time``): the last date before the maximum on which the
  curve rises through ``left_min + threshold * (pos_value - left_min)`` (linear between
  days); **end of season** (``eos_time``): the first date after the maximum on which it
  falls through ``right_min + threshold * (pos_value - right_min)``.
- **peak date** (``pos_time``): TIMESAT's "middle of season" (its seasonality
  parameter 5, Jönsson & Eklundh 2004, *Computers & Geosciences* 30, 833-845, and the
  TIMESAT software manual): the midpoint between the date the curve, walking forward
  from the left minimum, first rises through ``left_min + peak_level * (pos_value -
  left_min)`` and the date it, walking back from the right minimum, last stands above
  ``right_min + peak_level * (pos_value - right_min)`` (``peak_level=0.8``, TIMESAT's
  80 %). Crops' tops are plateaus weeks long on which the day of the maximum itself is
  set by noise; the two crossings lie on steep flanks and are well determined.
  ``pos_value`` stays the maximum, as in TIMESAT (not the curve's value at
  ``pos_time``, which on a two-humped top can be lower).
- ``amplitude``: ``pos_value - (left_min + right_min) / 2``; ``season_length``:
  ``eos_time - sos_time`` in days.
- ``greenup_rate``: the mean slope from the start of season to the ``peak_level``
  crossing before the maximum, ``(peak_level - threshold) * (pos_value - left_min)``
  divided by the days between the two crossings (TIMESAT's "rate of increase", between
  its 20 % and 80 % levels); ``senescence_rate``: the same after the maximum, from the
  ``peak_level`` crossing to the end of season (positive when the curve falls). NaN
  where the flank dips back below the start (end) level between the two crossings.

A start (end) whose rise (fall) is smaller than ``min_amplitude`` is not observed: NaT
(its rate NaN); the peak date needs both flanks, so it is NaT when either is not
observed (``pos_value`` is still given). One season per series: the one holding the
highest maximum. A second crop in the same year (maize after a winter crop, a catch
crop) is not reported: select its window (``da.sel(time=slice(...))``) and call again.
A series longer than 400 days is refused (select one year).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from xarray_terrascope.analysis.smooth import (
    _check_dates,
    _require_time,
    check_smooth_options,
    days_since,
    smooth,
)
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["METRICS", "phenology"]

#: The variables of :func:`phenology`'s Dataset, in order (``*_time`` are datetimes).
METRICS = (
    "sos_time", "pos_time", "eos_time", "sos_value", "pos_value", "eos_value",
    "left_min", "right_min", "amplitude", "season_length", "greenup_rate", "senescence_rate",
)  # fmt: skip
_MAX_SPAN_DAYS = 400


def _rows(
    z: np.ndarray, x: np.ndarray, threshold: float, min_amplitude: float, peak_level: float
) -> np.ndarray:
    """The metrics of the rows of ``z`` (n, T) sampled at days ``x``: (n, len(METRICS)),
    dates as days of ``x``."""
    n, size = z.shape
    out = np.full((n, len(METRICS)), np.nan)
    valid = np.isfinite(z)
    rows = np.flatnonzero(valid.sum(1) >= 3)
    if rows.size == 0:
        return out
    z, valid = z[rows], valid[rows]
    r = np.arange(rows.size)
    idx = np.arange(size)
    peak = np.where(valid, z, -np.inf).argmax(1)
    pos_value = z[r, peak]
    before = valid & (idx <= peak[:, None])
    after = valid & (idx >= peak[:, None])
    left_at = np.where(before, z, np.inf).argmin(1)
    right_at = np.where(after, z, np.inf).argmin(1)
    left_min, right_min = z[r, left_at], z[r, right_at]
    level_l = left_min + threshold * (pos_value - left_min)
    level_r = right_min + threshold * (pos_value - right_min)
    has_left = pos_value - left_min >= min_amplitude
    has_right = pos_value - right_min >= min_amplitude

    below = before & (z < level_l[:, None])
    i = size - 1 - below[:, ::-1].argmax(1)  # last day below the level before the peak
    sos = _cross(z, x, level_l, i, np.minimum(i + 1, size - 1))
    sos[~below.any(1) | ~has_left] = np.nan
    below = after & (z < level_r[:, None])
    j = below.argmax(1)  # first day below the level after the peak
    eos = _cross(z, x, level_r, np.maximum(j - 1, 0), j)
    eos[~below.any(1) | ~has_right] = np.nan

    # the peak date (TIMESAT's middle of season): midpoint of the peak_level crossings,
    # found stepping from the left minimum forward and from the right minimum back
    top_l = left_min + peak_level * (pos_value - left_min)
    top_r = right_min + peak_level * (pos_value - right_min)
    above = valid & (idx >= left_at[:, None]) & (idx <= peak[:, None]) & (z > top_l[:, None])
    i = above.argmax(1)  # first day above the level after the left minimum
    rise = _cross(z, x, top_l, np.maximum(i - 1, 0), i)
    rise[~above.any(1)] = np.nan
    above = valid & (idx >= peak[:, None]) & (idx <= right_at[:, None]) & (z > top_r[:, None])
    j = size - 1 - above[:, ::-1].argmax(1)  # last day above the level before the right min
    fall = _cross(z, x, top_r, j, np.minimum(j + 1, size - 1))
    fall[~above.any(1)] = np.nan
    rise[~has_left] = np.nan
    fall[~has_right] = np.nan
    pos = (rise + fall) / 2

    sos_value = np.where(np.isfinite(sos), level_l, np.nan)
    eos_value = np.where(np.isfinite(eos), level_r, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenup = np.where(rise > sos, (top_l - level_l) / (rise - sos), np.nan)
        senescence = np.where(eos > fall, (top_r - level_r) / (eos - fall), np.nan)
    amplitude = pos_value - (left_min + right_min) / 2
    out[rows] = np.column_stack(
        [sos, pos, eos, sos_value, pos_value, eos_value, left_min, right_min,
         amplitude, eos - sos, greenup, senescence]
    )  # fmt: skip
    return out


def _cross(z: np.ndarray, x: np.ndarray, level: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Day at which the line from (x[a], z[a]) to (x[b], z[b]) crosses ``level``."""
    r = np.arange(z.shape[0])
    za, zb = z[r, a], z[r, b]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(zb != za, (level - za) / (zb - za), 0.0)
    return x[a] + np.clip(share, 0.0, 1.0) * (x[b] - x[a])


def _block(
    z: np.ndarray, *, x: np.ndarray, threshold: float, min_amplitude: float, peak_level: float
) -> np.ndarray:
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    out = _rows(flat, x, threshold, min_amplitude, peak_level)
    return out.reshape(*z.shape[:-1], len(METRICS))


def _as_datetime(days: np.ndarray, origin: np.datetime64) -> np.ndarray:
    out = np.full(days.shape, np.datetime64("NaT"), "datetime64[ns]")
    ok = np.isfinite(days)
    out[ok] = origin + np.round(days[ok] * 86400e9).astype("timedelta64[ns]")
    return out


def to_datetime(days: xr.DataArray, origin: np.datetime64) -> xr.DataArray:
    """Fractional days since ``origin`` as datetime64[ns] (NaN -> NaT), lazily."""
    return xr.apply_ufunc(
        _as_datetime, days, kwargs={"origin": origin}, dask="parallelized",
        output_dtypes=["datetime64[ns]"],
    )  # fmt: skip


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """A share strictly between 0 and 1, else :class:`InvalidArgumentError`."""
    try:
        value = float(threshold)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(f"{name} must be a number in (0, 1), got {threshold!r}") from err
    if not 0 < value < 1:
        raise InvalidArgumentError(
            f"{name} must be a share of the amplitude strictly between 0 and 1 (TIMESAT "
            f"uses 0.5 for threshold and 0.8 for peak_level), got {threshold!r}"
        )
    return value


def phenology(
    da: xr.DataArray,
    threshold: float = 0.5,
    *,
    smoothed: bool = False,
    min_amplitude: float = 0.1,
    peak_level: float = 0.8,
    **smooth_options: Any,
) -> xr.Dataset:
    """Start, peak and end of season per pixel or parcel (see the module's definitions).

    Parameters
    ----------
    da : xarray.DataArray
        A ``(time, ...)`` series (NDVI, NaN = not observed), e.g. ``ds.NDVI`` or
        ``zs.NDVI.sel(zonal_statistics="mean")``.
    threshold : float
        Share of the rise (fall) above the left (right) minimum that marks the start
        (end) of season, in (0, 1).
    smoothed : bool
        False (default): smooth ``da`` first with :func:`smooth` on a daily grid
        (``smooth_options`` passed on: ``lmbda``, ``method``, ``weights``...). True:
        ``da`` is a smooth curve already; crossings are interpolated linearly between
        its dates.
    min_amplitude : float
        The smallest rise (fall) that counts as a start (end) of season.
    peak_level : float
        Share of the rise (fall) at whose crossings the peak date is measured: the
        peak date is the midpoint of the two (TIMESAT's middle of season, 0.8), in
        (``threshold``, 1). The green-up and senescence rates are the slopes between
        the ``threshold`` and ``peak_level`` crossings.

    Returns
    -------
    xarray.Dataset
        The variables of :data:`METRICS` on the dims of ``da`` without ``time``:
        ``*_time`` datetime64[ns] (NaT: not observed), the rest float64 (values in the
        unit of ``da``, ``season_length`` in days, rates per day). Lazy for dask input;
        ``.to_dataframe()`` gives one row per pixel or parcel.

    Raises
    ------
    InvalidArgumentError
        No ``time`` dimension, a series longer than 400 days, a threshold outside
        (0, 1), a ``peak_level`` outside (``threshold``, 1), too few dates, or a bad
        smoothing option.

    Examples
    --------
    >>> series = zs.NDVI.sel(zonal_statistics="mean")  # doctest: +SKIP
    >>> seasons = phenology(series, 0.5, lmbda=30, expectile=0.8)  # doctest: +SKIP
    >>> seasons.sos_time.dt.dayofyear.to_series()  # doctest: +SKIP
    """
    threshold = check_threshold(threshold)
    peak_level = check_threshold(peak_level, "peak_level")
    if peak_level <= threshold:
        raise InvalidArgumentError(
            f"peak_level ({peak_level}) must be above threshold ({threshold}): the peak "
            "date is measured higher on the flanks than the start and end of season; "
            "use e.g. threshold=0.5, peak_level=0.8"
        )
    _require_time(da, "phenology")
    times = da["time"].values.astype("datetime64[ns]")
    if smoothed:  # else smooth() checks them
        _check_dates(times, 3, "phenology(smoothed=True)")
    if times.size and (times[-1] - times[0]) > np.timedelta64(_MAX_SPAN_DAYS, "D"):
        raise InvalidArgumentError(
            f"phenology reports one season per series, and this one spans "
            f"{(times[-1] - times[0]) // np.timedelta64(1, 'D')} days; select one year "
            "(da.sel(time=slice('2025-01-01', '2025-12-31'))) or loop over "
            "da.groupby('time.year')."
        )
    check_smooth_options(smooth_options, "phenology")
    curve = da if smoothed else smooth(da, freq="1D", **smooth_options)
    if smoothed and curve.chunks is not None:
        curve = curve.chunk({"time": -1})
    curve_times = curve["time"].values.astype("datetime64[ns]")
    origin = curve_times[0]
    metrics = xr.apply_ufunc(
        _block,
        curve,
        input_core_dims=[["time"]],
        output_core_dims=[["metric"]],
        kwargs={"x": days_since(curve_times, origin), "threshold": threshold,
                "min_amplitude": float(min_amplitude), "peak_level": peak_level},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"metric": len(METRICS)}},
    )  # fmt: skip
    out = {}
    for k, name in enumerate(METRICS):
        var = metrics.isel(metric=k, drop=True)
        out[name] = to_datetime(var, origin) if name.endswith("_time") else var
    ds = xr.Dataset(out)
    ds.attrs.update(
        threshold=threshold,
        min_amplitude=float(min_amplitude),
        peak_level=peak_level,
        definition=(
            "seasonal amplitude: SOS/EOS where the curve crosses left_min/right_min + "
            f"{threshold} * (max - left_min/right_min); peak date: midpoint of the "
            f"crossings of left_min/right_min + {peak_level} * (max - left_min/right_min) "
            "(TIMESAT's middle of season); one season (the highest maximum)"
        ),
        smoothing=curve.attrs.get("smoothing", "given"),
    )
    return ds
