"""Resampling methods of a cube: one GDAL method name for every asset, or ``{asset:
method}``; class assets (scene classifications, masks) stay nearest unless named."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rasterio.enums import Resampling
from rasterio.warp import SUPPORTED_RESAMPLING

from xarray_terrascope.catalog.assets import AssetMeta
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["DEFAULT_RESAMPLING", "METHODS", "asset_resamplings", "check_resampling", "method"]

#: GDAL resampling of the tiles that must be warped, unless a cube says otherwise.
DEFAULT_RESAMPLING = "nearest"


#: The methods GDAL's warper offers (``gauss`` is an overview method only: a warp with
#: it fails).
METHODS = tuple(r.name for r in SUPPORTED_RESAMPLING)


def method(value: Any, name: str) -> str:
    """The method named ``value`` (checked against :data:`METHODS`); ``name`` is the
    argument, for the error."""
    try:
        found = str(Resampling[value].name)
    except (KeyError, TypeError):
        found = None
    if found not in METHODS:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(METHODS)}, got {value!r}"
            + (" (gauss is a method of GDAL's overviews, not of its warper)" if found else "")
        )
    return str(found)


def check_resampling(resampling: Any) -> None:
    """Refuse a resampling that is neither a method name nor ``{asset: method}``.

    Examples
    --------
    >>> check_resampling({"B04": "average", "SCL": "nearest"})
    >>> check_resampling("linear")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xarray_terrascope.exceptions.InvalidArgumentError: resampling must be one of ...
    """
    if isinstance(resampling, Mapping):
        for key, value in resampling.items():
            method(value, f"resampling[{key!r}]")
    else:
        method(resampling, "resampling")


def asset_resamplings(
    resampling: str | Mapping[str, str], meta: Sequence[AssetMeta]
) -> tuple[str, ...]:
    """Each asset's resampling: class assets keep nearest unless named in a mapping."""
    if isinstance(resampling, Mapping):
        unknown = sorted(set(resampling) - {m.key for m in meta})
        if unknown:
            raise InvalidArgumentError(
                f"resampling names assets {unknown} that are not in assets= "
                f"({', '.join(m.key for m in meta)})"
            )
        return tuple(
            method(resampling.get(m.key, DEFAULT_RESAMPLING), f"resampling[{m.key!r}]")
            for m in meta
        )
    chosen = method(resampling, "resampling")
    return tuple(DEFAULT_RESAMPLING if m.classes else chosen for m in meta)
