"""The resumable parcel batch (``run_zonal_batch``) on the sandbox: throughput, bytes,
memory, resume after a kill, and cluster efficiency.

Run: ``python benchmarks/bench_batch.py [--parcels 20079] [--start 2025-04-01]
[--end 2025-09-30]`` (defaults: every sandbox parcel, the whole season; a smaller
``--parcels N`` takes the N parcels first along the batch's Hilbert order, a compact
area).

Each run is a child process started cold (its own COG header cache directory), against
one sandbox whose download log counts requests and bytes:

* ``workers1`` / ``workers2``: a LocalCluster of 1 or 2 single-threaded worker
  processes; parcels per second, requests, bytes (and header requests: a file's first
  bytes), bytes against the touched-tile floor, peak RSS and CPU seconds per worker.
* ``threads``: the same batches computed in one process with dask's threaded scheduler
  (one thread): CPU seconds spent computing, for the CPU-per-parcel comparison with a
  single-threaded worker. This machine's CPU seconds for the same work drift by up to
  30 % within minutes (the same threaded run of 4,000 parcels: 4.8, then 6.1 ms a
  parcel): the comparison is the median of ``--cpu-pairs`` ratios, each of a
  ``workers1``-like run and a threaded run started right after it.
* ``resume``: a 2-worker run killed (SIGKILL, its process group) once half the partitions
  exist, then rerun: total time, bytes read in both, output identical to ``workers2``'s.

On a 2-core machine 2 workers cannot be faster than 1: compare bytes, requests and CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "batch.json"
STATS = ["mean", "median", "std", "count", "valid_fraction"]


# --- child side ---------------------------------------------------------------------------


def _usage(dask_worker: Any = None) -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "maxrss_mb": r.ru_maxrss / 1024}


def _warm(dask_worker: Any = None) -> None:
    """Import what a batch's task needs, so the CPU measured is the batch's, not the
    process's one-off imports (about 40 % of a worker's CPU for 1000 parcels, py-spy)."""
    import importlib

    for name in (
        "geopandas",
        "pyarrow.parquet",
        "rasterio.features",
        "xvec",
        "xarray_terrascope.analysis.batch",
        "xarray_terrascope.analysis.zonal",
        "xarray_terrascope.cube.backend",
        "xarray_terrascope.engine.read",
    ):
        importlib.import_module(name)


def _child_cluster(spec: dict) -> None:
    import dask
    from distributed import Client, LocalCluster

    import xarray_terrascope as xts
    from xarray_terrascope.analysis.batch import run_zonal_batch
    from xarray_terrascope.analysis.batch_cluster import LOCAL_CLUSTER_CONFIG

    xts.login()
    with (
        dask.config.set(LOCAL_CLUSTER_CONFIG),  # the settings of run_zonal_batch's own cluster
        LocalCluster(
            n_workers=spec["workers"],
            threads_per_worker=spec["threads"],
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm)
        before = client.run(_usage)
        t0 = time.perf_counter()
        result = run_zonal_batch(
            spec["parcels"],
            spec["out"],
            start=spec["start"],
            end=spec["end"],
            stats=STATS,
            batch_size=spec["batch_size"],
            client=client,
        )
        wall = time.perf_counter() - t0
        after = client.run(_usage)
    workers = {
        str(k): {
            "cpu_s": after[k]["cpu_s"] - before[k]["cpu_s"],
            "peak_rss_mb": after[k]["maxrss_mb"],
        }
        for k in after
    }
    report = {
        "wall_s": wall,
        "written": result.written,
        "dates": result.dates,
        "rebalanced": result.rebalanced,
        "workers": workers,
    }
    Path(spec["report"]).write_text(json.dumps(report))


def _child_threads(spec: dict) -> None:
    import dask
    import xarray as xr

    import xarray_terrascope as xts
    from xarray_terrascope.analysis import batch as batch_module
    from xarray_terrascope.engine import aio

    xts.login()
    _warm()
    parcels = batch_module._read(spec["parcels"])
    ordered = parcels.iloc[batch_module._hilbert_order(parcels)].reset_index(drop=True)
    bbox = [float(v) for v in parcels.to_crs("EPSG:4326").total_bounds]
    ds = xr.open_dataset(bbox, engine="terrascope", start=spec["start"], end=spec["end"], chunks={})
    size = spec["batch_size"]
    compute_cpu = 0.0
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=spec["threads"]):
        for k in range(-(-len(ordered) // size)):
            members = ordered.iloc[k * size : (k + 1) * size]
            lazy = ds.terrascope.zonal_stats(members.geometry, STATS, index=False)
            c0 = time.process_time()
            # as a worker's batch (_compute_here)
            with aio.engine().tiles.keeping_all(batch_module.DEFAULT_TILE_STORE_MB * 2**20):
                lazy.compute()
            compute_cpu += time.process_time() - c0
    wall = time.perf_counter() - t0
    report = {"wall_s": wall, "compute_cpu_s": compute_cpu, **_usage()}
    Path(spec["report"]).write_text(json.dumps(report))


# --- parent side --------------------------------------------------------------------------


def _spawn(spec: dict, env: dict, workdir: Path, name: str) -> subprocess.Popen:
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    stream = (workdir / f"{name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
        env={**env, "TERRASCOPE_CACHE_DIR": str(workdir / f"{name}-cache")},
        stdout=stream,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, workdir: Path, name: str) -> dict:
    code = proc.wait()
    if code:
        raise RuntimeError(
            f"{name} failed ({code}):\n{(workdir / f'{name}.log').read_text()[-3000:]}"
        )
    return json.loads((workdir / f"{name}.report.json").read_text())


def _spans(value: str | None) -> list[tuple[int, int]]:
    """``(start, end)`` (end excluded) of each range of a ``Range`` header."""
    if not value or not value.startswith("bytes="):
        return []
    out = []
    for part in value[len("bytes=") :].split(","):
        start, _, end = part.strip().partition("-")
        if start and end:
            out.append((int(start), int(end) + 1))
    return out


def _overlap(tifs: list) -> dict:
    """Range bytes asked for, and how many of them an earlier or later request of the run
    asked for too (the same file bytes fetched more than once), per file summed."""
    by_file: dict[str, list[tuple[int, int]]] = {}
    for r in tifs:
        by_file.setdefault(r.path, []).extend(_spans(r.range))
    asked = unique = 0
    for spans in by_file.values():
        asked += sum(e - s for s, e in spans)
        end = -1
        for s, e in sorted(spans):
            if e > end:
                unique += e - max(s, end)
                end = e
    return {"range_bytes": asked, "range_bytes_unique": unique, "range_bytes_again": asked - unique}


def _traffic(records: list) -> dict:
    tifs = [r for r in records if r.path.endswith(".tif")]
    headers = Counter(r.path for r in tifs if r.range and r.range.startswith("bytes=0-"))
    return {
        **_overlap(tifs),
        "requests": len(tifs),
        "bytes": sum(r.bytes for r in tifs),
        "header_requests": sum(headers.values()),
        "header_bytes": sum(r.bytes for r in tifs if r.range and r.range.startswith("bytes=0-")),
        "files": len({r.path for r in tifs}),
        "max_header_fetches_per_file": max(headers.values(), default=0),
    }


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("part-*.parquet"))
    }


def _tiles_of(path: Path, parcels: Any) -> set[tuple[int, int]]:
    """``(row, col)`` of the full-resolution tiles of a COG holding a parcel pixel (the
    rule of ``_floor.tile_floor``: pixel centres)."""
    import numpy as np
    import rasterio
    from rasterio import features

    with rasterio.open(path) as src:
        shapes = [g for g in parcels.geometry.to_crs(src.crs) if g is not None and not g.is_empty]
        if not shapes:
            return set()
        mask = features.geometry_mask(
            shapes, out_shape=src.shape, transform=src.transform, invert=True
        )
        th, tw = src.block_shapes[0]
    rows, cols = np.nonzero(mask)
    return set(zip((rows // th).tolist(), (cols // tw).tolist(), strict=True))


def _grid(path: Path) -> tuple:
    import rasterio

    with rasterio.open(path) as src:
        return (str(src.crs), tuple(src.transform), src.shape, src.block_shapes[0])


def _tile_bytes(path: Path, tiles: set[tuple[int, int]]) -> int:
    import rasterio

    with rasterio.open(path) as src:
        return sum(
            int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0) for r, c in tiles
        )


def _floor(sandbox: Any, item_ids: list[str], parcels: Any) -> dict:
    """The touched-tile floor (``_floor.tile_floor`` summed over the files), the parcels
    rasterised once per grid (every date of a tile has the same one)."""
    paths = [sandbox.world.cog_path(i) for i in item_ids]
    grids = {p: _grid(p) for p in paths}
    touched: dict[tuple, set[tuple[int, int]]] = {}
    for p in paths:
        if grids[p] not in touched:
            touched[grids[p]] = _tiles_of(p, parcels)
    with ThreadPoolExecutor(2) as pool:
        sizes = list(pool.map(lambda p: _tile_bytes(p, touched[grids[p]]), paths))
    return {
        "files": len(paths),
        "tiles": sum(len(touched[grids[p]]) for p in paths),
        "tile_bytes": sum(sizes),
    }


def _boundary(
    sandbox: Any, items: list[Any], parcels: Any, batch_size: int, workers: int = 2
) -> dict:
    """Tile bytes two workers' runs both need, with the units (a batch's group of dates)
    dealt as ``Queues`` deals them and none taken from the other worker's run: what 2
    workers read more than 1 at least. With a group of dates per worker, each file is
    one worker's: 0."""
    from xarray_terrascope.analysis import batch as batch_module
    from xarray_terrascope.analysis.batch_cluster import Queues, date_groups

    ordered = parcels.iloc[batch_module._hilbert_order(parcels)].reset_index(drop=True)
    total = -(-len(ordered) // batch_size)
    days = sorted({i.datetime.date() for i in items})
    groups = date_groups(len(days), workers)
    runs = Queues(list(range(total)), [f"w{i}" for i in range(workers)], len(groups)).runs
    each = []
    for run in runs.values():
        ks = sorted({k for k, _ in run})
        kept = {d for _, g in run for d in days[groups[g]]}
        ids = [i.id for i in items if i.datetime.date() in kept]
        members = ordered.iloc[min(ks) * batch_size : (max(ks) + 1) * batch_size]
        each.append(_floor(sandbox, ids, members)["tile_bytes"])
    whole = _floor(sandbox, [i.id for i in items], ordered)["tile_bytes"]
    return {"run_tile_bytes": each, "shared_tile_bytes": sum(each) - whole}


def _all_parcels(world: Any) -> Any:
    """Every parcel of the sandbox's landscape (``World.parcels()`` lists only those
    wholly inside a file's footprint): ``parcel_id`` and ``geometry`` (EPSG:4326). Those
    outside every file get NaN statistics (count 0)."""
    import geopandas
    import numpy as np
    import shapely
    from pyproj import Transformer

    from xarray_terrascope.testing import _parcels

    n = world.land.n_parcels
    quads = world.land.quads[1 : n + 1]
    lon, lat = Transformer.from_crs(_parcels.GEN_EPSG, 4326, always_xy=True).transform(
        quads[..., 0], quads[..., 1]
    )
    return geopandas.GeoDataFrame(
        {"parcel_id": np.arange(1, n + 1, dtype=np.int64)},
        geometry=shapely.polygons(np.stack([lon, lat], axis=-1)),
        crs="EPSG:4326",
    )


def run(args: argparse.Namespace) -> dict:
    import xarray as xr

    import xarray_terrascope as xts
    from xarray_terrascope.analysis import batch as batch_module
    from xarray_terrascope.testing import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with Sandbox(seed=0, latency=args.latency, cache_dir=cache) as sandbox:
        netrc = workdir / "netrc"
        netrc.write_text(
            f"machine 127.0.0.1 login {sandbox.username} password {sandbox.password}\n"
        )
        netrc.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
        for key in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS"):
            env[key] = os.environ[key] = sandbox.env[key]
        env["NETRC"] = str(netrc)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]
        )
        xts.login(sandbox.username, sandbox.password)
        parcels = _all_parcels(sandbox.world) if args.all_land else sandbox.parcels()
        if args.parcels < len(parcels):
            parcels = parcels.iloc[batch_module._hilbert_order(parcels)[: args.parcels]]
        parcels_path = workdir / "parcels.parquet"
        parcels.to_parquet(parcels_path, index=False)
        bbox = [float(v) for v in parcels.total_bounds]
        ds = xr.open_dataset(bbox, engine="terrascope", start=args.start, end=args.end)
        item_ids = [i.id for i in ds.terrascope.items]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # render every COG up front
            list(pool.map(sandbox.world.cog_path, item_ids))
        print(
            f"{len(parcels)} parcels, {len(item_ids)} COGs ready "
            f"in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        floor = _floor(sandbox, item_ids, parcels)
        floor["boundary"] = _boundary(sandbox, ds.terrascope.items, parcels, args.batch_size)
        print(f"  tiles both runs need: {floor['boundary']}", flush=True)
        common = {
            "parcels": str(parcels_path),
            "start": args.start,
            "end": args.end,
            "batch_size": args.batch_size,
        }
        runs: dict[str, dict] = {}
        for name, workers in (("workers1", 1), ("workers2", 2)):
            sandbox.log.clear()
            spec = {
                **common,
                "mode": "cluster",
                "workers": workers,
                "threads": 1,
                "out": str(workdir / name),
                "report": str(workdir / f"{name}.report.json"),
            }
            report = _finish(_spawn(spec, env, workdir, name), workdir, name)
            report.update(_traffic(sandbox.log.records()))
            report["parcels_per_s"] = len(parcels) / report["wall_s"]
            report["cpu_s_per_parcel"] = sum(w["cpu_s"] for w in report["workers"].values()) / len(
                parcels
            )
            report["bytes_vs_tile_floor"] = report["bytes"] / floor["tile_bytes"]
            runs[name] = report
            print(
                f"  {name}: {report['wall_s']:.1f} s, {report['parcels_per_s']:.1f} parcels/s, "
                f"{report['requests']} requests, {report['bytes'] / 1e6:.1f} MB",
                flush=True,
            )

        sandbox.log.clear()
        spec = {
            **common,
            "mode": "threads",
            "threads": 1,
            "report": str(workdir / "threads.report.json"),
        }
        report = _finish(_spawn(spec, env, workdir, "threads"), workdir, "threads")
        report.update(_traffic(sandbox.log.records()))
        report["cpu_s_per_parcel"] = report["compute_cpu_s"] / len(parcels)
        runs["threads"] = report
        print(
            f"  threads: {report['wall_s']:.1f} s, {report['compute_cpu_s']:.1f} CPU s", flush=True
        )

        # more (1 worker, threads) pairs, each run right after the other: the ratio's median
        pairs = [runs["workers1"]["cpu_s_per_parcel"] / runs["threads"]["cpu_s_per_parcel"]]
        for i in range(1, args.cpu_pairs):
            pair = []
            for mode in ("cluster", "threads"):
                name = f"pair{i}-{mode}"
                extra = {"workers": 1, "out": str(workdir / name)} if mode == "cluster" else {}
                spec = {**common, **extra, "mode": mode, "threads": 1}
                spec["report"] = str(workdir / f"{name}.report.json")
                report = _finish(_spawn(spec, env, workdir, name), workdir, name)
                sandbox.log.clear()
                workers = report.get("workers", {}).values()
                cpu = (
                    report["compute_cpu_s"]
                    if mode == "threads"
                    else sum(w["cpu_s"] for w in workers)
                )
                pair.append(cpu / len(parcels))
            pairs.append(pair[0] / pair[1])
            print(f"  pair {i}: worker CPU vs threads {pairs[-1]:.2f}x", flush=True)
        runs["cpu_pairs"] = pairs

        # killed at half way, then resumed
        sandbox.log.clear()
        out = workdir / "resume"
        spec = {
            **common,
            "mode": "cluster",
            "workers": 2,
            "threads": 1,
            "out": str(out),
            "report": str(workdir / "resume-1.report.json"),
        }
        t0 = time.perf_counter()
        proc = _spawn(spec, env, workdir, "resume-1")
        total = -(-len(parcels) // args.batch_size)
        while proc.poll() is None and len(list(out.glob("part-*.parquet"))) < total // 2:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first_s = time.perf_counter() - t0
        kept = len(list(out.glob("part-*.parquet")))
        first = _traffic(sandbox.log.records())
        sandbox.log.clear()
        spec["report"] = str(workdir / "resume-2.report.json")
        t1 = time.perf_counter()
        second_report = _finish(_spawn(spec, env, workdir, "resume-2"), workdir, "resume-2")
        second_s = time.perf_counter() - t1
        second = _traffic(sandbox.log.records())
        identical = _digests(out) == _digests(workdir / "workers2")
        runs["resume"] = {
            "partitions": total,
            "kept_after_kill": kept,
            "first_s": first_s,
            "second_s": second_s,
            "total_s": first_s + second_s,
            "uninterrupted_s": runs["workers2"]["wall_s"],
            "bytes_first": first["bytes"],
            "bytes_second": second["bytes"],
            "bytes_total_vs_uninterrupted": (first["bytes"] + second["bytes"])
            / runs["workers2"]["bytes"],
            "written_by_second": second_report["written"],
            "identical_to_uninterrupted": identical,
        }
        print(
            f"  resume: kept {kept}/{total}, {first_s:.1f} + {second_s:.1f} s, "
            f"identical {identical}",
            flush=True,
        )
    shutil.rmtree(workdir, ignore_errors=True)
    w1, w2 = runs["workers1"], runs["workers2"]
    return {
        "scenario": {
            "parcels": len(parcels),
            "all_land": bool(args.all_land),
            "start": args.start,
            "end": args.end,
            "dates": w1["dates"],
            "batch_size": args.batch_size,
            "latency_s": args.latency,
            "cpus": os.cpu_count(),
        },
        "floor": floor,
        "runs": runs,
        "efficiency": {
            "bytes_2_vs_1": w2["bytes"] / w1["bytes"],
            "requests_2_vs_1": w2["requests"] / w1["requests"],
            "header_requests_2_vs_1": w2["header_requests"] / max(1, w1["header_requests"]),
            # the median of the pairs' ratios (runs["cpu_pairs"]); the first pair is
            # workers1's and threads' (run with workers2's between them)
            "worker_cpu_vs_threads": statistics.median(runs["cpu_pairs"]),
        },
    }


def _table(report: dict) -> str:
    s, r, e = report["scenario"], report["runs"], report["efficiency"]
    lines = [
        f"{s['parcels']} parcels x {s['dates']} dates ({s['start']}..{s['end']}), batch "
        f"{s['batch_size']}, latency {s['latency_s']} s, {s['cpus']} CPUs; tile floor "
        f"{report['floor']['tile_bytes'] / 1e6:.1f} MB",
        "| run | wall s | parcels/s | requests | MB | x floor | header req | CPU s/parcel "
        "| peak RSS/worker MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("workers1", "workers2"):
        x = r[name]
        rss = "/".join(f"{w['peak_rss_mb']:.0f}" for w in x["workers"].values())
        lines.append(
            f"| {name} | {x['wall_s']:.1f} | {x['parcels_per_s']:.1f} | {x['requests']} | "
            f"{x['bytes'] / 1e6:.1f} | {x['bytes_vs_tile_floor']:.2f} | {x['header_requests']} | "
            f"{x['cpu_s_per_parcel'] * 1e3:.1f} ms | {rss} |"
        )
    t = r["threads"]
    lines.append(
        f"| threads (1 thread) | {t['wall_s']:.1f} | {s['parcels'] / t['wall_s']:.1f} | "
        f"{t['requests']} | {t['bytes'] / 1e6:.1f} | "
        f"{t['bytes'] / report['floor']['tile_bytes']:.2f} | "
        f"{t['header_requests']} | {t['cpu_s_per_parcel'] * 1e3:.1f} ms | {t['maxrss_mb']:.0f} |"
    )
    x = r["resume"]
    lines.append(
        f"resume: killed with {x['kept_after_kill']}/{x['partitions']} partitions, "
        f"{x['first_s']:.1f} + {x['second_s']:.1f} = {x['total_s']:.1f} s (uninterrupted "
        f"{x['uninterrupted_s']:.1f} s), bytes {x['bytes_total_vs_uninterrupted']:.2f}x, "
        f"identical: {x['identical_to_uninterrupted']}"
    )
    lines.append(
        f"2 vs 1 worker: bytes {e['bytes_2_vs_1']:.3f}x, requests {e['requests_2_vs_1']:.3f}x, "
        f"header requests {e['header_requests_2_vs_1']:.2f}x; worker CPU per parcel vs "
        f"threads {e['worker_cpu_vs_threads']:.2f}x (median of "
        f"{', '.join(f'{x:.2f}' for x in r['cpu_pairs'])})"
    )
    w1, w2 = r["workers1"], r["workers2"]
    lines.append(
        "file bytes asked for more than once (1 / 2 workers): "
        f"{w1['range_bytes_again'] / 1e6:.2f} / {w2['range_bytes_again'] / 1e6:.2f} MB; "
        f"distinct file bytes {w1['range_bytes_unique'] / 1e6:.2f} / "
        f"{w2['range_bytes_unique'] / 1e6:.2f} MB"
    )
    shared = report["floor"].get("boundary", {}).get("shared_tile_bytes")
    if shared is not None:
        lines.append(
            f"tiles both workers' runs need: {shared / 1e6:.2f} MB "
            f"({shared / report['floor']['tile_bytes']:.1%} of the tile floor); batches a "
            f"worker took from the other's run: {r['workers2'].get('rebalanced')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--parcels", type=int, default=20079)
    parser.add_argument(
        "--all-land",
        action="store_true",
        help="every parcel of the landscape (20,079), not only the 15,923 the sandbox "
        "lists as wholly inside a file",
    )
    parser.add_argument("--start", default="2025-04-01")
    parser.add_argument("--end", default="2025-09-30")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument(
        "--cpu-pairs",
        type=int,
        default=3,
        help="(1 worker, threads) runs whose CPU-per-parcel ratios' median is the "
        "worker-vs-threads comparison (the first pair is workers1 and threads)",
    )
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "xts-bench-batch-cog")
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        (_child_cluster if spec["mode"] == "cluster" else _child_threads)(spec)
        return 0
    report = run(args)
    print(_table(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
