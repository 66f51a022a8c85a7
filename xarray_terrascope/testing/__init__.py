"""An offline stand-in for Terrascope: a synthetic world, a STAC API and a download server.

>>> from xarray_terrascope.testing import Sandbox
>>> with Sandbox(seed=0) as sandbox:  # doctest: +SKIP
...     print(sandbox.env["TERRASCOPE_STAC_URL"])

The names are imported lazily (PEP 562): this package is loaded by the ``pytest11``
plugin in every pytest session, and must not pull in rasterio, werkzeug, shapely,
cql2 or geopandas (the ``sandbox`` extra) until a sandbox is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Sandbox
    from .world import COVER, CROPS, EXTENT, SAMPLE_FIELD, TOC, Sky, World

__all__ = ["COVER", "CROPS", "EXTENT", "SAMPLE_FIELD", "TOC", "Sandbox", "Sky", "World"]

_WHERE = {
    "Sandbox": ".server",
    "World": ".world",
    "SAMPLE_FIELD": ".world",
    "EXTENT": ".world",
    "COVER": ".world",
    "CROPS": ".world",
    "Sky": ".world",
    "TOC": ".world",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
