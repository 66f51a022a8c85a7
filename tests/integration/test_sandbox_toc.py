"""The sandbox's ``terrascope-s2-toc-v2`` collection (Terrascope's 2026 item shape) and the
scene classification of its NDVI/FAPAR/LAI items, through real HTTP against the session
sandbox on loopback, checked against the world's ground truth and independent arithmetic.

Accuracy claims are checked against what does not come from the TOC renderer: the NDVI
product's own file, the parcels' phenology curves (``World.parcel_ndvi``), the cloud masks
of the NDVI product (``World.cloud_masks``), and the swath edge's geometry.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
import shapely.geometry
from pyproj import Transformer
from pystac_client import Client
from rasterio.windows import Window

from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox, Sky, World

TOC = "terrascope-s2-toc-v2"
NDVI = "terrascope-s2-ndvi-v2"
FAPAR = "terrascope-s2-fapar-v2"
SCL_ASSET = "SCENECLASSIFICATION_20M"
#: Sentinel-2 MSI: band -> (common name, centre wavelength in um, gsd in m).
MSI = {
    "B01": ("coastal", 0.443, 60),
    "B02": ("blue", 0.490, 10),
    "B03": ("green", 0.560, 10),
    "B04": ("red", 0.665, 10),
    "B05": ("rededge", 0.705, 20),
    "B08": ("nir", 0.842, 10),
    "B8A": ("nir08", 0.865, 20),
    "B11": ("swir16", 1.610, 20),
}
#: R008's east swath edge over 32ULB: two lon/lat points, no data to the east.
EDGE_R008 = ((6.240, 51.30), (6.191, 51.20))
ASSET_KEYS = {
    "href",
    "type",
    "title",
    "roles",
    "file:size",
    "data_type",
    "raster:scale",
    "raster:offset",
    "raster:sampling",
    "proj:shape",
    "proj:transform",
    "alternate",
    "auth:refs",
}


def _pick(world: World, tile: str, *, orbit: int | None = None, clouds: str = "partly") -> str:
    """A TOC item of ``tile`` between May and August with some clouds (or none)."""
    for item_id in world.item_ids(TOC):
        info = world.item(item_id)
        if f"_{tile}_" not in item_id or not 5 <= info["datetime_obj"].month <= 8:
            continue
        if orbit is not None and info["relative_orbit"] != orbit:
            continue
        cover = info["cloud_cover"]
        if (clouds == "clear" and cover == 0) or (
            clouds == "partly" and 10 < cover < 50 and info["clouds"] == "partly"
        ):
            return item_id
    raise AssertionError(f"no {clouds} TOC item of {tile}")


def _sibling(toc_id: str, collection: str = NDVI) -> str:
    """The NDVI (or FAPAR) item of the same acquisition and tile."""
    return toc_id.replace("TOC_V220", {NDVI: "NDVI_10M_V210", FAPAR: "FAPAR_10M_V200"}[collection])


def _item(sb: Sandbox, collection: str, item_id: str) -> dict:
    response = requests.get(f"{sb.stac_url}collections/{collection}/items/{item_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _download(sb: Sandbox, href: str) -> requests.Response:
    response = requests.get(href, auth=(sb.username, sb.password), timeout=120)
    assert response.status_code == 200, href
    return response


@contextmanager
def _open(sb: Sandbox, href: str):
    """The file at ``href`` read by GDAL over HTTP ranges, with the sandbox's account."""
    env = {
        "GDAL_HTTP_AUTH": "BASIC",
        "GDAL_HTTP_USERPWD": f"{sb.username}:{sb.password}",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_NETRC": "NO",
    }
    with rasterio.Env(**env), rasterio.open("/vsicurl/" + href) as ds:
        yield ds


@contextmanager
def _read(sb: Sandbox, href: str):
    """The file at ``href`` downloaded whole, opened from memory."""
    with rasterio.MemoryFile(_download(sb, href).content) as mem, mem.open() as ds:
        yield ds


def _centres(transform, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centre coordinates, broadcast as a grid (``x[None, :]``, ``y[:, None]``)."""
    x = transform.c + transform.a * (cols + 0.5)
    y = transform.f + transform.e * (rows + 0.5)
    return x[None, :], y[:, None]


def _blocks(a: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """A coarse grid's values replicated onto the 10 m grid of ``shape``."""
    return a[np.arange(shape[0])[:, None] // f, np.arange(shape[1])[None, :] // f]


# --- the STAC API -----------------------------------------------------------------------


def test_toc_collection_is_listed_and_pages_like_ndvi(sb: Sandbox, world: World) -> None:
    doc = requests.get(f"{sb.stac_url}collections/{TOC}", timeout=30).json()
    assert doc["stac_version"] == "1.1.0" and doc["id"] == TOC
    assert {*MSI, "SCL", "CLOUDMASK"} <= set(doc["item_assets"])
    assert doc["item_assets"]["SCL"]["roles"] == ["data-mask"]
    assert "nodata" not in doc["item_assets"]["SCL"]
    search = Client.open(sb.stac_url).search(collections=[TOC], limit=100)
    pages = list(search.pages_as_dicts())
    ids = [f["id"] for page in pages for f in page["features"]]
    assert len(pages) == 5 and len(ids) == len(set(ids)) == 438 == search.matched()
    assert set(ids) == set(world.item_ids(TOC))
    # the same acquisitions as the NDVI product: one item per date and tile
    ndvi = {i.replace("_NDVI_10M_V210", "") for i in world.item_ids(NDVI)}
    assert {i.replace("_TOC_V220", "") for i in ids} == ndvi


def test_toc_search_by_bbox_and_date(sb: Sandbox, world: World) -> None:
    def found(collection: str, bbox, interval: str) -> list[dict]:
        body = {"collections": [collection], "bbox": list(bbox), "datetime": interval}
        page = requests.post(f"{sb.stac_url}search", json={**body, "limit": 500}, timeout=30)
        assert page.status_code == 200
        return page.json()["features"]

    may = "2025-05-01T00:00:00Z/2025-05-31T23:59:59Z"
    toc = found(TOC, SAMPLE_FIELD, may)
    assert toc and {f["id"].split("_")[2] for f in toc} == {"31UFS", "31UGS"}
    stamps = {f["properties"]["datetime"] for f in toc}
    assert all("2025-05-01" <= s <= "2025-05-31T23:59:59Z" for s in stamps)
    ndvi = found(NDVI, SAMPLE_FIELD, may)
    assert sorted(f["id"][:25] for f in toc) == sorted(f["id"][:25] for f in ndvi)
    # beyond R008's east swath edge, 32ULB holds data on R051 dates only: its R008
    # items' footprints leave the wedge out, the NDVI items' do not
    wedge = (6.255, 51.21, 6.26, 51.22)
    toc = found(TOC, wedge, may)
    assert toc and {f["properties"]["sat:relative_orbit"] for f in toc} == {51}
    assert {f["properties"]["sat:relative_orbit"] for f in found(NDVI, wedge, may)} == {8, 51}


def test_toc_item_has_the_2026_shape(sb: Sandbox, world: World) -> None:
    item_id = _pick(world, "32ULB", orbit=8)
    item = _item(sb, TOC, item_id)
    assert item["stac_version"] == "1.1.0" and item["collection"] == TOC
    names = {url.split("/")[3] + "/" + url.split("/")[4] for url in item["stac_extensions"]}
    assert names == {
        "eo/v2.0.0",
        "sat/v1.0.0",
        "product/v0.1.0",
        "mgrs/v1.0.0",
        "grid/v1.1.0",
        "processing/v1.2.0",
        "file/v2.1.0",
        "raster/v2.0.0",
        "projection/v2.0.0",
        "alternate-assets/v1.2.0",
        "authentication/v1.1.0",
    }
    props = item["properties"]
    tile = world.tiles["32ULB"]
    assert props["proj:code"] == "EPSG:32632" and props["gsd"] == 10
    assert props["proj:bbox"] == list(tile.bounds)
    assert props["product:type"] == "TOC" and props["processing:version"] == "220"
    assert props["grid:code"] == "MGRS-32ULB" and props["sat:relative_orbit"] == 8
    assert {"sat:orbit_state", "proj:geometry", "eo:cloud_cover", "platform"} <= set(props)
    oidc = props["auth:schemes"]["oidc"]
    assert oidc["type"] == "openIdConnect"
    config = requests.get(oidc["openIdConnectUrl"], timeout=30)
    assert oidc["openIdConnectUrl"].startswith(sb.download_origin + "/")
    assert config.status_code == 200
    assert config.json()["token_endpoint"].startswith(sb.download_origin + "/auth/realms/")
    assets = item["assets"]
    assert {*MSI, "SCL", "CLOUDMASK"} <= set(assets)
    left, _, _, top = tile.bounds
    for key, asset in assets.items():
        assert set(asset) >= ASSET_KEYS, key
        assert asset["auth:refs"] == ["oidc"] and asset["raster:sampling"] == "area"
        assert asset["href"].startswith(sb.download_url)
        path = asset["href"].split("/download/", 1)[1]
        assert asset["alternate"]["local"]["href"] == "file:///data/MTDA/TERRASCOPE_" + path
        gsd = asset.get("gsd", 10)
        transform = asset["proj:transform"]
        assert transform == [gsd, 0, left, 0, -gsd, top, 0, 0, 1], key
        height, width = asset["proj:shape"]
        assert height == -(-tile.height * 10 // gsd) and width == -(-tile.width * 10 // gsd)
    for band, (common, wavelength, gsd) in MSI.items():
        asset = assets[band]
        assert asset.get("gsd", 10) == gsd and asset["roles"] == ["data"]
        assert (asset["data_type"], asset["nodata"]) == ("int16", 32767)
        assert (asset["raster:scale"], asset["raster:offset"]) == (0.0001, 0)
        assert asset["unit"] == "-"
        (info,) = asset["bands"]
        assert info["name"] == band and info["eo:common_name"] == common
        assert info["eo:center_wavelength"] == wavelength
    scl, mask = assets["SCL"], assets["CLOUDMASK"]
    assert scl["roles"] == ["data-mask"] and scl["data_type"] == "uint8" and scl["gsd"] == 20
    assert "nodata" not in scl and scl["bands"] == [{"name": "SCL"}]
    assert mask["roles"] == ["data-mask", "cloud"] and mask["nodata"] == 255
    assert mask["data_type"] == "uint8" and mask["gsd"] == 20
    # the footprint leaves out what lies beyond the swath edge
    footprint = shapely.geometry.shape(item["geometry"])
    assert not footprint.contains(shapely.geometry.Point(6.26, 51.21))
    assert footprint.contains(shapely.geometry.Point(6.10, 51.25))
    west, south, east, north = item["bbox"]
    assert shapely.geometry.box(west, south, east, north).covers(footprint)


# --- the files ------------------------------------------------------------------------


def test_served_files_are_what_their_assets_declare(sb: Sandbox, world: World) -> None:
    item_id = _pick(world, "31UGS")
    item = _item(sb, TOC, item_id)
    for key, asset in item["assets"].items():
        response = _download(sb, asset["href"])
        size = asset["file:size"]
        assert len(response.content) == int(response.headers["Content-Length"]) == size, key
        head = requests.head(asset["href"], auth=(sb.username, sb.password), timeout=30)
        assert int(head.headers["Content-Length"]) == size
        with rasterio.MemoryFile(response.content) as mem, mem.open() as ds:
            assert ds.dtypes == (asset["data_type"],), key
            assert ds.nodata == asset.get("nodata"), key
            assert [ds.height, ds.width] == asset["proj:shape"], key
            assert list(ds.transform)[:6] == asset["proj:transform"][:6], key
            assert ds.crs.to_string() == item["properties"]["proj:code"]
            assert ds.block_shapes == [(256, 256)] and ds.compression.name == "deflate"
            assert ds.overviews(1) == [] and ds.descriptions == (key,)
            assert ds.read(1).size == ds.height * ds.width  # every tile decodes
        # the COG cache holds the file under the name it is served by
        cached = world.cog_path(item_id, key)
        assert cached.name == Path(asset["href"]).name and cached.stat().st_size == size
        assert world.cog_path(item_id, key).stat().st_mtime_ns == cached.stat().st_mtime_ns


def test_clear_reflectance_gives_the_worlds_ndvi(sb: Sandbox, world: World) -> None:
    """On clear pixels ``(B08 - B04) / (B08 + B04)`` is the world's cloud-free NDVI.

    Tolerance: both bands are stored as ``DN = round(rho / 0.0001)``, each off by at most
    half a DN. NDVI's partial derivatives are ``2 red / (nir + red)^2`` (nir) and
    ``-2 nir / (nir + red)^2`` (red), so the error is at most ``0.5 * 2 (nir + red) /
    (nir + red)^2 = 1 / (nir + red)`` with the sum in DN (~0.0003 on a canopy, 0.002 on
    water): checked pixel by pixel, plus 1e-6 for float32. Against the NDVI product's own
    file (DN = round((NDVI + 0.08) / 0.004)), half its step more: 0.002.
    """
    item_id = _pick(world, "31UFS")
    toc = _item(sb, TOC, item_id)
    window = Window(col_off=1500, row_off=300, width=1800, height=700)
    bands = {}
    for key in ("B04", "B08"):
        with _open(sb, toc["assets"][key]["href"]) as ds:
            bands[key] = ds.read(1, window=window).astype(np.float64)
            transform = ds.window_transform(window)
    red, nir = bands["B04"], bands["B08"]
    x, y = _centres(transform, np.arange(700), np.arange(1800))
    sky = world.cloud_truth(item_id, x, y, "EPSG:32631")
    clear = sky == Sky.CLEAR
    assert 0.2 < clear.mean() < 0.95, "a partly cloudy window"
    ndvi = (nir - red) / (nir + red)
    truth = world.ground_ndvi(item_id, x, y, "EPSG:32631")
    bound = 1.0 / (nir + red) + 1e-6
    assert (np.abs(ndvi - truth)[clear] <= bound[clear]).all()
    # the truth accessor reads what the files hold
    np.testing.assert_array_equal(
        world.reflectance(item_id, "B04", x, y, "EPSG:32631"), red * 0.0001
    )
    # against the NDVI product's file of the same acquisition
    ndvi_item = _item(sb, NDVI, _sibling(item_id))
    with _open(sb, ndvi_item["assets"]["NDVI"]["href"]) as ds:
        dn = ds.read(1, window=window).astype(np.float64)
    product = 0.004 * dn - 0.08
    inside = clear & (dn > 0) & (dn < 250)  # not clipped at -0.08 (water) or 0.92
    assert inside.mean() > 0.2
    assert (np.abs(ndvi - product)[inside] <= 0.002 + bound[inside]).all()


def test_parcel_means_of_clear_toc_ndvi_are_the_curves(sb: Sandbox, world: World) -> None:
    item_id = _pick(world, "31UFS", clouds="clear")
    day = world.item(item_id)["datetime_obj"].date()
    toc = _item(sb, TOC, item_id)
    window = Window(col_off=3000, row_off=200, width=1200, height=500)
    with _open(sb, toc["assets"]["B04"]["href"]) as ds:
        red = ds.read(1, window=window).astype(np.float64)
    with _open(sb, toc["assets"]["B08"]["href"]) as ds:
        nir = ds.read(1, window=window).astype(np.float64)
    ndvi = ((nir - red) / (nir + red)).ravel()
    ids = world.parcel_ids(item_id, *np.mgrid[200:700, 3000:4200]).ravel()
    areas = world.parcels().set_index("parcel_id").area_ha
    checked = 0
    for pid in np.unique(ids[ids > 0]):
        pixels = ndvi[ids == pid]
        if pixels.size > 200 and pixels.size > 0.98 * areas.get(pid, np.inf) * 100:
            assert abs(pixels.mean() - world.parcel_ndvi(int(pid), day)) < 0.003, pid
            checked += 1
    assert checked > 10


def test_clouds_are_bright_shadows_dark_and_an_unmasked_ndvi_is_wrong(
    sb: Sandbox, world: World
) -> None:
    item_id = _pick(world, "31UGS")
    toc = _item(sb, TOC, item_id)
    rho = {}
    for key in ("B02", "B03", "B04", "B08"):
        with _read(sb, toc["assets"][key]["href"]) as ds:
            rho[key] = ds.read(1) * 0.0001
            transform = ds.transform
    shape = rho["B04"].shape
    x, y = _centres(transform, np.arange(shape[0]), np.arange(shape[1]))
    sky = world.cloud_truth(item_id, x, y, "EPSG:32631")
    truth = world.ground_ndvi(item_id, x, y, "EPSG:32631")
    high, shadow = sky == Sky.CLOUD_HIGH, sky == Sky.SHADOW
    assert high.sum() > 1000 and shadow.sum() > 100
    for key, values in rho.items():
        assert values[high].min() > 0.3 and values[high].max() < 0.6, key
        assert np.median(values[shadow]) < 0.1 and np.quantile(values[shadow], 0.95) < 0.15, key
    clear_nir = np.median(rho["B08"][sky == Sky.CLEAR])
    assert np.median(rho["B08"][shadow]) < 0.5 * clear_nir
    ndvi = (rho["B08"] - rho["B04"]) / (rho["B08"] + rho["B04"])
    canopy = truth > 0.6
    assert (np.abs(ndvi - truth)[high & canopy] > 0.4).mean() > 0.99
    assert np.median(np.abs(ndvi - truth)[shadow & canopy]) > 0.15
    hazy = (sky == Sky.HAZE) | (sky == Sky.CIRRUS)
    assert np.median(np.abs(ndvi - truth)[hazy & canopy]) > 0.05  # what masks miss


def test_scl_and_cloudmask_follow_the_worlds_clouds(sb: Sandbox, world: World) -> None:
    """31UGS's 20 m grid coincides with the cloud cells: SCL is exact there, and says
    cloud and shadow exactly where the NDVI product (its own served file) has no data."""
    from xarray_terrascope.testing import COVER

    item_id = _pick(world, "31UGS")
    toc = _item(sb, TOC, item_id)
    ndvi_item = _item(sb, NDVI, _sibling(item_id))

    def read(href: str) -> np.ndarray:
        with rasterio.MemoryFile(_download(sb, href).content) as mem, mem.open() as ds:
            return ds.read(1)

    scl, mask = read(toc["assets"]["SCL"]["href"]), read(toc["assets"]["CLOUDMASK"]["href"])
    product = read(ndvi_item["assets"]["NDVI"]["href"])
    cloud, shadow = world.cloud_masks(ndvi_item["id"])  # the NDVI product's truth
    scl10 = _blocks(scl, 2, product.shape)
    assert np.array_equal(np.isin(scl10, (8, 9)), cloud)
    assert np.array_equal(scl10 == 3, shadow & ~cloud)
    assert np.array_equal(np.isin(scl10, (3, 8, 9)), product == 255)
    assert {4, 5, 6, 10} <= set(np.unique(scl).tolist()) <= {3, 4, 5, 6, 8, 9, 10}
    assert np.array_equal(mask == 1, np.isin(scl, (3, 8, 9, 10))) and not (mask == 255).any()
    # water: SCL 6 and a dark nir
    rows, cols = np.mgrid[0 : product.shape[0], 0 : product.shape[1]]
    water = world.land_cover(item_id, rows, cols) == COVER.index("water")
    clear_water = water & ~np.isin(scl10, (3, 8, 9, 10))
    assert clear_water.sum() > 1000 and (scl10[clear_water] == 6).mean() > 0.9
    x, y = _centres(world.tiles["31UGS"].transform, rows[:, 0], cols[0])
    nir = world.reflectance(item_id, "B08", x, y, "EPSG:32631")
    assert np.median(nir[clear_water]) < 0.03 < np.median(nir[scl10 == 4])
    # the truth accessor agrees with the file at every 10 m pixel
    np.testing.assert_array_equal(world.scl_truth(item_id, x, y, "EPSG:32631"), scl10)


def test_swath_edge_is_no_data_in_every_file(sb: Sandbox, world: World) -> None:
    item_id = _pick(world, "32ULB", orbit=8)
    toc = _item(sb, TOC, item_id)
    to_utm = Transformer.from_crs(4326, 32632, always_xy=True)
    (x0, x1), (y0, y1) = to_utm.transform(*zip(*EDGE_R008, strict=True))
    direction = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
    for key, nodata in (("B04", 32767), ("B11", 32767), ("B01", 32767), ("SCL", 0)):
        with _read(sb, toc["assets"][key]["href"]) as ds:
            values, t = ds.read(1), ds.transform
        x, y = _centres(t, np.arange(values.shape[0]), np.arange(values.shape[1]))
        east = direction[0] * (y - y0) - direction[1] * (x - x0)  # metres east of the edge
        empty = values == nodata
        margin = 60 * 1.5  # 60 m blocks
        assert empty[east > margin].all() and not empty[east < -margin].any(), key
        assert 0.05 < empty.mean() < 0.5, key
    mask = _download(sb, toc["assets"]["CLOUDMASK"]["href"]).content
    with rasterio.MemoryFile(mask) as mem, mem.open() as ds:
        assert ((ds.read(1) == 255) == empty).all()  # SCL's no data, on the same grid
    other = _pick(world, "32ULB", orbit=51)
    scl = world.render(other, asset="SCL")
    assert not (scl == 0).any(), "R051 covers 32ULB whole"


def test_ndvi_items_serve_their_scene_classification(sb: Sandbox, world: World) -> None:
    """An NDVI item's SCENECLASSIFICATION_20M is the TOC SCL of the same acquisition (the
    NDVI product has no swath edge: there it keeps the land and cloud classes)."""
    for toc_id in (_pick(world, "31UGS"), _pick(world, "32ULB", orbit=8)):
        toc = _item(sb, TOC, toc_id)
        ndvi = _item(sb, NDVI, _sibling(toc_id))
        asset = ndvi["assets"][SCL_ASSET]
        assert asset["roles"] == ["data-mask"] and asset["href"].endswith("_V210.tif")
        assert "_SCENECLASSIFICATION_20M_V210.tif" in asset["href"]
        assert Path(asset["href"]).parent == Path(ndvi["assets"]["NDVI"]["href"]).parent
        assert asset["raster:bands"] == [{"data_type": "uint8", "spatial_resolution": 20}]
        with _read(sb, asset["href"]) as ds:
            assert ds.dtypes == ("uint8",) and ds.nodata is None
            assert [ds.height, ds.width] == asset["proj:shape"]
            assert list(ds.transform)[:6] == asset["proj:transform"][:6]
            ours = ds.read(1)
        with _read(sb, toc["assets"]["SCL"]["href"]) as ds:
            theirs = ds.read(1)
            assert list(ds.transform)[:6] == asset["proj:transform"][:6]
        edge = theirs == 0
        assert np.array_equal(ours[~edge], theirs[~edge])
        assert not (ours == 0).any()
    # FAPAR's is the same classification
    fapar = _item(sb, FAPAR, _sibling(toc_id, FAPAR))["assets"][SCL_ASSET]["href"]
    with _read(sb, fapar) as ds:
        np.testing.assert_array_equal(ds.read(1), ours)


def test_ndvi_collection_lists_the_mask_and_keeps_ndvi_first(sb: Sandbox) -> None:
    doc = requests.get(f"{sb.stac_url}collections/{NDVI}", timeout=30).json()
    assert list(doc["item_assets"]) == ["NDVI", SCL_ASSET]
    assert doc["item_assets"][SCL_ASSET]["roles"] == ["data-mask"]


def test_truth_accessors_on_a_10m_cube_grid(world: World) -> None:
    """What others' tests use: a 10 m grid in EPSG:32631 across the 31UFS/31UGS overlap,
    given by its pixel centres; points outside an item's grid are no data."""
    item_id = _pick(world, "31UGS")
    fs = item_id.replace("_31UGS_", "_31UFS_")
    x = 699000.0 + 10.0 * np.arange(300) + 5.0  # 96 columns west of 31UGS
    y = 5685000.0 - 10.0 * np.arange(200) - 5.0
    sky = world.cloud_truth(item_id, x[None, :], y[:, None], "EPSG:32631")
    assert sky.shape == (200, 300) and sky.dtype == np.uint8
    assert (sky[:, :96] == Sky.NODATA).all() and (sky[:, 96:] != Sky.NODATA).all()
    # the overlap: the same clouds in both tiles, as the NDVI product masks them
    both = world.cloud_truth(fs, x[None, :], y[:, None], "EPSG:32631")
    np.testing.assert_array_equal(both[:, 96:], sky[:, 96:])
    cloud, shadow = world.cloud_masks(_sibling(fs))
    tile = world.tiles["31UFS"]
    rows = ((tile.transform.f - y) // 10).astype(int)
    cols = ((x - tile.transform.c) // 10).astype(int)
    masked = (cloud | shadow)[np.ix_(rows, cols)]
    np.testing.assert_array_equal(both >= Sky.SHADOW, masked)
    assert np.isnan(world.reflectance(item_id, "B04", x[None, :], y[:, None], "EPSG:32631"))[
        :, :96
    ].all()
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(x[150], y[100])
    assert world.cloud_truth(item_id, [lon], [lat])[0] == sky[100, 150]  # EPSG:4326 default
    with pytest.raises(KeyError, match="no reflectance band"):
        world.reflectance(_sibling(item_id), "B04", x, y, "EPSG:32631")
    with pytest.raises(ValueError, match="several assets"):
        world.dn(item_id, 0, 0)
    assert world.item(item_id)["assets"]["SCL"].endswith("_SCENECLASSIFICATION_20M_V220.tif")


def test_toc_files_render_without_a_cache() -> None:
    """``cog_bytes`` of a world without ``cache_dir`` renders in memory, padded to the
    declared ``file:size`` as the cached files are."""
    small = World(seed=0, start="2025-06-01", end="2025-06-06")
    item_id = next(i for i in small.item_ids(TOC) if "_31UGS_" in i)
    item = small.item_dicts(TOC, "http://h/download/")[small.item_ids(TOC).index(item_id)]
    data = small.cog_bytes(item_id, "SCL")
    assert len(data) == item["assets"]["SCL"]["file:size"]
    with rasterio.open(io.BytesIO(data)) as ds:
        np.testing.assert_array_equal(ds.read(1), small.render(item_id, asset="SCL"))
