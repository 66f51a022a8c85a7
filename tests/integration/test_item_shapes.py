"""Terrascope's two item shapes, read from a real nginx: STAC 1.1 items (every 2026 item,
packing and band metadata at asset level, 10/20/60 m assets in one item, scene
classification and cloud mask assets) and the older STAC 1.0 ``raster:bands`` items
decode to the same Dataset.

The files are COGs written here with known digital numbers; the items are the 2026
reference item (``terrascope-toc-item-2026.example.json`` in the project's shared
references, reproduced in ``tests/data``) with their hrefs and grids pointed at them.
Expected values come from those numbers and the published packing (DN x 0.0001, 32767
no data, 20 m pixels replicated 2 x 2 on the 10 m grid), never from the package.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject

import xarray_terrascope as xts
from xarray_terrascope.engine import origins, read
from xarray_terrascope.engine.header_cache import headers

from ..support.helpers import missing_tier
from ..support.nginx import ENV_NGINX, Nginx, find_nginx

REFERENCE = Path(__file__).parent.parent / "data" / "terrascope-toc-item-2026.json"
USER, PASSWORD = "reader", "s3cret-Ü"
#: 10 m grid of the test files: 600 x 600 px from this corner (EPSG:32631).
X0, Y0, SIZE = 600000.0, 5700000.0, 600
#: asset -> (pixel size, dtype, nodata); as Terrascope's TOC V220 files
FILES = {
    "B04": (10, "int16", 32767),
    "B08": (10, "int16", 32767),
    "B11": (20, "int16", 32767),
    "AOT": (60, "uint16", 32767),
    "SCL": (20, "uint8", None),
    "CLOUDMASK": (20, "uint8", 255),
}


@pytest.fixture(autouse=True, scope="module")
def _nginx_binary():
    if find_nginx() is None:
        missing_tier(f"no nginx binary: set {ENV_NGINX} or run `bash scripts/run.sh test`")


def _numbers(key: str, res: int, dtype: str, nodata: int | None) -> np.ndarray:
    """Known digital numbers of one file: random in the asset's range, with a no-data
    corner (a swath edge)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    n = SIZE * 10 // res
    if key.startswith("SCL"):
        return _scene(int(key[3:]), n)
    elif key == "CLOUDMASK":
        values = rng.integers(0, 2, (n, n))
    else:
        values = rng.integers(0, 10000, (n, n))
    values = values.astype(dtype)
    edge = np.add.outer(np.arange(n), np.arange(n)) < n // 4  # upper-left triangle
    values[edge] = 0 if nodata is None else nodata
    return values


def _scene(day: int, n: int) -> np.ndarray:
    """A scene classification (20 m, ``n`` x ``n``): vegetation with a cloud (9), its
    shadow (3), water (6) and a no-data corner (0) on day 10; on day 15 a cloud (8)
    over the northern two thirds."""
    scl = np.full((n, n), 4, np.uint8)
    rows, cols = np.indices((n, n))
    if day == 10:
        scl[(rows - 100) ** 2 + (cols - 120) ** 2 <= 30**2] = 9
        scl[150:170, 50:120] = 3
        scl[200:250, 200:250] = 6
    else:
        scl[: 2 * n // 3] = 8
    scl[rows + cols < n // 4] = 0
    return scl


def _write_cog(path: Path, values: np.ndarray, res: int, nodata: int | None) -> None:
    profile = {
        "driver": "COG",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": "EPSG:32631",
        "transform": Affine(res, 0.0, X0, 0.0, -res, Y0),
        "compress": "DEFLATE",
        "blocksize": 256,
        "overviews": "NONE",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)


def _footprint() -> tuple[list[float], dict[str, Any]]:
    to_wgs84 = Transformer.from_crs(32631, 4326, always_xy=True)
    side = SIZE * 10.0
    xs = [X0, X0 + side, X0 + side, X0, X0]
    ys = [Y0, Y0, Y0 - side, Y0 - side, Y0]
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return bbox, {"type": "Polygon", "coordinates": [ring]}


def _items(download_url: str, day: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The STAC 1.1 item of one date, and the same item in the STAC 1.0 shape."""
    item = json.loads(REFERENCE.read_text())
    bbox, geometry = _footprint()
    item["id"] = f"S2B_202505{day:02d}T104619_31UFS_TOC_V220"
    item["bbox"], item["geometry"] = bbox, geometry
    item["properties"].update(
        {"datetime": f"2025-05-{day:02d}T10:46:19Z", "proj:code": "EPSG:32631"}
    )
    for key in ("start_datetime", "end_datetime", "proj:bbox"):
        item["properties"].pop(key, None)
    item["links"] = []
    nir = copy.deepcopy(item["assets"]["B04"])  # the reference shows B04 of the 10 m bands
    nir["title"] = "B08"
    nir["bands"] = [{"name": "B08", "eo:common_name": "nir", "eo:center_wavelength": 0.842}]
    item["assets"]["B08"] = nir
    kept = {}
    for key, (res, _dtype, _nodata) in FILES.items():
        asset = item["assets"][key]
        asset["href"] = f"{download_url}{day:02d}/{key}.tif"
        asset["proj:shape"] = [SIZE * 10 // res] * 2
        asset["proj:transform"] = [res, 0, X0, 0, -res, Y0, 0, 0, 1]
        asset.pop("file:size", None)
        kept[key] = asset
    item["assets"] = kept
    old = copy.deepcopy(item)
    old["stac_version"] = "1.0.0"
    old["stac_extensions"] = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    ]
    old["properties"]["proj:epsg"] = 32631
    del old["properties"]["proj:code"]
    for asset in old["assets"].values():
        band = {"data_type": asset.pop("data_type")}
        for new, name in (("raster:scale", "scale"), ("raster:offset", "offset")):
            if new in asset:
                band[name] = asset.pop(new)
        if "nodata" in asset:
            band["nodata"] = asset.pop("nodata")
        asset["raster:bands"] = [band]
        bands = asset.pop("bands", None)
        if bands:
            eo = {"name": bands[0]["name"]}
            if "eo:common_name" in bands[0]:
                eo["common_name"] = bands[0]["eo:common_name"]
            if "eo:center_wavelength" in bands[0]:
                eo["center_wavelength"] = bands[0]["eo:center_wavelength"]
            asset["eo:bands"] = [eo]
    return item, old


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two dates of six files each behind nginx with Basic auth; the known numbers."""
    root = tmp_path_factory.mktemp("toc-root")
    numbers: dict[tuple[int, str], np.ndarray] = {}
    for day in (10, 15):
        (root / f"{day:02d}").mkdir()
        for key, (res, dtype, nodata) in FILES.items():
            values = _numbers(f"{key}{day}", res, dtype, nodata)
            _write_cog(root / f"{day:02d}" / f"{key}.tif", values, res, nodata)
            numbers[day, key] = values
    with Nginx(root, {USER: PASSWORD}) as server:
        yield server, numbers


@pytest.fixture(scope="module")
def engine_only(served):
    """The same files behind a second nginx that refuses every request not from the
    package's async engine (its User-Agent): a read through GDAL (``GDAL/3.x``) fails."""
    server, _numbers = served
    refuse = 'if ($http_user_agent !~ "^xarray-terrascope/") { return 403; }'
    with Nginx(server.root, {USER: PASSWORD}, location=refuse) as strict:
        yield strict


@pytest.fixture
def cube(served, monkeypatch, tmp_path):
    server, numbers = served
    yield from _opener(server, numbers, monkeypatch, tmp_path)


@pytest.fixture
def strict_cube(served, engine_only, monkeypatch, tmp_path):
    """As ``cube``, on the server that only the async engine can read (it refuses the
    one request with which opening proves per-call credentials too: not checked here)."""
    yield from _opener(engine_only, served[1], monkeypatch, tmp_path, validate=False)


def _opener(
    server: Nginx, numbers: dict, monkeypatch: Any, tmp_path: Path, validate: bool = True
) -> Any:
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_URL", server.download_url)
    monkeypatch.setenv("TERRASCOPE_DOWNLOAD_HOSTS", server.origin)
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    pairs = [_items(server.download_url, day) for day in (10, 15)]
    credentials = xts.Credentials(USER, PASSWORD)

    def open_(shape: str = "1.1", **kw: Any) -> xr.Dataset:
        dicts = [new if shape == "1.1" else old for new, old in pairs]
        items = [pystac.Item.from_dict(d) for d in dicts]
        kw.setdefault("assets", list(FILES))
        kw.setdefault("validate", validate)
        return xr.open_dataset(items, engine="terrascope", credentials=credentials, **kw)

    yield open_, numbers, server
    read.clear_reader_cache()
    headers.clear_memory()
    origins.reset_limiters()


def _on_cube(values: np.ndarray, res: int, ds: xr.Dataset, fill: Any) -> np.ndarray:
    """The file's numbers on the cube's grid: each cube pixel takes the file pixel under
    its centre (a 20 m pixel covers 2 x 2 pixels of 10 m), ``fill`` outside the file."""
    rows = np.floor((Y0 - ds.y.values) / res).astype(int)
    cols = np.floor((ds.x.values - X0) / res).astype(int)
    inside = np.outer((rows >= 0) & (rows < len(values)), (cols >= 0) & (cols < len(values)))
    out = np.full(inside.shape, fill, dtype=np.result_type(values, type(fill)))
    picked = values[np.clip(rows, 0, len(values) - 1)][:, np.clip(cols, 0, len(values) - 1)]
    out[inside] = picked[inside]
    return out


def _physical(values: np.ndarray, nodata: int, scale: float) -> np.ndarray:
    out = values.astype(np.float64) * scale
    out[values == nodata] = np.nan
    return out


@pytest.mark.parametrize("shape", ["1.1", "1.0"])
def test_both_item_shapes_decode_every_asset_on_the_10m_grid(cube, shape, caplog):
    open_, numbers, _server = cube
    caplog.set_level(logging.INFO, logger="xarray_terrascope")
    ds = open_(shape, chunks={}).load()
    assert ds.sizes["time"] == 2 and ds.sizes["y"] >= SIZE and ds.sizes["x"] >= SIZE
    assert float(ds.x[1] - ds.x[0]) == 10.0
    for t, day in enumerate((10, 15)):
        for key in ("B04", "B08", "B11", "AOT"):
            res, _dtype, nodata = FILES[key]
            scale = 0.001 if key == "AOT" else 0.0001
            want = _physical(_on_cube(numbers[day, key], res, ds, nodata), nodata, scale)
            got = ds[key].values[t]
            assert ds[key].dtype == np.float32, key
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=key)
            assert np.isnan(got).sum() == np.isnan(want).sum() > 0, key
        for key in ("SCL", "CLOUDMASK"):
            assert ds[key].dtype == np.uint8, key
            fill = FILES[key][2] or 0
            np.testing.assert_array_equal(
                ds[key].values[t], _on_cube(numbers[day, key], 20, ds, fill), err_msg=key
            )
    through_gdal = [r.getMessage() for r in caplog.records if "through GDAL" in r.getMessage()]
    assert not through_gdal, through_gdal[:3]


@pytest.mark.parametrize("shape", ["1.1", "1.0"])
def test_band_metadata_and_class_flags_land_in_the_attributes(cube, shape):
    open_, _numbers, _server = cube
    ds = open_(shape)
    assert ds.B04.attrs["eo:common_name"] == "red"
    assert ds.B04.attrs["center_wavelength"] == pytest.approx(0.665)
    assert ds.B08.attrs["eo:common_name"] == "nir"
    assert ds.B11.attrs["eo:common_name"] == "swir16"
    assert ds.B04.encoding["scale_factor"] == pytest.approx(0.0001)
    assert "scale_factor" not in ds.SCL.encoding and "_FillValue" not in ds.SCL.attrs
    assert ds.SCL.attrs["flag_values"].tolist() == list(range(12))
    meanings = ds.SCL.attrs["flag_meanings"].split()
    assert meanings[3] == "cloud_shadows" and meanings[9] == "cloud_high_probability"
    assert ds.SCL.attrs["roles"] == "data-mask"
    assert ds.CLOUDMASK.attrs["roles"] == "data-mask cloud"
    assert ds.CLOUDMASK.encoding["_FillValue"] == 255


def test_a_coarser_cube_resamples_each_asset_as_asked(cube):
    """At 20 m, B04 averaged (the mean of each 2 x 2 block of valid pixels) while SCL
    stays nearest (class assets are never averaged unless named)."""
    open_, numbers, _server = cube
    ds = open_(resolution=20, resampling="average").isel(time=0).load()
    raw = numbers[10, "B04"].astype(np.float64)
    raw[numbers[10, "B04"] == 32767] = np.nan
    blocks = raw.reshape(SIZE // 2, 2, SIZE // 2, 2)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty"):
        means = np.nanmean(blocks, axis=(1, 3)) * 0.0001
    want = _on_cube(means, 20, ds, np.nan)
    # GDAL's averaging warper lets the file's outermost pixels reach the cube pixels
    # just outside its edge: compare one pixel in from the file's edges
    inner = np.zeros(want.shape, bool)
    rows = np.flatnonzero((ds.y.values < Y0 - 20) & (ds.y.values > Y0 - SIZE * 10 + 20))
    cols = np.flatnonzero((ds.x.values > X0 + 20) & (ds.x.values < X0 + SIZE * 10 - 20))
    inner[np.ix_(rows, cols)] = True
    np.testing.assert_allclose(ds.B04.values[inner], want[inner], rtol=1e-3, atol=1e-4)
    assert np.isnan(ds.B04.values[inner]).sum() == np.isnan(want[inner]).sum() > 0
    np.testing.assert_array_equal(ds.SCL.values, _on_cube(numbers[10, "SCL"], 20, ds, 0))
    assert ds.SCL.dtype == np.uint8


def _gdal(server: Nginx, day: int, key: str, ds: xr.Dataset, method: str) -> np.ndarray:
    """GDAL's own warp (:func:`rasterio.warp.reproject`) of the served file onto the
    cube's grid with ``method``: the stored numbers, the file's nodata outside."""
    _res, dtype, nodata = FILES[key]
    res = float(ds.x[1] - ds.x[0])
    west, north = float(ds.x[0]) - res / 2, float(ds.y[0]) + res / 2
    out = np.full((ds.sizes["y"], ds.sizes["x"]), nodata or 0, dtype)
    with rasterio.open(server.root / f"{day:02d}" / f"{key}.tif") as src:
        reproject(
            rasterio.band(src, 1),
            out,
            dst_transform=Affine(res, 0.0, west, 0.0, -res, north),
            dst_crs="EPSG:32631",
            resampling=Resampling[method],
            dst_nodata=nodata,
        )
    return out


def _inside_file(ds: xr.Dataset) -> np.ndarray:
    """Cube pixels lying wholly inside the files' footprint (a cube pixel just above or
    left of the file is no data here, where GDAL's warper gives it the file's edge)."""
    half = float(ds.x[1] - ds.x[0]) / 2
    rows = (ds.y.values + half <= Y0) & (ds.y.values - half >= Y0 - SIZE * 10)
    cols = (ds.x.values - half >= X0) & (ds.x.values + half <= X0 + SIZE * 10)
    return np.outer(rows, cols)


METHODS = ["average", "rms", "sum", "min", "max", "med", "q1", "q3", "mode"]


@pytest.mark.parametrize("resolution", [20, 60])
@pytest.mark.parametrize("method", METHODS)
def test_a_coarser_cube_resamples_as_gdal_does_without_gdal(strict_cube, method, resolution):
    """Bands at 10, 20 and 60 m onto a 20 m or 60 m cube with each of GDAL's area
    resamplings: the numbers GDAL's own warper computes from the same files (exact, up
    to float32 decoding), with the server refusing every request that is not the async
    engine's (GDAL's requests get a 403, and none is made). Class assets (SCL,
    CLOUDMASK) keep nearest, again as GDAL's nearest. At 20 m the 60 m AOT is replicated
    (for ``sum``, which GDAL spreads over the finer pixels, it is left out)."""
    open_, _numbers, server = strict_cube
    assets = ["B04", "B11", "AOT", "SCL", "CLOUDMASK"]
    if method == "sum" and resolution == 20:
        assets.remove("AOT")
    start = len(server.records())
    ds = open_(assets=assets, resolution=resolution, resampling=method, chunks={}, chunksize=32)
    ds = ds.isel(time=1).load()
    refused = [r for r in server.records()[start:] if r.status == 403]
    assert not refused, refused[:3]
    inside = _inside_file(ds)
    assert inside.sum() == (SIZE * 10 // resolution) ** 2
    for key in assets:
        _res, _dtype, nodata = FILES[key]
        classes = key in ("SCL", "CLOUDMASK")
        want = _gdal(server, 15, key, ds, "nearest" if classes else method)
        got = ds[key].values
        if classes:
            np.testing.assert_array_equal(got[inside], want[inside], err_msg=key)
            continue
        scale = 0.001 if key == "AOT" else 0.0001
        want = _physical(want, nodata, scale)
        np.testing.assert_allclose(got[inside], want[inside], rtol=1e-6, atol=1e-7, err_msg=key)
        assert 0 < np.isnan(got[inside]).sum() < inside.sum() / 4, key
        assert np.isnan(got[~inside]).all(), key


def test_class_assets_take_the_mode_when_named(strict_cube):
    """``resampling={"SCL": "mode", "CLOUDMASK": "mode", "B04": "med"}`` on a 60 m cube:
    each class asset's most frequent class per 60 m pixel (CLOUDMASK's no data left out)
    and B04's median, as GDAL's warper computes them, without GDAL."""
    open_, _numbers, server = strict_cube
    start = len(server.records())
    methods = {"SCL": "mode", "CLOUDMASK": "mode", "B04": "med"}
    ds = open_(assets=list(methods), resolution=60, resampling=methods).isel(time=0).load()
    assert not [r for r in server.records()[start:] if r.status == 403]
    inside = _inside_file(ds)
    for key in ("SCL", "CLOUDMASK"):
        want = _gdal(server, 10, key, ds, "mode")
        np.testing.assert_array_equal(ds[key].values[inside], want[inside], err_msg=key)
        assert len(np.unique(want[inside])) > 2, key
    want = _physical(_gdal(server, 10, "B04", ds, "med"), 32767, 0.0001)
    np.testing.assert_allclose(ds.B04.values[inside], want[inside], rtol=1e-6, atol=1e-7)


def test_a_coarser_cube_with_cloud_masking_averages_the_kept_blocks(strict_cube):
    """``mask_clouds=True`` on a 20 m cube averaged from 10 m B04: GDAL's average where
    the scene classification (20 m, on the cube's grid) keeps the pixel, NaN where it
    says cloud, shadow or no data; no request through GDAL; the tiles under day 15's
    cloud are not fetched (fewer B04 bytes than day 10's)."""
    open_, numbers, server = strict_cube
    start = len(server.records())
    ds = open_(assets=["B04"], resolution=20, resampling="average", mask_clouds=True).load()
    records = server.records()[start:]
    assert not [r for r in records if r.status == 403]
    inside = _inside_file(ds)
    for t, day in enumerate((10, 15)):
        got = ds.B04.values[t]
        want = _physical(_gdal(server, day, "B04", ds, "average"), 32767, 0.0001)
        kept = np.isfinite(got) & inside
        assert kept.mean() > 0.2, day
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6, atol=1e-7)
        scl = _on_cube(numbers[day, "SCL"], 20, ds, 0)
        assert np.isnan(got[np.isin(scl, [0, 3, 8, 9])]).all(), day
    day_bytes = [_b04_bytes(server, start, day) for day in (10, 15)]
    assert 0 < day_bytes[1] < 0.8 * day_bytes[0], day_bytes


def test_an_unknown_resampling_or_asset_is_refused_before_any_request(cube):
    open_, _numbers, server = cube
    before = len(server.records())
    with pytest.raises(xts.InvalidArgumentError, match="resampling must be one of"):
        open_(resampling="linear")
    with pytest.raises(xts.InvalidArgumentError, match=r"resampling\['B04'\] must be one of"):
        open_(resampling={"B04": "linear"})
    with pytest.raises(xts.InvalidArgumentError, match="not in assets="):
        open_(resampling={"B12": "average"})
    # a method of GDAL's overviews, which its warper refuses at read time
    with pytest.raises(xts.InvalidArgumentError, match="gauss is a method of GDAL's overviews"):
        open_(resampling="gauss")
    assert len(server.records()) == before


def _dropped(scl: np.ndarray, dilation_m: float) -> np.ndarray:
    """Pixels to drop, from a scene classification on the cube's 10 m grid: no data,
    defective, cloud, shadow and cirrus, and every pixel whose centre lies within
    ``dilation_m`` of a cloud, shadow or cirrus pixel's centre."""
    from scipy.ndimage import distance_transform_edt

    cloudy = np.isin(scl, [3, 8, 9, 10])
    distance = distance_transform_edt(~cloudy) * 10.0 if cloudy.any() else np.inf
    return np.isin(scl, [0, 1]) | cloudy | (distance <= dilation_m)


def _b04_bytes(server: Nginx, since: int, day: int) -> int:
    return sum(r.bytes_sent for r in server.records()[since:] if r.path.endswith(f"{day}/B04.tif"))


def test_mask_clouds_at_open_drops_cloudy_pixels_and_skips_their_tiles(cube):
    """``mask_clouds=True``: B04 is NaN where the scene classification says no data,
    cloud or shadow, grown by 40 m (expected from the known classes with a distance
    transform), the same with any chunking; the band tiles under the day-15 cloud are
    never fetched."""
    open_, numbers, server = cube
    start = len(server.records())
    plain = open_(assets=["B04"]).isel(time=1).B04.load()
    unmasked_bytes = _b04_bytes(server, start, 15)
    read.clear_reader_cache()
    start = len(server.records())
    ds = open_(assets=["B04"], mask_clouds=True)
    assert list(ds.data_vars) == ["B04", "SCL"] and ds.attrs["mask_clouds"] == "SCL"
    got = ds.B04.load()
    masked_bytes = _b04_bytes(server, start, 15)
    for t, day in enumerate((10, 15)):
        scl = _on_cube(numbers[day, "SCL"], 20, ds, 0)
        drop = _dropped(scl, 40.0)
        want = _physical(_on_cube(numbers[day, "B04"], 10, ds, 32767), 32767, 0.0001)
        want[drop] = np.nan
        np.testing.assert_allclose(got.values[t], want, rtol=1e-6, atol=1e-7, err_msg=str(day))
        assert 0 < drop.mean() < 1, day
    chunked = open_(assets=["B04"], mask_clouds=True, chunks={}, chunksize=128).B04.values
    np.testing.assert_array_equal(np.isnan(chunked), np.isnan(got.values))
    assert np.isnan(got.values[1]).sum() > np.isnan(plain.values).sum()
    # day 15: the cloud covers the file's northern tile row entirely (3 of its 9 tiles)
    assert 0 < masked_bytes < 0.8 * unmasked_bytes, (masked_bytes, unmasked_bytes)


def test_a_band_file_the_mask_covers_entirely_gets_no_request(cube):
    """Over a bbox in the files' northern third, day 15 is all cloud (SCL 8): with
    ``mask_clouds=True`` its B04 file gets no request at all, not even for its header
    (nginx's log), while day 10's is read and right where the mask keeps it."""
    open_, numbers, server = cube
    to_wgs84 = Transformer.from_crs(32631, 4326, always_xy=True)
    lon, lat = to_wgs84.transform([X0 + 2500, X0 + 5000], [Y0 - 3000, Y0 - 1000])
    start = len(server.records())
    ds = open_(assets=["B04"], bbox=[lon[0], lat[0], lon[1], lat[1]], mask_clouds=True)
    got = ds.B04.load().values
    paths = [r.path for r in server.records()[start:]]
    assert not [p for p in paths if p.endswith("15/B04.tif")], paths
    assert any(p.endswith("10/B04.tif") for p in paths) and any(
        p.endswith("15/SCL.tif") for p in paths
    )
    scl15 = _on_cube(numbers[15, "SCL"], 20, ds, 0)
    assert (scl15 == 8).all() and np.isnan(got[1]).all()
    want = _physical(_on_cube(numbers[10, "B04"], 10, ds, 32767), 32767, 0.0001)
    kept = np.isfinite(got[0])
    assert 0.5 < kept.mean() < 1
    np.testing.assert_allclose(got[0][kept], want[kept], rtol=1e-6, atol=1e-7)


def _spans(header: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each range of a ``Range: bytes=a-b,c-d`` header (end excluded)."""
    spans = []
    for part in header.removeprefix("bytes=").split(","):
        first, last = part.split("-")
        spans.append((int(first), int(last) + 1))
    return spans


def test_no_byte_of_a_file_is_fetched_twice(cube):
    """A window at the files' start: the tiles right after the header come partly with
    the header's request, and the tile request asks only for the bytes after it."""
    open_, _numbers, server = cube
    to_wgs84 = Transformer.from_crs(32631, 4326, always_xy=True)
    lon, lat = to_wgs84.transform([X0 + 200, X0 + 1200], [Y0 - 1200, Y0 - 200])
    start = len(server.records())
    open_(assets=["B04"], bbox=[lon[0], lat[0], lon[1], lat[1]]).load()
    for day in (10, 15):
        spans = sorted(
            span
            for r in server.records()[start:]
            if r.path.endswith(f"{day}/B04.tif")
            for span in _spans(r.range)
        )
        assert len(spans) >= 2, spans
        overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
        assert not overlaps, spans


def test_min_clear_keeps_the_clear_dates_reading_only_the_mask(cube):
    open_, numbers, server = cube
    start = len(server.records())
    ds = open_(assets=["B04", "B08"], min_clear=0.5)
    # besides the download root, which opening asks once to prove credentials=
    files = [r.path for r in server.records()[start:] if r.path != "/download/"]
    assert {path.rsplit("/", 1)[-1] for path in files} == {"SCL.tif"}, files
    assert [str(d)[:10] for d in ds.time.values] == ["2025-05-10"]
    assert ds.attrs["dropped_dates"] == ["2025-05-15"]
    for day, share in ((10, float(ds.clear_share[0])), (15, ds.attrs["dropped_clear_shares"][0])):
        scl = _on_cube(numbers[day, "SCL"], 20, ds, 0)
        assert share == pytest.approx(1 - np.isin(scl, [0, 1, 3, 8, 9, 10]).mean(), abs=1e-4)
    assert ds.B04.shape[0] == 1 and np.isfinite(ds.B04.values).any()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"min_clear": 1.5}, "min_clear must be a share between 0 and 1"),
        ({"min_clear": "high"}, "min_clear must be a share"),
        ({"mask_clouds": "yes"}, "mask_clouds must be True or False"),
    ],
)
def test_bad_mask_arguments_are_refused_before_any_request(cube, kw, match):
    open_, _numbers, server = cube
    before = len(server.records())
    with pytest.raises(xts.InvalidArgumentError, match=match):
        open_(**kw)
    assert len(server.records()) == before


def test_the_accessor_masks_and_computes_ndvi_on_a_cube_of_real_items(cube):
    """The accessor finds the mask and the bands of a cube of 2026 items by their
    metadata: ``mask_clouds()`` drops what the scene classification says (grown by 40 m)
    and ``ndvi()`` is (nir - red) / (nir + red) of B08 and B04."""
    open_, numbers, _server = cube
    ds = open_(assets=["B04", "B08", "SCL"], chunks={}, chunksize=256)
    masked = ds.terrascope.mask_clouds().load()
    ndvi = masked.terrascope.ndvi().values
    for t, day in enumerate((10, 15)):
        red = _physical(_on_cube(numbers[day, "B04"], 10, ds, 32767), 32767, 0.0001)
        nir = _physical(_on_cube(numbers[day, "B08"], 10, ds, 32767), 32767, 0.0001)
        with np.errstate(invalid="ignore", divide="ignore"):
            want = (nir - red) / (nir + red)
        want[_dropped(_on_cube(numbers[day, "SCL"], 20, ds, 0), 40.0)] = np.nan
        np.testing.assert_allclose(ndvi[t], want, rtol=1e-5, atol=1e-6, err_msg=str(day))
    with pytest.raises(xts.InvalidArgumentError, match="B03"):
        ds.terrascope.index("NDWI")
