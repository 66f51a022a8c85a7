"""Seasonal truth of :class:`~xarray_terrascope.testing.World`'s parcels: the noise-free
daily NDVI curve, its phenology dates and the mowing and harvest dates.

The phenology uses the definitions of :mod:`xarray_terrascope.analysis.phenology`
(TIMESAT's seasonal amplitude, one season: the highest peak), derived here on its own
from the world's curves (a plain loop over each parcel's daily values), never through
the package's code.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _phenology

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from ._parcels import Landscape

__all__ = ["SeasonTruthMixin"]


def _crossing(d0: float, v0: float, d1: float, v1: float, level: float) -> float:
    """Day between d0 and d1 where the straight line through the two values meets level."""
    if v1 == v0:
        return d0
    return d0 + (level - v0) / (v1 - v0) * (d1 - d0)


def _season(
    values: np.ndarray, threshold: float, min_amplitude: float, peak_level: float = 0.8
) -> dict[str, float]:
    """Phenology of one daily curve, dates as day indices into ``values``.

    The peak date is TIMESAT's middle of season: halfway between the day the curve,
    walking forward from the left minimum, first rises above the ``peak_level`` share of
    its rise and the day it, walking back from the right minimum, last stands above the
    ``peak_level`` share of its fall.
    """
    peak = int(np.argmax(values))
    top = float(values[peak])
    left_at = int(np.argmin(values[: peak + 1]))
    right_at = peak + int(np.argmin(values[peak:]))
    left = float(values[left_at])
    right = float(values[right_at])
    up = left + threshold * (top - left)
    down = right + threshold * (top - right)
    sos = eos = rise = fall = float("nan")
    if top - left >= min_amplitude:
        d = peak
        while values[d] >= up:  # back from the peak to the last day below the level
            d -= 1
        sos = _crossing(d, values[d], d + 1, values[d + 1], up)
        high = left + peak_level * (top - left)
        d = left_at
        while values[d] <= high:  # on from the left minimum to the first day above
            d += 1
        rise = _crossing(d - 1, values[d - 1], d, values[d], high)
    if top - right >= min_amplitude:
        d = peak
        while values[d] >= down:
            d += 1
        eos = _crossing(d - 1, values[d - 1], d, values[d], down)
        high = right + peak_level * (top - right)
        d = right_at
        while values[d] <= high:  # back from the right minimum to the last day above
            d -= 1
        fall = _crossing(d, values[d], d + 1, values[d + 1], high)
    return {
        "sos": sos,
        "pos": (rise + fall) / 2,
        "eos": eos,
        "pos_value": top,
        "left_min": left,
        "right_min": right,
        "amplitude": top - (left + right) / 2,
    }


class SeasonTruthMixin:
    """Season truth per parcel (mixed into ``World``)."""

    land: Landscape
    start: date
    end: date

    def _window(self, start: Any, end: Any) -> list[date]:
        first = self.start if start is None else date.fromisoformat(str(start)[:10])
        last = self.end if end is None else date.fromisoformat(str(end)[:10])
        return [first + timedelta(days=k) for k in range((last - first).days + 1)]

    def _ids(self, parcel_ids: Any) -> np.ndarray:
        if parcel_ids is None:
            return np.arange(1, self.land.n_parcels + 1)
        ids = np.atleast_1d(np.asarray(parcel_ids))
        if ids.dtype.kind not in "iu" or ids.min() < 1 or ids.max() > self.land.n_parcels:
            raise KeyError(f"not parcel ids of this world (1..{self.land.n_parcels})")
        return ids.astype(np.int64)

    def true_series(
        self, parcel_ids: Any = None, start: Any = None, end: Any = None
    ) -> xr.DataArray:
        """Return the noise-free daily NDVI of parcels, ``(parcel_id, time)`` float64.

        One value per day (at midnight) from ``start`` to ``end`` (the world's window by
        default): the curve the files' NDVI is drawn from, before texture, clouds, haze
        and quantisation.

        Examples
        --------
        >>> world = World(seed=0, start="2025-03-01", end="2025-03-10")  # doctest: +SKIP
        >>> world.true_series([1, 2]).shape  # doctest: +SKIP
        (2, 10)
        """
        import xarray as xr

        ids, days = self._ids(parcel_ids), self._window(start, end)
        table = np.stack([self.land.ndvi(d.timetuple().tm_yday)[ids] for d in days], axis=1)
        return xr.DataArray(
            table.astype(np.float64),
            dims=("parcel_id", "time"),
            coords={"parcel_id": ids, "time": np.array(days, "datetime64[ns]")},
            name="NDVI",
        )

    def true_phenology(
        self,
        parcel_ids: Any = None,
        start: Any = None,
        end: Any = None,
        threshold: float = 0.5,
        min_amplitude: float = 0.1,
        peak_level: float = 0.8,
    ) -> pd.DataFrame:
        """Return each parcel's true season from its noise-free daily curve.

        Columns ``crop``, ``sos_time``, ``pos_time``, ``eos_time`` (Timestamps, NaT
        where the rise or fall is below ``min_amplitude``; ``pos_time`` needs both, and
        is the midpoint of the ``peak_level`` crossings), ``pos_value`` (the maximum),
        ``left_min``, ``right_min``, ``amplitude``, ``season_length`` (days); indexed by
        parcel_id.
        Definitions as :func:`xarray_terrascope.analysis.phenology.phenology`, on the
        window ``start``..``end`` (the world's by default).

        Examples
        --------
        >>> seasons = World(seed=0).true_phenology([1, 2, 3])  # doctest: +SKIP
        >>> seasons[["crop", "sos_time", "eos_time"]]  # doctest: +SKIP
        """
        import pandas as pd

        series = self.true_series(parcel_ids, start, end)
        origin = pd.Timestamp(series.time.values[0])
        rows = []
        for values in series.values:
            s = _season(values, threshold, min_amplitude, peak_level)
            row: dict[str, Any] = {
                k: s[k] for k in ("pos_value", "left_min", "right_min", "amplitude")
            }
            for key in ("sos", "pos", "eos"):
                day = s[key]
                row[f"{key}_time"] = pd.NaT if np.isnan(day) else origin + pd.Timedelta(days=day)
            row["season_length"] = s["eos"] - s["sos"]
            rows.append(row)
        frame = pd.DataFrame(rows, index=pd.Index(series.parcel_id.values, name="parcel_id"))
        frame.insert(0, "crop", self._crop_names(frame.index.values))
        return frame

    def _crop_names(self, ids: np.ndarray) -> np.ndarray:
        return np.array(list(_phenology.CROPS), object)[self.land.code[ids] - _phenology.FIRST_CROP]

    def true_events(
        self, parcel_ids: Any = None, start: Any = None, end: Any = None
    ) -> pd.DataFrame:
        """Return the sharp drops of the parcels' curves within the window: one row per
        event, columns ``parcel_id``, ``crop``, ``kind`` (``"mowing"`` for a grassland
        cut, ``"harvest"`` for the harvest or, for potato, the haulm killing) and
        ``time`` (the Timestamp of the drop).

        Examples
        --------
        >>> cuts = World(seed=0).true_events()  # doctest: +SKIP
        >>> cuts[cuts.kind == "mowing"].groupby("parcel_id").size()  # doctest: +SKIP
        """
        import pandas as pd

        ids, days = self._ids(parcel_ids), self._window(start, end)
        first, last = pd.Timestamp(days[0]), pd.Timestamp(days[-1]) + pd.Timedelta(days=1)
        crops = self._crop_names(ids)
        params = self.land.params
        rows = []
        for year in range(days[0].year, days[-1].year + 1):
            new_year = pd.Timestamp(year, 1, 1)
            for pid, crop in zip(ids, crops, strict=True):
                if crop == "grassland":
                    drops = [("mowing", c) for c in params["cuts"][pid] if c < 367]
                else:
                    drops = [("harvest", _phenology.HARVEST_DAY[crop] + params["shift"][pid])]
                for kind, doy in drops:
                    when = new_year + pd.Timedelta(days=float(doy) - 1.0)
                    if first <= when < last:
                        rows.append((int(pid), crop, kind, when))
        return pd.DataFrame(rows, columns=["parcel_id", "crop", "kind", "time"])
