"""The demo's parcel curves per crop from three sources, and their error against the
sandbox world's ground truth (:mod:`xarray_terrascope.cli.demo`).

The sources: the NDVI product (scenes filtered by ``eo:cloud_cover``, clouds and shadows
already no data), and NDVI from top-of-canopy reflectance (``terrascope-s2-toc-v2``,
B04/B08 and the scene classification, a looser scene filter) with clouds masked per
pixel by ``ds.terrascope.mask_clouds()``, and the same unmasked. The error of a source is
measured against the world's noise-free NDVI of each parcel (``World.parcel_ndvi``),
which the package never sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ERROR_HEADER",
    "MIN_PARCELS",
    "MIN_VALID",
    "READ_THREADS",
    "SOURCES",
    "TOC",
    "TOC_ASSETS",
    "crop_curves",
    "parcel_means",
    "plot_sources",
    "print_errors",
    "toc_parcel_stats",
    "toc_stats",
    "truth_curves",
    "truth_errors",
]

#: A parcel's value on a date counts when at least this share of its pixels is valid.
MIN_VALID = 0.8
#: A crop's curve has a point on a date when this share of its parcels counts.
MIN_PARCELS = 0.5
#: Threads for the dask scheduler: reads wait on the network, not on the CPU.
READ_THREADS = 8
TOC = "terrascope-s2-toc-v2"
TOC_ASSETS = ["B04", "B08", "SCL"]
#: The three sources, in the order they are printed and drawn.
SOURCES = ("NDVI product", "TOC masked", "TOC unmasked")
ERROR_HEADER = (
    "error against the world's truth: RMSE of the parcel means (a parcel and date count "
    f"when >= {MIN_VALID:.0%} of its pixels are valid) minus the world's noise-free NDVI "
    "of that parcel on that date (World.parcel_ndvi); n = parcel-dates counted"
)


def parcel_means(stats: Any) -> Any:
    """Mean NDVI per parcel and date (``pandas.DataFrame``, parcels x dates), NaN where
    the parcel has fewer than :data:`MIN_VALID` valid pixels.

    ``stats`` is a ``zonal_stats`` result with ``mean`` and ``valid_fraction``.
    """
    import pandas as pd

    mean = stats.sel(zonal_statistics="mean").transpose("geometry", "time").values
    valid = stats.sel(zonal_statistics="valid_fraction").transpose("geometry", "time").values
    dates = pd.DatetimeIndex(stats["time"].values).normalize()
    return pd.DataFrame(mean, columns=dates).where(valid >= MIN_VALID)


def crop_curves(means: Any, parcels: Any) -> Any:
    """Mean NDVI per crop and date (``pandas.DataFrame``, dates x crops) from
    :func:`parcel_means`, NaN where fewer than :data:`MIN_PARCELS` of the crop's parcels
    count."""
    import pandas as pd

    curves = {}
    for crop in sorted(parcels["crop"].unique()):
        values = means[(parcels["crop"] == crop).to_numpy()]
        enough = values.notna().mean(axis=0) >= MIN_PARCELS
        curves[crop] = values.mean(axis=0).where(enough)
    return pd.DataFrame(curves)


def toc_parcel_stats(toc: Any, parcels: Any) -> tuple[Any, Any, str]:
    """Per-parcel statistics of NDVI from reflectance, clouds masked and not: one read.

    ``toc`` is a lazy TOC cube with red, nir and the scene classification. Returns the
    ``zonal_stats`` (mean and valid fraction) of ``mask_clouds()`` then ``ndvi()`` and of
    ``ndvi()`` alone, computed together (the reads are shared), and what was masked.
    """
    import xarray as xr

    clear = toc.terrascope.mask_clouds()
    both = xr.Dataset(
        {"masked": clear.terrascope.ndvi(), "unmasked": toc.terrascope.ndvi()},
        attrs=toc.attrs,  # the items behind the cube: read blocks on the files' tiles
    )
    stats = both.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"]).compute()
    return stats["masked"], stats["unmasked"], clear.attrs["terrascope:cloud_mask"]


def truth_errors(means: dict[str, Any], parcels: Any, world: Any) -> Any:
    """RMSE and count per source and crop against the world's noise-free parcel NDVI.

    Returns a ``pandas.DataFrame`` indexed by source, columns ``(crop, "rmse" | "n")``.
    """
    import pandas as pd

    ids = parcels["parcel_id"].to_numpy()
    crops = sorted(parcels["crop"].unique())
    truth_by_day: dict[Any, np.ndarray] = {}
    rows = {}
    for source, frame in means.items():
        truth = np.column_stack(
            [
                truth_by_day.setdefault(day, world.parcel_ndvi(ids, f"{day:%Y-%m-%d}"))
                for day in frame.columns
            ]
        )
        error = frame.to_numpy() - truth
        row = {}
        for crop in crops:
            values = error[(parcels["crop"] == crop).to_numpy()]
            values = values[~np.isnan(values)]
            row[crop, "rmse"] = float(np.sqrt(np.mean(values**2))) if values.size else np.nan
            row[crop, "n"] = int(values.size)
        rows[source] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _cell(rmse: float, n: int) -> str:
    return f"- (n={int(n)})" if rmse != rmse else f"{rmse:.3f} (n={int(n)})"


def print_errors(errors: Any, labels: dict[str, str]) -> None:
    """Print :func:`truth_errors` as a table, one row per source (``labels`` name them)."""
    crops = list(dict.fromkeys(crop for crop, _ in errors.columns))
    width = max(16, *(len(c) + 2 for c in crops))
    first = max(len(text) for text in labels.values()) + 2
    print(ERROR_HEADER)
    print(f"{'source':<{first}}" + "".join(f"{c:>{width}}" for c in crops))
    for source, row in errors.iterrows():
        cells = "".join(f"{_cell(row[c, 'rmse'], row[c, 'n']):>{width}}" for c in crops)
        print(f"{labels[source]:<{first}}{cells}")


def plot_sources(
    curves: dict[str, Any],
    truth: Any,
    counts: dict[str, int],
    labels: dict[str, str],
    path: Path,
) -> Path:
    """One panel per crop: each source's curve and the world's truth (a daily line); the
    legend (sources, parcels per crop) in the panel left over."""
    import matplotlib.pyplot as plt

    crops = list(truth.columns)
    columns = 3
    rows = len(crops) // columns + 1  # a free panel for the legend
    fig, axes = plt.subplots(
        rows, columns, figsize=(13, 3.5 * rows), sharex=True, sharey=True, squeeze=False
    )
    styles = {
        "NDVI product": {"marker": "o", "ls": "-", "color": "tab:green"},
        "TOC masked": {"marker": "s", "ls": "-", "color": "tab:blue"},
        "TOC unmasked": {"marker": "x", "ls": ":", "color": "tab:red"},
    }
    for ax, crop in zip(axes.ravel(), crops, strict=False):
        ax.plot(
            truth.index,
            truth[crop],
            color="0.45",
            lw=3,
            alpha=0.5,
            label="world's truth (all parcels)",
        )
        for source, frame in curves.items():
            series = frame[crop].dropna()
            ax.plot(
                series.index, series.values, ms=3, lw=1.1, label=labels[source], **styles[source]
            )
        ax.set_title(f"{crop} ({counts[crop]} parcels)", fontsize=10)
        ax.set(ylim=(-0.1, 1.0))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean NDVI of the crop's parcels", fontsize=9)
    spare = axes.ravel()[len(crops) :]
    for ax in spare:
        ax.set_axis_off()
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    spare[0].legend(
        handles,
        names,
        loc="center",
        fontsize=9,
        title="parcels: " + ", ".join(f"{counts[c]} {c}" for c in crops),
        title_fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Mean NDVI per crop: the NDVI product, TOC reflectance with clouds masked "
        "(mask_clouds, then ndvi) and unmasked, against the world's truth\n"
        f"(the parcels of a crop with >= {MIN_VALID:.0%} valid pixels on a date; a point "
        f"where >= {MIN_PARCELS:.0%} of them are)",
        fontsize=10,
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def truth_curves(world: Any, parcels: Any, start: str, end: str) -> Any:
    """The world's noise-free NDVI per crop on every day from ``start`` to ``end`` (mean
    of ``World.parcel_ndvi`` over the crop's parcels; ``pandas.DataFrame``, days x crops)."""
    import pandas as pd

    days = pd.date_range(start, end, freq="D")
    ids = parcels["parcel_id"].to_numpy()
    values = pd.DataFrame([world.parcel_ndvi(ids, f"{day:%Y-%m-%d}") for day in days], index=days).T
    return values.groupby(parcels["crop"].to_numpy()).mean().T


def toc_stats(
    parcels: Any, bbox: list[float], start: str, end: str, max_cloud_cover: float | None
) -> tuple[Any, Any, list[str]]:
    """Open the TOC over the parcels (B04, B08, SCL; scenes up to ``max_cloud_cover``);
    return the parcels' masked and unmasked NDVI statistics (:func:`toc_parcel_stats`)
    and the dates, and print what was read and masked."""
    import dask
    import xarray as xr

    toc = xr.open_dataset(
        bbox,  # type: ignore[arg-type]
        engine="terrascope",
        collection=TOC,
        assets=TOC_ASSETS,
        start=start,
        end=end,
        max_cloud_cover=max_cloud_cover,
        chunks={},
    )
    dates = toc.terrascope.dates()
    with dask.config.set(num_workers=READ_THREADS):
        masked, unmasked, what = toc_parcel_stats(toc, parcels)
    print(
        f"TOC reflectance ({TOC}, {' '.join(TOC_ASSETS)}): {len(dates)} date(s) with cloud "
        f"cover <= {max_cloud_cover}%, a looser scene filter than the NDVI product's: "
        f"clouds are masked per pixel by ds.terrascope.mask_clouds() ({what})"
    )
    return masked, unmasked, dates
