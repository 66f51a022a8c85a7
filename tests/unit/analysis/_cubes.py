"""Cubes built by hand in the shape the terrascope engine opens them (issue 22's
contract): float32 reflectances with ``eo:common_name``, a uint8 SCL with CF flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

#: Sentinel-2 bands of a TOC cube: asset key -> (eo:common_name, centre wavelength in um,
#: range of the random reflectances: those of vegetation and soil, so that no index's
#: denominator comes near 0 and float32 rounding stays small against the float64 truth).
TOC_BANDS = {
    "B02": ("blue", 0.490, (0.01, 0.10)),
    "B03": ("green", 0.560, (0.03, 0.15)),
    "B04": ("red", 0.665, (0.02, 0.20)),
    "B05": ("rededge", 0.705, (0.05, 0.30)),
    "B06": ("rededge", 0.740, (0.10, 0.40)),
    "B07": ("rededge", 0.783, (0.12, 0.50)),
    "B08": ("nir", 0.842, (0.15, 0.60)),
    "B8A": ("nir08", 0.865, (0.15, 0.60)),
    "B11": ("swir16", 1.610, (0.05, 0.35)),
    "B12": ("swir22", 2.190, (0.03, 0.30)),
}
SCL_MEANINGS = (
    "no_data saturated_or_defective dark_area_pixels cloud_shadows vegetation "
    "not_vegetated water unclassified cloud_medium_probability cloud_high_probability "
    "thin_cirrus snow"
)


def grid(ny: int, nx: int, res: float = 10.0, nt: int = 2) -> dict[str, np.ndarray]:
    """Coordinates of a (time, y, x) cube on a UTM grid of ``res`` metres."""
    return {
        "time": pd.date_range("2026-05-02", periods=nt, freq="5D").values,
        "y": 5_650_000.0 - res / 2 - res * np.arange(ny),
        "x": 500_000.0 + res / 2 + res * np.arange(nx),
    }


def toc_cube(
    bands: tuple[str, ...] = tuple(TOC_BANDS), shape: tuple[int, int, int] = (2, 24, 18), seed=0
) -> xr.Dataset:
    """Float32 reflectances with the engine's attributes, a few NaN (no data)."""
    rng = np.random.default_rng(seed)
    coords = grid(shape[1], shape[2], nt=shape[0])
    data_vars = {}
    for key in bands:
        common, wavelength, (low, high) = TOC_BANDS[key]
        values = rng.uniform(low, high, shape).astype("float32")
        values[rng.random(shape) < 0.05] = np.nan
        attrs = {
            "long_name": key,
            "eo:common_name": common,
            "center_wavelength": wavelength,
            "band_name": key,
            "roles": "data",
        }
        data_vars[key] = (("time", "y", "x"), values, attrs)
    return xr.Dataset(data_vars, coords=coords, attrs={"collection": "terrascope-s2-toc-v2"})


def scl_variable(values: np.ndarray) -> xr.Variable:
    """An SCL variable as the engine writes it: uint8, flags, no NaN."""
    attrs = {
        "long_name": "SCL",
        "roles": "data-mask",
        "flag_values": np.arange(12, dtype="uint8"),
        "flag_meanings": SCL_MEANINGS,
        "terrascope:classification": "scl",
    }
    return xr.Variable(("time", "y", "x"), values.astype("uint8"), attrs)
