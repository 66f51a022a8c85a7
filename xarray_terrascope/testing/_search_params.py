"""Parsing and checking STAC item-search parameters, as stac-fastapi does."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cql2
import shapely
import shapely.geometry

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "ApiError",
    "SearchParams",
    "decode_token",
    "encode_token",
    "parse_datetime_interval",
    "sort_key",
]

DEFAULT_LIMIT = 10
MAX_LIMIT = 10000
#: Default order, as stac-fastapi-opensearch: newest first, ties by id then collection.
DEFAULT_SORT: tuple[tuple[str, bool], ...] = (
    ("datetime", True),
    ("id", True),
    ("collection", True),
)
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_TOKEN_PREFIX = "offset:"


class ApiError(Exception):
    """An error answered as JSON ``{"code": ..., "description": ...}``."""

    def __init__(
        self, status: int, code: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.headers = dict(headers or {})


def _bad(description: str) -> ApiError:
    return ApiError(400, "RequestValidationError", description)


def encode_token(offset: int) -> str:
    """Return the opaque pagination token for an offset."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{offset}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """Return the offset of a token made by :func:`encode_token`, or raise a 400."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not text.startswith(_TOKEN_PREFIX):
            raise ValueError(text)
        offset = int(text[len(_TOKEN_PREFIX) :])
        if offset < 0:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise ApiError(400, "InvalidQueryParameter", f"Invalid pagination token {token!r}") from err
    return offset


def _parse_instant(text: str) -> datetime:
    match = _RFC3339.match(text.strip())
    if match is None:
        raise _bad(f"Invalid RFC 3339 datetime {text!r} (e.g. '2025-05-16T10:46:51Z')")
    day, clock, fraction, zone = match.groups()
    fraction = (fraction or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}.{fraction}{zone}")
    except ValueError as err:
        raise _bad(f"Invalid datetime {text!r}: {err}") from err
    return moment.astimezone(UTC)


def parse_datetime_interval(value: Any) -> tuple[datetime | None, datetime | None, bool]:
    """Parse a STAC ``datetime``: an instant, ``a/b``, ``../b``, ``a/..``, ``a/`` or ``/b``.

    Returns
    -------
    (start, end, is_instant)
    """
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"datetime must be a non-empty string, got {value!r}")
    parts = value.strip().split("/")
    if len(parts) == 1:
        moment = _parse_instant(parts[0])
        return moment, moment, True
    if len(parts) != 2:
        raise _bad(f"Invalid datetime interval {value!r}")
    start, end = (None if p in ("", "..") else _parse_instant(p) for p in parts)
    if start is None and end is None:
        raise _bad("Double open-ended datetime intervals are not allowed")
    if start is not None and end is not None and start > end:
        raise _bad(f"Invalid datetime interval {value!r}: start is after end")
    return start, end, False


def _parse_bbox(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or len(value) not in (4, 6):
        raise _bad(f"bbox must have 4 (or 6) numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise _bad(f"bbox must contain numbers only, got {value!r}") from err
    if not all(math.isfinite(v) for v in numbers):
        raise _bad(f"bbox must contain finite numbers, got {value!r}")
    west, south, east, north = (numbers[:2] + numbers[3:5]) if len(numbers) == 6 else numbers
    if not (
        -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90
    ):
        raise _bad(f"bbox is outside [-180, -90, 180, 90]: {value!r}")
    if south > north:
        raise _bad(f"bbox south ({south}) is greater than north ({north})")
    if west > east:  # crosses the antimeridian
        return shapely.geometry.box(west, south, 180, north).union(
            shapely.geometry.box(-180, south, east, north)
        )
    return shapely.geometry.box(west, south, east, north)


def _parse_intersects(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise _bad(f"intersects is not valid JSON: {err}") from err
    try:
        geometry = shapely.geometry.shape(value)
    except Exception as err:
        raise _bad(f"intersects is not a valid GeoJSON geometry: {err}") from err
    if geometry.is_empty:
        raise _bad("intersects is an empty geometry")
    return geometry


def _parse_limit(value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(f"limit must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise _bad(f"limit must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return value


def _parse_sortby(value: Any) -> tuple[tuple[str, bool], ...]:
    if isinstance(value, str):  # GET: "-properties.datetime,+id" ("+" may arrive as " ")
        parts = []
        for part in value.split(","):
            part = part.strip()
            if part[:1] in "+-" and part:
                parts.append({"field": part[1:], "direction": "desc" if part[0] == "-" else "asc"})
            else:
                parts.append({"field": part, "direction": "asc"})
        value = parts
    if not isinstance(value, list) or not value:
        raise _bad(f"sortby must be a non-empty list of {{field, direction}}, got {value!r}")
    out = []
    for entry in value:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("field"), str)
            or not entry["field"].strip()
        ):
            raise _bad(f"Invalid sortby entry {entry!r}")
        direction = entry.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise _bad(f"sortby direction must be 'asc' or 'desc', got {direction!r}")
        field = entry["field"].strip()
        if field.startswith("properties."):
            field = field[len("properties.") :]
        out.append((field, direction == "desc"))
    fields = {f for f, _ in out}
    out += [(f, False) for f in ("id", "collection") if f not in fields]
    return tuple(out)


def sort_key(item: dict[str, Any], field: str) -> tuple[bool, Any]:
    """Sort key of ``item`` for ``field`` (``id``, ``collection`` or a property)."""
    value = item.get(field) if field in ("id", "collection") else item["properties"].get(field)
    return (value is None, value if value is not None else 0)


def _parse_filter(value: Any, lang: Any) -> Any:
    if lang not in (None, "cql2-json", "cql2-text"):
        raise _bad(f"filter-lang must be 'cql2-json' or 'cql2-text', got {lang!r}")
    try:
        if isinstance(value, dict):
            if lang == "cql2-text":
                raise ValueError("a JSON object is not cql2-text")
            expr = cql2.Expr(value)
        elif isinstance(value, str):
            is_json = lang == "cql2-json" or (lang is None and value.lstrip().startswith("{"))
            expr = cql2.parse_json(value) if is_json else cql2.parse_text(value)
        else:
            raise ValueError(f"filter must be an object or a string, got {value!r}")
        expr.validate()
    except Exception as err:
        raise ApiError(400, "InvalidQueryParameter", f"Invalid filter: {err}") from err
    return expr


#: Query-extension operators and their CQL2 counterparts (a LIKE pattern for the text ones).
_QUERY_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_QUERY_LIKE = {"startsWith": "{}%", "endsWith": "%{}", "contains": "%{}%"}


def _query_as_cql2(query: Any) -> dict[str, Any]:
    """The STAC Query extension's ``{"prop": {"op": value}}`` as one CQL2-JSON ``and``."""
    if isinstance(query, str):
        try:
            query = json.loads(query)
        except json.JSONDecodeError as err:
            raise _bad(f"query must be a JSON object: {err}") from err
    if not isinstance(query, dict) or not query:
        raise _bad(f"query must be an object {{property: {{operator: value}}}}, got {query!r}")
    args: list[dict[str, Any]] = []
    for name, ops in query.items():
        if not isinstance(ops, dict) or not ops:
            raise _bad(f"query[{name!r}] must be an object {{operator: value}}, got {ops!r}")
        prop = {"property": name}
        for op, value in ops.items():
            if op in _QUERY_OPS:
                args.append({"op": _QUERY_OPS[op], "args": [prop, value]})
            elif op in _QUERY_LIKE and isinstance(value, str):
                args.append({"op": "like", "args": [prop, _QUERY_LIKE[op].format(value)]})
            elif op == "in" and isinstance(value, list):
                args.append({"op": "in", "args": [prop, value]})
            else:
                raise _bad(f"Unsupported query operator {op!r} (or value {value!r}) for {name!r}")
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


@dataclass
class SearchParams:
    """Checked item-search parameters."""

    collections: set[str] | None = None
    ids: set[str] | None = None
    geometry: Any = None
    start: datetime | None = None
    end: datetime | None = None
    filter: Any = None
    sort: tuple[tuple[str, bool], ...] = DEFAULT_SORT
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def _build(cls, get: Any) -> SearchParams:
        params = cls()
        for name in ("collections", "ids"):
            value = get(name)
            if value is None:
                continue
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad(f"{name} must be a list of strings, got {value!r}")
            setattr(params, name, set(value))
        bbox, intersects = get("bbox"), get("intersects")
        if bbox is not None and intersects is not None:
            raise _bad("Only one of bbox and intersects can be given")
        if bbox is not None:
            params.geometry = _parse_bbox(bbox)
        elif intersects is not None:
            params.geometry = _parse_intersects(intersects)
        if get("datetime") is not None:
            params.start, params.end, _ = parse_datetime_interval(get("datetime"))
        if get("limit") is not None:
            params.limit = _parse_limit(get("limit"))
        if get("filter") is not None:
            crs = get("filter-crs")
            if crs not in (None, "http://www.opengis.net/def/crs/OGC/1.3/CRS84"):
                raise _bad(f"filter-crs {crs!r} is not supported; use CRS84")
            params.filter = _parse_filter(get("filter"), get("filter-lang"))
        if get("query") is not None:
            query = _parse_filter(_query_as_cql2(get("query")), "cql2-json")
            params.filter = query if params.filter is None else params.filter + query
        if get("sortby") is not None:
            params.sort = _parse_sortby(get("sortby"))
        if get("token") is not None:
            token = get("token")
            if not isinstance(token, str):
                raise ApiError(400, "InvalidQueryParameter", f"Invalid token {token!r}")
            params.offset = decode_token(token)
        return params

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SearchParams:
        """Parse a ``POST /search`` JSON body."""
        return cls._build(body.get)

    @classmethod
    def from_query(cls, args: dict[str, str]) -> SearchParams:
        """Parse ``GET`` query arguments (strings)."""
        return cls._build(args.get)

    def matches_datetime(self, stamp: str) -> bool:
        """Whether an item ``datetime`` string falls in the requested interval."""
        if self.start is None and self.end is None:
            return True
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return (self.start is None or moment >= self.start) and (
            self.end is None or moment <= self.end
        )

    def filter_matches(self, item: dict[str, Any]) -> bool:
        """Evaluate the CQL2 filter on an item (400 when it cannot be evaluated)."""
        try:
            return bool(self.filter.matches(item))
        except Exception as err:
            raise ApiError(
                400, "InvalidQueryParameter", f"The filter cannot be evaluated: {err}"
            ) from err
