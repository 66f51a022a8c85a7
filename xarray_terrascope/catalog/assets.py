"""What an item says of one of its assets: packing, band metadata, roles, class or measure.

Terrascope serves two item shapes, and both decode the same way:

- STAC 1.0 (the NDVI/FAPAR/LAI V2 items): the packing in ``raster:bands[0]``
  (``data_type``, ``nodata``, ``scale``, ``offset``) and band names in ``eo:bands``;
- STAC 1.1 (every 2026 item, e.g. ``terrascope-s2-toc-v2``): the same facts at asset
  level (``data_type``, ``nodata``, ``raster:scale``, ``raster:offset``, ``unit``) and
  ``bands: [{"name": ..., "eo:common_name": ..., "eo:center_wavelength": ...}]``.

An asset is a *class* asset (its values are codes, not measurements: it stays an integer
and is never scaled) when it is stored as integers without scale or offset and either
has the role ``data-mask``, carries ``classification:classes``, or is one of the scene
classification or cloud mask files Terrascope ships (``SCL``,
``SCENECLASSIFICATION_20M``, ``CLOUDMASK``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xarray_terrascope.catalog.collections import COLLECTIONS, Packing

__all__ = ["SCL_CLASSES", "AssetMeta", "asset_meta", "asset_order"]

logger = logging.getLogger(__name__)

#: Sen2Cor scene classification: value -> CF flag meaning.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}

#: Asset keys of Terrascope's scene classification files (TOC, and beside each V2
#: biophysical product), and of its cloud mask; each in order of preference.
SCL_KEYS = ("SCL", "SCENECLASSIFICATION_20M")
CLOUDMASK_KEYS = ("CLOUDMASK",)


@dataclass(frozen=True)
class AssetMeta:
    """One asset of a cube, as its items describe it.

    Attributes
    ----------
    key : str
        The asset key (the variable's name).
    packing : Packing
        How the file stores its values.
    roles : tuple of str
        The asset's STAC roles.
    classes : bool
        A class asset (codes, kept as stored integers) rather than a measurement.
    attrs : dict
        Variable attributes from the band metadata (``eo:common_name``,
        ``center_wavelength``, ``band_name``, ``units``, ``roles``, and CF
        ``flag_values``/``flag_meanings`` for a scene classification).

    Examples
    --------
    >>> item = {"assets": {"B04": {"roles": ["data"], "data_type": "int16",
    ...     "nodata": 32767, "raster:scale": 0.0001,
    ...     "bands": [{"name": "B04", "eo:common_name": "red"}]}}, "properties": {}}
    >>> meta = asset_meta("terrascope-s2-toc-v2", "B04", [item])
    >>> meta.packing, meta.classes, meta.attrs["eo:common_name"]
    (Packing(dtype='int16', nodata=32767, scale=0.0001, offset=0.0), False, 'red')
    """

    key: str
    packing: Packing
    roles: tuple[str, ...] = ()
    classes: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def classification(self) -> str | None:
        """``"scl"`` for a Sen2Cor scene classification, ``"cloudmask"`` for a cloud
        mask, None otherwise."""
        value = self.attrs.get("terrascope:classification")
        return str(value) if value is not None else None


def _first(seq: Any) -> dict[str, Any]:
    if isinstance(seq, Sequence) and seq and isinstance(seq[0], Mapping):
        return dict(seq[0])
    return {}


def _packing_of(asset: Mapping[str, Any]) -> Packing | None:
    """The packing an asset states: STAC 1.1 asset-level fields win over STAC 1.0's
    ``raster:bands[0]``; None when it states no data type."""
    band = _first(asset.get("raster:bands"))
    dtype = asset.get("data_type") or band.get("data_type")
    if dtype is None:
        return None

    def pick(new: str, old: str, default: Any) -> Any:
        if asset.get(new) is not None:
            return asset[new]
        if band.get(old) is not None:
            return band[old]
        return default

    nodata = asset["nodata"] if "nodata" in asset else band.get("nodata")
    if isinstance(nodata, str):  # STAC allows "nan", "inf", "-inf"
        nodata = float(nodata)
    return Packing(
        dtype=str(np.dtype(str(dtype))),
        nodata=nodata,
        scale=float(pick("raster:scale", "scale", 1.0)),
        offset=float(pick("raster:offset", "offset", 0.0)),
    )


def _band_attrs(asset: Mapping[str, Any]) -> dict[str, Any]:
    """Band metadata as variable attributes (STAC 1.1 ``bands``, else 1.0 ``eo:bands``)."""
    new, old, raster = (
        _first(asset.get("bands")),
        _first(asset.get("eo:bands")),
        _first(asset.get("raster:bands")),
    )
    attrs: dict[str, Any] = {}
    common = new.get("eo:common_name") or old.get("common_name") or asset.get("eo:common_name")
    if common:
        attrs["eo:common_name"] = str(common)
    wavelength = (
        new.get("eo:center_wavelength")
        or old.get("center_wavelength")
        or asset.get("eo:center_wavelength")
    )
    if wavelength is not None:
        attrs["center_wavelength"] = float(wavelength)
    name = new.get("name") or old.get("name")
    if name:
        attrs["band_name"] = str(name)
    unit = asset.get("unit") or new.get("unit") or raster.get("unit")
    if unit and unit != "-":
        attrs["units"] = str(unit)
    return attrs


def asset_order(key: str, asset: Mapping[str, Any]) -> tuple[bool, float, tuple[Any, ...]]:
    """A sort key of assets that no server's JSON key order changes: spectral bands by
    centre wavelength, then the others by name, numbers in names compared as numbers.

    Examples
    --------
    >>> assets = {"AOT": {}, "B8A": {"bands": [{"eo:center_wavelength": 0.865}]},
    ...           "B11": {"bands": [{"eo:center_wavelength": 1.61}]},
    ...           "B04": {"eo:bands": [{"center_wavelength": 0.665}]}, "SZA": {}, "A10": {}}
    >>> sorted(assets, key=lambda k: asset_order(k, assets[k]))
    ['B04', 'B8A', 'B11', 'A10', 'AOT', 'SZA']
    """
    wavelength = _band_attrs(asset).get("center_wavelength")
    natural = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", key)
        if part
    )
    return wavelength is None, float(wavelength or 0.0), natural


def _is_class(key: str, asset: Mapping[str, Any], packing: Packing) -> bool:
    if np.dtype(packing.dtype).kind not in "iu" or packing.scale != 1.0 or packing.offset:
        return False
    roles = asset.get("roles") or ()
    return (
        "data-mask" in roles
        or "classification:classes" in asset
        or "classification:classes" in _first(asset.get("raster:bands"))
        or key.upper() in (*SCL_KEYS, *CLOUDMASK_KEYS)
    )


def asset_meta(collection: str | None, key: str, items: Sequence[Mapping[str, Any]]) -> AssetMeta:
    """What the first item holding asset ``key`` says of it (items of one collection
    describe an asset alike); the package's knowledge of the collection fills a packing
    that no item states.

    Parameters
    ----------
    collection : str or None
        The collection id (for :data:`~xarray_terrascope.catalog.collections.COLLECTIONS`).
    key : str
        The asset key.
    items : sequence of dict
        STAC item dicts.
    """
    asset: Mapping[str, Any] = next(
        (item["assets"][key] for item in items if key in item.get("assets", {})), {}
    )
    packing = _packing_of(asset)
    if packing is None:
        info = COLLECTIONS.get(collection or "")
        packing = info.packing.get(key) if info else None
    if packing is None:
        logger.warning(
            "Asset %r of %s states no data type (neither data_type nor raster:bands) and "
            "the package knows no packing for it: reading it as float32 without scaling",
            key,
            collection,
        )
        packing = Packing("float32", None, 1.0, 0.0)
    roles = tuple(str(role) for role in asset.get("roles") or ())
    classes = _is_class(key, asset, packing)
    attrs = _band_attrs(asset)
    if roles:
        attrs["roles"] = " ".join(roles)
    if classes:
        if packing.nodata is not None:
            attrs["nodata"] = np.dtype(packing.dtype).type(packing.nodata)
        if key.upper() in SCL_KEYS:
            attrs["terrascope:classification"] = "scl"
            attrs["flag_values"] = np.array(list(SCL_CLASSES), dtype=packing.dtype)
            attrs["flag_meanings"] = " ".join(SCL_CLASSES.values())
        elif key.upper() in CLOUDMASK_KEYS or "cloud" in roles:
            attrs["terrascope:classification"] = "cloudmask"
            attrs["flag_values"] = np.array([0, 1], dtype=packing.dtype)
            attrs["flag_meanings"] = "clear cloud"
    return AssetMeta(key, packing, roles, classes, attrs)
