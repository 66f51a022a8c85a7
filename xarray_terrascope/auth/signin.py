"""Logging in: credentials from the arguments, the environment or a netrc file, proven
with one request to the download service, kept as this process's default.
"""

from __future__ import annotations

import logging
import netrc
import os
import stat
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth

from xarray_terrascope import config, http_policy
from xarray_terrascope.auth import oidc, store
from xarray_terrascope.auth.credentials import Credentials
from xarray_terrascope.auth.scope import sends_credentials
from xarray_terrascope.auth.state import (
    ENV_PASSWORD,
    ENV_USERNAME,
    AnyCredentials,
    _forget_all,
    _from_environment,
    _set_default,
)
from xarray_terrascope.auth.tokens import TokenCredentials, TokenHolder
from xarray_terrascope.exceptions import AuthenticationError, InvalidArgumentError, TerrascopeError
from xarray_terrascope.options import get_options

__all__ = ["login", "logout", "validate_credentials"]

logger = logging.getLogger(__name__)

#: The netrc file's path, when not ``~/.netrc`` (curl reads the same variable).
ENV_NETRC = "NETRC"

_VALIDATE_TIMEOUT = 30.0


def _netrc_path() -> str:
    return os.environ.get(ENV_NETRC) or os.path.join(os.path.expanduser("~"), ".netrc")


def _from_netrc() -> Credentials | None:
    path = _netrc_path()
    if not os.path.exists(path):
        return None
    host = urlsplit(get_options().download_url).hostname or ""
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
    _warn_if_others_read(path)
    return Credentials(login_name, password)


#: The netrc files already warned about (once per process each).
_warned_netrc: set[str] = set()


def _warn_if_others_read(path: str) -> None:
    """Log a WARNING when others than its owner may read the netrc file whose password
    is used (Python's ``netrc`` refuses such a ``~/.netrc`` for a password, but not a
    file given by path; curl and GDAL take both: warned, not refused)."""
    try:
        info = os.stat(path)
    except OSError:
        return
    mode = stat.S_IMODE(info.st_mode)
    foreign = hasattr(os, "getuid") and info.st_uid != os.getuid()
    if (mode & 0o077 or foreign) and path not in _warned_netrc:
        _warned_netrc.add(path)
        logger.warning(
            "The netrc file %r holding your Terrascope password %s: others may read it. "
            "Make it yours alone: chmod 600 %s",
            path,
            f"has mode {mode:04o}" if mode & 0o077 else f"is owned by uid {info.st_uid}",
            path,
        )


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
    host = urlsplit(get_options().download_url).hostname
    raise AuthenticationError(
        "No Terrascope credentials found. Provide them in one of three ways:\n"
        "  1. login(username, password)\n"
        f"  2. the environment variables {ENV_USERNAME} and {ENV_PASSWORD}\n"
        f"  3. a netrc file ({_netrc_path()}, or the path in NETRC) with the line "
        f"`machine {host} login USER password PASS`"
    )


def _check_allowed(url: str) -> None:
    if not sends_credentials(url):
        raise TerrascopeError(
            f"Refusing to send credentials to {config.origin(url) or url!r}: it is not one "
            f"of TERRASCOPE_DOWNLOAD_HOSTS ({', '.join(sorted(get_options().allowed_origins))}). "
            "Add its origin (scheme://host:port) there, or point TERRASCOPE_DOWNLOAD_URL "
            "at a download host."
        )
    config.note_credentials_to(config.origin(url))


#: Retries of the validation request on connection errors and 429/5xx answers.
_VALIDATE_RETRY = http_policy.LOGIN.urllib3_retry()
#: Paths of single-sign-on login pages (Keycloak's authorization endpoint).
_LOGIN_PAGE = ("/protocol/openid-connect/auth", "/login")


def _probe(url: str, auth: tuple[bytes, bytes] | None) -> tuple[int, str]:
    """Status and ``Location`` of one ``GET url`` (redirects not followed, 429/5xx retried)."""
    with requests.Session() as session:
        session.trust_env = False  # no netrc or proxy credentials from the environment
        session.mount("http://", HTTPAdapter(max_retries=_VALIDATE_RETRY))
        session.mount("https://", HTTPAdapter(max_retries=_VALIDATE_RETRY))
        with session.get(
            url,
            auth=None if auth is None else HTTPBasicAuth(*auth),  # what requests makes of a pair
            allow_redirects=False,
            timeout=_VALIDATE_TIMEOUT,
            stream=True,
        ) as response:
            return response.status_code, response.headers.get("Location", "")


def _asks_to_sign_in(status: int, location: str) -> bool:
    """Whether an answer asks for credentials: a 401, or a redirect to a login page."""
    if status == 401:
        return True
    return 300 <= status < 400 and any(p in urlsplit(location).path for p in _LOGIN_PAGE)


def validate_credentials(
    creds: Credentials,
    *,
    given_as: str = "login()",
    skip: str = "login(..., validate=False)",
) -> None:
    """Prove credentials with an authenticated request to ``TERRASCOPE_DOWNLOAD_URL``.

    A 2xx answer proves them; a 401 or a redirect to the single-sign-on login page
    rejects them. Any other answer (a download root that forbids listing, 403, or is
    not a page, 404) proves them only if the same request without credentials is
    asked to sign in: the credentials then got past authentication. Connection errors
    and 429/5xx answers are retried with backoff.

    Parameters
    ----------
    creds : Credentials
        The credentials to prove.
    given_as : str
        Where the user gave them, named in the messages (``credentials= of
        open_dataset`` for per-call credentials).
    skip : str
        How to open without this check, named in the messages.

    Raises
    ------
    AuthenticationError
        On a 401, or a redirect to the single-sign-on login page.
    TerrascopeError
        When the download service cannot be reached, keeps failing, or answers the
        same with and without credentials (so it cannot tell whether they are valid).
    """
    url = get_options().download_url
    _check_allowed(url)
    shown = config.public_url(url)  # what the messages show: no query string
    try:
        status, location = _probe(url, creds.basic_auth())
        if _asks_to_sign_in(status, location):
            reason = (
                f"redirected to the login page ({location.split('?')[0]})"
                if status != 401
                else "HTTP 401"
            )
            raise AuthenticationError(
                f"Terrascope rejected the credentials of user {creds.username!r} given to "
                f"{given_as}: {reason}. Check the username and password "
                "(https://terrascope.be account)."
            )
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise TerrascopeError(
                f"The Terrascope download service answered HTTP {status} at {shown} while "
                f"checking the credentials of {creds.username!r}, also when asked again; "
                f"try again later or use {skip}."
            )
        anonymous, anonymous_location = _probe(url, None)
    except requests.RequestException as err:
        raise TerrascopeError(
            f"Could not reach the Terrascope download service at {shown} to check the "
            f"credentials of {creds.username!r} ({type(err).__name__}). Check the network "
            f"or TERRASCOPE_DOWNLOAD_URL, or use {skip}."
        ) from config.redacted(err)
    if _asks_to_sign_in(anonymous, anonymous_location):
        logger.debug("%s answers %d with the credentials, %d without", url, status, anonymous)
        return
    raise TerrascopeError(
        f"The Terrascope download service at {shown} answered HTTP {status} with the "
        f"credentials of {creds.username!r} and HTTP {anonymous} without any, so it cannot "
        "tell whether they are valid. Point TERRASCOPE_DOWNLOAD_URL at the download "
        f"service's root, or use {skip}."
    )


def login(
    username: str | None = None,
    password: str | None = None,
    *,
    validate: bool = True,
    method: str = "basic",
    flow: str = "auto",
    store: bool = False,
    prompt: oidc.Prompt | None = None,
) -> AnyCredentials:
    """Log in to Terrascope and keep the login as this process's default.

    ``method="basic"`` (the default): a username and password for HTTP Basic on the
    download service, from the arguments, else ``TERRASCOPE_USERNAME`` and
    ``TERRASCOPE_PASSWORD``, else the netrc file (``NETRC`` or ``~/.netrc``, machine =
    the download host).

    ``method="oidc"``: OpenID Connect tokens from Terrascope's identity provider (the
    ``oidc_url`` option, ``TERRASCOPE_OIDC_URL``), sent as ``Authorization: Bearer`` to
    the download hosts and the STAC API (which protected collections need), and
    refreshed before they expire, also on ``dask.distributed`` workers. ``flow="auto"``
    uses the password grant when a username and password are found as above, else the
    device authorization flow (a URL and code shown by ``prompt``: logged at INFO, and a
    link in a notebook); ``flow="password"`` or ``flow="device"`` choose. With
    ``store=True`` the refresh token is kept in a file readable by you only, and a
    later ``login(method="oidc", store=True)`` uses it without asking again.

    Nothing is written to ``os.environ``. A ``dask.distributed`` cluster receives the
    login (in a worker plugin) only when a graph with Terrascope reads is computed or
    persisted on it, or by :func:`~xarray_terrascope.share_credentials`; clusters that
    received an earlier login receive the new one now.

    Parameters
    ----------
    username, password : str, optional
        Both or neither.
    validate : bool, default True
        Basic: prove the credentials with a request to ``TERRASCOPE_DOWNLOAD_URL`` (see
        :func:`validate_credentials`). OIDC: the provider's answer proves them.
    method : {"basic", "oidc"}
    flow : {"auto", "password", "device"}
        OIDC only.
    store : bool, default False
        OIDC only: use and keep the refresh token in the user's config directory.
    prompt : callable, optional
        OIDC device flow: ``prompt(verification_url, user_code)`` shows them to the user.

    Returns
    -------
    Credentials or TokenCredentials

    Raises
    ------
    AuthenticationError
        When no credentials are found, or Terrascope rejects them.
    CredentialStoreError
        When ``store=True`` finds a store that others may read or another user owns.
    TerrascopeError
        When the service cannot be reached (or, Basic, cannot tell).

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> creds = xts.login()  # doctest: +SKIP
    >>> creds.username  # doctest: +SKIP
    'alice'
    >>> xts.login(method="oidc")  # doctest: +SKIP
    """
    if method == "oidc":
        tokens = _login_oidc(username, password, flow=flow, keep=store, prompt=prompt)
        _set_default(tokens)
        logger.info("Authenticated as %s with OpenID Connect", tokens.username)
        return tokens
    if method != "basic":
        raise InvalidArgumentError(f"method must be 'basic' or 'oidc', got {method!r}")
    creds, source = _resolve_login(username, password)
    if validate:
        validate_credentials(creds)
    _set_default(creds)
    logger.info("Authenticated as %s (credentials from %s)", creds.username, source)
    return creds


def _password_found(username: str | None, password: str | None) -> Credentials | None:
    """The username and password of the arguments, environment or netrc; None when there
    are none (both arguments or neither, as for Basic)."""
    if username is None and password is None:
        found = _from_environment() or _from_netrc()
        return found
    return _resolve_login(username, password)[0]


def _login_oidc(
    username: str | None,
    password: str | None,
    *,
    flow: str,
    keep: bool,
    prompt: oidc.Prompt | None,
) -> TokenCredentials:
    if flow not in ("auto", "password", "device"):
        raise InvalidArgumentError(f"flow must be 'auto', 'password' or 'device', got {flow!r}")
    provider = oidc.discover()
    if keep:
        entry = store.load(provider.issuer, provider.client_id)
        if entry is not None:
            try:
                answer = oidc.refresh(provider, entry["refresh_token"])
            except AuthenticationError:
                logger.info("The stored Terrascope refresh token was refused; logging in anew")
            else:
                tokens = TokenCredentials(entry.get("username"), TokenHolder(provider, answer))
                _keep(tokens)
                return tokens
    found = None if flow == "device" else _password_found(username, password)
    if found is not None:
        answer = oidc.password_grant(provider, found.username, found.password)
        name: str | None = found.username
    elif flow == "password":
        _resolve_login(None, None)  # raises, saying where a password may come from
        raise AssertionError("unreachable")
    elif provider.device_endpoint is None:
        raise AuthenticationError(
            "No Terrascope username and password found, and the identity provider offers no "
            "device login. Give them to login(username, password, method='oidc'), or set "
            f"{ENV_USERNAME} and {ENV_PASSWORD}, or add them to the netrc file."
        )
    else:
        answer, name = oidc.device_grant(provider, prompt), None
    tokens = TokenCredentials(name, TokenHolder(provider, answer))
    if keep:
        _keep(tokens)
    return tokens


def _keep(tokens: TokenCredentials) -> None:
    provider = tokens.holder.provider
    store.save(provider.issuer, provider.client_id, tokens.username, tokens.holder.refresh_token())


def logout() -> None:
    """Forget the process default credentials and every explicit ``credentials=``
    registration of this process, remove the credentials from the dask clusters
    they reached, and delete the refresh-token store of ``login(method="oidc",
    store=True)`` if there is one.

    A cube opened before keeps no secret: computing it afterwards fails with an
    :class:`~xarray_terrascope.AuthenticationError` that says to log in again, or to open
    it again with ``credentials=``.

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> xts.logout()
    """
    previous = _forget_all()
    store.delete()
    if previous is not None:
        logger.info("Logged out %s", previous.username)
