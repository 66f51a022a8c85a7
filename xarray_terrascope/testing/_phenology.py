"""Seasonal NDVI curves of the sandbox's land cover: crops, grassland, woods, roads, towns.

Every curve is a function of the whole day of year (1..366) and of a few parameters
drawn per parcel (timing shifts, peak and soil levels), evaluated for all parcels of
the world at once. The shapes follow what Sentinel-2 shows over Flemish and Dutch
farmland:

==============  ===========================================================================
crop            cycle
==============  ===========================================================================
winter wheat    green in winter (sown the autumn before), greens up in March, peak in May,
                ripens late June, harvested late July, stubble, emerges again in November
maize           bare soil until late May, steep rise in June, peak in August, senescence
                in September, harvested in early October
sugar beet      bare until May, closed canopy from July until harvest in October/November
potato          bare until May, peak in late June, haulm killing in early August
grassland       green all year, three or four mowing cuts (drop and regrowth over ~2 weeks)
==============  ===========================================================================

Land cover that is not a parcel: ``road`` (asphalt, low and stable), ``built-up``
(low, slightly greener in summer), ``woods`` (deciduous), ``water`` (lakes and ponds,
as the Kempen's many sand-extraction lakes: negative all year).
"""

from __future__ import annotations

import numpy as np

__all__ = ["COVER", "CROPS", "FIRST_CROP", "HARVEST_DAY", "WATER", "draw_params", "ndvi_table"]

#: Crop types of the parcels, with their share of the farmland.
CROPS: dict[str, float] = {
    "winter wheat": 0.20,
    "maize": 0.25,
    "sugar beet": 0.10,
    "potato": 0.10,
    "grassland": 0.35,
}
#: Land cover classes by code: 0-2 are not parcels, 3-7 are the crops in ``CROPS`` order,
#: 8 is water (not a parcel either).
COVER: tuple[str, ...] = ("road", "built-up", "woods", *CROPS, "water")
ROAD, BUILT_UP, WOODS = 0, 1, 2
#: Code of the first crop; the crops are ``FIRST_CROP .. FIRST_CROP + len(CROPS) - 1``.
FIRST_CROP = 3
#: Code of water (after the crops, so that the crops' codes stay 3..7).
WATER = FIRST_CROP + len(CROPS)
_FIRST_CROP = FIRST_CROP
#: Day of year (before the parcel's ``shift``) of the sharp drop that ends each arable
#: crop: the harvest (wheat, maize, sugar beet) or the haulm killing (potato). The
#: grassland's cuts are per parcel (``params["cuts"]``).
HARVEST_DAY: dict[str, float] = {
    "winter wheat": 208.0,
    "maize": 278.0,
    "sugar beet": 296.0,
    "potato": 214.0,
}
_N_CUTS = 4


def _rise(t: np.ndarray, t0: float, k: float | np.ndarray) -> np.ndarray:
    """Logistic step from 0 to 1 around day ``t0`` with time constant ``k`` days."""
    return 1.0 / (1.0 + np.exp(-(t - t0) / k))


def draw_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Draw the per-unit curve parameters for ``n`` land units (float64 arrays).

    ``shift`` moves every date of a unit's calendar (days), ``peak`` and ``soil`` are
    its NDVI levels, ``level`` a unit-specific offset for non-crop covers, ``cuts`` the
    grassland mowing days (``(n, 4)``; a cut at day 400 never happens).
    """
    first = rng.uniform(128.0, 148.0, n)
    gaps = rng.uniform(34.0, 48.0, (n, _N_CUTS - 1))
    cuts = np.column_stack([first, first[:, None] + np.cumsum(gaps, axis=1)])
    cuts[rng.random(n) < 0.4, -1] = 400.0  # three cuts only on 40% of the meadows
    return {
        "shift": rng.normal(0.0, 6.0, n).clip(-14.0, 14.0),
        "peak": rng.uniform(0.78, 0.86, n),
        "soil": rng.uniform(0.12, 0.20, n),
        "level": rng.uniform(-0.03, 0.03, n),
        "cuts": cuts,
    }


def _crop_curves(doy: float, code: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    t = doy - p["shift"]
    peak, soil = p["peak"], p["soil"]
    out = np.empty(code.shape, np.float64)
    # winter wheat
    sel = code == _FIRST_CROP
    if sel.any():
        ts, pk, so = t[sel], peak[sel], soil[sel]
        winter = 0.36 + 0.5 * (so - 0.16)
        v = winter + (pk - winter) * _rise(ts, 88.0, 9.0)
        v = v - (v - 0.32) * _rise(ts, 180.0, 6.0)  # ripening
        cut = _rise(ts, HARVEST_DAY["winter wheat"], 1.5)  # harvest
        v = v * (1.0 - cut) + (so + 0.03) * cut
        v = v + (winter - so - 0.03) * _rise(ts, 318.0, 12.0) * cut  # next crop emerges
        out[sel] = v
    # maize
    sel = code == _FIRST_CROP + 1
    if sel.any():
        ts, pk, so = t[sel], peak[sel] + 0.02, soil[sel]
        v = so + (pk - so) * _rise(ts, 178.0, 7.0)
        v = v - (v - 0.34) * _rise(ts, 252.0, 8.0)
        cut = _rise(ts, HARVEST_DAY["maize"], 1.5)
        out[sel] = v * (1.0 - cut) + so * cut
    # sugar beet
    sel = code == _FIRST_CROP + 2
    if sel.any():
        ts, pk, so = t[sel], peak[sel], soil[sel]
        v = so + (pk - so) * _rise(ts, 165.0, 8.0)
        v = v - 0.08 * _rise(ts, 250.0, 10.0)
        cut = _rise(ts, HARVEST_DAY["sugar beet"], 2.0)
        out[sel] = v * (1.0 - cut) + so * cut
    # potato
    sel = code == _FIRST_CROP + 3
    if sel.any():
        ts, pk, so = t[sel], peak[sel], soil[sel]
        v = so + (pk - so) * _rise(ts, 158.0, 5.0)
        kill = _rise(ts, HARVEST_DAY["potato"], 2.5)  # haulm killing
        out[sel] = v * (1.0 - kill) + (so + 0.04) * kill
    # grassland
    sel = code == _FIRST_CROP + 4
    if sel.any():
        ts, pk = t[sel], peak[sel] + 0.02
        v = 0.64 + (pk - 0.64) * np.exp(-np.square((ts - 125.0) / 70.0))
        for k in range(_N_CUTS):
            since = doy - p["cuts"][sel, k]
            drop = _rise(since, 0.0, 0.6) * np.exp(-np.clip(since, 0.0, None) / 11.0)
            v = v - (v - 0.42) * drop
        out[sel] = v
    return out


def ndvi_table(doy: float, code: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Return the float32 cloud-free NDVI of every land unit on day of year ``doy``.

    Parameters
    ----------
    doy : float
        Day of year (1..366).
    code : numpy.ndarray
        Land cover code of each unit (index into :data:`COVER`).
    params : dict
        Per-unit parameters from :func:`draw_params`.
    """
    doy = float(doy)
    out = np.empty(code.shape, np.float64)
    level = params["level"]
    out[code == ROAD] = 0.09 + level[code == ROAD] * 0.3
    sel = code == BUILT_UP
    out[sel] = 0.19 + level[sel] + 0.05 * np.exp(-np.square((doy - 190.0) / 60.0))
    sel = code == WOODS
    t = doy - params["shift"][sel]
    leaves = _rise(t, 118.0, 7.0) * (1.0 - _rise(t, 300.0, 9.0))
    out[sel] = 0.50 + level[sel] + 0.36 * leaves
    sel = code == WATER
    out[sel] = -0.35 + level[sel]
    crops = (code >= _FIRST_CROP) & (code < WATER)
    if crops.any():
        sub = {k: v[crops] for k, v in params.items()}
        out[crops] = _crop_curves(doy, code[crops], sub)
    return out.astype(np.float32)
