"""A Keycloak-like token issuer for the download server's bearer mode.

Grant types ``password``, ``refresh_token`` and the device authorization grant
(``urn:ietf:params:oauth:grant-type:device_code``, RFC 8628); the discovery document.
Access tokens are shaped like Keycloak's JWTs (the user's name and realm roles in
their claims) but their signature is random, and refresh tokens are opaque: the issuer
keeps who they belong to, when they expire and the user's roles, which the
STAC API asks it for (:meth:`TokenIssuer.roles_of`). As Keycloak by default ("Revoke
Refresh Token" off), a refresh token stays valid until it expires even after use, so
several processes holding the same one can each refresh; ``revoke_refresh`` makes them
single-use. Every token request is recorded in :attr:`TokenIssuer.log`.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEVICE_GRANT", "Grant", "TokenIssuer", "discovery", "same_secret"]

CLIENT_ID = "public"
REFRESH_LIFETIME = 1800.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Seconds a device code lives (Keycloak's default is 600).
DEVICE_LIFETIME = 600.0


def discovery(
    host_url: str, auth_path: str, token_path: str, device_path: str | None = None
) -> dict[str, Any]:
    """The OpenID Connect discovery document of the sandbox's realm, as Keycloak words
    its main fields (``host_url`` ends with ``/``); the device authorization endpoint
    when ``device_path`` is given."""
    root = host_url.rstrip("/")
    grants = ["authorization_code", "password", "refresh_token"]
    doc: dict[str, Any] = {
        "issuer": f"{root}/auth/realms/terrascope",
        "authorization_endpoint": f"{root}{auth_path}",
        "token_endpoint": f"{root}{token_path}",
        "grant_types_supported": grants,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email"],
    }
    if device_path is not None:
        doc["device_authorization_endpoint"] = f"{root}{device_path}"
        grants.append(DEVICE_GRANT)
    return doc


def same_secret(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two secrets (False when ``expected`` is None)."""
    if expected is None or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _jwt_shaped(user: str, roles: list[str], expires: float) -> str:
    """An access token shaped like Keycloak's JWT (``preferred_username``, the realm
    roles claim), its signature random: the issuer keeps what it issued and checks
    tokens against that, not against a signature."""
    claims = {
        "exp": expires,
        "preferred_username": user,
        "realm_access": {"roles": roles},
        "jti": secrets.token_hex(8),
    }
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class Grant:
    """One token request as the issuer saw it: its grant type, the answer's status and
    OAuth error code (None on success), and the issuer's clock then."""

    grant_type: str
    status: int
    error: str | None
    time: float


@dataclass
class _Device:
    user_code: str
    expires: float
    user: str | None = None  # set when the user approves


class TokenIssuer:
    """Issues access and refresh tokens (grant types ``password``, ``refresh_token`` and
    device code).

    Times are those of the caller's clock, so tests can move time by hand.

    Parameters
    ----------
    refresh_lifetime : float
        Seconds a refresh token lives (Keycloak's "SSO Session Idle").
    """

    def __init__(self, refresh_lifetime: float = REFRESH_LIFETIME) -> None:
        self._lock = threading.Lock()
        self.refresh_lifetime = float(refresh_lifetime)
        self.revoke_refresh = False
        #: Roles of each user, as a Keycloak realm's role mappings (settable by tests).
        self.roles: dict[str, set[str]] = {}
        #: Users whose account is disabled: their refresh tokens are refused.
        self.disabled: set[str] = set()
        self.log: list[Grant] = []
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, tuple[str, float]] = {}
        self._devices: dict[str, _Device] = {}

    def clear(self) -> None:
        """Forget every token, device code, role, disabled account and logged grant."""
        with self._lock:
            self._access.clear()
            self._refresh.clear()
            self._devices.clear()
            self.roles, self.disabled, self.log = {}, set(), []
            self.revoke_refresh = False

    def expire_all(self) -> None:
        """Make every access token issued so far expired (refresh tokens stay valid)."""
        with self._lock:
            self._access = {t: (user, float("-inf")) for t, (user, _) in self._access.items()}

    def expire_refresh_tokens(self) -> None:
        """Make every refresh token issued so far expired (the SSO session ended)."""
        with self._lock:
            self._refresh = {t: (user, float("-inf")) for t, (user, _) in self._refresh.items()}

    def user_of(self, token: str, now: float) -> str | None:
        """Return the user of a valid access token, None when unknown or expired."""
        with self._lock:
            entry = self._access.get(token)
        return entry[0] if entry is not None and now < entry[1] else None

    def roles_of(self, token: str, now: float) -> set[str] | None:
        """The roles of a valid access token's user (the token's role claim); None when
        the token is unknown or expired."""
        user = self.user_of(token, now)
        if user is None:
            return None
        with self._lock:
            return set(self.roles.get(user, ()))

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token issued and not forgotten (for tests that look
        for them where they must not be)."""
        with self._lock:
            return [*self._access, *self._refresh]

    def refresh_count(self) -> int:
        """Successful ``refresh_token`` grants so far."""
        with self._lock:
            return sum(1 for g in self.log if g.grant_type == "refresh_token" and g.status == 200)

    # --- device authorization ---------------------------------------------------------

    def start_device(
        self, form: Mapping[str, str], verification_uri: str, now: float, interval: float
    ) -> tuple[int, dict[str, Any]]:
        """Answer a device authorization request (RFC 8628 section 3.2)."""
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client", "error_description": "Invalid client"}
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(
            "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(4)) for _ in range(2)
        )
        with self._lock:
            self._devices[device_code] = _Device(user_code, now + DEVICE_LIFETIME)
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={user_code}",
            "expires_in": int(DEVICE_LIFETIME),
            "interval": interval,
        }

    def pending_user_codes(self) -> list[str]:
        """User codes waiting for a user's approval (what the user would type in)."""
        with self._lock:
            return [d.user_code for d in self._devices.values() if d.user is None]

    def approve(self, user_code: str, user: str) -> bool:
        """``user`` signs in at the verification page and approves ``user_code``."""
        with self._lock:
            for device in self._devices.values():
                if device.user_code == user_code and device.user is None:
                    device.user = user
                    return True
        return False

    # --- the token endpoint ------------------------------------------------------------

    def grant(
        self, form: Mapping[str, str], users: Mapping[str, str], now: float, lifetime: float
    ) -> tuple[int, dict[str, Any]]:
        """Answer a token request: ``(HTTP status, JSON body)`` as Keycloak words them."""
        status, body = self._grant(form, users, now, lifetime)
        with self._lock:
            self.log.append(Grant(str(form.get("grant_type")), status, body.get("error"), now))
        return status, body

    def _grant(
        self, form: Mapping[str, str], users: Mapping[str, str], now: float, lifetime: float
    ) -> tuple[int, dict[str, Any]]:
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
                token = form.get("refresh_token", "")
                entry = (
                    self._refresh.pop(token, None)
                    if self.revoke_refresh
                    else self._refresh.get(token)
                )
            if entry is None or now >= entry[1]:
                return error(400, "invalid_grant", "Token is not active")
            user = entry[0]
            if user in self.disabled:
                return error(400, "invalid_grant", "Account disabled")
        elif grant == DEVICE_GRANT:
            with self._lock:
                device = self._devices.get(form.get("device_code", ""))
                if device is None or now >= device.expires:
                    return error(400, "expired_token", "Device code is not valid")
                if device.user is None:
                    return error(
                        400, "authorization_pending", "The authorization request is pending"
                    )
                del self._devices[form["device_code"]]
            user = device.user
        else:
            return error(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")
        with self._lock:
            roles = sorted(self.roles.get(user, ()))
        access, refresh = _jwt_shaped(user, roles, now + lifetime), secrets.token_urlsafe(32)
        with self._lock:
            self._access[access] = (user, now + lifetime)
            self._refresh[refresh] = (user, now + self.refresh_lifetime)
        return 200, {
            "access_token": access,
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "refresh_expires_in": int(self.refresh_lifetime),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": secrets.token_hex(8),
            "scope": "profile email",
        }
