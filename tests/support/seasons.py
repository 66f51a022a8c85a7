"""Parcel series as the sandbox's files show them, made from the world's rasters.

Independent of the package: the world gives each date's NDVI file values at the
parcels' pixels (clouds and shadows 255, hazy cloud edges, 8-bit quantisation); the
mean of a parcel's clear pixels is taken with ``numpy.bincount`` over the world's own
parcel labels.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

NDVI = "terrascope-s2-ndvi-v2"


def observed_parcel_means(
    world, tile: str = "31UGS", n_parcels: int | None = None, seed: int = 0, clouds: bool = True
) -> xr.Dataset:
    """The ``(parcel_id, time)`` mean NDVI and valid fraction of parcels lying wholly in
    ``tile`` (all, or a random ``n_parcels`` of them), one date per acquisition of the
    world (its window): the files' values at the parcels' pixels (``world.dn``; for all
    parcels, the whole file ``world.render``, which ``clouds=False`` renders clear)."""
    items = [i for i in world.item_ids(NDVI) if world.item(i)["tile"] == tile]
    info = world._get(items[0])
    zone, r0, c0 = world._zone(info.tile)
    window = zone.labels[r0 : r0 + info.tile.height, c0 : c0 + info.tile.width]
    n = world.land.n_parcels
    inside = np.bincount(window.ravel(), minlength=n + 1)[: n + 1]
    everywhere = np.bincount(zone.labels.ravel(), minlength=n + 1)[: n + 1]
    ids = np.flatnonzero((inside > 0) & (inside == everywhere))
    ids = ids[(ids >= 1) & (ids <= n)]
    if n_parcels is not None:
        ids = np.sort(np.random.default_rng(seed).choice(ids, n_parcels, replace=False))
    rows, cols = np.nonzero(np.isin(window, ids))
    labels = window[rows, cols]
    if not clouds and n_parcels is not None:
        raise ValueError("clouds=False renders whole files: pass n_parcels=None")
    means, fractions, times = [], [], []
    whole = n_parcels is None
    if whole:
        rows, cols = np.indices(window.shape).reshape(2, -1)
        labels = window.ravel()
    for item in items:
        dn = world.render(item, clouds=clouds).ravel() if whole else world.dn(item, rows, cols)
        ok = dn != 255
        total = np.bincount(labels[ok], weights=0.004 * dn[ok] - 0.08, minlength=n + 1)
        count = np.bincount(labels[ok], minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(count[ids] > 0, total[ids] / count[ids], np.nan))
        fractions.append(count[ids] / inside[ids])
        times.append(np.datetime64(world.item(item)["datetime_obj"].replace(tzinfo=None), "ns"))
    coords = {"parcel_id": ids, "time": np.array(times)}
    return xr.Dataset(
        {
            "mean": (("parcel_id", "time"), np.array(means).T),
            "valid_fraction": (("parcel_id", "time"), np.array(fractions).T),
        },
        coords=coords,
    )


def within_days(found, truth, days: float = 5.0) -> np.ndarray:
    """Per parcel: both dates exist and differ by at most ``days`` (numpy datetime64)."""
    found = np.asarray(found, "datetime64[ns]")
    truth = np.asarray(truth, "datetime64[ns]")
    ok = ~np.isnat(found) & ~np.isnat(truth)
    gap = np.abs(
        (found - truth) / np.timedelta64(1, "D"), where=ok, out=np.full(found.shape, np.inf)
    )
    return ok & (gap <= days)


def match_events(found, truth, days: float = 7.0) -> tuple[int, int, int]:
    """Greedy one-to-one matching of event dates per parcel within ``days``.

    ``found`` and ``truth`` are ``{parcel_id: sorted datetime64 array}``. Returns
    ``(matched, n_found, n_true)``: recall is matched / n_true, precision matched / n_found.
    """
    matched = n_found = n_true = 0
    for pid in set(found) | set(truth):
        f = list(np.asarray(found.get(pid, []), "datetime64[ns]"))
        t = list(np.asarray(truth.get(pid, []), "datetime64[ns]"))
        n_found, n_true = n_found + len(f), n_true + len(t)
        pairs = sorted(
            (abs((a - b) / np.timedelta64(1, "D")), i, j)
            for i, a in enumerate(f)
            for j, b in enumerate(t)
        )
        used_f, used_t = set(), set()
        for gap, i, j in pairs:
            if gap <= days and i not in used_f and j not in used_t:
                used_f.add(i)
                used_t.add(j)
                matched += 1
    return matched, n_found, n_true
