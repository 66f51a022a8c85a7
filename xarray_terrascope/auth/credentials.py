"""Credentials as the package holds them: a username and password that never show in a
``repr``, never pickle, and leave the process only inside a request to an allowed origin
(:class:`RequestAuth`, built where a request is).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xarray_terrascope.exceptions import AuthenticationError

if TYPE_CHECKING:
    from xarray_terrascope.auth.tokens import TokenCredentials

__all__ = ["Credentials", "RequestAuth", "basic_header", "logged_out", "logouts"]

#: How many times this process logged out: a :class:`RequestAuth` made before the last
#: logout gives no ``Authorization`` any more (the requests of reads under way then).
_logouts = 0


def logouts() -> int:
    """How many times this process logged out."""
    return _logouts


def logged_out() -> None:
    """Mark a logout: every :class:`RequestAuth` made before it refuses to give its
    header from now on (called by :func:`xarray_terrascope.logout`)."""
    global _logouts
    _logouts += 1


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
    """What a request to an allowed origin carries, behind an opaque face: HTTP Basic
    for :class:`Credentials`, a Bearer access token (refreshed when it is about to
    expire) for a :class:`~xarray_terrascope.auth.tokens.TokenCredentials`; never both.

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

    __slots__ = ("_holder", "_logouts", "_value", "identity", "username")

    def __init__(self, credentials: Credentials | TokenCredentials) -> None:
        self._logouts = _logouts
        if isinstance(credentials, Credentials):
            self._holder = None
            self._value = basic_header(credentials.username, credentials.password)
            keyed = self._value
        else:  # an OpenID Connect login: the same identity across refreshes
            self._holder = credentials.holder
            self._value = ""
            keyed = f"oidc:{credentials.token}"
        self.identity = hashlib.blake2b(
            keyed.encode(), key=_IDENTITY_KEY, digest_size=12
        ).hexdigest()
        self.username = credentials.username

    @property
    def current(self) -> bool:
        """False once the process has logged out since this was made."""
        return self._logouts == _logouts

    def header(self) -> str:
        """The ``Authorization`` value (build it into a request; never keep it). For a
        token login, the access token is refreshed first when it is about to expire.

        Raises
        ------
        AuthenticationError
            When the process logged out after this was made: the reads under way then
            send nothing more with the credentials of before.
        """
        if self._logouts != _logouts:
            raise AuthenticationError(
                f"Logged out during this read: the credentials of {self.username!r} are "
                "no longer sent. Log in again (xarray_terrascope.login()) and read again."
            )
        if self._holder is not None:
            return f"Bearer {self._holder.access_token()}"
        return self._value

    @property
    def renewable(self) -> bool:
        """Whether a refused request may be retried with a refreshed token."""
        return self._holder is not None

    @property
    def generation(self) -> int:
        """Which access token :meth:`header` gives now (0 for Basic)."""
        return self._holder.generation if self._holder is not None else 0

    def needs_refresh(self) -> bool:
        """Whether :meth:`header` would refresh the access token first."""
        return self._holder is not None and self._holder.needs_refresh()

    def refresh_if_needed(self) -> None:
        """Refresh the access token now if it is about to expire (blocking: call it in
        a worker thread, not on an event loop)."""
        if self._holder is not None:
            self._holder.refresh_if_needed()

    def renew(self, generation: int) -> None:
        """The access token of ``generation`` was refused: refresh it (once, however
        many requests were refused with it). Blocking, as :meth:`refresh_if_needed`."""
        if self._holder is not None:
            self._holder.renew(generation)

    def __repr__(self) -> str:
        return f"RequestAuth(user={self.username!r})"

    def __reduce__(self) -> Any:
        raise TypeError("RequestAuth holds a secret and cannot be pickled")
