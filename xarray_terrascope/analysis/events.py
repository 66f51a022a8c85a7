"""Sharp drops in smoothed series: mowing, harvest, ploughing.

On a daily smoothed curve ``z``, a day ``t`` is *falling* when ``z[t] - z[t + window]
>= min_drop`` (the curve loses at least ``min_drop`` within ``window`` days). Each run of
consecutive falling days is one event:

- ``event_time``: the day of the steepest one-day fall from the run's first day to its
  last day + ``window``;
- ``event_size``: the fall from the last local maximum before the steepest day to the
  first local minimum after it (positive), neither walk crossing into the neighbouring
  events (two cuts with a slow decline between them share no part of their sizes).

The output is a Dataset with an ``event`` dimension of ``max_events`` slots (fixed, so
that dask knows the shape), events in date order, unused slots NaT/NaN; the largest
events are kept when there are more. ``.to_dataframe().dropna()`` is the tidy table of
events.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from xarray_terrascope.analysis.phenology import to_datetime
from xarray_terrascope.analysis.smooth import (
    _check_dates,
    _require_time,
    check_smooth_options,
    days_since,
    smooth,
)
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["events"]


def _row(z: np.ndarray, x: np.ndarray, min_drop: float, window: int, slots: int) -> np.ndarray:
    out = np.full((slots, 2), np.nan)
    size = z.size
    if size <= window or not np.isfinite(z).any():
        return out
    fall = z[:-window] - z[window:]
    falling = np.nan_to_num(fall, nan=-np.inf) >= min_drop
    if not falling.any():
        return out
    step = np.diff(z)  # z[t + 1] - z[t]
    edges = np.diff(np.r_[0, falling.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    found = []
    floor = 0  # the previous event's bottom: no walk back crosses into that event
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        stop = min(e + window, size - 1)
        steepest = int(s) + int(np.nanargmin(step[s:stop]))
        # nor does a walk forward cross into the next event's run (two cuts with a
        # slow decline between them would each count both)
        ceiling = max(int(starts[k + 1]), steepest + 1) if k + 1 < len(starts) else size - 1
        top = steepest
        while top > floor and np.isfinite(z[top - 1]) and z[top - 1] >= z[top]:
            top -= 1
        bottom = steepest + 1
        while bottom < ceiling and np.isfinite(z[bottom + 1]) and z[bottom + 1] <= z[bottom]:
            bottom += 1
        floor = bottom
        # the day whose fall to the next day is steepest: the event is between them
        found.append((x[steepest] + 0.5 * (x[steepest + 1] - x[steepest]), z[top] - z[bottom]))
    if len(found) > slots:
        found = sorted(sorted(found, key=lambda f: -f[1])[:slots])
    out[: len(found)] = found
    return out


def _block(z: np.ndarray, *, x: np.ndarray, min_drop: float, window: int, slots: int):
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    out = (
        np.stack([_row(row, x, min_drop, window, slots) for row in flat])
        if len(flat)
        else (np.empty((0, slots, 2)))
    )
    return out.reshape(*z.shape[:-1], slots, 2)


def events(
    da: xr.DataArray,
    min_drop: float = 0.1,
    window: int = 10,
    *,
    max_events: int = 8,
    smoothed: bool = False,
    **smooth_options: Any,
) -> xr.Dataset:
    """Sharp drops (mowing, harvest, ploughing) per pixel or parcel (see the module).

    Parameters
    ----------
    da : xarray.DataArray
        A ``(time, ...)`` series (NaN = not observed).
    min_drop : float
        The smallest fall (in the unit of ``da``) within ``window`` days that is an event.
    window : int
        Days within which the fall must happen (a slow senescence is not an event).
    max_events : int
        Slots of the ``event`` dimension.
    smoothed : bool
        False (default): smooth ``da`` on a daily grid first (``smooth_options`` passed
        to :func:`~xarray_terrascope.analysis.smooth.smooth`). True: ``da`` is a smooth
        daily curve already.

    Returns
    -------
    xarray.Dataset
        ``event_time`` (datetime64[ns]) and ``event_size`` (float64) on the dims of
        ``da`` without ``time``, plus ``event``. Lazy for dask input.

    Raises
    ------
    InvalidArgumentError
        No ``time`` dimension, a ``min_drop`` that is not positive, a ``window`` or
        ``max_events`` below 1, a curve that is not daily with ``smoothed=True``.

    Examples
    --------
    >>> drops = events(series, min_drop=0.1, lmbda=30, expectile=0.8)  # doctest: +SKIP
    >>> drops.to_dataframe().dropna()  # one row per parcel and event  # doctest: +SKIP
    """
    _require_time(da, "events")
    if not (isinstance(min_drop, int | float) and min_drop > 0):
        raise InvalidArgumentError(
            f"min_drop must be a positive fall in the unit of the series (0.1 for NDVI), "
            f"got {min_drop!r}"
        )
    for name, value in (("window", window), ("max_events", max_events)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    check_smooth_options(smooth_options, "events")
    curve = da if smoothed else smooth(da, freq="1D", **smooth_options)
    times = curve["time"].values.astype("datetime64[ns]")
    if smoothed:  # else smooth() checked them
        _check_dates(times, 2, "events(smoothed=True)")
    x = days_since(times, times[0])
    if smoothed:
        if times.size > 1 and not np.allclose(np.diff(x), 1.0):
            raise InvalidArgumentError(
                "events(smoothed=True) needs a daily curve; pass the raw series with "
                "smoothed=False, or smooth(..., freq='1D') first"
            )
        if curve.chunks is not None:
            curve = curve.chunk({"time": -1})
    found = xr.apply_ufunc(
        _block,
        curve,
        input_core_dims=[["time"]],
        output_core_dims=[["event", "field"]],
        kwargs={"x": x, "min_drop": float(min_drop), "window": window, "slots": max_events},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"event": max_events, "field": 2}},
    )
    ds = xr.Dataset(
        {
            "event_time": to_datetime(found.isel(field=0, drop=True), times[0]),
            "event_size": found.isel(field=1, drop=True),
        }
    ).assign_coords(event=np.arange(max_events))
    ds.attrs.update(
        min_drop=float(min_drop),
        window=window,
        definition=(
            f"a fall of at least {min_drop} within {window} days of the daily smoothed "
            "curve; date = steepest day, size = local maximum to local minimum"
        ),
        smoothing=curve.attrs.get("smoothing", "given"),
    )
    return ds
