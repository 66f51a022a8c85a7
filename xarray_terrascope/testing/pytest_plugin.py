"""Pytest fixtures that run the Terrascope sandbox (registered as a ``pytest11`` plugin).

``terrascope_sandbox``
    One :class:`~xarray_terrascope.testing.Sandbox` per test session (STAC API and
    download server on loopback), stopped when the session ends.
``terrascope_env``
    Function scoped: points the ``TERRASCOPE_*`` environment variables at the
    session's sandbox (with ``monkeypatch``, so they are restored afterwards), sends
    ``NETRC`` to a file that does not exist, resets the download server's switches
    and clears its request log, then yields the sandbox.

The sandbox modules are imported inside the fixtures, so merely loading this
plugin (which pytest does for every session once the package is installed) costs
nothing and needs none of the sandbox's optional dependencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import Sandbox

__all__ = ["terrascope_env", "terrascope_sandbox"]


@pytest.fixture(scope="session")
def terrascope_sandbox() -> Iterator[Sandbox]:
    """Start one sandbox for the whole test session and stop it at the end.

    Yields
    ------
    Sandbox
        Running; its COG cache is a temporary directory removed on teardown.
    """
    from .server import Sandbox

    sandbox = Sandbox(seed=0).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def terrascope_env(
    terrascope_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Sandbox]:
    """Point the ``TERRASCOPE_*`` variables at the session sandbox for one test.

    ``NETRC`` is set to a path that does not exist, so a developer's real
    ``~/.netrc`` can never leak into a test, and ``TERRASCOPE_CACHE_DIR`` to the test's
    temporary directory, so persisted COG headers stay out of the user's cache. The
    download server's switches (latency, faults, rate limit, bearer mode...) are reset
    to the values the sandbox was created with, and its request log is cleared.

    Yields
    ------
    Sandbox
        The session's sandbox.
    """
    terrascope_sandbox.reset()
    for name, value in terrascope_sandbox.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path / "terrascope-cache"))
    yield terrascope_sandbox
