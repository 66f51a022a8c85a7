"""The errors of xarray-terrascope: one tree rooted at :class:`TerrascopeError`; its
warnings: one tree rooted at :class:`TerrascopeWarning`."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BatchOutputError",
    "BatchWorkerError",
    "CollectionNotFoundError",
    "CredentialStoreError",
    "GeometriesOutsideWarning",
    "InvalidArgumentError",
    "NoItemsFoundError",
    "ProtectedCollectionError",
    "ReadError",
    "SearchError",
    "TerrascopeError",
    "TerrascopeWarning",
]


class TerrascopeError(RuntimeError):
    """Base class of every error this package raises on purpose.

    Every URL in a message is shown without user information, query string or fragment
    (:func:`xarray_terrascope.config.redact`): presigned URLs carry their signatures
    there, and messages quote other libraries' texts (GDAL's, aiohttp's) that may hold
    such URLs.

    Parameters
    ----------
    *args : object
        The message (text arguments have their URLs redacted).
    status_code : int, optional
        The HTTP status of the failed answer behind the error, when there was one.

    Attributes
    ----------
    status_code : int | None
        The HTTP status of the failed answer, or None (no answer, or no HTTP involved).

    Examples
    --------
    >>> err = TerrascopeError("https://h.example/a.tif?sig=abc failed", status_code=503)
    >>> str(err), err.status_code
    ('https://h.example/a.tif failed', 503)
    >>> TerrascopeError("no request").status_code is None
    True
    """

    status_code: int | None

    def __init__(self, *args: object, status_code: int | None = None) -> None:
        from xarray_terrascope.config import redact

        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))
        self.status_code = status_code


class AuthenticationError(TerrascopeError):
    """Credentials are missing, malformed, or rejected by Terrascope."""


class CredentialStoreError(AuthenticationError):
    """The refresh-token store of ``login(method="oidc", store=True)`` is refused: others
    may read it, another user owns it, or it is not a store."""


class InvalidArgumentError(TerrascopeError, ValueError):
    """An argument is out of its allowed range; the message names it and what is allowed."""


class CollectionNotFoundError(InvalidArgumentError):
    """The collection is not in the catalogue; the message lists the available ones."""


class SearchError(TerrascopeError):
    """The STAC API answered with an error (its status in ``status_code``) or could not
    be reached (``status_code`` None)."""


class ProtectedCollectionError(SearchError, AuthenticationError):
    """The STAC API keeps the collection for accounts with a role: it answered 401 (an
    OIDC access token is needed) or 403 (the account lacks the role)."""


class NoItemsFoundError(TerrascopeError):
    """A search that must find something (opening a cube) found no items."""


class ReadError(TerrascopeError):
    """A raster could not be read for a reason other than authentication (the HTTP
    status, when there was one, in ``status_code``)."""


class BatchOutputError(InvalidArgumentError):
    """A batch's output folder cannot take this run: it holds another run's partitions
    (other arguments, or files without a manifest). ``argument`` names the argument
    that differs (None when the folder is foreign); the message says how to proceed."""

    argument: str | None

    def __init__(self, *args: object, argument: str | None = None) -> None:
        super().__init__(*args)
        self.argument = argument


class BatchWorkerError(TerrascopeError):
    """A batch run stopped because a partition could not be computed: the workers that
    computed it died more often than dask allows (``distributed.scheduler.allowed-failures``,
    distributed's ``KilledWorker``, the cause). The partitions written stay; the message
    names the partition and how to resume."""


class TerrascopeWarning(UserWarning):
    """Base class of the warnings this package gives (each also logged)."""


class GeometriesOutsideWarning(TerrascopeWarning):
    """Some geometries given to ``zonal_stats`` do not intersect the cube: their
    statistics are NaN (``count`` 0) for every date."""
