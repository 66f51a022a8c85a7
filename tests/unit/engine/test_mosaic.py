"""Per-date mosaics: pure arithmetic, checked against hand-made arrays."""

from __future__ import annotations

import numpy as np

from xarray_terrascope.engine.mosaic import mosaic


def test_the_first_file_of_a_date_wins_and_later_ones_fill_its_gaps():
    out = np.full((3, 2, 2), 255, np.uint8)
    layers = [
        (0, np.array([[1, 255], [255, 4]], np.uint8)),
        (0, np.array([[9, 2], [255, 9]], np.uint8)),  # fills (0, 1) only
        (0, np.array([[9, 9], [3, 9]], np.uint8)),  # fills (1, 0) only
        (2, np.array([[5, 5], [5, 5]], np.uint8)),
    ]
    mosaic(out, layers, np.uint8(255))
    np.testing.assert_array_equal(out[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(out[1], np.full((2, 2), 255))  # no file: left as it was
    np.testing.assert_array_equal(out[2], np.full((2, 2), 5))


def test_nan_is_no_data_for_float_stores():
    out = np.full((1, 1, 3), np.nan, np.float32)
    layers = [
        (0, np.array([[0.5, np.nan, np.nan]], np.float32)),
        (0, np.array([[0.9, 0.2, np.nan]], np.float32)),
    ]
    mosaic(out, layers, np.float32(np.nan))
    np.testing.assert_array_equal(out[0], np.array([[0.5, 0.2, np.nan]], np.float32))


def test_a_first_layer_replaces_the_whole_window_even_where_it_has_no_data():
    """The date's first file is pasted whole: what ``out`` held before is no mosaic
    input (it is the fill, by construction in the engine)."""
    out = np.full((1, 1, 2), 7, np.int16)
    mosaic(out, [(0, np.array([[32767, 1]], np.int16))], np.int16(32767))
    np.testing.assert_array_equal(out[0], [[32767, 1]])
