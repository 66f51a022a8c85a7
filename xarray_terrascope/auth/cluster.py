"""How credentials reach a ``dask.distributed`` cluster, without importing
``distributed`` until a process uses it (:mod:`.plugin` does the work).

A cluster receives credentials only when a graph with Terrascope reads is sent to it
(:func:`share_for_graph`, called while such a graph is pickled) or when
:func:`share_credentials` is called. On ``login()`` and ``logout()`` (the ``"publish"``
event of :mod:`.state`, subscribed here) the clusters that received credentials before
get the new ones, and no other cluster gets anything.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from xarray_terrascope.auth import state

if TYPE_CHECKING:  # distributed is optional
    from distributed import Client

__all__ = ["publish_to_cluster", "share_credentials", "share_for_graph"]


def publish_to_cluster() -> None:
    """Give the clusters that received credentials before the current ones."""
    if "distributed" not in sys.modules:
        return
    from xarray_terrascope.auth import plugin

    plugin.republish()


def share_for_graph(handle: str) -> state.Stamp | None:
    """While a graph with a read under ``handle`` is pickled: when a ``distributed``
    client is serializing it for its scheduler, have the credentials the client's graphs
    need sent there (scheduled, not waited for), and return the stamp of that
    credential state for the graph's reads to wait for; None otherwise."""
    if "distributed" not in sys.modules:
        return None
    from xarray_terrascope.auth import plugin

    return plugin.share_for_graph(handle)


def share_credentials(client: Client | None = None) -> Awaitable[None] | None:
    """Register the credentials of :func:`~xarray_terrascope.login` on a
    ``dask.distributed`` cluster now.

    A cluster receives them anyway when a graph with Terrascope reads is computed or
    persisted on it; call this for work that reads without such a graph (a task that
    opens a cube itself on a worker, a scattered lazy Dataset), or to have them on the
    workers before the first computation. The cluster also receives later logins, and
    :func:`~xarray_terrascope.logout` removes them from it. Whoever can connect to that
    scheduler can read them while they are registered (see docs/user-guide/clusters.md).

    Parameters
    ----------
    client : distributed.Client, optional
        The client whose cluster receives the credentials; the default client when None.

    Returns
    -------
    Awaitable or None
        None once the scheduler and its workers have them; for an asynchronous client,
        an awaitable that does the registration (await it).

    Raises
    ------
    AuthenticationError
        When this process has not logged in.
    InvalidArgumentError
        When there is no client.
    TerrascopeError
        When the scheduler cannot be reached.

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> from distributed import Client  # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")  # doctest: +SKIP
    >>> xts.login()  # doctest: +SKIP
    >>> xts.share_credentials(client)  # doctest: +SKIP
    """
    try:
        from xarray_terrascope.auth import plugin
    except ImportError as err:
        raise ImportError(
            "share_credentials() needs dask.distributed: "
            "pip install 'xarray-terrascope[distributed]'"
        ) from err
    return plugin.share_credentials(client)


state.subscribe("publish", publish_to_cluster)
