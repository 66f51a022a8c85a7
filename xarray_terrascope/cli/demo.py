"""The main job, on the embedded sandbox: parcel NDVI curves per crop, monthly max-NDVI
composites, a time slider with the parcel outlines, and the same curves from top-of-canopy
reflectance with clouds masked per pixel, against the world's truth
(``xarray-terrascope demo``).

What a Terrascope user runs over a season of farmland, end to end and offline:

1. start the sandbox (STAC API and download server on loopback) and log in;
2. take the sandbox's parcels (with their crop types) in the sample field and open
   the season's NDVI over their bounds, skipping scenes above the cloud limit;
3. ``ds.terrascope.zonal_stats`` per parcel and date (mean NDVI and valid fraction),
   reading only the COG tiles the parcels touch; ``ds.terrascope.composite`` for the
   monthly max-NDVI;
4. print a table (per date: valid fraction over the parcels, mean NDVI per crop), and
   write ``ndvi_by_crop.png`` (one curve per crop), ``ndvi_monthly_max.png`` (one
   panel per month) and ``ndvi_time_slider.html`` (the clear dates at 20 m with the
   parcel outlines; lon/lat in the hover; works offline);
5. open ``terrascope-s2-toc-v2`` (B04, B08, SCL) with a looser scene filter, and take
   the parcels' NDVI from reflectance after ``ds.terrascope.mask_clouds()`` and without
   it (:mod:`xarray_terrascope.cli.demo_curves`); print each source's error against the
   world's noise-free parcel NDVI per crop, and write ``ndvi_by_crop_toc.png`` (the
   three sources and the truth, one panel per crop).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xarray_terrascope.cli.demo_curves import (
    MIN_VALID,
    READ_THREADS,
    SOURCES,
    crop_curves,
    parcel_means,
    plot_sources,
    print_errors,
    toc_stats,
    truth_curves,
    truth_errors,
)
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = [
    "DEMO_END",
    "DEMO_MAX_CLOUD_COVER",
    "DEMO_START",
    "DEMO_TOC_MAX_CLOUD_COVER",
    "run_demo",
]

DEMO_START = "2025-04-01"
DEMO_END = "2025-09-30"
#: Scenes above this ``eo:cloud_cover`` (percent) are not searched: a user's first filter,
#: and the demo's largest saving (the sandbox renders every file it serves).
DEMO_MAX_CLOUD_COVER = 10.0
#: The TOC's scene filter: looser, since its clouds are masked per pixel. A scene of 60 %
#: can be clear over the parcels, one of 10 % cloudy over them.
DEMO_TOC_MAX_CLOUD_COVER = 60.0


def _clearest_per_half_month(dates: list[str], valid: Any) -> list[int]:
    """Indices of the clearest date of each half month, among those >= :data:`MIN_VALID`."""
    best: dict[tuple[str, bool], int] = {}
    for i, (day, fraction) in enumerate(zip(dates, valid, strict=True)):
        if fraction < MIN_VALID:
            continue
        key = (day[:7], int(day[8:10]) > 15)
        if key not in best or fraction > valid[best[key]]:
            best[key] = i
    return sorted(best.values())


def _print_table(curves: Any, valid: Any, dates: list[str], counts: dict[str, int]) -> None:
    crops = list(curves.columns)
    width = max(12, *(len(c) + 1 for c in crops))
    print("parcels: " + ", ".join(f"{counts[c]} {c}" for c in crops))
    print(f"{'date':<12}{'valid':>8}" + "".join(f"{c:>{width}}" for c in crops))
    for day, fraction, (_, row) in zip(dates, valid, curves.iterrows(), strict=True):
        cells = "".join(f"{'-':>{width}}" if v != v else f"{v:{width}.3f}" for v in row)
        print(f"{day:<12}{fraction:8.1%}{cells}")


def curves_figure(curves: Any, means: Any, parcels: Any, start: str, end: str) -> Any:
    """The NDVI product's curve per crop: the mean of its parcels' means (a line, the
    legend saying how many parcels the crop has) and the interquartile range of those
    parcel means (a band), on the dates :func:`crop_curves` keeps.

    Parameters
    ----------
    curves : pandas.DataFrame
        Dates x crops, from :func:`crop_curves`.
    means : pandas.DataFrame
        Parcels x dates, from :func:`parcel_means` (NaN: the parcel does not count).
    parcels : geopandas.GeoDataFrame
        The parcels in the rows' order, with their ``crop``.
    start, end : str
        The dates searched, for the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(9, 4.8))
    crops = parcels["crop"].to_numpy()
    for crop in curves.columns:
        series = curves[crop].dropna()
        of_crop = means[crops == crop][series.index]
        (line,) = ax.plot(
            series.index,
            series.values,
            "o-",
            ms=3.5,
            lw=1.6,
            label=f"{crop} ({int((crops == crop).sum())} parcels)",
        )
        ax.fill_between(
            series.index,
            of_crop.quantile(0.25, axis=0).to_numpy(dtype=float),
            of_crop.quantile(0.75, axis=0).to_numpy(dtype=float),
            color=line.get_color(),
            alpha=0.18,
            lw=0,
        )
    ax.set(
        title=f"Mean NDVI per crop type, {start} to {end} (sandbox parcels, "
        f"dates with >= {MIN_VALID:.0%} valid pixels)",
        ylabel="NDVI (mean over the parcels of the crop)",
        ylim=(0.0, 1.0),
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    band = Patch(facecolor="0.5", alpha=0.3, label="band: middle half of the parcels (25-75 %)")
    ax.legend(
        handles=[*handles, band],
        loc="lower center",
        ncols=min(len(handles) + 1, 3),
        fontsize=8,
        frameon=False,
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _save(fig: Any, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


#: The monthly panels' title, in words (the code is ``ds.terrascope.composite("1MS", "max")``).
COMPOSITE_TITLE = "Greenest NDVI of each month: every pixel's highest value among its clear scenes"


def composites_figure(composite: Any, parcels_utm: Any) -> Any:
    """One panel per month of the monthly maximum composite, the parcels outlined; each
    panel's title says the month and the median number of clear scenes per pixel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    months = composite["time"].values
    columns = (len(months) + 1) // 2
    fig, axes = plt.subplots(
        2, columns, figsize=(2.9 * columns + 1.2, 5.6), squeeze=False, layout="constrained"
    )
    x, y = composite["x"].values, composite["y"].values
    extent = (x[0] - 5, x[-1] + 5, y[-1] - 5, y[0] + 5)
    image = None
    for ax, month in zip(axes.ravel(), months, strict=False):
        frame = composite["NDVI"].sel(time=month)
        count = composite["valid_count"].sel(time=month)
        image = ax.imshow(frame.values, cmap="RdYlGn", vmin=-0.08, vmax=0.92, extent=extent)
        parcels_utm.boundary.plot(ax=ax, color="black", linewidth=0.3)
        median = float(np.median(count.values))
        ax.set_title(
            f"{pd.Timestamp(month):%B %Y}\nmedian {median:g} clear scenes per pixel",
            fontsize=9,
        )
        ax.set_axis_off()
    for ax in axes.ravel()[len(months) :]:
        ax.set_visible(False)
    fig.suptitle(COMPOSITE_TITLE)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="NDVI")
    return fig


def run_demo(
    out_dir: Path,
    *,
    seed: int = 0,
    start: str = DEMO_START,
    end: str = DEMO_END,
    max_cloud_cover: float | None = DEMO_MAX_CLOUD_COVER,
    toc_max_cloud_cover: float | None = DEMO_TOC_MAX_CLOUD_COVER,
) -> dict:
    """The main job on the embedded sandbox; returns what it wrote and measured.

    Returns
    -------
    dict
        ``png`` (the NDVI curves per crop), ``toc_png`` (the three sources per crop
        against the world's truth), ``composite_png``, ``html`` (the slider page),
        ``table`` (the NDVI product's mean NDVI, dates x crops, ``pandas.DataFrame``),
        ``valid`` (the valid share of the parcels' pixels per date), ``curves`` and
        ``parcel_means`` (per source of :data:`SOURCES`: dates x crops, and parcels x
        dates with NaN where a parcel is not counted), ``errors`` (the printed error
        table: sources x ``(crop, "rmse" | "n")``), ``dates``, ``toc_dates``,
        ``parcels``, ``requests`` (download server log) and ``seconds``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import dask
    import pandas as pd
    import shapely
    import xarray as xr

    from xarray_terrascope import auth
    from xarray_terrascope.options import set_options
    from xarray_terrascope.plot import save_html
    from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox

    started = time.monotonic()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, no permission
        raise InvalidArgumentError(
            f"--out: cannot make the folder {str(out_dir)!r}: {err}"
        ) from err
    # endpoints only: the credentials go to login(), never into the environment
    with Sandbox(seed=seed) as sandbox, set_options(**sandbox.options):
        try:
            creds = auth.login(sandbox.username, sandbox.password)
            print(f"sandbox STAC API {sandbox.stac_url}, logged in as {creds.username}")
            parcels = sandbox.parcels()
            parcels = parcels[parcels.within(shapely.box(*SAMPLE_FIELD))].reset_index(drop=True)
            bbox = [round(float(v), 5) for v in parcels.total_bounds]
            ds = xr.open_dataset(
                # xarray types a path or a store here: the terrascope engine takes a bbox too
                bbox,  # type: ignore[arg-type]
                engine="terrascope",
                start=start,
                end=end,
                max_cloud_cover=max_cloud_cover,
                chunks={},
            )
            dates = ds.terrascope.dates()
            print(
                f"{len(parcels)} parcels in {bbox}; {len(dates)} date(s) from {start} to {end} "
                f"with cloud cover <= {max_cloud_cover}%, {ds.sizes['y']} x {ds.sizes['x']} px "
                f"in {ds.rio.crs}"
            )
            with dask.config.set(num_workers=READ_THREADS):
                # the composite reads every pixel, many files at once; zonal_stats then
                # reads only the tiles the parcels touch (files the server has made)
                composite = ds.terrascope.composite("1MS", "max").compute()
                stats = ds.terrascope.zonal_stats(parcels, ["mean", "valid_fraction"]).NDVI
                stats = stats.compute()
            means = {SOURCES[0]: parcel_means(stats)}
            curves = crop_curves(means[SOURCES[0]], parcels)
            # valid share of all parcel pixels per date (parcels weighted by their size)
            pixels = parcels["area_ha"].to_numpy()[:, None]
            valid_share = (stats.sel(zonal_statistics="valid_fraction").values * pixels).sum(
                axis=0
            ) / pixels.sum()
            counts = parcels["crop"].value_counts().to_dict()
            _print_table(curves, valid_share, dates, counts)
            png = _save(
                curves_figure(curves, means[SOURCES[0]], parcels, start, end),
                out_dir / "ndvi_by_crop.png",
                dpi=100,
            )

            masked, unmasked, toc_dates = toc_stats(parcels, bbox, start, end, toc_max_cloud_cover)
            means[SOURCES[1]] = parcel_means(masked)
            means[SOURCES[2]] = parcel_means(unmasked)
            by_source = {s: crop_curves(m, parcels) for s, m in means.items()}
            labels = {
                SOURCES[0]: f"NDVI product (<= {max_cloud_cover}%, {len(dates)} dates)",
                SOURCES[1]: f"TOC masked (<= {toc_max_cloud_cover}%, {len(toc_dates)} dates)",
                SOURCES[2]: f"TOC unmasked (<= {toc_max_cloud_cover}%, {len(toc_dates)} dates)",
            }
            errors = truth_errors(means, parcels, sandbox.world)
            print_errors(errors, labels)
            toc_png = plot_sources(
                by_source,
                truth_curves(sandbox.world, parcels, start, end),
                counts,
                labels,
                out_dir / "ndvi_by_crop_toc.png",
            )

            parcels_utm = parcels.to_crs(ds.rio.crs)
            composite_png = _save(
                composites_figure(composite, parcels_utm), out_dir / "ndvi_monthly_max.png", 90
            )
            # The page embeds every frame: keep it small with the clearest date of each
            # half month (when clear enough), at 20 m.
            clear = _clearest_per_half_month(dates, valid_share)
            with dask.config.set(num_workers=READ_THREADS):
                page = ds.terrascope.ndvi().isel(time=clear)
                page = page.coarsen(x=2, y=2, boundary="trim").mean().astype("float32").load()
            html = save_html(
                page.terrascope.plot_time_slider(title="NDVI (20 m)", overlay=parcels),
                out_dir / "ndvi_time_slider.html",
            )
            seconds = time.monotonic() - started
            print(
                f"wrote {png}, {toc_png}, {composite_png} and {html} "
                f"({len(clear)} dates on the slider)"
            )
            return {
                "png": png,
                "toc_png": toc_png,
                "composite_png": composite_png,
                "html": html,
                "table": curves,
                "valid": pd.Series(valid_share, index=curves.index, name="valid"),
                "curves": by_source,
                "parcel_means": means,
                "errors": errors,
                "dates": len(dates),
                "toc_dates": len(toc_dates),
                "parcels": len(parcels),
                "requests": len(sandbox.log.records()),
                "seconds": seconds,
            }
        finally:
            auth.logout()
