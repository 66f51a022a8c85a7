"""The ``xarray-terrascope`` console script: the parser (one module per command group:
:mod:`.search`, :mod:`.export` for ``ndvi``, :mod:`.zonal`, :mod:`.login` for ``login``
and ``logout``, :mod:`.sandbox` for ``sandbox`` and ``demo``) and :func:`main`, which
runs the chosen command and prints a package error as one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xarray_terrascope.cli import export, login, sandbox, search, zonal
from xarray_terrascope.exceptions import TerrascopeError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the console script."""
    from xarray_terrascope._version import __version__

    parser = argparse.ArgumentParser(
        prog="xarray-terrascope",
        description="Terrascope Sentinel products as xarray data: search, export, "
        "parcel statistics, sandbox, demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )
    for group in (search, export, zonal, login, sandbox):  # the order of --help
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xarray-terrascope``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TerrascopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
