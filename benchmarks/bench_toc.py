"""A TOC cube (B04 + B08 + SCL, 10 and 20 m) on the sandbox: this package against odc-stac
and stackstac, the NDVI cube of the same region, cloud masking and ``min_clear`` at open.

Run: ``python benchmarks/bench_toc.py`` (about 7 minutes on 2 cores, plus about 6 the
first time to render ~300 sandbox files), ``--quick`` (10 days, one repeat),
``--scenarios toc-region,toc-mask``, ``--repeats 5``, ``--cog-cache DIR`` (keep the
rendered files between runs).

Same conditions as ``bench_read.py``: one sandbox with ``--latency`` (20 ms) per
download request, every measured run a fresh process (``_contenders.py``, the TOC
contenders in ``_toc_contenders.py``) with an empty header cache, imports before the
clock, interleaved repeats, medians; requests and bytes from the sandbox's download log
(per asset: the log's paths name the files), STAC requests from a counting wrapper.

Scenarios (the region: ~7 x 11 km inside tile 31UFS, across the swath edge of relative
orbit 51, so half of the dates hold no-data pixels):

- ``toc-region``: B04 + B08 + SCL over April-September 2025, ``chunks={}`` + compute and
  ``.load()``, against odc-stac and plain stackstac (each with the user's own scale and
  no-data code), and this package's single-band NDVI cube of the same bbox and dates
  (time per output pixel and band);
- ``toc-mask``: the same with ``mask_clouds=True`` and without, over the region's
  cloudiest month (by the items' ``eo:cloud_cover``): band bytes saved;
- ``toc-minclear``: ``min_clear=0.8`` over the season: the opening alone (it must read
  the SCL files only) and the opening + compute (no band file of a dropped date).

Every cube is checked against the world's ground truth (``World.reflectance``,
``World.scl_truth``; the cloud mask and the clear shares recomputed from the true
classification, see ``_toc_truth.py``), never against this package's output. The floors
come from the sandbox's files on disk (``_floor.py``): per asset, the header and the
tiles the window touches; under the mask, only the band tiles holding a pixel the mask
keeps. Results: stdout (a table) and ``benchmarks/results/toc.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "toc.json"
sys.path.insert(0, str(HERE))

import _toc_truth as truth  # noqa: E402
import bench_read as br  # noqa: E402
from _floor import floor, floor_by_asset, kept_tile_floor  # noqa: E402
from _toc_table import table  # noqa: E402

TOC = "terrascope-s2-toc-v2"
ASSETS = ("B04", "B08", "SCL")
BANDS = ("B04", "B08")
MIN_CLEAR = 0.8
#: ~7 x 11 km inside 31UFS (the size of bench_read's region), across orbit 51's swath edge.
REGION = {
    "bbox": [4.96, 51.20, 5.06, 51.30],
    "start": "2025-04-01",
    "end": "2025-09-30",
    "quick_end": "2025-04-10",
}
SCENARIOS: dict[str, list[str]] = {
    "toc-region": ["terrascope", "terrascope.load", "odc-stac", "stackstac", "ndvi", "ndvi.load"],
    "toc-mask": ["terrascope", "terrascope.mask", "terrascope.load", "terrascope.load-mask"],
    "toc-minclear": ["terrascope.open-minclear", "terrascope.minclear"],
}
#: Contenders whose cubes are checked against the truth (the NDVI cube is bench_read's).
CHECKED = {"terrascope", "odc-stac", "stackstac"}


# --- the plan of a cube (parent, untimed) ----------------------------------------------


def _grid_bounds(grid: dict) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = grid["transform"]
    height, width = grid["shape"]
    return c, f + e * height, c + a * width, f


def _open_plan(query: dict, collection: str, assets: list[str] | None) -> dict:
    """This package's cube of the query (a search, no pixel): grid, dates, item ids."""
    import xarray as xr

    ds = xr.open_dataset(
        query["bbox"],
        engine="terrascope",
        collection=collection,
        assets=assets,
        start=query["start"],
        end=query["end"],
        chunks={},
    )
    grid = {
        "epsg": ds.rio.crs.to_epsg(),
        "transform": list(ds.rio.transform())[:6],
        "shape": [ds.sizes["y"], ds.sizes["x"]],
    }
    items = ds.terrascope.items
    return {
        "grid": grid,
        "dates": [str(d)[:10] for d in ds.time.values],
        "item_ids": [item.id for item in items],
        "first_href": (assets and items[0].assets[assets[0]].href) if items else None,
    }


def _render(world: Any, files: list[tuple[str, str | None]]) -> list[Path]:
    """The sandbox files on disk (rendered now, before any clock), two at a time."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda f: world.cog_path(*f), files))


def _expected_items(stac_url: str, query: dict) -> list[tuple[str, str]]:
    """``(date, item id)`` of the TOC items a STAC search returns for the query (what
    every contender reads), sorted by date; one per date in a one-tile region."""
    import pystac_client

    found = pystac_client.Client.open(stac_url).search(
        collections=[TOC],
        bbox=query["bbox"],
        datetime=f"{query['start']}/{query['end']}",
        limit=500,
    )
    pairs = sorted((i.datetime.date().isoformat(), i.id) for i in found.items())
    days = [d for d, _ in pairs]
    if len(set(days)) != len(days):
        raise SystemExit("the region must lie in one tile (one item per date)")
    return pairs


def _cloudiest_month(world: Any, expected: list[tuple[str, str]]) -> dict:
    """The month whose items have the highest mean ``eo:cloud_cover`` (the world's)."""
    covers: dict[str, list[float]] = defaultdict(list)
    for day, item_id in expected:
        covers[day[:7]].append(float(world.item(item_id)["cloud_cover"]))
    means = {month: statistics.mean(v) for month, v in sorted(covers.items())}
    month = max(means, key=lambda m: means[m])
    return {"month": month, "mean_cloud_cover": means}


def _month_query(query: dict, month: str) -> dict:
    first = date.fromisoformat(month + "-01")
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    start = max(first, date.fromisoformat(query["start"]))
    end = min(last, date.fromisoformat(query["end"]))
    return {**query, "start": start.isoformat(), "end": end.isoformat()}


# --- runs --------------------------------------------------------------------------------


def _spec_for(contender: str, query: dict, grid: dict) -> dict:
    """The child spec of a contender name: ``terrascope``, ``odc-stac``, ``stackstac``,
    ``ndvi`` (this package's NDVI cube, bench_read's contender), and variants after a
    dot joined by ``-``: ``load`` (``.load()``), ``mask`` (``mask_clouds=True``),
    ``minclear`` (``min_clear=0.8``), ``open`` (the opening alone)."""
    base, _, variant = contender.partition(".")
    variants = set(variant.split("-")) if variant else set()
    spec: dict[str, Any] = {
        "bbox": query["bbox"],
        "start": query["start"],
        "end": query["end"],
        "grid": grid,
    }
    if base == "ndvi":
        spec["contender"] = "terrascope"
    else:
        spec["contender"] = base
        spec["module"] = "_toc_contenders"
    if "load" in variants:
        spec["mode"] = "load"
    if "mask" in variants:
        spec["mask_clouds"] = True
    if "minclear" in variants:
        spec["min_clear"] = MIN_CLEAR
    if "open" in variants:
        spec["open_only"] = True
    return spec


def _by_asset(records: list, world: Any) -> dict:
    """Requests and bytes of the download log per asset key, and the dates each asset's
    files were requested for (the log's paths name the files)."""
    requests: dict[str, int] = defaultdict(int)
    sizes: dict[str, int] = defaultdict(int)
    headers: dict[str, int] = defaultdict(int)
    tiles: dict[str, int] = defaultdict(int)
    dates: dict[str, set] = defaultdict(set)
    for record in records:
        if not record.path.endswith(".tif"):
            continue
        found = world.file_for_path(record.path.split("/download/", 1)[-1])
        key = found[1] if found else "?"
        requests[key] += 1
        sizes[key] += record.bytes
        if found:
            dates[key].add(world.item(found[0])["datetime"][:10])
        if record.status == 206 and record.range:
            # the content asked for, without a multipart answer's part headers; a
            # request from byte 0 is a header read (with what follows the header)
            asked = _range_bytes(record.range)
            (headers if record.range.startswith("bytes=0-") else tiles)[key] += asked
    return {
        "asset_requests": dict(requests),
        "asset_bytes": dict(sizes),
        "asset_header_read_bytes": dict(headers),
        "asset_tile_bytes": dict(tiles),
        "asset_dates": {k: sorted(v) for k, v in dates.items()},
    }


def _range_bytes(header: str) -> int:
    """Bytes a ``Range: bytes=a-b,c-d`` header asks for (closed ranges only).

    >>> _range_bytes("bytes=0-2559,4096-8191")
    6656
    """
    total = 0
    for part in header.split("=", 1)[1].split(","):
        first, last = part.strip().split("-")
        total += int(last) - int(first) + 1
    return total


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as handle:
            h.update(hashlib.file_digest(handle, "sha1").digest())
    return h.hexdigest()


def _cube_files(out: str) -> list[Path]:
    return sorted(Path(out).parent.glob(Path(out).name + ".*.npy")) + [
        p for p in [Path(out + ".npy")] if p.exists()
    ]


def _runs(name, query, grid, contenders, ctx) -> dict[str, list[dict]]:
    """Every contender ``repeats`` times, interleaved; the first run's cube is kept."""
    args, sandbox, counter, child_env, work = (
        ctx["args"], ctx["sandbox"], ctx["counter"], ctx["child_env"], ctx["work"]
    )  # fmt: skip
    all_runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for rep in range(args.repeats):
        for contender in contenders:
            runs = all_runs[contender]
            if rep and runs and runs[0].get("wall_s", 0) > args.slow_seconds:
                continue
            spec = _spec_for(contender, query, grid)
            spec["out"] = str(work / f"{name}-{contender}-{rep}")
            cache = work / f"cache-{name}-{contender}-{rep}"
            env = {**child_env, "TERRASCOPE_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(cache)}
            sandbox.log.clear()
            counter.clear()
            res = br._run_child(spec, env, args.timeout)
            records = sandbox.log.records()
            res.update(br._log_summary(records))
            res.update(_by_asset(records, sandbox.world))
            res["stac_requests"] = len(counter.snapshot())
            res["status_429"] = res.get("status_429", 0)
            files = _cube_files(spec["out"])
            if files:
                res["digest"] = _digest(files)
                checked = contender.partition(".")[0] in CHECKED
                if checked and (rep == 0 or not runs or "cube_files" not in runs[0]):
                    res["cube_files"] = [str(p) for p in files]
                    res["dtypes"] = {
                        p.name.rsplit(".", 2)[-2]: str(np.load(p, mmap_mode="r").dtype)
                        for p in files
                    }
                else:
                    for path in files:
                        path.unlink()
                    if runs:
                        res["same_as_first_run"] = res["digest"] == runs[0].get("digest")
            shutil.rmtree(cache, ignore_errors=True)
            runs.append(res)
            status = res.get("error") or f"{res.get('wall_s', float('nan')):.2f} s"
            print(
                f"   {contender:<26} rep {rep}: {status}, {res['requests']} req, "
                f"{res['bytes']} B, {res['peak_rss_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
    return all_runs


def _summarise(runs: list[dict]) -> dict:
    summary = br._summarise(runs)
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return summary
    first = ok[0]
    keys = {k for r in ok for k in r.get("asset_bytes", {})}
    summary["asset_bytes"] = {
        k: statistics.median(r.get("asset_bytes", {}).get(k, 0) for r in ok) for k in sorted(keys)
    }
    for field in ("asset_requests", "asset_header_read_bytes", "asset_tile_bytes"):
        summary[field] = {
            k: statistics.median(r.get(field, {}).get(k, 0) for r in ok) for k in sorted(keys)
        }
    if all("open_s" in r for r in ok):
        summary["open_s"] = statistics.median(r["open_s"] for r in ok)
    summary["child_cpu_s"] = statistics.median(r.get("child_cpu_s", 0.0) for r in ok)
    for key in ("grid", "dates", "dropped_dates", "dropped_clear_shares", "clear_share",
                "asset_dates", "cube_files", "items", "dtypes", "odc_band_metadata"):  # fmt: skip
        if key in first:
            summary[key] = first[key]
    later = [r["same_as_first_run"] for r in ok if "same_as_first_run" in r]
    if later:
        summary["runs_identical"] = all(later)
    return summary


def _vs_floor(summary: dict, fl: dict, what: str) -> None:
    """Requests and bytes of a contender against the floor that applies to it."""
    summary["floor"] = {"what": what, "requests": fl["requests"], "bytes": fl["bytes"]}
    if fl["requests"] and fl["bytes"]:
        summary["requests_vs_floor"] = summary["requests"] / fl["requests"]
        summary["bytes_vs_floor"] = summary["bytes"] / fl["bytes"]


# --- the scenarios ------------------------------------------------------------------------


def _region(ctx: dict, query: dict, plan: dict, ndvi_plan: dict) -> dict:
    out: dict[str, Any] = {
        "query": query,
        "items": len(plan["item_ids"]),
        "dates": len(plan["dates"]),
        "grid": plan["grid"],
        "pixels": int(len(plan["dates"]) * np.prod(plan["grid"]["shape"])),
        "floor": plan["floor"],
        "ndvi": {
            "dates": len(ndvi_plan["dates"]),
            "grid": ndvi_plan["grid"],
            "pixels": int(len(ndvi_plan["dates"]) * np.prod(ndvi_plan["grid"]["shape"])),
            "floor": ndvi_plan["floor"],
        },
        "contenders": {},
    }
    runs = _runs("toc-region", query, plan["grid"], ctx["contenders"]["toc-region"], ctx)
    for contender, rs in runs.items():
        summary = out["contenders"][contender] = _summarise(rs)
        if "wall_s" not in summary:
            continue
        ndvi = contender.startswith("ndvi")
        fl = out["ndvi"]["floor"] if ndvi else out["floor"]
        pixels = out["ndvi"]["pixels"] if ndvi else out["pixels"]
        summary["variables"] = 1 if ndvi else len(ASSETS)
        _vs_floor(summary, fl, "NDVI cube" if ndvi else "B04 + B08 + SCL")
        summary["us_per_pixel_band"] = 1e6 * summary["wall_s"] / (pixels * summary["variables"])
        summary["grid_equal_plan"] = summary.get("grid") == plan["grid"] if not ndvi else None
    odc = out["contenders"].get("odc-stac", {}).get("wall_s")
    for summary in out["contenders"].values():
        if odc and "wall_s" in summary:
            summary["time_vs_odc"] = summary["wall_s"] / odc
    per_px = {}
    for toc, ndvi in (("terrascope", "ndvi"), ("terrascope.load", "ndvi.load")):
        a = out["contenders"].get(toc, {}).get("us_per_pixel_band")
        b = out["contenders"].get(ndvi, {}).get("us_per_pixel_band")
        if a and b:
            per_px[toc] = {"toc_us": a, "ndvi_us": b, "ratio": a / b}
    out["per_pixel_band_vs_ndvi"] = per_px
    return out


def _mask(ctx: dict, query: dict, plan: dict, month: dict) -> dict:
    out: dict[str, Any] = {
        "query": query,
        "cloudiest_month": month,
        "items": len(plan["item_ids"]),
        "dates": len(plan["dates"]),
        "grid": plan["grid"],
        "floor": plan["floor"],
        "contenders": {},
    }
    runs = _runs("toc-mask", query, plan["grid"], ctx["contenders"]["toc-mask"], ctx)
    for contender, rs in runs.items():
        summary = out["contenders"][contender] = _summarise(rs)
        if "wall_s" in summary:
            summary["band_bytes"] = sum(summary["asset_bytes"].get(b, 0) for b in BANDS)
            summary["band_requests"] = sum(summary["asset_requests"].get(b, 0) for b in BANDS)
            for part in ("header_read", "tile"):
                values = summary.get(f"asset_{part}_bytes", {})
                summary[f"band_{part}_bytes"] = sum(values.get(b, 0) for b in BANDS)
    for mode in ("", ".load"):
        plain = out["contenders"].get(f"terrascope{mode}", {})
        masked = out["contenders"].get(f"terrascope{mode}{'-' if mode else '.'}mask", {})
        if "band_bytes" in plain and "band_bytes" in masked and plain["band_bytes"]:
            masked["band_bytes_saved_share"] = 1 - masked["band_bytes"] / plain["band_bytes"]
    return out


def _minclear(ctx: dict, query: dict, plan: dict) -> dict:
    out: dict[str, Any] = {
        "query": query,
        "min_clear": MIN_CLEAR,
        "items": len(plan["item_ids"]),
        "dates": len(plan["dates"]),
        "grid": plan["grid"],
        "floor": plan["floor"],
        "contenders": {},
    }
    runs = _runs("toc-minclear", query, plan["grid"], ctx["contenders"]["toc-minclear"], ctx)
    for contender, rs in runs.items():
        summary = out["contenders"][contender] = _summarise(rs)
        if "wall_s" not in summary:
            continue
        assets = summary["asset_bytes"]
        summary["band_bytes"] = sum(assets.get(b, 0) for b in BANDS)
        summary["mask_bytes"] = assets.get("SCL", 0)
        summary["other_bytes"] = sum(v for k, v in assets.items() if k not in ASSETS)
        dropped = set(summary.get("dropped_dates", []))
        band_dates = {d for b in BANDS for d in summary.get("asset_dates", {}).get(b, [])}
        summary["band_files_of_dropped_dates"] = sorted(band_dates & dropped)
    return out


# --- the truth ----------------------------------------------------------------------------


def _check(report: dict, world: Any, expected: list[tuple[str, str]], grid: dict) -> None:
    """Every kept cube against the world's truth (``_toc_truth.check_cubes``), then the
    truth's dropped dates for ``toc-minclear`` and the band-tile floor under the true
    mask for ``toc-mask``."""
    scs = report["scenarios"]
    windows = {name: (sc["query"]["start"], sc["query"]["end"]) for name, sc in scs.items()}
    shares, kept = truth.check_cubes(scs, world, expected, grid, CHECKED, windows, MIN_CLEAR)
    if "toc-minclear" in scs:
        sc = scs["toc-minclear"]
        sc["truth_clear_shares"] = {d: round(s, 4) for d, s in shares.items()}
        sc["truth_dropped_dates"] = [d for d, _ in expected if shares[d] < MIN_CLEAR]
        clear = [i for d, i in expected if shares[d] >= MIN_CLEAR]
        bands = {b: [world.cog_path(i, b) for i in clear] for b in BANDS}
        sc["band_floor_clear_dates"] = floor_by_asset(bands, grid["epsg"], _grid_bounds(grid))
        mask_floor = sc["floor"]["assets"]["SCL"]
        both = {k: mask_floor[k] + sc["band_floor_clear_dates"][k] for k in ("requests", "bytes")}
        for contender, summary in sc["contenders"].items():
            if "dropped_dates" in summary:
                summary["dropped_equal_truth"] = (
                    summary["dropped_dates"] == sc["truth_dropped_dates"]
                )
            if "wall_s" in summary and "open" in contender:
                _vs_floor(summary, mask_floor, "SCL of every date")
            elif "wall_s" in summary:
                _vs_floor(summary, both, "SCL of every date + B04, B08 of the clear dates")
    if "toc-mask" in scs and kept:
        from affine import Affine

        sc = scs["toc-mask"]
        by_day = dict(expected)
        days = sorted(kept)
        paths = [world.cog_path(by_day[day], band) for day in days for band in BANDS]
        masks = [kept[day] for day in days for _ in BANDS]
        sc["band_floor_unmasked"] = sum(sc["floor"]["assets"][b]["bytes"] for b in BANDS)
        sc["band_floor_masked"] = kept_tile_floor(paths, Affine(*grid["transform"]), masks)
        sc["kept_share"] = float(np.mean([m.mean() for m in kept.values()]))
        masked = sc["band_floor_masked"]
        scl = sc["floor"]["assets"]["SCL"]
        both = {k: masked[k] + scl[k] for k in ("requests", "bytes")}
        for contender, summary in sc["contenders"].items():
            if "wall_s" not in summary:
                continue
            if "mask" not in contender:
                _vs_floor(summary, sc["floor"], "B04 + B08 + SCL")
                continue
            _vs_floor(summary, both, "SCL + the band tiles not fully masked")
            if masked["bytes"]:
                summary["band_bytes_vs_masked_floor"] = summary["band_bytes"] / masked["bytes"]
            if masked["tile_bytes"] and "band_tile_bytes" in summary:
                summary["band_tile_bytes_vs_masked_tile_floor"] = (
                    summary["band_tile_bytes"] / masked["tile_bytes"]
                )


# --- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    import xarray_terrascope as xts
    from xarray_terrascope.testing import Sandbox

    work = Path(tempfile.mkdtemp(prefix="bench-toc-"))
    names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    contenders = {
        name: [c for c in SCENARIOS[name] if not args.contenders or c in args.contenders]
        for name in names
    }
    query = {
        "bbox": args.bbox or REGION["bbox"],
        "start": args.start or REGION["start"],
        "end": args.end or (REGION["quick_end"] if args.quick else REGION["end"]),
    }
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": br._machine(),
        "versions": br._versions(),
        "package_imported_from": str(Path(xts.__file__).parent),
        "commit": br._commit(Path(xts.__file__).parent),
        "settings": {
            "latency_s": args.latency,
            "repeats": args.repeats,
            "quick": args.quick,
            "min_clear": MIN_CLEAR,
        },
        "scenarios": {},
    }
    cogs = Path(args.cog_cache) if args.cog_cache else work / "cogs"
    sandbox = Sandbox(latency=args.latency, cache_dir=cogs, start="2025-01-01", end="2025-12-31")
    server = None
    saved_env = {
        k: os.environ.get(k)
        for k in ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS")
    }
    try:
        counter, server, child_env = br.start_counted(sandbox)
        ctx = {
            "args": args,
            "sandbox": sandbox,
            "counter": counter,
            "child_env": child_env,
            "work": work,
            "contenders": contenders,
        }
        world = sandbox.world
        print(f"== plan: bbox {query['bbox']} {query['start']}..{query['end']}", flush=True)
        expected = _expected_items(child_env["TERRASCOPE_STAC_URL"], query)
        plan = _open_plan(query, TOC, list(ASSETS))
        _render(world, [(i, a) for i in plan["item_ids"] for a in ASSETS])
        bounds = _grid_bounds(plan["grid"])
        files = {a: [world.cog_path(i, a) for i in plan["item_ids"]] for a in ASSETS}
        plan["floor"] = floor_by_asset(files, plan["grid"]["epsg"], bounds)
        print(
            f"   {len(plan['item_ids'])} TOC items, {len(plan['dates'])} dates, grid "
            f"{plan['grid']['shape']} EPSG:{plan['grid']['epsg']}",
            flush=True,
        )
        if args.server_check and plan["first_href"]:
            report["server_check"] = br._server_check(plan["first_href"], sandbox, args)
        if "toc-region" in names:
            ndvi_plan = _open_plan(query, "terrascope-s2-ndvi-v2", None)
            paths = _render(world, [(i, None) for i in ndvi_plan["item_ids"]])
            ndvi_plan["floor"] = floor(paths, ndvi_plan["grid"]["epsg"], bounds)
            print("\n== toc-region", flush=True)
            report["scenarios"]["toc-region"] = _region(ctx, query, plan, ndvi_plan)
        if "toc-mask" in names:
            month = _cloudiest_month(world, expected)
            month_query = _month_query(query, month["month"])
            month_plan = _open_plan(month_query, TOC, list(ASSETS))
            month_files = {
                a: [world.cog_path(i, a) for i in month_plan["item_ids"]] for a in ASSETS
            }
            month_plan["floor"] = floor_by_asset(month_files, plan["grid"]["epsg"], bounds)
            print(f"\n== toc-mask: {month_query['start']}..{month_query['end']}", flush=True)
            report["scenarios"]["toc-mask"] = _mask(ctx, month_query, month_plan, month)
        if "toc-minclear" in names:
            print("\n== toc-minclear", flush=True)
            report["scenarios"]["toc-minclear"] = _minclear(ctx, query, plan)
        report["plan_dates_equal_search"] = plan["dates"] == [d for d, _ in expected]
        _check(report, world, expected, plan["grid"])
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
    for sc in report["scenarios"].values():
        for summary in sc["contenders"].values():
            summary.pop("cube_files", None)
            for r in summary.get("runs", []):  # the summary keeps the first run's
                for key in ("cube_files", "dates", "item_ids", "asset_dates", "clear_share"):
                    r.pop(key, None)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 days, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="runs per contender (3)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--scenarios", default=None, help=f"from {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--contenders", default=None, help="comma-separated names to keep (default: all)"
    )
    parser.add_argument("--bbox", default=None, help="west,south,east,north (one tile)")
    parser.add_argument("--start", default=None)
    parser.add_argument("--end", default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=60.0,
        help="a contender whose first run takes longer is not repeated",
    )
    parser.add_argument("--output", default=str(RESULTS), help="JSON path ('' for none)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--cog-cache", default=None, help="keep the rendered files here")
    parser.add_argument(
        "--no-server-check",
        dest="server_check",
        action="store_false",
        help="skip the 64-concurrent-requests check of the sandbox server",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.bbox:
        args.bbox = [float(v) for v in args.bbox.split(",")]
    if args.contenders:
        args.contenders = args.contenders.split(",")
        known = {c for cs in SCENARIOS.values() for c in cs}
        unknown = sorted(set(args.contenders) - known)
        if unknown:
            parser.error(f"unknown contenders {unknown}; known: {sorted(known)}")
    if args.scenarios and set(args.scenarios.split(",")) - set(SCENARIOS):
        parser.error(f"unknown scenarios; known: {', '.join(SCENARIOS)}")
    report = run(args)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    text = table(report)
    print("\n" + text)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        report["table"] = text.splitlines()
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
