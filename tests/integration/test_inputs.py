"""Arguments users get wrong, dates searched, and items with a bbox (dates in every
spelling, checked without a server: ``unit/catalog/test_dates.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.exceptions import (
    AuthenticationError,
    InvalidArgumentError,
    NoItemsFoundError,
)
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import FAPAR, NDVI

WIDE = [5.80, 51.235, 6.18, 51.255]
CLIP = [5.81, 51.24, 5.85, 51.25]  # 31UFS only: the 31UGS and 32ULB items miss it


# --- dates searched ---------------------------------------------------------------------


def test_a_compact_end_date_keeps_its_last_day(sandbox_urls):
    dashed = xts.search(NDVI, SAMPLE_FIELD, "2025-06-01", "2025-06-07")
    compact = xts.search(NDVI, SAMPLE_FIELD, "20250601", "20250607")
    assert [i.id for i in compact] == [i.id for i in dashed]
    assert dashed[-1].datetime.date().isoformat() == "2025-06-07"


def test_a_month_is_searched_as_a_whole_month(sandbox_urls):
    month = xts.search(NDVI, SAMPLE_FIELD, "2025-05", "2025-05")
    days = xts.search(NDVI, SAMPLE_FIELD, "2025-05-01", "2025-05-31")
    assert [i.id for i in month] == [i.id for i in days]


# --- the bad-input table ----------------------------------------------------------------


def _items(collection=NDVI, bbox=SAMPLE_FIELD):
    return xts.search(collection, bbox, "2025-06-08", "2025-06-12")


def _interval_only_items():
    items = [item.clone() for item in _items()]
    for item in items:
        moment = item.datetime
        item.datetime = None
        item.common_metadata.start_datetime = moment
        item.common_metadata.end_datetime = moment
    return items


BAD_INPUTS = {
    "mixed collections": (
        lambda: xts.open_dataset(_items(NDVI) + _items(FAPAR)),
        InvalidArgumentError,
        "several collections",
    ),
    "items + a bbox that overlaps none": (
        lambda: xts.open_dataset(_items(), bbox=[4.0, 50.0, 4.1, 50.1]),
        NoItemsFoundError,
        "intersects the bbox",
    ),
    "resolution as text": (
        lambda: xts.open_dataset(list(SAMPLE_FIELD), start="2025-06-10", resolution="20"),
        InvalidArgumentError,
        "resolution must be a positive number",
    ),
    "resolution True": (
        lambda: xts.open_dataset(list(SAMPLE_FIELD), start="2025-06-10", resolution=True),
        InvalidArgumentError,
        "resolution must be a positive number",
    ),
    "unknown EPSG code": (
        lambda: xts.open_dataset(list(SAMPLE_FIELD), start="2025-06-10", crs=999999),
        InvalidArgumentError,
        "crs must be an EPSG code",
    ),
    "negative EPSG code": (
        lambda: xts.open_dataset(list(SAMPLE_FIELD), start="2025-06-10", crs=-1),
        InvalidArgumentError,
        "crs must be an EPSG code",
    ),
    "mistyped search keyword": (
        lambda: xts.search(NDVI, SAMPLE_FIELD, max_cloud=10),
        InvalidArgumentError,
        "unknown keyword.*max_cloud",
    ),
    "intersects that is not GeoJSON": (
        lambda: xts.search(NDVI, intersects="garbage"),
        InvalidArgumentError,
        "intersects must be a GeoJSON geometry",
    ),
    "intersects with a wrong type": (
        lambda: xts.search(NDVI, intersects={"type": "Circle", "coordinates": [5, 51]}),
        InvalidArgumentError,
        "intersects must be a GeoJSON geometry",
    ),
    "search_ndvi without a bbox": (
        lambda: xts.search_ndvi(None, "2025-06-01", "2025-06-10"),
        InvalidArgumentError,
        "search_ndvi needs a bbox",
    ),
    "slider of a missing variable": (
        lambda: xts.open_dataset(
            list(SAMPLE_FIELD), start="2025-06-10", end="2025-06-10"
        ).terrascope.plot_time_slider(variable="nope"),
        InvalidArgumentError,
        "variable='nope' is not in this Dataset",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_typed_error_naming_it(logged_in, case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match) as info:
        call()
    assert "Traceback" not in str(info.value)
    if issubclass(error, InvalidArgumentError):
        assert isinstance(info.value, ValueError)


def test_items_with_only_an_interval_use_its_start(logged_in):
    items = _interval_only_items()
    assert all(item.datetime is None for item in items)
    ds = xts.open_dataset(items, bbox=list(SAMPLE_FIELD))
    reference = xts.open_dataset(_items(), bbox=list(SAMPLE_FIELD))
    np.testing.assert_array_equal(ds.time.values, reference.time.values)
    assert xts.item_dates(items) == reference.terrascope.dates()


# --- items + bbox: the cube equals the bbox search's cube -----------------------------


def test_items_clipped_to_a_bbox_equal_the_bbox_search(logged_in):
    items = xts.search(NDVI, WIDE, "2025-06-01", "2025-06-30")
    tiles = {item.id.split("_")[2] for item in items}
    assert len(tiles) == 3, "the list must hold items that miss the clip box"
    clip = xts.open_dataset(items, bbox=CLIP)
    searched = xts.open_dataset(CLIP, start="2025-06-01", end="2025-06-30")
    assert clip.terrascope.dates() == searched.terrascope.dates()
    np.testing.assert_array_equal(clip.item_ids.values, searched.item_ids.values)
    assert all("_31UFS_" in ids for ids in clip.item_ids.values)
    xr.testing.assert_identical(clip.NDVI.load(), searched.NDVI.load())


def test_items_of_the_remaining_dates_only(logged_in):
    ds = xts.open_dataset(WIDE, start="2025-06-08", end="2025-06-14")
    assert ds.sizes["time"] >= 2
    first = ds.isel(time=[0]).terrascope.items
    assert {item.id for item in first} == set(str(ds.item_ids.values[0]).split())
    assert len(first) < len(ds.terrascope.items)
    last = ds.isel(time=-1).terrascope.items  # a scalar time: one date left
    assert {item.id for item in last} == set(str(ds.item_ids.values[-1]).split())


def test_computing_after_logout_says_what_to_do_in_plain_threads(logged_in):
    ds = xts.open_dataset(list(SAMPLE_FIELD), start="2025-06-10", end="2025-06-10")
    xts.logout()
    with pytest.raises(AuthenticationError) as info:
        ds.NDVI.load()
    text = str(info.value)
    assert "login()" in text and "compute again" in text
    assert "dask" not in text and "worker" not in text
