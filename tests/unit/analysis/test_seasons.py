"""Smoothing, phenology and events against the sandbox world's truth.

The series are the world's files at the parcels' pixels (clouds and shadows masked,
hazy cloud edges kept, 8-bit NDVI), averaged per parcel by ``tests.support.seasons``;
the truth is the world's noise-free curve, its phenology derived by the world itself
(``World.true_phenology``) and its mowing and harvest dates (``World.true_events``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("whittaker_eilers")

import xarray_terrascope  # noqa: F401  (the accessor)
from xarray_terrascope.analysis.events import events
from xarray_terrascope.analysis.phenology import phenology
from xarray_terrascope.analysis.smooth import smooth
from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.testing import World

from ...support.seasons import match_events, observed_parcel_means, within_days

#: The settings the guide recommends for NDVI (upper envelope against haze).
NDVI_SMOOTHING = {"lmbda": 30.0, "expectile": 0.8}


@pytest.fixture(scope="module")
def season():
    world = World(seed=0, start="2025-02-01", end="2025-11-30")
    obs = observed_parcel_means(world, "31UGS", n_parcels=400, seed=1)
    return world, obs


def test_smoothed_series_follow_the_noise_free_curve(season):
    world, obs = season
    truth = world.true_series(obs.parcel_id.values)
    daily = smooth(obs["mean"], freq="1D", **NDVI_SMOOTHING)
    assert daily.dims == ("parcel_id", "time")
    error = (daily - truth.sel(time=daily.time)).values
    assert np.isfinite(error).mean() > 0.95
    rmse = float(np.sqrt(np.nanmean(error**2)))
    assert rmse < 0.03, rmse
    # symmetric least squares on the input dates: worse (haze only lowers NDVI), still close
    plain = smooth(obs["mean"], lmbda=100.0)
    days = obs.time.values.astype("datetime64[D]").astype("datetime64[ns]")
    gaps = obs["mean"].isnull().values
    error = plain.values - truth.sel(time=days).values
    assert gaps.mean() > 0.1  # the gaps being filled are many
    assert float(np.sqrt(np.nanmean(error**2))) < 0.045
    assert float(np.sqrt(np.nanmean(error[gaps] ** 2))) < 0.06


def test_phenology_dates_within_five_days_of_the_truth(season):
    world, obs = season
    found = phenology(obs["mean"], **NDVI_SMOOTHING)
    truth = world.true_phenology(obs.parcel_id.values)
    assert found.sos_time.dtype == np.dtype("datetime64[ns]")
    arable = (truth.crop != "grassland").values
    # the peak date is TIMESAT's middle of season (midpoint of the 80 % crossings),
    # well determined even where the curve's top is a plateau weeks long
    for key in ("sos_time", "pos_time", "eos_time"):
        observed = arable & truth[key].notna().values
        assert observed.sum() > 200
        share = within_days(found[key].values, truth[key].values)[observed].mean()
        assert share >= 0.9, (key, share)
    # the peak's value (the maximum); its date on the true curve's top: within 0.03 of it
    assert (np.abs(found.pos_value.values - truth.pos_value.values)[arable] < 0.05).mean() >= 0.9
    curve = world.true_series(obs.parcel_id.values)
    dated = arable & ~np.isnat(found.pos_time.values)
    day = found.pos_time.values[dated].astype("datetime64[D]").astype("datetime64[ns]")
    at_peak = curve.values[dated][np.arange(day.size), np.searchsorted(curve.time.values, day)]
    assert ((truth.pos_value.values[dated] - at_peak) < 0.03).mean() >= 0.9
    frame = found.to_dataframe()
    assert len(frame) == obs.sizes["parcel_id"]
    assert pd.api.types.is_datetime64_any_dtype(frame["sos_time"])


def test_peak_date_is_the_middle_of_season_on_a_plateau():
    """A piecewise-linear curve (exact under linear interpolation between days) with a
    flat top and a small bump near its end: the peak date is the midpoint of the 80 %
    crossings, not the day of the maximum; hand arithmetic, no world needed."""
    days = np.arange(151.0)
    # 0.2 until day 10, +0.02/day to 0.8 at day 40, flat to 90, a bump to 0.81 at 95,
    # 0.8 at 100, -0.02/day to 0.2 at 130
    top = np.interp(
        days, [0, 10, 40, 90, 95, 100, 130, 150], [0.2, 0.2, 0.8, 0.8, 0.81, 0.8, 0.2, 0.2]
    )
    # starts on the top: no left flank, so no start and no peak date
    late = np.interp(days, [0, 20, 50, 150], [0.8, 0.81, 0.2, 0.2])
    times = pd.date_range("2025-03-01", periods=days.size, freq="D")
    series = xr.DataArray(np.stack([top, late]), dims=("p", "time"), coords={"time": times})
    found = phenology(series, 0.5, smoothed=True)
    # levels: 0.2 + 0.5 * 0.61 = 0.505 and 0.2 + 0.8 * 0.61 = 0.688 on both flanks
    # crossings: up 0.505 at 10 + 15.25, 0.688 at 10 + 24.4; down 0.688 at 100 + 5.6,
    # 0.505 at 100 + 14.75; middle of season (34.4 + 105.6) / 2 = 70 (maximum: day 95)
    expected = {"sos_time": 25.25, "pos_time": 70.0, "eos_time": 114.75}
    for key, day in expected.items():
        got = (found[key].values[0] - times[0].to_datetime64()) / np.timedelta64(1, "s")
        assert abs(got / 86400 - day) < 1e-3, (key, got / 86400)
    np.testing.assert_allclose(found.pos_value.values, [0.81, 0.81])
    np.testing.assert_allclose(found.greenup_rate.values[0], 0.02, rtol=1e-9)
    np.testing.assert_allclose(found.senescence_rate.values[0], 0.02, rtol=1e-9)
    assert np.isnat(found.pos_time.values[1]) and np.isnat(found.sos_time.values[1])
    assert not np.isnat(found.eos_time.values[1]) and np.isnan(found.greenup_rate.values[1])
    # the world's truth, on the same curves
    from xarray_terrascope.testing._seasons import _season

    truth = _season(top, 0.5, 0.1)
    np.testing.assert_allclose([truth["sos"], truth["pos"], truth["eos"]], [25.25, 70, 114.75])
    assert np.isnan(_season(late, 0.5, 0.1)["pos"])


def test_mowing_events_found(season):
    world, obs = season
    found = events(obs["mean"], min_drop=0.1, **NDVI_SMOOTHING)
    truth = world.true_events(obs.parcel_id.values)
    crops = world.true_phenology(obs.parcel_id.values).crop
    grass = crops.index[crops == "grassland"]
    assert len(grass) > 50
    times = found.event_time.sel(parcel_id=grass).values
    got = {int(p): np.sort(t[~np.isnat(t)]) for p, t in zip(grass, times, strict=True)}
    cuts = truth[truth.kind == "mowing"]
    want = {int(p): np.sort(g.time.values) for p, g in cuts.groupby("parcel_id")}
    matched, n_found, n_true = match_events(got, want, days=7.0)
    assert n_true > 100
    assert matched / n_true >= 0.85, (matched, n_true)
    assert matched / n_found >= 0.85, (matched, n_found)
    sizes = found.event_size.sel(parcel_id=grass).values
    assert np.nanmin(sizes) >= 0.1
    tidy = found.to_dataframe().dropna()
    assert set(tidy.columns) == {"event_time", "event_size"}


def test_dask_input_stays_lazy_and_equals_numpy(season, raise_if_dask_computes):
    _world, obs = season
    series = obs["mean"].isel(parcel_id=slice(0, 60))
    lazy_series = series.chunk({"parcel_id": 20, "time": 40})
    with raise_if_dask_computes():
        daily = smooth(lazy_series, freq="5D", **NDVI_SMOOTHING)
        seasons = phenology(lazy_series, **NDVI_SMOOTHING)
        drops = events(lazy_series, **NDVI_SMOOTHING)
        resampled = lazy_series.terrascope.smooth(lmbda=100.0, method="savgol", freq="5D")
    assert daily.chunks is not None and daily.chunks[0] == (20, 20, 20)
    xr.testing.assert_allclose(daily.compute(), smooth(series, freq="5D", **NDVI_SMOOTHING))
    xr.testing.assert_identical(seasons.compute(), phenology(series, **NDVI_SMOOTHING))
    xr.testing.assert_identical(drops.compute(), events(series, **NDVI_SMOOTHING))
    xr.testing.assert_allclose(resampled.compute(), smooth(series, method="savgol", freq="5D"))


def test_pixel_cube_keeps_its_dims_and_chunks(season, raise_if_dask_computes):
    """A (time, y, x) cube: each pixel smoothed as the same series alone."""
    _world, obs = season
    values = obs["mean"].isel(parcel_id=slice(0, 12)).values.T.reshape(-1, 3, 4)
    cube = xr.DataArray(values, dims=("time", "y", "x"), coords={"time": obs.time.values})
    lazy = cube.chunk({"time": 30, "y": 1, "x": 4})
    with raise_if_dask_computes():
        out = lazy.terrascope.smooth(lmbda=100.0)
        seasons = lazy.terrascope.phenology(lmbda=100.0)
    assert out.dims == ("time", "y", "x") and seasons.sos_time.dims == ("y", "x")
    alone = smooth(obs["mean"].isel(parcel_id=5), lmbda=100.0)
    np.testing.assert_allclose(out.compute().values[:, 1, 1], alone.values)


def test_all_nan_parcels_give_nan_not_a_crash(season):
    _world, obs = season
    series = obs["mean"].isel(parcel_id=slice(0, 5)).copy()
    series[1] = np.nan
    series[3, 2:] = np.nan  # 2 dates only: too few for a second-order smoother
    out = smooth(series, lmbda=50.0, freq="1D")
    assert np.isnan(out[1]).all() and np.isnan(out[3]).all() and np.isfinite(out[0]).any()
    seasons = phenology(series, lmbda=50.0)
    assert np.isnat(seasons.sos_time.values[[1, 3]]).all()
    assert not np.isnat(seasons.pos_time.values[0])
    drops = events(series, lmbda=50.0)
    assert np.isnat(drops.event_time.values[1]).all()


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda s: smooth(s.isel(time=0)), ["'time' dimension"]),
        (lambda s: smooth(s.isel(time=slice(0, 3))), ["at least 4 dates"]),
        (lambda s: smooth(s, lmbda=0), ["lmbda must be positive"]),
        (lambda s: smooth(s, lmbda=-5.0), ["lmbda must be positive"]),
        (lambda s: smooth(s, lmbda="big"), ["lmbda"]),
        (lambda s: smooth(s, freq="5 parsecs"), ["freq", "'5D'"]),
        (lambda s: smooth(s, method="loess"), ["method"]),
        (lambda s: smooth(s, expectile=1.5), ["expectile"]),
        (lambda s: smooth(s, weights=np.ones(3)), ["weights"]),
        (lambda s: smooth(s.isel(time=[0, 1, 1, 2, 3])), ["distinct", "sortby"]),
        (lambda s: smooth(s, method="savgol", window=4), ["window"]),
        (lambda s: phenology(s, threshold=1.2), ["threshold"]),
        (lambda s: phenology(s, peak_level=1.0), ["peak_level"]),
        (lambda s: phenology(s, threshold=0.5, peak_level=0.4), ["peak_level", "threshold"]),
        (lambda s: events(s, min_drop=0), ["min_drop"]),
        (lambda s: events(s, window=0), ["window"]),
        (lambda s: phenology(s, freq="5D"), ["freq", "smoothed=True"]),
        (lambda s: events(s, freq="5D"), ["freq", "smoothed=True"]),
        (lambda s: phenology(s, lmbdaa=30), ["lmbdaa", "lmbda"]),
        (lambda s: s.isel(time=0).terrascope.phenology(), ["'time' dimension"]),
        # a curve given as smoothed is checked as the series smooth() would be
        (
            lambda s: phenology(
                smooth(s, freq="1D", lmbda=30).sortby("time", False), smoothed=True
            ),
            ["increasing", "sortby"],
        ),
        (
            lambda s: events(smooth(s, freq="1D", lmbda=30).sortby("time", False), smoothed=True),
            ["increasing", "sortby"],
        ),
        (lambda s: smooth(s.isel(time=slice(0, 5)), method="savgol", freq="5D"), ["window (7"]),
        (lambda s: smooth(s, method="savgol", window=2001), ["window (2001", "shorter"]),
        (lambda s: s.sortby("time", False).terrascope.composite(), ["increasing", "sortby"]),
        (lambda s: s.isel(time=slice(0, 0)).terrascope.composite(), ["at least one date"]),
    ],
)
def test_bad_input_is_a_typed_error_naming_the_argument(season, call, words):
    series = season[1]["mean"].isel(parcel_id=slice(0, 3))
    with pytest.raises(InvalidArgumentError) as caught:
        call(series)
    for word in words:
        assert word in str(caught.value)


def test_phenology_refuses_more_than_a_year():
    times = pd.date_range("2024-01-01", "2025-12-31", freq="5D")
    series = xr.DataArray(np.ones((2, times.size)), dims=("p", "time"), coords={"time": times})
    with pytest.raises(InvalidArgumentError, match="one season per series"):
        phenology(series, lmbda=10.0)


def test_truth_drops_and_crossings_are_in_the_noise_free_curve(season):
    """The world's truth agrees with plain arithmetic on its own daily curve."""
    world, obs = season
    ids = obs.parcel_id.values[:80]
    curve = world.true_series(ids)
    fall = -np.diff(curve.values, axis=1)
    truth = world.true_events(ids)
    harvest = truth[truth.kind == "harvest"]
    assert len(harvest) > 10
    for pid, when in zip(harvest.parcel_id, harvest.time, strict=True):
        row = int(np.flatnonzero(ids == pid)[0])
        near = np.abs((curve.time.values[1:] - np.datetime64(when, "ns")) / np.timedelta64(1, "D"))
        steepest = curve.time.values[1:][int(np.argmax(np.where(near <= 10, fall[row], -1)))]
        assert fall[row][near <= 3].sum() > 0.06  # a real drop (wheat: 0.32 -> 0.2)
        assert abs((steepest - np.datetime64(when, "ns")) / np.timedelta64(1, "D")) <= 2
    seasons = world.true_phenology(ids)
    # the true peak date lies on the curve's top: above 80 % of the rise and of the fall
    dated = seasons[(seasons.crop != "grassland") & seasons.pos_time.notna()]
    assert len(dated) > 40
    for pid, row in dated.iterrows():
        value = float(curve.sel(parcel_id=pid).interp(time=row.pos_time))
        base = max(row.left_min, row.right_min)
        assert value >= base + 0.8 * (row.pos_value - base), (pid, value)
    for pid, row in seasons.dropna(subset=["sos_time"]).iterrows():
        values = curve.sel(parcel_id=pid)
        level = row.left_min + 0.5 * (row.pos_value - row.left_min)
        day = np.datetime64(row.sos_time.floor("D"), "ns")
        assert (
            float(values.sel(time=day))
            <= level
            <= float(values.sel(time=day + np.timedelta64(1, "D")))
        )


def test_dataset_smooth_decodes_and_keeps_straight_lines():
    """Second-order Whittaker leaves a straight line as it is (zero penalty), on the
    irregular dates and in the gaps: independent arithmetic, no world needed."""
    dates = ["2025-05-01", "2025-05-03", "2025-05-06", "2025-05-08", "2025-05-11", "2025-05-13"]
    times = pd.to_datetime([*dates, "2025-05-16"]) + pd.Timedelta("10h36min")
    days = ((times - times[0]) / pd.Timedelta(days=1)).values
    dn = np.round(50 + 4 * days).astype("uint8")[:, None] + np.zeros((1, 2), "uint8")
    dn[2, 0] = 255  # a cloud
    ds = xr.Dataset(
        {
            "NDVI": (
                ("time", "x"),
                dn,
                {"scale_factor": 0.004, "add_offset": -0.08, "_FillValue": 255},
            ),
            "crop": ("x", np.array(["maize", "wheat"])),
        },
        coords={"time": times},
    )
    out = ds.terrascope.smooth(lmbda=1000.0)
    physical = 0.004 * np.round(50 + 4 * days) - 0.08
    np.testing.assert_allclose(out.NDVI.values[:, 1], physical, atol=1e-9)
    np.testing.assert_allclose(out.NDVI.values[2, 0], physical[2], atol=1e-9)  # gap filled
    assert list(out.crop.values) == ["maize", "wheat"]
    daily = ds.terrascope.smooth(lmbda=1000.0, freq="1D")
    x = ((daily.time.values - times[0].to_datetime64()) / np.timedelta64(1, "D")).astype(float)
    inside = (x >= 0) & (x <= days[-1])
    np.testing.assert_allclose(
        daily.NDVI.values[inside, 1], np.interp(x[inside], days, physical), atol=1e-9
    )
    assert np.isnan(daily.NDVI.values[~inside]).all()  # before the first date: no extrapolation


def test_two_cuts_with_a_slow_decline_between_them_share_no_size():
    """A 0.2 cut, a slow 0.02 decline over a month, another 0.2 cut: two events whose
    sizes add up to the whole fall (0.42), each about its own cut, not 0.42 each."""
    days = np.arange(200.0)
    time = pd.Timestamp("2025-04-01") + pd.to_timedelta(days, "D")
    curve = np.interp(days, [0, 59, 62, 90, 93, 199], [0.8, 0.8, 0.6, 0.58, 0.38, 0.38])
    found = events(
        xr.DataArray(curve[None], dims=("parcel", "time"), coords={"time": time}),
        min_drop=0.1,
        smoothed=True,
    )
    sizes = found.event_size.values[0]
    sizes = sizes[~np.isnan(sizes)]
    assert len(sizes) == 2
    assert sizes.sum() <= 0.42 + 1e-9
    assert ((sizes >= 0.2 - 1e-9) & (sizes <= 0.22 + 1e-9)).all(), sizes


def test_season_analyses_take_the_mean_of_zonal_statistics_or_say_it_is_missing(season):
    """Zonal statistics (a ``zonal_statistics`` dimension) give their ``mean`` to the
    season analyses, as a DataArray or inside a Dataset; without a mean, a typed error
    names the statistics held and what to compute."""
    _world, obs = season
    series = obs["mean"].isel(parcel_id=slice(0, 5))
    stats = xr.concat([series, series * 0 + 1], dim="zonal_statistics").assign_coords(
        zonal_statistics=["mean", "count"]
    )
    want = series.terrascope.phenology(**NDVI_SMOOTHING)
    for given in (stats, stats.to_dataset(name="NDVI")):
        got = given.terrascope.phenology(**NDVI_SMOOTHING)
        xr.testing.assert_identical(got[list(want.data_vars)], want)
        with pytest.raises(InvalidArgumentError, match="no 'mean'"):
            given.sel(zonal_statistics=["count"]).terrascope.phenology(**NDVI_SMOOTHING)


def test_smoothing_a_stored_series_smooths_its_physical_values(season):
    """A DataArray of stored numbers (a ``decode=False`` cube: uint8, scale 1/250, offset
    -0.08, no data 255) smooths as the decoded series: its no-data value is no value."""
    series = season[1]["mean"].isel(parcel_id=slice(0, 5))
    stored = np.round((series + 0.08) * 250).fillna(255).astype("uint8")
    stored.attrs = {"scale_factor": 1 / 250, "add_offset": -0.08, "_FillValue": 255}
    decoded = (stored.where(stored != 255) / 250 - 0.08).astype("float32")
    decoded.attrs = {}
    got = stored.terrascope.smooth(lmbda=30, freq="5D")
    want = decoded.terrascope.smooth(lmbda=30, freq="5D")
    np.testing.assert_allclose(got.values, want.values, rtol=1e-6, equal_nan=True)
    assert float(got.max()) < 1.0


def test_weights_lazy_beside_a_loaded_series_and_their_label_left_out(season):
    series = season[1]["mean"].isel(parcel_id=slice(0, 5))
    weights = xr.ones_like(series).expand_dims(zonal_statistics=["valid_fraction"])
    weights = weights.sel(zonal_statistics="valid_fraction").chunk({"time": 8})
    got = series.terrascope.smooth(lmbda=30, weights=weights)
    np.testing.assert_allclose(
        got.values, series.terrascope.smooth(lmbda=30).values, equal_nan=True
    )
    assert "zonal_statistics" not in got.coords


def test_dates_of_one_date_or_in_any_order_are_unique_and_sorted(season):
    series = season[1]["mean"]
    days = series.terrascope.dates()
    assert series.isel(time=3).terrascope.dates() == [days[3]]
    assert series.sortby("time", ascending=False).terrascope.dates() == days == sorted(days)
