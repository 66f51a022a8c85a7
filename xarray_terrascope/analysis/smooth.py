"""Smoothing and gap filling of time series on their real, irregular acquisition dates.

:func:`smooth` runs a Whittaker smoother (the ``whittaker-eilers`` library, a Rust
sparse solver with weights and arbitrary sampling positions) along ``time`` of any
DataArray: a ``(time, y, x)`` pixel cube or the ``(geometry, time)`` series of
:func:`~xarray_terrascope.analysis.zonal.zonal_stats`. NaN dates (clouds, no data) get
weight 0 and are filled; the output is on the input dates or on a regular ``freq``
grid. ``method="savgol"`` interpolates linearly to the regular grid and applies scipy's
Savitzky-Golay filter.

Time is measured in days (fractional, from the first date), so a ``lmbda`` is the
penalty on the squared second divided differences per day squared: the same value
smooths equally on 5-day and 2-day sampling. With ``lmbda=None`` each series gets its
own by cross-validation (the library's ``smooth_optimal``: lambdas ``1e-2 .. 1e8`` in
half-decade steps, the leave-one-out error from the smoother matrix), run on the
series' valid dates only, since the library counts zero-weight points in its error.

With dask the time axis is gathered into one chunk per block and the other
dimensions keep their chunks: the result is lazy.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pandas.tseries.offsets import BaseOffset

from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError

__all__ = ["METHODS", "check_smooth_options", "days_since", "smooth", "time_grid"]

logger = logging.getLogger(__name__)

#: Smoothing methods of :func:`smooth`.
METHODS = ("whittaker", "savgol")
#: Options that :func:`phenology` and :func:`events` pass on to :func:`smooth`.
SMOOTH_OPTIONS = ("method", "lmbda", "weights", "expectile", "window", "polyorder")


def check_smooth_options(options: dict[str, Any], caller: str) -> None:
    """Refuse what ``caller`` cannot pass on to :func:`smooth`: ``freq`` (it smooths on a
    daily grid itself) and unknown names, as typed errors naming the fix.

    Examples
    --------
    >>> check_smooth_options({"lmbda": 30}, "phenology")
    >>> check_smooth_options({"freq": "5D"}, "phenology")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xarray_terrascope.exceptions.InvalidArgumentError: phenology smooths on a daily grid ...
    """
    if "freq" in options:
        raise InvalidArgumentError(
            f"{caller} smooths on a daily grid itself: freq is not one of its options. To "
            "use your own series, smooth(da, freq=...) first and pass smoothed=True."
        )
    unknown = sorted(set(options) - set(SMOOTH_OPTIONS))
    if unknown:
        raise InvalidArgumentError(
            f"{caller} got unknown option(s) {', '.join(unknown)}; the smoothing options it "
            f"passes on are: {', '.join(SMOOTH_OPTIONS)}"
        )


#: Whittaker penalty order (second differences: a straight line is not penalised).
ORDER = 2
_DAY = np.timedelta64(1, "D")
_ITERATIONS = 10


def _require_time(obj: xr.DataArray | xr.Dataset, what: str) -> None:
    if "time" not in obj.dims:
        raise InvalidArgumentError(
            f"{what} needs a 'time' dimension; this object has dims {tuple(obj.dims)}. "
            "Rename the time dimension to 'time' (obj.rename({'date': 'time'})) or pass "
            "a (time, ...) series such as ds.NDVI or the output of zonal_stats."
        )
    if not np.issubdtype(obj["time"].dtype, np.datetime64):
        raise InvalidArgumentError(
            f"{what} needs datetime64 'time' values, got {obj['time'].dtype}; convert them "
            "with obj.assign_coords(time=pd.to_datetime(obj.time.values))."
        )


def _check_dates(times: np.ndarray, need: int, what: str) -> None:
    if times.size < need:
        raise InvalidArgumentError(
            f"{what} needs at least {need} dates, got {times.size}; open a longer period "
            "(start=, end=)."
        )
    if np.isnat(times).any() or (np.diff(times) <= np.timedelta64(0, "ns")).any():
        raise InvalidArgumentError(
            f"{what} needs distinct, increasing 'time' values without NaT; sort them "
            "(obj.sortby('time')) and combine repeated dates (obj.groupby('time').mean())."
        )


def _check_freq(freq: Any) -> BaseOffset:
    message = (
        f"freq must be None (the input dates) or a pandas frequency string such as '1D' "
        f"or '5D', got {freq!r}"
    )
    if not isinstance(freq, str):
        raise InvalidArgumentError(message)
    try:
        with warnings.catch_warnings():  # pandas warns about odd spellings, then fails
            warnings.simplefilter("ignore", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(freq)
            return offset
    except ValueError as err:
        raise InvalidArgumentError(message) from err


def _check_lmbda(lmbda: Any) -> float | None:
    if lmbda is None:
        return None
    try:
        value = float(lmbda)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"lmbda must be a positive number or None, got {lmbda!r}"
        ) from err
    if not np.isfinite(value) or value <= 0:
        raise InvalidArgumentError(
            f"lmbda must be positive (try 10 to 10000 for daily units; larger is smoother), "
            f"or None to choose it by cross-validation; got {lmbda!r}"
        )
    return value


def days_since(times: np.ndarray, origin: np.datetime64) -> np.ndarray:
    """Fractional days of ``times`` (datetime64) since ``origin``, float64."""
    return (times.astype("datetime64[ns]") - origin) / _DAY


def time_grid(times: np.ndarray, freq: str) -> np.ndarray:
    """The regular output dates: every ``freq`` from the first date's midnight to the last
    date (datetime64[ns])."""
    start = pd.Timestamp(times[0]).normalize()
    return pd.date_range(start, pd.Timestamp(times[-1]), freq=_check_freq(freq)).values


def _span_mask(x_out: np.ndarray, x_obs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n, n_out): output positions within each series' first..last valid date."""
    first = np.where(valid.any(1), np.argmax(valid, 1), 0)
    last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], 1)
    lo, hi = x_obs[first], x_obs[last]
    return (x_out[None, :] >= lo[:, None] - 1e-9) & (x_out[None, :] <= hi[:, None] + 1e-9)


def _whittaker_rows(
    y: np.ndarray,
    w: np.ndarray,
    x_obs: np.ndarray,
    x_out: np.ndarray,
    lmbda: float | None,
    expectile: float | None = None,
) -> np.ndarray:
    """Whittaker-smooth the rows of ``y`` (n, T) with weights ``w`` onto ``x_out``.

    Rows with fewer than ``ORDER + 1`` positive weights are NaN. Series sharing one
    weight pattern share one factorised smoother (clouds mask whole areas at once).
    """
    from whittaker_eilers import WhittakerSmoother

    x_all = np.union1d(x_obs, x_out)
    at_obs = np.searchsorted(x_all, x_obs)
    at_out = np.searchsorted(x_all, x_out)
    out = np.full((y.shape[0], x_out.size), np.nan)
    valid = (w > 0) & np.isfinite(y)
    enough = valid.sum(1) > ORDER
    w_full = np.zeros((y.shape[0], x_all.size))
    w_full[:, at_obs] = np.where(valid, w, 0.0)
    y_full = np.zeros_like(w_full)
    y_full[:, at_obs] = np.where(valid, y, 0.0)
    groups: dict[bytes, list[int]] = {}
    for found in np.flatnonzero(enough):
        groups.setdefault(w_full[found].tobytes(), []).append(int(found))
    smoother = None
    for rows in groups.values():
        weights = w_full[rows[0]].tolist()
        if smoother is None:  # one per block: new weights cost less than a new smoother
            smoother = WhittakerSmoother(
                lmbda=lmbda or 1.0, order=ORDER, data_length=x_all.size,
                x_input=x_all.tolist(), weights=weights,
            )  # fmt: skip
        else:
            smoother.update_weights(weights)
        keep = valid[rows[0]]
        for i in rows:
            if lmbda is None:
                smoother.update_lambda(_cross_validated(x_obs[keep], y[i, keep], w[i, keep]))
            z = np.asarray(smoother.smooth(y_full[i]))
            if expectile is not None:
                z = _envelope(smoother, y_full[i], w_full[i], z, expectile)
                smoother.update_weights(weights)
            out[i] = z[at_out]
    out[~_span_mask(x_out, x_obs, valid)] = np.nan
    logger.debug(
        "whittaker: %d series, %d weight patterns, %d without enough valid dates",
        y.shape[0], len(groups), int((~enough).sum()),
    )  # fmt: skip
    return out


def _envelope(smoother: Any, y: np.ndarray, w: np.ndarray, z: np.ndarray, p: float) -> np.ndarray:
    """Expectile (asymmetric) reweighting: dates above the curve weigh ``p``, below
    ``1 - p``, until the pattern is stable (at most ``_ITERATIONS`` passes)."""
    above = None
    for _ in range(_ITERATIONS):
        now = y > z
        if above is not None and (now == above).all():
            break
        above = now
        smoother.update_weights((w * np.where(now, p, 1.0 - p)).tolist())
        z = np.asarray(smoother.smooth(y))
    return z


def _cross_validated(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The library's leave-one-out choice of lambda on the valid dates of one series."""
    from whittaker_eilers import WhittakerSmoother

    smoother = WhittakerSmoother(
        lmbda=1.0, order=ORDER, data_length=x.size, x_input=x.tolist(), weights=w.tolist()
    )
    best = smoother.smooth_optimal(y.tolist(), break_serial_correlation=False).get_optimal()
    return float(best.get_lambda())


def _savgol_rows(
    y: np.ndarray, w: np.ndarray, x_obs: np.ndarray, x_out: np.ndarray, window: int, poly: int
) -> np.ndarray:
    """Linear interpolation of the valid dates onto ``x_out``, then Savitzky-Golay."""
    from scipy.signal import savgol_filter

    valid = (w > 0) & np.isfinite(y)
    filled = np.full((y.shape[0], x_out.size), np.nan)
    for i in np.flatnonzero(valid.sum(1) > poly):
        filled[i] = np.interp(x_out, x_obs[valid[i]], y[i, valid[i]])
    ok = np.isfinite(filled[:, 0])
    if ok.any():
        filled[ok] = savgol_filter(filled[ok], window, poly, axis=-1, mode="interp")
    filled[~_span_mask(x_out, x_obs, valid)] = np.nan
    return filled


def _block(
    y: np.ndarray, w: np.ndarray, *, x_obs: np.ndarray, x_out: np.ndarray, method: str,
    lmbda: float | None, expectile: float | None, window: int, poly: int,
) -> np.ndarray:  # fmt: skip
    shape = y.shape[:-1]
    y2 = y.reshape(-1, y.shape[-1]).astype(np.float64)
    w2 = np.broadcast_to(w, y.shape).reshape(y2.shape).astype(np.float64)
    if method == "whittaker":
        out = _whittaker_rows(y2, w2, x_obs, x_out, lmbda, expectile)
    else:
        out = _savgol_rows(y2, w2, x_obs, x_out, window, poly)
    return out.reshape(*shape, x_out.size)


def _weights(da: xr.DataArray, weights: xr.DataArray | None) -> xr.DataArray:
    valid = da.notnull()
    if weights is None:
        return valid.astype(np.float64)
    if not isinstance(weights, xr.DataArray):
        raise InvalidArgumentError(
            "weights must be a DataArray on the series' dims (e.g. the valid_fraction of "
            f"zonal_stats), or None; got {type(weights).__name__}"
        )
    if "time" not in weights.dims:
        raise InvalidArgumentError("weights must have the 'time' dimension of the series")
    # a label of the weights (zonal_statistics="valid_fraction") is not the series'
    weights = weights.drop_vars([c for c in weights.coords if c not in weights.dims])
    return xr.where(valid & (weights > 0), weights, 0.0).astype(np.float64)


def smooth(
    da: xr.DataArray,
    method: str = "whittaker",
    lmbda: float | None = None,
    freq: str | None = None,
    weights: xr.DataArray | None = None,
    *,
    expectile: float | None = None,
    window: int = 7,
    polyorder: int = 2,
) -> xr.DataArray:
    """Smooth and gap-fill ``da`` along ``time``.

    Parameters
    ----------
    da : xarray.DataArray
        Any series with a datetime ``time`` dimension (NaN = not observed): a
        ``(time, y, x)`` cube or the ``(geometry, time)`` output of ``zonal_stats``.
    method : {"whittaker", "savgol"}
        Whittaker smoother on the real dates (``whittaker-eilers``), or Savitzky-Golay
        (scipy) on the regular ``freq`` grid after linear interpolation.
    lmbda : float, optional
        Whittaker smoothing strength (positive; days as the unit of time, so 100-10000
        for NDVI). None: chosen per series by cross-validation (a few ms a series:
        give a number for large cubes).
    freq : str, optional
        None: the input dates. A pandas frequency (``"1D"``, ``"5D"``): a regular grid
        from the first date's midnight to the last date. ``"savgol"`` defaults to
        ``"1D"``.
    weights : xarray.DataArray, optional
        Per-observation weights (>= 0; e.g. the ``valid_fraction`` of zonal_stats),
        broadcast against ``da``. NaN values of ``da`` always weigh 0.
    expectile : float, optional
        Whittaker only: fit an upper envelope (asymmetric weights, as VITO's
        ``vam.whittaker.ws2dp`` and TIMESAT's upper-envelope adaptation): dates above
        the curve weigh ``expectile``, below ``1 - expectile``, iterated until stable.
        0.9 suits NDVI, whose undetected haze and cloud edges only lower values. None
        (default): symmetric least squares.
    window, polyorder : int
        The Savitzky-Golay window (samples of the ``freq`` grid, odd) and polynomial
        order.

    Returns
    -------
    xarray.DataArray
        float64, the dims of ``da`` (``time`` last), NaN outside each series' first and
        last valid dates and for series with fewer than 3 valid dates. Lazy if ``da``
        is dask-backed. ``attrs["smoothing"]`` says how it was made.

    Raises
    ------
    InvalidArgumentError
        No ``time`` dimension, fewer than 4 dates, repeated dates, an unknown method, a
        ``lmbda`` that is not positive, a ``freq`` pandas cannot parse, bad weights.

    Examples
    --------
    >>> series = zs.NDVI.sel(zonal_statistics="mean")  # doctest: +SKIP
    >>> daily = smooth(series, lmbda=1000, freq="1D")  # doctest: +SKIP
    """
    if not isinstance(da, xr.DataArray):
        raise InvalidArgumentError(f"smooth takes a DataArray, got {type(da).__name__}")
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}")
    _require_time(da, "smooth")
    lmbda = _check_lmbda(lmbda)
    if expectile is not None and not (isinstance(expectile, int | float) and 0.5 <= expectile < 1):
        raise InvalidArgumentError(
            f"expectile must be None or in [0.5, 1) (0.9 for an NDVI upper envelope), "
            f"got {expectile!r}"
        )
    if method == "savgol":
        freq = freq or "1D"
        if window % 2 == 0 or window <= polyorder:
            raise InvalidArgumentError(
                f"window must be odd and larger than polyorder ({polyorder}), got {window}"
            )
    if method == "whittaker":
        try:
            import whittaker_eilers  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "smooth(method='whittaker') needs the whittaker-eilers package: "
                "pip install 'xarray-terrascope[analysis]' (or method='savgol')"
            ) from err
    if freq is not None:
        _check_freq(freq)
    times = da["time"].values.astype("datetime64[ns]")
    _check_dates(times, ORDER + 2, "smooth")
    origin = times[0]
    out_times = times if freq is None else time_grid(times, freq)
    if method == "savgol" and window > out_times.size:
        raise InvalidArgumentError(
            f"window ({window} samples) is longer than the series' {out_times.size} "
            f"samples on the {'input dates' if freq is None else freq + ' grid'}: give a "
            "shorter odd window or a finer freq"
        )
    x_obs, x_out = days_since(times, origin), days_since(out_times, origin)

    if not np.issubdtype(da.dtype, np.floating):
        da = da.astype(np.float64)
    w = _weights(da, weights)
    if da.chunks is not None:
        da = da.chunk({"time": -1})
    if w.chunks is not None:  # lazy weights of an in-memory series too
        w = w.chunk({"time": -1})
    kwargs = {
        "x_obs": x_obs, "x_out": x_out, "method": method, "lmbda": lmbda,
        "expectile": expectile, "window": window, "poly": polyorder,
    }  # fmt: skip
    result = xr.apply_ufunc(
        _block,
        da,
        w,
        input_core_dims=[["time"], ["time"]],
        output_core_dims=[["time_out"]],
        kwargs=kwargs,
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"time_out": x_out.size}},
        keep_attrs=True,
    )
    result = result.rename(time_out="time").assign_coords(time=out_times).transpose(*da.dims)
    if freq is not None:  # coordinates along the input dates (item ids...) no longer fit
        drop = [c for c in result.coords if c != "time" and "time" in result[c].dims]
        result = result.drop_vars(drop)
    else:
        result = result.assign_coords(
            {c: da[c] for c in da.coords if c != "time" and "time" in da[c].dims}
        )
    how = f"whittaker lmbda={'cross-validated' if lmbda is None else lmbda}"
    if expectile is not None:
        how += f" expectile={expectile}"
    if method == "savgol":
        how = f"savgol window={window} polyorder={polyorder}"
    result.attrs["smoothing"] = f"{how}, freq={freq or 'input dates'}"
    for key in ("scale_factor", "add_offset", "_FillValue"):
        result.attrs.pop(key, None)
    return result


def smooth_dataset(ds: xr.Dataset, **kwargs: Any) -> xr.Dataset:
    """:func:`smooth` every numeric data variable of ``ds`` with a ``time`` dimension;
    the others are kept as they are (dropped if ``freq`` changes the dates). Stored
    digital numbers are smoothed as they are: decode them first (the accessor does).

    Examples
    --------
    >>> smooth_dataset(ds, lmbda=30, freq="5D")  # doctest: +SKIP
    """
    _require_time(ds, "smooth")
    out = {}
    for name, var in ds.data_vars.items():
        if "time" in var.dims and var.dtype.kind in "iuf":
            out[name] = smooth(var, **kwargs)
        elif "time" not in var.dims or kwargs.get("freq") is None:
            out[name] = var
    if not any("time" in v.dims for v in out.values()):
        raise TerrascopeError("smooth found no numeric variable with a 'time' dimension")
    return xr.Dataset(out, attrs=ds.attrs)
