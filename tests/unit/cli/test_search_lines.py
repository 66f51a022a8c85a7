"""``xarray-terrascope search`` lines of items as STAC APIs serve them: a null
``datetime`` with an interval (pgstac drops the key), a time with an offset."""

from __future__ import annotations

from datetime import datetime

import pystac

from xarray_terrascope.cli.search import item_line


def _item(properties: dict, moment: datetime | None) -> pystac.Item:
    return pystac.Item("S2_X", None, None, moment, {"eo:cloud_cover": 12.5, **properties})


def test_an_item_without_datetime_is_listed_at_the_start_of_its_interval():
    interval = {"start_datetime": "2026-08-07T10:46:21Z", "end_datetime": "2026-08-07T10:50:00Z"}
    item = _item(interval, None)
    assert item_line(item) == "2026-08-07T10:46:21Z    12.50  S2_X"


def test_a_time_with_an_offset_is_listed_in_utc():
    item = pystac.Item.from_dict(
        {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": "S2_X",
            "geometry": None,
            "properties": {"datetime": "2026-08-07T12:00:00+02:00"},
            "links": [],
            "assets": {},
        }
    )
    assert item_line(item) == "2026-08-07T10:00:00Z        -  S2_X"
