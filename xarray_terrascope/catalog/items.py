"""Small helpers on STAC items shared by the search, the planner and the engine."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

__all__ = ["is_items", "item_day", "item_moment"]


def is_items(obj: Any) -> bool:
    """Whether ``obj`` is an ItemCollection or a non-empty sequence of pystac Items.

    Examples
    --------
    >>> is_items([5.0, 51.2, 5.1, 51.3])
    False
    """
    import pystac

    if isinstance(obj, pystac.ItemCollection):
        return True
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(isinstance(item, pystac.Item) for item in obj)
    )


def item_moment(item: Any) -> datetime:
    """The acquisition time of a pystac Item or item dict, in UTC.

    ``datetime``, else the start of the ``start_datetime``/``end_datetime`` interval
    (STAC allows ``datetime: null`` with an interval).

    Raises
    ------
    InvalidArgumentError
        When the item has neither.
    """
    from xarray_terrascope.exceptions import InvalidArgumentError

    if isinstance(item, dict):
        props = item.get("properties") or {}
        text = props.get("datetime") or props.get("start_datetime")
        item_id = item.get("id")
        moment = _parse(text) if text else None
    else:
        moment = item.datetime or item.common_metadata.start_datetime
        item_id = item.id
    if moment is None:
        raise InvalidArgumentError(
            f"Item {item_id!r} has neither a datetime nor a start_datetime; it cannot be "
            "placed on the time axis"
        )
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def item_day(item: Any) -> date:
    """The UTC acquisition date of an item (see :func:`item_moment`)."""
    return item_moment(item).date()


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
