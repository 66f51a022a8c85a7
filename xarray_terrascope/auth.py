"""Credentials, login/logout, and GDAL options scoped to Terrascope's download hosts.

Credentials live in this process's memory only. They are never written to
``os.environ``, files, logs or reprs, and they never travel inside a dask graph:
the graph carries an opaque *handle* (a short random string) that each process
resolves at read time with :func:`resolve`. On a ``dask.distributed`` cluster the
credentials a graph needs reach the workers through a worker plugin (see
``_distributed.py``), which installs them here with :func:`_install`.

This module sits low in the package: it imports neither the readers nor the
distributed plugin. Modules that hold state tied to credentials (open files, HTTP
caches, the cluster plugin) register callbacks with :func:`subscribe`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import netrc
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import config
from .exceptions import AuthenticationError, InvalidArgumentError, TerrascopeError

__all__ = [
    "DEFAULT_HANDLE",
    "Credentials",
    "RequestAuth",
    "basic_header",
    "credentials_handle",
    "current_credentials",
    "gdal_options",
    "login",
    "logout",
    "resolve",
    "sends_credentials",
    "subscribe",
]

logger = logging.getLogger(__name__)

#: The handle that means "this process's default credentials, whatever they are at read time".
DEFAULT_HANDLE = "default"

#: GDAL options for every read, with or without credentials: no sidecar-file probing
#: (saves ~10 requests per file), retries with backoff on 429/5xx answers, and nothing
#: that GDAL or curl would add to a request by themselves. Values set to "" override
#: what other code may have left in the environment or in GDAL's configuration (the
#: thread-local options of a read win over both).
BASE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    # GDAL remembers a 302 to an S3-presigned-looking URL and sends later range requests
    # straight there, GDAL_HTTP_USERPWD included: the password would leave the allowed
    # origin. Without this, curl follows each redirect itself and drops the credentials
    # when the host changes.
    "CPL_VSIL_CURL_USE_S3_REDIRECT": "NO",
    "CPL_VSIL_CURL_AUTHORIZATION_HEADER_ALLOWED_IF_REDIRECT": "NO",
    # curl reads ~/.netrc (or GDAL_HTTP_NETRC_FILE) itself and answers any host named
    # there with its password, whatever TERRASCOPE_DOWNLOAD_HOSTS says
    "GDAL_HTTP_NETRC": "NO",
    # extra headers and tokens left over by other code (a leafmap-style header file with
    # an "Authorization: Bearer ..." line, GDAL_HTTP_HEADERS, GDAL_HTTP_BEARER)
    "GDAL_HTTP_HEADERS": "",
    "GDAL_HTTP_HEADER_FILE": "",
    "GDAL_HTTP_BEARER": "",
    # curl's verbose mode prints every request header, Authorization included, to stderr
    "CPL_CURL_VERBOSE": "NO",
}

#: GDAL options of a read whose origin may not receive credentials. A GDAL_HTTP_USERPWD
#: left in the environment would otherwise be sent: an empty one overrides it, and
#: ANYSAFE (no Basic) keeps curl from sending even the empty pair ("Basic Og==") up
#: front; it answers an authentication challenge only, and then with nothing secret.
_NO_CREDENTIALS: dict[str, str] = {"GDAL_HTTP_AUTH": "ANYSAFE", "GDAL_HTTP_USERPWD": ""}

#: Cookie settings overridden when they are set anywhere GDAL looks (a cookie file from
#: another tool's single sign-on); left alone otherwise, since an empty GDAL_HTTP_COOKIE
#: sends an empty Cookie header and an empty cookie file turns curl's cookie engine on.
_COOKIE_OPTIONS = ("GDAL_HTTP_COOKIE", "GDAL_HTTP_COOKIEFILE", "GDAL_HTTP_COOKIEJAR")

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


# --- process state -------------------------------------------------------------------

_lock = threading.RLock()
#: Notified whenever a worker plugin installs credentials in this process.
_installed_changed = threading.Condition(_lock)
_default: Credentials | None = None
#: Explicit credentials by token, held weakly: each open cube holds its own
#: :class:`Credentials`, so an entry goes with the last cube that uses it (and on logout()).
_registry: weakref.WeakValueDictionary[str, Credentials] = weakref.WeakValueDictionary()


def _new_lock_after_fork() -> None:
    global _lock, _installed_changed
    _lock = threading.RLock()  # another thread may have held it at the fork
    _installed_changed = threading.Condition(_lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)

#: ``(sender, generation)`` of a credential state shared with a cluster: ``sender`` is a
#: random id of the client process, ``generation`` grows with each state it shares.
Stamp = tuple[str, int]
#: What a worker plugin installed in this process (held strongly: the plugin is the only
#: holder), and its stamp; kept apart from the process's own login.
_installed_default: Credentials | None = None
_installed: dict[str, Credentials] = {}
_installed_stamp: Stamp | None = None
#: The stamp the newest graph this process received asks for (see :func:`_expect`).
_expected: Stamp | None = None
#: Seconds a dask worker waits for credentials that are on their way (see :func:`resolve`).
INSTALL_WAIT = 30.0

#: ``"forget"``: credentials changed, drop whatever was read or opened with the old ones;
#: ``"publish"``: the process's credential state changed, share it (e.g. with a cluster).
Event = Literal["forget", "publish"]
_subscribers: dict[str, list[Callable[[], None]]] = {"forget": [], "publish": []}


def subscribe(event: Event, callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever ``event`` happens (once per callback, however often
    it is subscribed).

    ``"forget"`` follows a logout or a change of the default credentials, and the
    installation of a worker's credentials; ``"publish"`` follows a login or a logout.
    """
    if event not in _subscribers:
        raise InvalidArgumentError(f"event must be 'forget' or 'publish', got {event!r}")
    with _lock:
        if callback not in _subscribers[event]:
            _subscribers[event].append(callback)


def _notify(event: Event) -> None:
    with _lock:
        callbacks = list(_subscribers[event])
    for callback in callbacks:
        callback()


def current_credentials() -> Credentials | None:
    """Return the process default set by :func:`login` (in a dask worker, else the one
    the client shared with it), or None."""
    default = _default
    return default if default is not None else _installed_default


def _set_default(creds: Credentials | None) -> None:
    global _default
    with _lock:
        previous, _default = _default, creds
    if previous is not None and previous != creds:
        _notify("forget")
    _notify("publish")


def credentials_handle(credentials: Credentials | None) -> str:
    """Return the opaque handle that stands for ``credentials`` in a dask graph.

    ``None`` gives :data:`DEFAULT_HANDLE`, resolved at read time to the process default
    (so :func:`logout` and a new :func:`login` are honoured by later computations).
    Explicit credentials are registered in this process under their random token, weakly:
    whoever uses the handle must hold ``credentials`` (an open cube does), and
    :func:`logout` forgets every registration.
    """
    if credentials is None:
        return DEFAULT_HANDLE
    if not isinstance(credentials, Credentials):
        raise TypeError(
            "credentials must be an xarray_terrascope.Credentials, "
            f"got {type(credentials).__name__}"
        )
    with _lock:
        _registry[credentials.token] = credentials
    return credentials.token


def _shareable(handles: Iterable[str]) -> tuple[Credentials | None, dict[str, Credentials]]:
    """What of ``handles`` this process can share: its login default (for
    :data:`DEFAULT_HANDLE`) and the explicit credentials still registered."""
    with _lock:
        default = _default if DEFAULT_HANDLE in handles else None
        explicit = {h: c for h in handles if (c := _registry.get(h)) is not None}
    return default, explicit


def _install(
    default: Credentials | None, handles: dict[str, Credentials], stamp: Stamp | None
) -> None:
    """Replace the credentials a worker plugin installed in this process (the process's
    own login and registrations stay as they are)."""
    global _installed_default, _installed, _installed_stamp
    with _lock:
        _installed_default, _installed, _installed_stamp = default, dict(handles), stamp
        _installed_changed.notify_all()
    _notify("forget")


def _expect(stamp: Stamp) -> None:
    """Note that a graph this process received needs the credential state ``stamp`` (or a
    later one from the same sender): :func:`resolve` in a dask worker waits for it."""
    global _expected
    with _lock:
        _expected = stamp


def _has_expected() -> bool:
    expected, installed = _expected, _installed_stamp
    return expected is None or (
        installed is not None and installed[0] == expected[0] and installed[1] >= expected[1]
    )


def _wait_for_expected() -> bool:
    """In a dask worker, wait (at most :data:`INSTALL_WAIT` s) until the credentials the
    received graphs need are installed; False when they did not arrive in time."""
    global _expected
    if _has_expected() or not _in_dask_worker():
        return True
    logger.debug("Waiting for the Terrascope credentials the client is sharing")
    deadline = time.monotonic() + INSTALL_WAIT
    with _installed_changed:
        while not _has_expected():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "The Terrascope credentials the client shared did not reach this worker "
                    "within %.0f s",
                    INSTALL_WAIT,
                )
                _expected = None  # later reads do not wait again for the same state
                return False
            _installed_changed.wait(remaining)
    return True


def _from_environment() -> Credentials | None:
    user = os.environ.get(config.ENV_USERNAME)
    password = os.environ.get(config.ENV_PASSWORD)
    if user and password:
        return Credentials(user, password)
    return None


def resolve(handle: str) -> Credentials:
    """Return the credentials a handle stands for in this process.

    The default handle resolves to the process default (in a dask worker, else the one
    the client shared), else to ``TERRASCOPE_USERNAME``/``TERRASCOPE_PASSWORD`` in this
    process's environment (how workers that the client's credentials did not reach can
    be configured). In a dask worker that received a graph whose credentials are still on
    their way, it first waits for them (at most :data:`INSTALL_WAIT` seconds); elsewhere
    it never waits.

    Raises
    ------
    AuthenticationError
        When this process has no credentials for the handle; the message says how to fix it.
    """
    arrived = _wait_for_expected()
    with _lock:
        if handle == DEFAULT_HANDLE:
            creds = _default if _default is not None else _installed_default
        else:
            creds = _registry.get(handle) or _installed.get(handle)
    if creds is None and handle == DEFAULT_HANDLE:
        creds = _from_environment()
    if creds is None:
        if _in_dask_worker():
            late = (
                ""
                if arrived
                else f" The credentials the client shared did not arrive within "
                f"{INSTALL_WAIT:.0f} s."
            )
            raise AuthenticationError(
                f"No Terrascope credentials in this dask worker (handle {handle!r}).{late} "
                + (
                    "Call xarray_terrascope.login() on the client and compute again, or set "
                    "TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD in the environment of the "
                    "workers."
                    if handle == DEFAULT_HANDLE
                    else "The credentials this cube was opened with did not come with the "
                    "graph (logout() on the client forgets them): open the cube again with "
                    "credentials=..., or login(), and compute again."
                )
            )
        raise AuthenticationError(
            "No Terrascope credentials in this process to read the data (you may have "
            "called logout() after opening the cube). Call xarray_terrascope.login() and "
            "compute again, or open the cube with credentials=Credentials(user, password)."
            if handle == DEFAULT_HANDLE
            else "The credentials this cube was opened with are not known in this process "
            f"(handle {handle!r}); open the cube again with credentials=..., or login()."
        )
    return creds


def _in_dask_worker() -> bool:
    import sys

    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


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
            f"Refusing to send credentials to {config.origin(url) or url!r}: it is not one "
            f"of TERRASCOPE_DOWNLOAD_HOSTS ({', '.join(sorted(config.download_hosts()))}). "
            "Add its origin (scheme://host:port) there, or point TERRASCOPE_DOWNLOAD_URL "
            "at a download host."
        )


#: Retries of the validation request on connection errors and 429/5xx answers.
_VALIDATE_RETRY = Retry(
    total=4,
    backoff_factor=0.25,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,
    respect_retry_after_header=True,
    raise_on_status=False,
)
#: Paths of single-sign-on login pages (Keycloak's authorization endpoint).
_LOGIN_PAGE = ("/protocol/openid-connect/auth", "/login")


def _probe(url: str, auth: tuple[bytes, bytes] | None) -> tuple[int, str]:
    """Status and ``Location`` of one ``GET url`` (redirects not followed, 429/5xx retried)."""
    with requests.Session() as session:
        session.trust_env = False  # no netrc or proxy credentials from the environment
        session.mount("http://", HTTPAdapter(max_retries=_VALIDATE_RETRY))
        session.mount("https://", HTTPAdapter(max_retries=_VALIDATE_RETRY))
        with session.get(
            url, auth=auth, allow_redirects=False, timeout=_VALIDATE_TIMEOUT, stream=True
        ) as response:
            return response.status_code, response.headers.get("Location", "")


def _asks_to_sign_in(status: int, location: str) -> bool:
    """Whether an answer asks for credentials: a 401, or a redirect to a login page."""
    if status == 401:
        return True
    return 300 <= status < 400 and any(p in urlsplit(location).path for p in _LOGIN_PAGE)


def validate_credentials(creds: Credentials) -> None:
    """Prove credentials with an authenticated request to ``TERRASCOPE_DOWNLOAD_URL``.

    A 2xx answer proves them; a 401 or a redirect to the single-sign-on login page
    rejects them. Any other answer (a download root that forbids listing, 403, or is
    not a page, 404) proves them only if the same request without credentials is
    asked to sign in: the credentials then got past authentication. Connection errors
    and 429/5xx answers are retried with backoff.

    Raises
    ------
    AuthenticationError
        On a 401, or a redirect to the single-sign-on login page.
    TerrascopeError
        When the download service cannot be reached, keeps failing, or answers the
        same with and without credentials (so it cannot tell whether they are valid).
    """
    url = config.download_url()
    _check_allowed(url)
    try:
        status, location = _probe(url, creds.basic_auth())
        if _asks_to_sign_in(status, location):
            reason = (
                f"redirected to the login page ({location.split('?')[0]})"
                if status != 401
                else "HTTP 401"
            )
            raise AuthenticationError(
                f"Terrascope rejected the credentials of user {creds.username!r}: {reason}. "
                "Check the username and password (https://terrascope.be account)."
            )
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise TerrascopeError(
                f"The Terrascope download service answered HTTP {status} at {url} while "
                f"checking the credentials of {creds.username!r}, also when asked again; "
                "try again later or use login(..., validate=False)."
            )
        anonymous, anonymous_location = _probe(url, None)
    except requests.RequestException as err:
        raise TerrascopeError(
            f"Could not reach the Terrascope download service at {url} to check the "
            f"credentials of {creds.username!r} ({type(err).__name__}). Check the network "
            "or TERRASCOPE_DOWNLOAD_URL, or call login(..., validate=False)."
        ) from err
    if _asks_to_sign_in(anonymous, anonymous_location):
        logger.debug("%s answers %d with the credentials, %d without", url, status, anonymous)
        return
    raise TerrascopeError(
        f"The Terrascope download service at {url} answered HTTP {status} with the "
        f"credentials of {creds.username!r} and HTTP {anonymous} without any, so it cannot "
        "tell whether they are valid. Point TERRASCOPE_DOWNLOAD_URL at the download "
        "service's root, or call login(..., validate=False)."
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
    the download host). Nothing is written to ``os.environ``. A ``dask.distributed``
    cluster receives them (in a worker plugin) only when a graph with Terrascope reads
    is computed or persisted on it, or by :func:`~xarray_terrascope.share_credentials`;
    clusters that received earlier credentials receive the new ones now.

    Parameters
    ----------
    username, password : str, optional
        Both or neither.
    validate : bool, default True
        Prove the credentials with a request to ``TERRASCOPE_DOWNLOAD_URL`` (see
        :func:`validate_credentials`).

    Returns
    -------
    Credentials

    Raises
    ------
    AuthenticationError
        When no credentials are found, or Terrascope rejects them.
    TerrascopeError
        When the validation cannot reach the download service or cannot tell.

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
    """Forget the process default credentials and every explicit ``credentials=``
    registration of this process, and remove the credentials from the dask clusters
    they reached.

    A cube opened before keeps no secret: computing it afterwards fails with an
    :class:`~xarray_terrascope.AuthenticationError` that says to log in again, or to open
    it again with ``credentials=``.

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> xts.logout()
    """
    global _default
    with _lock:
        previous, _default = _default, None
        had_explicit = len(_registry) > 0
        _registry.clear()
    if previous is not None or had_explicit:
        _notify("forget")
    _notify("publish")
    if previous is not None:
        logger.info("Logged out %s", previous.username)


# --- GDAL ------------------------------------------------------------------------------


def sends_credentials(url: str) -> bool:
    """Whether ``url``'s origin (scheme, host and port) is one of
    ``TERRASCOPE_DOWNLOAD_HOSTS`` (read now).

    Examples
    --------
    >>> import os
    >>> os.environ["TERRASCOPE_DOWNLOAD_HOSTS"] = "services.terrascope.be"
    >>> sends_credentials("https://services.terrascope.be/download/a.tif")
    True
    >>> sends_credentials("http://services.terrascope.be/download/a.tif")  # plain http
    False
    >>> sends_credentials("https://services.terrascope.be:8443/download/a.tif")
    False
    >>> del os.environ["TERRASCOPE_DOWNLOAD_HOSTS"]
    """
    found = config.origin(url)
    return found is not None and found in config.download_hosts()


def gdal_options(url: str, credentials: Credentials | None, *, allowed: bool | None = None) -> dict:
    """Return the GDAL configuration options for one read of ``url``.

    The base options (no directory listing, retries, no netrc, no extra headers, bearer
    token or cookies from elsewhere) always; HTTP Basic credentials only when ``url`` is
    on an allowed download host (``allowed``, else ``TERRASCOPE_DOWNLOAD_HOSTS`` read
    now) and ``credentials`` is given, and otherwise options that send none, whatever
    the environment holds. Use the result in a ``rasterio.Env`` around the read, never
    in ``os.environ``.

    Examples
    --------
    >>> opts = gdal_options("https://example.com/a.tif", Credentials("u", "p"))
    >>> opts["GDAL_HTTP_USERPWD"], opts["GDAL_HTTP_NETRC"]
    ('', 'NO')
    """
    options = dict(BASE_GDAL_OPTIONS)
    options.update({name: "" for name in _COOKIE_OPTIONS if _gdal_config(name)})
    if allowed is None:
        allowed = sends_credentials(url)
    if credentials is not None and allowed:
        options["GDAL_HTTP_AUTH"] = "BASIC"
        options["GDAL_HTTP_USERPWD"] = f"{credentials.username}:{credentials.password}"
    else:
        options.update(_NO_CREDENTIALS)
    return options


def _gdal_config(name: str) -> str | None:
    """What GDAL would find for option ``name`` outside the package's options: its
    process-wide configuration, else the environment."""
    from rasterio.env import get_gdal_config

    value = get_gdal_config(name, normalize=False)
    return None if value in (None, "") else str(value)
