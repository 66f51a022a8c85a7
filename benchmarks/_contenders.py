"""The contenders of ``bench_read.py``, each run in a fresh child process.

Run by the parent as ``python benchmarks/_contenders.py SPEC.json`` (never by hand). The
spec names the contender, the query (bbox, start, end), the output grid taken from this
package's cube (EPSG, transform, shape) and where to write the result. The child reads
the endpoints and credentials from its environment (``TERRASCOPE_*``), times search +
load + compute, and writes the cube as physical NDVI (float32, NaN = no data; DN * 0.004
- 0.08 for the peers that read DN) plus a small JSON of timings.

Every peer mosaics the tiles of one date the way this package does: first valid pixel
wins, tiles already in the output CRS first, then by datetime and id.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from typing import Any

import numpy as np

COLLECTION = "terrascope-s2-ndvi-v2"
ASSET = "NDVI"
NODATA = 255
SCALE, OFFSET = 0.004, -0.08


# --- shared helpers ---------------------------------------------------------------------


def _creds() -> tuple[str, str]:
    return os.environ["TERRASCOPE_USERNAME"], os.environ["TERRASCOPE_PASSWORD"]


def _physical(dn: np.ndarray) -> np.ndarray:
    out = dn.astype(np.float32) * np.float32(SCALE) + np.float32(OFFSET)
    out[dn == NODATA] = np.nan
    return out


def _item_epsg(item: Any) -> int | None:
    for source in (item.assets[ASSET].extra_fields, item.properties):
        if source.get("proj:epsg") is not None:
            return int(source["proj:epsg"])
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
    return None


def _pystac_search(spec: dict) -> list:
    """What a user of the peers does: pystac-client on the STAC API."""
    import pystac_client

    client = pystac_client.Client.open(os.environ["TERRASCOPE_STAC_URL"])
    search = client.search(
        collections=[COLLECTION],
        bbox=spec["bbox"],
        datetime=f"{spec['start']}/{spec['end']}",
        limit=spec.get("page", 100),
    )
    return list(search.items())


def _by_date(items: list, epsg: int) -> OrderedDict:
    """``{date: [items in mosaic priority order]}``, dates ascending."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item.datetime.date().isoformat(), []).append(item)
    ordered = OrderedDict()
    for day in sorted(groups):
        ordered[day] = sorted(groups[day], key=lambda i: (_item_epsg(i) != epsg, i.datetime, i.id))
    return ordered


def _grid(spec: dict):
    from affine import Affine

    grid = spec["grid"]
    return grid["epsg"], Affine(*grid["transform"]), tuple(grid["shape"])


def _bounds(transform, shape) -> tuple[float, float, float, float]:
    height, width = shape
    left, top = transform.c, transform.f
    return left, top + transform.e * height, left + transform.a * width, top


# --- this package -----------------------------------------------------------------------


def _open_cube(spec: dict, chunks: dict | None):
    """This package's cube of the scenario (a search, no pixel)."""
    import xarray as xr

    return xr.open_dataset(
        list(spec["bbox"]),
        engine="terrascope",
        start=spec["start"],
        end=spec["end"],
        chunks=chunks,
    )


def run_terrascope(spec: dict) -> tuple[np.ndarray, list[str], dict]:

    chunks = {} if spec.get("mode", "dask") == "dask" else None
    t0 = time.perf_counter()
    ds = _open_cube(spec, chunks)
    t_open = time.perf_counter() - t0
    if spec.get("open_only"):
        return (
            None,
            [str(d)[:10] for d in ds.time.values],
            {
                "open_s": t_open,
                "items": lambda: len(ds.terrascope.items),
            },
        )
    da = ds[ASSET].compute() if chunks is not None else ds[ASSET].load()
    cube = np.asarray(da.values, dtype=np.float32)
    dates = [str(d)[:10] for d in ds.time.values]
    # the number of items is bookkeeping, counted after the clock (see main): building
    # ``ds.terrascope.items`` (pystac Items) is no part of reading the cube
    return cube, dates, {"open_s": t_open, "items": lambda: len(ds.terrascope.items)}


def run_pystac_search(spec: dict) -> tuple[None, list[str], dict]:
    items = _pystac_search(spec)
    return None, sorted({i.datetime.date().isoformat() for i in items}), {"items": len(items)}


# --- odc-stac ---------------------------------------------------------------------------


def run_odc(spec: dict) -> tuple[np.ndarray, list[str], dict]:
    import odc.stac
    from odc.geo.geobox import GeoBox

    user, password = _creds()
    epsg, transform, shape = _grid(spec)
    items = _pystac_search(spec)
    # As VITO's notebooks do; the process-wide GDAL configuration is odc-stac's own design.
    odc.stac.configure_rio(
        cloud_defaults=True, GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC"
    )
    # Same grid as this package: the GeoBox built from its transform and shape
    # (odc's crs + resolution + bbox would snap the same 10 m grid, but we leave no doubt).
    geobox = GeoBox(shape, transform, f"EPSG:{epsg}")
    ds = odc.stac.load(items, bands=[ASSET], geobox=geobox, groupby="solar_day", chunks={})
    dn = ds[ASSET].compute().values
    dates = [str(d)[:10] for d in ds.time.values]
    return _physical(dn), dates, {"items": len(items)}


# --- plain stackstac --------------------------------------------------------------------


def run_stackstac(spec: dict) -> tuple[np.ndarray, list[str], dict]:
    import stackstac

    user, password = _creds()
    epsg, transform, shape = _grid(spec)
    items = _pystac_search(spec)
    groups = _by_date(items, epsg)
    ordered = [item for group in groups.values() for item in group]
    env = stackstac.DEFAULT_GDAL_ENV.updated(
        always=dict(GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC")
    )
    stack = stackstac.stack(
        ordered,
        assets=[ASSET],
        epsg=epsg,
        resolution=transform.a,
        bounds=_bounds(transform, shape),
        dtype=np.dtype("uint8"),
        fill_value=np.uint8(NODATA),
        rescale=False,
        sortby_date=False,
        gdal_env=env,
    ).sel(band=ASSET)
    days = np.array([i.datetime.date().isoformat() for i in ordered])
    per_day = [
        stackstac.mosaic(stack[days == day], dim="time", reverse=True, nodata=NODATA)
        for day in groups
    ]
    import dask

    dn = np.stack(dask.compute(*[d.data for d in per_day]))
    return _physical(dn), list(groups), {"items": len(items)}


# --- the per-item rioxarray way --------------------------------------------------------


def run_rioxarray(spec: dict) -> tuple[np.ndarray, list[str], dict]:
    import rasterio
    import rioxarray  # registers .rio
    import xarray as xr
    from rasterio.enums import Resampling
    from rioxarray.exceptions import NoDataInBounds, OneDimensionalRaster

    user, password = _creds()
    epsg, transform, shape = _grid(spec)
    height, width = shape
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    template = xr.DataArray(np.zeros(shape, np.float32), coords={"y": y, "x": x}, dims=("y", "x"))
    template = template.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(transform)
    bounds = _bounds(transform, shape)
    items = _pystac_search(spec)
    groups = _by_date(items, epsg)
    cube = np.full((len(groups), height, width), np.nan, np.float32)
    with rasterio.Env(GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC"):
        for t, group in enumerate(groups.values()):
            mosaic = None
            for item in group:
                da = rioxarray.open_rasterio(item.assets[ASSET].href, masked=True)
                da = da.squeeze("band", drop=True)
                try:
                    pad = 2 * transform.a if da.rio.crs.to_epsg() != epsg else 0
                    box = (bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad)
                    da = da.rio.clip_box(*box, crs=f"EPSG:{epsg}")
                except (NoDataInBounds, OneDimensionalRaster):
                    da.close()
                    continue
                da = da.rio.reproject_match(template, resampling=Resampling.nearest)
                mosaic = da if mosaic is None else mosaic.combine_first(da)
            if mosaic is not None:
                cube[t] = mosaic.values
    valid = ~np.isnan(cube)
    cube[valid] = cube[valid] * np.float32(SCALE) + np.float32(OFFSET)
    return cube, list(groups), {"items": len(items)}


# --- a minimal async-geotiff + obstore reader -------------------------------------------


def run_async(spec: dict) -> tuple[np.ndarray, list[str], dict]:
    """Speed-of-light reference: every file at once, its window in few requests.

    One obstore store per origin with the Basic header; one ``GeoTIFF.open`` (header
    prefetch) and one ``read(window=...)`` per file; tiles of another CRS are warped in
    memory with rasterio (nearest). First valid pixel wins, in the package's priority.
    """
    import asyncio
    import base64
    from urllib.parse import urlsplit

    from async_geotiff import GeoTIFF, Window
    from obstore.store import HTTPStore

    user, password = _creds()
    epsg, transform, shape = _grid(spec)
    height, width = shape
    bounds = _bounds(transform, shape)
    limit = spec.get("connections")
    items = _pystac_search(spec)
    groups = _by_date(items, epsg)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    stores: dict[str, HTTPStore] = {}

    def store_for(href: str) -> tuple[HTTPStore, str]:
        parts = urlsplit(href)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in stores:
            stores[origin] = HTTPStore.from_url(
                origin,
                client_options={
                    "default_headers": {"Authorization": f"Basic {token}"},
                    "allow_http": True,
                    **({"pool_max_idle_per_host": str(limit)} if limit else {}),
                },
            )
        return stores[origin], parts.path.lstrip("/")

    async def one(item, gate) -> np.ndarray | None:
        async with gate:
            store, path = store_for(item.assets[ASSET].href)
            tif = await GeoTIFF.open(path, store=store)
            ft = tif.transform
            same = _item_epsg(item) == epsg
            if same:
                left, bottom, right, top = bounds
            else:
                from rasterio.warp import transform_bounds

                left, bottom, right, top = transform_bounds(
                    f"EPSG:{epsg}", tif.crs, *bounds, densify_pts=21
                )
                pad = 2 * ft.a
                left, bottom, right, top = left - pad, bottom - pad, right + pad, top + pad
            c0 = max(0, int(np.floor((left - ft.c) / ft.a + 1e-9)))
            c1 = min(tif.width, int(np.ceil((right - ft.c) / ft.a - 1e-9)))
            r0 = max(0, int(np.floor((ft.f - top) / -ft.e + 1e-9)))
            r1 = min(tif.height, int(np.ceil((ft.f - bottom) / -ft.e - 1e-9)))
            if c1 <= c0 or r1 <= r0:
                return None
            arr = await tif.read(
                window=Window(col_off=c0, row_off=r0, width=c1 - c0, height=r1 - r0)
            )
            data = arr.data[0]
        full = np.full(shape, NODATA, np.uint8)
        if same:
            dc0 = round((ft.c + c0 * ft.a - bounds[0]) / transform.a)
            dr0 = round((bounds[3] - (ft.f + r0 * ft.e)) / -transform.e)
            sr0, sc0 = max(0, -dr0), max(0, -dc0)
            dr0, dc0 = max(0, dr0), max(0, dc0)
            h = min(height - dr0, data.shape[0] - sr0)
            w = min(width - dc0, data.shape[1] - sc0)
            if h > 0 and w > 0:
                full[dr0 : dr0 + h, dc0 : dc0 + w] = data[sr0 : sr0 + h, sc0 : sc0 + w]
            return full
        from rasterio.warp import Resampling, reproject

        reproject(
            data,
            full,
            src_transform=arr.transform,
            src_crs=tif.crs,
            dst_transform=transform,
            dst_crs=f"EPSG:{epsg}",
            resampling=Resampling.nearest,
            src_nodata=NODATA,
            dst_nodata=NODATA,
        )
        return full

    async def main() -> list:
        gate = asyncio.Semaphore(limit or 10_000)
        flat = [item for group in groups.values() for item in group]
        return await asyncio.gather(*(one(item, gate) for item in flat))

    results = asyncio.run(main())
    dn = np.full((len(groups), height, width), NODATA, np.uint8)
    k = 0
    for t, group in enumerate(groups.values()):
        for _ in group:
            part = results[k]
            k += 1
            if part is not None:
                np.copyto(dn[t], part, where=dn[t] == NODATA)
    return _physical(dn), list(groups), {"items": len(items)}


# --- streaming memory workload ----------------------------------------------------------


def run_memory(spec: dict) -> tuple[np.ndarray, list[str], dict]:
    """``ds.NDVI.mean("time")`` with ``chunks={}``, on threads or a LocalCluster."""

    workers = spec.get("workers", 0)
    client = cluster = None
    if workers:
        import dask
        from distributed import Client, LocalCluster

        environ = spec.get("environ")
        with dask.config.set(
            {} if environ is None else {"distributed.nanny.pre-spawn-environ": environ}
        ):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=spec.get("threads", 1),
                processes=True,
                dashboard_address=None,
                memory_limit=None,
            )
        client = Client(cluster)
        client.run(lambda: None)  # workers up before the clock starts
    try:
        workers_cpu = client.run(cpu_seconds) if client is not None else {}
        own_cpu = cpu_seconds()
        t0 = time.perf_counter()
        ds = _open_cube(spec, {})
        nbytes = int(ds[ASSET].nbytes)
        mean = ds[ASSET].mean("time").compute()
        wall = time.perf_counter() - t0
        extra = {
            "wall_s": wall,
            "decoded_bytes": nbytes,
            "shape": list(ds[ASSET].shape),
            "workers": workers,
            # CPU seconds spent meanwhile: this process (client, scheduler, and the reads
            # themselves without workers) and each worker
            "cpu_s": {"process": cpu_seconds() - own_cpu},
        }
        if client is not None:
            after = client.run(cpu_seconds)
            extra["cpu_s"]["workers"] = [after[k] - workers_cpu[k] for k in after]
            extra["worker_peak_rss_bytes"] = list(client.run(peak_rss).values())
        return np.asarray(mean.values, np.float32)[None], ["mean"], extra
    finally:
        if client is not None:
            client.close()
            cluster.close()


CONTENDERS = {
    "terrascope": run_terrascope,
    "pystac-client": run_pystac_search,
    "odc-stac": run_odc,
    "stackstac": run_stackstac,
    "rioxarray": run_rioxarray,
    "async-geotiff": run_async,
    "memory": run_memory,
}


#: Modules each contender imports before its clock starts (import time is not read time).
#: dask's ``compute`` imports ``distributed`` (when installed) to look for a client: about
#: 0.45 s on this machine, once per process, so every dask user imports it first.
#: ``xarray_terrascope`` imports its engine (``dataset`` -> ``read`` -> ``cog`` -> aiohttp)
#: at the first open, and uvloop at the first read: about 0.25 s, the counterpart of the
#: async reader's async_geotiff and obstore.
IMPORTS = {
    "terrascope": [
        "xarray",
        "dask.array",
        "distributed",
        "rasterio",
        "pystac_client",
        "stackstac",
        "rioxarray",
        "xarray_terrascope",
        "xarray_terrascope.cube.dataset",
        "uvloop",
        "async_geotiff",
        "obstore",
    ],
    "pystac-client": ["pystac_client"],
    "odc-stac": [
        "dask.array",
        "distributed",
        "rasterio",
        "pystac_client",
        "odc.stac",
        "odc.geo.geobox",
    ],
    "stackstac": ["dask.array", "distributed", "rasterio", "pystac_client", "stackstac"],
    "rioxarray": ["xarray", "rasterio", "pystac_client", "rioxarray", "rioxarray.merge"],
    "async-geotiff": ["rasterio", "rasterio.warp", "pystac_client", "async_geotiff", "obstore"],
    "memory": [
        "xarray",
        "dask.array",
        "distributed",
        "xarray_terrascope",
        "xarray_terrascope.cube.dataset",
        "uvloop",
    ],
}


def _preimport(contender: str, imports: dict[str, list[str]] | None = None) -> None:
    import importlib

    names = (IMPORTS if imports is None else imports).get(contender, [])
    for name in names:
        if name == "uvloop" and sys.platform == "win32":
            continue  # the package's only platform-dependent dependency
        importlib.import_module(name)  # every other one comes with the benchmark extras
    if "xarray_terrascope" in names:
        import xarray

        xarray.backends.list_engines()  # loads the entry point's module


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``, bytes).

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a child forked from a big
    parent would report the parent's size.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(spec_path: str) -> None:
    """Run the spec's contender: from this module, or from ``spec["module"]`` (a module
    beside this one with its own ``CONTENDERS`` and ``IMPORTS``, e.g. ``_toc_contenders``).

    A contender returns one cube (saved as ``OUT.npy``) or a mapping of variable name to
    cube (saved as ``OUT.NAME.npy`` each, after the clock like the single cube).
    """
    import importlib

    with open(spec_path) as handle:
        spec = json.load(handle)
    contenders, imports = CONTENDERS, IMPORTS
    if spec.get("module"):
        module = importlib.import_module(spec["module"])
        contenders, imports = module.CONTENDERS, module.IMPORTS
    _preimport(spec["contender"], imports)
    profile_dir = os.environ.get("TERRASCOPE_BENCH_PROFILE")
    profiler = None
    if profile_dir:  # cProfile of the timed part, one file per run (slows the run)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    cube, dates, extra = contenders[spec["contender"]](spec)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    # bookkeeping a contender left to do after the clock (a count, say)
    extra = {key: value() if callable(value) else value for key, value in extra.items()}
    if profiler is not None:
        profiler.disable()
        name = f"{spec['contender']}-{os.path.basename(spec['out'])}.prof"
        profiler.dump_stats(os.path.join(profile_dir, name))
    if isinstance(cube, dict):
        for name, values in cube.items():
            np.save(f"{spec['out']}.{name}.npy", values)
    elif cube is not None:
        np.save(spec["out"] + ".npy", cube)
    with open(spec["out"] + ".json", "w") as handle:
        json.dump(
            {
                "wall_s": wall,
                "child_cpu_s": cpu,
                "dates": dates,
                "peak_rss_bytes": peak_rss(),
                **extra,
            },
            handle,
        )


if __name__ == "__main__":
    main(sys.argv[1])
