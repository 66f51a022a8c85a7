"""COG header cache: bounded in memory per process, optionally persisted on disk.

An entry is the first bytes of a GeoTIFF, up to the first tile's data (async-tiff's
``header_byte_size``), with the file size, ETag and Last-Modified the server reported
when they were read. Keys are a hash of the URL without query string or user
information: no secret ever reaches a key, a file name or the cache's content (only
TIFF header bytes).

On disk (so a new process reopening the same items sends no header request) the cache
lives in ``platformdirs.user_cache_dir("xarray-terrascope")/headers``; set
``TERRASCOPE_CACHE_DIR`` to move it and ``TERRASCOPE_HEADER_CACHE=0`` to turn persisting
off. Only headers with a validator (an ETag or a Last-Modified date) are persisted and
loaded: without one, a file replaced by another of the same size could not be told from
the original. Entries read from disk are validated by the reader against the first
pixel response (size, and ETag, or Last-Modified when either side has no ETag) and
dropped on mismatch, and a header from any cache whose file does not decode is dropped
and read again (see :mod:`xarray_terrascope.engine.cog`).

The directory is bounded in bytes: ``TERRASCOPE_HEADER_CACHE_MB`` MiB of disk
(:data:`DEFAULT_DISK_MB` by default) shared by every process using it. A process scans
it at its first write and again each time it has written another tenth of the bound,
removing the least recently used entries (a load counts as a use) until it holds at
most the bound; so while P processes write, it may exceed the bound by P tenths.
Loading reads only regular files of at most 4 MiB, never follows a symbolic link or
blocks on a FIFO, and drops any entry it cannot parse. Directories are created ``0700``,
files ``0600`` (see :mod:`xarray_terrascope.engine.header_files`).

Writing to disk happens on a writer thread of its own, never on the engine's event loop
(whose every blocking call would hold up the reads), and only while the engine is idle:
a write waits for the reads in flight to end (at most :data:`WRITE_DEFER_SECONDS`), so
the disk and the writer's share of the GIL are not taken from a read. The writes still
pending when the interpreter exits are finished then (:meth:`HeaderCache.flush`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.engine import aio, header_files
from xarray_terrascope.engine.header_files import MAX_ENTRY_BYTES, MAX_META_BYTES
from xarray_terrascope.engine.origins import Remote
from xarray_terrascope.options import get_options

__all__ = [
    "Header",
    "HeaderCache",
    "cache_dir",
    "disk_bytes",
    "headers",
    "key_of",
]

logger = logging.getLogger(__name__)

#: A process scans the directory again once it has written this fraction of the bound.
SCAN_FRACTION = 0.1
#: Bytes of headers kept in memory per process.
MEMORY_BYTES = 64 * 2**20
#: Disk writes (and removals) waiting for the writer thread; beyond this a new header
#: is only kept in memory.
PENDING_WRITES = 4096
#: Seconds the interpreter's exit waits for the pending writes.
EXIT_FLUSH_SECONDS = 10.0
#: Seconds the engine must have been idle before a disk write (the gaps between the
#: partitions of one dask computation are shorter).
IDLE_SECONDS = 0.2


@dataclass(frozen=True)
class Header:
    """The header bytes of one file and what the server said about the file then.

    ``fetched`` is the ``time.monotonic()`` at which this process read it from the
    server (0.0 for a header loaded from disk); it takes no part in comparisons.
    """

    data: bytes
    size: int | None
    etag: str | None
    last_modified: str | None = None
    fetched: float = field(default=0.0, compare=False, repr=False)

    @property
    def has_validator(self) -> bool:
        """Whether a later response can confirm it (it has an ETag or Last-Modified)."""
        return bool(self.etag or self.last_modified)

    def matches(self, size: int | None, etag: str | None, last_modified: str | None = None) -> bool:
        """Whether a later response describes the same file: the sizes agree, and the
        ETags, or the Last-Modified dates when either side has no ETag (an ETag is the
        stronger validator, RFC 9110 8.8.1). Values one side does not know pass.

        Examples
        --------
        >>> old = Header(b"II*", 100, None, "Mon, 02 Jun 2025 10:00:00 GMT")
        >>> old.matches(100, None, "Tue, 03 Jun 2025 10:00:00 GMT")
        False
        >>> old.matches(100, '"v2"', None)
        True
        """
        return Remote(self.size, self.etag, self.last_modified).matches(
            Remote(size, etag, last_modified)
        )


def cache_dir() -> Path | None:
    """Where headers are persisted (the ``cache_dir`` option), or None when the
    ``header_cache`` option is off (read now)."""
    options = get_options()
    if not options.header_cache:
        return None
    root = options.cache_dir
    if root is None:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("xarray-terrascope"))
    return root / "headers"


def disk_bytes() -> int:
    """Bytes the persisted headers take at most (the ``header_cache_mb`` option, read
    now)."""
    return get_options().header_cache_mb * 2**20


def key_of(url: str) -> str:
    """The cache's key of ``url``: a hash of it without query string or user information
    (no secret, and not the URL itself)."""
    parts = urlsplit(url)
    public = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
    return hashlib.sha256(public.encode()).hexdigest()


class HeaderCache:
    """Thread-safe LRU of :class:`Header` by URL, bounded by bytes, backed by a directory."""

    def __init__(
        self, max_bytes: int = MEMORY_BYTES, idle_for: Callable[[], float] | None = None
    ) -> None:
        # seconds the engine has been idle: disk writes wait for IDLE_SECONDS of it
        self._idle_for = idle_for
        self._lock = threading.Lock()
        self._entries: BoundedCache[str, Header] = BoundedCache(
            max_bytes, getsizeof=lambda header: len(header.data)
        )
        # bytes this process wrote to disk since its last scan of the directory, or None
        # before its first write (which scans)
        self._unscanned: int | None = None
        # (folder, key, header or None for a removal, when queued), written in order by
        # one thread
        self._queue: queue.Queue[tuple[Path, str, Header | None, float]] = queue.Queue(
            PENDING_WRITES
        )
        self._writer: threading.Thread | None = None
        self._flushing = 0  # flush() calls waiting: the writer no longer waits for idle
        self._wake = threading.Event()  # set while one does
        # keys dropped whose removal from disk is still pending: not to be loaded again
        self._dropped: set[str] = set()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # a lock held by another thread at the fork would stay held in the child; the
        # parent's writer thread and its queue are not the child's
        self._lock = threading.Lock()
        self._queue = queue.Queue(PENDING_WRITES)
        self._writer = None
        self._flushing = 0
        self._wake = threading.Event()
        self._unscanned = None

    def get(self, url: str) -> tuple[Header | None, bool]:
        """The header of ``url`` and whether it came from disk (so is not yet validated)."""
        key = key_of(url)
        with self._lock:
            header = self._entries.get(key)
            if header is not None:
                return header, False
        header = self._load(key)
        return header, header is not None

    def put(self, url: str, header: Header, *, persist: bool = True) -> None:
        """Remember ``header`` in memory (and on disk, in the background, unless
        ``persist`` is False or the header has no validator: from disk it could not be
        told from another file of the same size)."""
        key = key_of(url)
        self._remember(key, header)
        if not header.has_validator:
            logger.debug("%s has no ETag nor Last-Modified: kept in memory only", key)
        elif persist and len(header.data) <= MAX_ENTRY_BYTES - MAX_META_BYTES:
            folder = cache_dir()
            if folder is not None:
                self._enqueue(folder, key, header)

    def seed(self, entries: dict[str, Header]) -> int:
        """Keep headers fetched by another process in memory, by key (:func:`key_of` of
        their URL), where this process has none; returns how many were new. They count as
        cached headers (``fetched`` 0.0): a file that does not decode with one is read
        again on a header fetched for it. Nothing goes to disk."""
        added = 0
        with self._lock:
            for key, header in entries.items():
                if key not in self._entries and key not in self._dropped:
                    self._entries.put(key, replace(header, fetched=0.0))
                    added += 1
        return added

    def validated(self, url: str, header: Header) -> None:
        """Keep a disk entry in memory once a pixel response confirmed it."""
        self._remember(key_of(url), header)

    def drop(self, url: str) -> None:
        """Forget ``url`` in memory and on disk."""
        key = key_of(url)
        with self._lock:
            self._entries.pop(key, None)
        folder = cache_dir()
        if folder is not None:  # removed after any write of it still pending
            with self._lock:
                self._dropped.add(key)
            self._enqueue(folder, key, None)

    def flush(self, timeout: float | None = None) -> bool:
        """Write the pending entries now, even while the engine reads, and wait until
        they are done (at most ``timeout`` seconds); returns whether they are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._wake.set()
        try:
            with self._queue.all_tasks_done:
                while self._queue.unfinished_tasks:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._queue.all_tasks_done.wait(left)
            return True
        finally:
            with self._lock:
                self._flushing -= 1
                if not self._flushing:
                    self._wake.clear()

    def clear_memory(self) -> None:
        """Forget every in-memory entry (the disk stays: it is validated before use)."""
        with self._lock:
            self._entries.clear()

    def _remember(self, key: str, header: Header) -> None:
        with self._lock:
            self._entries.put(key, header)

    def _load(self, key: str) -> Header | None:
        folder = cache_dir()
        if folder is None or key in self._dropped:
            return None
        path = folder / key[:2] / key
        try:
            blob = header_files.read(path)
            if blob is None:
                return None
            header = Header(*header_files.decode(blob))
        except Exception as err:  # crafted content: RecursionError, MemoryError... too
            logger.debug("ignoring a broken header cache entry %s: %r", key, err)
            return None
        header_files.touch(path)  # a use: the scans remove the least recently used first
        return header

    def _enqueue(self, folder: Path, key: str, header: Header | None) -> None:
        with self._lock:
            if self._writer is None:  # the first write of this process (or of a fork)
                self._writer = threading.Thread(
                    target=self._write_forever,
                    args=(self._queue,),
                    name="terrascope-header-cache",
                    daemon=True,
                )
                self._writer.start()
            pending = self._queue
        try:
            pending.put_nowait((folder, key, header, time.monotonic()))
        except queue.Full:
            if header is not None:
                logger.debug("header cache writes are behind: %s kept in memory only", key)
            else:  # a removal must happen: do it now
                self._remove(folder, key)

    def _write_forever(self, pending: queue.Queue[tuple[Path, str, Header | None, float]]) -> None:
        while True:
            folder, key, header, queued = pending.get()
            try:
                self._wait_for_idle(queued)
                if header is None:
                    self._remove(folder, key)
                else:
                    self._store(folder, key, header)
            except Exception:  # a writer that dies would leave flush() waiting
                logger.exception("could not persist a COG header in %s", folder)
            finally:
                pending.task_done()

    def _wait_for_idle(self, queued: float) -> None:
        if self._idle_for is None:
            return
        # a write waits for the read engine to be idle at most this long; an older one is
        # written while the engine reads, so that a process that never stops reading
        # still persists, and the other workers of a cluster on the same machine (sharing
        # the directory) find the headers this one fetched before they fetch them again
        defer = get_options().header_write_defer
        while not self._flushing and (waited := time.monotonic() - queued) < defer:
            quiet = self._idle_for()
            if quiet >= IDLE_SECONDS:
                return
            self._wake.wait(min(IDLE_SECONDS - quiet, defer - waited))

    def _remove(self, folder: Path, key: str) -> None:
        with contextlib.suppress(OSError):
            (folder / key[:2] / key).unlink()
        with self._lock:
            self._dropped.discard(key)

    def _store(self, folder: Path, key: str, header: Header) -> None:
        blob = header_files.encode(header.data, header.size, header.etag, header.last_modified)
        try:
            header_files.write(folder / key[:2] / key, blob)
        except OSError as err:
            logger.debug("could not persist a COG header in %s: %s", folder, err)
            return
        bound = disk_bytes()
        with self._lock:
            written = (self._unscanned or 0) + -(-len(blob) // 4096) * 4096
            scan = self._unscanned is None or written >= SCAN_FRACTION * bound
            self._unscanned = 0 if scan else written
        if scan:
            header_files.shrink(folder, bound)


#: The process's header cache (its disk writes wait while the read engine is busy).
headers = HeaderCache(idle_for=aio.idle_for)
atexit.register(headers.flush, EXIT_FLUSH_SECONDS)
