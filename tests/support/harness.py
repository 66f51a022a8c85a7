"""What the harnesses of real servers (:mod:`tests.support.nginx`,
:mod:`tests.support.pgstac`) share: a free loopback port, and ``with`` over their
``start()`` and ``stop()``."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

__all__ = ["HOST", "Harness", "free_port"]

#: The only address the test servers listen on.
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on :data:`HOST` now (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Harness:
    """``with server:`` starts it and stops it, whatever happens inside."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
