"""Arguments several commands share: the query (bbox, dates, cloud cover), the collection,
and the ``--out`` path (its parent directories created when the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xarray_terrascope.catalog.collections import DEFAULT_COLLECTION
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["add_collection_arg", "add_dates_args", "add_query_args", "output_path"]


def _bbox(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        return [float(p) for p in parts]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"bbox must be west,south,east,north in degrees, got {text!r}"
        ) from err


def add_dates_args(parser: argparse.ArgumentParser, *, example: str = "2025-05-01") -> None:
    """``--start``, ``--end`` and ``--max-cloud-cover``."""
    parser.add_argument("--start", help=f"first date, e.g. {example}")
    parser.add_argument("--end", help="last date (a date includes that whole day)")
    parser.add_argument("--max-cloud-cover", type=float, help="percent, inclusive")


def add_query_args(parser: argparse.ArgumentParser, *, bbox_required: bool) -> None:
    """``--bbox`` and the arguments of :func:`add_dates_args`."""
    parser.add_argument(
        "--bbox", type=_bbox, required=bbox_required, help="west,south,east,north in WGS84 degrees"
    )
    add_dates_args(parser)


def add_collection_arg(parser: argparse.ArgumentParser) -> None:
    """``--collection``, by default the package's (``DEFAULT_COLLECTION``)."""
    parser.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"collection id (default: {DEFAULT_COLLECTION})",
    )


def output_path(out: Path) -> Path:
    """``--out`` with its parent directories created; a one-line error when impossible."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(
            f"--out: cannot create the directory {str(out.parent)!r}: {err.strerror or err}"
        ) from err
    return out
