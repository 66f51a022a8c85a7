"""OpenID Connect tokens as the package holds them: :class:`TokenHolder` keeps one
login's access and refresh tokens in memory and refreshes the access token before it
expires, once for every thread that needs it; :class:`TokenCredentials` is what
``login(method="oidc")`` makes the process default, in place of a
:class:`~xarray_terrascope.auth.Credentials`.

Neither shows a token in its ``repr`` or pickles. A ``dask.distributed`` worker gets a
holder of its own from the credentials plugin (:meth:`TokenHolder.snapshot`, never from
the task graph), and refreshes it itself.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from xarray_terrascope.auth import oidc
from xarray_terrascope.exceptions import AuthenticationError

__all__ = ["TokenCredentials", "TokenHolder"]

logger = logging.getLogger(__name__)

#: The clock token lifetimes are counted on (monotonic seconds). Tests may put a
#: settable clock here, shared with the sandbox's token issuer.
clock: Callable[[], float] = time.monotonic
#: Refresh when less than this many seconds, or :data:`REFRESH_FRACTION` of the
#: token's lifetime, whichever is less, are left.
REFRESH_MARGIN = 60.0
REFRESH_FRACTION = 0.2


class TokenHolder:
    """The tokens of one OpenID Connect login, refreshed before they expire.

    Thread-safe: :meth:`access_token` refreshes under a lock, so threads that find the
    token stale together cause one refresh. A refresh the provider refuses (the refresh
    token expired or was revoked, the account disabled) makes the holder dead: that call
    and every later one raise :class:`~xarray_terrascope.AuthenticationError` saying to
    log in again, without asking the provider again.

    Parameters
    ----------
    provider : Provider
        Where tokens are refreshed.
    answer : dict
        The token endpoint's answer (``access_token``, ``expires_in``, ``refresh_token``...).
    """

    def __init__(self, provider: oidc.Provider, answer: dict[str, Any]) -> None:
        self._provider = provider
        self._lock = threading.Lock()
        self._dead: str | None = None
        #: Refreshes this holder made (successful ones).
        self.refreshes = 0
        #: Grows by one with each new access token (not a secret; names the token).
        self.generation = 0
        self._take(answer)

    def _take(self, answer: dict[str, Any]) -> None:
        now = clock()
        self._access = str(answer["access_token"])
        refresh = answer.get("refresh_token")
        if refresh:
            self._refresh = str(refresh)
        elif self.generation == 0:
            self._refresh = ""
        self._lifetime = max(float(answer.get("expires_in") or 300.0), 0.0)
        self._expires = now + self._lifetime
        self.generation += 1

    @property
    def provider(self) -> oidc.Provider:
        """The identity provider."""
        return self._provider

    def __repr__(self) -> str:
        left = self._expires - clock()
        state = "dead" if self._dead else f"expires in {left:.0f} s"
        return f"TokenHolder(issuer={self._provider.issuer!r}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "TokenHolder holds tokens and cannot be pickled: a dask cluster gets them "
            "through the credentials plugin, never in a graph"
        )

    def _margin(self) -> float:
        return min(REFRESH_MARGIN, REFRESH_FRACTION * self._lifetime)

    def needs_refresh(self) -> bool:
        """Whether the access token is to be refreshed now (cheap; no lock)."""
        return self._dead is None and clock() >= self._expires - self._margin()

    def access_token(self) -> str:
        """The access token, refreshed first when it is about to expire.

        Raises
        ------
        AuthenticationError
            When the refresh is refused, now or before.
        TerrascopeError
            When the token endpoint cannot be reached (the next call tries again).
        """
        with self._lock:
            self._check_alive()
            if clock() >= self._expires - self._margin():
                self._refresh_locked()
            return self._access

    def refresh_if_needed(self) -> None:
        """Refresh now when the access token is about to expire (for a worker thread,
        ahead of building requests)."""
        self.access_token()

    def renew(self, generation: int) -> None:
        """The access token of ``generation`` was refused (a 401): refresh, unless
        another thread has done so since."""
        with self._lock:
            self._check_alive()
            if self.generation == generation:
                self._refresh_locked()

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise AuthenticationError(self._dead)

    def _refresh_locked(self) -> None:
        if not self._refresh:
            self._dead = (
                "The Terrascope access token expired and this login has no refresh token; "
                "log in again with xarray_terrascope.login(method='oidc')."
            )
            raise AuthenticationError(self._dead)
        try:
            answer = oidc.refresh(self._provider, self._refresh)
        except AuthenticationError as err:
            self._dead = str(err)
            logger.warning("Refreshing the Terrascope access token was refused; log in again")
            raise
        self._take(answer)
        self.refreshes += 1
        logger.debug("Refreshed the Terrascope access token (%d so far)", self.refreshes)

    def refresh_token(self) -> str:
        """The refresh token (for the opt-in store; never log it)."""
        with self._lock:
            return self._refresh

    def snapshot(self) -> tuple[Any, ...]:
        """What another process needs to hold these tokens: the provider, the tokens and
        the access token's expiry in wall-clock seconds (clocks of processes differ)."""
        with self._lock:
            left = self._expires - clock()
            p = self._provider
            return (
                (p.issuer, p.token_endpoint, p.device_endpoint, p.client_id),
                self._access,
                self._refresh,
                time.time() + left,
                self._lifetime,
            )

    @classmethod
    def from_snapshot(cls, packed: tuple[Any, ...]) -> TokenHolder:
        """A holder in this process from :meth:`snapshot`'s tuple."""
        provider_fields, access, refresh, expires_wall, lifetime = packed
        holder = cls(
            oidc.Provider(*provider_fields),
            {"access_token": access, "refresh_token": refresh, "expires_in": lifetime},
        )
        holder._expires = clock() + (expires_wall - time.time())
        return holder


def _name_in(access_token: str) -> str | None:
    """``preferred_username`` of a JWT access token (Keycloak's), read without checking
    the signature (it only names the login); None for an opaque token."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    name = payload.get("preferred_username") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else None


class TokenCredentials:
    """An OpenID Connect login: who, and the :class:`TokenHolder` of its tokens.

    What ``login(method="oidc")`` returns and keeps as the process default. ``repr``
    shows no token; instances cannot be pickled.

    Attributes
    ----------
    username : str
        The account (``"?"`` when a device login's token does not name it).
    token : str
        Opaque random id of this login; what dask graphs carry instead of any secret.
    holder : TokenHolder
    """

    __slots__ = ("__weakref__", "holder", "token", "username")

    def __init__(self, username: str | None, holder: TokenHolder, token: str | None = None):
        self.holder = holder
        self.username = username or _name_in(holder._access) or "?"
        self.token = token or secrets.token_hex(8)

    def __repr__(self) -> str:
        return (
            f"TokenCredentials(username={self.username!r}, issuer={self.holder.provider.issuer!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            "xarray_terrascope TokenCredentials cannot be pickled: tokens never travel in "
            "pickles or dask graphs (a cluster gets them through the credentials plugin)."
        )
