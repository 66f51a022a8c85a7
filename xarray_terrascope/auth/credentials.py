"""Credentials as the package holds them: a username and password that never show in a
``repr``, never pickle, and leave the process only inside a request to an allowed origin
(:class:`RequestAuth`, built where a request is).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from xarray_terrascope.exceptions import AuthenticationError

__all__ = ["Credentials", "RequestAuth", "basic_header"]


@dataclass(frozen=True)
class Credentials:
    """A Terrascope username and password, kept in memory.

    Immutable. ``repr`` and ``str`` never show the password, and instances refuse to be
    pickled, so they cannot slip into a dask graph or a file by accident.

    Parameters
    ----------
    username : str
        The Terrascope account name.
    password : str
        The account's password.

    Examples
    --------
    >>> creds = Credentials("alice", "s3cret")
    >>> creds
    Credentials(username='alice', password='***')
    """

    username: str
    password: str = field(repr=False)
    #: Opaque random id of this instance; what dask graphs carry instead of the secret.
    token: str = field(default_factory=lambda: secrets.token_hex(8), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise AuthenticationError("Credentials need a non-empty username (a str).")
        if ":" in self.username or not self.username.isprintable():
            # RFC 7617: the user-id of HTTP Basic cannot contain a colon or control characters.
            raise AuthenticationError(
                "A Terrascope username cannot contain ':' or control characters "
                f"(got {self.username!r}); check the login name."
            )
        if not isinstance(self.password, str) or not self.password:
            raise AuthenticationError(
                f"Credentials for user {self.username!r} need a non-empty password (a str)."
            )
        if any(ch in self.password for ch in "\r\n\0"):
            raise AuthenticationError(
                f"The password of user {self.username!r} contains a line break or NUL "
                "character, which HTTP cannot carry; check how it was read."
            )

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            "xarray_terrascope.Credentials cannot be pickled: secrets never travel in "
            "pickles or dask graphs. Pass credentials= to open_dataset (the graph then "
            "carries an opaque handle) and, on a cluster, log in on the client."
        )

    def basic_auth(self) -> tuple[bytes, bytes]:
        """Return ``(username, password)`` as UTF-8 bytes for ``requests``' ``auth=``.

        RFC 7617 names UTF-8 for HTTP Basic, and GDAL/curl send UTF-8: giving requests
        bytes stops it from encoding the pair as Latin-1 (where ``'€'`` fails and
        ``'ä'`` differs from what the reads send).
        """
        return (self.username.encode("utf-8"), self.password.encode("utf-8"))


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic, UTF-8 encoded as RFC 7617 says.

    Examples
    --------
    >>> basic_header("u", "p")
    'Basic dTpw'
    """
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


#: Key of the identities below: random per process, so they match nothing elsewhere.
_IDENTITY_KEY = secrets.token_bytes(16)


class RequestAuth:
    """What a request to an allowed origin carries, behind an opaque face.

    The read engine passes this around instead of an ``Authorization`` value, so that
    the value is in no cache key, no ``repr`` and no local variable that a traceback
    printed with its locals shows (``traceback`` with ``capture_locals=True``, Sentry,
    rich, ``pytest --showlocals``): it comes out only where a request is built.

    Attributes
    ----------
    identity : str
        The same for equal credentials in this process and different otherwise: a keyed
        hash that reveals nothing of them. Caches of what was read with these
        credentials key by it.
    username : str
        Shown by ``repr``.

    Examples
    --------
    >>> access = RequestAuth(Credentials("alice", "s3cret"))
    >>> access
    RequestAuth(user='alice')
    >>> access.identity == RequestAuth(Credentials("alice", "s3cret")).identity
    True
    """

    __slots__ = ("_value", "identity", "username")

    def __init__(self, credentials: Credentials) -> None:
        self._value = basic_header(credentials.username, credentials.password)
        self.identity = hashlib.blake2b(
            self._value.encode(), key=_IDENTITY_KEY, digest_size=12
        ).hexdigest()
        self.username = credentials.username

    def header(self) -> str:
        """The ``Authorization`` value (build it into a request; never keep it)."""
        return self._value

    def __repr__(self) -> str:
        return f"RequestAuth(user={self.username!r})"

    def __reduce__(self) -> Any:
        raise TypeError("RequestAuth holds a secret and cannot be pickled")
