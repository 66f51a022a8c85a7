"""Smoothing throughput and accuracy against the sandbox world's truth.

Data (made once, cached in ``--cache``): the world's (seed 0, 2025) NDVI files averaged
per parcel for every parcel lying wholly in a tile (clouds and shadows masked, hazy
cloud edges kept; the same series again rendered without clouds), and a
1000 x 1000 pixel x 74 date cube of 31UGS (74 consecutive acquisitions from late March,
float32, NaN under clouds).

Throughput, each contender in a fresh child process (its peak RSS is its ``VmHWM``),
the threaded dask scheduler for the cube:

* ``xts whittaker`` (``lmbda=30``; with ``expectile=0.8``; with ``lmbda=None``, the
  cross-validated lambda, on 1,000 parcels),
* ``scipy user``: the same Whittaker smoother (Eilers' divided differences on the real
  dates) written with ``scipy.sparse.linalg.spsolve``, one solve per series (on 20,000
  cube pixels: the rate is extrapolated, marked so),
* FuseTS (``fusets.whittaker``): tried; see ``fusets`` in the JSON.

Accuracy (all parcels of 31UGS): RMSE of the daily smoothed curve to the noise-free
curve with the cloudy and the clear input; SOS / peak / EOS within 5 days of the
world's truth (arable parcels whose season the truth observes; the peak date is
TIMESAT's middle of season, also checked as "on a day within 0.03 of the true
maximum"); mowing and harvest events matched within 7 days (recall, precision).

    .venv/bin/python benchmarks/bench_smooth.py [--cache DIR] [--accuracy-only]

Writes ``benchmarks/results/smooth.json`` and prints Markdown tables. ``--accuracy-only``
makes only the 31UGS parcel series and replaces the JSON's ``accuracy`` part, keeping
its throughput part.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results" / "smooth.json"
LMBDA = 30.0
#: The tiles whose parcels are smoothed (all three: every parcel wholly in a tile).
TILES = ["31UFS", "31UGS", "32ULB"]


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``, bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


# --- data --------------------------------------------------------------------------------


def make_data(cache: Path, size: int, accuracy_only: bool = False) -> None:
    import xarray as xr

    from tests.support.seasons import observed_parcel_means
    from xarray_terrascope.testing import World

    cache.mkdir(parents=True, exist_ok=True)
    world = World(seed=0)
    for tile in ["31UGS"] if accuracy_only else TILES:
        path = cache / f"parcels_{tile}.nc"
        if not path.exists():
            observed_parcel_means(world, tile).to_netcdf(path)
    clear = cache / "parcels_31UGS_clear.nc"
    if not clear.exists():
        observed_parcel_means(world, "31UGS", clouds=False).to_netcdf(clear)
    cube = cache / f"cube{size}.npy"
    if not accuracy_only and not cube.exists():
        # 74 consecutive acquisitions (both orbits) from late March: a growing season
        items = [i for i in world.item_ids("terrascope-s2-ndvi-v2") if "31UGS" in i][34:108]
        stack = np.empty((74, size, size), np.float32)
        times = []
        for k, item in enumerate(items):
            dn = world.render(item)[100 : 100 + size, 500 : 500 + size]
            stack[k] = np.where(dn == 255, np.nan, 0.004 * dn - 0.08)
            times.append(np.datetime64(world.item(item)["datetime_obj"].replace(tzinfo=None), "ns"))
        np.save(cube, stack)
        np.save(cache / "cube_time.npy", np.array(times))
    del xr


def all_parcels(cache: Path):
    import xarray as xr

    parts = [xr.open_dataset(cache / f"parcels_{t}.nc") for t in TILES]
    return xr.concat(parts, "parcel_id")["mean"].load()


# --- contenders --------------------------------------------------------------------------


def ddmat(x: np.ndarray, d: int):
    """Eilers (2003) divided-difference matrix of order ``d`` for positions ``x``."""
    import scipy.sparse as sp

    m = x.size
    if d == 0:
        return sp.eye(m, format="csr")
    previous = ddmat(x, d - 1)
    dx = x[d:] - x[:-d]
    return sp.diags(1.0 / dx) @ (previous[1:] - previous[:-1])


def scipy_user(y: np.ndarray, x: np.ndarray, lmbda: float) -> np.ndarray:
    """What a user writes: one sparse solve per series, zero weights on NaN."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    d = ddmat(x, 2)
    penalty = lmbda * (d.T @ d)
    out = np.full(y.shape, np.nan)
    for i, row in enumerate(y):
        w = np.isfinite(row).astype(float)
        if w.sum() < 3:
            continue
        a = (sp.diags(w) + penalty).tocsc()
        out[i] = spsolve(a, w * np.nan_to_num(row))
    return out


def child(name: str, cache: Path, size: int) -> dict[str, Any]:
    import dask
    import xarray as xr

    from xarray_terrascope.analysis.smooth import days_since, smooth

    out: dict[str, Any] = {"contender": name}
    if name.startswith("parcels"):
        series = all_parcels(cache)
        x = days_since(series.time.values, series.time.values[0])
        if name == "parcels-gcv":
            series = series.isel(parcel_id=slice(0, 1000))
        start, cpu = time.perf_counter(), time.process_time()
        if name == "parcels-xts":
            result = smooth(series, lmbda=LMBDA).values
        elif name == "parcels-xts-expectile":
            result = smooth(series, lmbda=LMBDA, expectile=0.8).values
        elif name == "parcels-gcv":
            result = smooth(series).values
        else:
            result = scipy_user(series.values, x, LMBDA)
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu
        out["series"] = int(series.sizes["parcel_id"])
        out["dates"] = int(series.sizes["time"])
        if name in ("parcels-xts", "parcels-scipy"):
            np.save(cache / f"{name}.npy", result)
    else:
        stack = np.load(cache / f"cube{size}.npy", mmap_mode="r")
        times = np.load(cache / "cube_time.npy")
        x = days_since(times, times[0])
        if name == "cube-scipy":
            pixels = np.asarray(stack[:, :50, :100]).reshape(74, -1).T
            start, cpu = time.perf_counter(), time.process_time()
            scipy_user(pixels, x, LMBDA)
            scale = size * size / pixels.shape[0]
            out["series_measured"] = pixels.shape[0]
            out["seconds"] = (time.perf_counter() - start) * scale
            out["cpu_seconds"] = (time.process_time() - cpu) * scale
            out["extrapolated"] = True
        else:
            cube = xr.DataArray(
                np.asarray(stack), dims=("time", "y", "x"), coords={"time": times}
            ).chunk({"time": -1, "y": 250, "x": 250})
            start, cpu = time.perf_counter(), time.process_time()
            with dask.config.set(scheduler="threads", num_workers=2):
                smooth(cube, lmbda=LMBDA).compute()
            out["seconds"] = time.perf_counter() - start
            out["cpu_seconds"] = time.process_time() - cpu
        out["series"] = size * size
        out["dates"] = 74
    out["peak_rss_bytes"] = peak_rss()
    return out


def fusets_status() -> str:
    """Whether FuseTS's whittaker can run here (in a throwaway venv, never the project's)."""
    return (
        "not measured: `pip install fusets` (2.0.1, 2023) pins numpy==1.23.5 and "
        "vam.whittaker==2.0.2, which has no wheel for Python 3.11 and fails to build; "
        "vam.whittaker 2.0.6's wheel installs but does not import on this glibc "
        "(undefined symbol __log_finite)"
    )


# --- accuracy ----------------------------------------------------------------------------


def accuracy(cache: Path) -> list[dict[str, Any]]:
    import xarray as xr

    from tests.support.seasons import match_events, within_days
    from xarray_terrascope.analysis.events import events
    from xarray_terrascope.analysis.phenology import phenology
    from xarray_terrascope.analysis.smooth import smooth
    from xarray_terrascope.testing import World

    world = World(seed=0)
    cloudy = xr.open_dataset(cache / "parcels_31UGS.nc")["mean"].load()
    clear = xr.open_dataset(cache / "parcels_31UGS_clear.nc")["mean"].load()
    ids = cloudy.parcel_id.values
    curve = world.true_series(ids)
    truth = world.true_phenology(ids)
    true_events = world.true_events(ids)
    arable = (truth.crop != "grassland").to_numpy()
    grass = ~arable
    settings: dict[str, dict[str, Any]] = {
        f"whittaker lmbda={LMBDA:g} expectile=0.8": {"lmbda": LMBDA, "expectile": 0.8},
        f"whittaker lmbda={LMBDA:g}": {"lmbda": LMBDA},
        "whittaker lmbda=100": {"lmbda": 100.0},
        "savgol 1D window=21": {"method": "savgol", "window": 21},
    }
    rows = []
    for label, options in settings.items():
        row: dict[str, Any] = {"setting": label, "parcels": int(ids.size)}
        for name, series in (("cloudy", cloudy), ("clear", clear)):
            daily = smooth(series, freq="1D", **options)
            error = (daily - curve.sel(time=daily.time)).values
            row[f"rmse_{name}"] = float(np.sqrt(np.nanmean(error**2)))
        seasons = phenology(cloudy, **options)
        for key in ("sos_time", "pos_time", "eos_time"):
            observed = arable & truth[key].notna().to_numpy()
            share = within_days(seasons[key].values, truth[key].values)[observed].mean()
            row[f"{key[:3]}_within_5d"] = float(share)
        dated = arable & ~np.isnat(seasons.pos_time.values)  # NaT: a flank not observed
        day = seasons.pos_time.values[dated].astype("datetime64[D]").astype("datetime64[ns]")
        index = np.searchsorted(curve.time.values, day).clip(0, curve.sizes["time"] - 1)
        at_peak = curve.values[dated][np.arange(day.size), index]
        on_plateau = (truth.pos_value.to_numpy()[dated] - at_peak) < 0.03
        row["pos_on_true_plateau"] = float(on_plateau.mean())
        found = events(cloudy, **options).event_time.values
        for kind, keep in (("mowing", grass), ("harvest", arable)):
            got = {int(p): f[~np.isnat(f)] for p, f, k in zip(ids, found, keep, strict=True) if k}
            sel = true_events[true_events.kind == kind]
            want = {int(str(p)): g.time.values for p, g in sel.groupby("parcel_id")}
            matched, n_found, n_true = match_events(got, want, days=7.0)
            row[f"{kind}_recall"] = matched / max(n_true, 1)
            row[f"{kind}_precision"] = matched / max(n_found, 1)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/xts-bench-smooth"))
    parser.add_argument("--child")
    parser.add_argument("--cube-size", type=int, default=1000, help="cube pixels per side")
    parser.add_argument("--tiles", default=",".join(TILES), help="tiles of the parcels")
    parser.add_argument(
        "--accuracy-only", action="store_true",
        help="only the accuracy part (31UGS parcels); keep the JSON's throughput part",
    )  # fmt: skip
    args = parser.parse_args()
    TILES[:] = args.tiles.split(",")
    if args.child:
        print(json.dumps(child(args.child, args.cache, args.cube_size)))
        return
    started = time.perf_counter()
    make_data(args.cache, args.cube_size, args.accuracy_only)
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    if args.accuracy_only:
        result = json.loads(RESULTS.read_text())
        result["accuracy"] = accuracy(args.cache)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote the accuracy part of {RESULTS}")
        return
    runs = []
    for name in (
        "parcels-xts", "parcels-xts-expectile", "parcels-gcv", "parcels-scipy",
        "cube-xts", "cube-scipy",
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, "--cache", str(args.cache),
             "--cube-size", str(args.cube_size), "--tiles", args.tiles],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    a = np.load(args.cache / "parcels-xts.npy")
    b = np.load(args.cache / "parcels-scipy.npy")
    agreement = float(np.nanmax(np.abs(a - b)))
    result = {
        "lmbda": LMBDA,
        "tiles": list(TILES),
        "cube": [74, args.cube_size, args.cube_size],
        "throughput": runs,
        "xts_vs_scipy_max_abs_difference": agreement,
        "fusets": fusets_status(),
        "accuracy": accuracy(args.cache),
        "machine": "2 shared cores (other jobs running: timings are upper bounds)",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"max |xts - scipy| = {agreement:.2e}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
