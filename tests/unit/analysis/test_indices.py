"""Spectral indices (``ds.terrascope.index``, ``ds.terrascope.ndvi``) on cubes built by
hand. Expected values are the published formulas written here in numpy, not the
catalogue's text: the package's result must agree with the definitions."""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import xarray as xr

import xarray_terrascope  # noqa: F401  (registers the accessor)
from xarray_terrascope.analysis.indices import band_variables, index_names
from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError

from ._cubes import toc_cube


def _f(ds: xr.Dataset, key: str) -> np.ndarray:
    return ds[key].values.astype("float64")


# index -> (kwargs, the published definition on the TOC bands)
DEFINITIONS = {
    # Rouse et al. 1974
    "NDVI": ({}, lambda d: (_f(d, "B08") - _f(d, "B04")) / (_f(d, "B08") + _f(d, "B04"))),
    # McFeeters 1996: green and NIR
    "NDWI": ({}, lambda d: (_f(d, "B03") - _f(d, "B08")) / (_f(d, "B03") + _f(d, "B08"))),
    # Huete et al. 2002: G 2.5, C1 6, C2 7.5, L 1
    "EVI": (
        {},
        lambda d: (
            2.5
            * (_f(d, "B08") - _f(d, "B04"))
            / (_f(d, "B08") + 6 * _f(d, "B04") - 7.5 * _f(d, "B02") + 1)
        ),
    ),
    # Gitelson and Merzlyak 1994: NIR and the first red-edge band (S2 B05, 705 nm)
    "NDRE": ({}, lambda d: (_f(d, "B08") - _f(d, "B05")) / (_f(d, "B08") + _f(d, "B05"))),
    # Key and Benson 2006: NIR and SWIR at 2.2 um (S2 B12)
    "NBR": ({}, lambda d: (_f(d, "B08") - _f(d, "B12")) / (_f(d, "B08") + _f(d, "B12"))),
    # Huete 1988 with his L = 0.5
    "SAVI": (
        {"L": 0.5},
        lambda d: 1.5 * (_f(d, "B08") - _f(d, "B04")) / (_f(d, "B08") + _f(d, "B04") + 0.5),
    ),
}


@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_indices_agree_with_their_published_definitions(name):
    ds = toc_cube()
    params, definition = DEFINITIONS[name]
    expected = definition(ds)
    out = ds.terrascope.index(name, **params)
    assert out.dtype == np.float32
    assert out.dims == ("time", "y", "x")
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(expected))
    assert np.isnan(expected).any() and (~np.isnan(expected)).any()
    np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.x.values, ds.x.values)


def test_savi_constant_defaults_to_the_catalogues_and_is_overridden():
    """The catalogue has one canopy background constant L, 1.0 (EVI's), used by SAVI too
    unless the caller passes Huete's 0.5: both must follow."""
    ds = toc_cube(("B04", "B08"))
    n, r = _f(ds, "B08"), _f(ds, "B04")
    np.testing.assert_allclose(
        ds.terrascope.index("SAVI").values, 2.0 * (n - r) / (n + r + 1.0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        ds.terrascope.index("SAVI", L=0.25).values,
        1.25 * (n - r) / (n + r + 0.25),
        rtol=1e-5,
        atol=1e-6,
    )


def test_evi_constants_are_overridden_by_params():
    ds = toc_cube(("B02", "B04", "B08"))
    n, r, b = _f(ds, "B08"), _f(ds, "B04"), _f(ds, "B02")
    out = ds.terrascope.index("EVI", g=2.0, C1=5.0, C2=7.0, L=2.0)
    np.testing.assert_allclose(
        out.values, 2.0 * (n - r) / (n + 5 * r - 7 * b + 2.0), rtol=1e-5, atol=1e-6
    )
    assert "g=2.0" in out.attrs["terrascope:inputs"]


def test_ndre_is_the_catalogues_ndrei_from_the_705nm_rededge_band():
    """Three bands say ``rededge``: their wavelengths pick B05 for RE1."""
    ds = toc_cube(("B04", "B05", "B06", "B07", "B08"))
    out = ds.terrascope.index("NDRE")
    assert out.name == "NDREI"
    assert "RE1=B05" in out.attrs["terrascope:inputs"].split()
    assert band_variables(ds)["RE3"] == ["B07"]
    n, re1 = _f(ds, "B08"), _f(ds, "B05")
    np.testing.assert_allclose(out.values, (n - re1) / (n + re1), rtol=1e-5, atol=1e-6)


def test_a_generic_rededge_without_wavelength_is_told_by_its_band_name():
    ds = toc_cube(("B05", "B06", "B08"))
    for key in ("B05", "B06"):
        del ds[key].attrs["center_wavelength"]
    assert band_variables(ds) == {"RE1": ["B05"], "RE2": ["B06"], "N": ["B08"]}


def test_nir08_serves_nir_when_the_cube_has_no_b08_and_b08_is_preferred_otherwise():
    only_8a = toc_cube(("B04", "B8A"))
    n, r = _f(only_8a, "B8A"), _f(only_8a, "B04")
    np.testing.assert_allclose(
        only_8a.terrascope.ndvi().values, (n - r) / (n + r), rtol=1e-5, atol=1e-6
    )
    both = toc_cube(("B04", "B08", "B8A"))
    assert "N=B08" in both.terrascope.index("NDVI").attrs["terrascope:inputs"].split()
    chosen = both.terrascope.index("NDVI", N="B8A")
    n = _f(both, "B8A")
    expected = (n - _f(both, "B04")) / (n + _f(both, "B04"))
    np.testing.assert_allclose(chosen.values, expected, rtol=1e-5, atol=1e-6)


def test_stored_numbers_are_decoded_before_the_index():
    """A ``decode=False`` cube: int16 DN with scale 0.0001 and nodata 32767."""
    ds = toc_cube(("B04", "B08"))
    raw = ds.copy()
    for key in ("B04", "B08"):
        dn = np.round(ds[key].values / 0.0001)
        raw[key] = ds[key].copy(data=np.where(np.isnan(dn), 32767, dn).astype("int16"))
        raw[key].attrs.update(scale_factor=0.0001, add_offset=0.0, _FillValue=32767)
    n = np.where(raw.B08.values == 32767, np.nan, raw.B08.values * 0.0001)
    r = np.where(raw.B04.values == 32767, np.nan, raw.B04.values * 0.0001)
    out = raw.terrascope.ndvi()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, (n - r) / (n + r), rtol=1e-5, atol=1e-6)


def test_index_stays_lazy_on_a_dask_cube(raise_if_dask_computes):
    ds = toc_cube(shape=(3, 40, 30)).chunk({"time": 1, "y": 16, "x": 16})
    with raise_if_dask_computes():
        out = ds.terrascope.index("EVI")
        ndvi = ds.terrascope.ndvi()
    assert isinstance(out.data, dask.array.Array) and isinstance(ndvi.data, dask.array.Array)
    assert out.dtype == np.float32
    expected = DEFINITIONS["EVI"][1](ds.compute())
    np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)


def test_the_dask_guard_fails_a_compute(raise_if_dask_computes):
    """The guard the laziness tests rely on does fail on a compute."""
    ds = toc_cube(("B04", "B08")).chunk({"y": 8})
    with raise_if_dask_computes(), pytest.raises(RuntimeError, match="Too many dask computes"):
        ds.terrascope.index("NDVI").values  # noqa: B018


def test_names_resolve_case_insensitively_and_list_aliases():
    ds = toc_cube(("B04", "B08"))
    assert ds.terrascope.index("ndvi").name == "NDVI"
    assert {"NDRE", "NDREI", "EVI"} <= set(index_names())


def test_unknown_index_lists_close_names():
    ds = toc_cube(("B04", "B08"))
    with pytest.raises(InvalidArgumentError, match="NDVI") as err:
        ds.terrascope.index("NVDI")
    assert "'NVDI' is not an index" in str(err.value)
    with pytest.raises(InvalidArgumentError, match="index name"):
        ds.terrascope.index(3)


@pytest.mark.parametrize(
    ("name", "lacking", "asset"),
    [
        ("NDWI", "green", "'B03'"),
        ("NDRE", "rededge", "'B05'"),
        ("EVI", "blue", "'B02'"),
        ("NBR", "swir22", "'B12'"),
    ],
)
def test_missing_bands_are_named_with_the_assets_to_add(name, lacking, asset):
    ds = toc_cube(("B04", "B08"))
    with pytest.raises(InvalidArgumentError) as err:
        ds.terrascope.index(name)
    message = str(err.value)
    assert lacking in message and asset in message, message
    assert "assets=" in message and "terrascope-s2-toc-v2" in message
    assert "R (" not in message.split("lacks:")[1].split(".")[0]  # red is there


def test_a_missing_nir_suggests_b08_or_b8a():
    ds = toc_cube(("B03", "B04"))
    with pytest.raises(InvalidArgumentError, match="'B08' or 'B8A'"):
        ds.terrascope.index("NDWI")


def test_parameters_the_index_does_not_take_and_constants_without_default():
    ds = toc_cube(("B04", "B08"))
    with pytest.raises(InvalidArgumentError, match="takes no parameter L"):
        ds.terrascope.index("NDVI", L=0.5)
    with pytest.raises(InvalidArgumentError, match="kNN"):
        ds.terrascope.index("kNDVI")
    with pytest.raises(InvalidArgumentError, match="no such variable"):
        ds.terrascope.index("NDVI", N="B8A")
    with pytest.raises(InvalidArgumentError, match="must be a number"):
        ds.terrascope.index("SAVI", L=[0.5])


def test_two_variables_with_one_common_name_must_be_chosen():
    ds = toc_cube(("B04", "B08"))
    ds["other_red"] = ds.B04.copy()
    with pytest.raises(InvalidArgumentError, match="R='<variable>'"):
        ds.terrascope.index("NDVI")
    assert ds.terrascope.index("NDVI", R="other_red").notnull().any()


def test_masks_are_never_taken_for_bands():
    ds = toc_cube(("B04", "B08"))
    ds["SCL"] = ds.B04.copy(data=np.full(ds.B04.shape, 4, "uint8"))  # attrs say "red"
    assert band_variables(ds) == {"R": ["B04"], "N": ["B08"]}


def test_ndvi_prefers_the_ndvi_variable_and_decodes_it():
    ds = toc_cube(("B04", "B08"))
    dn = np.array([[[0, 125, 255]]], "uint8")
    raw = xr.Dataset(
        {"NDVI": (("time", "y", "x"), dn, {"scale_factor": 0.004, "add_offset": -0.08})},
        coords={"time": ds.time.values[:1], "y": ds.y.values[:1], "x": ds.x.values[:3]},
    )
    raw.NDVI.attrs["_FillValue"] = 255
    np.testing.assert_allclose(raw.terrascope.ndvi().values, [[[-0.08, 0.42, np.nan]]], atol=1e-6)


def test_ndvi_without_ndvi_or_red_and_nir_says_what_would_do():
    ds = toc_cube(("B03", "B08"))
    with pytest.raises(TerrascopeError, match="no 'NDVI' variable") as err:
        ds.terrascope.ndvi()
    message = str(err.value)
    assert "red" in message and "'B04'" in message and "terrascope-s2-toc-v2" in message
