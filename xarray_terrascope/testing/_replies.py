"""The download server's replies, free of any web framework: text pages and files with
HTTP ranges (RFC 9110: one range -> 206, several -> ``multipart/byteranges``, none
satisfiable -> 416, no or unparsable ``Range`` -> 200)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from werkzeug.http import parse_range_header

__all__ = ["PHRASES", "Reply", "file_reply", "presigned_redirect", "text_reply"]

_CHUNK = 65536

#: Reason phrases of the statuses the server sends (as werkzeug words them).
PHRASES = {
    200: "OK",
    206: "Partial Content",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Reply:
    """What to answer: status, headers (in order, repeats allowed) and body chunks.

    ``drop`` asks to cut the connection (half-way through the body, if any); ``fault``
    names the failure injected, for the log.
    """

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes] = ()
    drop: bool = False
    fault: str | None = None


def text_reply(
    status: int,
    text: str,
    mimetype: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> Reply:
    """A short text (or HTML, JSON) page, with ``Content-Length``."""
    body = text.encode()
    headers = [("Content-Type", mimetype), ("Content-Length", str(len(body))), *(extra or [])]
    return Reply(status, headers, [body])


def file_reply(
    path: os.PathLike[str] | str, range_header: str | None, base: list[tuple[str, str]]
) -> Reply:
    """Answer a ``GET`` of a GeoTIFF, whole or the ranges asked for.

    Parameters
    ----------
    path : path-like
        The file.
    range_header : str or None
        The request's ``Range`` header.
    base : list of (str, str)
        Headers of every answer about this file (``Accept-Ranges``, ``ETag``...).
    """
    size = os.stat(path).st_size
    spec = parse_range_header(range_header)
    if spec is None or spec.units != "bytes":
        return Reply(
            200,
            [("Content-Type", "image/tiff"), ("Content-Length", str(size)), *base],
            _read(path, [(0, size)]),
        )
    spans = []
    for start, stop in spec.ranges:
        if start < 0:
            start, stop = max(0, size + start), size
        stop = size if stop is None else min(stop, size)
        if start < stop:
            spans.append((start, stop))
    if not spans:
        return Reply(416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0"), *base])
    if len(spans) == 1:
        ((start, stop),) = spans
        return Reply(
            206,
            [
                ("Content-Type", "image/tiff"),
                ("Content-Range", f"bytes {start}-{stop - 1}/{size}"),
                ("Content-Length", str(stop - start)),
                *base,
            ],
            _read(path, spans),
        )
    boundary = secrets.token_hex(12)
    parts = []
    with open(path, "rb") as handle:
        for start, stop in spans:
            handle.seek(start)
            parts.append(
                f"--{boundary}\r\nContent-Type: image/tiff\r\nContent-Range: "
                f"bytes {start}-{stop - 1}/{size}\r\n\r\n".encode()
            )
            parts.append(handle.read(stop - start))
            parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    body = b"".join(parts)
    return Reply(
        206,
        [
            ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
            ("Content-Length", str(len(body))),
            *base,
        ],
        [body],
    )


def _read(path: os.PathLike[str] | str, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for start, stop in spans:
            handle.seek(start)
            left = stop - start
            while left > 0:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


def presigned_redirect(rel: str, root: str) -> Reply:
    """302 to ``rel`` under the object store ``root``, with the query string of an S3
    presigned URL (``X-Amz-*``)."""
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=SANDBOX%2F{now[:8]}%2Feu-west-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date={now}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={secrets.token_hex(32)}"
    )
    return text_reply(302, "Found", extra=[("Location", f"{root}{rel}?{query}")])
