"""The demo's figures, read back from the matplotlib objects (not pixels): the per-crop
curves' legend (parcel counts) and interquartile bands, the monthly panels' titles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection
from matplotlib.dates import date2num

from xarray_terrascope.cli.demo import composites_figure, curves_figure

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

CROPS = {"grassland": 4, "maize": 6, "potato": 3}
DATES = pd.date_range("2025-05-01", periods=5, freq="10D")


@pytest.fixture
def parcel_data():
    rng = np.random.default_rng(1)
    crops = [crop for crop, n in CROPS.items() for _ in range(n)]
    parcels = pd.DataFrame({"crop": crops})
    means = pd.DataFrame(rng.uniform(0.2, 0.9, (len(crops), len(DATES))), columns=DATES)
    means.iloc[1, 2] = np.nan  # a parcel not counted on one date
    curves = pd.DataFrame({c: means[parcels["crop"].to_numpy() == c].mean(axis=0) for c in CROPS})
    return curves, means, parcels


def test_per_crop_curves_name_their_parcel_counts_and_show_the_interquartile_band(
    parcel_data,
):
    curves, means, parcels = parcel_data
    fig = curves_figure(curves, means, parcels, "2025-05-01", "2025-06-10")
    try:
        (ax,) = fig.axes
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts[:3] == ["grassland (4 parcels)", "maize (6 parcels)", "potato (3 parcels)"]
        assert "25-75 %" in texts[3] and "parcels" in texts[3]
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(CROPS)
        crops = parcels["crop"].to_numpy()
        for band, crop in zip(bands, CROPS, strict=True):
            values = means[crops == crop].to_numpy()
            vertices = band.get_paths()[0].vertices
            for j, day in enumerate(DATES):
                at = vertices[np.isclose(vertices[:, 0], date2num(day)), 1]
                expected = np.nanpercentile(values[:, j], [25, 75])
                np.testing.assert_allclose([at.min(), at.max()], expected, rtol=1e-9)
    finally:
        plt.close(fig)


def test_monthly_panels_say_what_they_show_in_words_and_call_the_median_a_median():
    months = pd.to_datetime(["2025-05-01", "2025-06-01"])
    x = 600_000 + 10.0 * np.arange(4)
    y = 5_680_000 - 10.0 * np.arange(3)
    counts = np.array([[[1, 2, 3, 4]] * 3, [[2, 3, 3, 5]] * 3])  # medians 2.5 and 3
    composite = xr.Dataset(
        {
            "NDVI": (("time", "y", "x"), np.full((2, 3, 4), 0.5, "float32")),
            "valid_count": (("time", "y", "x"), counts),
        },
        coords={"time": months, "y": y, "x": x},
    )
    parcels = gpd.GeoSeries([shapely.box(600_005, 5_679_985, 600_025, 5_679_995)], crs=32631)
    fig = composites_figure(composite, gpd.GeoDataFrame(geometry=parcels))
    try:
        title = fig._suptitle.get_text()
        assert "(" not in title and "composite" not in title and "'" not in title.split(":")[0]
        assert "highest" in title and "month" in title
        titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
        medians = [np.median(counts[0]), np.median(counts[1])]
        assert titles == [
            f"May 2025\nmedian {medians[0]:g} clear scenes per pixel",
            f"June 2025\nmedian {medians[1]:g} clear scenes per pixel",
        ]
        assert medians[0] == 2.5  # not rounded to a whole number of scenes
    finally:
        plt.close(fig)
