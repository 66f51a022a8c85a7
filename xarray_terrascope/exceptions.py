"""The errors of xarray-terrascope: one tree rooted at :class:`TerrascopeError`."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CollectionNotFoundError",
    "InvalidArgumentError",
    "NoItemsFoundError",
    "ProtectedCollectionError",
    "ReadError",
    "SearchError",
    "TerrascopeError",
]


class TerrascopeError(RuntimeError):
    """Base class of every error this package raises on purpose.

    Every URL in a message is shown without user information, query string or fragment
    (:func:`xarray_terrascope.config.redact`): presigned URLs carry their signatures
    there, and messages quote other libraries' texts (GDAL's, aiohttp's) that may hold
    such URLs.
    """

    def __init__(self, *args: object) -> None:
        from xarray_terrascope.config import redact

        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class AuthenticationError(TerrascopeError):
    """Credentials are missing, malformed, or rejected by Terrascope."""


class InvalidArgumentError(TerrascopeError, ValueError):
    """An argument is out of its allowed range; the message names it and what is allowed."""


class CollectionNotFoundError(InvalidArgumentError):
    """The collection is not in the catalogue; the message lists the available ones."""


class SearchError(TerrascopeError):
    """The STAC API answered with an error or could not be reached.

    Attributes
    ----------
    status_code : int | None
        The HTTP status of the failed answer, when there was one.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ProtectedCollectionError(SearchError, AuthenticationError):
    """The STAC API keeps the collection for accounts with a role: it answered 401 (an
    OIDC access token is needed) or 403 (the account lacks the role)."""


class NoItemsFoundError(TerrascopeError):
    """A search that must find something (opening a cube) found no items."""


class ReadError(TerrascopeError):
    """A raster could not be read for a reason other than authentication."""
