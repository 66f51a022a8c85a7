"""Stored values to physical values inside the read, exactly as xarray's CF decoding.

:class:`Decoder` applies ``scale_factor``, ``add_offset`` and ``_FillValue`` to each
window the engine reads, in one new float array (xarray's lazy :func:`xarray.decode_cf`
chain on the same attributes takes a mask, a float copy and two passes per chunk). For
8 and 16 bit stored types (every Terrascope product) it checks once, on every possible
stored value, that its result is bit for bit xarray's; any other type, or a
disagreement, keeps xarray's own decoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["CF_KEYS", "Decoder", "decode_cf_array", "packed"]

#: The attributes CF decoding consumes (they move to ``encoding``).
CF_KEYS = ("scale_factor", "add_offset", "_FillValue")

_NAME = "__terrascope_values__"


def decode_cf_array(da: xr.DataArray) -> xr.DataArray:
    """xarray's own CF mask-and-scale decoding of one array (lazy, dask-aware).

    Examples
    --------
    >>> raw = xr.DataArray(np.array([0, 255], np.uint8), attrs={"_FillValue": np.uint8(255)})
    >>> decode_cf_array(raw).values.tolist()
    [0.0, nan]
    """
    decoded = xr.decode_cf(
        da.to_dataset(name=_NAME), mask_and_scale=True, decode_times=False, decode_coords=False
    )
    return decoded[_NAME]


def packed(da: xr.DataArray) -> bool:
    """Whether ``da`` holds stored integers with CF packing attributes (a measurement of a
    ``decode=False`` cube), whose no-data value a reduction must not count as data.
    Classification assets (SCL) carry none: their codes are values.

    Examples
    --------
    >>> packed(xr.DataArray(np.zeros(2, np.uint8), attrs={"_FillValue": np.uint8(255)}))
    True
    >>> packed(xr.DataArray(np.zeros(2, np.uint8))), packed(xr.DataArray(np.zeros(2)))
    (False, False)
    """
    return da.dtype.kind in "iu" and any(key in da.attrs for key in CF_KEYS)


def _xarray_decode(raw: np.ndarray, attrs: dict) -> xr.Variable:
    return decode_cf_array(xr.DataArray(raw, attrs=dict(attrs))).variable


class Decoder:
    """Turn stored values into physical ones as ``xarray.decode_cf`` would.

    Parameters
    ----------
    dtype : numpy dtype
        The stored type.
    attrs : dict
        The CF attributes (``scale_factor``, ``add_offset``, ``_FillValue``; others are
        ignored).

    Attributes
    ----------
    dtype : numpy.dtype
        The decoded type (xarray's choice, float32 for Terrascope's products).
    encoding : dict
        What ``decode_cf`` records in the variable's ``encoding`` (so writing the
        Dataset packs the values again).

    Examples
    --------
    >>> import numpy as np
    >>> ndvi = Decoder(np.uint8, {"scale_factor": np.float32(0.004),
    ...                           "add_offset": np.float32(-0.08), "_FillValue": np.uint8(255)})
    >>> ndvi.dtype, ndvi(np.array([0, 125, 255], np.uint8)).astype(float).round(3).tolist()
    (dtype('float32'), [-0.08, 0.42, nan])
    """

    def __init__(self, dtype: Any, attrs: dict) -> None:
        self.stored = np.dtype(dtype)
        self.attrs = {k: attrs[k] for k in CF_KEYS if k in attrs}
        probe = np.zeros(1, self.stored)
        if self.stored.kind in "iu" and self.stored.itemsize <= 2:
            every = np.arange(2 ** (8 * self.stored.itemsize), dtype=f"u{self.stored.itemsize}")
            probe = every.view(self.stored)
        reference = _xarray_decode(probe, self.attrs)
        self.dtype = np.dtype(reference.dtype)
        self.encoding = dict(reference.encoding)
        self._identity = not self.attrs and self.dtype == self.stored
        self._arithmetic = probe.size > 1 and np.array_equal(
            self._compute(probe), reference.values, equal_nan=True
        )

    def _compute(self, raw: np.ndarray) -> np.ndarray:
        values = raw.astype(self.dtype)  # a new array: the one allocation
        scale, offset = self.attrs.get("scale_factor"), self.attrs.get("add_offset")
        if scale is not None:
            values *= scale
        if offset is not None:
            values += offset
        fill = self.attrs.get("_FillValue")
        if fill is not None and self.dtype.kind == "f":
            np.copyto(values, self.dtype.type(np.nan), where=raw == fill)
        return values

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Physical values of the stored ``raw`` (of :attr:`dtype`; ``raw`` itself when
        there is nothing to decode)."""
        if self._identity:
            return raw
        if self._arithmetic:
            return self._compute(raw)
        return np.asarray(_xarray_decode(raw, self.attrs).values, dtype=self.dtype)
