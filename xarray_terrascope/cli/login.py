"""``xarray-terrascope login`` and ``logout``.

A command's process ends with the command, and with it a login held in memory: so
``login`` with OpenID Connect (the default) keeps the refresh token in the store of
``login(method="oidc", store=True)`` (a file readable by you only), which later
commands and scripts use; ``login --method basic`` only checks a username and password
(keep those in a netrc file or the environment). ``logout`` deletes the store. The
commands that read (``ndvi``, ``zonal``) log in with :func:`login_for_command`.
"""

from __future__ import annotations

import argparse
import getpass
import sys

__all__ = ["login_for_command", "register"]


def login_for_command() -> None:
    """How a command that reads logs in: with the stored OpenID Connect login when
    ``xarray-terrascope login`` left one (a refused one falls back to a password from the
    environment or netrc, never to a device prompt), else HTTP Basic from the environment
    or netrc, checked."""
    from xarray_terrascope.auth import login, store

    if store.path().exists():
        login(method="oidc", store=True, flow="password")
    else:
        login(validate=True)


def _show_code(url: str, user_code: str) -> None:
    print(f"To log in, open {url}\nand enter the code {user_code}", file=sys.stderr, flush=True)


def _run_login(args: argparse.Namespace) -> int:
    from xarray_terrascope.auth import login, store

    password = None
    if args.username is not None:  # never from the command line: it would show in ps
        password = getpass.getpass(f"Terrascope password for {args.username}: ")
    if args.method == "basic":
        creds = login(args.username, password)
        print(f"Logged in as {creds.username} (HTTP Basic; nothing stored)")
        return 0
    creds = login(
        args.username,
        password,
        method="oidc",
        flow=args.flow,
        store=not args.no_store,
        prompt=_show_code,
    )
    where = "not stored" if args.no_store else f"refresh token stored in {store.path()}"
    print(f"Logged in as {creds.username} with OpenID Connect ({where})")
    return 0


def _run_logout(args: argparse.Namespace) -> int:
    from xarray_terrascope.auth import logout, store

    had = store.path().exists()
    logout()
    print(f"Deleted {store.path()}" if had else "No stored login to delete")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``login`` and ``logout`` commands to the console script's subcommands."""
    p = sub.add_parser(
        "login",
        help="log in (OpenID Connect: keep the refresh token for later commands)",
    )
    p.add_argument(
        "--method",
        choices=("oidc", "basic"),
        default="oidc",
        help="oidc (default): tokens, stored; basic: check a username and password",
    )
    p.add_argument(
        "--flow",
        choices=("auto", "device", "password"),
        default="auto",
        help="OIDC: password when one is found (environment, netrc, --username), else the "
        "device flow (a URL and code to open in a browser)",
    )
    p.add_argument("--username", help="ask for this account's password (not echoed)")
    p.add_argument("--no-store", action="store_true", help="OIDC: do not keep the refresh token")
    p.set_defaults(func=_run_login)
    q = sub.add_parser("logout", help="delete the stored login")
    q.set_defaults(func=_run_logout)
