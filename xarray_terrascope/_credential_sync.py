"""What the rest of the package does when the credentials change, and how they reach
a ``dask.distributed`` cluster.

:mod:`xarray_terrascope.auth` knows nothing of readers or clusters: it announces
``"forget"`` and ``"publish"`` events, and this module (imported by the package's
``__init__``) subscribes the reactions:

* ``forget``: close the open readers and drop GDAL's ``/vsicurl/`` cache, so nothing
  read with old credentials answers a read made after a logout or with other ones;
* ``publish`` (login, logout): when ``distributed`` is loaded, update the credentials
  on the clusters that received them before, and on no other.

A cluster receives credentials only when a graph with Terrascope reads is sent to it
(:func:`share_for_graph`, called while such a graph is pickled) or when
:func:`share_credentials` is called. Reader, GDAL and ``distributed`` modules are only
touched when they are already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from . import auth

if TYPE_CHECKING:  # distributed is optional
    from distributed import Client

__all__ = ["forget_reads", "publish_to_cluster", "share_credentials", "share_for_graph"]


def forget_reads() -> None:
    """Close this process's open readers and clear GDAL's HTTP cache, if loaded."""
    read = sys.modules.get("xarray_terrascope.read")
    if read is not None:
        read.clear_reader_cache()
    if "rasterio" in sys.modules:
        from . import _gdal

        _gdal.clear_http_cache()


def publish_to_cluster() -> None:
    """Give the clusters that received credentials before the current ones."""
    if "distributed" not in sys.modules:
        return
    from . import _distributed

    _distributed.republish()


def share_for_graph(handle: str) -> auth.Stamp | None:
    """While a graph with a read under ``handle`` is pickled: when a ``distributed``
    client is serializing it for its scheduler, have the credentials the client's graphs
    need sent there (scheduled, not waited for), and return the stamp of that
    credential state for the graph's reads to wait for; None otherwise."""
    if "distributed" not in sys.modules:
        return None
    from . import _distributed

    return _distributed.share_for_graph(handle)


def share_credentials(client: Client | None = None) -> Awaitable[None] | None:
    """Register the credentials of :func:`~xarray_terrascope.login` on a
    ``dask.distributed`` cluster now.

    A cluster receives them anyway when a graph with Terrascope reads is computed or
    persisted on it; call this for work that reads without such a graph (a task that
    opens a cube itself on a worker, a scattered lazy Dataset), or to have them on the
    workers before the first computation. The cluster also receives later logins, and
    :func:`~xarray_terrascope.logout` removes them from it. Whoever can connect to that
    scheduler can read them while they are registered (see the README).

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
        from . import _distributed
    except ImportError as err:
        raise ImportError(
            "share_credentials() needs dask.distributed: "
            "pip install 'xarray-terrascope[distributed]'"
        ) from err
    return _distributed.share_credentials(client)


auth.subscribe("forget", forget_reads)
auth.subscribe("publish", publish_to_cluster)
