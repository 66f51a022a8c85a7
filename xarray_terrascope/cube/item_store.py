"""The items of the cubes opened in this process, for ``ds.terrascope.items``: kept under a
random key that the Dataset's attrs hold (``terrascope_items_key``), at most
:data:`ITEMS_CACHE_SIZE` cubes' worth, as item dicts turned into ``pystac.Item`` when
first asked for."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from typing import Any, cast

import pystac

from xarray_terrascope.cache import BoundedCache

__all__ = ["ITEMS_CACHE_SIZE", "items_cache", "recall_items", "remember_items"]

#: How many cubes' items this process remembers for ``ds.terrascope.items``.
ITEMS_CACHE_SIZE = 32
items_cache: BoundedCache[str, list[pystac.Item | dict[str, Any]]] = BoundedCache(ITEMS_CACHE_SIZE)


def _new_lock_after_fork() -> None:
    items_cache.lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def remember_items(items: Sequence[pystac.Item | dict[str, Any]]) -> str:
    """Keep ``items`` (Items, or item dicts that :func:`recall_items` turns into Items
    when first asked) in this process under a new id (stored in the Dataset's attrs)."""
    key = secrets.token_hex(8)
    with items_cache.lock:
        items_cache.put(key, list(items))
    return key


def recall_items(key: str) -> list[pystac.Item] | None:
    """The items remembered under ``key`` in this process, or None."""
    with items_cache.lock:
        items = items_cache.get(key)
        if items is None or all(isinstance(item, pystac.Item) for item in items):
            return cast("list[pystac.Item] | None", items)
        built: list[pystac.Item | dict[str, Any]] = [
            item if isinstance(item, pystac.Item) else _item(item) for item in items
        ]
        items_cache.put(key, built)
        return cast("list[pystac.Item]", built)


def _item(d: dict[str, Any]) -> pystac.Item:
    """``d`` as an Item, ``d`` itself left as it is: ``migrate_to_latest`` works on a deep
    copy (pystac documents that it returns one), so the second deep copy that
    ``preserve_dict=True`` makes first is saved (about a quarter of the time of 148
    items)."""
    return pystac.Item.from_dict(d, migrate=True, preserve_dict=False)
