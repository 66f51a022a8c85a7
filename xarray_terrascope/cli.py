"""The ``xarray-terrascope`` console script: search, ndvi export, sandbox, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config
from .exceptions import InvalidArgumentError, TerrascopeError

logger = logging.getLogger("xarray_terrascope.cli")

DEMO_START = "2025-04-01"
DEMO_END = "2025-07-31"


def _bbox(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        return [float(p) for p in parts]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"bbox must be west,south,east,north in degrees, got {text!r}"
        ) from err


def _add_query_args(parser: argparse.ArgumentParser, *, bbox_required: bool) -> None:
    parser.add_argument(
        "--bbox", type=_bbox, required=bbox_required, help="west,south,east,north in WGS84 degrees"
    )
    parser.add_argument("--start", help="first date, e.g. 2025-05-01")
    parser.add_argument("--end", help="last date (a date includes that whole day)")
    parser.add_argument("--max-cloud-cover", type=float, help="percent, inclusive")


def _cmd_search(args: argparse.Namespace) -> int:
    from .search import search

    items = search(
        args.collection,
        args.bbox,
        args.start,
        args.end,
        max_cloud_cover=args.max_cloud_cover,
        limit=args.limit,
    )
    print(f"{'datetime':<22} {'cloud %':>7}  id")
    for item in items:
        cloud = item.properties.get("eo:cloud_cover")
        cloud_text = f"{cloud:7.2f}" if cloud is not None else "      -"
        print(f"{item.datetime:%Y-%m-%dT%H:%M:%SZ}  {cloud_text}  {item.id}")
    print(f"{len(items)} item(s)")
    return 0


def _write(da, path: Path) -> None:
    from dask.diagnostics import ProgressBar

    suffix = "".join(path.suffixes[-1:]).lower()
    with ProgressBar(out=sys.stderr):
        if suffix in (".nc", ".nc4", ".netcdf"):
            da.to_netcdf(path)
        elif suffix == ".zarr":
            da.to_dataset().to_zarr(path, mode="w")
        elif suffix in (".tif", ".tiff"):
            da.rio.to_raster(path, tiled=True, compress="DEFLATE")
        else:
            raise InvalidArgumentError(f"--out must end in .nc, .zarr or .tif (got {path.name!r})")


def _cmd_ndvi(args: argparse.Namespace) -> int:
    from . import auth
    from .dataset import open_cube

    auth.login(validate=True)
    ds = open_cube(args.bbox, start=args.start, end=args.end, max_cloud_cover=args.max_cloud_cover)
    ndvi = ds.chunk({"time": 1, "y": 1024, "x": 1024}).terrascope.ndvi()
    print(f"{len(ds.time)} date(s), {ds.sizes['y']} x {ds.sizes['x']} px, writing {args.out}")
    _write(ndvi, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def _print_exports(sandbox) -> None:
    for key, value in sandbox.env.items():
        print(f"export {key}={value}")


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from .testing import Sandbox

    sandbox = Sandbox(seed=args.seed, latency=args.latency, cache_dir=args.cache_dir).start()
    print("# Terrascope sandbox running on loopback; paste these lines in another shell:")
    _print_exports(sandbox)
    print("# Ctrl-C stops it.", flush=True)
    sandbox.serve_forever()  # returns after Ctrl-C, with the servers stopped
    return 0


def run_demo(out_dir: Path, *, seed: int = 0, start: str = DEMO_START, end: str = DEMO_END) -> dict:
    """The main job on the embedded sandbox; returns what it wrote and measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import xarray as xr

    from . import auth
    from .plot import save_html
    from .testing import SAMPLE_FIELD, Sandbox

    out_dir.mkdir(parents=True, exist_ok=True)
    with Sandbox(seed=seed) as sandbox:
        saved = {
            k: os.environ.get(k)
            for k in (config.ENV_STAC_URL, config.ENV_DOWNLOAD_URL, config.ENV_DOWNLOAD_HOSTS)
        }
        # Endpoints only: the credentials go to login(), never into the environment.
        os.environ[config.ENV_STAC_URL] = sandbox.stac_url
        os.environ[config.ENV_DOWNLOAD_URL] = sandbox.download_url
        os.environ[config.ENV_DOWNLOAD_HOSTS] = sandbox.download_host
        try:
            creds = auth.login(sandbox.username, sandbox.password)
            print(f"sandbox STAC API {sandbox.stac_url}, logged in as {creds.username}")
            ds = xr.open_dataset(
                list(SAMPLE_FIELD), engine="terrascope", start=start, end=end, chunks={}
            )
            # One read of the cube: the table, the curve and the page all use these pixels.
            ndvi = ds.terrascope.ndvi().load()
            print(
                f"field {list(SAMPLE_FIELD)}: {len(ds.time)} date(s) from {start} to {end}, "
                f"{ds.sizes['y']} x {ds.sizes['x']} px in {ds.rio.crs}"
            )
            valid = ndvi.notnull().mean(["x", "y"])
            mean = ndvi.mean(["x", "y"])
            print(f"{'date':<12}{'valid':>8}{'mean NDVI':>11}")
            for day, v, m in zip(ds.terrascope.dates(), valid.values, mean.values, strict=True):
                mean_text = f"{m:11.3f}" if v > 0 else f"{'-':>11}"
                print(f"{day:<12}{v:8.1%}{mean_text}")
            fig, ax = plt.subplots(figsize=(8, 4))
            usable = valid > 0.5
            ax.plot(mean.time[usable], mean[usable], "o-", color="tab:green")
            ax.set(
                title="Mean NDVI over the sample field (dates with > 50 % valid pixels)",
                ylabel="NDVI",
                xlabel="date",
            )
            fig.autofmt_xdate()
            png = out_dir / "ndvi_mean.png"
            fig.savefig(png, dpi=100)
            plt.close(fig)
            # The page embeds every frame: keep it small with the usable dates at 20 m.
            page = ndvi.isel(time=np.flatnonzero(usable.values))
            page = page.coarsen(x=2, y=2, boundary="trim").mean().astype("float32")
            html = save_html(
                page.terrascope.plot_time_slider(title="NDVI (20 m)"),
                out_dir / "ndvi_time_slider.html",
            )
            print(f"wrote {png} and {html}")
            requests_made = len(sandbox.log.records())
            return {"png": png, "html": html, "dates": len(ds.time), "requests": requests_made}
        finally:
            auth.logout()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.out), seed=args.seed)
    print(f"{result['dates']} dates; the download server logged {result['requests']} requests")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the console script."""
    parser = argparse.ArgumentParser(
        prog="xarray-terrascope",
        description="Terrascope Sentinel products as xarray data: search, export, sandbox.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a collection and list the items")
    p.add_argument("collection", nargs="?", default=config.DEFAULT_COLLECTION)
    _add_query_args(p, bbox_required=False)
    p.add_argument("--limit", type=int)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("ndvi", help="export an NDVI cube to NetCDF, Zarr or GeoTIFF")
    _add_query_args(p, bbox_required=True)
    p.add_argument("--out", required=True, help="output path ending in .nc, .zarr or .tif")
    p.set_defaults(func=_cmd_ndvi)

    p = sub.add_parser("sandbox", help="run the local Terrascope stand-in until Ctrl-C")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added per download")
    p.add_argument("--cache-dir", help="keep generated COGs here between runs")
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser("demo", help="the main job on the embedded sandbox")
    p.add_argument("--out", default="demo-output", help="directory for the PNG and HTML")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xarray-terrascope``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TerrascopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
