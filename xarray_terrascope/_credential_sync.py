"""What the rest of the package does when the credentials change.

:mod:`xarray_terrascope.auth` knows nothing of readers or clusters: it announces
``"forget"`` and ``"publish"`` events, and this module (imported by the package's
``__init__``) subscribes the reactions:

* ``forget``: close the open readers and drop GDAL's ``/vsicurl/`` cache, so nothing
  read with old credentials answers a read made after a logout or with other ones;
* ``publish``: make the package a ``dask.distributed`` client preload (clients created
  later give their workers the credentials) and, when ``distributed`` is loaded,
  register the credentials plugin on the running client.

Reader and GDAL modules are only touched when they are already loaded: a process
that never read anything has nothing to forget.
"""

from __future__ import annotations

import sys

from . import auth

__all__ = ["forget_reads", "publish_to_cluster"]

_PRELOAD = "xarray_terrascope._distributed"


def forget_reads() -> None:
    """Close this process's open readers and clear GDAL's HTTP cache, if loaded."""
    read = sys.modules.get("xarray_terrascope.read")
    if read is not None:
        read.clear_reader_cache()
    if "rasterio" in sys.modules:
        from . import _gdal

        _gdal.clear_http_cache()


def publish_to_cluster() -> None:
    """Share the credential state with dask.distributed (now and for later clients)."""
    import dask.config

    preload = list(dask.config.get("distributed.client.preload", default=None) or [])
    if _PRELOAD not in preload:
        dask.config.set({"distributed.client.preload": [*preload, _PRELOAD]})
    if "distributed" not in sys.modules:
        return
    from . import _distributed

    _distributed.sync_plugin()


auth.subscribe("forget", forget_reads)
auth.subscribe("publish", publish_to_cluster)
