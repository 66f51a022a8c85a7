"""A thread-safe log of the requests a sandbox server answered."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["RequestLog", "RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One answered request. Never holds a password, token or ``Authorization`` value.

    Attributes
    ----------
    time : float
        Arrival, seconds since the epoch.
    method, path : str
        HTTP method and path (without the query string).
    range : str or None
        The ``Range`` header as sent.
    status : int
        HTTP status sent; 0 when the connection was dropped before any response.
    bytes : int
        Body bytes sent (fewer than announced for a dropped response).
    has_credentials : bool
        Whether the request carried an ``Authorization`` header.
    user : str or None
        The user the credentials authenticated (None when absent or rejected).
    auth_scheme : str or None
        ``"basic"``, ``"bearer"`` (or another scheme, lower case) when credentials came.
    user_agent : str or None
        The ``User-Agent`` header.
    duration : float
        Seconds from arrival to the end of the response.
    fault : str or None
        ``"503"``, ``"drop"`` or ``"429"`` when the server injected a failure.
    """

    time: float
    method: str
    path: str
    range: str | None
    status: int
    bytes: int
    has_credentials: bool
    user: str | None
    auth_scheme: str | None
    user_agent: str | None
    duration: float = 0.0
    fault: str | None = None


class RequestLog:
    """Records of answered requests, safe to append to from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        """Add a record."""
        with self._lock:
            self._records.append(record)

    def records(self, path_contains: str | None = None) -> list[RequestRecord]:
        """Return a copy of the records, in completion order, optionally filtered by path."""
        with self._lock:
            records = list(self._records)
        if path_contains is None:
            return records
        return [r for r in records if path_contains in r.path]

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def total_bytes(self, path_contains: str | None = None) -> int:
        """Return the body bytes sent, optionally for paths containing ``path_contains``."""
        return sum(r.bytes for r in self.records(path_contains))

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} records)"
