"""OpenID Connect with Terrascope's identity provider (a Keycloak realm): discovery, the
password grant, the device authorization grant (RFC 8628) and refresh, through Authlib's
``requests`` client; only the glue is here.

Token requests go to the endpoints the configuration document names, over https (plain
http to a loopback address only, for the sandbox), with no netrc or proxy credentials
from the environment and no redirect followed. Nothing here logs a token, a password or
a form body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from requests.adapters import HTTPAdapter

from xarray_terrascope import config, http_policy
from xarray_terrascope.exceptions import AuthenticationError, TerrascopeError
from xarray_terrascope.options import get_options

__all__ = [
    "DEVICE_GRANT",
    "Provider",
    "device_grant",
    "discover",
    "password_grant",
    "refresh",
    "show_device_code",
]

logger = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_TIMEOUT = 30.0
_RETRY = http_policy.LOGIN.urllib3_retry()

#: What shows the verification URL and user code of a device login to the user.
Prompt = Callable[[str, str], None]


@dataclass(frozen=True)
class Provider:
    """An OpenID Connect provider as its configuration document describes it.

    Attributes
    ----------
    issuer : str
    token_endpoint : str
    device_endpoint : str or None
        The device authorization endpoint, when the provider offers the grant.
    client_id : str
        The public OAuth 2 client the package logs in as.
    """

    issuer: str
    token_endpoint: str
    device_endpoint: str | None
    client_id: str


def _check_secure(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in config.LOOPBACK_HOSTS
    ):
        return
    raise AuthenticationError(
        f"Refusing to use {what} {config.public_url(url)!r}: tokens and passwords go over "
        "https only (plain http to a loopback address for a local test server)."
    )


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no netrc or proxy credentials from the environment
    session.mount("http://", HTTPAdapter(max_retries=_RETRY))
    session.mount("https://", HTTPAdapter(max_retries=_RETRY))
    return session


def discover(url: str | None = None, client_id: str | None = None) -> Provider:
    """Read the provider's OpenID Connect configuration document.

    Parameters
    ----------
    url : str, optional
        The document's URL; the ``oidc_url`` option (``TERRASCOPE_OIDC_URL``) when None.
    client_id : str, optional
        The ``oidc_client_id`` option when None.

    Raises
    ------
    AuthenticationError
        For a document on plain http (not loopback), or one without a token endpoint.
    TerrascopeError
        When the document cannot be fetched.
    """
    options = get_options()
    url = url or options.oidc_url
    _check_secure(url, "the OpenID Connect configuration")
    try:
        with _http() as session:
            answer = session.get(url, timeout=_TIMEOUT, allow_redirects=False)
        answer.raise_for_status()
        doc = answer.json()
    except (requests.RequestException, ValueError) as err:
        raise TerrascopeError(
            f"Could not read the OpenID Connect configuration at {config.public_url(url)} "
            f"({type(err).__name__}). Check the network, or TERRASCOPE_OIDC_URL."
        ) from err
    token_endpoint = doc.get("token_endpoint") if isinstance(doc, dict) else None
    if not isinstance(token_endpoint, str):
        raise AuthenticationError(
            f"The OpenID Connect configuration at {config.public_url(url)} names no "
            "token_endpoint; check TERRASCOPE_OIDC_URL (it ends with "
            "/.well-known/openid-configuration)."
        )
    _check_secure(token_endpoint, "the token endpoint")
    device = doc.get("device_authorization_endpoint")
    if isinstance(device, str):
        _check_secure(device, "the device authorization endpoint")
    else:
        device = None
    return Provider(
        issuer=str(doc.get("issuer", "")),
        token_endpoint=token_endpoint,
        device_endpoint=device,
        client_id=client_id or options.oidc_client_id,
    )


def _client(provider: Provider) -> OAuth2Session:
    """Authlib's session for the public client: ``client_id`` in the form, no secret."""
    session = OAuth2Session(
        client_id=provider.client_id,
        token_endpoint=provider.token_endpoint,
        token_endpoint_auth_method="none",
    )
    session.trust_env = False
    session.mount("http://", HTTPAdapter(max_retries=_RETRY))
    session.mount("https://", HTTPAdapter(max_retries=_RETRY))
    # requests follows a 307/308 with the same form, password or refresh token included:
    # an answer that redirects is refused before any redirect is followed
    session.hooks["response"].append(_refuse_redirect)
    return session


def _refuse_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    if response.is_redirect:
        target = response.headers.get("Location", "")
        raise AuthenticationError(
            f"The identity provider's endpoint {config.public_url(response.url)} answered "
            f"HTTP {response.status_code}, a redirect to {config.redact(target)!r}: refused, "
            "since it would send the password or token there too. Check "
            "TERRASCOPE_OIDC_URL (the provider's discovery document names its endpoints)."
        )


def _token(answer: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(answer.get("access_token"), str):
        raise AuthenticationError("The token endpoint answered without an access token.")
    return dict(answer)


def _unreachable(provider: Provider, err: Exception) -> TerrascopeError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    where = config.public_url(provider.token_endpoint)
    if status is not None:  # it answered, with an error no grant expects
        return TerrascopeError(
            f"The token endpoint {where} answered HTTP {status}: it does not issue tokens "
            "there (check TERRASCOPE_OIDC_URL, or log in with --method basic)."
        )
    return TerrascopeError(
        f"Could not reach the token endpoint {where} ({type(err).__name__}); check the "
        "network and try again."
    )


def password_grant(provider: Provider, username: str, password: str) -> dict[str, Any]:
    """Tokens for ``username`` by the resource owner password grant.

    Raises
    ------
    AuthenticationError
        When the provider refuses the credentials or the grant.
    """
    with _client(provider) as session:
        try:
            answer = session.fetch_token(
                grant_type="password", username=username, password=password, timeout=_TIMEOUT
            )
        except OAuthError as err:
            raise AuthenticationError(
                f"{provider.issuer or 'The identity provider'} refused the password login of "
                f"{username!r} ({err.error}: {err.description or 'no description'}). Check "
                "the username and password, or log in with the device flow "
                "(login(method='oidc') with no password)."
            ) from None
        except requests.RequestException as err:
            raise _unreachable(provider, err) from err
    return _token(answer)


def refresh(provider: Provider, refresh_token: str) -> dict[str, Any]:
    """New tokens for a refresh token (one request, never retried on refusal).

    Raises
    ------
    AuthenticationError
        When the provider refuses the refresh token (expired, revoked, account disabled):
        the message says to log in again.
    TerrascopeError
        When the token endpoint cannot be reached.
    """
    with _client(provider) as session:
        try:
            answer = session.refresh_token(
                provider.token_endpoint, refresh_token=refresh_token, timeout=_TIMEOUT
            )
        except OAuthError as err:
            raise AuthenticationError(
                f"The Terrascope login has ended: {provider.issuer or 'the identity provider'} "
                f"refused to refresh the access token ({err.error}: "
                f"{err.description or 'no description'}; the session expired, was ended, or "
                "the account was disabled). Log in again with "
                "xarray_terrascope.login(method='oidc') (on the command line: "
                "xarray-terrascope login) and compute again."
            ) from None
        except requests.RequestException as err:
            raise _unreachable(provider, err) from err
    return _token(answer)


def show_device_code(url: str, user_code: str) -> None:
    """The default prompt of a device login: log the verification URL and code at INFO
    and, in a Jupyter notebook, show them as a link."""
    logger.info("To log in to Terrascope, open %s and enter the code %s", url, user_code)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return
    import html

    display(
        HTML(
            f'<p>To log in to Terrascope, open <a href="{html.escape(url)}" target="_blank">'
            f"{html.escape(url)}</a> and enter the code <code>{html.escape(user_code)}</code>."
            "</p>"
        )
    )


def device_grant(provider: Provider, prompt: Prompt | None = None) -> dict[str, Any]:
    """Tokens by the device authorization grant: show the verification URL and user code
    with ``prompt`` (default :func:`show_device_code`), then poll the token endpoint at
    the interval the provider asks until the user approves, refuses, or the code expires.

    Raises
    ------
    AuthenticationError
        When the provider offers no device grant, refuses this client, or the user does
        not approve in time.
    """
    if provider.device_endpoint is None:
        raise AuthenticationError(
            f"{provider.issuer or 'The identity provider'} offers no device authorization "
            "grant: log in with a username and password (login(username, password, "
            "method='oidc'))."
        )
    with _client(provider) as session:
        try:
            answer = session.post(
                provider.device_endpoint,
                data={"client_id": provider.client_id, "scope": "openid"},
                timeout=_TIMEOUT,
                allow_redirects=False,
                withhold_token=True,  # no token yet: this request asks for one
            )
        except requests.RequestException as err:
            raise _unreachable(provider, err) from err
        try:
            start = answer.json()
        except ValueError:
            start = {}
        if answer.status_code != 200 or "device_code" not in start:
            raise AuthenticationError(
                f"The device authorization endpoint refused client {provider.client_id!r} "
                f"(HTTP {answer.status_code}: {start.get('error', 'no error code')}): the "
                "device flow may not be enabled for it; log in with a username and password."
            )
        url = start.get("verification_uri_complete") or start["verification_uri"]
        (prompt or show_device_code)(url, start["user_code"])
        interval = float(start.get("interval", 5))
        deadline = time.monotonic() + float(start.get("expires_in", 600))
        while True:
            try:
                return _token(
                    session.fetch_token(
                        grant_type=DEVICE_GRANT,
                        device_code=start["device_code"],
                        timeout=_TIMEOUT,
                    )
                )
            except OAuthError as err:
                if err.error == "slow_down":
                    interval += 5.0
                elif err.error != "authorization_pending":
                    raise AuthenticationError(
                        f"The device login did not complete ({err.error}: "
                        f"{err.description or 'no description'}); run the login again."
                    ) from None
            except requests.RequestException as err:
                raise _unreachable(provider, err) from err
            if time.monotonic() + interval > deadline:
                raise AuthenticationError(
                    f"The device login was not approved within {start.get('expires_in', 600)} "
                    f"s at {url}; run the login again."
                )
            time.sleep(interval)  # the provider's polling interval (RFC 8628 section 3.5)
