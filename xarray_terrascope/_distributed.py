"""Credentials for ``dask.distributed`` workers, outside the task graph.

Task graphs carry only opaque handles (see :mod:`xarray_terrascope.auth`). The
credentials themselves reach the workers once, in :class:`CredentialsPlugin`, a worker
plugin registered on the client's scheduler under a fixed name:

* by :func:`sync_plugin`, called on ``login()``, ``logout()`` and when a cube is opened
  with explicit ``credentials=``, for the default client of this process;
* by :func:`dask_setup`, this module being a client *preload* (``login()`` adds it to
  ``distributed.client.preload``), for clients created later.

Registering again under the same name replaces the plugin on every worker, so
``logout()`` and new credentials reach computations that start afterwards. The
scheduler keeps the plugin to set up workers that join later: on a real cluster,
enable TLS (``distributed.comm.require-encryption``) so it does not cross the network
in clear.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import WorkerPlugin
from distributed.client import Client, default_client

from . import auth

__all__ = ["PLUGIN_NAME", "CredentialsPlugin", "dask_setup", "sync_plugin"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "xarray-terrascope-credentials"


class CredentialsPlugin(WorkerPlugin):
    """Install the client's Terrascope credentials in each worker process."""

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self) -> None:
        default, handles = auth._snapshot()
        self._default = (default.username, default.password, default.token) if default else None
        self._handles = {k: (c.username, c.password, c.token) for k, c in handles.items()}

    def __repr__(self) -> str:
        user = self._default[0] if self._default else None
        return f"CredentialsPlugin(default_user={user!r}, handles={len(self._handles)})"

    def setup(self, worker: Any) -> None:
        """Replace the worker process's credentials with the client's."""
        default = auth.Credentials(*self._default) if self._default else None
        handles = {k: auth.Credentials(*v) for k, v in self._handles.items()}
        auth._install(default, handles)  # announces "forget": old readers are dropped
        logger.debug("Installed Terrascope credentials (%d handle(s)) on a worker", len(handles))

    def teardown(self, worker: Any) -> None:
        """Forget the credentials when the plugin is removed (or replaced) or the worker closes."""
        auth._install(None, {})


def _client() -> Client | None:
    try:
        return default_client()
    except ValueError:
        return None


def sync_plugin() -> None:
    """Register the current credentials on this process's default client, if there is one."""
    client = _client()
    if client is None or client.status not in ("running", "newly-created"):
        return
    if client.asynchronous:
        logger.warning(
            "Asynchronous dask client: call `await client.register_plugin("
            "xarray_terrascope._distributed.CredentialsPlugin())` after login()"
        )
        return
    client.register_plugin(CredentialsPlugin(), name=PLUGIN_NAME)


async def dask_setup(client: Client) -> None:
    """Client preload hook: give a new client's workers this process's credentials."""
    await client._register_worker_plugin(CredentialsPlugin(), PLUGIN_NAME, False)
