"""The files of the COG header cache: their format, reading them safely, keeping their
directory bounded (used by :mod:`xarray_terrascope.engine.header_cache`).

An entry file is :data:`MAGIC`, one line of JSON (``length`` of the header bytes, the
file's ``size``, its ``etag`` and its Last-Modified date, ``modified``, and the header
bytes' BLAKE2b digest, ``digest``) and the header bytes. An entry whose bytes do not
match their digest is not used: the TIFF parser, given damaged header bytes, may ask for
terabytes and abort the process, which no ``except`` catches. Reading one opens it
without following a symbolic link and without blocking (a FIFO), reads it only when it
is a regular file of at most :data:`MAX_ENTRY_BYTES`, and checks every value before use.
Writing goes through a temporary file (mode 0600) renamed into place; directories are
created mode 0700.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["MAGIC", "MAX_ENTRY_BYTES", "decode", "encode", "read", "shrink", "touch", "write"]

logger = logging.getLogger(__name__)

MAGIC = b"XTSHDR2\n"
#: Bytes of one entry file at most (headers are rarely over ``source.MAX_PREFETCH``);
#: larger files are neither written nor read.
MAX_ENTRY_BYTES = 4 * 2**20
#: Bytes of an entry's metadata line at most.
MAX_META_BYTES = 4096
#: Characters of an ETag or Last-Modified value at most.
MAX_VALIDATOR_CHARS = 1024
#: Seconds after which a temporary file of an interrupted write is removed by a scan.
STALE_TMP_SECONDS = 3600.0


def encode(data: bytes, size: int | None, etag: str | None, modified: str | None) -> bytes:
    """The content of the entry file of one header."""
    meta = {
        "length": len(data),
        "size": size,
        "etag": etag,
        "modified": modified,
        "digest": _digest(data),
    }
    return MAGIC + json.dumps(meta).encode() + b"\n" + data


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write(target: Path, blob: bytes) -> None:
    """Write ``blob`` to ``target`` atomically (a temporary file renamed into place);
    raises OSError."""
    private_dirs(target.parent, depth=3)  # headers/xx, headers and the cache's root
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def touch(path: Path) -> None:
    """Mark the entry at ``path`` used now (not following a symbolic link)."""
    if os.utime in os.supports_follow_symlinks:
        with contextlib.suppress(OSError):
            os.utime(path, follow_symlinks=False)


def private_dirs(path: Path, depth: int) -> None:
    """Create ``path`` and its missing parents: the ``depth`` innermost (the cache's own)
    mode 0700, any further ones (``~/.cache``) with the default mode, as ``mkdir -p``."""
    if path.is_dir():
        return
    if depth > 1:
        private_dirs(path.parent, depth - 1)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def usage(info: os.stat_result) -> int:
    """Bytes of disk a file takes (its blocks, or its size where larger or not told)."""
    return max(info.st_size, getattr(info, "st_blocks", 0) * 512)


def shrink(folder: Path, bound: int) -> None:
    """Remove the least recently used entries of ``folder`` (every process's) until they
    take at most ``bound`` bytes; and the temporary files of writes interrupted long ago."""
    found: list[tuple[float, int, str]] = []  # (last use, bytes, path)
    total, now = 0, time.time()
    try:
        shards = [d.path for d in os.scandir(folder) if d.is_dir(follow_symlinks=False)]
    except OSError as err:
        logger.debug("could not scan the header cache %s: %s", folder, err)
        return
    for shard in shards:
        try:
            with os.scandir(shard) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        continue
                    total += usage(info)
                    if entry.name.startswith(".tmp-"):
                        if now - info.st_mtime > STALE_TMP_SECONDS:
                            found.append((float("-inf"), usage(info), entry.path))
                        continue  # another process is writing it
                    found.append((info.st_mtime, usage(info), entry.path))
        except OSError:
            continue
    if total <= bound:
        return
    found.sort()
    removed = 0
    for _, size, path in found:
        if total <= bound:
            break
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:  # another process's scan was first
            pass
        except OSError as err:
            logger.debug("could not remove %s from the header cache: %s", path, err)
            continue
        total -= size
    logger.debug("header cache %s: removed %d entries, %d bytes left", folder, removed, total)


def read(path: Path) -> bytes | None:
    """The content of ``path`` if it is a regular file of at most :data:`MAX_ENTRY_BYTES`
    (a symbolic link is not followed, a FIFO or device not read), else None."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # absent (the usual case), a symbolic link, unreadable
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            logger.debug("ignoring %s in the header cache: not a small regular file", path)
            return None
        chunks, left = [], MAX_ENTRY_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks) if left > 0 else None  # None: it grew meanwhile
    finally:
        os.close(fd)


def decode(blob: bytes) -> tuple[bytes, int | None, str | None, str | None]:
    """The header bytes, file size, ETag and Last-Modified an entry file holds;
    ValueError when it is not well-formed."""
    if not blob.startswith(MAGIC):
        raise ValueError("bad magic")
    meta_end = blob.find(b"\n", len(MAGIC), len(MAGIC) + MAX_META_BYTES)
    if meta_end < 0:
        raise ValueError("no metadata line")
    meta = json.loads(blob[len(MAGIC) : meta_end], parse_constant=_no_constant)
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    data = blob[meta_end + 1 :]
    if _count(meta.get("length"), MAX_ENTRY_BYTES) != len(data):
        raise ValueError("truncated")
    if meta.get("digest") != _digest(data):
        raise ValueError("damaged: the header bytes do not match their digest")
    size = meta.get("size")
    if size is not None and _count(size, 2**62) < len(data):
        raise ValueError("file size below the header's")
    etag, modified = _validator(meta.get("etag")), _validator(meta.get("modified"))
    if not (etag or modified):
        raise ValueError("no ETag nor Last-Modified to validate it by")
    return data, size, etag, modified


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} in a header cache entry")


def _count(value: object, most: int) -> int:
    if type(value) is not int or not 0 <= value <= most:
        raise ValueError(f"{value!r:.40} is not a count")
    return value


def _validator(value: object) -> str | None:
    if value is None or (isinstance(value, str) and len(value) <= MAX_VALIDATOR_CHARS):
        return value or None
    raise ValueError(f"{value!r:.40} is not an ETag or date")
