"""Credentials and where they may go: held in memory (:mod:`.credentials`), the process's
credential state and its handles (:mod:`.state`), logging in (:mod:`.signin`; OpenID
Connect through :mod:`.oidc`, its tokens kept fresh by :mod:`.tokens`, optionally stored
by :mod:`.store`), which
origins may receive them and the GDAL options of a read (:mod:`.scope`), and how they
reach a ``dask.distributed`` cluster that computes Terrascope reads (:mod:`.cluster`,
:mod:`.plugin`, the only module that imports ``distributed``).

Credentials flow beside the data, never inside it: stages that read take an opaque
handle from the plan and resolve it here at read time.

May import: :mod:`xarray_terrascope.config`, :mod:`xarray_terrascope.exceptions` and
:mod:`xarray_terrascope.http_policy` only; the stages that hold state tied to credentials
subscribe to its events instead of being called from here.
"""

from xarray_terrascope.auth import store
from xarray_terrascope.auth.credentials import Credentials, RequestAuth, basic_header
from xarray_terrascope.auth.scope import (
    BASE_GDAL_OPTIONS,
    gdal_options,
    reader_identity,
    sends_credentials,
)
from xarray_terrascope.auth.signin import login, logout, validate_credentials
from xarray_terrascope.auth.state import (
    DEFAULT_HANDLE,
    AnyCredentials,
    credentials_handle,
    current_credentials,
    resolve,
    subscribe,
)
from xarray_terrascope.auth.tokens import TokenCredentials

__all__ = [
    "BASE_GDAL_OPTIONS",
    "DEFAULT_HANDLE",
    "AnyCredentials",
    "Credentials",
    "RequestAuth",
    "TokenCredentials",
    "basic_header",
    "credentials_handle",
    "current_credentials",
    "gdal_options",
    "login",
    "logout",
    "reader_identity",
    "resolve",
    "sends_credentials",
    "store",
    "subscribe",
    "validate_credentials",
]
