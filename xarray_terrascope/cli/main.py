"""The ``xarray-terrascope`` console script: the parser (one module per command group:
:mod:`.collections`, :mod:`.search`, :mod:`.export` for ``ndvi``, :mod:`.zonal`,
:mod:`.login` for ``login`` and ``logout``, :mod:`.sandbox` for ``sandbox`` and ``demo``)
and :func:`main`, which runs the chosen command and prints a package error as one line."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from xarray_terrascope.cli import collections, export, login, sandbox, search, zonal
from xarray_terrascope.exceptions import TerrascopeError

__all__ = ["build_parser", "main"]

#: Options whose value may start with a minus sign (a western longitude): argparse
#: would take ``--bbox -1.0,51.2,...``'s value for an option of its own.
_SIGNED_VALUE_OPTIONS = ("--bbox",)
_NEGATIVE = re.compile(r"-\.?\d")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """Join ``--bbox -1.0,51.2,-0.9,51.3`` into ``--bbox=-1.0,51.2,-0.9,51.3``.

    argparse reads an argument that starts with ``-`` as an option unless it is a single
    number, so the value of ``--bbox`` with a western longitude first is lost ("expected
    one argument"). Only the arguments after an option of ``_SIGNED_VALUE_OPTIONS`` that
    start with a minus and a digit are joined; the rest is untouched.

    Examples
    --------
    >>> attach_negative_values(["search", "--bbox", "-1,51.2,-0.9,51.3", "--limit", "2"])
    ['search', '--bbox=-1,51.2,-0.9,51.3', '--limit', '2']
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _SIGNED_VALUE_OPTIONS and i + 1 < len(args) and _NEGATIVE.match(args[i + 1]):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _dask_logging(level: int) -> None:
    """Give dask.distributed's loggers the command's level: distributed sets its own to
    INFO when it is imported, and a cluster's start, life and shutdown (with the
    tracebacks of the connections it closes) would fill the terminal without ``-v``."""
    import dask

    name = logging.getLevelName(max(level, logging.INFO)).lower()
    dask.config.set({"logging.distributed": name})  # read when distributed is imported
    if "distributed" in sys.modules:
        logging.getLogger("distributed").setLevel(max(level, logging.INFO))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the console script."""
    from xarray_terrascope._version import __version__

    parser = argparse.ArgumentParser(
        prog="xarray-terrascope",
        description="Terrascope Sentinel products as xarray data: collections, search, export, "
        "parcel statistics, sandbox, demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )
    for group in (collections, search, export, zonal, login, sandbox):  # the order of --help
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xarray-terrascope``."""
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _dask_logging(level)
    try:
        return args.func(args)
    except TerrascopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except EOFError:  # a prompt (the password) that got no input
        print("\nerror: no input (the command asks for it on the terminal)", file=sys.stderr)
        return 2
