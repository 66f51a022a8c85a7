"""The same NDVI workload on threads and on a 2-worker LocalCluster, on the sandbox.

Run: ``python benchmarks/bench_distributed.py [--repeats 3] [--latency 0.02]``

Reports, per mode, the median wall time over repeats (each repeat starts cold: reader
caches and GDAL's HTTP cache are cleared in every process), the number of tasks, the
requests and bytes the download server logged, requests per worker, and header fetches
(requests for a file's first bytes) per file and process, which must not exceed the
number of chunks of that file the process read. Times are noisy on shared machines:
compare the two modes of the same run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import xarray as xr
from distributed import Client, LocalCluster

import xarray_terrascope as xts
from xarray_terrascope import auth
from xarray_terrascope.engine import gdal_cache, read
from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox

START, END = "2025-04-01", "2025-07-31"


def _cold() -> None:
    read.clear_reader_cache()
    gdal_cache.clear_http_cache()


def _tag_worker(dask_worker) -> None:
    """GDAL's user agent names the worker, so the server log tells processes apart."""
    os.environ["GDAL_HTTP_USERAGENT"] = f"bench-{dask_worker.name}"


def _summary(records, chunks_per_file: int) -> dict:
    tifs = [r for r in records if r.path.endswith(".tif")]
    per_agent = Counter(r.user_agent for r in tifs)
    headers = Counter(
        (r.user_agent, r.path) for r in tifs if r.range and r.range.startswith("bytes=0-")
    )
    return {
        "requests": len(tifs),
        "bytes": sum(r.bytes for r in tifs),
        "requests_per_process": dict(per_agent),
        "files": len({r.path for r in tifs}),
        "max_header_fetches_per_file_and_process": max(headers.values(), default=0),
        "chunks_per_file": chunks_per_file,
        "header_fetches_within_bound": max(headers.values(), default=0) <= chunks_per_file,
        "statuses": dict(Counter(r.status for r in tifs)),
    }


def run(repeats: int, latency: float, chunksize: int) -> dict:
    results: dict = {
        "latency_s": latency,
        "repeats": repeats,
        "window": [START, END],
        "chunksize": chunksize,
    }
    with Sandbox(latency=latency) as sandbox:
        for key in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS"):
            os.environ[key] = sandbox.env[key]
        xts.login(sandbox.username, sandbox.password)
        ds = xr.open_dataset(
            list(SAMPLE_FIELD),
            engine="terrascope",
            start=START,
            end=END,
            chunks={},
            chunksize=chunksize,
        )
        workload = ds.NDVI.mean(["x", "y"])
        chunks_per_file = len(ds.NDVI.data.chunks[1]) * len(ds.NDVI.data.chunks[2])
        results["cube"] = {
            "dates": ds.sizes["time"],
            "y": ds.sizes["y"],
            "x": ds.sizes["x"],
            "partitions": ds.NDVI.data.npartitions,
            "tasks": len(workload.__dask_graph__()),
        }

        workload.compute(scheduler="threads")  # not timed: the sandbox renders its COGs once
        times = []
        for _ in range(repeats):
            _cold()
            sandbox.log.clear()
            t0 = time.perf_counter()
            threaded = workload.compute(scheduler="threads")
            times.append(time.perf_counter() - t0)
        results["threads"] = {
            "median_s": statistics.median(times),
            "runs_s": times,
            **_summary(sandbox.log.records(), chunks_per_file),
        }

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_tag_worker)
            times = []
            for _ in range(repeats):
                client.run(_cold)
                sandbox.log.clear()
                t0 = time.perf_counter()
                clustered = client.compute(workload).result()
                times.append(time.perf_counter() - t0)
            results["cluster"] = {
                "median_s": statistics.median(times),
                "runs_s": times,
                **_summary(sandbox.log.records(), chunks_per_file),
            }
        results["same_result"] = bool(((threaded - clustered).fillna(0) == 0).all())
        results["cluster_over_threads"] = (
            results["cluster"]["median_s"] / results["threads"]["median_s"]
        )
        auth.logout()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--chunksize", type=int, default=1024, help="spatial chunk, pixels")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "distributed.json")
    )
    args = parser.parse_args()
    results = run(args.repeats, args.latency, args.chunksize)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    cube = results["cube"]
    print(
        f"cube: {cube['dates']} dates x {cube['y']} x {cube['x']} px, "
        f"{cube['partitions']} partitions, {cube['tasks']} tasks; latency {args.latency}s"
    )
    print(
        f"{'mode':<8}{'median s':>10}{'requests':>10}{'MB':>8}{'max hdr/file/proc':>19}"
        "  per process"
    )
    for mode in ("threads", "cluster"):
        r = results[mode]
        print(
            f"{mode:<8}{r['median_s']:10.2f}{r['requests']:10d}{r['bytes'] / 1e6:8.2f}"
            f"{r['max_header_fetches_per_file_and_process']:19d}  {r['requests_per_process']}"
        )
    print(
        f"cluster/threads wall time: {results['cluster_over_threads']:.2f}; "
        f"same result: {results['same_result']}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
