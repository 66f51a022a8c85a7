"""Per-pixel cloud masks from a cube's scene classification (SCL) or CLOUDMASK.

:func:`cloud_mask` turns a class variable into a boolean mask (True = do not use the
pixel), with an optional buffer around clouds and shadows; :func:`mask_clouds` sets every
measurement of a Dataset to NaN under it. Both stay lazy on dask-backed cubes, and the
buffer is exact across chunk edges (each block is dilated with its neighbours' pixels up
to the buffer's radius, :func:`dask.array.map_overlap`), so the mask never depends on the
chunking.

Default classes (Sen2Cor SCL): masked 0 no data, 1 saturated or defective, 3 cloud
shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus; kept
2 dark area, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 11 snow. That is
the union of what openEO's ``to_scl_dilation_mask`` (3, 8, 9, 10, plus 11) and odc-geo's
``mask_s2`` (1, 3, 8, 9, 10 optional) mask, less snow, plus no data: every pixel whose
value is not the ground's reflectance. Snow or ice (11) is a surface, not an
obstruction, and is kept; mask it too with ``classes=[*DEFAULT_SCL_CLASSES, 11]`` (or
``"snow"``). Dark areas (2: terrain shadow, dark soils, burnt land) are kept by both.

Default buffer (:data:`DEFAULT_DILATION`, 40 m): Sen2Cor classifies at 20 m and leaves
the thin, semi-transparent rims of clouds and shadows in the surface classes, where
they pull NDVI down; two 20 m classification pixels around each cloud and shadow pixel
catch most of such rims while costing far less clear ground than openEO's aggressive
default (disks of 17 and 77 pixels). ``dilation=0`` masks the classes as classified.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import xarray as xr

from xarray_terrascope.catalog.assets import CLOUDMASK_KEYS, SCL_CLASSES, SCL_KEYS
from xarray_terrascope.cube.clouds import (
    BUFFERED,
    DEFAULT_CLOUDMASK_CLASSES,
    DEFAULT_DILATION,
    DEFAULT_SCL_CLASSES,
    dilation_pixels,
    disk,
)
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = [
    "CLOUDMASK_CLASSES",
    "DEFAULT_CLOUDMASK_CLASSES",
    "DEFAULT_DILATION",
    "DEFAULT_SCL_CLASSES",
    "SCL_CLASSES",
    "cloud_mask",
    "disk",
    "find_mask",
    "is_mask_variable",
    "mask_clouds",
    "mask_kind",
    "pixel_size",
]

logger = logging.getLogger(__name__)

#: Terrascope's CLOUDMASK asset, by value.
CLOUDMASK_CLASSES: dict[int, str] = {0: "clear", 1: "cloud", 255: "no_data"}

_CLASSES = {"scl": SCL_CLASSES, "cloudmask": CLOUDMASK_CLASSES}
_DEFAULTS = {"scl": DEFAULT_SCL_CLASSES, "cloudmask": DEFAULT_CLOUDMASK_CLASSES}
_BUFFERED = BUFFERED
#: Variable names that are masks, by kind (the asset keys Terrascope uses).
_NAMES = {**dict.fromkeys(SCL_KEYS, "scl"), **dict.fromkeys(CLOUDMASK_KEYS, "cloudmask")}


def _roles(da: xr.DataArray) -> list[str]:
    roles = da.attrs.get("roles", "")
    return roles.split() if isinstance(roles, str) else [str(r) for r in np.atleast_1d(roles)]


def mask_kind(name: Hashable, da: xr.DataArray) -> str | None:
    """``"scl"``, ``"cloudmask"`` or None: what kind of mask variable ``da`` is.

    Told by the attribute ``terrascope:classification``, else the name (``SCL``,
    ``SCENECLASSIFICATION_20M``, ``CLOUDMASK``), else a ``data-mask`` role with SCL's
    ``flag_meanings`` (or a ``cloud`` role: a cloud mask).

    Examples
    --------
    >>> mask_kind("SCENECLASSIFICATION_20M", xr.DataArray([4]))
    'scl'
    >>> mask_kind("m", xr.DataArray([0], attrs={"roles": "data-mask cloud"}))
    'cloudmask'
    >>> mask_kind("B04", xr.DataArray([0.1], attrs={"roles": "data"})) is None
    True
    """
    told = da.attrs.get("terrascope:classification")
    if told in _CLASSES:
        return str(told)
    if str(name).upper() in _NAMES:
        return _NAMES[str(name).upper()]
    roles = _roles(da)
    if "data-mask" in roles:
        if str(da.attrs.get("flag_meanings", "")).split() == list(SCL_CLASSES.values()):
            return "scl"
        if "cloud" in roles:
            return "cloudmask"
    return None


def is_mask_variable(name: Hashable, da: xr.DataArray) -> bool:
    """Whether a variable is a mask or class variable (never masked, never a band).

    Examples
    --------
    >>> is_mask_variable("SCL", xr.DataArray([4])), is_mask_variable("B04", xr.DataArray([0.1]))
    (True, False)
    """
    return mask_kind(name, da) is not None or "data-mask" in _roles(da)


def find_mask(ds: xr.Dataset, source: str | None = None) -> tuple[str, str]:
    """The mask variable to use and its kind, by attributes and names, never by position.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    source : str, optional
        A variable name (``"CLOUDMASK"``, ``"SCL"``...) or a kind (``"scl"``,
        ``"cloudmask"``). By default the scene classification, else the cloud mask.

    Returns
    -------
    tuple of (str, str)
        The variable's name and its kind, ``"scl"`` or ``"cloudmask"``.

    Raises
    ------
    InvalidArgumentError
        No such mask in the Dataset; the message says which asset to add.

    Examples
    --------
    >>> ds = xr.Dataset({"B04": ("x", [0.1]), "CLOUDMASK": ("x", [0]), "SCL": ("x", [4])})
    >>> find_mask(ds), find_mask(ds, "CLOUDMASK")
    (('SCL', 'scl'), ('CLOUDMASK', 'cloudmask'))
    """
    kinds = {str(n): mask_kind(n, da) for n, da in ds.data_vars.items()}
    order = list(_NAMES)

    def best(kind: str) -> str | None:
        names = [n for n, k in kinds.items() if k == kind]
        names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
        return names[0] if names else None

    if source is None:
        for kind in ("scl", "cloudmask"):
            name = best(kind)
            if name is not None:
                return name, kind
        raise InvalidArgumentError(
            "This Dataset has no cloud mask variable (it has: "
            f"{', '.join(kinds) or 'none'}). A mask is found by its attribute "
            "'terrascope:classification', its role 'data-mask' or its name (SCL, "
            "SCENECLASSIFICATION_20M, CLOUDMASK). Add 'SCL' (collection terrascope-s2-toc-v2) "
            "or 'SCENECLASSIFICATION_20M' (NDVI, FAPAR, LAI collections) to assets=, or open "
            "with open_dataset(..., mask_clouds=True)."
        )
    if not isinstance(source, str):
        raise InvalidArgumentError(f"source must be a variable name or a kind, got {source!r}")
    if source in kinds:
        told = kinds[source]
        if told is None:
            raise InvalidArgumentError(
                f"source={source!r} is neither a scene classification nor a cloud mask (no "
                "attribute 'terrascope:classification' = 'scl' or 'cloudmask', and not "
                "named SCL, SCENECLASSIFICATION_20M or CLOUDMASK)"
            )
        return source, told
    if source.lower() in _CLASSES and best(source.lower()) is not None:
        return str(best(source.lower())), source.lower()
    masks = [f"{n} ({k})" for n, k in kinds.items() if k is not None]
    raise InvalidArgumentError(
        f"source={source!r} is not a mask variable of this Dataset (its masks: "
        f"{', '.join(masks) or 'none'}). Add {source.upper()!r} to assets= "
        "(CLOUDMASK and SCL are assets of terrascope-s2-toc-v2; NDVI, FAPAR and LAI items "
        "carry SCENECLASSIFICATION_20M)."
    )


def _check_classes(classes: object, kind: str, what: str = "classes") -> tuple[int, ...]:
    known = _CLASSES[kind]
    by_name = {v: k for k, v in known.items()}
    if classes is None:
        return _DEFAULTS[kind]
    items: list[Any]
    if isinstance(classes, int | str | np.integer):
        items = [classes]
    elif isinstance(classes, Iterable):
        items = list(classes)
    else:
        items = [classes]  # refused below
    chosen = set()
    for item in items:
        if isinstance(item, str) and item in by_name:
            chosen.add(by_name[item])
        elif isinstance(item, int | np.integer) and not isinstance(item, bool) and item in known:
            chosen.add(int(item))
        else:
            listed = ", ".join(f"{k} {v}" for k, v in known.items())
            raise InvalidArgumentError(
                f"{what} must be values or names of {kind.upper()} classes ({listed}); got {item!r}"
            )
    if not chosen:
        raise InvalidArgumentError(f"{what} is empty: give at least one class to mask")
    return tuple(sorted(chosen))


def _binary_dilation(block: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(block, structure=footprint)


def _dilate(seed: xr.DataArray, radius_px: float) -> xr.DataArray:
    """``seed`` grown by a disk in its ``y``/``x`` plane; exact across dask chunks."""
    axes = (seed.dims.index("y"), seed.dims.index("x"))
    shape = [1] * seed.ndim
    footprint2d = disk(radius_px)  # symmetric: the same for (y, x) and (x, y)
    shape[axes[0]], shape[axes[1]] = footprint2d.shape
    footprint = footprint2d.reshape(shape)
    depth = footprint2d.shape[0] // 2
    data = seed.data
    if hasattr(data, "map_overlap"):  # a dask array: neighbours' pixels up to the radius
        out = data.map_overlap(
            _binary_dilation,
            depth={i: (depth if i in axes else 0) for i in range(seed.ndim)},
            boundary="none",  # beyond the cube's edge: not cloud, as scipy's border
            dtype=bool,
            footprint=footprint,
        )
    else:
        out = _binary_dilation(np.asarray(data), footprint)
    return seed.copy(data=out)


def cloud_mask(
    mask: xr.DataArray,
    classes: Iterable[int | str] | int | str | None = None,
    dilation_px: float = 0.0,
    *,
    kind: str | None = None,
    buffered: Iterable[int | str] | None = None,
) -> xr.DataArray:
    """A boolean mask, True where ``mask`` says cloud, shadow, no data... (not to be used).

    Parameters
    ----------
    mask : xarray.DataArray
        A scene classification (SCL) or CLOUDMASK variable with ``y`` and ``x``
        dimensions (any others, such as ``time``, are kept apart: a buffer never
        crosses dates). Integer classes; a float one is read with NaN as no data.
    classes : int, str or iterable of them, optional
        Classes to mask, by value or name (:data:`SCL_CLASSES`,
        :data:`CLOUDMASK_CLASSES`). Default :data:`DEFAULT_SCL_CLASSES` for SCL,
        :data:`DEFAULT_CLOUDMASK_CLASSES` for CLOUDMASK.
    dilation_px : float
        Radius of the buffer, in pixels: a pixel is masked too when its centre lies
        within this distance of a cloud or shadow pixel's centre. Below 1: no buffer.
    kind : {"scl", "cloudmask"}, optional
        What ``mask`` is; by default told from its attributes and name (:func:`mask_kind`).
    buffered : iterable, optional
        Classes the buffer grows from; default those of ``classes`` that are clouds,
        shadows or cirrus (SCL 3, 8, 9, 10; CLOUDMASK 1). No data is never buffered.

    Returns
    -------
    xarray.DataArray
        bool, ``mask``'s dimensions and coordinates, named ``cloud_mask``; dask-backed
        (lazy) when ``mask`` is, with the same result whatever its chunks.

    Raises
    ------
    InvalidArgumentError
        An unknown class, a negative or non-finite radius, a mask without ``y``/``x``
        dimensions or of unknown kind.

    Examples
    --------
    >>> import numpy as np
    >>> scl = xr.DataArray(np.array([[4, 4, 4, 4, 9]], "uint8"), dims=("y", "x"), name="SCL")
    >>> cloud_mask(scl).values.astype(int).tolist()
    [[0, 0, 0, 0, 1]]
    >>> cloud_mask(scl, dilation_px=2).values.astype(int).tolist()
    [[0, 0, 1, 1, 1]]
    >>> cloud_mask(scl, classes=[4]).values.astype(int).tolist()
    [[1, 1, 1, 1, 0]]
    """
    if kind is None:
        kind = mask_kind(mask.name if mask.name is not None else "", mask)
    if kind not in _CLASSES:
        raise InvalidArgumentError(
            f"Cannot tell what kind of mask {mask.name!r} is: pass kind='scl' or "
            "kind='cloudmask' (or set its attribute 'terrascope:classification')"
        )
    if "y" not in mask.dims or "x" not in mask.dims:
        raise InvalidArgumentError(f"The mask needs 'y' and 'x' dimensions, it has {mask.dims}")
    chosen = _check_classes(classes, kind)
    if buffered is None:
        grown = tuple(c for c in chosen if c in _BUFFERED[kind])
    else:
        grown = _check_classes(buffered, kind, "buffered")
    if not isinstance(dilation_px, int | float | np.number) or not (
        math.isfinite(float(dilation_px)) and dilation_px >= 0
    ):
        raise InvalidArgumentError(f"dilation must be a number >= 0, got {dilation_px!r}")
    hit = mask.isin(chosen)
    if mask.dtype.kind == "f":
        hit = hit | mask.isnull()  # a float classification: NaN is no data
    if dilation_px >= 1 and grown:
        hit = hit | _dilate(mask.isin(grown), float(dilation_px))
    hit = hit.rename("cloud_mask")
    hit.attrs = {
        "long_name": f"masked pixels ({kind.upper()} classes {list(chosen)})",
        "dilation_px": float(dilation_px),
    }
    return hit


def _crs_and_latitude(obj: xr.Dataset | xr.DataArray) -> tuple[Any, float | None]:
    """The cube's CRS (rioxarray's reading of it, None when it has none) and its middle
    ``y``: what a buffer in metres needs on a geographic grid."""
    import rioxarray  # noqa: F401  (the .rio accessor)

    try:
        crs = obj.rio.crs
    except Exception:  # rioxarray raises several types for a cube it cannot read
        logger.debug("mask_clouds: no CRS readable: the pixel size is taken as metres")
        crs = None
    latitude = float(obj["y"].values.mean()) if "y" in obj.coords and obj["y"].size else None
    return crs, latitude


def pixel_size(obj: xr.Dataset | xr.DataArray) -> float:
    """The cube's pixel size in its CRS units (metres on UTM), from the ``x`` spacing.

    Falls back on the ``resolution`` attribute the terrascope engine writes.

    Examples
    --------
    >>> pixel_size(xr.Dataset(coords={"x": [500010.0, 500030.0, 500050.0]}))
    20.0
    """
    if "x" in obj.coords and obj["x"].size >= 2:
        x = obj["x"].values
        return float(abs(x[1] - x[0]))
    resolution = obj.attrs.get("resolution")
    if resolution is not None:
        return float(abs(np.atleast_1d(resolution)[0]))
    raise InvalidArgumentError(
        "The pixel size is unknown (no 'x' coordinate with two values, no 'resolution' "
        "attribute): pass dilation=0, or give the cube its x coordinate"
    )


def _masked(da: xr.DataArray, hit: xr.DataArray) -> xr.DataArray:
    if da.dtype.kind in "fc":
        out = da.where(~hit)
    else:  # stored numbers (decode=False): the variable's own no-data value
        fill = da.encoding.get("_FillValue", da.attrs.get("_FillValue", da.attrs.get("nodata")))
        if fill is not None:
            out = da.where(~hit, np.asarray(fill, dtype=da.dtype)[()])
        else:
            out = da.where(~hit).astype(np.float32 if da.dtype.itemsize <= 2 else np.float64)
    out.attrs = dict(da.attrs)
    out.encoding = dict(da.encoding)
    return out


def mask_clouds(
    ds: xr.Dataset,
    classes: Iterable[int | str] | int | str | None = None,
    dilation: float = DEFAULT_DILATION,
    source: str | None = None,
) -> xr.Dataset:
    """The Dataset with every measurement NaN where the mask says cloud, shadow, no data...

    Parameters
    ----------
    ds : xarray.Dataset
        A cube with a scene classification (``SCL``, ``SCENECLASSIFICATION_20M``) or
        ``CLOUDMASK`` variable, found by :func:`find_mask`.
    classes : int, str or iterable of them, optional
        Classes to mask (values or names). Default: SCL 0, 1, 3, 8, 9, 10
        (:data:`DEFAULT_SCL_CLASSES`; snow, 11, is kept: add it with
        ``classes=[*DEFAULT_SCL_CLASSES, 11]``), CLOUDMASK 1 and 255.
    dilation : float
        Buffer around clouds, shadows and cirrus, in metres (default
        :data:`DEFAULT_DILATION`, 40 m): pixels whose centre lies within this distance of
        such a pixel's centre are masked too. Turned into pixels with the cube's ``x``
        spacing; ``0`` masks the classes as classified.
    source : str, optional
        The mask to use: a variable name (``"CLOUDMASK"``) or a kind (``"scl"``,
        ``"cloudmask"``). Default: the scene classification, else the cloud mask.

    Returns
    -------
    xarray.Dataset
        The same variables and attributes; measurements (every variable with the mask's
        dimensions that is not itself a mask) NaN where masked (an integer variable of a
        ``decode=False`` cube gets its ``_FillValue``). Mask variables are kept with
        their values. The attribute ``terrascope:cloud_mask`` says what was masked.
        Lazy when the cube is dask-backed.

    Raises
    ------
    InvalidArgumentError
        No mask variable (the message says which asset to add), an unknown class, a
        negative dilation.

    Examples
    --------
    >>> import numpy as np
    >>> ds = xr.Dataset(
    ...     {"B04": (("y", "x"), np.full((1, 4), 0.1, "float32")),
    ...      "SCL": (("y", "x"), np.array([[4, 4, 8, 11]], "uint8"))},
    ...     coords={"y": [5.0], "x": [0.0, 10.0, 20.0, 30.0]})
    >>> np.isnan(mask_clouds(ds, dilation=0).B04.values).tolist()  # 8 masked, 11 kept
    [[False, False, True, False]]
    >>> np.isnan(mask_clouds(ds, dilation=10).B04.values).tolist()  # and 10 m around 8
    [[False, True, True, True]]
    """
    name, kind = find_mask(ds, source)
    if not isinstance(dilation, int | float | np.number) or not (
        math.isfinite(float(dilation)) and dilation >= 0
    ):
        raise InvalidArgumentError(f"dilation must be a number of metres >= 0, got {dilation!r}")
    radius = 0.0
    if dilation > 0:
        radius = dilation_pixels(float(dilation), pixel_size(ds), *_crs_and_latitude(ds))
    hit = cloud_mask(ds[name], classes, radius, kind=kind)
    chosen = _check_classes(classes, kind)
    out = ds.copy()
    for var, da in ds.data_vars.items():
        if is_mask_variable(var, da):
            continue
        if not set(hit.dims) <= set(da.dims):
            logger.debug("mask_clouds: %s lacks the mask's dimensions %s: kept", var, hit.dims)
            continue
        out[var] = _masked(da, hit)
    out.attrs["terrascope:cloud_mask"] = (
        f"{name} ({kind}) classes {' '.join(map(str, chosen))} masked; buffer "
        f"{float(dilation):g} m ({radius:g} px) around clouds and shadows"
    )
    return out
