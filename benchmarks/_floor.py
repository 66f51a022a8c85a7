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


def _header_bytes(tif: Any) -> int:
    """Bytes before the first tile's data: the IFDs and tile tables of every level."""
    ifds = [tif.ifd] + [o.ifd for o in tif.overviews]
    return min(
        min(off for off, n in zip(ifd.tile_offsets, ifd.tile_byte_counts, strict=True) if n)
        for ifd in ifds
    )


async def _file_floor(path: Path, grid_epsg: int, bounds) -> dict | None:
    from async_geotiff import GeoTIFF
    from obstore.store import LocalStore

    store = LocalStore(str(path.parent))
    tif = await GeoTIFF.open(path.name, store=store)
    win = _window(tif, grid_epsg, bounds)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    header = _header_bytes(tif)
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


def floor_by_asset(
    paths: dict[str, list[Path]], grid_epsg: int, bounds: tuple[float, float, float, float]
) -> dict:
    """:func:`floor` of a cube of several assets (of any resolutions): per asset key (its
    files' own grids give the window and tiles, 10, 20 or 60 m alike) and in total.

    Returns
    -------
    dict
        The totals of :func:`floor` (``files``, ``bytes``, ``header_bytes``, ``requests``,
        ``tiles``) and ``assets``: ``{key: floor of that asset's files}``.
    """
    parts = {key: floor(files, grid_epsg, bounds) for key, files in paths.items()}
    keys = ("files", "bytes", "header_bytes", "requests", "tiles")
    return {**{k: sum(p[k] for p in parts.values()) for k in keys}, "assets": parts}


async def _kept_file_floor(path: Path, grid_transform: Any, kept: np.ndarray) -> dict:
    from async_geotiff import GeoTIFF
    from obstore.store import LocalStore

    tif = await GeoTIFF.open(path.name, store=LocalStore(str(path.parent)))
    ft = tif.transform
    if not (math.isclose(ft.a, grid_transform.a) and math.isclose(ft.e, grid_transform.e)):
        raise ValueError(f"{path.name}: pixel size {ft.a} is not the grid's {grid_transform.a}")
    # file row/column of the grid's first pixel: the lattices must coincide
    row0 = (grid_transform.f - ft.f) / ft.e
    col0 = (grid_transform.c - ft.c) / ft.a
    if abs(row0 - round(row0)) > 1e-6 or abs(col0 - round(col0)) > 1e-6:
        raise ValueError(f"{path.name}: the grid is not on the file's pixel lattice")
    row0, col0 = round(row0), round(col0)
    height, width = kept.shape
    tw, th = tif.tile_width, tif.tile_height
    across = math.ceil(tif.width / tw)
    counts = tif.ifd.tile_byte_counts
    r_lo, r_hi = max(row0, 0), min(row0 + height, tif.height)
    c_lo, c_hi = max(col0, 0), min(col0 + width, tif.width)
    tiles = tile_bytes = runs = 0
    for tr in range(r_lo // th, (r_hi - 1) // th + 1) if r_hi > r_lo else ():
        rows = slice(max(tr * th, r_lo) - row0, min((tr + 1) * th, r_hi) - row0)
        previous = False
        for tc in range(c_lo // tw, (c_hi - 1) // tw + 1) if c_hi > c_lo else ():
            cols = slice(max(tc * tw, c_lo) - col0, min((tc + 1) * tw, c_hi) - col0)
            needed = bool(kept[rows, cols].any())
            if needed:
                tiles += 1
                tile_bytes += counts[tr * across + tc]
                runs += not previous
            previous = needed
    header = _header_bytes(tif) if tiles else 0
    return {
        "files": int(tiles > 0),
        "bytes": header + tile_bytes,
        "header_bytes": header,
        "tile_bytes": tile_bytes,
        "requests": (1 + runs) if tiles else 0,
        "tiles": tiles,
    }


def kept_tile_floor(paths: list[Path], grid_transform: Any, kept: list[np.ndarray]) -> dict:
    """The floor of a reader that skips every tile holding no kept pixel of the window.

    ``kept[i]`` is a boolean ``(height, width)`` array on the output grid (True: a pixel
    the reader must deliver) for ``paths[i]``, a local COG on the same pixel lattice
    (same CRS and pixel size, whole-pixel offset; e.g. a 10 m band under a 10 m cube).
    A file none of whose tiles is needed costs nothing (not even its header); the
    requests count one header read plus one per run of adjacent needed tiles in a tile
    row (a contiguous byte range in a COG).
    """

    async def main():
        return await asyncio.gather(
            *(_kept_file_floor(p, grid_transform, k) for p, k in zip(paths, kept, strict=True))
        )

    per_file = asyncio.run(main())
    keys = ("files", "bytes", "header_bytes", "tile_bytes", "requests", "tiles")
    return {k: sum(f[k] for f in per_file) for k in keys}


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
