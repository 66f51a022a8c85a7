"""``xarray-terrascope collections``: list the catalogue's collections."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from xarray_terrascope.catalog.collections import COLLECTIONS
    from xarray_terrascope.catalog.search import list_collections

    ids = list_collections()
    width = max((len(i) for i in ids), default=0)
    for collection in ids:
        info = COLLECTIONS.get(collection)
        assets = ", ".join(info.assets) if info is not None else ""
        print(f"{collection:<{width}}  {assets}".rstrip())
    print(f"{len(ids)} collection(s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``collections`` command to the console script's subcommands."""
    p = sub.add_parser(
        "collections",
        help="list the catalogue's collections (with the default assets of those the "
        "package knows)",
    )
    p.set_defaults(func=_run)
