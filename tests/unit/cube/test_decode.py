"""The decoder inside the read gives xarray's own CF decoding, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.cube.decode import Decoder

CASES = [
    # NDVI as Terrascope publishes it
    (
        "uint8",
        {
            "scale_factor": np.float32(0.004),
            "add_offset": np.float32(-0.08),
            "_FillValue": np.uint8(255),
        },
    ),
    # a signed 16-bit product with a float32 scale and no offset
    ("int16", {"scale_factor": np.float32(0.01), "_FillValue": np.int16(-32768)}),
    # float64 attributes: xarray decodes to float64
    ("uint16", {"scale_factor": 0.0001, "add_offset": 0.0, "_FillValue": np.uint16(65535)}),
    # a class map: nodata only
    ("uint8", {"_FillValue": np.uint8(0)}),
    # a float product with NaN nodata: xarray's own decoder is kept
    ("float32", {"_FillValue": np.float32(np.nan), "scale_factor": np.float32(2.0)}),
]


def _xarray(raw: np.ndarray, attrs: dict) -> xr.Variable:
    ds = xr.Dataset({"v": xr.Variable(("t", "y", "x"), raw, attrs=dict(attrs))})
    return xr.decode_cf(ds, mask_and_scale=True, decode_times=False, decode_coords=False)["v"]


@pytest.mark.parametrize(("dtype", "attrs"), CASES)
def test_decoder_equals_xarray_decode_cf(dtype, attrs):
    rng = np.random.default_rng(0)
    kind = np.dtype(dtype)
    if kind.kind == "f":
        raw = rng.normal(size=(3, 40, 50)).astype(kind)
        raw[0, :5] = np.nan
    else:
        info = np.iinfo(kind)
        raw = rng.integers(info.min, info.max, size=(3, 40, 50), endpoint=True).astype(kind)
        raw[0, :5] = attrs["_FillValue"]
    expected = _xarray(raw, attrs)
    decoder = Decoder(kind, attrs)
    got = decoder(raw)
    assert got.dtype == expected.dtype == decoder.dtype
    np.testing.assert_array_equal(got, expected.values)
    assert np.isnan(got[0, :5]).all()
    assert decoder.encoding == expected.encoding


def test_decoder_without_attributes_hands_the_values_through():
    raw = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    decoder = Decoder(np.float32, {"long_name": "VV"})
    assert decoder(raw) is raw
    assert decoder.encoding == {"dtype": np.dtype("float32")}
