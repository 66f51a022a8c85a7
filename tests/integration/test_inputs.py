"""Arguments users get wrong, dates in every spelling, and items with a bbox."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xarray_terrascope as xts
from xarray_terrascope.catalog.search import check_dates
from xarray_terrascope.exceptions import (
    AuthenticationError,
    InvalidArgumentError,
    NoItemsFoundError,
)
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import FAPAR, NDVI

WIDE = [5.80, 51.235, 6.18, 51.255]
CLIP = [5.81, 51.24, 5.85, 51.25]  # 31UFS only: the 31UGS and 32ULB items miss it


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


# --- dates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "first", "last"),
    [
        ("2025-06-07", "2025-06-07", _utc(2025, 6, 7), _utc(2025, 6, 7, 23, 59, 59, 999999)),
        ("20250607", "20250607", _utc(2025, 6, 7), _utc(2025, 6, 7, 23, 59, 59, 999999)),
        ("2025-06-07Z", "2025-06-07Z", _utc(2025, 6, 7), _utc(2025, 6, 7, 23, 59, 59, 999999)),
        ("2025-05", "2025-05", _utc(2025, 5, 1), _utc(2025, 5, 31, 23, 59, 59, 999999)),
        ("2024-02", "2024-02", _utc(2024, 2, 1), _utc(2024, 2, 29, 23, 59, 59, 999999)),
        ("2025", "2025", _utc(2025, 1, 1), _utc(2025, 12, 31, 23, 59, 59, 999999)),
        (
            np.datetime64("2025-06-07"),
            np.datetime64("2025-06-08"),
            _utc(2025, 6, 7),
            _utc(2025, 6, 8, 23, 59, 59, 999999),
        ),
        (
            np.datetime64("2025-06-07T10:30"),
            np.datetime64("2025-06"),
            _utc(2025, 6, 7, 10, 30),
            _utc(2025, 6, 30, 23, 59, 59, 999999),
        ),
        (
            pd.Timestamp("2025-06-07 10:00"),
            pd.Timestamp("2025-06-08 12:00", tz="Europe/Brussels"),
            _utc(2025, 6, 7, 10),
            _utc(2025, 6, 8, 10),
        ),
        ("2025-06-07T10:00:00Z", None, _utc(2025, 6, 7, 10), None),
    ],
)
def test_every_date_spelling_covers_its_whole_period(start, end, first, last):
    assert check_dates(start, end) == (first, last)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": pd.NaT}, "start is NaT"),
        ({"end": np.datetime64("NaT")}, "end is NaT"),
        ({"start": np.datetime64("300000-01-01")}, "start .* outside the years"),
        ({"end": "2025-13"}, "end must be a valid date"),
        ({"start": "2025-02-30"}, "start must be a valid date"),
    ],
)
def test_impossible_dates_name_their_argument(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        check_dates(kwargs.get("start"), kwargs.get("end"))


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
