"""A Keycloak-like token issuer for the download server's bearer mode."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["TokenIssuer", "discovery", "same_secret"]

CLIENT_ID = "public"
REFRESH_LIFETIME = 1800.0


def discovery(host_url: str, auth_path: str, token_path: str) -> dict[str, Any]:
    """The OpenID Connect discovery document of the sandbox's realm, as Keycloak words
    its main fields (``host_url`` ends with ``/``)."""
    root = host_url.rstrip("/")
    return {
        "issuer": f"{root}/auth/realms/terrascope",
        "authorization_endpoint": f"{root}{auth_path}",
        "token_endpoint": f"{root}{token_path}",
        "grant_types_supported": ["authorization_code", "password", "refresh_token"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email"],
    }


def same_secret(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two secrets (False when ``expected`` is None)."""
    if expected is None or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class TokenIssuer:
    """Issues access and refresh tokens (grant types ``password`` and ``refresh_token``).

    Times are those of the caller's clock, so tests can move time by hand.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, tuple[str, float]] = {}

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._access.clear()
            self._refresh.clear()

    def expire_all(self) -> None:
        """Make every access token issued so far expired (refresh tokens stay valid)."""
        with self._lock:
            self._access = {t: (user, float("-inf")) for t, (user, _) in self._access.items()}

    def user_of(self, token: str, now: float) -> str | None:
        """Return the user of a valid access token, None when unknown or expired."""
        with self._lock:
            entry = self._access.get(token)
        return entry[0] if entry is not None and now < entry[1] else None

    def grant(
        self, form: Mapping[str, str], users: Mapping[str, str], now: float, lifetime: float
    ) -> tuple[int, dict[str, Any]]:
        """Answer a token request: ``(HTTP status, JSON body)`` as Keycloak words them."""

        def error(status: int, code: str, text: str) -> tuple[int, dict[str, Any]]:
            return status, {"error": code, "error_description": text}

        if form.get("client_id") != CLIENT_ID:
            return error(401, "invalid_client", "Invalid client or Invalid client credentials")
        grant = form.get("grant_type")
        if grant == "password":
            user = form.get("username", "")
            if not same_secret(users.get(user), form.get("password", "")):
                return error(401, "invalid_grant", "Invalid user credentials")
        elif grant == "refresh_token":
            with self._lock:
                entry = self._refresh.pop(form.get("refresh_token", ""), None)
            if entry is None or now >= entry[1]:
                return error(400, "invalid_grant", "Invalid refresh token")
            user = entry[0]
        else:
            return error(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            self._access[access] = (user, now + lifetime)
            self._refresh[refresh] = (user, now + REFRESH_LIFETIME)
        return 200, {
            "access_token": access,
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "refresh_expires_in": int(REFRESH_LIFETIME),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": secrets.token_hex(8),
            "scope": "profile email",
        }
