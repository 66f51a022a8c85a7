"""Zonal statistics of 2,000 parcels over one season: xarray-terrascope vs odc-stac + xvec.

On the sandbox (20 ms latency per download request), for 2,000 of the world's parcels
spread over the 31UFS strip (~74 x 11 km, every parcel wholly on the native grid):

* ``terrascope``: ``xr.open_dataset(bbox, engine="terrascope", chunks=...)`` then
  ``ds.terrascope.zonal_stats(parcels, "mean")`` (reads only the blocks the parcels touch);
* ``odc-stac+xvec``: ``odc.stac.load`` of the parcels' bounding box on the same grid
  (``configure_rio`` with Basic credentials, as VITO's notebooks do), DN -> NDVI, then
  ``ds.xvec.zonal_stats(parcels, "x", "y", stats="mean", method="rasterize")``.

Each run is a fresh child process (imports done before its clock starts); both compute
with dask's threaded scheduler and the same number of threads. The parent counts
requests and bytes in the sandbox's log per run, computes the floor (the bytes of the
COG tiles holding parcel pixels, from the files' TileByteCounts, plus the headers the
run fetched), checks that the two results are equal, prints a table and writes
``benchmarks/results/zonal.json``.

    .venv/bin/python benchmarks/bench_zonal.py [--repeats 3] [--start ... --end ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "zonal.json"
#: The 31UFS strip west of 31UGS: one native-grid file per date.
BBOX = (4.96, 51.20, 5.85, 51.30)
COLLECTION = "terrascope-s2-ndvi-v2"
ASSET = "NDVI"


# --- child side ---------------------------------------------------------------------------


def _child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import dask
    import geopandas as gpd
    import xarray as xr
    import xvec  # noqa: F401

    parcels = gpd.read_parquet(spec["parcels"])
    threads = spec["threads"]
    if spec["contender"] == "terrascope":
        import xarray_terrascope as xts

        t0 = time.perf_counter()
        xts.login()
        ds = xr.open_dataset(
            list(spec["bbox"]),
            engine="terrascope",
            start=spec["start"],
            end=spec["end"],
            chunks=spec["chunks"],
        )
        result = ds.terrascope.zonal_stats(parcels, "mean")
        with dask.config.set(scheduler="threads", num_workers=threads):
            values = result.NDVI.compute().values
        wall = time.perf_counter() - t0
        dates = [str(t)[:10] for t in ds.time.values]
    else:
        import odc.stac
        import pystac_client
        import rioxarray  # noqa: F401  (.rio, which xvec's rasterize uses)
        from affine import Affine
        from odc.geo.geobox import GeoBox

        t0 = time.perf_counter()
        user, password = os.environ["TERRASCOPE_USERNAME"], os.environ["TERRASCOPE_PASSWORD"]
        client = pystac_client.Client.open(os.environ["TERRASCOPE_STAC_URL"])
        items = list(
            client.search(
                collections=[COLLECTION],
                bbox=spec["bbox"],
                datetime=f"{spec['start']}/{spec['end']}T23:59:59Z",
                limit=100,
            ).items()
        )
        odc.stac.configure_rio(
            cloud_defaults=True, GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC"
        )
        geobox = GeoBox(tuple(spec["shape"]), Affine(*spec["transform"]), f"EPSG:{spec['epsg']}")
        ds = odc.stac.load(items, bands=[ASSET], geobox=geobox, groupby="solar_day", chunks={})
        with dask.config.set(scheduler="threads", num_workers=threads):
            dn = ds[ASSET].compute()
        ndvi = (dn.astype("float32") * np.float32(0.004) + np.float32(-0.08)).where(dn != 255)
        ndvi = ndvi.rio.write_crs(f"EPSG:{spec['epsg']}")
        result = ndvi.xvec.zonal_stats(
            parcels.geometry.to_crs(spec["epsg"]), "x", "y", stats="mean", method="rasterize"
        )
        values = result.values
        wall = time.perf_counter() - t0
        dates = [str(t)[:10] for t in ds.time.values]
    np.save(spec["out"] + ".npy", np.asarray(values, dtype=np.float64))
    Path(spec["out"] + ".json").write_text(json.dumps({"wall_s": wall, "dates": dates}))


# --- parent side --------------------------------------------------------------------------


def _run_child(spec: dict, env: dict, workdir: Path, name: str) -> dict:
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    err = workdir / f"{name}.stderr"
    with err.open("w") as stream:
        code = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stream,
            check=False,
        ).returncode
    if code:
        raise RuntimeError(f"{name} failed ({code}):\n{err.read_text()[-3000:]}")
    out = json.loads(Path(spec["out"] + ".json").read_text())
    out["values"] = np.load(spec["out"] + ".npy")
    return out


def _floor(sandbox: Any, item_ids: list[str], parcels: Any) -> dict:
    from _floor import tile_floor

    paths = [sandbox.world.cog_path(i) for i in item_ids]
    per_file = [tile_floor(p, parcels.geometry) for p in paths]
    return {
        "files": len(paths),
        "tiles": sum(f["tiles"] for f in per_file),
        "tile_bytes": sum(f["tile_bytes"] for f in per_file),
        "file_bytes": sum(p.stat().st_size for p in paths),
    }


def run(args: argparse.Namespace) -> dict:
    import xarray as xr

    import xarray_terrascope as xts
    from xarray_terrascope.testing import Sandbox

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-zonal-"))
    with Sandbox(seed=0, latency=args.latency, cache_dir=cache) as sandbox:
        env = {**os.environ, **sandbox.env, "NETRC": str(workdir / "no-netrc")}
        for key in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS"):
            os.environ[key] = sandbox.env[key]
        xts.login(sandbox.username, sandbox.password)
        import shapely

        parcels = sandbox.world.parcels()
        inside = parcels[parcels.within(shapely.box(*BBOX))]
        parcels = inside.sample(args.parcels, random_state=0).sort_values("parcel_id")
        parcels_path = workdir / "parcels.parquet"
        parcels.to_parquet(parcels_path)
        bbox = [float(v) for v in parcels.total_bounds]
        ds = xr.open_dataset(bbox, engine="terrascope", start=args.start, end=args.end)
        item_ids = [i.id for i in ds.terrascope.items]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # render every COG up front
            list(pool.map(sandbox.world.cog_path, item_ids))
        print(f"{len(item_ids)} COGs ready in {time.perf_counter() - t0:.0f} s", flush=True)
        floor = _floor(sandbox, item_ids, parcels)
        t = ds.rio.transform()
        common = {
            "bbox": bbox,
            "start": args.start,
            "end": args.end,
            "parcels": str(parcels_path),
            "threads": args.threads,
            "epsg": ds.rio.crs.to_epsg(),
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "shape": [ds.sizes["y"], ds.sizes["x"]],
        }
        contenders = {
            "terrascope": {"contender": "terrascope", "chunks": {}},
            "odc-stac+xvec": {"contender": "odc"},
        }
        rows: dict[str, dict] = {}
        reference = None
        for repeat in range(args.repeats):
            for name, extra in contenders.items():
                if repeat and name == "odc-stac+xvec" and args.odc_repeats <= repeat:
                    continue
                sandbox.log.clear()
                out_base = str(workdir / f"{name.replace(' ', '_')}-{repeat}")
                result = _run_child({**common, **extra, "out": out_base}, env, workdir, name)
                records = [r for r in sandbox.log.records() if r.path.endswith(".tif")]
                row = rows.setdefault(
                    name, {"wall_s": [], "requests": [], "bytes": [], "header_bytes": []}
                )
                row["wall_s"].append(result["wall_s"])
                row["requests"].append(len(records))
                row["bytes"].append(sum(r.bytes for r in records))
                row["header_bytes"].append(
                    sum(r.bytes for r in records if r.range and r.range.startswith("bytes=0-"))
                )
                row["dates"] = len(result["dates"])
                if reference is None:
                    reference = result["values"]
                else:
                    row["max_abs_diff"] = float(np.nanmax(np.abs(result["values"] - reference)))
                    row["equal"] = bool(
                        np.allclose(
                            result["values"], reference, rtol=1e-5, atol=1e-6, equal_nan=True
                        )
                    )
                print(
                    f"  {name} #{repeat}: {result['wall_s']:.1f} s, {len(records)} requests, "
                    f"{row['bytes'][-1] / 1e6:.1f} MB",
                    flush=True,
                )
    odc_wall = statistics.median(rows["odc-stac+xvec"]["wall_s"])
    summary = {}
    for name, row in rows.items():
        wall = statistics.median(row["wall_s"])
        data = statistics.median(row["bytes"])
        headers = statistics.median(row["header_bytes"])
        summary[name] = {
            "wall_s_median": round(wall, 2),
            "wall_s": [round(w, 2) for w in row["wall_s"]],
            "vs_odc_wall": round(wall / odc_wall, 3),
            "requests": int(statistics.median(row["requests"])),
            "bytes": int(data),
            "header_bytes": int(headers),
            "bytes_vs_tile_floor": round(data / floor["tile_bytes"], 3),
            "bytes_vs_floor_with_headers": round(data / (floor["tile_bytes"] + headers), 3),
            "dates": row["dates"],
            "equal_to_first": row.get("equal", True),
            "max_abs_diff": row.get("max_abs_diff", 0.0),
        }
    return {
        "scenario": {
            "parcels": args.parcels,
            "bbox": BBOX,
            "parcels_bbox": common["bbox"],
            "start": args.start,
            "end": args.end,
            "latency_s": args.latency,
            "threads": args.threads,
            "repeats": args.repeats,
            "cube_shape": common["shape"],
            "parcel_area_fraction": round(
                float(parcels.to_crs(common["epsg"]).area.sum())
                / (common["shape"][0] * common["shape"][1] * 100.0),
                4,
            ),
            "cpus": os.cpu_count(),
        },
        "floor": floor,
        "results": summary,
    }


def _table(report: dict) -> str:
    f = report["floor"]
    lines = [
        f"{report['scenario']['parcels']} parcels, {report['scenario']['start']}.."
        f"{report['scenario']['end']}, latency {report['scenario']['latency_s']} s; floor: "
        f"{f['tiles']} tiles = {f['tile_bytes'] / 1e6:.1f} MB of {f['file_bytes'] / 1e6:.1f} MB "
        f"in {f['files']} files",
        f"{'contender':<22}{'wall s':>9}{'x odc':>8}{'requests':>10}{'MB':>9}"
        f"{'x floor':>9}{'x floor+hdr':>12}{'equal':>7}",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<22}{r['wall_s_median']:>9.1f}{r['vs_odc_wall']:>8.2f}{r['requests']:>10}"
            f"{r['bytes'] / 1e6:>9.1f}{r['bytes_vs_tile_floor']:>9.2f}"
            f"{r['bytes_vs_floor_with_headers']:>12.2f}{r['equal_to_first']!s:>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--parcels", type=int, default=2000)
    parser.add_argument("--start", default="2025-04-01")
    parser.add_argument("--end", default="2025-09-30")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--odc-repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "xts-bench-cog"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    report = run(args)
    print(_table(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
