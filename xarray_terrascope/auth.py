"""Credentials, login/logout, and GDAL options scoped to Terrascope's download hosts.

Credentials live in this process's memory only. They are never written to
``os.environ``, files, logs or reprs, and they never travel inside a dask graph:
the graph carries an opaque *handle* (a short random string) that each process
resolves at read time with :func:`resolve`. On a ``dask.distributed`` cluster the
handles reach the workers through a worker plugin (see ``_distributed.py``).
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import sys
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from . import config
from .exceptions import AuthenticationError, TerrascopeError

__all__ = [
    "DEFAULT_HANDLE",
    "Credentials",
    "credentials_handle",
    "current_credentials",
    "gdal_options",
    "login",
    "logout",
    "resolve",
]

logger = logging.getLogger(__name__)

#: The handle that means "this process's default credentials, whatever they are at read time".
DEFAULT_HANDLE = "default"

#: GDAL options for every read, with or without credentials: no sidecar-file probing
#: (saves ~10 requests per file) and retries with backoff on 429/5xx answers.
BASE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
}

_VALIDATE_TIMEOUT = 30.0


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
        if not isinstance(self.password, str) or not self.password:
            raise AuthenticationError(
                f"Credentials for user {self.username!r} need a non-empty password (a str)."
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

    def basic_auth(self) -> tuple[str, str]:
        """Return ``(username, password)`` for ``requests``' ``auth=``."""
        return (self.username, self.password)


# --- process state -------------------------------------------------------------------

_lock = threading.RLock()
_default: Credentials | None = None
_registry: dict[str, Credentials] = {}


def current_credentials() -> Credentials | None:
    """Return the process default set by :func:`login`, or None."""
    return _default


def _set_default(creds: Credentials | None) -> None:
    global _default
    with _lock:
        previous, _default = _default, creds
    if previous is not None and previous != creds:
        _forget_reads()
    _sync_cluster()


def _forget_reads() -> None:
    """Close open readers and clear GDAL's HTTP cache: nothing read with old credentials
    may answer a read made after a logout or with other credentials."""
    from . import _gdal
    from .read import clear_reader_cache

    clear_reader_cache()
    _gdal.clear_http_cache()


def credentials_handle(credentials: Credentials | None) -> str:
    """Return the opaque handle that stands for ``credentials`` in a dask graph.

    ``None`` gives :data:`DEFAULT_HANDLE`, resolved at read time to the process default
    (so :func:`logout` and a new :func:`login` are honoured by later computations).
    Explicit credentials are registered in this process under their random token.
    """
    if credentials is None:
        return DEFAULT_HANDLE
    if not isinstance(credentials, Credentials):
        raise TypeError(
            "credentials must be an xarray_terrascope.Credentials, "
            f"got {type(credentials).__name__}"
        )
    with _lock:
        known = _registry.get(credentials.token)
        _registry[credentials.token] = credentials
    if known is None:
        _sync_cluster()
    return credentials.token


def _install(default: Credentials | None, handles: dict[str, Credentials]) -> None:
    """Replace this process's credential state (used by the distributed worker plugin)."""
    global _default
    with _lock:
        _default = default
        _registry.clear()
        _registry.update(handles)


def _snapshot() -> tuple[Credentials | None, dict[str, Credentials]]:
    with _lock:
        return _default, dict(_registry)


def _from_environment() -> Credentials | None:
    user = os.environ.get(config.ENV_USERNAME)
    password = os.environ.get(config.ENV_PASSWORD)
    if user and password:
        return Credentials(user, password)
    return None


def resolve(handle: str) -> Credentials:
    """Return the credentials a handle stands for in this process.

    The default handle resolves to the process default, else to
    ``TERRASCOPE_USERNAME``/``TERRASCOPE_PASSWORD`` in this process's environment
    (how workers that were not reached by the client's login can be configured).

    Raises
    ------
    AuthenticationError
        When this process has no credentials for the handle; the message says how to fix it.
    """
    with _lock:
        creds = _default if handle == DEFAULT_HANDLE else _registry.get(handle)
    if creds is None and handle == DEFAULT_HANDLE:
        creds = _from_environment()
    if creds is None:
        where = "this process" if "distributed.worker" not in sys.modules else "this worker"
        raise AuthenticationError(
            f"No Terrascope credentials in {where} (handle {handle!r}). Call "
            "xarray_terrascope.login() on the client (with the dask.distributed Client "
            "already created, or before creating it), or set TERRASCOPE_USERNAME and "
            "TERRASCOPE_PASSWORD in the environment of the processes that read the data."
        )
    return creds


_PRELOAD = "xarray_terrascope._distributed"


def _sync_cluster() -> None:
    """Push the credential state to a running dask.distributed cluster, if any.

    Also makes this package a client preload, so clients created later give their
    workers the credentials too.
    """
    import dask.config

    preload = list(dask.config.get("distributed.client.preload", default=None) or [])
    if _PRELOAD not in preload:
        dask.config.set({"distributed.client.preload": [*preload, _PRELOAD]})
    if "distributed" not in sys.modules:
        return
    from . import _distributed

    _distributed.sync_plugin()


# --- login -----------------------------------------------------------------------------


def _netrc_path() -> str:
    return os.environ.get(config.ENV_NETRC) or os.path.join(os.path.expanduser("~"), ".netrc")


def _from_netrc() -> Credentials | None:
    path = _netrc_path()
    if not os.path.exists(path):
        return None
    host = urlsplit(config.download_url()).hostname or ""
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        # The parse error text can quote the file's lines: name the file, not its content.
        raise AuthenticationError(
            f"Could not read the netrc file {path!r} ({type(err).__name__}); fix its syntax "
            f"(`machine {host} login USER password PASS`) or pass username/password."
        ) from None
    if entry is None:
        return None
    login_name, _account, password = entry
    if not login_name or not password:
        return None
    return Credentials(login_name, password)


def _resolve_login(username: str | None, password: str | None) -> tuple[Credentials, str]:
    if username is not None or password is not None:
        if not username or not password:
            raise AuthenticationError(
                "Give both username and password to login(), or neither (then "
                "TERRASCOPE_USERNAME/TERRASCOPE_PASSWORD or the netrc file are used)."
            )
        return Credentials(username, password), "arguments"
    env = _from_environment()
    if env is not None:
        return env, "environment"
    from_netrc = _from_netrc()
    if from_netrc is not None:
        return from_netrc, "netrc"
    host = urlsplit(config.download_url()).hostname
    raise AuthenticationError(
        "No Terrascope credentials found. Provide them in one of three ways:\n"
        "  1. login(username, password)\n"
        f"  2. the environment variables {config.ENV_USERNAME} and {config.ENV_PASSWORD}\n"
        f"  3. a netrc file ({_netrc_path()}, or the path in NETRC) with the line "
        f"`machine {host} login USER password PASS`"
    )


def _check_allowed(url: str) -> None:
    if not sends_credentials(url):
        raise TerrascopeError(
            f"Refusing to send credentials to {config.host_key(url)!r}: it is not in "
            f"TERRASCOPE_DOWNLOAD_HOSTS ({', '.join(sorted(config.download_hosts()))}). "
            "Add it there, or point TERRASCOPE_DOWNLOAD_URL at a download host."
        )


def validate_credentials(creds: Credentials) -> None:
    """Prove credentials with one request to ``TERRASCOPE_DOWNLOAD_URL``.

    Raises
    ------
    AuthenticationError
        On 401/403, or a redirect to the single-sign-on login page.
    TerrascopeError
        When the download service cannot be reached.
    """
    url = config.download_url()
    _check_allowed(url)
    try:
        response = requests.get(
            url, auth=creds.basic_auth(), allow_redirects=False, timeout=_VALIDATE_TIMEOUT
        )
    except requests.RequestException as err:
        raise TerrascopeError(
            f"Could not reach the Terrascope download service at {url} to check the "
            f"credentials of {creds.username!r} ({type(err).__name__}). Check the network "
            "or TERRASCOPE_DOWNLOAD_URL, or call login(..., validate=False)."
        ) from err
    status = response.status_code
    response.close()
    if status in (401, 403) or 300 <= status < 400:
        reason = (
            f"redirected to the login page ({response.headers.get('Location', '?').split('?')[0]})"
            if 300 <= status < 400
            else f"HTTP {status}"
        )
        raise AuthenticationError(
            f"Terrascope rejected the credentials of user {creds.username!r}: {reason}. "
            "Check the username and password (https://terrascope.be account)."
        )
    if status >= 400:
        raise TerrascopeError(
            f"The Terrascope download service answered HTTP {status} at {url} while checking "
            f"the credentials of {creds.username!r}; try again later or use validate=False."
        )


def login(
    username: str | None = None,
    password: str | None = None,
    *,
    validate: bool = True,
) -> Credentials:
    """Log in to Terrascope and keep the credentials as this process's default.

    Credentials come from the arguments, else ``TERRASCOPE_USERNAME`` and
    ``TERRASCOPE_PASSWORD``, else the netrc file (``NETRC`` or ``~/.netrc``, machine =
    the download host). Nothing is written to ``os.environ``. When a
    ``dask.distributed`` client is running, its workers receive the credentials
    through a worker plugin.

    Parameters
    ----------
    username, password : str, optional
        Both or neither.
    validate : bool, default True
        Prove the credentials with one request to ``TERRASCOPE_DOWNLOAD_URL``.

    Returns
    -------
    Credentials

    Raises
    ------
    AuthenticationError
        When no credentials are found, or Terrascope rejects them.

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> creds = xts.login()  # doctest: +SKIP
    >>> creds.username  # doctest: +SKIP
    'alice'
    """
    creds, source = _resolve_login(username, password)
    if validate:
        validate_credentials(creds)
    _set_default(creds)
    logger.info("Authenticated as %s (credentials from %s)", creds.username, source)
    return creds


def logout() -> None:
    """Forget the process default credentials (and, on a cluster, the workers' copy).

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> xts.logout()
    """
    previous = _default
    _set_default(None)
    if previous is not None:
        logger.info("Logged out %s", previous.username)


# --- GDAL ------------------------------------------------------------------------------


def sends_credentials(url: str) -> bool:
    """Whether ``url``'s host is in ``TERRASCOPE_DOWNLOAD_HOSTS`` (read now)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    hosts = config.download_hosts()
    return config.host_key(url) in hosts or (parts.hostname or "").lower() in hosts


def gdal_options(url: str, credentials: Credentials | None, *, allowed: bool | None = None) -> dict:
    """Return the GDAL configuration options for one read of ``url``.

    The base options (no directory listing, retries) always; HTTP Basic credentials only
    when ``url`` is on an allowed download host (``allowed``, else
    ``TERRASCOPE_DOWNLOAD_HOSTS`` read now) and ``credentials`` is given. Use the result
    in a ``rasterio.Env`` around the read, never in ``os.environ``.

    Examples
    --------
    >>> opts = gdal_options("https://example.com/a.tif", Credentials("u", "p"))
    >>> "GDAL_HTTP_USERPWD" in opts
    False
    """
    options = dict(BASE_GDAL_OPTIONS)
    if allowed is None:
        allowed = sends_credentials(url)
    if credentials is not None and allowed:
        options["GDAL_HTTP_AUTH"] = "BASIC"
        options["GDAL_HTTP_USERPWD"] = f"{credentials.username}:{credentials.password}"
    return options
