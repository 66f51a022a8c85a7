"""The sandbox's TOC model without a server: the reflectance model, the sky's optics, the
scene classification rules, the coarse-grid arithmetic and the declared file sizes (real
GDAL writes in a temporary directory)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from xarray_terrascope.testing import COVER, Sky
from xarray_terrascope.testing._files import declared_size
from xarray_terrascope.testing._model import clip_tile
from xarray_terrascope.testing._scene import (
    block_max,
    block_mean,
    grid,
    opacity,
    shadow_dim,
    swath_nodata,
)
from xarray_terrascope.testing._scl import cloudmask_from, land_classes, scl_from, sky_classes
from xarray_terrascope.testing._toc import BANDS, red_nir, to_dn

WATER = COVER.index("water")


@pytest.mark.parametrize("code", range(len(COVER)))
def test_red_and_nir_give_the_ndvi_exactly(code: int) -> None:
    ndvi = np.linspace(-0.5, 0.95, 300, dtype=np.float32)
    red, nir = red_nir(ndvi, np.full(ndvi.shape, code, np.uint8))
    assert red.dtype == nir.dtype == np.float32
    np.testing.assert_allclose((nir - red) / (nir + red), ndvi, atol=2e-7)
    assert (red > 0).all() and (nir > 0).all() and (nir < 0.6).all()


def test_reflectance_is_plausible_for_each_cover() -> None:
    def at(cover: str, ndvi: float) -> tuple[float, float]:
        red, nir = red_nir(np.float32([ndvi]), np.uint8([COVER.index(cover)]))
        return float(red[0]), float(nir[0])

    red, nir = at("maize", 0.85)  # a closed canopy
    assert red < 0.04 and 0.35 < nir < 0.45
    red, nir = at("potato", 0.15)  # bare soil
    assert 0.1 < red < 0.16 and 0.15 < nir < 0.22
    red, nir = at("water", -0.35)
    assert nir < 0.02 < red < 0.05
    red, nir = at("road", 0.09)
    assert 0.08 < red < 0.11
    names = {b.name: b.common_name for b in BANDS.values()}
    assert names == {
        "B01": "coastal",
        "B02": "blue",
        "B03": "green",
        "B04": "red",
        "B05": "rededge",
        "B08": "nir",
        "B8A": "nir08",
        "B11": "swir16",
    }
    assert all(0.33 <= b.cloud <= 0.48 for b in BANDS.values())
    cloud_ndvi = (BANDS["B08"].cloud - BANDS["B04"].cloud) / (
        BANDS["B08"].cloud + BANDS["B04"].cloud
    )
    assert abs(cloud_ndvi) < 0.03


def test_quantisation_rounds_half_up_and_keeps_the_nodata_value_free() -> None:
    rho = np.float32([0.0, 0.00004, 0.00006, 0.1234, 3.5, -0.01])
    assert to_dn(rho, 0.0001, "int16").tolist() == [0, 0, 1, 1234, 32766, 0]


def test_cloud_opacity_and_shadow_dimming() -> None:
    d = np.float32([0.0, 0.2, 0.35, 0.5, 0.5001, 0.75, 2.0])
    w = opacity(d)
    assert w[:2].tolist() == [0.0, 0.0] and w[-2:].tolist() == [1.0, 1.0]
    assert np.all(np.diff(w) >= 0) and abs(w[3] - w[4]) < 1e-3  # continuous at 0.5
    k = shadow_dim(np.float32([0.0, 0.2, 0.5, 0.55, 1.0]))
    assert k[0] == k[1] == 0.0 and 0.7 < k[2] < 0.75 and k[3] == k[4] == pytest.approx(0.85)


def test_sky_classes_follow_the_thresholds_by_severity() -> None:
    cloud = np.float32([0.0, 0.3, 0.4, 0.0, 0.6, 0.8, 0.4, 0.6])
    shadow = np.float32([0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.6, 0.9])
    expected = [
        Sky.CLEAR,
        Sky.HAZE,
        Sky.CIRRUS,
        Sky.SHADOW,
        Sky.CLOUD_MEDIUM,
        Sky.CLOUD_HIGH,
        Sky.SHADOW,  # a shadow under a hazy edge is a shadow
        Sky.CLOUD_MEDIUM,  # a cloud hides its shadow
    ]
    assert sky_classes(cloud, shadow).tolist() == expected
    land = np.full(7, 5, np.uint8)
    assert scl_from(np.arange(7, dtype=np.uint8), land).tolist() == [5, 5, 10, 3, 8, 9, 0]
    assert cloudmask_from(np.arange(7, dtype=np.uint8)).tolist() == [0, 0, 1, 1, 1, 1, 255]
    assert land_classes(np.float32([0.5, 0.25, 0.0]), np.float32([-0.3, 0.4, 0.39])).tolist() == [
        6,
        4,
        5,
    ]


def test_coarse_pixels_average_or_take_the_worst_of_what_they_cover() -> None:
    a = np.arange(35, dtype=np.float32).reshape(5, 7)
    mean = block_mean(a, 2)
    assert mean.shape == (3, 4)
    for r in range(3):
        for c in range(4):
            assert mean[r, c] == pytest.approx(a[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean())
    worst = block_max(a.astype(np.uint8), 6)  # one 5 x 6 block, one 5 x 1 block
    assert worst.tolist() == [[a[:, :6].max(), a[:, 6:].max()]] == [[33, 34]]


def test_coarse_grids_share_the_tile_corner_and_reach_past_it() -> None:
    tile = clip_tile("32ULB")  # 1587 x 1180 at 10 m, not on a 20 m multiple of its zone
    for res, shape in ((10, (1180, 1587)), (20, (590, 794)), (60, (197, 265))):
        transform, width, height = grid(tile, res)
        assert (height, width) == shape
        assert (transform.a, transform.e) == (res, -res)
        assert (transform.c, transform.f) == (tile.transform.c, tile.transform.f)


def test_swath_edges_cut_some_tiles_on_one_orbit() -> None:
    lb, ugs = clip_tile("32ULB"), clip_tile("31UGS")
    assert swath_nodata(ugs, 8) is None and swath_nodata(lb, 51) is None
    wedge = swath_nodata(lb, 8)
    assert wedge is not None and wedge.shape == (197, 265)
    assert wedge[:, -1].all() and not wedge[:, 0].any()  # the east side is cut
    assert wedge[-1].sum() > wedge[0].sum()  # a wedge: wider in the south
    assert (np.diff(wedge.astype(int), axis=1) >= 0).all()  # one edge per row


@pytest.mark.parametrize("dtype", ["int16", "uint8", "uint16"])
def test_declared_size_bounds_even_incompressible_files(tmp_path, dtype: str) -> None:
    """The TOC files are padded to ``declared_size``: it must hold any file GDAL writes
    with the sandbox's profile, random noise (which DEFLATE cannot shrink) included."""
    width, height = 700, 530
    info = np.iinfo(dtype)
    data = np.random.default_rng(0).integers(info.min, info.max, (height, width), dtype=dtype)
    path = tmp_path / "noise.tif"
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": dtype,
        "crs": "EPSG:32631",
        "transform": rasterio.Affine(20, 0, 600000, 0, -20, 5700000),
        "nodata": 255 if dtype == "uint8" else 32767,
        "blocksize": 256,
        "compress": "DEFLATE",
        "predictor": 2,
        "level": 1,
        "overviews": "NONE",
        "bigtiff": "NO",
    }
    with rasterio.open(path, "w", **profile) as out:
        out.write(data, 1)
        out.update_tags(PRODUCT="S2A_20250101T103621_31UFS_TOC-B04_10M_V220", SANDBOX_SEED="0")
        out.set_band_description(1, "B04")
    size, declared = path.stat().st_size, declared_size(width, height, dtype)
    assert width * height * np.dtype(dtype).itemsize < size <= declared


def test_a_scene_classification_renders_from_a_fresh_scene() -> None:
    """SCL's land classes are memoised per scene and ask for the scene's water memo
    inside: that nested memo must not deadlock (it did with a plain lock). Run in a
    thread, so that a deadlock fails the test instead of hanging the session."""
    import threading

    from xarray_terrascope.testing._scene import Scene
    from xarray_terrascope.testing._toc import render_scl

    tile = clip_tile("31UGS")
    shape = (6, 8)
    ndvi = np.linspace(-0.4, 0.9, 48, dtype=np.float32).reshape(shape)
    code = np.full(shape, COVER.index("maize"), np.uint8)
    code[0, :2] = code[1, :2] = WATER
    scene = Scene(tile, 8, ndvi, code, np.zeros(shape, np.uint8), None, None)
    result: list[np.ndarray] = []
    worker = threading.Thread(
        target=lambda: result.append(render_scl(scene, swath=False)), daemon=True
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "render_scl deadlocked on the scene's memo"
    (scl,) = result
    assert scl.shape == (3, 4) and scl[0, 0] == 6  # two water pixels of four: water
    expected = np.where(ndvi.reshape(3, 2, 4, 2).mean(axis=(1, 3)) >= 0.4, 4, 5)
    assert (scl[:, 1:] == expected[:, 1:]).all() and (scl[1:, 0] == expected[1:, 0]).all()
