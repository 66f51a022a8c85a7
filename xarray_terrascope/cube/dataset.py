"""Building the xarray Dataset: search -> plan -> lazy variables (decoded in the read) -> CRS.

The variables are backed by :class:`CubeArray`, an xarray ``BackendArray``, so xarray
itself honours both ``chunks={}`` (dask arrays on the stacking chunk grid, through
``encoding["preferred_chunks"]``) and ``chunks=None`` (lazy until ``.load()``, which
returns numpy).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor used below)
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from xarray_terrascope import auth
from xarray_terrascope.auth import cluster, signin, state
from xarray_terrascope.catalog.assets import asset_order
from xarray_terrascope.catalog.collections import COLLECTIONS, DEFAULT_COLLECTION
from xarray_terrascope.catalog.hints import swapped_bbox_hint
from xarray_terrascope.catalog.items import is_items
from xarray_terrascope.catalog.search import check_bbox, search_dicts
from xarray_terrascope.cube import item_store
from xarray_terrascope.cube.clouds import DEFAULT_DILATION, dilation_pixels
from xarray_terrascope.cube.decode import CF_KEYS, Decoder
from xarray_terrascope.cube.masking import (
    MaskSpec,
    check_mask_arguments,
    clear_shares,
    dropped_pixels,
    find_mask_asset,
)
from xarray_terrascope.engine.read import read_window
from xarray_terrascope.exceptions import (
    AuthenticationError,
    InvalidArgumentError,
    NoItemsFoundError,
)
from xarray_terrascope.options import get_options
from xarray_terrascope.plan.chunks import (
    DEFAULT_CHUNKSIZE,
    dates_per_partition,
    file_grid_phase,
    spatial_chunks,
)
from xarray_terrascope.plan.planner import CubePlan, plan_cube
from xarray_terrascope.plan.resampling import DEFAULT_RESAMPLING, check_resampling

__all__ = ["CubeArray", "open_cube"]

logger = logging.getLogger(__name__)


class CubeArray(BackendArray):
    """Lazy ``(time, y, x)`` array of one asset; reads on indexing only.

    Gives the stored values, or with a :class:`~xarray_terrascope.cube.decode.Decoder` the
    physical ones (decoded inside the read, in one new array per window). Pickles as its
    :class:`~xarray_terrascope.plan.planner.CubePlan` (URLs, grid and an opaque credentials
    handle, never a secret) and the decoder's CF attributes.

    ``credentials``, the explicit credentials the cube was opened with, are held in
    memory only (never pickled): they keep the plan's handle registered in this process
    (see :func:`~xarray_terrascope.auth.credentials_handle`) as long as the cube is open.
    Pickled by a ``dask.distributed`` client for its scheduler, the array has the
    credentials its reads need sent to that cluster, and carries the stamp of that
    credential state, for which the workers wait (see :mod:`xarray_terrascope.auth.cluster`).
    """

    _credentials: auth.AnyCredentials | None = None
    mask: MaskSpec | None = None

    def __init__(
        self,
        plan: CubePlan,
        asset_index: int,
        decoder: Decoder | None = None,
        credentials: auth.AnyCredentials | None = None,
        mask: MaskSpec | None = None,
    ) -> None:
        self.plan = plan
        self.asset_index = asset_index
        self.decoder = decoder
        self.mask = mask
        self.shape = (len(plan.groups), *plan.shape)
        stored = np.dtype(plan.packing[asset_index].dtype)
        self.dtype = decoder.dtype if decoder is not None else stored
        if credentials is not None:
            self._credentials = credentials

    def __getstate__(self) -> dict[str, Any]:
        pickled = {k: v for k, v in self.__dict__.items() if k != "_credentials"}
        stamp = cluster.share_for_graph(self.plan.credentials_handle)
        if stamp is not None:
            # kept when unpickled: the scheduler pickles the tasks again for the workers
            pickled["_credentials_stamp"] = stamp
        return pickled

    def __setstate__(self, pickled: dict[str, Any]) -> None:
        self.__dict__.update(pickled)
        # received in a graph: read with the credentials its sender shared (stamp), or,
        # with none, this process's own only, never another client's
        self._from_graph = True
        stamp = pickled.get("_credentials_stamp")
        if stamp is not None:
            state._expect(tuple(stamp))

    def __deepcopy__(self, memo: dict) -> CubeArray:
        # a copy keeps the credentials alive, as the original does (a pickle never does)
        clone = CubeArray.__new__(CubeArray)
        clone.__dict__.update(
            copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "_credentials"}, memo)
        )
        if self._credentials is not None:
            clone._credentials = self._credentials
        return clone

    def __copy__(self) -> CubeArray:
        clone = CubeArray.__new__(CubeArray)
        clone.__dict__.update(self.__dict__)
        return clone

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        stamp = self.__dict__.get("_credentials_stamp")
        from_graph = self.__dict__.get("_from_graph", False)
        try:
            with state.reading_for(tuple(stamp) if stamp else None, from_graph=from_graph):
                return indexing.explicit_indexing_adapter(
                    key, self.shape, indexing.IndexingSupport.BASIC, self._getitem
                )
        except AuthenticationError as err:
            if not state._in_dask_worker():
                raise
            # In a dask worker, a credential error (none after logout(), or refused) says
            # what to do in its message; the package's frames below and the errors behind
            # it add only lines to the worker's "Compute Failed" log and to the traceback
            # that the client re-raises.
            raise err.with_traceback(None) from None

    def _getitem(self, key: tuple) -> np.ndarray:
        squeeze = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        t_key, y_key, x_key = (
            slice(int(k), int(k) + 1) if isinstance(k, (int, np.integer)) else k for k in key
        )
        times = range(self.shape[0])[t_key]
        rows, row_step = _span(y_key, self.shape[1])
        cols, col_step = _span(x_key, self.shape[2])
        skip = None
        if self.mask is not None:
            skip = dropped_pixels(self.plan, self.mask, tuple(times), rows, cols)
        data = read_window(self.plan, self.asset_index, list(times), rows, cols, skip=skip)
        if row_step != 1 or col_step != 1:
            data = data[:, ::row_step, ::col_step]
            skip = skip[:, ::row_step, ::col_step] if skip is not None else None
        if self.decoder is not None:
            data = self.decoder(data)
        if skip is not None:
            stored = self.plan.packing[self.asset_index].fill_value
            fill = np.nan if data.dtype.kind == "f" else stored
            np.copyto(data, fill, where=skip)
        return data.squeeze(axis=squeeze) if squeeze else data


def _span(key: slice, size: int) -> tuple[slice, int]:
    start, stop, step = key.indices(size)
    if step < 0:  # read the covering window forwards, then let numpy reverse it
        indices = range(start, stop, step)
        if not indices:
            return slice(0, 0), 1
        return slice(indices[-1], indices[0] + 1), step
    return slice(start, max(start, stop)), step


def _handle_for_open(
    credentials: auth.AnyCredentials | None,
) -> tuple[str, auth.AnyCredentials | None]:
    """The credentials handle for a new cube, and the explicit credentials the cube must
    hold for it (they are registered weakly); fails fast (no network) when there are none."""
    if credentials is not None or auth.current_credentials() is not None:
        return auth.credentials_handle(credentials), credentials
    if state._from_environment() is not None:
        return auth.DEFAULT_HANDLE, None
    from_netrc = signin._from_netrc()
    if from_netrc is not None:
        return auth.credentials_handle(from_netrc), from_netrc
    raise AuthenticationError(
        "Opening Terrascope data needs credentials: call xarray_terrascope.login() first, "
        "pass credentials=Credentials(user, password), set TERRASCOPE_USERNAME and "
        "TERRASCOPE_PASSWORD, or add the download host to your netrc file."
    )


def _default_assets(collection: str, items: Sequence[dict[str, Any]]) -> list[str]:
    info = COLLECTIONS.get(collection)
    if info is not None:
        return list(info.assets)
    found: dict[str, Any] = {}
    for item in items:
        for key, asset in item["assets"].items():
            if "data" in (asset.get("roles") or []) and key not in found:
                found[key] = asset
    if not found:
        raise InvalidArgumentError(
            f"Collection {collection!r} is not known to xarray-terrascope and its items have no "
            "assets with role 'data'; pass assets=[...]"
        )
    # not the items' key order, which a server may change (pgstac's jsonb sorts keys)
    return sorted(found, key=lambda key: asset_order(key, found[key]))


def _check_assets(assets: Any) -> list[str] | None:
    if assets is None:
        return None
    if isinstance(assets, str):
        return [assets]
    if not isinstance(assets, (list, tuple)) or not all(isinstance(a, str) for a in assets):
        raise InvalidArgumentError(f"assets must be an asset key or a list of them, got {assets!r}")
    if not assets:
        raise InvalidArgumentError("assets must not be empty; None means the collection's default")
    return list(assets)


def _check_chunksize(chunksize: Any) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, (int, np.integer)) or chunksize < 1:
        raise InvalidArgumentError(f"chunksize must be a positive int (pixels), got {chunksize!r}")
    return int(chunksize)


def _check_prefer_local(prefer_local: Any) -> bool | None:
    if prefer_local is not None and not isinstance(prefer_local, bool):
        raise InvalidArgumentError(
            f"prefer_local must be None (local files when present), True or False, "
            f"got {prefer_local!r}"
        )
    return prefer_local


def _cf_attrs(plan: CubePlan, asset_index: int) -> dict:
    """The variable's attributes: band metadata, and the CF packing of a measurement
    (a class asset's values are codes: they keep no scale and no ``_FillValue``)."""
    spec = plan.packing[asset_index]
    meta = plan.meta[asset_index] if plan.meta else None
    attrs: dict[str, Any] = {"long_name": plan.assets[asset_index]}
    if meta is not None:
        attrs.update(meta.attrs)
        if meta.classes:
            return attrs
    if spec.scale != 1.0:
        attrs["scale_factor"] = np.float32(spec.scale)
    if spec.offset != 0.0:
        attrs["add_offset"] = np.float32(spec.offset)
    if spec.nodata is not None:
        attrs["_FillValue"] = np.dtype(spec.dtype).type(spec.nodata)
    return attrs


def _keep_clear_dates(
    plan: CubePlan, mask: MaskSpec, min_clear: float
) -> tuple[CubePlan, dict[str, float], npt.NDArray[np.float64]]:
    """The plan without the dates whose clear share is below ``min_clear``, the dropped
    dates with their shares, and the kept dates' shares."""
    shares = clear_shares(plan, mask)
    keep = [t for t, share in enumerate(shares) if share >= min_clear]
    dropped = {
        str(plan.times[t].date()): float(share)
        for t, share in enumerate(shares)
        if share < min_clear
    }
    if dropped:
        logger.info(
            "min_clear=%s leaves out %d of %d date(s): %s",
            min_clear,
            len(dropped),
            len(shares),
            ", ".join(f"{day} ({share:.0%} clear)" for day, share in dropped.items()),
        )
    if not keep:
        raise NoItemsFoundError(
            f"No date has a clear share of at least {min_clear} over the bbox (the best has "
            f"{shares.max():.2f}); lower min_clear, or widen the dates."
        )
    kept = replace(
        plan,
        groups=tuple(plan.groups[t] for t in keep),
        times=tuple(plan.times[t] for t in keep),
    )
    return kept, dropped, shares[keep]


def _planned_items(plan: CubePlan, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items the plan kept (those intersecting the bbox), in plan order."""
    by_id = {item["id"]: item for item in items}
    return [by_id[item_id] for item_id in plan.item_ids]


def _time_coords(plan: CubePlan, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-date coordinates; ``items`` are the planned items (see :func:`_planned_items`)."""
    platforms, clouds, ids = [], [], []
    for group in plan.groups:
        members = [items[i] for i in group]
        props = [m.get("properties") or {} for m in members]
        platforms.append(",".join(sorted({str(p.get("platform", "")) for p in props})))
        reported = [p.get("eo:cloud_cover") for p in props]
        cover = [float(c) for c in reported if c is not None]
        clouds.append(float(np.mean(cover)) if cover else np.nan)
        ids.append(" ".join(m["id"] for m in members))
    return {
        "time": ("time", np.array(plan.times, dtype="datetime64[ns]")),
        "platform": ("time", np.array(platforms, dtype=str)),
        "cloud_cover": ("time", np.array(clouds, dtype="float32"), {"units": "%"}),
        "item_ids": ("time", np.array(ids, dtype=str)),
    }


def open_cube(
    filename_or_obj: Any,
    *,
    start: Any = None,
    end: Any = None,
    collection: str = DEFAULT_COLLECTION,
    assets: Sequence[str] | str | None = None,
    max_cloud_cover: float | None = None,
    crs: Any = None,
    resolution: float | None = None,
    credentials: auth.AnyCredentials | None = None,
    validate: bool = True,
    bbox: Sequence[float] | None = None,
    decode: bool = True,
    resampling: str | Mapping[str, str] = DEFAULT_RESAMPLING,
    chunksize: int = DEFAULT_CHUNKSIZE,
    prefer_local: bool | None = None,
    drop_variables: Sequence[str] | None = None,
    mask_clouds: bool = False,
    min_clear: float | None = None,
) -> xr.Dataset:
    """Search (or take items), plan and return the lazy Dataset; see the engine's docs."""
    assets_list = _check_assets(assets)
    chunksize = _check_chunksize(chunksize)
    check_resampling(resampling)
    min_clear = check_mask_arguments(mask_clouds, min_clear)
    handle, held = _handle_for_open(credentials)
    if not isinstance(validate, bool):
        raise InvalidArgumentError(f"validate must be True or False, got {validate!r}")
    given: list[pystac.Item] | None = None
    if is_items(filename_or_obj):
        given = list(filename_or_obj)
        items = [item.to_dict(include_self_link=False, transform_hrefs=False) for item in given]
        box = check_bbox(bbox) if bbox is not None else None
        if start is not None or end is not None or max_cloud_cover is not None:
            raise InvalidArgumentError(
                "start, end and max_cloud_cover filter a search; with a list of items, "
                "select the items yourself"
            )
        collections = sorted({str(item.collection_id) for item in given})
        if len(collections) > 1:
            raise InvalidArgumentError(
                f"The items come from several collections ({', '.join(collections)}); "
                "open one collection at a time and combine the Datasets with xarray."
            )
        collection = collections[0] if collections[0] != "None" else collection
    else:
        if bbox is not None:
            raise InvalidArgumentError("give the bbox once, as the first argument")
        box = check_bbox(filename_or_obj, name="bbox (first argument)")
        items = search_dicts(collection, box, start, end, max_cloud_cover=max_cloud_cover)
        if not items:
            raise NoItemsFoundError(
                f"No {collection} items for bbox {list(box)}, start {start!r}, end {end!r}"
                + (f", max_cloud_cover {max_cloud_cover}" if max_cloud_cover is not None else "")
                + ". Widen the dates or the bbox, or relax max_cloud_cover."
                + swapped_bbox_hint(collection, box, start, end, max_cloud_cover)
            )
    assets_list = assets_list or _default_assets(collection, items)
    mask_key = None
    if mask_clouds or min_clear is not None:
        mask_key = find_mask_asset(items, collection)
        if mask_key not in assets_list:
            assets_list = [*assets_list, mask_key]
    plan = plan_cube(
        items,
        assets=assets_list,
        bbox=box,
        crs=crs,
        resolution=resolution,
        collection=collection,
        credentials_handle=handle,
        resampling=resampling,
        prefer_local=_check_prefer_local(prefer_local),
    )
    # every argument checked (the plan names unknown assets): now the one request that
    # proves per-call credentials, before the mask's reads (a token was just issued)
    if isinstance(credentials, auth.Credentials) and validate:
        signin.validate_credentials(
            credentials,
            given_as="credentials= of open_dataset",
            skip="open_dataset(..., credentials=..., validate=False)",
        )
    logger.info(
        "Cube of %d item(s) -> %d date(s) x %d x %d px in EPSG:%d",
        len(items),
        len(plan.groups),
        *plan.shape,
        plan.epsg,
    )
    mask = None
    dropped: dict[str, float] = {}
    if mask_key is not None:
        index = plan.assets.index(mask_key)
        kind = plan.meta[index].classification or "scl"
        latitude = (plan.bounds[1] + plan.bounds[3]) / 2  # used in a geographic CRS only
        radius = dilation_pixels(DEFAULT_DILATION, plan.resolution, plan.epsg, latitude)
        mask = MaskSpec(index, kind, None, radius)
    if mask is not None and min_clear is not None:
        plan, dropped, shares = _keep_clear_dates(plan, mask, min_clear)
    ys, xs = (
        spatial_chunks(size, chunksize, phase)
        for size, phase in zip(plan.shape, file_grid_phase(plan, chunksize), strict=True)
    )
    preferred = {"time": dates_per_partition((max(ys), max(xs))), "y": ys, "x": xs}
    variables = {}
    for index, key in enumerate(plan.assets):
        if drop_variables and key in drop_variables:
            continue
        var_attrs = _cf_attrs(plan, index)
        encoding: dict[str, Any] = {"dtype": np.dtype(plan.packing[index].dtype)}
        decoder = None
        classes = bool(plan.meta) and plan.meta[index].classes
        if classes and plan.packing[index].nodata is not None:
            encoding["_FillValue"] = plan.packing[index].fill_value
        # decoded in the read: the CF attributes move to encoding, as decode_cf does
        if decode and not classes:
            decoder = Decoder(plan.packing[index].dtype, var_attrs)
            var_attrs = {k: v for k, v in var_attrs.items() if k not in CF_KEYS}
            encoding.update(decoder.encoding)
        masked_by = mask if mask_clouds and mask is not None and not classes else None
        if masked_by is not None:
            var_attrs["cloud_mask"] = f"{key} is NaN where {mask_key} drops a pixel"
        variables[key] = xr.Variable(
            ("time", "y", "x"),
            indexing.LazilyIndexedArray(CubeArray(plan, index, decoder, held, masked_by)),
            attrs=var_attrs,
            encoding={**encoding, "preferred_chunks": preferred},
        )
    items = _planned_items(plan, items)
    coords = _time_coords(plan, items)
    if given is not None:  # the user's own Items, not copies
        by_id = {item.id: item for item in given}
        kept: list[pystac.Item | dict[str, Any]] = [by_id[item["id"]] for item in items]
    else:
        kept = list(items)
    coords["y"] = ("y", plan.y_coords(), {"units": "m", "standard_name": "projection_y_coordinate"})
    coords["x"] = ("x", plan.x_coords(), {"units": "m", "standard_name": "projection_x_coordinate"})
    attrs: dict[str, Any] = {
        "collection": collection,
        "assets": list(plan.assets),
        "resolution": plan.resolution,
        "stac_url": get_options().stac_url,
        "terrascope_items_key": item_store.remember_items(kept),
        "source": "xarray-terrascope",
    }
    if box is not None:
        attrs["bbox"] = list(box)
    if mask_clouds:
        attrs["mask_clouds"] = mask_key
    if min_clear is not None:
        attrs["min_clear"] = min_clear
        attrs["dropped_dates"] = list(dropped)
        attrs["dropped_clear_shares"] = [round(v, 4) for v in dropped.values()]
        coords["clear_share"] = ("time", shares.astype("float32"), {"units": "1"})
    for name, value in (("start", start), ("end", end), ("max_cloud_cover", max_cloud_cover)):
        if value is not None:
            attrs[name] = value if isinstance(value, (int, float)) else str(value)
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    # in place: the default copy is deep, and would copy every variable's lazy array
    ds.rio.write_crs(f"EPSG:{plan.epsg}", inplace=True)
    ds.rio.write_transform(plan.transform, inplace=True)
    return ds
