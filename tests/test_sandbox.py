"""The sandbox, checked through real HTTP against the synthetic world's ground truth."""

from __future__ import annotations

import email.parser
import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
import shapely.geometry
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from rasterio.windows import Window

from xarray_terrascope.testing import EXTENT, SAMPLE_FIELD, Sandbox, World

NDVI = "terrascope-s2-ndvi-v2"
FAPAR = "terrascope-s2-fapar-v2"
REAL_UL = {
    "31UFS": (600000.0, 5700000.0),
    "31UGS": (699960.0, 5700000.0),
    "32ULB": (199980.0, 5700000.0),
}


@pytest.fixture
def sb(terrascope_sandbox: Sandbox) -> Sandbox:
    """The session sandbox, with default switches and an empty log before and after."""
    terrascope_sandbox.reset()
    yield terrascope_sandbox
    terrascope_sandbox.reset()


@pytest.fixture(scope="module")
def world(terrascope_sandbox: Sandbox) -> World:
    return terrascope_sandbox.world


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
        assert 1000 <= tile.width <= 2100 and 1000 <= tile.height <= 2100
        assert tile.epsg == (32632 if name == "32ULB" else 32631)
    fs, gs = world.tiles["31UFS"].bounds, world.tiles["31UGS"].bounds
    assert gs[0] == 699960 and fs[2] == 709800  # the real 9.8 km overlap


def test_items_and_ids_follow_terrascope_naming(world: World) -> None:
    assert len(world.acquisitions) == 146
    for cid, asset, version in ((NDVI, "NDVI", "V210"), (FAPAR, "FAPAR", "V200")):
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
        r_fs = np.arange(0, full.shape[0], 7)
        r_gs = r_fs + int((tg.f - tf.f) / 10)
        expected = full[np.ix_(r_fs, c_fs)]
        assert np.array_equal(world.dn(gs, r_gs[:, None], c_gs[None, :]), expected)
        valid = full != 255
        assert valid.any()
        # smooth: neighbouring clear pixels differ by at most 1 DN
        dx = np.abs(np.diff(full.astype(int), axis=1))[valid[:, 1:] & valid[:, :-1]]
        dy = np.abs(np.diff(full.astype(int), axis=0))[valid[1:] & valid[:-1]]
        assert dx.max() <= 1 and dy.max() <= 1


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


def test_seasonal_cycle_and_fapar(world: World) -> None:
    lon, lat = np.array([SAMPLE_FIELD[0] + 0.02]), np.array([SAMPLE_FIELD[1] + 0.01])
    series = {}
    for item_id in world.item_ids(NDVI):
        if "_31UFS_" in item_id:
            dn = int(world.sample(item_id, lon, lat)[0])
            if dn != 255:
                series[world.item(item_id)["datetime_obj"]] = 0.004 * dn - 0.08
    winter = [v for d, v in series.items() if d.month in (1, 2, 12)]
    summer = [v for d, v in series.items() if d.month in (5, 6, 7)]
    assert min(winter) >= 0.18 and max(winter) <= 0.32
    assert 0.7 <= max(summer) <= 0.95
    fapar_id = next(
        i for i in world.item_ids(FAPAR)[3 * 30 :: 3] if 5 < world.item(i)["cloud_cover"] < 60
    )  # partly cloudy, 31UFS
    ndvi_id = fapar_id.replace("FAPAR_10M_V200", "NDVI_10M_V210")
    rows, cols = np.arange(0, 1100, 50), np.arange(0, 1400, 50)
    f = world.dn(fapar_id, rows[:, None], cols[None, :]).astype(float)
    n = world.dn(ndvi_id, rows[:, None], cols[None, :]).astype(float)
    assert np.array_equal(f == 255, n == 255)  # same clouds
    clear = n != 255
    assert clear.any() and not clear.all()
    expected = np.clip(1.25 * (0.004 * n - 0.08) - 0.1, 0, 1) / 0.005
    assert np.abs(f[clear] - expected[clear]).max() <= 1.5  # NDVI DN is rounded


def test_cloud_cover_is_the_cloudy_fraction(world: World) -> None:
    items = world.item_dicts(NDVI, "")
    covers = np.array([i["properties"]["eo:cloud_cover"] for i in items])
    assert (covers == 0).sum() > 50 and ((covers > 1) & (covers < 60)).sum() > 50
    assert (covers > 95).sum() >= 6
    for idx in (6, 100, 250, 301):
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
    assert sorted(c.id for c in client.get_collections()) == [FAPAR, NDVI]
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
        assert env["TERRASCOPE_DOWNLOAD_HOSTS"] == box.download_host
        assert requests.get(box.download_url, auth=("bob", "other-pass"), timeout=30).ok
        running = {t.name for t in set(threading.enumerate()) - before}
        assert {"terrascope-sandbox-stac", "terrascope-sandbox-download"} <= running
    assert not cache.exists()
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(env["TERRASCOPE_STAC_URL"], timeout=5)
    kept = tmp_path / "cache"
    with Sandbox(seed=3, cache_dir=kept) as box:
        box.world.cog_path(box.world.item_ids(NDVI)[0])
    assert any(kept.glob("*.tif"))


def test_plugin_env_fixture(terrascope_env: Sandbox) -> None:
    for name, value in terrascope_env.env.items():
        assert os.environ[name] == value
    assert not os.path.exists(os.environ["NETRC"])
    assert EXTENT == (5.80, 51.20, 6.30, 51.30)


def test_world_is_deterministic_and_seeded() -> None:
    a, b, c = World(seed=0), World(seed=0), World(seed=1)
    item_id = a.item_ids(NDVI)[120]
    rows, cols = np.arange(0, 1100, 37)[:, None], np.arange(0, 1400, 41)[None, :]
    assert np.array_equal(a.dn(item_id, rows, cols), b.dn(item_id, rows, cols))
    assert not np.array_equal(a.dn(item_id, rows, cols), c.dn(item_id, rows, cols))
    assert a.item_dicts(NDVI, "r/") == b.item_dicts(NDVI, "r/")
    short = World(start="2025-06-01", end="2025-06-30")
    moments = [
        datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00"))
        for i in short.item_dicts(NDVI, "")
    ]
    assert len(moments) == 3 * 12
    assert min(moments) >= datetime(2025, 6, 1, tzinfo=timezone.utc)
    assert json.dumps(short.collections[NDVI])  # plain JSON
