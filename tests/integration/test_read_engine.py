"""The native async read engine: equal to the GDAL path and the world, few requests,
headers cached per process and on disk, the engine in forked children. (Its pieces
alone, the loop, tile store, header cache and coalescing: ``unit/engine``.)"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import dask
import numpy as np
import pytest
import xarray as xr

from xarray_terrascope.engine import aio, cog, origins, read
from xarray_terrascope.engine.header_cache import headers
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import NDVI, tif_records

#: 31UFS only, the 31UFS/31UGS overlap, and 32ULB (another UTM zone, warped in memory).
WIDE = (5.80, 51.235, 6.18, 51.255)
FIELD_DAYS = {"start": "2025-05-01", "end": "2025-06-15"}
WIDE_DAYS = {"start": "2025-06-08", "end": "2025-06-14"}


@pytest.fixture(autouse=True)
def header_cache_dir(tmp_path, monkeypatch):
    """A fresh persistent header cache per test, and nothing in memory."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(folder))
    monkeypatch.delenv("TERRASCOPE_HEADER_CACHE", raising=False)
    headers.clear_memory()
    yield folder
    assert headers.flush(30), "the header cache's writer thread is stuck"
    headers.clear_memory()


@pytest.fixture
def gdal_only(monkeypatch):
    """Switch the async path off: every file goes through GDAL's WarpedVRT."""

    def use_gdal():
        original = read._request
        monkeypatch.setattr(
            read, "_request", lambda *args, **kw: original(*args, **{**kw, "native": False})
        )
        read.clear_reader_cache()

    return use_gdal


def _header_requests(records):
    return [r for r in records if r.method == "GET" and (r.range or "").startswith("bytes=0-")]


def _open(bbox, days, **kw):
    return xr.open_dataset(list(bbox), engine="terrascope", decode=False, **days, **kw)


def _truth(sandbox, ds, rows, cols):
    """DN the world says each output pixel holds: first valid item of the date wins."""
    ids_per_date = [str(v).split() for v in ds.item_ids.values]
    xs, ys = ds.x.values[cols], ds.y.values[rows]
    crs = f"EPSG:{ds.rio.crs.to_epsg()}"
    out = np.full((len(ids_per_date), len(rows)), 255, np.uint8)
    for t, ids in enumerate(ids_per_date):
        native = sorted(ids, key=lambda i: (not i.split("_")[2].startswith("31"), i))
        for item_id in native:
            dn = sandbox.world.sample(item_id, xs, ys, crs=crs)
            take = (out[t] == 255) & (dn != 255)
            out[t][take] = dn[take]
    return out


@pytest.mark.parametrize("mode", ["dask", "load"])
def test_field_equals_the_gdal_path_and_the_world(logged_in, gdal_only, mode):
    ds = _open(SAMPLE_FIELD, FIELD_DAYS, chunks={} if mode == "dask" else None)
    logged_in.log.clear()
    fast = ds.NDVI.load().values
    records = tif_records(logged_in)
    assert records and not [r for r in records if r.method == "HEAD"], "async path not taken"
    rng = np.random.default_rng(3)
    rows = rng.integers(0, ds.sizes["y"], 300)
    cols = rng.integers(0, ds.sizes["x"], 300)
    want = _truth(logged_in, ds, rows, cols)
    assert (want != 255).sum() > 1000
    np.testing.assert_array_equal(fast[:, rows, cols], want)
    gdal_only()
    slow = _open(SAMPLE_FIELD, FIELD_DAYS, chunks={} if mode == "dask" else None)
    np.testing.assert_array_equal(slow.NDVI.load().values, fast)


def test_wide_cube_with_a_warped_zone_is_exact_and_window_independent(logged_in, gdal_only):
    ds = _open(WIDE, WIDE_DAYS, chunks={}, chunksize=128)
    assert len(ds.chunks["x"]) > 1 and len(ds.chunks["y"]) > 1
    logged_in.log.clear()
    fast = ds.NDVI.load().values
    records = tif_records(logged_in)
    assert [r for r in records if "_32ULB_" in r.path], "32ULB files must be read"
    assert not [r for r in records if r.method == "HEAD"], "a file went through GDAL"
    # the same pixels whatever the window: one read of the whole grid gives the same cube
    whole = _open(WIDE, WIDE_DAYS).NDVI.load().values
    np.testing.assert_array_equal(whole, fast)
    # every pixel, the warped ones included, is the item pixel under its centre
    rng = np.random.default_rng(5)
    lon = np.interp(np.arange(ds.sizes["x"]), [0, ds.sizes["x"] - 1], [WIDE[0], WIDE[2]])
    east = np.flatnonzero(lon > 6.155)  # 32ULB only
    rows = rng.integers(0, ds.sizes["y"], 600)
    cols = np.concatenate([rng.integers(0, ds.sizes["x"], 300), rng.choice(east, 300)])
    want = _truth(logged_in, ds, rows, cols)
    assert (want[:, 300:] != 255).sum() > 100
    np.testing.assert_array_equal(fast[:, rows, cols], want)
    # GDAL's warper interpolates its transforms: it may pick a neighbour, rarely
    gdal_only()
    slow = _open(WIDE, WIDE_DAYS, chunks={}, chunksize=128).NDVI.load().values
    differ = slow != fast
    assert differ.mean() < 1e-4
    assert (fast != 255).sum() > 10000


def test_requests_one_header_per_file_and_none_at_open(logged_in, header_cache_dir):
    logged_in.log.clear()
    ds = _open(SAMPLE_FIELD, FIELD_DAYS, chunks={}, chunksize=128)
    assert tif_records(logged_in) == []
    ds.NDVI.mean(["x", "y"]).compute()
    records = tif_records(logged_in)
    files = {r.path for r in records}
    # two files a date, the second not read where the first fills the date's window
    # (whole partitions of 19 dates: no header of a file nobody needs is warmed)
    assert ds.sizes["time"] < len(files) <= 2 * ds.sizes["time"]
    assert not [r for r in records if r.method != "GET"]
    per_file = {p: 0 for p in files}
    for r in _header_requests(records):
        per_file[r.path] += 1
    assert set(per_file.values()) == {1}
    assert all(r.status == 206 for r in records)
    # a second computation in this process (decoded tiles forgotten): no header request
    aio.engine().tiles.clear()
    logged_in.log.clear()
    ds.NDVI.mean(["x", "y"]).compute()
    assert tif_records(logged_in) and not _header_requests(tif_records(logged_in))
    assert headers.flush(30)
    assert len(list(header_cache_dir.glob("headers/*/*"))) == len(files)


def test_a_thin_remainder_of_chunks_is_joined_not_read_again(logged_in):
    """351 rows in chunks of 300 would leave a 51-row chunk row that reads the tiles of
    the same files a second time: it joins the chunk above, one tile request per file
    and column of chunks."""
    ds = _open(SAMPLE_FIELD, FIELD_DAYS, chunks={}, chunksize=300)
    chunks = dict(zip(ds.NDVI.dims, ds.NDVI.chunks, strict=True))
    assert ds.sizes["y"] == 351 and chunks["y"] == (351,) and len(chunks["x"]) == 2
    logged_in.log.clear()
    values = ds.NDVI.compute().values
    records = tif_records(logged_in)
    files = {r.path for r in records}
    tile_requests = [r for r in records if r not in _header_requests(records)]
    assert len(_header_requests(records)) == len(files)
    assert len(tile_requests) <= 2 * len(files)  # one per column of chunks at most
    np.testing.assert_array_equal(values, _open(SAMPLE_FIELD, FIELD_DAYS).NDVI.load().values)


def _asked_twice(records, name: str) -> int:
    """Bytes of the files whose path holds ``name`` that were asked for more than once."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for record in records:
        if name in record.path and record.range:
            for part in record.range.removeprefix("bytes=").split(","):
                first, last = part.split("-")
                spans.setdefault(record.path, []).append((int(first), int(last) + 1))
    twice = 0
    for ranges in spans.values():
        covered = 0  # the union of the ranges, from the sorted list
        end = -1
        for first, stop in sorted(ranges):
            covered += max(0, stop - max(first, end))
            end = max(end, stop)
        twice += sum(stop - first for first, stop in ranges) - covered
    return twice


def test_chunk_edges_fall_on_the_files_tile_edges(logged_in, monkeypatch):
    """``chunks={}`` puts its chunk edges on the files' own pixel grid (multiples of
    ``chunksize`` from their corner; the sandbox's COG tiles are 256 px), so no tile of
    those files straddles two chunks: with no tile store at all, no byte of them is asked
    twice. Chunks as large from the cube's corner cut the tiles, which are fetched again."""
    from .test_engine import file_offsets

    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "0")
    bbox = (5.81, 51.21, 5.95, 51.29)  # 31UFS, and 31UGS over its east part
    reference = _open(bbox, WIDE_DAYS).NDVI.load().values

    def asked_twice(**chunks) -> tuple[xr.Dataset, tuple, int]:
        read.clear_reader_cache()
        ds = _open(bbox, WIDE_DAYS, **chunks)
        layout = ds.NDVI.chunks
        logged_in.log.clear()
        with dask.config.set(scheduler="threads", num_workers=1):
            np.testing.assert_array_equal(ds.NDVI.load().values, reference)
        return ds, layout, _asked_twice(tif_records(logged_in), "_31UFS_")

    aligned, (_, y_chunks, x_chunks), twice = asked_twice(chunks={}, chunksize=256)
    rows, cols = file_offsets(aligned, "31UFS")
    assert rows % 256 and cols % 256  # the cube's corner is not a tile corner
    assert len(y_chunks) >= 3 and len(x_chunks) >= 3
    assert all((np.cumsum(y_chunks[:-1]) + rows) % 256 == 0)
    assert all((np.cumsum(x_chunks[:-1]) + cols) % 256 == 0)
    assert twice == 0
    *_, cut = asked_twice(chunks={"time": 1, "y": 256, "x": 256})
    assert cut > 100_000


def test_windows_that_cut_cog_tiles_fetch_each_tile_once(logged_in):
    """Dask chunks of 100 px cut the 256 px COG tiles: the tiles along the cuts are
    shared between neighbouring windows, not fetched (and decoded) again."""
    whole = _open(SAMPLE_FIELD, WIDE_DAYS)
    logged_in.log.clear()
    reference = whole.NDVI.load().values
    once = sum(r.bytes for r in tif_records(logged_in))
    read.clear_reader_cache()  # no tile (nor header) from the first read
    chunked = _open(SAMPLE_FIELD, WIDE_DAYS, chunks={"time": 1}, chunksize=100)
    assert chunked.NDVI.data.npartitions >= 9 * chunked.sizes["time"]
    logged_in.log.clear()
    with dask.config.set(scheduler="threads", num_workers=4):
        np.testing.assert_array_equal(chunked.NDVI.load().values, reference)
    assert sum(r.bytes for r in tif_records(logged_in)) <= 1.05 * once


def test_the_tile_store_size_comes_from_the_environment(logged_in, monkeypatch):
    """``TERRASCOPE_TILE_CACHE_MB=0`` keeps no tile: the windows of the cut above then
    fetch the tiles along their cuts again (one window at a time, so none is shared
    while in flight either)."""
    reference = _open(SAMPLE_FIELD, WIDE_DAYS).NDVI.load().values

    def chunked_bytes() -> int:
        read.clear_reader_cache()
        ds = _open(SAMPLE_FIELD, WIDE_DAYS, chunks={"time": 1}, chunksize=100)
        _ = ds.NDVI.isel(time=0).values  # the headers: not part of the comparison
        logged_in.log.clear()
        with dask.config.set(scheduler="threads", num_workers=1):
            np.testing.assert_array_equal(ds.NDVI.load().values, reference)
        return sum(r.bytes for r in tif_records(logged_in))

    shared = chunked_bytes()
    assert len(aio.engine().tiles) > 0
    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "0")
    alone = chunked_bytes()
    assert len(aio.engine().tiles) == 0
    assert alone > 3 * shared  # 11.6x when measured


def _pixel_requests(records):
    return [r for r in records if not (r.range or "").startswith("bytes=0-")]


def test_tile_rows_of_a_file_come_in_one_multi_range_request(logged_in):
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)
    logged_in.log.clear()
    ds.NDVI.load()
    pixels = _pixel_requests(tif_records(logged_in))
    per_file: dict[str, list] = {}
    for r in pixels:
        per_file.setdefault(r.path, []).append(r)
    # every date's first file; its second only where the first left pixels empty
    assert ds.sizes["time"] <= len(per_file) <= 2 * ds.sizes["time"]
    assert all(len(rs) == 1 and rs[0].status == 206 for rs in per_file.values())
    several = [rs[0] for rs in per_file.values() if "," in rs[0].range]
    assert len(several) > len(per_file) // 2  # the field spans two tile rows of most files


def test_a_dates_second_tile_is_read_only_where_the_first_left_no_data(logged_in):
    """The field lies in the overlap of two tiles: a date's second file (in mosaic order)
    is asked for no pixel when the world says its first file has none missing in the
    window, and only for some tiles when it has; the cube is the same as the world's
    mosaic."""
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)  # decode=False: the stored DN
    logged_in.log.clear()
    got = ds.NDVI.load().values
    pixels = _pixel_requests(tif_records(logged_in))
    asked = {r.path.rsplit("/", 1)[-1].replace("_NDVI_10M_V210.tif", "") for r in pixels}
    world, xs, ys = logged_in.world, ds.x.values[None, :], ds.y.values[:, None]
    full = skipped = 0
    for t, ids in enumerate(str(v).split() for v in ds.item_ids.values):
        assert len(ids) == 2, ids
        first = world.sample(ids[0], xs, ys, "EPSG:32631")
        second = world.sample(ids[1], xs, ys, "EPSG:32631")
        np.testing.assert_array_equal(got[t], np.where(first == 255, second, first))
        assert ids[0].replace("_NDVI_10M_V210", "") in asked
        if not (first == 255).any():
            full += 1
            skipped += ids[1].replace("_NDVI_10M_V210", "") not in asked
    assert full > 0 and skipped == full


def test_a_dates_next_file_is_read_while_other_dates_first_files_are_still_coming(
    logged_in, monkeypatch
):
    """A date reads its next file (in mosaic order) as soon as its own first file is in,
    not once every date's first file is: the sandbox holds every request for one date's
    first file until a pixel request for another date's second file arrives (at most
    10 s), and those requests are released by that arrival, not by the time limit. The
    cube is the world's mosaic."""
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)  # decode=False: the stored DN
    ids = [str(v).split() for v in ds.item_ids.values]
    world, xs, ys = logged_in.world, ds.x.values[None, :], ds.y.values[:, None]
    firsts = [world.sample(pair[0], xs, ys, "EPSG:32631") for pair in ids]
    # a date whose first file leaves pixels of the window to its second (the world says)
    a = next(t for t, first in enumerate(firsts) if (first == 255).any() and len(ids[t]) == 2)
    b = next(t for t in range(len(ids)) if t != a)
    held, trigger = f"{ids[b][0]}.tif", f"{ids[a][1]}.tif"
    arrived = threading.Event()
    released: list[bool] = []
    serve = logged_in.download._serve

    async def holding(req):
        name = req.path.rsplit("/", 1)[-1]
        if name == trigger and not (req.headers.get("Range") or "").startswith("bytes=0-"):
            arrived.set()
        if name == held:
            released.append(await asyncio.to_thread(arrived.wait, 10))
        return await serve(req)

    monkeypatch.setattr(logged_in.download, "_serve", holding)
    got = ds.NDVI.load().values
    assert released and all(released), released  # False: released by the time limit
    for t, pair in enumerate(ids):
        second = world.sample(pair[1], xs, ys, "EPSG:32631") if len(pair) > 1 else firsts[t]
        np.testing.assert_array_equal(got[t], np.where(firsts[t] == 255, second, firsts[t]))


def test_a_server_without_multi_range_gets_one_request_per_range(logged_in):
    reference = _open(SAMPLE_FIELD, FIELD_DAYS).NDVI.load().values
    read.clear_reader_cache()
    origins.reset_limiters()  # forget that this origin answers multi-range requests
    logged_in.download.multirange = False  # several ranges -> the whole file, 200
    logged_in.log.clear()
    np.testing.assert_array_equal(_open(SAMPLE_FIELD, FIELD_DAYS).NDVI.load().values, reference)
    pixels = _pixel_requests(tif_records(logged_in))
    tried = [r for r in pixels if "," in r.range]
    # the files' reads start at once, but the first multi-range request to the origin
    # goes alone: one whole file is sent, then every other range has its own request
    assert [r.status for r in tried] == [200], [(r.path, r.range, r.status) for r in tried]
    assert len({r.path for r in pixels}) > 4 and len(pixels) > 8
    assert all(r.status == 206 for r in pixels if "," not in r.range)
    origins.reset_limiters()


def test_shared_tiles_never_answer_another_account(logged_in):
    """Tiles kept for neighbouring windows serve reads with the same credentials only:
    a second account's read reaches the server for every tile, under its own name."""
    import xarray_terrascope as xts

    first, second = list(logged_in.users.items())[:2]
    a = _open(SAMPLE_FIELD, WIDE_DAYS, chunks={"time": 1}, chunksize=100)
    logged_in.log.clear()
    with dask.config.set(scheduler="threads", num_workers=4):
        values = a.NDVI.load().values
    bytes_a = sum(r.bytes for r in _pixel_requests(tif_records(logged_in)))
    assert len(aio.engine().tiles) > 0, "the chunked read must have kept shared tiles"
    b = _open(
        SAMPLE_FIELD,
        WIDE_DAYS,
        chunks={"time": 1},
        chunksize=100,
        credentials=xts.Credentials(*second),
    )
    logged_in.log.clear()
    with dask.config.set(scheduler="threads", num_workers=4):
        np.testing.assert_array_equal(b.NDVI.load().values, values)
    records = tif_records(logged_in)
    assert {r.user for r in records} == {second[0]} != {first[0]}
    assert sum(r.bytes for r in _pixel_requests(records)) >= 0.95 * bytes_a


def test_a_new_process_reuses_the_persisted_headers(logged_in, header_cache_dir):
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)
    first = ds.NDVI.load().values
    assert _header_requests(tif_records(logged_in))
    assert headers.flush(30)  # the writer thread's files, as at this process's exit
    logged_in.log.clear()
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, xarray as xr
        ds = xr.open_dataset({list(SAMPLE_FIELD)!r}, engine="terrascope", decode=False,
                             start={FIELD_DAYS["start"]!r}, end={FIELD_DAYS["end"]!r})
        np.save(sys.argv[1], ds.NDVI.load().values)
        """
    )
    env = dict(
        os.environ, TERRASCOPE_USERNAME=logged_in.username, TERRASCOPE_PASSWORD=logged_in.password
    )
    out = header_cache_dir.parent / "second.npy"
    subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=240)
    records = tif_records(logged_in)
    assert records, "the new process read pixels"
    assert _header_requests(records) == []
    np.testing.assert_array_equal(np.load(out), first)


def test_headers_are_written_to_disk_by_their_own_thread_and_parsed_once(
    logged_in, header_cache_dir, monkeypatch
):
    """The engine's loop never blocks on the disk, and a header request's parse serves
    the read that follows it (one TIFF parse per file, not two)."""
    writers, parses = [], []
    store, open_tiff = headers._store, cog.TIFF.open

    def spy_store(*args):
        writers.append(threading.current_thread().name)
        return store(*args)

    async def spy_open(*args, **kwargs):
        parses.append(args[0])
        return await open_tiff(*args, **kwargs)

    monkeypatch.setattr(headers, "_store", spy_store)
    monkeypatch.setattr(cog.TIFF, "open", spy_open)
    values = _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-10"}).NDVI.load()
    files = {r.path for r in tif_records(logged_in)}
    assert len(files) >= 4
    assert len(parses) == len(set(parses)) == len(files)
    assert headers.flush(30)
    assert set(writers) == {"terrascope-header-cache"} and len(writers) == len(files)
    assert len(list(header_cache_dir.glob("headers/*/*"))) == len(files)
    # a new process (no header in memory) reads the same values from the disk entries
    headers.clear_memory()
    logged_in.log.clear()
    again = _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-10"}).NDVI.load()
    assert not _header_requests(tif_records(logged_in))
    np.testing.assert_array_equal(again.values, values.values)


def test_a_forked_child_persists_headers_with_its_own_writer(header_cache_dir):
    """A fork while another thread holds the cache's lock (or its writer runs) must not
    leave the child's cache locked, nor waiting on the parent's writer thread."""
    from xarray_terrascope.engine.header_cache import Header

    headers.put("https://example.test/download/a.tif", Header(b"II*\x00a", 7, '"e"'))
    assert headers.flush(30)
    headers._lock.acquire()  # as another thread of the parent might at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: a put, its write, and a read of it from disk
            code = 1
            try:
                headers.put("https://example.test/download/b.tif", Header(b"II*\x00b", 7, '"e"'))
                headers.clear_memory()
                ok = headers.flush(10)
                found, from_disk = headers.get("https://example.test/download/b.tif")
                code = 0 if ok and from_disk and found.data == b"II*\x00b" else 1
            finally:
                os._exit(code)
    finally:
        headers._lock.release()
    deadline = time.monotonic() + 30
    while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    if not done[0]:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the header cache")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_header_cache_can_be_turned_off(logged_in, header_cache_dir, monkeypatch):
    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE", "0")
    _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-05"}).NDVI.load()
    assert tif_records(logged_in)
    assert not header_cache_dir.exists() or not list(header_cache_dir.rglob("*"))


def test_a_changed_file_is_read_again_not_decoded_with_the_stale_header(logged_in, gdal_only):
    import rasterio

    days = {"start": "2025-06-01", "end": "2025-06-05"}
    ds = _open(SAMPLE_FIELD, days)
    before = ds.NDVI.load().values
    item_id = sorted(str(ds.item_ids.values[0]).split())[0]  # 31UFS: first in the mosaic
    assert "_31UFS_" in item_id
    path = logged_in.world.cog_path(item_id)
    original = path.read_bytes()
    try:
        with rasterio.open(path) as src:  # other pixels, other tiling: another header
            profile = src.profile | {"driver": "COG", "blocksize": 512, "compress": "LZW"}
            for key in ("blockxsize", "blockysize", "tiled", "interleave"):
                profile.pop(key, None)
            data = src.read(1)
        changed = np.where(data == 255, 255, 250 - np.minimum(data, 250)).astype(np.uint8)
        tmp = path.with_suffix(".new.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(changed, 1)
        assert tmp.stat().st_size != len(original)
        os.replace(tmp, path)
        logged_in.log.clear()
        after = _open(SAMPLE_FIELD, days).NDVI.load().values  # old header still in memory
        headers.clear_memory()  # and on disk, where a new process would find it
        again = _open(SAMPLE_FIELD, days).NDVI.load().values
        gdal_only()
        truth = _open(SAMPLE_FIELD, days).NDVI.load().values
    finally:
        path.write_bytes(original)
        headers.clear_memory()
        read.clear_reader_cache()
    assert len(_header_requests(tif_records(logged_in, path_contains=item_id))) >= 2
    assert not np.array_equal(truth[0], before[0])
    np.testing.assert_array_equal(after, truth)
    np.testing.assert_array_equal(again, truth)


def test_reading_inside_a_running_event_loop(logged_in):
    ds = _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-10"}, chunks={})
    expected = ds.NDVI.load().values
    read.clear_reader_cache()

    async def notebook_cell():  # a blocking read from a thread whose own loop runs
        return _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-10"}).NDVI.load()

    got = asyncio.run(notebook_cell())
    np.testing.assert_array_equal(got.values, expected)


def test_dates_read_in_order_are_read_ahead_again_on_a_second_pass(logged_in):
    """Reading a window date after date reads the next dates in the background, and so
    does the next pass over the same window (a second compute of the same cube)."""
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)  # lazy, no dask: each indexing is one read
    files = files_per_date(ds)
    for _ in range(2):
        aio.engine().tiles.clear()
        logged_in.log.clear()
        ds.NDVI.isel(time=slice(0, 1)).load()
        ds.NDVI.isel(time=slice(1, 2)).load()
        later = [names[0] for names in files[2:5]]  # a date's first file: read whole
        _wait_until_fetched(logged_in, later, "forwards")
        logged_in.log.clear()
        ds.NDVI.isel(time=slice(2, 5)).load()  # (reads further dates ahead meanwhile)
        again = _pixels_fetched(logged_in)
        assert not [n for n in later if any(n in p for p in again)], "read twice"


def files_per_date(ds) -> list[list[str]]:
    """Per date, a name part of each of its files' paths, in mosaic order (read ahead,
    and read whole, is a date's first file; its others only where it is empty): item
    S2B_20250605T103621_31UFS_NDVI_10M_V210 -> ..._20250605T103621_31UFS_... .tif"""
    return [["_".join(i.split("_")[1:3]) for i in str(ids).split()] for ids in ds.item_ids.values]


def _pixels_fetched(sandbox) -> set[str]:
    return {r.path for r in _pixel_requests(tif_records(sandbox)) if r.status == 206}


def _wait_until_fetched(sandbox, names, what):
    """Wait until the pixels (not only the headers) of files ``names`` were fetched."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        paths = _pixels_fetched(sandbox)
        if all(any(name in p for p in paths) for name in names):
            return
        time.sleep(0.05)
    raise AssertionError(f"not read ahead ({what}): {names}")


def _wait_until_idle(seconds: float = 60) -> None:
    """Wait until the engine has no work in flight: reads and the header fetches they
    started (read-ahead tasks, which nobody waits for, do not count). The sandbox
    renders a file on its first request, hence the long deadline."""
    deadline = time.monotonic() + seconds
    while aio.idle_for() == 0.0:
        assert time.monotonic() < deadline, f"the engine was still busy after {seconds} s"
        time.sleep(0.02)


def test_dates_read_from_the_last_down_are_read_ahead_downwards(logged_in):
    """dask often computes a window's last partition first: reading dates 4 then 3 reads
    dates 2, 1, 0 in the background, and those reads are the ones used."""
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)
    files = files_per_date(ds)
    aio.engine().tiles.clear()
    ds.NDVI.isel(time=slice(4, 5)).load()
    ds.NDVI.isel(time=slice(3, 4)).load()
    below = [names[0] for names in files[0:3]]  # a date's first file: read whole
    _wait_until_fetched(logged_in, below, "downwards")
    logged_in.log.clear()
    ds.NDVI.isel(time=slice(0, 3)).load()
    again = _pixels_fetched(logged_in)
    assert not [n for n in below if any(n in p for p in again)], "read twice"


def _read_ahead_finished() -> int:
    """Wait (on the loop) for every read-ahead under way; returns how many there were."""

    async def finished() -> int:
        tasks = [task for task, _ in aio.engine().readahead.values()]
        if tasks:
            await asyncio.wait(tasks)
        return len(tasks)

    _wait_until_idle()  # the reads have asked for their read-ahead...
    return aio.run(finished())  # ...and it has ended


def _needs_second_files(sandbox, ds, dates) -> list[str]:
    """Of ``dates``, the second files that the world says are needed: where the date's
    first file has no data in the window."""
    world, xs, ys = sandbox.world, ds.x.values[None, :], ds.y.values[:, None]
    needed = []
    for t in dates:
        ids = str(ds.item_ids.values[t]).split()
        if len(ids) > 1 and (world.sample(ids[0], xs, ys, "EPSG:32631") == 255).any():
            needed.append("_".join(ids[1].split("_")[1:3]))
    return needed


def test_dates_read_ahead_are_whole_mosaics_so_their_read_asks_for_nothing(logged_in):
    """Reading a window date after date reads the next dates ahead whole, as the read
    itself would (the first file, then the next ones only where the window is still
    empty): the read that takes them sends no request, not even for the second files
    that the world says it needs, and gives the cube that a fresh read gives."""
    ds = _open(SAMPLE_FIELD, {"start": "2025-04-01", "end": "2025-09-30"})
    later = range(2, 10)
    needed = _needs_second_files(logged_in, ds, later)
    assert needed, "the test needs dates whose first file leaves the field partly empty"
    aio.engine().tiles.clear()
    ds.NDVI.isel(time=slice(0, 1)).load()
    ds.NDVI.isel(time=slice(1, 2)).load()  # forwards: the next dates are read ahead
    assert _read_ahead_finished() >= len(later)
    fetched = _pixels_fetched(logged_in)
    assert all(any(n in p for p in fetched) for n in needed), "second files not read ahead"
    logged_in.log.clear()
    taken = ds.NDVI.isel(time=slice(2, 10)).load().values  # (reads dates 10... ahead)
    theirs = [name for names in files_per_date(ds)[2:10] for name in names]
    asked = [r.path for r in tif_records(logged_in) if any(n in r.path for n in theirs)]
    assert asked == []
    read.clear_reader_cache()
    aio.engine().tiles.clear()
    fresh = _open(SAMPLE_FIELD, {"start": "2025-04-01", "end": "2025-09-30"})
    np.testing.assert_array_equal(taken, fresh.NDVI.isel(time=slice(2, 10)).load().values)


def test_a_run_of_reads_ending_at_the_last_date_reads_ahead_downwards(logged_in):
    """dask starts a window's last two partitions at once, and the last one may reach
    the engine second: a read of the last date right after one of the dates below it
    reads the dates further down ahead (there is nothing above the last date), and
    each file is fetched once."""
    ds = _open(SAMPLE_FIELD, {"start": "2025-04-01", "end": "2025-09-30"})
    files = files_per_date(ds)
    last = ds.sizes["time"] - 1
    aio.engine().tiles.clear()
    logged_in.log.clear()
    ds.NDVI.isel(time=slice(last - 4, last)).load()
    ds.NDVI.isel(time=slice(last, last + 1)).load()
    below = [names[0] for names in files[last - 8 : last - 4]]
    _wait_until_fetched(logged_in, below, "downwards from the last date")
    _read_ahead_finished()
    ds.NDVI.isel(time=slice(last - 8, last - 4)).load()
    paths = [r.path for r in _pixel_requests(tif_records(logged_in))]
    assert len(paths) == len(set(paths)), "a file's pixels fetched twice"


def test_one_date_of_a_long_cube_warms_only_the_headers_of_the_nearest_dates(logged_in):
    """A read of one date must not fetch the headers of every file of a six-month cube
    (148 files): only those of the nearest dates' first files (a date's later files are
    read only where its first leaves the window empty), up to WARM_FILES, around each
    read; and the files the read itself needs."""
    from xarray_terrascope.engine import readahead

    ds = _open(SAMPLE_FIELD, {"start": "2025-04-01", "end": "2025-09-30"})
    files = files_per_date(ds)
    assert sum(map(len, files)) > 3 * readahead.WARM_FILES

    def fetched():
        return {r.path for r in _header_requests(tif_records(logged_in))}

    before: set[str] = set()  # fetched by the earlier read, so in memory
    for t in (40, 10):  # the warmed headers move with the reads
        logged_in.log.clear()
        ds.NDVI.isel(time=t).load()
        _wait_until_idle()  # every header fetch the read started has ended
        # the nearest dates, the later one first at equal distance
        near = sorted(range(len(files)), key=lambda d: (abs(d - t), d < t))
        firsts = [files[d][0] for d in near[: readahead.WARM_FILES]]
        got = fetched()
        new = {n for n in firsts if not any(n in p for p in before)}
        assert {n for n in firsts if any(n in p for p in got)} == new, t
        before |= got
        others = [p for p in got if not any(n in p for n in firsts)]
        assert all(any(n in p for n in files[t]) for p in others), (t, others)


def test_a_full_read_ahead_table_starts_nothing_and_drops_nothing(logged_in, options):
    """Results waiting to be taken are never dropped for newer ones (their bytes would be
    fetched twice): with room for 4 results, the next 4 files are read ahead, no more,
    and all 4 are used."""

    options(readahead_mb=0)  # room for the minimum, 4
    ds = _open(SAMPLE_FIELD, FIELD_DAYS)
    files = files_per_date(ds)
    later = [names[0] for names in files[2:]]  # a date's first file: read whole
    assert len(later) > 8, "the test needs more dates"
    aio.engine().tiles.clear()
    ds.NDVI.isel(time=slice(0, 1)).load()
    ds.NDVI.isel(time=slice(1, 2)).load()
    _wait_until_fetched(logged_in, later[:4], "the next 4 files")
    _wait_until_idle()  # every read-ahead the reads asked for has been started...

    async def read_ahead_finished() -> int:
        tasks = [task for task, _ in aio.engine().readahead.values()]
        if tasks:
            await asyncio.wait(tasks)
        return len(tasks)

    # ...and is done: nothing else can fetch now
    assert aio.run(read_ahead_finished()) == 4
    fetched = _pixels_fetched(logged_in)
    assert not [n for n in later[4:] if any(n in p for p in fetched)]
    logged_in.log.clear()
    ds.NDVI.isel(time=slice(2, 6)).load()
    again = {r.path for r in _pixel_requests(tif_records(logged_in))}
    assert not [n for n in later[:4] if any(n in p for p in again)], "read twice"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_loop():
    async def pid():
        return os.getpid()

    assert aio.run(pid()) == os.getpid()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            ok = aio.run(pid()) == os.getpid()
            os.write(write_fd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 1)
    os.waitpid(child, 0)
    assert answer == b"1"


def test_no_secret_in_logs_or_cache(logged_in, all_logs, header_cache_dir):
    _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-10"}).NDVI.load()
    import base64

    secret = logged_in.password
    forms = [secret, base64.b64encode(f"{logged_in.username}:{secret}".encode()).decode()]
    text = "\n".join(r.getMessage() for r in all_logs.records)
    assert "xarray_terrascope" in " ".join(r.name for r in all_logs.records)
    for form in forms:
        assert form not in text
    assert headers.flush(30)  # the writes wait for the engine to be idle
    blobs = b"".join(p.read_bytes() for p in header_cache_dir.rglob("*") if p.is_file())
    assert blobs
    for form in forms:
        assert form.encode() not in blobs
    assert logged_in.username.encode() not in blobs


def test_streaming_uses_the_async_path_on_a_distributed_cluster(logged_in):
    distributed = pytest.importorskip("distributed")
    ds = _open(SAMPLE_FIELD, {"start": "2025-06-01", "end": "2025-06-20"}, chunks={})
    threaded = ds.NDVI.astype("float64").mean(["x", "y"]).compute(scheduler="threads")
    env = {"TERRASCOPE_CACHE_DIR": os.environ["TERRASCOPE_CACHE_DIR"]}
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
            worker_dashboard_address=":0",
            env=env,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        logged_in.log.clear()
        on_cluster = client.compute(ds.NDVI.astype("float64").mean(["x", "y"])).result()
    np.testing.assert_array_equal(on_cluster.values, threaded.values)
    records = tif_records(logged_in)
    assert records and not [r for r in records if r.method == "HEAD"]
    logging.getLogger(__name__).debug("%d requests on the cluster", len(records))


def test_local_alternate_files_are_read_from_disk(logged_in, capfd):
    """Hrefs as ``file:///p`` and as ``file://localhost/p`` (RFC 8089) alike; GDAL's
    reads of them print nothing on the process's stderr."""
    import xarray_terrascope as xts

    days = ("2025-06-01", "2025-06-05")
    items = xts.search(NDVI, list(SAMPLE_FIELD), *days)
    expected = _open(SAMPLE_FIELD, {"start": days[0], "end": days[1]}).NDVI.load().values
    for k, item in enumerate(items):
        local = logged_in.world.cog_path(item.id)
        host = "localhost" if k % 2 else ""
        href = f"file://{host}{local}"
        item.assets["NDVI"].extra_fields["alternate"] = {"local": {"href": href}}
    _read_ahead_finished()  # the downloads of earlier reads (read ahead) are over
    logged_in.log.clear()
    capfd.readouterr()
    ds = xr.open_dataset(items, engine="terrascope", bbox=list(SAMPLE_FIELD), decode=False)
    np.testing.assert_array_equal(ds.NDVI.load().values, expected)
    assert tif_records(logged_in) == [], "local files must not be downloaded"
    assert "ERROR" not in capfd.readouterr().err


def _with_local_hrefs(items, path_of):
    for item in items:
        href = f"file://{path_of(item)}"
        item.assets["NDVI"].extra_fields["alternate"] = {"local": {"href": href}}
    return items


@pytest.mark.parametrize("kind", ["empty", "html", "truncated", "no crs"])
def test_an_unreadable_local_file_is_a_read_error_naming_it(logged_in, tmp_path, kind):
    """A local alternate file that GDAL cannot read is the file's problem: a
    ``ReadError`` naming the item and the file, not a login page's
    ``AuthenticationError``, an invented HTTP status, or stackstac's bare exception."""
    import rasterio
    from affine import Affine

    import xarray_terrascope as xts
    from xarray_terrascope.exceptions import AuthenticationError, ReadError

    days = ("2025-06-01", "2025-06-05")
    items = xts.search(NDVI, list(SAMPLE_FIELD), *days)
    path = tmp_path / "local.tif"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "html":
        path.write_text("<html>not a tiff</html>")
    elif kind == "truncated":
        path.write_bytes(logged_in.world.cog_path(items[0].id).read_bytes()[:3000])
    else:
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8"}
        transform = Affine(10, 0, 600000, 0, -10, 5690000)
        with rasterio.open(path, "w", transform=transform, **profile) as out:
            out.write(np.zeros((1, 64, 64), np.uint8))
    _with_local_hrefs(items, lambda item: path)
    ds = xr.open_dataset(items, engine="terrascope", bbox=list(SAMPLE_FIELD), decode=False)
    with pytest.raises(ReadError) as info:
        ds.NDVI.load()
    assert not isinstance(info.value, AuthenticationError)
    assert "local.tif" in str(info.value) and "HTTP" not in str(info.value)
    assert any(item.id in str(info.value) for item in items)


def test_prefer_local_forces_either_source(logged_in, tmp_path):
    """``prefer_local=False`` downloads although the local files exist; ``True`` reads
    them, and fails naming the item when one is missing (None, the default, would
    download that one)."""
    import xarray_terrascope as xts
    from xarray_terrascope.exceptions import InvalidArgumentError, ReadError

    days = ("2025-06-01", "2025-06-05")
    items = _with_local_hrefs(
        xts.search(NDVI, list(SAMPLE_FIELD), *days), lambda i: logged_in.world.cog_path(i.id)
    )
    cube = _open(SAMPLE_FIELD, {"start": days[0], "end": days[1]})
    expected = cube.NDVI.load().values
    # each date's first file in mosaic order (its second is read only where it is empty)
    firsts = {str(ids).split()[0] for ids in cube.item_ids.values}

    def name(item):
        return os.path.basename(str(logged_in.world.cog_path(item.id)))

    def load(prefer_local):
        logged_in.log.clear()
        return (
            xr.open_dataset(
                items,
                engine="terrascope",
                bbox=list(SAMPLE_FIELD),
                decode=False,
                prefer_local=prefer_local,
            )
            .NDVI.load()
            .values
        )

    np.testing.assert_array_equal(load(False), expected)
    downloaded = {r.path.rsplit("/", 1)[-1] for r in tif_records(logged_in)}
    assert {name(i) for i in items if i.id in firsts} <= downloaded <= {name(i) for i in items}
    np.testing.assert_array_equal(load(True), expected)
    assert tif_records(logged_in) == []
    gone = next(item for item in items if item.id in firsts)
    gone.assets["NDVI"].extra_fields["alternate"]["local"]["href"] = f"file://{tmp_path}/x.tif"
    with pytest.raises(ReadError, match=f"prefer_local=True but the local file of {gone.id}"):
        load(True)
    np.testing.assert_array_equal(load(None), expected)  # that one file downloaded
    assert {r.path.rsplit("/", 1)[-1] for r in tif_records(logged_in)} == {name(gone)}
    with pytest.raises(InvalidArgumentError, match="prefer_local must be"):
        load("yes")


def _first_data_byte(path) -> int:
    """Where the first tile of any resolution starts in the COG at ``path``, from GDAL's
    block offsets (the header, IFDs and their arrays, lies before it)."""
    import rasterio

    first = None
    with rasterio.open(path) as src:
        levels = len(src.overviews(1))
    for level in [None, *range(levels)]:
        kw = {} if level is None else {"overview_level": level}
        with rasterio.open(path, **kw) as src:
            for i in range(src.height // src.block_shapes[0][0] + 1):
                for j in range(src.width // src.block_shapes[0][1] + 1):
                    offset = src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1)
                    if offset and int(offset) and (first is None or int(offset) < first):
                        first = int(offset)
    assert first is not None
    return first


def test_a_files_header_is_read_in_one_request_sized_by_its_familys_headers(logged_in, monkeypatch):
    """Once a header of a file family (a product's band, any date or tile) is known, the
    next files of the family have their header read in one request that ends within
    ``FAMILY_MARGIN`` or an eighth (rounded up to 256 bytes) of the family's headers,
    whatever another family's headers are: before, a 2.2 kB band header was read as
    4 kB (the largest header of any file seen, with a quarter and a KiB more, in 4 KiB
    steps)."""
    from xarray_terrascope.engine import source

    monkeypatch.setattr(source, "_learned", {})  # nothing learned by earlier tests
    sandbox = logged_in
    days = [("2025-06-01", "2025-06-20"), ("2025-06-21", "2025-07-10")]
    cubes = [
        xr.open_dataset(
            [5.20, 51.22, 5.25, 51.25],
            engine="terrascope",
            collection="terrascope-s2-toc-v2",
            assets=["SCL", "B04", "B08"],
            start=start,
            end=end,
        )
        for start, end in days
    ]
    # the first cube's SCL, then B04 (a family of its own: B04 and B08 share one), then
    # B08 and the second cube's SCL: those two read with their family's size known
    sandbox.log.clear()
    for ds, asset in [(cubes[0], "SCL"), (cubes[0], "B04")]:
        ds[asset].load()
    sandbox.log.clear()
    for ds, asset in [(cubes[0], "B08"), (cubes[1], "SCL")]:
        ds[asset].load()
    requests = {r.path.rsplit("/", 1)[1]: r for r in _header_requests(sandbox.log.records())}
    for ds, asset in [(cubes[0], "B08"), (cubes[1], "SCL")]:
        ids = [i for group in ds.item_ids.values for i in str(group).split()]
        files = [sandbox.world.cog_path(i, asset) for i in ids]
        sent = [requests[f.name] for f in files if f.name in requests]
        assert len(sent) == len(files) >= 3, (asset, len(sent), len(files))
        header = max(_first_data_byte(f) for f in files)
        bound = -(-(header + max(source.FAMILY_MARGIN, header // 8)) // 256) * 256
        ends = [int(r.range.split("-")[1]) + 1 for r in sent]
        assert max(ends) <= bound, (asset, header, ends)
        # one request per file: none had to fetch the rest of its header
        tails = [r for r in sandbox.log.records() if r.path.endswith(files[0].name)]
        assert not any((r.range or "").startswith(f"bytes={ends[0]}-") for r in tails)


def test_read_ahead_of_one_cube_never_answers_another_cube_of_the_same_files(logged_in):
    """Two cubes of the same items over two fields of the same size have the same
    windows (cube pixels) of the same files, at other places in those files: the dates
    read ahead for one are never taken by the other's read, and each cube equals what
    the world says."""
    days = {"start": "2025-04-01", "end": "2025-09-30"}
    west, south, east, north = SAMPLE_FIELD
    a = _open(SAMPLE_FIELD, days)
    for shift in (0.01, 0.011, 0.012, 0.013):  # some 700 m east: the same tiles and files
        b = _open((west + shift, south, east + shift, north), days)
        if a.NDVI.shape == b.NDVI.shape:  # snapped to the grid, the same size
            break
    assert a.NDVI.shape == b.NDVI.shape, "the test needs windows of the same size"
    assert a.item_ids.values.tolist() == b.item_ids.values.tolist()
    read.clear_reader_cache()
    aio.engine().tiles.clear()
    a.NDVI.isel(time=slice(0, 1)).load()
    a.NDVI.isel(time=slice(1, 2)).load()  # forwards: a's next dates are read ahead
    assert _read_ahead_finished() >= 2
    taken = b.NDVI.isel(time=slice(2, 6)).load().values
    rows, cols = np.meshgrid(np.arange(b.sizes["y"]), np.arange(b.sizes["x"]), indexing="ij")
    truth = _truth(logged_in, b, rows.ravel(), cols.ravel())[2:6]
    np.testing.assert_array_equal(taken.reshape(4, -1), truth)
