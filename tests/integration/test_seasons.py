"""From the sandbox to seasons: open_dataset + zonal_stats, then phenology and events,
checked against the world's truth (its noise-free curves and mowing dates)."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("whittaker_eilers")
gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

from ..support.seasons import match_events, within_days  # noqa: E402

#: A field of 31UGS alone (31UFS ends near lon 6.00, 32ULB starts near 6.05).
FIELD = (6.005, 51.215, 6.045, 51.285)
#: Four months (49 dates): the spring crops' start, wheat's and potato's end, the cuts.
SEASON = {"start": "2025-05-01", "end": "2025-08-31"}
NDVI_SMOOTHING = {"lmbda": 30.0, "expectile": 0.8}


def _refuse(dsk, keys, **kwargs):
    raise AssertionError("computed while building the graph")


@pytest.mark.timeout(900)  # the sandbox renders every date's file on first read
def test_parcels_to_phenology_and_mowing(logged_in):
    world = logged_in.world
    parcels = world.parcels()
    parcels = parcels[parcels.within(shapely.box(*FIELD).buffer(-0.002))].set_index("parcel_id")
    assert len(parcels) > 40
    ds = xr.open_dataset(list(FIELD), engine="terrascope", chunks={}, **SEASON)
    zs = ds.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"])
    with dask.config.set(scheduler=_refuse):
        seasons = zs.terrascope.phenology(**NDVI_SMOOTHING)
        drops = zs.terrascope.events(0.1, **NDVI_SMOOTHING)
    seasons, drops = seasons.compute(), drops.compute()
    assert seasons.sos_time.dims == ("geometry",)
    ids = zs.parcel_id.values
    truth = world.true_phenology(ids, **SEASON)
    arable = (truth.crop != "grassland").values
    for key in ("sos_time", "pos_time", "eos_time"):  # pos: TIMESAT's middle of season
        observed = arable & truth[key].notna().values
        assert observed.sum() > 10, (key, observed.sum())
        share = within_days(seasons[key].values, truth[key].values)[observed].mean()
        assert share >= 0.9, (key, share)
    grass = ~arable
    assert grass.sum() > 5
    times = drops.event_time.values
    got = {int(p): t[~np.isnat(t)] for p, t, g in zip(ids, times, grass, strict=True) if g}
    cuts = world.true_events(ids, **SEASON)
    cuts = cuts[cuts.kind == "mowing"]
    want = {int(p): g.time.values for p, g in cuts.groupby("parcel_id")}
    matched, n_found, n_true = match_events(got, want, days=7.0)
    assert matched / n_true >= 0.8 and matched / n_found >= 0.8, (matched, n_found, n_true)
    # the table a user writes to GeoParquet, as the guide joins it: one row per parcel,
    # by its id (the table's own index is the position along geometry), datetimes kept
    by_id = seasons.swap_dims(geometry="parcel_id").drop_vars(["geometry", "spatial_ref"])
    frame = by_id.to_dataframe()
    joined = parcels.join(frame)
    assert len(frame) == len(ids) and str(joined.sos_time.dtype).startswith("datetime64")
    expected = seasons.sos_time.to_series().set_axis(ids)
    pd.testing.assert_series_equal(
        joined.sos_time, expected.reindex(parcels.index), check_names=False
    )
    assert joined.sos_time.notna().sum() == seasons.sos_time.notnull().sum() > 10
    by_id = drops.swap_dims(geometry="parcel_id").drop_vars(["geometry", "spatial_ref"])
    mowing = by_id.to_dataframe().dropna()
    assert mowing.index.names == ["parcel_id", "event"]
    with_events = {int(p) for p, t in zip(ids, times, strict=True) if (~np.isnat(t)).any()}
    assert {int(p) for p in mowing.index.get_level_values("parcel_id")} == with_events
    assert len(mowing) == int((~np.isnat(times)).sum())
