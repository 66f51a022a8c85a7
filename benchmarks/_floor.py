"""The read floor of a cube, and a check that the sandbox server is not the bottleneck.

The floor of a scenario is what any reader must fetch: for every file whose raster
intersects the output grid, its header (every byte before the first tile's data, the
IFDs and tile tables of all levels of a COG) plus the full-resolution tiles the window
touches; requests: one for the header plus one per tile row touched (a row of adjacent
tiles is one contiguous range in a COG). Tile offsets and byte counts are read from the
sandbox's own files on disk with async-geotiff and obstore's ``LocalStore``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def _window(tif: Any, grid_epsg: int, bounds: tuple[float, float, float, float]):
    """Pixel rows/cols of ``tif`` covering ``bounds`` (in ``grid_epsg``), or None."""
    ft = tif.transform
    left, bottom, right, top = bounds
    if tif.crs.to_epsg() != grid_epsg:
        from rasterio.warp import transform_bounds

        left, bottom, right, top = transform_bounds(
            f"EPSG:{grid_epsg}", tif.crs, *bounds, densify_pts=21
        )
    c0 = max(0, math.floor((left - ft.c) / ft.a + 1e-9))
    c1 = min(tif.width, math.ceil((right - ft.c) / ft.a - 1e-9))
    r0 = max(0, math.floor((ft.f - top) / -ft.e + 1e-9))
    r1 = min(tif.height, math.ceil((ft.f - bottom) / -ft.e - 1e-9))
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1


async def _file_floor(path: Path, grid_epsg: int, bounds) -> dict | None:
    from async_geotiff import GeoTIFF
    from obstore.store import LocalStore

    store = LocalStore(str(path.parent))
    tif = await GeoTIFF.open(path.name, store=store)
    win = _window(tif, grid_epsg, bounds)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    ifds = [tif.ifd] + [o.ifd for o in tif.overviews]
    header = min(
        min(off for off, n in zip(ifd.tile_offsets, ifd.tile_byte_counts, strict=True) if n)
        for ifd in ifds
    )
    tw, th = tif.tile_width, tif.tile_height
    across = math.ceil(tif.width / tw)
    rows = range(r0 // th, (r1 - 1) // th + 1)
    cols = range(c0 // tw, (c1 - 1) // tw + 1)
    counts = tif.ifd.tile_byte_counts
    tiles = sum(counts[r * across + c] for r in rows for c in cols)
    return {
        "header_bytes": header,
        "tile_bytes": tiles,
        "tile_rows": len(rows),
        "tiles": len(rows) * len(cols),
    }


def floor(paths: list[Path], grid_epsg: int, bounds) -> dict:
    """Bytes and requests floor over ``paths`` (local COGs) for a grid's bounds."""

    async def main():
        return await asyncio.gather(*(_file_floor(p, grid_epsg, bounds) for p in paths))

    per_file = [f for f in asyncio.run(main()) if f is not None]
    return {
        "files": len(per_file),
        "bytes": sum(f["header_bytes"] + f["tile_bytes"] for f in per_file),
        "header_bytes": sum(f["header_bytes"] for f in per_file),
        "requests": sum(1 + f["tile_rows"] for f in per_file),
        "tiles": sum(f["tiles"] for f in per_file),
    }


def server_concurrency(
    url: str, user: str, password: str, latency: float, n: int = 64, *, keepalive: bool = False
) -> dict:
    """Time ``n`` concurrent range GETs (aiohttp, one connection each) against one file.

    A server that handles them in parallel finishes in about one latency period plus
    transfer; a serial one would need ``n`` periods.
    """
    import aiohttp

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}

    async def main() -> dict:
        conn = aiohttp.TCPConnector(limit=0, force_close=not keepalive)
        async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

            async def get(i: int) -> int:
                start = (i % 32) * 1024
                rng = {"Range": f"bytes={start}-{start + 16383}"}
                async with session.get(url, headers=rng) as resp:
                    await resp.read()
                    return resp.status

            t0 = time.perf_counter()
            await get(0)
            single = time.perf_counter() - t0
            if keepalive:  # open n connections first, then time n requests over them
                await asyncio.gather(*(get(i) for i in range(n)))
            t0 = time.perf_counter()
            statuses = await asyncio.gather(*(get(i) for i in range(n)))
            wall = time.perf_counter() - t0
        return {
            "concurrent_requests": n,
            "keepalive": keepalive,
            "latency_s": latency,
            "single_request_s": round(single, 4),
            "wall_s": round(wall, 4),
            "latency_periods": round(wall / latency, 2) if latency else None,
            "statuses": sorted(set(statuses)),
        }

    return asyncio.run(main())


def tile_floor(path: Any, geometries: Any, *, all_touched: bool = False) -> dict[str, int]:
    """The full-resolution tiles of a local COG that hold pixels of the geometries.

    The yardstick of the planning: a reader that fetches exactly these tiles (plus the
    file's header) reads the least any tiled reader can.

    Parameters
    ----------
    path : str or os.PathLike
        A tiled GeoTIFF on disk.
    geometries : geopandas.GeoSeries
        With a CRS; reprojected to the file's.
    all_touched : bool
        Rasterisation rule, as in :func:`rasterio.features.geometry_mask`.

    Returns
    -------
    dict
        ``tiles`` (count) and ``tile_bytes`` (sum of their ``TileByteCounts``).

    Examples
    --------
    >>> tile_floor("S2B_..._NDVI_10M_V210.tif", parcels.geometry)  # doctest: +SKIP
    {'tiles': 12, 'tile_bytes': 401234}
    """
    import rasterio
    from rasterio import features

    with rasterio.open(path) as src:
        shapes = [g for g in geometries.to_crs(src.crs) if g is not None and not g.is_empty]
        if not shapes:
            return {"tiles": 0, "tile_bytes": 0}
        mask = features.geometry_mask(
            shapes,
            out_shape=src.shape,
            transform=src.transform,
            invert=True,
            all_touched=all_touched,
        )
        th, tw = src.block_shapes[0]
        rows, cols = np.nonzero(mask)
        tiles = set(zip((rows // th).tolist(), (cols // tw).tolist(), strict=True))
        size = 0
        for r, c in tiles:
            size += int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0)
    return {"tiles": len(tiles), "tile_bytes": size}
