"""The COG header cache against files that change under it, a directory shared by several
processes, and files planted in it: reads stay exact, the disk stays bounded, the loader
neither hangs nor raises.

The files are real COGs (written with rasterio) served over HTTP by a small range server
started here on 127.0.0.1, which sends no validator, a fixed ETag, or the file's
Last-Modified, as a test asks. "A new process" is a real ``python`` child sharing the
test's ``TERRASCOPE_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import resource
import stat
import subprocess
import sys
import textwrap
import threading
import time
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import xarray_terrascope
from xarray_terrascope.engine import aio, cog
from xarray_terrascope.engine.header_cache import Header, headers
from xarray_terrascope.engine.header_files import MAGIC, encode
from xarray_terrascope.engine.requests import AlignedRead, Placement, Window
from xarray_terrascope.exceptions import ReadError

SIDE = 512
#: The directory holding the package under test (a child process imports it from there).
PACKAGE_ROOT = str(Path(xarray_terrascope.__file__).resolve().parent.parent)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET with one byte range (206) or none or several (200, the whole file)."""

    def log_message(self, *args) -> None:  # the test reads server.requests instead
        pass

    def do_GET(self) -> None:
        server: _FileServer = self.server  # type: ignore[assignment]
        path = server.root / self.path.lstrip("/")
        body = path.read_bytes()
        wanted = self.headers.get("Range", "")
        with server.lock:
            server.requests.append((self.path, wanted))
        one = re.fullmatch(r"bytes=(\d+)-(\d+)", wanted)
        if one:
            start, end = int(one[1]), min(int(one[2]), len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            body = body[start : end + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(len(body)))
        if server.validators == "etag":  # a server whose ETag does not follow the content
            self.send_header("ETag", '"always-the-same"')
        elif server.validators == "modified":
            self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
        self.end_headers()
        self.wfile.write(body)


class _FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, validators: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.validators = root, validators
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{name}"

    def header_requests(self) -> int:
        """Requests of a file's first bytes: a header fetched from the server."""
        with self.lock:
            return sum(wanted.startswith("bytes=0-") for _, wanted in self.requests)


@pytest.fixture
def serve(tmp_path):
    """``serve(validators)``: a range server of ``tmp_path/files`` on 127.0.0.1."""
    started: list[tuple[_FileServer, threading.Thread]] = []

    def start(validators: str) -> _FileServer:
        (tmp_path / "files").mkdir(exist_ok=True)
        server = _FileServer(tmp_path / "files", validators)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A header cache directory of this test's own, nothing in memory before or after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(folder))
    monkeypatch.delenv("TERRASCOPE_HEADER_CACHE", raising=False)
    monkeypatch.delenv("TERRASCOPE_HEADER_CACHE_MB", raising=False)
    headers.clear_memory()
    aio.engine().tiles.clear()
    yield folder
    assert headers.flush(30), "the header cache's writer thread is stuck"
    headers.clear_memory()
    aio.engine().tiles.clear()


def _write_cog(path: Path, seed: int) -> np.ndarray:
    """A 512 x 512 uint16 DEFLATE COG of 256 px tiles; returns its pixels."""
    data = np.random.default_rng(seed).integers(0, 1000 * (seed + 1), (SIDE, SIDE))
    data = data.astype("uint16")
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=SIDE,
        height=SIDE,
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        transform=Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0),
        compress="DEFLATE",
        blocksize=256,
        overviews="NONE",
    ) as out:
        out.write(data, 1)
    return data


def _same_size_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``a.tif`` and ``b.tif``: other pixels, other tile offsets, the same byte size (the
    smaller padded at its end, after every tile)."""
    a, b = _write_cog(folder / "a.tif", 0), _write_cog(folder / "b.tif", 1)
    size = max((folder / name).stat().st_size for name in ("a.tif", "b.tif"))
    for name in ("a.tif", "b.tif"):
        with open(folder / name, "ab") as handle:
            handle.write(b"\0" * (size - (folder / name).stat().st_size))
    assert (folder / "a.tif").stat().st_size == (folder / "b.tif").stat().st_size
    assert not np.array_equal(a, b)
    return a, b


def _swap(folder: Path, *, mtime: float | None = None) -> None:
    """Replace the bytes of ``a.tif`` with those of ``b.tif`` in place."""
    (folder / "a.tif").write_bytes((folder / "b.tif").read_bytes())
    if mtime is not None:
        os.utime(folder / "a.tif", (mtime, mtime))


def _request(url: str) -> AlignedRead:
    """The whole file as one window of a cube on its own grid."""
    return AlignedRead(
        url=url,
        label="item",
        window=Window(0, SIDE, 0, SIDE),
        dtype=np.dtype("uint16"),
        fill=np.uint16(0),
        placement=Placement(32631, 600000.0, 5700000.0, 10.0, 0, 0),
        shape=(SIDE, SIDE),
    )


async def _read_async(url: str) -> np.ndarray:
    return await cog.read_aligned(_request(url))


def _read_here(url: str) -> np.ndarray:
    return aio.run(_read_async(url))


_CHILD_READ = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from xarray_terrascope.engine import aio
    from xarray_terrascope.engine import cog
    from xarray_terrascope.engine.header_cache import headers
    from xarray_terrascope.engine.requests import AlignedRead, Placement, Window
    url, out = sys.argv[1], sys.argv[2]
    try:
        values = aio.run(cog.read_aligned(AlignedRead(
            url=url, label="item", window=Window(0, 512, 0, 512), dtype=np.dtype("uint16"),
            fill=np.uint16(0), placement=Placement(32631, 600000.0, 5700000.0, 10.0, 0, 0),
            shape=(512, 512),
        )))
        np.save(out, values)
        result = {"error": None}
    except Exception as err:
        result = {"error": type(err).__name__, "message": str(err)}
    assert headers.flush(30)
    print(json.dumps(result))
    """
)


def _limit_memory() -> None:
    """``preexec_fn``: 4 GiB of address space, so that an unbounded read fails in the
    child instead of filling the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def _read_in_new_process(url: str, out: Path, timeout: float = 120) -> dict:
    """Read ``url`` in a new Python process (same environment and cache directory);
    returns ``{"error": None}`` with the pixels in ``out``, or the error's type and
    message. A child still running after ``timeout`` seconds is killed (the test fails)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_READ, url, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.glob("headers/*/*") if not p.name.startswith(".tmp-")]


def _key_path(folder: Path, url: str) -> Path:
    """Where the entry of ``url`` (no query string, no user) lives: its SHA-256."""
    key = hashlib.sha256(url.encode()).hexdigest()
    return folder / "headers" / key[:2] / key


# --- item 5: a persisted header of a file replaced by another of the same size ---------


def test_a_same_size_replacement_on_a_server_without_validators_reads_right_in_a_new_process(
    serve, tmp_path, cache_dir
):
    """No ETag, no Last-Modified: a persisted header could not be told from the new
    file's, so none is persisted, and each new process reads the file as it is now."""
    server = serve("none")
    a, b = _same_size_pair(server.root)
    url = server.url("a.tif")
    first = _read_in_new_process(url, tmp_path / "first.npy")
    assert first == {"error": None}
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), a)
    assert _entries(cache_dir) == [], "a header without a validator reached the disk"
    _swap(server.root)
    for name in ("second", "third"):  # the failure must not stick either
        result = _read_in_new_process(url, tmp_path / f"{name}.npy")
        assert result == {"error": None}, result
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), b)


def test_a_cached_header_that_no_longer_decodes_is_dropped_and_fetched_again(
    serve, tmp_path, cache_dir
):
    """A server whose ETag stays the same when the file changes: the persisted header
    passes validation, the tiles do not decode with it; the read drops it, fetches the
    header again (one request) and is exact, and the next process uses the new one."""
    server = serve("etag")
    a, b = _same_size_pair(server.root)
    url = server.url("a.tif")
    assert _read_in_new_process(url, tmp_path / "first.npy") == {"error": None}
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), a)
    assert [p.name for p in _entries(cache_dir)] == [_key_path(cache_dir, url).name]
    _swap(server.root)
    before = server.header_requests()
    result = _read_in_new_process(url, tmp_path / "second.npy")
    assert result == {"error": None}, result
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), b)
    assert server.header_requests() == before + 1  # the stale header's replacement
    before = server.header_requests()
    assert _read_in_new_process(url, tmp_path / "third.npy") == {"error": None}
    np.testing.assert_array_equal(np.load(tmp_path / "third.npy"), b)
    assert server.header_requests() == before  # the replacement came from disk


def test_a_header_in_memory_is_fetched_again_when_its_file_no_longer_decodes(serve):
    server = serve("none")
    a, b = _same_size_pair(server.root)
    url = server.url("a.tif")
    np.testing.assert_array_equal(_read_here(url), a)
    _swap(server.root)
    aio.engine().tiles.clear()
    np.testing.assert_array_equal(_read_here(url), b)
    assert server.header_requests() == 2


def test_last_modified_shows_a_replaced_file_before_any_decoding(serve, cache_dir, caplog):
    """A server that sends Last-Modified and no ETag: the persisted header is found
    stale on the first pixel response (the file is not decoded with it)."""
    server = serve("modified")
    a, b = _same_size_pair(server.root)
    url = server.url("a.tif")
    os.utime(server.root / "a.tif", (1_700_000_000, 1_700_000_000))
    np.testing.assert_array_equal(_read_here(url), a)
    assert headers.flush(30)
    assert len(_entries(cache_dir)) == 1
    headers.clear_memory()  # as a new process: the header comes from disk
    aio.engine().tiles.clear()
    _swap(server.root, mtime=1_700_003_600)
    with caplog.at_level(logging.INFO, logger="xarray_terrascope.engine.cog"):
        np.testing.assert_array_equal(_read_here(url), b)
    said = [r.getMessage() for r in caplog.records if r.name == "xarray_terrascope.engine.cog"]
    assert any("changed since its header was cached" in m for m in said), said
    assert not any("does not decode" in m for m in said), said


def test_a_corrupt_file_fails_once_per_read_with_a_message_naming_the_cause(serve):
    """Tiles that do not decode with the header just fetched: the error surfaces (no
    second header request for it), names the item, the URL and the decoder's words; a
    later read in the process tries a fresh header once before failing again."""
    server = serve("etag")
    _write_cog(server.root / "bad.tif", 0)
    blob = bytearray((server.root / "bad.tif").read_bytes())
    blob[20000:] = np.random.default_rng(9).integers(0, 256, len(blob) - 20000, "uint8").tobytes()
    (server.root / "bad.tif").write_bytes(bytes(blob))
    url = server.url("bad.tif")
    for expected_header_requests in (1, 2):
        with pytest.raises(ReadError) as caught:
            _read_here(url)
        message, cause = str(caught.value), str(caught.value.__cause__).strip()
        assert "item" in message and url in message
        assert cause and f"failed: {cause}" in message, message
        assert server.header_requests() == expected_header_requests


# --- item 6: the directory is bounded in bytes, across processes -----------------------

_CHILD_WRITE = textwrap.dedent(
    """
    import sys
    from xarray_terrascope.engine.header_cache import Header, headers
    me, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        data = b"II*\\x00" + bytes([i % 251]) * (size - 4)
        headers.put(f"https://example.test/{me}/{i}.tif", Header(data, 10**6, f'"{me}-{i}"'))
    assert headers.flush(120)
    """
)


def test_the_disk_cache_stays_within_its_byte_bound_across_processes(cache_dir, monkeypatch):
    """Five processes writing 400 headers of 16 KiB each (31 MiB) into a cache bounded
    at 1 MiB leave at most the bound plus a tenth of it per process, and no less than
    half the bound (the scans remove the oldest entries, not all)."""
    bound = 2**20
    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE_MB", "1")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_WRITE, f"p{n}", "400", str(16 * 1024)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(5)
    ]
    try:
        for child in children:
            _, err = child.communicate(timeout=240)
            assert child.returncode == 0, err[-3000:]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    files = [p for p in cache_dir.rglob("*") if not p.is_dir()]
    on_disk = sum(max(p.lstat().st_size, p.lstat().st_blocks * 512) for p in files)
    assert bound / 2 <= on_disk <= bound + 5 * bound / 10, (on_disk, len(files))


def test_a_loaded_entry_counts_as_used_and_outlives_older_unused_ones(cache_dir, monkeypatch):
    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE_MB", "1")
    size = 200 * 1024

    def put(i: int) -> None:
        data = b"II*\x00" + bytes([i]) * (size - 4)
        headers.put(f"https://example.test/{i}.tif", Header(data, 10**6, f'"{i}"'))

    for i in range(4):  # 800 KiB: under the bound
        put(i)
    assert headers.flush(30)
    paths = [_key_path(cache_dir, f"https://example.test/{i}.tif") for i in range(6)]
    long_ago = time.time() - 10_000
    for i in range(4):  # written in this order, long ago
        os.utime(paths[i], (long_ago + i, long_ago + i))
    headers.clear_memory()
    found, from_disk = headers.get("https://example.test/0.tif")  # a use of the oldest
    assert from_disk and found.data[4:6] == b"\0\0"
    for i in (4, 5):  # 1.2 MiB: over the bound
        put(i)
    assert headers.flush(30)
    assert paths[0].exists(), "the entry just used was removed"
    assert not paths[1].exists(), "the least recently used entry was kept"
    assert paths[4].exists() and paths[5].exists()


# --- item 10: files planted in the cache ------------------------------------------------


def _plant(path: Path, kind: str, other_header: bytes, size: int, own_header: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "huge number":
        path.write_bytes(MAGIC + b'{"length": 1e400, "size": 1, "etag": "x"}\nII*\x00')
    elif kind == "deep nesting":
        path.write_bytes(MAGIC + b"[" * 100_000 + b"\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "oversized file":
        with open(path, "wb") as handle:  # sparse: 64 MiB that take no disk
            handle.write(MAGIC + b'{"length": 67108864, "size": 1, "etag": "x"}\n')
            handle.truncate(64 * 2**20)
    elif kind == "damaged on disk":  # an entry written whole, then a count gone wrong
        blob = bytearray(encode(own_header, size, '"a"', None))
        data = len(blob) - len(own_header)
        first_ifd = int.from_bytes(own_header[4:8], "little")
        for k in range(int.from_bytes(own_header[first_ifd : first_ifd + 2], "little")):
            entry = first_ifd + 2 + 12 * k
            if int.from_bytes(own_header[entry : entry + 2], "little") == 324:  # TileOffsets
                blob[data + entry + 4 : data + entry + 8] = (2**31).to_bytes(4, "little")
        path.write_bytes(bytes(blob))
    elif kind == "no validator":  # another file's header, nothing to tell it by
        meta = {"length": len(other_header), "size": size, "etag": None}
        path.write_bytes(MAGIC + json.dumps(meta).encode() + b"\n" + other_header)
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "huge number",
        "deep nesting",
        "fifo",
        "symlink to /dev/zero",
        "oversized file",
        "no validator",
        "damaged on disk",
    ],
)
def test_a_planted_entry_is_ignored_and_replaced(serve, tmp_path, cache_dir, kind):
    """In a new process (the loader's failures were per process), within a deadline
    (a FIFO blocked the engine; the child is killed after it). A damaged entry's bytes
    made the TIFF parser ask for 16 GiB and abort the process (SIGABRT) in every later
    process that read the file."""
    server = serve("etag")
    a, _ = _same_size_pair(server.root)
    url = server.url("a.tif")
    path = _key_path(cache_dir, url)
    other = (server.root / "b.tif").read_bytes()  # the same size as a.tif
    _plant(path, kind, other[:16384], len(other), (server.root / "a.tif").read_bytes()[:16384])
    result = _read_in_new_process(url, tmp_path / "read.npy", timeout=90)
    assert result == {"error": None}, result
    np.testing.assert_array_equal(np.load(tmp_path / "read.npy"), a)
    info = os.lstat(path)  # the fresh header took the planted file's place
    assert stat.S_ISREG(info.st_mode) and path.read_bytes().startswith(MAGIC)


def test_the_cache_directories_are_private(serve, cache_dir):
    server = serve("etag")
    a, _ = _same_size_pair(server.root)
    url = server.url("a.tif")
    np.testing.assert_array_equal(_read_here(url), a)
    assert headers.flush(30)
    path = _key_path(cache_dir, url)
    for folder in (cache_dir, path.parent.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_header_parsed_before_a_logout_is_not_handed_to_a_read_after_it(serve):
    """A header request that ends after the logout's clearing (a race) leaves its parse
    for the next read of the file: that read, with its new credentials of the same
    identity, must not read through the parse's source, whose credentials of before the
    logout send nothing (every request of it would fail with "Logged out")."""
    from xarray_terrascope.auth import Credentials, RequestAuth
    from xarray_terrascope.auth.credentials import logged_out
    from xarray_terrascope.engine import source

    server = serve("etag")
    _same_size_pair(server.root)
    url = server.url("a.tif")
    before = RequestAuth(Credentials("u", "p"))
    aio.run(source.fetch_header(url, "A", before))  # parses it; the parse is kept
    logged_out()  # what a logout marks (its clearing of the caches came before)
    after = RequestAuth(Credentials("u", "p"))
    assert after.identity == before.identity and not before.current
    _tiff, read_source, _ = aio.run(source.open_tiff(url, "A", after))
    assert read_source.access is after
