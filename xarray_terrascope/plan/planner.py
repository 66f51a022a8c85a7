"""STAC items -> a plan for a lazy, time-indexed cube, and the reads that fill it.

This is the only module that imports stackstac (0.5.1, pinned, unmaintained). From it
we use :func:`stackstac.prepare.prepare_items` (output grid and per-asset bounds) and
:class:`stackstac.rio_reader.AutoParallelRioReader` (thread-safe GDAL reads through a
``WarpedVRT``, reprojecting tiles of other UTM zones), with stackstac's default GDAL
options plus the scoped credentials of :mod:`xarray_terrascope.auth`.

We do *not* use stackstac's dask graph: it pickles the GDAL options, credentials
included, into every task. A :class:`CubePlan` holds only what is needed to read (URLs,
grid, per-date item groups, an opaque credentials handle) and is safe to pickle.
:mod:`xarray_terrascope.engine.read` runs the reads (a per-process pool of I/O threads and a
cache of open readers, per-date mosaics).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pystac
from affine import Affine
from rasterio.enums import Resampling

from xarray_terrascope import auth, config
from xarray_terrascope.catalog.assets import AssetMeta, asset_meta
from xarray_terrascope.catalog.collections import Packing
from xarray_terrascope.catalog.items import item_day, item_moment
from xarray_terrascope.exceptions import InvalidArgumentError, NoItemsFoundError
from xarray_terrascope.plan.grids import (
    NativeGrid,
    OutputGrid,
    asset_epsg,
    check_resolution,
    epsg_of,
    native_grid,
    utm_epsg,
)
from xarray_terrascope.plan.resampling import (
    DEFAULT_RESAMPLING,
    asset_resamplings,
    check_resampling,
    method,
)

if TYPE_CHECKING:  # stackstac ships no types: to mypy these are Any
    from stackstac.raster_spec import RasterSpec
    from stackstac.rio_reader import AutoParallelRioReader

__all__ = ["CubePlan", "make_reader", "plan_cube"]

logger = logging.getLogger(__name__)


def _check_hrefs(items: Sequence[dict[str, Any]], assets: Sequence[str]) -> None:
    """Refuse, before any request, hrefs that hide where they go (user info, backslashes)."""
    for item in items:
        for key in assets:
            href = (item["assets"].get(key) or {}).get("href")
            if not isinstance(href, str):
                continue
            web = href.split(":", 1)[0].lower() in ("http", "https")
            if "\\" in href or (web and config.origin(href) is None):
                raise InvalidArgumentError(
                    f"Asset {key!r} of item {item['id']!r} has an href that is not a plain "
                    f"URL (user information, a backslash or a bad port): {href[:120]!r}. "
                    "Such hrefs are refused: they could send requests, or credentials, "
                    "somewhere else than they seem to."
                )


@dataclass(frozen=True)
class CubePlan:
    """Everything needed to read a cube; picklable and free of secrets.

    Attributes
    ----------
    epsg, bounds, resolution
        The output grid (``bounds`` in the output CRS, snapped to ``resolution``).
    assets
        Asset keys, one variable each.
    item_ids
        Id of each planned item (the items that intersect the bbox, in plan order).
    urls
        ``urls[i][a]``: href of asset ``a`` of item ``i`` (None when the item lacks it).
    item_bounds
        ``item_bounds[i][a]``: that asset's footprint in the output CRS.
    groups
        Item indices per time step, in mosaic priority order (first valid pixel wins).
    times
        One timestamp per group (the earliest acquisition of that date).
    packing
        How each asset stores its values (:class:`~xarray_terrascope.catalog.collections.Packing`).
    send_credentials
        Per URL: whether its host may receive credentials (decided at open time).
    credentials_handle
        Opaque handle that :func:`xarray_terrascope.auth.resolve` turns into credentials.
    resampling
        Resampling of the tiles that must be warped, unless ``asset_resampling`` says
        otherwise for an asset.
    native
        ``native[i][a]``: that asset's own pixel grid (:class:`NativeGrid`) from its
        ``proj:*`` metadata, or None when unknown.
    local_hrefs
        ``local_hrefs[i][a]``: the asset's alternate ``local`` href, or None.
    prefer_local
        Read from ``local_hrefs`` when the file exists on this machine (None: when it
        exists), never (False), or always (True: a missing local file is an error).
    meta
        What the items say of each asset (:class:`~xarray_terrascope.catalog.assets.AssetMeta`).
    asset_resampling
        Per asset, the resampling of its tiles that must be warped (empty: ``resampling``).
    """

    epsg: int
    bounds: tuple[float, float, float, float]
    resolution: float
    assets: tuple[str, ...]
    item_ids: tuple[str, ...]
    urls: tuple[tuple[str | None, ...], ...]
    item_bounds: tuple[tuple[tuple[float, float, float, float] | None, ...], ...]
    groups: tuple[tuple[int, ...], ...]
    times: tuple[pd.Timestamp, ...]
    packing: tuple[Packing, ...]
    send_credentials: dict[str, bool]
    credentials_handle: str
    resampling: str = DEFAULT_RESAMPLING
    native: tuple[tuple[NativeGrid | None, ...], ...] = ()
    local_hrefs: tuple[tuple[str | None, ...], ...] = ()
    prefer_local: bool | None = None
    meta: tuple[AssetMeta, ...] = ()
    asset_resampling: tuple[str, ...] = ()

    def resampling_of(self, asset_index: int) -> str:
        """The resampling of asset ``asset_index``'s tiles that must be warped."""
        if self.asset_resampling:
            return self.asset_resampling[asset_index]
        return self.resampling

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the output grid."""
        height, width = self._spec().shape
        return int(height), int(width)

    @property
    def output_grid(self) -> OutputGrid:
        """The cube's grid as a warp sees it."""
        west, _south, _east, north = self.bounds
        return OutputGrid(self.epsg, self.resolution, west, north)

    @property
    def transform(self) -> Affine:
        """Affine transform of the output grid."""
        transform: Affine = self._spec().transform
        return transform

    def _spec(self) -> RasterSpec:
        from stackstac.raster_spec import RasterSpec

        return RasterSpec(self.epsg, self.bounds, (self.resolution, self.resolution))

    def pixel_offset(self, item_index: int, asset_index: int) -> tuple[int, int] | None:
        """``(rows, cols)`` such that output pixel ``(r, c)`` is the asset's own file pixel
        ``(r + rows, c + cols)``, when the file's pixels are output pixels (same EPSG and
        resolution, a whole-pixel offset: the usual Terrascope case); None otherwise, or
        when the asset's grid is unknown."""
        native = self.native[item_index][asset_index] if self.native else None
        if native is None:
            return None
        epsg, (a, b, c, d, e, f) = native.epsg, native.transform
        res = self.resolution
        tol = 1e-9 * res
        if epsg != self.epsg or b or d or abs(a - res) > tol or abs(e + res) > tol:
            return None
        col_off = (self.bounds[0] - c) / res
        row_off = (f - self.bounds[3]) / res
        if abs(col_off - round(col_off)) > 1e-6 or abs(row_off - round(row_off)) > 1e-6:
            return None
        return round(row_off), round(col_off)

    def grid_ratio(self, item_index: int, asset_index: int) -> tuple[int, int, int] | None:
        """``(factor, rows, cols)`` when the asset's pixels tile the output grid's at a
        whole ratio, in the same CRS, its pixel edges on each other's: ``factor`` > 1,
        each output pixel covers ``factor`` x ``factor`` file pixels, output pixel
        ``(r, c)`` starting at file pixel ``(r * factor + rows, c * factor + cols)``;
        ``factor`` < -1, each file pixel covers ``-factor`` x ``-factor`` output pixels
        (``rows``, ``cols``: 0). None otherwise (or when the grid is unknown).

        Examples
        --------
        >>> plan = CubePlan(32631, (600000.0, 5699880.0, 600120.0, 5700000.0), 60.0, ("B04",),
        ...     ("a",), (("u",),), ((None,),), ((0,),), (pd.Timestamp(0),), (), {}, "h",
        ...     native=((NativeGrid(32631, (10.0, 0, 599980.0, 0, -10.0, 5700000.0), (9, 9)),),))
        >>> plan.grid_ratio(0, 0)
        (6, 0, 2)
        """
        native = self.native[item_index][asset_index] if self.native else None
        if native is None:
            return None
        epsg, (a, b, c, d, e, f) = native.epsg, native.transform
        if epsg != self.epsg or b or d or a <= 0 or abs(a + e) > 1e-9 * a:
            return None
        res = self.resolution
        coarser = res >= a
        factor = res / a if coarser else a / res
        if abs(factor - round(factor)) > 1e-9 * factor or round(factor) < 2:
            return None
        unit = a if coarser else res  # the finer pixel size: offsets in it must be whole
        col_off = (self.bounds[0] - c) / unit
        row_off = (f - self.bounds[3]) / unit
        if abs(col_off - round(col_off)) > 1e-6 or abs(row_off - round(row_off)) > 1e-6:
            return None
        if coarser:
            return round(factor), round(row_off), round(col_off)
        return -round(factor), 0, 0  # every file pixel edge is an output pixel edge

    def x_coords(self) -> npt.NDArray[np.float64]:
        """Pixel-centre x coordinates."""
        west = self.bounds[0]
        return west + (np.arange(self.shape[1], dtype=np.float64) + 0.5) * self.resolution

    def y_coords(self) -> npt.NDArray[np.float64]:
        """Pixel-centre y coordinates (north to south)."""
        north = self.bounds[3]
        return north - (np.arange(self.shape[0], dtype=np.float64) + 0.5) * self.resolution


def _plain(items: Sequence[pystac.Item | dict[str, Any]]) -> list[dict[str, Any]]:
    plain: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, pystac.Item):
            plain.append(item.to_dict(include_self_link=False, transform_hrefs=False))
        elif isinstance(item, dict):
            plain.append(item)
        else:
            raise InvalidArgumentError(
                f"items must be pystac.Item objects or STAC item dicts, got {type(item).__name__}"
            )
    return plain


def _with_epsg(item: dict[str, Any], assets: Sequence[str]) -> dict[str, Any]:
    """Copy of ``item`` whose assets carry ``proj:epsg`` (stackstac reads nothing else)."""
    out = dict(item)
    out["assets"] = dict(item["assets"])
    for key in assets:
        asset = out["assets"].get(key)
        if asset is not None and asset.get("proj:epsg") is None:
            epsg = asset_epsg(item, asset)
            if epsg is not None:
                out["assets"][key] = dict(asset, **{"proj:epsg": epsg})
    return out


def _native_resolution(
    items: Sequence[dict[str, Any]], assets: Sequence[str], epsg: int
) -> float | None:
    found: list[float] = []
    for item in items:
        for key in assets:
            asset = item["assets"].get(key)
            transform = (asset or {}).get("proj:transform") or item["properties"].get(
                "proj:transform"
            )
            if asset is not None and transform and asset_epsg(item, asset) == epsg:
                found.append(abs(float(transform[0])))
    return min(found) if found else None


def plan_cube(
    items: Sequence[pystac.Item | dict[str, Any]],
    *,
    assets: Sequence[str],
    bbox: tuple[float, float, float, float] | None,
    crs: Any = None,
    resolution: float | None = None,
    collection: str | None = None,
    credentials_handle: str = auth.DEFAULT_HANDLE,
    resampling: str | Mapping[str, str] = DEFAULT_RESAMPLING,
    prefer_local: bool | None = None,
) -> CubePlan:
    """Plan the cube of ``items``: grid, per-date mosaic groups, decoding. No pixel is read.

    Parameters
    ----------
    items
        STAC items (any order; same-date items become one time step).
    assets
        Asset keys to stack.
    bbox
        WGS84 ``(west, south, east, north)`` to clip to; None: the items' union.
    crs
        Output CRS; None: the UTM zone of the bbox centre. Tiles in other CRSs are
        reprojected, never dropped.
    resolution
        Output pixel size in CRS units; None: the native resolution of the items.
    resampling
        How tiles that are not pixels of the output grid are resampled: one method for
        every asset, or ``{asset: method}`` (assets left out: ``"nearest"``). Class assets
        (scene classification, masks) are resampled with ``"nearest"`` unless named.
    prefer_local
        See :class:`CubePlan`.
    """
    from stackstac.prepare import prepare_items

    check_resampling(resampling)
    plain = [_with_epsg(item, assets) for item in _plain(items)]
    if not plain:
        raise InvalidArgumentError("No items to stack")
    _check_hrefs(plain, assets)
    if bbox is None:
        boxes = np.array([item["bbox"] for item in plain], dtype=float)
        bbox = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    epsg = (
        epsg_of(crs)
        if crs is not None
        else utm_epsg((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    )
    resolution = check_resolution(resolution)
    if resolution is None:
        resolution = _native_resolution(plain, assets, epsg)
    missing = [key for key in assets if not any(key in item["assets"] for item in plain)]
    if missing:
        available = sorted({key for item in plain for key in item["assets"]})
        raise InvalidArgumentError(
            f"assets {missing} are in none of the items; available: {', '.join(available)}"
        )

    # stackstac leaves out the items (and assets) that miss the bbox: everything below
    # indexes the list it returns, never the list given.
    with warnings.catch_warnings():
        # stackstac 0.5.1 (pinned) applies transforms with `*`: affine 3 warns, once per
        # item and corner, in every user's test session (geom_utils.bounds_from_affine)
        warnings.filterwarnings(
            "ignore",
            message="Use `@` matmul",
            category=PendingDeprecationWarning,
            module=r"stackstac\.",
        )
        asset_table, spec, kept_assets, plain = prepare_items(
            plain,
            assets=list(assets),
            epsg=epsg,
            resolution=resolution,
            bounds_latlon=bbox,
            snap_bounds=True,
            rescale=False,
            dtype=np.dtype("float32"),
        )
    if not plain:
        raise NoItemsFoundError(
            f"None of the {len(items)} item(s) intersects the bbox {[float(v) for v in bbox]}; "
            "give a bbox inside their footprints, or leave bbox out to use their extent."
        )
    if list(kept_assets) != list(assets):
        lost = [key for key in assets if key not in kept_assets]
        raise InvalidArgumentError(
            f"assets {lost} are in none of the items that intersect the bbox; "
            f"leave them out of assets= or widen the bbox"
        )

    meta = tuple(asset_meta(collection, key, plain) for key in assets)
    methods = asset_resamplings(resampling, meta)

    # Mosaic priority within a date: tiles already in the output CRS first (no resampling),
    # then by time and id, so the result does not depend on the search order.
    def priority(index: int) -> tuple[bool, datetime, str]:
        item = plain[index]
        first_asset = next(item["assets"][k] for k in assets if k in item["assets"])
        return (asset_epsg(item, first_asset) != epsg, item_moment(item), item["id"])

    days: dict[Any, list[int]] = {}
    for index, item in enumerate(plain):
        days.setdefault(item_day(item), []).append(index)
    groups = tuple(tuple(sorted(days[day], key=priority)) for day in sorted(days))
    times = tuple(
        pd.Timestamp(min(item_moment(plain[i]) for i in group)).tz_convert(None) for group in groups
    )
    urls = tuple(tuple(entry["url"] for entry in row) for row in asset_table)
    item_bounds = tuple(
        tuple(_four(entry["bounds"]) if entry["url"] else None for entry in row)
        for row in asset_table
    )
    send = {url: auth.sends_credentials(url) for row in urls for url in row if url}
    return CubePlan(
        epsg=int(spec.epsg),
        bounds=_four(spec.bounds),
        resolution=float(spec.resolutions_xy[0]),
        assets=tuple(assets),
        item_ids=tuple(str(item["id"]) for item in plain),
        urls=urls,
        item_bounds=item_bounds,
        groups=groups,
        times=times,
        packing=tuple(m.packing for m in meta),
        send_credentials=send,
        credentials_handle=credentials_handle,
        resampling=DEFAULT_RESAMPLING
        if isinstance(resampling, Mapping)
        else method(resampling, "resampling"),
        native=tuple(tuple(native_grid(item, key) for key in assets) for item in plain),
        local_hrefs=tuple(tuple(_local_href(item, key) for key in assets) for item in plain),
        prefer_local=prefer_local,
        meta=meta,
        asset_resampling=methods,
    )


def _four(values: Any) -> tuple[float, float, float, float]:
    """Four numbers (bounds) as floats."""
    west, south, east, north = (float(v) for v in values)
    return west, south, east, north


def _local_href(item: dict[str, Any], key: str) -> str | None:
    asset = item["assets"].get(key) or {}
    local = (asset.get("alternate") or {}).get("local") or {}
    href = local.get("href")
    return str(href) if href else None


def make_reader(
    plan: CubePlan, url: str, asset_index: int, gdal_options: dict[str, str]
) -> AutoParallelRioReader:
    """A stackstac reader of one asset file onto the plan's grid, raw values, no rescaling.

    ``gdal_options`` are layered over stackstac's defaults (``updated`` keeps them:
    ``GDAL_DISABLE_READDIR_ON_OPEN``, ``VSI_CACHE`` on open, multi-range reads). Errors are
    never turned into no data.
    """
    from stackstac.raster_spec import RasterSpec
    from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader

    spec = plan.packing[asset_index]
    # stackstac enters `gdal_env.open_vrt` inside `gdal_env.open`. Without options of its
    # own, `open_vrt` is the very same rasterio.Env object, and re-entering one Env object
    # makes its exit restore instead of clear: the thread would keep these options, the
    # password included, for every later read of any host. Its own copy of the `open`
    # options makes it a distinct Env (stackstac 0.5.1's private `_open`, pinned).
    env = DEFAULT_GDAL_ENV.updated(always=gdal_options, open_vrt=dict(DEFAULT_GDAL_ENV._open))
    return AutoParallelRioReader(
        url=url,
        spec=RasterSpec(plan.epsg, plan.bounds, (plan.resolution, plan.resolution)),
        resampling=Resampling[plan.resampling_of(asset_index)],
        dtype=np.dtype(spec.dtype),
        fill_value=spec.fill_value,
        scale_offset=(1, 0),
        gdal_env=env,
        errors_as_nodata=(),
    )
