"""One request's way through the sandbox's download server, the failures it injects and
the checks of its switches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.sansio.request import Request

__all__ = ["Dropped", "Exchange", "Fault", "check_switch"]


class Dropped(Exception):
    """Raised by :meth:`~.download.DownloadApp.body` where the server must cut the
    connection."""


@dataclass
class Fault:
    """A failure to inject: ``kind`` (``"503"`` or ``"drop"``) for the next
    ``remaining`` requests whose path contains ``path_contains`` (any when None)."""

    kind: str
    remaining: int
    path_contains: str | None


@dataclass
class Exchange:
    """One request on its way through :class:`~.download.DownloadApp` (see
    :meth:`~.download.DownloadApp.arrive`).

    Attributes
    ----------
    request : werkzeug.sansio.request.Request
        The request line and headers.
    form : Mapping
        The decoded form body of a POST (the token endpoint reads it).
    started : float
        Arrival, seconds since the epoch.
    status, sent, fault
        For the log: status sent (0 when dropped before any response), body bytes
        sent, injected failure.
    """

    request: Request
    form: Mapping[str, str]
    started: float
    counted: bool = False
    user: str | None = None
    scheme: str | None = None
    status: int = 0
    sent: int = 0
    fault: str | None = None
    done: bool = False


def check_switch(name: str, value: Any) -> Any:
    """A switch of the download server checked and converted (``ValueError`` when out
    of range)."""
    if name in ("fault_rate", "drop_rate"):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        return float(value)
    if name == "max_concurrent":
        if value is not None and int(value) < 1:
            raise ValueError(f"max_concurrent must be None or >= 1, got {value!r}")
        return None if value is None else int(value)
    if name == "max_rate":
        if value is not None and not float(value) > 0:
            raise ValueError(f"max_rate must be None or > 0, got {value!r}")
        return None if value is None else float(value)
    if name == "redirect_to":
        if value is not None and not str(value).endswith("/"):
            raise ValueError(f"redirect_to must be None or a URL ending with '/': {value!r}")
        return None if value is None else str(value)
    if name in ("latency", "token_lifetime", "device_interval"):
        if float(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        return float(value)
    return bool(value)
