"""The items a cube remembers: built from the search's dicts when first asked for,
without changing those dicts (others may hold them)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pystac

from xarray_terrascope.cube.item_store import items_cache, recall_items, remember_items

ITEM_2026 = Path(__file__).parents[2] / "data" / "terrascope-toc-item-2026.json"


def test_items_are_built_from_dicts_that_stay_as_they_were():
    """A STAC 1.1 item (2026 shape) and the same item written as STAC 1.0 with
    ``proj:epsg``: pystac migrates both; the dicts are not touched."""
    new = json.loads(ITEM_2026.read_text())
    old = copy.deepcopy(new)
    old["stac_version"] = "1.0.0"
    old["id"] = old["id"] + "_OLD"
    old["properties"].pop("proj:code", None)
    old["properties"]["proj:epsg"] = 32631
    dicts = [new, old]
    before = copy.deepcopy(dicts)
    key = remember_items(dicts)
    try:
        items = recall_items(key)
        assert items is not None
        assert dicts == before
        assert [i.to_dict() for i in items] == [
            pystac.Item.from_dict(copy.deepcopy(d)).to_dict() for d in before
        ]
        assert items[1].properties.get("proj:code") == "EPSG:32631"  # migrated
        assert recall_items(key)[0] is items[0]  # built once
    finally:
        items_cache.pop(key)
