"""What the package knows of Terrascope's collections before asking the catalogue: their
default assets, and the packing of an asset when its items do not say it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["COLLECTIONS", "DEFAULT_COLLECTION", "CollectionInfo", "Packing"]

DEFAULT_COLLECTION = "terrascope-s2-ndvi-v2"


@dataclass(frozen=True)
class Packing:
    """How an asset stores its values: ``physical = scale * DN + offset`` for each stored
    digital number (DN) other than ``nodata``, which means "no data" (NaN once decoded).

    Examples
    --------
    >>> ndvi = Packing("uint8", 255, scale=0.004, offset=-0.08)
    >>> ndvi.fill_value, Packing("float32", None).fill_value
    (np.uint8(255), np.float32(nan))
    """

    dtype: str
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def fill_value(self) -> np.generic:
        """The stored value that stands for "no data" (NaN or 0 when there is no nodata)."""
        dtype = np.dtype(self.dtype)
        if self.nodata is not None:
            return dtype.type(self.nodata)
        return dtype.type(np.nan) if dtype.kind == "f" else dtype.type(0)


@dataclass(frozen=True)
class CollectionInfo:
    """What the package knows of a collection: its default assets, and the packing of
    those whose items carry none."""

    id: str
    assets: tuple[str, ...]
    packing: dict[str, Packing]


#: Collections the package knows. ``packing`` holds fallbacks used only when an item's
#: asset does not say how it is packed; what a collection's items carry always wins.
#: Only NDVI's scaling is a published fact (0.004 * DN - 0.08); the other biophysical
#: products are decoded from their items' metadata.
COLLECTIONS: dict[str, CollectionInfo] = {
    info.id: info
    for info in (
        CollectionInfo(
            "terrascope-s2-ndvi-v2",
            ("NDVI",),
            {"NDVI": Packing("uint8", 255, scale=0.004, offset=-0.08)},
        ),
        CollectionInfo("terrascope-s2-fapar-v2", ("FAPAR",), {}),
        CollectionInfo("terrascope-s2-fcover-v2", ("FCOVER",), {}),
        CollectionInfo("terrascope-s2-lai-v2", ("LAI",), {}),
        CollectionInfo("terrascope-s1-grd-sigma0-v1", ("VV", "VH"), {}),
        CollectionInfo("esa-worldcover-map-10m-2021-v2", ("Map",), {}),
    )
}
