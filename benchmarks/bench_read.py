"""Read speed of this package against the ways a user could pick instead, on the sandbox.

Run: ``python benchmarks/bench_read.py`` (about 10 minutes on 2 cores), or
``--quick`` (shorter date ranges, one repeat), ``--scenarios field,region``,
``--repeats 5``, ``--memory`` (the >= 2 GB streaming mean, run on its own).

Every contender reads the same items, bbox, grid (this package's: CRS, transform and
shape of ``ds.rio``) and credentials from one sandbox with ``--latency`` (20 ms) per
download request:

- ``terrascope``: ``xr.open_dataset(bbox, engine="terrascope", chunks={})`` + compute;
- ``terrascope.load``: the same with ``chunks=None`` + ``.load()``;
- ``odc-stac``: ``configure_rio(cloud_defaults=True, GDAL_HTTP_USERPWD=..., GDAL_HTTP_AUTH=
  "BASIC")`` and ``odc.stac.load(..., groupby="solar_day", chunks={})`` on the package's
  GeoBox;
- ``stackstac``: ``stackstac.stack`` with ``DEFAULT_GDAL_ENV.updated(always=...)`` and a
  per-date ``stackstac.mosaic``;
- ``rioxarray``: per item ``open_rasterio`` in a ``rasterio.Env`` with the credentials,
  ``clip_box``, ``reproject_match``, per-date ``combine_first``;
- ``async-geotiff``: a minimal async-geotiff + obstore reader of the same windows (every
  file at once, first valid pixel wins; the speed-of-light reference).

Each measured run is a fresh process (``_contenders.py``) with a fresh, empty
``TERRASCOPE_CACHE_DIR`` (and ``XDG_CACHE_HOME``), except in the ``reopen`` scenario.
The child times search + load + compute; the parent takes the peak RSS of the child
(``os.wait4``), and the requests and bytes from the sandbox's log (cleared before each
run) and from a counting wrapper around the sandbox's STAC app. Repeats are interleaved
(every contender once, then every contender again...), and each figure is a median over
them. Each child imports its libraries (for this package: its read engine, aiohttp and
uvloop) before its clock starts: import time is not read time.

Scenarios: ``field`` (SAMPLE_FIELD, 6 months), ``region`` (~7 x 11 km, 5 weeks),
``crosszone`` (31UGS + 32ULB, output in zone 32), ``year-search`` (one year over one
tile: STAC requests), ``reopen`` (the field again, with the header cache of a previous
process), ``rate429`` (the field on a server answering 429 above 2 concurrent requests)
and, with ``--memory``, ``memory`` (a streaming mean over >= 2 GB decoded). Results go to
stdout (a table) and to ``benchmarks/results/read.json``.

To measure a given version of the package (e.g. the last commit while the working tree
changes), put it first on ``PYTHONPATH``; the JSON records where it was imported from.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_contenders.py"
RESULTS = HERE / "results" / "read.json"
sys.path.insert(0, str(HERE))

from _contenders import cpu_seconds  # noqa: E402
from _floor import floor  # noqa: E402

PEERS = ["terrascope", "terrascope.load", "odc-stac", "stackstac", "rioxarray", "async-geotiff"]
REFERENCE = "terrascope"

#: name -> (bbox, start, end, quick end, contenders)
SCENARIOS: dict[str, dict[str, Any]] = {
    "field": {
        "bbox": None,  # xarray_terrascope.testing.SAMPLE_FIELD
        "start": "2025-04-01",
        "end": "2025-09-30",
        "quick_end": "2025-04-20",
        "contenders": PEERS,
    },
    "region": {
        "bbox": [5.88, 51.20, 5.98, 51.30],
        "start": "2025-05-01",
        "end": "2025-06-04",
        "quick_end": "2025-05-10",
        "contenders": PEERS,
    },
    "crosszone": {
        "bbox": [6.05, 51.22, 6.25, 51.28],
        "start": "2025-05-01",
        "end": "2025-06-04",
        "quick_end": "2025-05-10",
        "contenders": PEERS,
    },
    "year-search": {
        "bbox": [5.81, 51.25, 5.83, 51.26],  # 31UFS only
        "start": "2025-01-01",
        "end": "2025-12-31",
        "quick_end": "2025-12-31",
        "contenders": ["terrascope", "pystac-client"],
    },
    "reopen": {
        "same_as": "field",
        "contenders": ["terrascope"],
    },
    "rate429": {
        "same_as": "field",
        "contenders": ["terrascope", "terrascope.max2", "async-geotiff.max2"],
    },
}
_END_OVERRIDE: str | None = None  # --end
DEFAULT_SCENARIOS = ["field", "region", "crosszone", "year-search", "reopen", "rate429"]


# --- helpers --------------------------------------------------------------------------


def _commit(package_dir: Path) -> str | None:
    """The git commit the measured package comes from (``+dirty`` when its files differ
    from that commit), or None outside a git work tree (e.g. a ``git archive`` export)."""
    run = functools.partial(
        subprocess.run, cwd=package_dir, capture_output=True, text=True, check=False
    )
    head = run(["git", "rev-parse", "--short", "HEAD"])
    if head.returncode != 0:
        return None
    dirty = run(["git", "status", "--porcelain", "--", "."]).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _versions() -> dict[str, str]:
    out = {}
    for name in (
        "xarray-terrascope",
        "xarray",
        "dask",
        "distributed",
        "numpy",
        "rasterio",
        "rioxarray",
        "stackstac",
        "odc-stac",
        "odc-geo",
        "pystac",
        "pystac-client",
        "async-geotiff",
        "async-tiff",
        "obstore",
        "aiohttp",
        "werkzeug",
        "uvloop",
        "pandas",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out


def _machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as handle:
            mem = int(handle.readline().split()[1]) * 1024
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_bytes": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "machine": platform.machine(),
    }


class StacCounter:
    """The sandbox's STAC WSGI app served again on a loopback port, counting requests."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.records: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any):
        body = b""
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
        limit = None
        try:
            if body:
                limit = json.loads(body).get("limit")
            elif "limit=" in environ.get("QUERY_STRING", ""):
                from urllib.parse import parse_qs

                limit = int(parse_qs(environ["QUERY_STRING"])["limit"][0])
        except (ValueError, KeyError, AttributeError):
            pass
        with self._lock:
            self.records.append(
                {
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "limit": limit,
                }
            )
        return self.app(environ, start_response)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.records)

    def serve(self):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        server = make_server("127.0.0.1", 0, self, threaded=True, request_handler=Quiet)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="bench-stac-counter",
        )
        thread.start()
        return server, thread, f"http://127.0.0.1:{server.port}/"


def _scenario(name: str, quick: bool) -> dict:
    from xarray_terrascope.testing import SAMPLE_FIELD

    spec = dict(SCENARIOS[name])
    base = dict(SCENARIOS[spec["same_as"]]) if "same_as" in spec else spec
    bbox = base["bbox"] or list(SAMPLE_FIELD)
    end = base["quick_end"] if quick else base["end"]
    if _END_OVERRIDE:
        end = _END_OVERRIDE
    return {
        "name": name,
        "bbox": list(bbox),
        "start": base["start"],
        "end": end,
        "contenders": spec["contenders"],
    }


def _plan(sc: dict, sandbox: Any) -> dict:
    """Open the package's cube once (search only) for its grid, dates, items and floor."""
    import xarray as xr

    ds = xr.open_dataset(
        sc["bbox"], engine="terrascope", start=sc["start"], end=sc["end"], chunks={}
    )
    items = list(ds.terrascope.items)
    plan: dict[str, Any] = {"items": len(items), "dates": [str(d)[:10] for d in ds.time.values]}
    epsg = ds.rio.crs.to_epsg()
    transform = ds.rio.transform()
    shape = (ds.sizes["y"], ds.sizes["x"])
    plan["grid"] = {"epsg": epsg, "transform": list(transform)[:6], "shape": list(shape)}
    plan["pixels"] = int(shape[0] * shape[1] * len(plan["dates"]))
    bounds = (
        transform.c,
        transform.f + transform.e * shape[0],
        transform.c + transform.a * shape[1],
        transform.f,
    )
    paths = [sandbox.world.cog_path(item.id) for item in items]  # renders them now, untimed
    plan["floor"] = floor(paths, epsg, bounds)
    return plan


def _run_child(spec: dict, env: dict, timeout: float) -> dict:
    """One contender in a fresh process; returns its JSON plus peak RSS and status."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        spec_path = handle.name
    t0 = time.perf_counter()
    server_cpu0 = cpu_seconds()
    stderr_path = spec["out"] + ".stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), spec_path], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.monotonic() + timeout
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    os.unlink(spec_path)
    # ru_maxrss survives execve (a fork of this big parent would count): the child
    # reports its own VmHWM instead; ru_maxrss is kept for reference only.
    result: dict[str, Any] = {
        "exit": proc.returncode,
        "process_s": elapsed,
        # this process's CPU meanwhile: the sandbox's servers (and the log)
        "server_cpu_s": cpu_seconds() - server_cpu0,
        "peak_rss_bytes": 0,
        "ru_maxrss_bytes": rusage.ru_maxrss * 1024,
    }
    out_json = Path(spec["out"] + ".json")
    if proc.returncode == 0 and out_json.exists():
        result.update(json.loads(out_json.read_text()))
    else:
        tail = Path(stderr_path).read_text().strip().splitlines()[-3:]
        result["error"] = " | ".join(tail)[-400:] or f"exit {proc.returncode}"
    return result


def _compare(cube: np.ndarray, ref: np.ndarray) -> dict:
    if cube.shape != ref.shape:
        return {"same_shape": False, "shape": list(cube.shape), "ref_shape": list(ref.shape)}
    nan_a, nan_b = np.isnan(cube), np.isnan(ref)
    both = ~nan_a & ~nan_b
    diff = float(np.abs(cube[both] - ref[both]).max()) if both.any() else 0.0
    return {
        "same_shape": True,
        "max_abs_diff": diff,
        "nan_mismatch": int((nan_a != nan_b).sum()),
        "differing_pixels": int((nan_a != nan_b).sum() + (np.abs(cube - ref)[both] > 1e-6).sum()),
        "equal": bool(diff <= 1e-6 and not (nan_a != nan_b).any()),
    }


def _log_summary(records: list) -> dict:
    tifs = [r for r in records if r.path.endswith(".tif")]
    return {
        "requests": len(tifs),
        "bytes": int(sum(r.bytes for r in tifs)),
        "header_requests": sum(
            1 for r in tifs if r.method == "HEAD" or (r.range or "").startswith("bytes=0-")
        ),
        "head_requests": sum(1 for r in tifs if r.method == "HEAD"),
        "other_requests": len(records) - len(tifs),
        "status_429": sum(1 for r in tifs if r.status == 429),
        "statuses": sorted({r.status for r in tifs}),
    }


# --- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    import xarray_terrascope as xts
    from xarray_terrascope.testing import Sandbox

    work = Path(tempfile.mkdtemp(prefix="bench-read-"))
    global _BASELINE
    _BASELINE = _export_baseline(args.baseline, work) if args.baseline else None
    names = (
        args.scenarios.split(",")
        if args.scenarios
        else (["memory"] if args.memory else DEFAULT_SCENARIOS)
    )
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
        "package_imported_from": str(Path(xts.__file__).parent),
        "commit": _commit(Path(xts.__file__).parent),
        "settings": {
            "latency_s": args.latency,
            "repeats": args.repeats,
            "quick": args.quick,
            "baseline": args.baseline,
        },
        "scenarios": {},
    }
    period = {"start": "2025-01-01", "end": "2025-12-31"}
    if "memory" in names:
        period = {"start": args.memory_start, "end": "2025-12-31"}
    cogs = Path(args.cog_cache) if args.cog_cache else work / "cogs"
    sandbox = Sandbox(latency=args.latency, cache_dir=cogs, **period)
    counter = server = None
    saved_env = {
        k: os.environ.get(k)
        for k in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS")
    }
    try:
        counter, server, child_env = start_counted(sandbox)

        # Is the server the bottleneck? 64 concurrent range GETs on one file.
        probe_sc = _scenario("field", True)
        import xarray as xr

        probe = xr.open_dataset(
            probe_sc["bbox"], engine="terrascope", start=probe_sc["start"], end=probe_sc["end"]
        )
        first = probe.terrascope.items[0]
        sandbox.world.cog_path(first.id)
        if args.server_check:
            report["server_check"] = _server_check(first.assets["NDVI"].href, sandbox, args)
            check = report["server_check"]
            print(
                f"server check: 64 concurrent GETs {check['wall_s']:.3f} s "
                f"({check['latency_periods']} latency periods)",
                flush=True,
            )

        for name in names:
            if name == "memory":
                report["scenarios"]["memory"] = _memory(args, sandbox, child_env, work)
                continue
            sc = _scenario(name, args.quick)
            print(f"\n== {name}: bbox {sc['bbox']} {sc['start']}..{sc['end']}", flush=True)
            plan = _plan(sc, sandbox)
            print(
                f"   {plan['items']} items, {len(plan['dates'])} dates, grid "
                f"{plan['grid']['shape']} EPSG:{plan['grid']['epsg']}, floor {plan['floor']}",
                flush=True,
            )
            report["scenarios"][name] = _scenario_runs(
                name, sc, plan, args, sandbox, counter, child_env, work
            )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        sandbox.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _server_check(href: str, sandbox: Any, args: argparse.Namespace) -> dict:
    """64 concurrent range GETs from a separate process (so client and server do not
    share a GIL), best of 3; plus the same through 64 already-open connections."""
    # The password travels in the environment of this one child, not on its command line.
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from _floor import "
        "server_concurrency as s; a = sys.argv; "
        "import os; print(json.dumps([s(a[2], a[3], os.environ['BENCH_PASSWORD'], float(a[5]), "
        "keepalive=k) "
        "for k in (False, False, False, True, True, True)]))"
    )
    env = {**os.environ, "BENCH_PASSWORD": sandbox.password}
    out = subprocess.run(
        [sys.executable, "-c", code, str(HERE), href, sandbox.username, "-", str(args.latency)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    runs = json.loads(out.stdout)
    # The server's own cost per request: the same probe with no added latency.
    latency = sandbox.download.latency
    sandbox.download.latency = 0.0
    try:
        zero = subprocess.run(
            [sys.executable, "-c", code, str(HERE), href, sandbox.username, "-", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        sandbox.download.latency = latency
    zero_runs = json.loads(zero.stdout)
    sandbox.log.clear()
    fresh = min((r for r in runs if not r["keepalive"]), key=lambda r: r["wall_s"])
    warm = min((r for r in runs if r["keepalive"]), key=lambda r: r["wall_s"])
    return {
        **fresh,
        "keepalive": warm,
        "runs": runs,
        "no_latency": min((r for r in zero_runs if r["keepalive"]), key=lambda r: r["wall_s"]),
        "method": "aiohttp in a separate process; 64 GETs of 16 KiB ranges of one COG "
        "gathered at once, each on its own new connection (best of 3), and again "
        "over 64 connections opened beforehand; wall time / latency",
    }


def _spec_for(contender: str, sc: dict, plan: dict) -> tuple[dict, dict]:
    """(child spec, extra environment) for a contender name like ``terrascope.max2``.

    Variants, joined by ``-`` after the dot: ``load`` (``.load()`` instead of
    ``chunks={}``), ``max<N>`` (``TERRASCOPE_MAX_CONNECTIONS=N``, or N connections for
    the minimal reader), ``base`` (the package as of ``--baseline``), e.g.
    ``terrascope.load-max64`` for an A/B of the limit.
    """
    base, _, variant = contender.partition(".")
    variants = set(variant.split("-")) if variant else set()
    spec = {
        "contender": base,
        "bbox": sc["bbox"],
        "start": sc["start"],
        "end": sc["end"],
        "grid": plan["grid"],
    }
    env: dict[str, str] = {}
    if "load" in variants:
        spec["mode"] = "load"
    for limit in (v for v in variants if re.fullmatch(r"max\d+", v)):
        env["TERRASCOPE_MAX_CONNECTIONS"] = limit[3:]
        spec["connections"] = int(limit[3:])
    if "base" in variants:
        if _BASELINE is None:
            raise SystemExit(f"{contender}: the 'base' variant needs --baseline REF")
        env["PYTHONPATH"] = str(_BASELINE)
    if sc["name"] == "year-search" and base == "terrascope":
        spec["open_only"] = True
    return spec, env


#: An export of the package at ``--baseline`` (the ``base`` variant imports it).
_BASELINE: Path | None = None


def _export_baseline(ref: str, work: Path) -> Path:
    """``git archive`` of the package at ``ref`` into ``work``; returns the directory to
    put first on ``PYTHONPATH``."""
    dest = work / "baseline"
    dest.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "xarray_terrascope"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    package = dest / "xarray_terrascope"
    if not (package / "cube").exists() and (package / "backend.py").exists():
        # A version from before the subpackages: the installed entry point names
        # xarray_terrascope.cube.backend, and the children pre-import cube.dataset.
        (package / "cube").mkdir()
        (package / "cube" / "__init__.py").write_text("")
        (package / "cube" / "backend.py").write_text(
            "from xarray_terrascope.backend import TerrascopeBackendEntrypoint  # noqa: F401\n"
        )
        (package / "cube" / "dataset.py").write_text(
            "from xarray_terrascope.dataset import *  # noqa: F403\n"
        )
    return dest


def start_counted(sandbox: Any) -> tuple[StacCounter, Any, dict[str, str]]:
    """Start ``sandbox`` behind a STAC request counter, point this process at it (the
    endpoints only; credentials through ``login``), and return the counter, its server
    and the environment of the contenders' child processes."""
    import xarray_terrascope as xts

    sandbox.start()
    counter = StacCounter(sandbox.stac)
    server, _thread, stac_url = counter.serve()
    # The sandbox's own variables (its download-host spelling follows the contract),
    # with the STAC URL pointing at the counting wrapper.
    endpoints = {
        key: sandbox.env[key] for key in ("TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS")
    }
    endpoints["TERRASCOPE_STAC_URL"] = stac_url
    os.environ.update(endpoints)
    xts.login(sandbox.username, sandbox.password, validate=False)
    child_env = {
        **os.environ,
        **endpoints,
        "TERRASCOPE_USERNAME": sandbox.username,
        "TERRASCOPE_PASSWORD": sandbox.password,
        "PYTHONHASHSEED": "0",
    }
    child_env.pop("TERRASCOPE_MAX_CONNECTIONS", None)
    return counter, server, child_env


def _scenario_runs(name, sc, plan, args, sandbox, counter, child_env, work) -> dict:
    out: dict[str, Any] = {
        "query": {k: sc[k] for k in ("bbox", "start", "end")},
        "items": plan["items"],
        "dates": len(plan["dates"]),
        "grid": plan["grid"],
        "pixels": plan["pixels"],
        "floor": plan["floor"],
        "contenders": {},
    }
    if name == "rate429":
        sandbox.download.max_concurrent = 2
    shared_cache = work / f"cache-{name}"
    try:
        if name == "reopen":  # one unmeasured process fills the persisted header cache
            spec, extra = _spec_for("terrascope", sc, plan)
            spec["out"] = str(work / f"{name}-warm")
            env = {
                **child_env,
                **extra,
                "TERRASCOPE_CACHE_DIR": str(shared_cache),
                "XDG_CACHE_HOME": str(shared_cache),
            }
            _run_child(spec, env, args.timeout)
        ref_cube = None
        if name in ("rate429", "reopen"):
            ref_path = work / "field-terrascope-0.npy"
            ref_cube = np.load(ref_path) if ref_path.exists() else None
        # repeats interleaved (A B C, A B C, ...): a drift of the machine's speed during
        # the scenario touches every contender alike
        all_runs: dict[str, list[dict]] = {c: [] for c in sc["contenders"]}
        for rep in range(args.repeats):
            for contender in sc["contenders"]:
                runs = all_runs[contender]
                if rep and runs and runs[0].get("wall_s", 0) > args.slow_seconds:
                    continue  # a slow contender runs once: the budget is ~15 minutes
                spec, extra = _spec_for(contender, sc, plan)
                spec["out"] = str(work / f"{name}-{contender}-{rep}")
                fresh = work / f"cache-{name}-{contender}-{rep}"
                cache = shared_cache if name == "reopen" else fresh
                env = {
                    **child_env,
                    **extra,
                    "TERRASCOPE_CACHE_DIR": str(cache),
                    "XDG_CACHE_HOME": str(cache),
                }
                sandbox.log.clear()
                counter.clear()
                res = _run_child(spec, env, args.timeout)
                res.update(_log_summary(sandbox.log.records()))
                stac = counter.snapshot()
                res["stac_requests"] = len(stac)
                res["stac_search_requests"] = sum(1 for r in stac if r["path"] == "/search")
                res["stac_page_limit"] = next(
                    (r["limit"] for r in stac if r["path"] == "/search" and r["limit"]), None
                )
                npy = Path(spec["out"] + ".npy")
                if npy.exists():
                    cube = np.load(npy)
                    if contender == REFERENCE and rep == 0 and ref_cube is None:
                        ref_cube = cube
                        if name == "field":
                            np.save(work / "field-terrascope-0.npy", cube)
                    if ref_cube is not None:
                        res["vs_reference"] = _compare(cube, ref_cube)
                    res["dates_equal_plan"] = res.get("dates") == plan["dates"]
                    if rep > 0 or contender != REFERENCE:
                        npy.unlink()
                res.pop("dates", None)
                runs.append(res)
                status = res.get("error") or f"{res.get('wall_s', float('nan')):.2f} s"
                print(
                    f"   {contender:<20} rep {rep}: {status}, {res['requests']} req, "
                    f"{res['bytes']} B, {res['peak_rss_bytes'] / 2**20:.0f} MiB, "
                    f"STAC {res['stac_requests']}",
                    flush=True,
                )
        for contender, runs in all_runs.items():
            out["contenders"][contender] = _summarise(runs)
    finally:
        if name == "rate429":
            sandbox.download.max_concurrent = None
    _ratios(name, out)
    return out


def _summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {"runs": runs, "ok_runs": len(ok)}
    if not ok:
        summary["error"] = runs[0].get("error")
        return summary
    for key in (
        "wall_s",
        "requests",
        "bytes",
        "peak_rss_bytes",
        "header_requests",
        "stac_requests",
        "status_429",
    ):
        summary[key] = statistics.median(r[key] for r in ok)
    comparisons = [r["vs_reference"] for r in ok if "vs_reference" in r]
    if comparisons:
        summary["max_abs_diff"] = max(c.get("max_abs_diff", math.inf) for c in comparisons)
        summary["nan_mismatch"] = max(c.get("nan_mismatch", -1) for c in comparisons)
        summary["equal"] = all(c.get("equal", False) for c in comparisons)
        summary["differing_pixels"] = max(c.get("differing_pixels", -1) for c in comparisons)
    summary["dates_equal_plan"] = all(r.get("dates_equal_plan", True) for r in ok)
    summary["items"] = ok[0].get("items")
    return summary


def _ratios(name: str, out: dict) -> None:
    cons = out["contenders"]
    fastest = cons.get("async-geotiff", {}).get("wall_s")
    odc = cons.get("odc-stac", {}).get("wall_s")
    fl = out["floor"]
    for summary in cons.values():
        if "wall_s" not in summary:
            continue
        if fastest:
            summary["time_vs_async"] = summary["wall_s"] / fastest
        if odc:
            summary["time_vs_odc"] = summary["wall_s"] / odc
        if fl["requests"]:
            summary["requests_vs_floor"] = summary["requests"] / fl["requests"]
            summary["bytes_vs_floor"] = summary["bytes"] / fl["bytes"]
        summary["us_per_pixel"] = 1e6 * summary["wall_s"] / max(out["pixels"], 1)
    if name == "year-search" and "terrascope" in cons and "stac_requests" in cons["terrascope"]:
        page = cons["terrascope"]["runs"][0].get("stac_page_limit") or 10
        out["stac_bound"] = math.ceil(out["items"] / page) + 1
        out["stac_page_limit"] = page
    if name == "rate429":
        a, b = cons.get("terrascope", {}), cons.get("terrascope.max2", {})
        if "wall_s" in a and "wall_s" in b:
            out["time_vs_preset_2"] = a["wall_s"] / b["wall_s"]


#: The workers' environment of the ``-mmap`` memory runs (``distributed.nanny.
#: pre-spawn-environ``): distributed's own trim threshold, and glibc's mmap threshold
#: raised to 32 MiB.
MMAP_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": 65536, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}


def _memory(args, sandbox, child_env, work) -> dict:
    """Streaming mean over >= 2 GB decoded: peak RSS (threads), 1 vs 2 LocalCluster workers."""
    import xarray as xr

    from xarray_terrascope.testing import EXTENT

    # The widest bbox of zone 31 in the sandbox world (centre and east edge west of 6 E).
    bbox = [EXTENT[0] + 0.001, EXTENT[1] + 0.001, min(EXTENT[2], 5.999), EXTENT[3] - 0.001]
    ds = xr.open_dataset(
        bbox, engine="terrascope", start=args.memory_start, end="2025-12-31", chunks={}
    )
    per_date = 4 * ds.sizes["y"] * ds.sizes["x"]
    need = math.ceil(args.memory_bytes / per_date)
    dates = [str(d)[:10] for d in ds.time.values]
    if need > len(dates):
        raise SystemExit(
            f"memory: the world has {len(dates)} dates of {per_date} B; "
            f"{need} needed: use an earlier --memory-start"
        )
    end = dates[need - 1]
    sub = xr.open_dataset(bbox, engine="terrascope", start=args.memory_start, end=end, chunks={})
    items = list(sub.terrascope.items)
    print(
        f"\n== memory: bbox {bbox} {args.memory_start}..{end}: {len(items)} items, "
        f"{sub.NDVI.nbytes / 1e9:.2f} GB decoded; rendering files...",
        flush=True,
    )
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: sandbox.world.cog_path(i.id), items))
    out: dict[str, Any] = {
        "query": {"bbox": bbox, "start": args.memory_start, "end": end},
        "items": len(items),
        "decoded_bytes": int(sub.NDVI.nbytes),
        "runs": {},
    }
    ref = None
    runs = (
        ("threads", 0, None),
        ("cluster-1", 1, None),
        ("cluster-2", 2, None),
        # distributed's nanny sets MALLOC_TRIM_THRESHOLD_, which fixes glibc's mmap
        # threshold at 128 KiB: every larger array is fresh, page-faulted memory. The same
        # runs with that threshold raised, as the README suggests for clusters:
        ("cluster-1-mmap", 1, MMAP_ENVIRON),
        ("cluster-2-mmap", 2, MMAP_ENVIRON),
    )
    for label, workers, environ in runs:
        spec = {
            "contender": "memory",
            "bbox": bbox,
            "start": args.memory_start,
            "end": end,
            "workers": workers,
            "environ": environ,
            "out": str(work / f"memory-{label}"),
        }
        cache = work / f"cache-memory-{label}"
        env = {**child_env, "TERRASCOPE_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(cache)}
        sandbox.log.clear()
        res = _run_child(spec, env, args.timeout * 6)
        res.update(_log_summary(sandbox.log.records()))
        res.pop("dates", None)
        npy = Path(spec["out"] + ".npy")
        if npy.exists():
            cube = np.load(npy)
            if ref is None:
                ref = cube
            res["vs_threads"] = _compare(cube, ref)
        out["runs"][label] = res
        status = res.get("error") or f"{res.get('wall_s', float('nan')):.1f} s"
        rss = res["peak_rss_bytes"] / 2**20
        print(f"   {label:<10} {status}, peak RSS {rss:.0f} MiB, {res['requests']} req", flush=True)
        if "cpu_s" in res:
            cpu = res["cpu_s"]
            # the server's CPU over the whole child (imports, cluster start) is an upper bound
            busy = cpu["process"] + sum(cpu.get("workers", [])) + res["server_cpu_s"]
            res["cores_busy"] = busy / res["wall_s"]
            print(
                f"     CPU s: process {cpu['process']:.1f}, workers "
                f"{[round(w, 1) for w in cpu.get('workers', [])]}, sandbox server "
                f"{res['server_cpu_s']:.1f}: {res['cores_busy']:.2f} of {os.cpu_count()} "
                "cores busy",
                flush=True,
            )
    for suffix in ("", "-mmap"):
        one = out["runs"][f"cluster-1{suffix}"].get("wall_s")
        two = out["runs"][f"cluster-2{suffix}"].get("wall_s")
        if one and two:
            out[f"speedup_2_vs_1_workers{suffix.replace('-', '_')}"] = one / two
    return out


# --- output -----------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def table(report: dict) -> str:
    lines = []
    sc_check = report.get("server_check")
    if sc_check:
        lines.append(
            f"server check: {sc_check['concurrent_requests']} concurrent range GETs in "
            f"{sc_check['wall_s']:.3f} s = {sc_check['latency_periods']} x the "
            f"{sc_check['latency_s'] * 1000:.0f} ms latency (single request "
            f"{sc_check['single_request_s']:.3f} s); over open connections "
            f"{sc_check['keepalive']['wall_s']:.3f} s = "
            f"{sc_check['keepalive']['wall_s'] / sc_check['latency_s']:.2f} x the latency; "
            "with no added latency "
            f"{sc_check['no_latency']['wall_s']:.3f} s (the server's own cost)"
        )
    head = (
        f"{'scenario':<12} {'contender':<20} {'time s':>8} {'x async':>8} {'x odc':>7} "
        f"{'req':>6} {'x floor':>8} {'bytes':>9} {'x floor':>8} {'hdr req':>7} "
        f"{'RSS MiB':>8} {'max|diff|':>10} {'diff px':>8} {'n':>2}"
    )
    lines += ["", head, "-" * len(head)]
    for name, sc in report["scenarios"].items():
        if name == "memory":
            continue
        fl = sc["floor"]
        lines.append(
            f"{name:<12} {'floor':<20} {'':>8} {'':>8} {'':>7} {fl['requests']:>6} "
            f"{'':>8} {_fmt_bytes(fl['bytes']):>9}   ({sc['items']} items, "
            f"{fl['files']} files with pixels, {sc['dates']} dates, "
            f"grid {sc['grid']['shape']} EPSG:{sc['grid']['epsg']})"
        )
        for con, s in sc["contenders"].items():
            if "wall_s" not in s:
                lines.append(f"{name:<12} {con:<20} FAILED: {s.get('error', '')[:120]}")
                continue

            def r(key, fmt="{:.2f}", s=s):
                return fmt.format(s[key]) if key in s else "-"

            diff = s.get("max_abs_diff")
            lines.append(
                f"{name:<12} {con:<20} {s['wall_s']:>8.2f} {r('time_vs_async'):>8} "
                f"{r('time_vs_odc'):>7} {s['requests']:>6.0f} {r('requests_vs_floor'):>8} "
                f"{_fmt_bytes(s['bytes']):>9} {r('bytes_vs_floor'):>8} "
                f"{s['header_requests']:>7.0f} {s['peak_rss_bytes'] / 2**20:>8.0f} "
                f"{'-' if diff is None else f'{diff:.2g}':>10} "
                f"{s.get('differing_pixels', '-'):>8} {s['ok_runs']:>2}"
                + (f"  STAC {s['stac_requests']:.0f}" if name == "year-search" else "")
                + (f"  429s {s['status_429']:.0f}" if name == "rate429" else "")
                + (
                    ""
                    if s["ok_runs"] == len(s["runs"])
                    else f"  ({len(s['runs']) - s['ok_runs']} failed runs)"
                )
            )
        if "stac_bound" in sc:
            lines.append(
                f"{'':<12} STAC bound ceil({sc['items']}/{sc['stac_page_limit']})+1 = "
                f"{sc['stac_bound']}"
            )
        if "time_vs_preset_2" in sc:
            lines.append(
                f"{'':<12} time vs client preset to 2 connections: "
                f"{sc['time_vs_preset_2']:.2f}x (target <= 1.5)"
            )
    # cross-zone per-pixel cost against the same-zone scenarios
    scs = report["scenarios"]
    if "crosszone" in scs:
        cz = scs["crosszone"]["contenders"].get(REFERENCE, {}).get("us_per_pixel")
        for other in ("region", "field"):
            same = scs.get(other, {}).get("contenders", {}).get(REFERENCE, {}).get("us_per_pixel")
            if cz and same:
                lines.append(
                    f"cross-zone per-pixel time vs {other}: {cz / same:.2f}x "
                    f"({cz:.3f} vs {same:.3f} us/pixel; target <= 2)"
                )
    mem = scs.get("memory")
    if mem:
        lines.append(
            f"\nmemory: {mem['decoded_bytes'] / 1e9:.2f} GB decoded, {mem['items']} "
            f"items, {mem['query']}"
        )
        for label, res in mem["runs"].items():
            lines.append(
                f"  {label:<10} {res.get('wall_s', float('nan')):>8.1f} s  peak RSS "
                f"{res['peak_rss_bytes'] / 2**20:>6.0f} MiB  {res['requests']} req"
                + (f"  {res['cores_busy']:.2f} cores busy" if "cores_busy" in res else "")
                + (f"  ERROR {res['error'][:100]}" if "error" in res else "")
            )
        if "speedup_2_vs_1_workers" in mem:
            lines.append(f"  2 workers vs 1: {mem['speedup_2_vs_1_workers']:.2f}x (target >= 1.7)")
        if "speedup_2_vs_1_workers_mmap" in mem:
            lines.append(
                f"  2 workers vs 1, mmap threshold raised: "
                f"{mem['speedup_2_vs_1_workers_mmap']:.2f}x"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short date ranges, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="runs per contender (3)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, from {', '.join([*SCENARIOS, 'memory'])}",
    )
    parser.add_argument(
        "--contenders",
        default=None,
        help="comma-separated subset; variants such as terrascope.max64 or "
        "terrascope.load-max64 are added to the scenarios of their contender",
    )
    parser.add_argument("--memory", action="store_true", help="run the memory scenario only")
    parser.add_argument("--memory-start", default="2023-01-01")
    parser.add_argument("--memory-bytes", type=float, default=2.05e9)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=30.0,
        help="a contender whose first run takes longer is not repeated",
    )
    parser.add_argument("--output", default=str(RESULTS), help="JSON path ('' for none)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--end", default=None, help="override every scenario's end date")
    parser.add_argument(
        "--no-server-check",
        dest="server_check",
        action="store_false",
        help="skip the 64-concurrent-requests check of the sandbox server",
    )
    parser.add_argument(
        "--cog-cache",
        default=None,
        help="directory for the sandbox's rendered COGs, kept between runs (same world only)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REF",
        help="git ref of the package that the 'base' variant runs (terrascope.base): an "
        "A/B of two versions in the same interleaved repeats",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="with --scenarios/--memory: overwrite the JSON instead of merging",
    )
    args = parser.parse_args(argv)
    global _END_OVERRIDE
    _END_OVERRIDE = args.end
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.contenders:
        wanted = args.contenders.split(",")
        bases = {c.partition(".")[0] for sc in SCENARIOS.values() for c in sc["contenders"]}
        unknown = [c for c in wanted if c.partition(".")[0] not in bases]
        if unknown:
            parser.error(f"unknown contenders {unknown}; known: {sorted(bases)}")
        for sc in SCENARIOS.values():
            own = {c.partition(".")[0] for c in sc["contenders"]}
            extra = [c for c in wanted if c not in sc["contenders"] and c.partition(".")[0] in own]
            sc["contenders"] = [
                c for c in sc["contenders"] if c in wanted or c == REFERENCE
            ] + extra  # variants (``terrascope.max64``) of a scenario's own contenders
    report = run(args)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    text = table(report)
    print("\n" + text)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        for sc in report["scenarios"].values():
            sc["measured_at"] = report["date"]
        if path.exists() and (args.scenarios or args.memory) and not args.replace:
            # A partial run (e.g. --memory) updates its scenarios in the existing file.
            old = json.loads(path.read_text())
            old["scenarios"].update(report["scenarios"])
            merged = old.setdefault("merged_runs", [])
            merged.append({k: report[k] for k in ("date", "machine", "versions", "settings")})
            merged[-1]["scenarios"] = sorted(report["scenarios"])
            merged[-1]["package_imported_from"] = report["package_imported_from"]
            merged[-1]["commit"] = report["commit"]
            report = old
            text = table(report)
        report["table"] = text.splitlines()
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
