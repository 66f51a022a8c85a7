"""Start and end dates in every spelling users give, each covering its whole period, and
impossible dates naming their argument (``catalog.search.check_dates``)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from xarray_terrascope.catalog.search import check_dates
from xarray_terrascope.exceptions import InvalidArgumentError


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


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
