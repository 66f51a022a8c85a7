"""The opt-in refresh-token store of ``login(method="oidc", store=True)``: one JSON file
in the user's config directory (the ``config_dir`` option, else platformdirs'), readable
and writable by its owner only.

Written atomically (a new 0600 file in the same directory, then renamed over the old
one); on read, a file that its group or others may read or write, or that another user
owns, is refused with :class:`~xarray_terrascope.exceptions.CredentialStoreError` and
left as it is. ``logout()`` deletes it. It holds the refresh token, which is a password
for as long as it lives: it never holds the account's password.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from xarray_terrascope.exceptions import CredentialStoreError
from xarray_terrascope.options import get_options

__all__ = ["delete", "load", "path", "save"]

logger = logging.getLogger(__name__)

FILE_NAME = "oidc-refresh-token.json"


def path() -> Path:
    """Where the store is: ``<config dir>/oidc-refresh-token.json``."""
    base = get_options().config_dir
    if base is None:
        import platformdirs

        base = Path(platformdirs.user_config_dir("xarray-terrascope", appauthor=False))
    return base / FILE_NAME


def save(issuer: str, client_id: str, username: str, refresh_token: str) -> Path:
    """Write the store (mode 0600, atomically); returns its path."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps(
        {
            "issuer": issuer,
            "client_id": client_id,
            "username": username,
            "refresh_token": refresh_token,
        }
    ).encode()
    fd, tmp = tempfile.mkstemp(prefix=".oidc-", dir=target.parent)  # created 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    logger.info("Stored the Terrascope refresh token in %s", target)
    return target


def load(issuer: str, client_id: str) -> dict[str, Any] | None:
    """The stored entry for this provider and client, or None (no store, or another
    provider's).

    Raises
    ------
    CredentialStoreError
        When the file may be read or written by others than its owner, is owned by
        another user, or is not a store.
    """
    target = path()
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CredentialStoreError(
            f"Cannot open the Terrascope token store {str(target)!r} ({err.strerror}); "
            "delete it with xarray_terrascope.logout() and log in again."
        ) from err
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise CredentialStoreError(
                f"Refusing the Terrascope token store {str(target)!r}: it is owned by another "
                f"user (uid {info.st_uid}). Remove it, then log in again with store=True."
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise CredentialStoreError(
                f"Refusing the Terrascope token store {str(target)!r}: its mode is "
                f"{stat.S_IMODE(info.st_mode):04o}, so others may read it. Its token may have "
                "leaked: delete the file (xarray_terrascope.logout()) and log in again with "
                "store=True (the new file is 0600)."
            )
        raw = handle.read()
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("refresh_token"), str):
        raise CredentialStoreError(
            f"{str(target)!r} is not a Terrascope token store; delete it "
            "(xarray_terrascope.logout()) and log in again."
        )
    if entry.get("issuer") != issuer or entry.get("client_id") != client_id:
        return None
    return entry


def delete() -> bool:
    """Delete the store; True when there was one."""
    try:
        path().unlink()
    except FileNotFoundError:
        return False
    logger.info("Deleted the Terrascope token store %s", path())
    return True
