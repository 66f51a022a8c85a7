"""Make ``smoothing-phenology.png``: a parcel's series smoothed, and a map of the start
of season of the sandbox world's parcels in tile 31UGS.

    .venv/bin/python docs/guide/figures/smoothing_phenology.py [parcels_31UGS.nc]

The argument is the parcel series ``benchmarks/bench_smooth.py`` caches (made from the
world's files if absent).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from xarray_terrascope.testing import World  # noqa: E402


def main() -> None:
    world = World(seed=0)
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if source is not None and source.exists():
        obs = xr.open_dataset(source)["mean"].load()
    else:
        from tests.support.seasons import observed_parcel_means

        obs = observed_parcel_means(world, "31UGS")["mean"]
    daily = obs.terrascope.smooth(lmbda=30, expectile=0.8, freq="1D")
    seasons = obs.terrascope.phenology(lmbda=30, expectile=0.8)
    drops = obs.terrascope.events(0.1, lmbda=30, expectile=0.8)
    truth = world.true_series(obs.parcel_id.values)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    grass = next(p for p in obs.parcel_id.values if world.land.code[p] == 7)
    left.plot(truth.time, truth.sel(parcel_id=grass), color="0.6", lw=3, label="truth")
    left.plot(obs.time, obs.sel(parcel_id=grass), "k.", label="observed parcel mean")
    left.plot(daily.time, daily.sel(parcel_id=grass), color="C0", label="smoothed")
    for when in drops.event_time.sel(parcel_id=grass).values:
        if not np.isnat(when):
            left.axvline(when, color="C3", ls=":", lw=1)
    left.set_title(f"grassland parcel {grass}: mowing events (dotted)")
    left.set_ylabel("NDVI")
    left.legend(loc="lower left")
    parcels = world.parcels().set_index("parcel_id")
    shown = parcels.loc[parcels.index.intersection(obs.parcel_id.values)].copy()
    shown["sos_doy"] = seasons.sos_time.to_series().dt.dayofyear.reindex(shown.index)
    shown[shown.crop != "grassland"].plot(
        column="sos_doy",
        ax=right,
        cmap="viridis",
        legend=True,
        legend_kwds={"label": "start of season (day of year)"},
    )
    shown[shown.crop == "grassland"].plot(ax=right, color="0.85")
    right.set_title("start of season, arable parcels of 31UGS (grassland grey)")
    right.set_axis_off()
    fig.tight_layout()
    out = Path(__file__).resolve().parent.parent / "smoothing-phenology.png"
    fig.savefig(out, dpi=90)
    sys.stdout.write(f"{out}\n")


if __name__ == "__main__":
    main()
