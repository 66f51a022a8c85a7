"""``xarray-terrascope search``: list a collection's items."""

from __future__ import annotations

import argparse
from typing import Any

from xarray_terrascope.catalog.collections import DEFAULT_COLLECTION
from xarray_terrascope.cli.arguments import add_query_args

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from xarray_terrascope.catalog.search import search

    items = search(
        args.collection,
        args.bbox,
        args.start,
        args.end,
        max_cloud_cover=args.max_cloud_cover,
        limit=args.limit,
    )
    print(f"{'datetime':<22} {'cloud %':>7}  id")
    for item in items:
        print(item_line(item))
    print(f"{len(items)} item(s)")
    if not items and args.bbox is not None:
        from xarray_terrascope.catalog.hints import swapped_bbox_hint

        hint = swapped_bbox_hint(
            args.collection, args.bbox, args.start, args.end, args.max_cloud_cover
        )
        if hint:
            print(hint.strip())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``search`` command to the console script's subcommands."""
    p = sub.add_parser("search", help="search a collection and list the items")
    p.add_argument(
        "collection",
        nargs="?",
        default=DEFAULT_COLLECTION,
        help=f"collection id (default: {DEFAULT_COLLECTION})",
    )
    add_query_args(p, bbox_required=False)
    p.add_argument("--limit", type=int, help="at most this many items, the earliest (default: all)")
    p.set_defaults(func=_run)


def item_line(item: Any) -> str:
    """An item's line: its acquisition time in UTC (the start of its interval when its
    ``datetime`` is null), cloud cover and id."""
    from xarray_terrascope.catalog.items import item_moment

    cloud = item.properties.get("eo:cloud_cover")
    cloud_text = f"{cloud:7.2f}" if cloud is not None else "      -"
    return f"{item_moment(item):%Y-%m-%dT%H:%M:%SZ}  {cloud_text}  {item.id}"
