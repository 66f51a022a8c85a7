"""The sandbox's single sign-on, as Terrascope's Keycloak answers: the sign-in page that
a request without credentials is redirected to, the token and device authorization
endpoints (bearer mode, issued by :class:`~._oidc.TokenIssuer`) and the OpenID Connect
discovery document that the TOC items' ``auth:schemes`` point at."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from urllib.parse import quote

from werkzeug.sansio.request import Request

from ._oidc import TokenIssuer, discovery
from ._replies import Reply, text_reply

__all__ = [
    "DEVICE_PATH",
    "DISCOVERY_PATH",
    "PATHS",
    "SSO_PATH",
    "TOKEN_PATH",
    "VERIFY_PATH",
    "answer",
    "login_redirect",
]

SSO_PATH = "/auth/realms/terrascope/protocol/openid-connect/auth"
TOKEN_PATH = "/auth/realms/terrascope/protocol/openid-connect/token"
DISCOVERY_PATH = "/auth/realms/terrascope/.well-known/openid-configuration"
DEVICE_PATH = "/auth/realms/terrascope/protocol/openid-connect/auth/device"
#: Where a user approves a device code (a page the sandbox does not serve: tests approve
#: with :meth:`DownloadApp.approve_device`).
VERIFY_PATH = "/auth/realms/terrascope/device"
#: The paths :func:`answer` serves.
PATHS = frozenset({SSO_PATH, TOKEN_PATH, DEVICE_PATH, DISCOVERY_PATH})

_SIGN_IN = (
    "<!DOCTYPE html><html><head><title>Sign in to terrascope</title></head><body>"
    "<h1>Sign in to your account</h1><form method='post' action='#'>"
    "<input name='username'><input name='password' type='password'>"
    "<input type='submit' value='Sign In'></form></body></html>"
)


def answer(
    req: Request,
    form: Mapping[str, str],
    issuer: TokenIssuer,
    users: Mapping[str, str],
    now: float,
    *,
    bearer: bool,
    device_flow: bool,
    token_lifetime: float,
    device_interval: float,
) -> Reply:
    """The answer to a request for one of :data:`PATHS` (the token and device endpoints
    only in bearer mode, 404 otherwise)."""
    if req.path == SSO_PATH:
        return text_reply(200, _SIGN_IN, "text/html; charset=utf-8")
    if req.path == DISCOVERY_PATH:
        device = DEVICE_PATH if bearer and device_flow else None
        body = json.dumps(discovery(req.host_url, SSO_PATH, TOKEN_PATH, device))
        return text_reply(200, body, "application/json")
    if not bearer or (req.path == DEVICE_PATH and not device_flow):
        return text_reply(404, "Not Found")
    if req.method != "POST":
        return text_reply(405, "Method Not Allowed")
    if req.path == TOKEN_PATH:
        status, body_json = issuer.grant(form, users, now, token_lifetime)
    else:
        verify = f"{req.host_url.rstrip('/')}{VERIFY_PATH}"
        status, body_json = issuer.start_device(form, verify, now, device_interval)
    return text_reply(status, json.dumps(body_json), "application/json")


def login_redirect(req: Request) -> Reply:
    """302 to the sign-in page (HTML), as Terrascope answers a request without
    credentials."""
    location = (
        f"{req.host_url.rstrip('/')}{SSO_PATH}?client_id=terrascope-download"
        f"&redirect_uri={quote(req.url, safe='')}&response_type=code&scope=openid"
    )
    page = f"<html><body>Redirecting to <a href='{html.escape(location)}'>sign in</a></body></html>"
    return text_reply(302, page, "text/html; charset=utf-8", [("Location", location)])
