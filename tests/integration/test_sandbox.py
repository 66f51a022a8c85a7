"""The sandbox, checked through real HTTP against the synthetic world's ground truth."""

from __future__ import annotations

import base64
import email.parser
import http.client
import json
import os
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import rasterio
import requests
import shapely.geometry
from pyproj import Transformer
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from rasterio.windows import Window

from xarray_terrascope.testing import COVER, CROPS, EXTENT, SAMPLE_FIELD, Sandbox, World

NDVI = "terrascope-s2-ndvi-v2"
FAPAR = "terrascope-s2-fapar-v2"
LAI = "terrascope-s2-lai-v2"
#: The README's headline bbox (west of the 31UFS/31UGS overlap, 31UFS only).
README_BBOX = (5.0, 51.2, 5.1, 51.3)
REAL_UL = {
    "31UFS": (600000.0, 5700000.0),
    "31UGS": (699960.0, 5700000.0),
    "32ULB": (199980.0, 5700000.0),
}


def _auth(sb: Sandbox) -> tuple[str, str]:
    return (sb.username, sb.password)


def _href(sb: Sandbox, item_id: str) -> str:
    return sb.download_url + sb.world.item(item_id)["path"]


def _post(sb: Sandbox, body: dict) -> requests.Response:
    return requests.post(sb.stac_url + "search", json=body, timeout=30)


def _all_post(sb: Sandbox, body: dict) -> list[dict]:
    """Follow POST ``next`` links by hand; return every feature."""
    features, page = [], _post(sb, body).json()
    while True:
        features += page["features"]
        nxt = [link for link in page["links"] if link["rel"] == "next"]
        if not nxt:
            return features
        assert nxt[0]["method"] == "POST" and nxt[0]["merge"] is False
        page = requests.post(nxt[0]["href"], json=nxt[0]["body"], timeout=30).json()


def _truth(world: World, collection: str, pred=lambda item: True) -> set[str]:
    return {i["id"] for i in world.item_dicts(collection, "x/") if pred(i)}


# --- the world ------------------------------------------------------------------------


def test_tiles_are_clipped_real_sentinel2_grids(world: World) -> None:
    assert set(world.tiles) == {"31UFS", "31UGS", "32ULB"}
    for name, tile in world.tiles.items():
        x0, y0 = REAL_UL[name]
        left, bottom, right, top = tile.bounds
        assert tile.transform.a == 10 and tile.transform.e == -10
        assert (left - x0) % 10 == 0 and (y0 - top) % 10 == 0
        assert x0 <= left < right <= x0 + 109800 and y0 - 109800 <= bottom < top <= y0
        assert 1000 <= tile.width <= 7600 and 1000 <= tile.height <= 1500
        assert tile.epsg == (32632 if name == "32ULB" else 32631)
    fs, gs = world.tiles["31UFS"].bounds, world.tiles["31UGS"].bounds
    assert gs[0] == 699960 and fs[2] == 709800  # the real 9.8 km overlap
    # 31UFS reaches west of the README's bbox; the extent says what the tiles cover
    corners = np.array([[EXTENT[0], EXTENT[1]], [EXTENT[0], EXTENT[3]]])
    inside = world._locate(world.tiles["31UFS"], corners[:, 0], corners[:, 1], "EPSG:4326")[2]
    assert inside.all()
    assert EXTENT == (4.95, 51.20, 6.30, 51.30)


def test_items_and_ids_follow_terrascope_naming(world: World) -> None:
    assert len(world.acquisitions) == 146
    products = ((NDVI, "NDVI", "V210"), (FAPAR, "FAPAR", "V200"), (LAI, "LAI", "V200"))
    for cid, asset, version in products:
        items = world.item_dicts(cid, "http://h:1/download/")
        assert len(items) == 438
        pattern = re.compile(
            rf"^S2[AB]_(\d{{8}})T\d{{6}}_(31UFS|31UGS|32ULB)_{asset}_10M_{version}$"
        )
        for item in items[:12]:
            match = pattern.match(item["id"])
            assert match, item["id"]
            day = match.group(1)
            product = item["id"].replace("_10M_", "_")
            href = item["assets"][asset]["href"]
            assert href == (
                f"http://h:1/download/Sentinel2/{asset}_V2/{day[:4]}/{day[4:6]}/"
                f"{day[6:]}/{product}/{item['id']}.tif"
            )
            assert world.item_for_path(href.split("/download/")[1]) == item["id"]
    times = {i["properties"]["datetime"][11:] for i in world.item_dicts(NDVI, "")}
    assert times == {"10:36:21Z", "10:46:51Z"}


def test_item_dict_shape(world: World) -> None:
    item = world.item_dicts(NDVI, "http://h:1/download/")[57]
    props, asset = item["properties"], item["assets"]["NDVI"]
    tile = world.tiles[item["id"].split("_")[2]]
    assert item["collection"] == NDVI and item["type"] == "Feature"
    assert {
        "datetime",
        "start_datetime",
        "end_datetime",
        "eo:cloud_cover",
        "platform",
        "constellation",
        "instruments",
        "mgrs:utm_zone",
        "mgrs:latitude_band",
        "mgrs:grid_square",
        "sat:relative_orbit",
    } <= set(props)
    assert props["platform"] in ("sentinel-2a", "sentinel-2b")
    assert props["mgrs:utm_zone"] == tile.utm_zone and props["sat:relative_orbit"] in (8, 51)
    assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset["roles"] == ["data"] and asset["proj:epsg"] == tile.epsg
    assert asset["proj:shape"] == [tile.height, tile.width]
    assert asset["proj:transform"] == [*list(tile.transform)[:6], 0, 0, 1]
    assert asset["raster:bands"] == [
        {"data_type": "uint8", "nodata": 255, "scale": 0.004, "offset": -0.08}
    ]
    local = asset["alternate"]["local"]["href"]
    assert local == "/data/MTDA/TERRASCOPE_" + asset["href"].split("/download/", 1)[1]
    pattern = r"/data/MTDA/TERRASCOPE_Sentinel2/NDVI_V2/\d{4}/\d\d/\d\d/\w+/\w+\.tif"
    assert re.fullmatch(pattern, local)
    lai = world.item_dicts(LAI, "http://h:1/download/")[57]["assets"]["LAI"]
    band = {"data_type": "uint8", "nodata": 255, "scale": 0.03, "offset": 0.0}
    assert lai["raster:bands"] == [band]
    poly = shapely.geometry.shape(item["geometry"])
    west, south, east, north = item["bbox"]
    assert poly.is_valid and shapely.geometry.box(west, south, east, north).covers(poly)


def test_dn_equals_render_and_tiles_agree_on_shared_pixels(world: World) -> None:
    ids = world.item_ids(NDVI)
    for k in (3 * 40, 3 * 71):  # a spring and a summer acquisition
        fs, gs = ids[k], ids[k + 1]
        assert "_31UFS_" in fs and "_31UGS_" in gs
        full = world.render(fs)
        rng = np.random.default_rng(k)
        rows = rng.integers(0, full.shape[0], 3000)
        cols = rng.integers(0, full.shape[1], 3000)
        assert np.array_equal(world.dn(fs, rows, cols), full[rows, cols])
        # the same ground pixels in 31UGS: same UTM zone, grids 9996 pixels apart
        tf, tg = world.tiles["31UFS"].transform, world.tiles["31UGS"].transform
        c_fs = np.arange(int((699960 - tf.c) / 10), full.shape[1])
        c_gs = c_fs - int((tg.c - tf.c) / 10)
        shift = int((tg.f - tf.f) / 10)  # row offset of 31UGS in 31UFS's grid
        r_fs = np.arange(max(0, -shift), min(full.shape[0], world.tiles["31UGS"].height - shift), 7)
        r_gs = r_fs + shift
        assert len(r_fs) > 100
        expected = full[np.ix_(r_fs, c_fs)]
        assert np.array_equal(world.dn(gs, r_gs[:, None], c_gs[None, :]), expected)
        valid = full != 255
        assert valid.any()
        # farmland: neighbouring clear pixels mostly differ a little, sometimes a lot
        dx = np.abs(np.diff(full.astype(int), axis=1))[valid[:, 1:] & valid[:, :-1]]
        assert 0.3 < np.mean(dx <= 2) < 0.995 and np.mean(dx > 40) > 0.005


def test_sample_uses_the_containing_pixel(world: World) -> None:
    ids = world.item_ids(NDVI)
    k = next(
        k
        for k in range(0, len(ids), 3)
        if all(world.item(i)["cloud_cover"] == 0 for i in ids[k : k + 3])
    )
    fs, gs, lb = ids[k : k + 3]
    lon, lat = np.array([5.93, 5.95, 6.22, 5.81]), np.array([51.25, 51.26, 51.25, 51.21])
    a, b, c = world.sample(fs, lon, lat), world.sample(gs, lon, lat), world.sample(lb, lon, lat)
    assert a[0] == b[0] != 255 and a[1] == b[1] != 255  # the overlap: same pixels, one zone
    assert (a[2], b[2], c[2] != 255) == (255, 255, True)  # 32ULB only
    assert (a[3] != 255, b[3], c[3]) == (True, 255, 255)  # 31UFS only
    tile = world.tiles["31UFS"]
    x = tile.transform.c + 10 * 37 + 9.99  # near the right edge of column 37
    y = tile.transform.f - 10 * 11 - 0.01  # just inside row 11
    assert world.sample(fs, [x], [y], crs=tile.crs)[0] == world.dn(fs, 11, 37)
    assert world.sample(fs, [x + 0.02], [y], crs=tile.crs)[0] == world.dn(fs, 11, 38)


def _clear_item(world: World, tile: str, month: int, collection: str = NDVI) -> str:
    return next(
        i
        for i in world.item_ids(collection)
        if f"_{tile}_" in i
        and world.item(i)["datetime_obj"].month == month
        and world.item(i)["cloud_cover"] == 0
    )


def test_fapar_and_lai_follow_ndvi(world: World) -> None:
    fapar_id = next(
        i for i in world.item_ids(FAPAR)[3 * 30 :: 3] if 5 < world.item(i)["cloud_cover"] < 60
    )  # partly cloudy, 31UFS
    ndvi_id = fapar_id.replace("FAPAR_10M_V200", "NDVI_10M_V210")
    lai_id = fapar_id.replace("FAPAR", "LAI")
    rows, cols = np.arange(0, 1380, 20)[:, None], np.arange(0, 7380, 20)[None, :]
    f = world.dn(fapar_id, rows, cols).astype(float)
    n = world.dn(ndvi_id, rows, cols).astype(float)
    lai = world.dn(lai_id, rows, cols).astype(float)
    assert np.array_equal(f == 255, n == 255) and np.array_equal(lai == 255, n == 255)
    clear = n != 255
    assert clear.mean() > 0.2 and not clear.all()
    ndvi = 0.004 * n - 0.08
    fapar = np.clip(1.25 * ndvi - 0.1, 0, 1)
    assert np.abs(f[clear] - fapar[clear] / 0.005).max() <= 1.5  # NDVI DN is rounded
    expected = -np.log(1 - np.minimum(fapar, 0.95)) / 0.5 / 0.03
    slope = 2.5 / (1 - np.minimum(fapar, 0.95)) / 0.03  # d(LAI DN) / d(NDVI)
    tolerance = 1.0 + 0.002 * slope
    assert (np.abs(lai - expected)[clear] <= tolerance[clear]).all()
    assert 0.03 * lai[clear].max() > 3.0 and 0.03 * lai[clear].min() < 0.5
    # the LAI file holds exactly these pixels
    assert np.array_equal(world.render(lai_id)[rows, cols], lai.astype(np.uint8))
    with rasterio.MemoryFile(world.cog_bytes(lai_id)) as mem, mem.open() as ds:
        assert ds.overviews(1) and ds.block_shapes == [(256, 256)] and ds.nodata == 255
        window = ds.read(1, window=Window(col_off=5000, row_off=600, width=300, height=200))
    assert np.array_equal(window, world.dn(lai_id, *np.mgrid[600:800, 5000:5300]))


def test_parcels_are_irregular_quadrilaterals_with_crops(world: World, tmp_path: Path) -> None:
    import geopandas
    from pyproj import Geod

    parcels = world.parcels()
    assert parcels.crs.to_epsg() == 4326
    assert list(parcels.columns) == ["parcel_id", "crop", "area_ha", "geometry"]
    assert len(parcels) > 10000 and parcels.parcel_id.is_unique
    assert parcels.geometry.is_valid.all()
    assert (parcels.geometry.count_coordinates() == 5).all()  # closed quadrilaterals
    assert parcels.area_ha.between(1.0, 20.0).all()
    assert parcels.area_ha.std() / parcels.area_ha.mean() > 0.3  # not a regular grid
    geod = Geod(ellps="WGS84")
    for geom, ha in zip(parcels.geometry[:200], parcels.area_ha[:200], strict=True):
        assert abs(abs(geod.geometry_area_perimeter(geom)[0]) / 1e4 - ha) < 0.002 * ha
    shares = parcels.crop.value_counts(normalize=True)
    assert set(shares.index) == set(CROPS) and shares.min() > 0.05
    # edges run in many directions, few of them north-south or east-west
    utm = parcels.to_crs(32631).geometry.get_coordinates().to_numpy().reshape(-1, 5, 2)
    edges = np.diff(utm, axis=1).reshape(-1, 2)
    angle = np.degrees(np.arctan2(edges[:, 1], edges[:, 0])) % 90
    assert np.mean((angle < 2) | (angle > 88)) < 0.1
    assert np.histogram(angle, bins=9, range=(0, 90))[0].max() < 0.5 * len(angle)
    # corners are not right angles: irregular quadrilaterals
    a, b = np.diff(utm, axis=1)[:, 0], np.diff(utm, axis=1)[:, 1]
    cosine = np.abs(np.sum(a * b, axis=1)) / np.hypot(*a.T) / np.hypot(*b.T)
    assert np.median(cosine) > 0.01
    # they are shipped as files too
    back = geopandas.read_parquet(world.write_parcels(tmp_path / "p.parquet"))
    assert back.equals(parcels)
    geojson = json.loads(world.write_parcels(tmp_path / "p.geojson").read_text())
    assert len(geojson["features"]) == len(parcels)
    assert set(geojson["features"][0]["properties"]) == {"parcel_id", "crop", "area_ha"}
    with pytest.raises(ValueError, match="geojson"):
        world.write_parcels(tmp_path / "p.shp")


def test_pixels_belong_to_the_parcel_polygons(world: World) -> None:
    import shapely

    parcels = world.parcels().set_index("parcel_id")
    tile = world.tiles["31UFS"]
    item_id = next(i for i in world.item_ids(NDVI) if "_31UFS_" in i)
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, tile.height, 4000), rng.integers(0, tile.width, 4000)
    ids = world.parcel_ids(item_id, rows, cols)
    x = tile.transform.c + 10.0 * (cols + 0.5)
    y = tile.transform.f - 10.0 * (rows + 0.5)
    lon, lat = Transformer.from_crs(tile.crs, 4326, always_xy=True).transform(x, y)
    known = np.isin(ids, parcels.index)
    assert known.mean() > 0.5
    inside = shapely.contains_xy(parcels.geometry.loc[ids[known]].array, lon[known], lat[known])
    assert inside.mean() > 0.995  # pixel centres within ~1 cm of an edge may differ
    codes = world.land_cover(item_id, rows, cols)
    assert {COVER[c] for c in np.unique(codes)} == set(COVER)
    crops = np.array(COVER)[codes[known]]
    assert (crops == parcels.crop.loc[ids[known]].to_numpy()).all()


def test_parcel_ndvi_is_the_mean_of_its_pixels(world: World) -> None:
    item_id = _clear_item(world, "31UFS", 6)
    day = world.item(item_id)["datetime_obj"].date()
    rows, cols = np.mgrid[200:700, 3000:4200]
    ids = world.parcel_ids(item_id, rows, cols).ravel()
    ndvi = 0.004 * world.dn(item_id, rows, cols).ravel() - 0.08
    whole = world.parcels().parcel_id.to_numpy()
    checked = 0
    for pid in np.unique(ids):
        pixels = ndvi[ids == pid]
        if pid == 0 or pixels.size < 200:
            continue
        truth = world.parcel_ndvi(int(pid), day)
        if pixels.size > 0.98 * world.parcels().set_index("parcel_id").area_ha.get(pid, 0) * 100:
            assert abs(pixels.mean() - truth) < 0.003, pid  # a whole parcel: its exact mean
            checked += 1
        assert 0.003 < pixels.std() < 0.08  # texture within the parcel
    assert checked > 10
    values = world.parcel_ndvi(whole[:5], "2025-06-15")
    assert values.shape == (5,) and world.parcel_ndvi(int(whole[0]), "2025-06-15") == values[0]
    with pytest.raises(KeyError):
        world.parcel_ndvi(0, "2025-06-15")


def test_crops_have_their_own_phenology(world: World) -> None:
    parcels = world.parcels()
    days = [datetime(2025, 1, 1) + timedelta(days=d) for d in range(0, 365, 3)]
    curves = np.array([world.parcel_ndvi(parcels.parcel_id.to_numpy(), d) for d in days])
    doy = np.array([d.timetuple().tm_yday for d in days])
    median = {c: np.median(curves[:, (parcels.crop == c).to_numpy()], axis=1) for c in CROPS}
    peak = {c: doy[np.argmax(v)] for c, v in median.items()}
    assert 120 <= peak["winter wheat"] <= 170 and 195 <= peak["maize"] <= 240
    assert peak["maize"] - peak["winter wheat"] > 40
    jan, aug = slice(0, 10), slice(71, 81)
    assert median["winter wheat"][jan].mean() > median["maize"][jan].mean() + 0.1
    assert median["grassland"][jan].mean() > 0.55  # green all year
    assert median["potato"][aug].mean() < median["sugar beet"][aug].mean() - 0.3
    assert median["winter wheat"][aug].mean() < 0.3  # harvested
    for c in CROPS:
        assert 0.75 < median[c].max() < 0.92 and median[c].min() > 0.1
    # mowing: each meadow's curve drops and recovers several times in the summer
    meadows = curves[:, (parcels.crop == "grassland").to_numpy()][:, :50]
    drops = np.sum(np.diff(np.sign(np.diff(meadows, axis=0)), axis=0) > 0, axis=0)
    assert (drops >= 3).all()
    # parcels of one crop differ a little (sowing dates, vigour)
    maize = curves[:, (parcels.crop == "maize").to_numpy()]
    assert 0.01 < np.std(maize[np.argmax(doy >= 180)]) < 0.2


def test_roads_and_towns_are_low_and_stable(world: World) -> None:
    ids = [_clear_item(world, "31UFS", m) for m in (2, 6, 8)]
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 1380, 50000), rng.integers(0, 7380, 50000)
    codes = world.land_cover(ids[0], rows, cols)
    ndvi = np.array([0.004 * world.dn(i, rows, cols) - 0.08 for i in ids])
    for name, ceiling in (("road", 0.2), ("built-up", 0.35)):
        sel = codes == COVER.index(name)
        assert sel.sum() > 200, name
        assert np.median(ndvi[:, sel], axis=1).max() < ceiling, name
        assert np.ptp(np.median(ndvi[:, sel], axis=1)) < 0.08, name
    fields = codes >= COVER.index(CROPS[0])
    assert np.median(ndvi[1, fields]) > 0.5  # June


def test_clouds_have_shadows_and_hazy_edges(world: World) -> None:
    item_id = next(
        i
        for i in world.item_ids(NDVI)[3 * 60 :: 3]  # 31UFS from the spring on
        if world.item(i)["clouds"] == "partly" and 10 < world.item(i)["cloud_cover"] < 50
    )
    cloud, shadow = world.cloud_masks(item_id)
    full, bare = world.render(item_id), world.render(item_id, clouds=False)
    masked = full == 255
    assert np.array_equal(masked, cloud | shadow)
    only_shadow = shadow & ~cloud
    assert only_shadow.sum() > 0.01 * masked.sum()
    # shadows fall north-west of their clouds (the sun is in the south-east in the morning)
    rows, cols = np.nonzero(cloud)
    srows, scols = np.nonzero(only_shadow)
    assert srows.mean() < rows.mean() or scols.mean() < cols.mean()
    # hazy edges: unmasked pixels around clouds are darker than the bare ground
    hazy = (full != bare) & ~masked
    assert 0 < hazy.sum() < masked.sum()
    assert (full[hazy] <= bare[hazy]).mean() > 0.95
    assert world.item(item_id)["cloud_cover"] == pytest.approx(100 * masked.mean(), abs=1.0)


def test_readme_bboxes_are_covered(sb: Sandbox) -> None:
    may = "2025-05-01T00:00:00Z/2025-06-01T00:00:00Z"
    body = {"collections": [NDVI], "bbox": list(README_BBOX), "limit": 500, "datetime": may}
    feats = _all_post(sb, body)
    assert feats and {f["id"].split("_")[2] for f in feats} == {"31UFS"}
    lon, lat = np.meshgrid(np.linspace(5.0, 5.1, 30), np.linspace(51.2, 51.3, 30))
    clear = [f["id"] for f in feats if f["properties"]["eo:cloud_cover"] == 0]
    assert clear and (sb.world.sample(clear[0], lon, lat) != 255).all()
    feats = _all_post(sb, {"collections": [NDVI], "bbox": list(SAMPLE_FIELD), "limit": 500})
    assert {f["id"].split("_")[2] for f in feats} == {"31UFS", "31UGS"}
    parcels = sb.parcels()
    assert parcels.equals(sb.world.parcels())
    assert len(parcels.cx[README_BBOX[0] : README_BBOX[2], README_BBOX[1] : README_BBOX[3]]) > 100


def test_cloud_cover_is_the_cloudy_fraction(world: World) -> None:
    items = world.item_dicts(NDVI, "")
    covers = np.array([i["properties"]["eo:cloud_cover"] for i in items])
    assert (covers == 0).sum() > 50 and ((covers > 1) & (covers < 60)).sum() > 50
    assert (covers > 95).sum() >= 6
    for idx in (6, 100, 250, 301, 302, 303):
        cover = items[idx]["properties"]["eo:cloud_cover"]
        assert abs(100 * np.mean(world.render(items[idx]["id"]) == 255) - cover) < 1.0
    by_date: dict[str, list[float]] = {}
    for item in items:
        by_date.setdefault(item["properties"]["datetime"], []).append(
            item["properties"]["eo:cloud_cover"]
        )
    assert len(by_date) == 146 and all(len(v) == 3 for v in by_date.values())


# --- STAC API ---------------------------------------------------------------------------


def test_landing_conformance_collections(sb: Sandbox) -> None:
    client = Client.open(sb.stac_url)
    for cls in ("ITEM_SEARCH", "FILTER", "SORT", "COLLECTIONS"):
        assert client.conforms_to(ConformanceClasses[cls])
    landing = requests.get(sb.stac_url, timeout=30).json()
    methods = {link.get("method") for link in landing["links"] if link["rel"] == "search"}
    assert methods == {"GET", "POST"}
    assert {"self", "root", "conformance", "data"} <= {link["rel"] for link in landing["links"]}
    conf = requests.get(sb.stac_url + "conformance", timeout=30).json()["conformsTo"]
    assert "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text" in conf
    ids = sorted(c.id for c in client.get_collections())
    assert ids == [FAPAR, LAI, NDVI, "terrascope-s2-toc-v2"]
    doc = requests.get(f"{sb.stac_url}collections/{NDVI}", timeout=30).json()
    assert doc["item_assets"]["NDVI"]["raster:bands"][0]["scale"] == 0.004
    assert doc["extent"]["temporal"]["interval"][0][0].startswith("2025-01-01")
    missing = requests.get(f"{sb.stac_url}collections/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "NotFoundError"
    one = requests.get(f"{sb.stac_url}collections/{NDVI}/items?limit=3", timeout=30).json()
    assert one["numberReturned"] == 3 and one["numberMatched"] == 438


@pytest.mark.parametrize(
    ("bbox", "tiles"),
    [
        (SAMPLE_FIELD, {"31UFS", "31UGS"}),
        ((6.20, 51.22, 6.25, 51.28), {"32ULB"}),
        ((6.11, 51.22, 6.14, 51.28), {"31UGS", "32ULB"}),
        ((5.81, 51.21, 5.84, 51.29), {"31UFS"}),
        ((4.0, 50.0, 4.1, 50.1), set()),
    ],
)
def test_bbox_search_matches_geometry(sb: Sandbox, bbox, tiles) -> None:
    feats = _all_post(sb, {"collections": [NDVI], "bbox": list(bbox), "limit": 500})
    box = shapely.geometry.box(*bbox)
    expected = _truth(
        sb.world, NDVI, lambda i: shapely.geometry.shape(i["geometry"]).intersects(box)
    )
    assert {f["id"] for f in feats} == expected and len(feats) == len(expected)
    assert {i.split("_")[2] for i in expected} == tiles
    assert all(f["assets"]["NDVI"]["href"].startswith(sb.download_url) for f in feats)


def test_intersects_search(sb: Sandbox) -> None:
    point = {"type": "Point", "coordinates": [6.12, 51.25]}
    feats = _all_post(sb, {"collections": [NDVI], "intersects": point, "limit": 1000})
    assert {f["id"].split("_")[2] for f in feats} == {"31UGS", "32ULB"} and len(feats) == 292


@pytest.mark.parametrize(
    ("interval", "lo", "hi"),
    [
        ("2025-05-16T10:36:21Z", "2025-05-16T10:36:21Z", "2025-05-16T10:36:21Z"),
        ("2025-05-01T00:00:00Z/2025-05-31T23:59:59Z", "2025-05-01", "2025-05-31T23:59:59Z"),
        ("../2025-01-20T00:00:00Z", "0000", "2025-01-20T00:00:00Z"),
        ("2025-12-10T00:00:00.000000Z/..", "2025-12-10", "9999"),
        ("2025-12-10T00:00:00+01:00/", "2025-12-09T23", "9999"),
    ],
)
def test_datetime_filters(sb: Sandbox, interval: str, lo: str, hi: str) -> None:
    feats = _all_post(sb, {"collections": [NDVI], "datetime": interval, "limit": 1000})
    expected = _truth(sb.world, NDVI, lambda i: lo <= i["properties"]["datetime"] <= hi)
    assert expected and {f["id"] for f in feats} == expected


def test_cql2_cloud_filter_both_spellings(sb: Sandbox) -> None:
    expected = _truth(sb.world, FAPAR, lambda i: i["properties"]["eo:cloud_cover"] <= 12.5)
    assert 0 < len(expected) < 438
    for prop in ("eo:cloud_cover", "properties.eo:cloud_cover"):
        body = {
            "collections": [FAPAR],
            "limit": 1000,
            "filter": {"op": "<=", "args": [{"property": prop}, 12.5]},
            "filter-lang": "cql2-json",
        }
        assert {f["id"] for f in _all_post(sb, body)} == expected
    got = requests.get(
        sb.stac_url + "search",
        timeout=30,
        params={
            "collections": FAPAR,
            "limit": 1000,
            "filter": "eo:cloud_cover <= 12.5",
            "filter-lang": "cql2-text",
        },
    ).json()
    assert {f["id"] for f in got["features"]} == expected
    client = Client.open(sb.stac_url)
    search = client.search(
        collections=[FAPAR], filter="eo:cloud_cover <= 12.5", method="GET", limit=100
    )
    assert {i.id for i in search.items()} == expected


def test_pagination_with_pystac_client(sb: Sandbox) -> None:
    client = Client.open(sb.stac_url)
    search = client.search(collections=[NDVI], limit=100)
    pages = list(search.pages_as_dicts())
    ids = [f["id"] for page in pages for f in page["features"]]
    assert len(pages) == 5 and len(ids) == 438 and len(set(ids)) == 438
    assert set(ids) == set(sb.world.item_ids(NDVI))
    assert search.matched() == 438 and pages[0]["numberMatched"] == 438
    stamps = [f["properties"]["datetime"] for page in pages for f in page["features"]]
    assert stamps == sorted(stamps, reverse=True)  # default: newest first
    get = client.search(collections=[NDVI], bbox=SAMPLE_FIELD, limit=37, method="GET")
    got = [i.id for i in get.items()]
    assert len(got) == len(set(got)) == 292


def test_sortby_and_get_post_agree(sb: Sandbox) -> None:
    body = {
        "collections": [NDVI],
        "bbox": list(SAMPLE_FIELD),
        "limit": 400,
        "sortby": [
            {"field": "properties.eo:cloud_cover", "direction": "asc"},
            {"field": "id", "direction": "desc"},
        ],
    }
    feats = _post(sb, body).json()["features"]
    keys = [(f["properties"]["eo:cloud_cover"], f["id"]) for f in feats]
    assert keys == sorted(keys, key=lambda k: (k[0], [-ord(c) for c in k[1]]))
    assert keys[0][0] < keys[-1][0]
    params = {
        "collections": NDVI,
        "bbox": ",".join(map(str, SAMPLE_FIELD)),
        "limit": "50",
        "sortby": "-properties.datetime,+id",
        "datetime": "2025-03-01T00:00:00Z/..",
    }
    got = requests.get(sb.stac_url + "search", params=params, timeout=30).json()
    post = _post(
        sb,
        {
            "collections": [NDVI],
            "bbox": list(SAMPLE_FIELD),
            "limit": 50,
            "datetime": "2025-03-01T00:00:00Z/..",
            "sortby": [
                {"field": "datetime", "direction": "desc"},
                {"field": "id", "direction": "asc"},
            ],
        },
    ).json()
    assert [f["id"] for f in got["features"]] == [f["id"] for f in post["features"]]
    assert got["numberMatched"] == post["numberMatched"] > 50
    first = [f["id"] for f in got["features"][:2]]
    assert first == sorted(first) and first[0][:19] == first[1][:19]  # same datatake, id asc
    nxt = next(link for link in got["links"] if link["rel"] == "next")
    assert "token=" in nxt["href"] and nxt.get("method", "GET") == "GET"
    page2 = requests.get(nxt["href"], timeout=30).json()
    assert not {f["id"] for f in page2["features"]} & {f["id"] for f in got["features"]}


@pytest.mark.parametrize(
    "body",
    [
        {"bbox": [5.9, 51.2, 6.0]},
        {"bbox": [5.9, 51.3, 6.0, 51.2]},
        {"bbox": ["west", 51.2, 6.0, 51.3]},
        {"bbox": [5.9, 51.2, 6.0, 51.3], "intersects": {"type": "Point", "coordinates": [6, 51]}},
        {"intersects": {"type": "Polygon", "coordinates": "nope"}},
        {"datetime": "2025-13-01T00:00:00Z"},
        {"datetime": "last tuesday"},
        {"datetime": "2025-06-01T00:00:00Z/2025-05-01T00:00:00Z"},
        {"datetime": "../.."},
        {"limit": 0},
        {"limit": 10001},
        {"limit": "ten"},
        {"filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}]}},
        {"filter": "eo:cloud_cover <<= 3", "filter-lang": "cql2-text"},
        {"filter": {"op": "=", "args": [{"property": "id"}, "x"]}, "filter-lang": "sql"},
        {"sortby": [{"field": "id", "direction": "sideways"}]},
        {"token": "not-a-token!"},
        {"collections": [1, 2]},
        {"query": {"eo:cloud_cover": {"below": 3}}},
        {"query": {"eo:cloud_cover": 3}},
    ],
)
def test_malformed_post_is_400(sb: Sandbox, body: dict) -> None:
    response = _post(sb, body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"code", "description"}


@pytest.mark.parametrize(
    "query",
    [
        "bbox=1,2,3",
        "limit=abc",
        "datetime=2025-05",
        "filter=eo:cloud_cover%20%3C%3C%201",
        "token=%25%25",
        "sortby=%2Bid,-",
    ],
)
def test_malformed_get_is_400(sb: Sandbox, query: str) -> None:
    response = requests.get(f"{sb.stac_url}search?{query}", timeout=30)
    assert response.status_code == 400 and "description" in response.json()


def test_bad_json_body_is_400(sb: Sandbox) -> None:
    for data in ("{not json", "[1, 2]"):
        response = requests.post(
            sb.stac_url + "search",
            data=data,
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400 and response.json()["code"]


# --- download server --------------------------------------------------------------------


def test_no_credentials_redirects_to_sso(sb: Sandbox) -> None:
    href = _href(sb, sb.world.item_ids(NDVI)[10])
    response = requests.get(href, allow_redirects=False, timeout=30)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(
        f"http://{sb.download_host}/auth/realms/terrascope/protocol/openid-connect/auth?client_id="
    )
    assert "response_type=code" in location and "redirect_uri=" in location
    page = requests.get(href, timeout=30)  # followed: an HTML sign-in page, not a TIFF
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Sign in" in page.text
    root = requests.get(sb.download_url, allow_redirects=False, timeout=30)
    assert root.status_code == 302


def test_wrong_credentials_are_401(sb: Sandbox) -> None:
    href = _href(sb, sb.world.item_ids(NDVI)[11])
    for auth in ((sb.username, "wrong"), ("nobody", sb.password)):
        response = requests.get(href, auth=auth, allow_redirects=False, timeout=30)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="terrascope"'
    second = next(u for u in sb.users if u != sb.username)
    ok = requests.get(sb.download_url, auth=(second, sb.users[second]), timeout=30)
    assert ok.status_code == 200 and "Index of /download/" in ok.text


def test_full_get_head_and_404(sb: Sandbox) -> None:
    item_id = sb.world.item_ids(NDVI)[12]
    href, data = _href(sb, item_id), sb.world.cog_bytes(item_id)
    full = requests.get(href, auth=_auth(sb), timeout=30)
    assert full.status_code == 200 and full.content == data
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["Content-Length"] == str(len(data))
    head = requests.head(href, auth=_auth(sb), timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    missing = requests.get(href.replace(".tif", "_X.tif"), auth=_auth(sb), timeout=30)
    assert missing.status_code == 404


def test_ranges(sb: Sandbox) -> None:
    item_id = sb.world.item_ids(NDVI)[13]
    href, data = _href(sb, item_id), sb.world.cog_bytes(item_id)
    size = len(data)

    def get(value: str) -> requests.Response:
        return requests.get(href, auth=_auth(sb), headers={"Range": value}, timeout=30)

    one = get("bytes=100-611")
    assert one.status_code == 206 and one.content == data[100:612]
    assert one.headers["Content-Range"] == f"bytes 100-611/{size}"
    tail = get("bytes=-300")
    assert tail.content == data[-300:] and tail.headers["Content-Range"].startswith(
        f"bytes {size - 300}-{size - 1}/"
    )
    assert get(f"bytes={size - 10}-").content == data[-10:]
    assert get(f"bytes={size - 5}-{size + 500}").content == data[-5:]
    multi = get("bytes=0-15,4000-4099,16384-16999")
    assert multi.status_code == 206
    ctype = multi.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + multi.content
    )
    parts = message.get_payload()
    spans = [(0, 16), (4000, 4100), (16384, 17000)]
    assert len(parts) == 3
    for part, (a, b) in zip(parts, spans, strict=True):
        assert part["Content-Range"] == f"bytes {a}-{b - 1}/{size}"
        assert part.get_payload(decode=True) == data[a:b]
    bad = get(f"bytes={size}-{size + 10}")
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{size}"
    garbage = get("bytes=zz")  # unparsable: ignored, as RFC 9110 says
    assert garbage.status_code == 200 and garbage.content == data


def test_rate_limit_429_under_concurrency(sb: Sandbox) -> None:
    sb.download.max_concurrent = 2
    sb.download.latency = 0.3
    href = _href(sb, sb.world.item_ids(NDVI)[14])
    sb.world.cog_path(sb.world.item_ids(NDVI)[14])  # generated before the race
    barrier, results = threading.Barrier(6), []

    def fetch() -> None:
        barrier.wait()
        r = requests.get(href, auth=_auth(sb), headers={"Range": "bytes=0-99"}, timeout=30)
        results.append((r.status_code, r.headers.get("Retry-After")))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in results)
    assert statuses.count(429) >= 1 and statuses.count(206) >= 2, statuses
    assert all(ra == "1" for s, ra in results if s == 429)
    served = [r for r in sb.log.records() if r.status == 206]
    for rec in served:  # never more than 2 served at the same time
        overlapping = [o for o in served if o.time <= rec.time < o.time + o.duration]
        assert len(overlapping) <= 2
    assert [r.fault for r in sb.log.records() if r.status == 429] == ["429"] * statuses.count(429)


def test_injected_503_and_drops(sb: Sandbox) -> None:
    ids = sb.world.item_ids(NDVI)
    href, other = _href(sb, ids[15]), _href(sb, ids[16])
    data = sb.world.cog_bytes(ids[15])
    sb.download.fail_next(2, "503", path_contains=ids[15])
    assert requests.get(other, auth=_auth(sb), timeout=30).status_code == 200
    assert [requests.get(href, auth=_auth(sb), timeout=30).status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    sb.download.fail_next(1, "drop")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(href, auth=_auth(sb), timeout=30)
    sb.download.fail_next(1, "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.head(href, auth=_auth(sb), timeout=30)
    dropped = [r for r in sb.log.records() if r.fault == "drop"]
    assert dropped[0].bytes == len(data) // 2 and dropped[1].status == 0
    assert requests.get(href, auth=_auth(sb), timeout=30).content == data
    sb.download.fault_rate = 1.0
    assert requests.get(href, auth=_auth(sb), timeout=30).status_code == 503
    sb.download.fault_rate, sb.download.drop_rate = 0.0, 1.0
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(href, auth=_auth(sb), timeout=30)
    with pytest.raises(ValueError, match="fault_rate"):
        sb.download.fault_rate = 1.5


def test_bearer_tokens(sb: Sandbox) -> None:
    token_url = f"http://{sb.download_host}/auth/realms/terrascope/protocol/openid-connect/token"
    form = {
        "grant_type": "password",
        "client_id": "public",
        "username": sb.username,
        "password": sb.password,
    }
    href = _href(sb, sb.world.item_ids(NDVI)[17])
    assert requests.post(token_url, data=form, timeout=30).status_code == 404  # bearer off
    now = [1000.0]
    sb.download.bearer, sb.download.token_lifetime = True, 300
    sb.download.clock = lambda: now[0]
    wrong = requests.post(token_url, data={**form, "password": "x"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_grant"
    answer = requests.post(token_url, data=form, timeout=30).json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 300
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    assert requests.head(href, headers=bearer, timeout=30).status_code == 200
    now[0] += 299
    assert requests.head(href, headers=bearer, timeout=30).status_code == 200
    now[0] += 2
    expired = requests.head(href, headers=bearer, timeout=30)
    assert expired.status_code == 401 and "Bearer" in expired.headers["WWW-Authenticate"]
    refreshed = requests.post(
        token_url,
        timeout=30,
        data={
            "grant_type": "refresh_token",
            "client_id": "public",
            "refresh_token": answer["refresh_token"],
        },
    ).json()
    bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
    assert requests.head(href, headers=bearer, timeout=30).status_code == 200
    sb.download.expire_tokens()
    assert requests.head(href, headers=bearer, timeout=30).status_code == 401
    unknown = {"Authorization": "Bearer not-a-token"}
    assert requests.head(href, headers=unknown, timeout=30).status_code == 401
    users = {r.user for r in sb.log.records() if r.auth_scheme == "bearer" and r.status == 200}
    assert users == {sb.username}


def test_expect_100_continue_is_answered(sb: Sandbox) -> None:
    """A client that waits for ``100 Continue`` before sending its body gets it."""
    sb.download.bearer = True
    form = {"grant_type": "password", "client_id": "public", "username": sb.username}
    body = urlencode({**form, "password": sb.password}).encode()
    host, port = sb.download_host.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(
            b"POST /auth/realms/terrascope/protocol/openid-connect/token HTTP/1.1\r\n"
            + f"Host: {sb.download_host}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + b"Expect: 100-continue\r\n\r\n"
        )
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
        sock.sendall(body)
        status = stream.readline()
        while status.startswith(b"HTTP/1.1 100 "):  # werkzeug sent a second one
            assert stream.readline() == b"\r\n"
            status = stream.readline()
        assert status.startswith(b"HTTP/1.1 200 ")


def test_request_log_fields_and_no_secrets(sb: Sandbox) -> None:
    item_id = sb.world.item_ids(NDVI)[18]
    href = _href(sb, item_id)
    requests.get(href, allow_redirects=False, timeout=30, headers={"User-Agent": "probe/1"})
    requests.get(href, auth=(sb.username, "wrong-secret"), timeout=30)
    requests.get(href, auth=_auth(sb), headers={"Range": "bytes=10-19"}, timeout=30)
    records = sb.log.records(path_contains=item_id)
    assert [r.status for r in records] == [302, 401, 206]
    anon, wrong, good = records
    assert not anon.has_credentials and anon.user is None and anon.user_agent == "probe/1"
    assert wrong.has_credentials and wrong.user is None and wrong.auth_scheme == "basic"
    assert good.user == sb.username and good.bytes == 10 and good.range == "bytes=10-19"
    assert good.method == "GET" and good.path == "/download/" + sb.world.item(item_id)["path"]
    dump = repr(sb.log.records())
    assert sb.password not in dump and "wrong-secret" not in dump and "Basic " not in dump
    sb.log.clear()
    assert sb.log.records() == []


def test_connections_stay_open_between_answers(sb: Sandbox) -> None:
    """Like a real file server (werkzeug's development server closes every connection),
    one socket carries several requests; each answer is in the log once it is read."""
    item_id = sb.world.item_ids(NDVI)[19]
    data, path = sb.world.cog_bytes(item_id), "/download/" + sb.world.item(item_id)["path"]
    token = base64.b64encode(f"{sb.username}:{sb.password}".encode()).decode()
    exchanges = [  # a HEAD (headers, no body) must not spoil the next answer
        ("HEAD", path, None, 200, b""),
        ("GET", path, "bytes=10-19", 206, data[10:20]),
        ("GET", path + ".aux.xml", None, 404, b"Not Found"),
        ("GET", path, "bytes=-5", 206, data[-5:]),
    ]
    conn = http.client.HTTPConnection(sb.download_host, timeout=30)
    try:
        conn.connect()
        sock = conn.sock
        for count, (method, target, span, status, body) in enumerate(exchanges, start=1):
            headers = {"Authorization": f"Basic {token}", **({"Range": span} if span else {})}
            conn.request(method, target, headers=headers)
            response = conn.getresponse()
            assert (response.status, response.read()) == (status, body)
            assert not response.will_close and conn.sock is sock
            assert len(sb.log.records()) == count
    finally:
        conn.close()
    head = sb.log.records()[0]
    assert head.method == "HEAD" and head.status == 200 and head.bytes == 0


def test_gdal_vsicurl_reads_the_world(sb: Sandbox) -> None:
    item_id = sb.world.item_ids(NDVI)[3 * 50 + 1]  # a 31UGS item
    tile = sb.world.tiles["31UGS"]
    env = {
        "GDAL_HTTP_AUTH": "BASIC",
        "GDAL_HTTP_USERPWD": f"{sb.username}:{sb.password}",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MULTIRANGE": "YES",
    }
    with rasterio.Env(**env), rasterio.open("/vsicurl/" + _href(sb, item_id)) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.transform == tile.transform
        assert (ds.transform.c - REAL_UL["31UGS"][0]) % 10 == 0
        assert (REAL_UL["31UGS"][1] - ds.transform.f) % 10 == 0
        assert ds.block_shapes == [(256, 256)] and ds.compression.name == "deflate"
        assert ds.overviews(1) and ds.nodata == 255 and ds.dtypes == ("uint8",)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        window = Window(col_off=700, row_off=400, width=300, height=200)
        pixels = ds.read(1, window=window)
    rows, cols = np.mgrid[400:600, 700:1000]
    assert np.array_equal(pixels, sb.world.dn(item_id, rows, cols))
    reads = sb.log.records(path_contains=item_id)
    assert reads and all(r.user == sb.username for r in reads)
    assert sum(r.bytes for r in reads) <= 2 * len(sb.world.cog_bytes(item_id))


def test_gdal_without_credentials_fails(sb: Sandbox) -> None:
    href = _href(sb, sb.world.item_ids(NDVI)[3 * 52])
    with (
        rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
        pytest.raises(rasterio.errors.RasterioIOError),
    ):
        rasterio.open("/vsicurl/" + href)
    assert all(not r.has_credentials for r in sb.log.records(path_contains="NDVI"))


# --- the Sandbox object and the pytest plugin -----------------------------------------


def test_sandbox_lifecycle_leaves_nothing_behind(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    users = {"alice": "s3cret-pass", "bob": "other-pass"}
    with Sandbox(seed=3, users=users, stac_latency=0.01) as box:
        assert box.username == "alice" and box.password == "s3cret-pass"
        assert "s3cret" not in repr(box) and "other-pass" not in repr(box)
        cache = Path(box.world.cache_dir)
        assert cache.is_dir() and box.stac_url != box.download_url
        env = box.env
        assert env["TERRASCOPE_DOWNLOAD_URL"] == box.download_url.rstrip("/") + "/"
        assert env["TERRASCOPE_DOWNLOAD_HOSTS"] == box.download_origin
        assert requests.get(box.download_url, auth=("bob", "other-pass"), timeout=30).ok
        box.start_bucket()
        assert requests.get(box.bucket_url, timeout=30).ok
        running = {t.name for t in set(threading.enumerate()) - before}
        assert {f"terrascope-sandbox-{n}" for n in ("stac", "download", "bucket")} <= running
        bucket_url = box.bucket_url
    assert not cache.exists()
    assert set(threading.enumerate()) - before == set()
    for url in (env["TERRASCOPE_STAC_URL"], env["TERRASCOPE_DOWNLOAD_URL"], bucket_url):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, timeout=5)
    kept = tmp_path / "cache"
    with Sandbox(seed=3, cache_dir=kept) as box:
        box.world.cog_path(box.world.item_ids(NDVI)[0])
    assert any(kept.glob("*.tif"))


def test_plugin_env_fixture(terrascope_env: Sandbox) -> None:
    for name, value in terrascope_env.env.items():
        assert os.environ[name] == value
    assert not os.path.exists(os.environ["NETRC"])
    assert EXTENT == (4.95, 51.20, 6.30, 51.30)


def test_world_is_deterministic_and_seeded() -> None:
    a, b, c = World(seed=0), World(seed=0), World(seed=1)
    item_id = a.item_ids(NDVI)[120]
    rows, cols = np.arange(0, 1100, 37)[:, None], np.arange(0, 1400, 41)[None, :]
    assert np.array_equal(a.dn(item_id, rows, cols), b.dn(item_id, rows, cols))
    assert not np.array_equal(a.dn(item_id, rows, cols), c.dn(item_id, rows, cols))
    assert a.item_dicts(NDVI, "r/") == b.item_dicts(NDVI, "r/")
    assert a.item_dicts(NDVI, "r/") != c.item_dicts(NDVI, "r/")  # other clouds
    pa, pb, pc = a.parcels(), b.parcels(), c.parcels()
    assert pa.equals(pb) and a.parcel_ndvi(pa.parcel_id[:50], "2025-05-05").tolist() == (
        b.parcel_ndvi(pb.parcel_id[:50], "2025-05-05").tolist()
    )
    assert len(pa) != len(pc) or not pa.geometry.geom_equals(pc.geometry).all()
    short = World(start="2025-06-01", end="2025-06-30")
    moments = [
        datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00"))
        for i in short.item_dicts(NDVI, "")
    ]
    assert len(moments) == 3 * 12
    assert min(moments) >= datetime(2025, 6, 1, tzinfo=UTC)
    assert json.dumps(short.collections[NDVI])  # plain JSON
