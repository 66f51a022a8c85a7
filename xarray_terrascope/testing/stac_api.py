"""A stac-fastapi-like STAC API over the synthetic world, as a werkzeug WSGI app.

Routes: ``GET /``, ``/conformance``, ``/queryables``, ``/collections``,
``/collections/{id}``, ``/collections/{id}/items``, ``/collections/{id}/items/{item}``
and ``GET``/``POST /search`` with ``collections``, ``ids``, ``bbox``, ``intersects``,
``datetime``, ``limit`` (default 10, 1..10000), ``filter`` (CQL2-JSON, or CQL2-text
on GET), ``query`` (the Query extension), ``sortby`` and token pagination through
``next`` links. Errors are JSON ``{"code": ..., "description": ...}`` as stac-fastapi
answers them. The search parameters are parsed and checked in :mod:`._search_params`.

Faults: ``fault_rate`` (a fraction of requests answered 503, as a busy deployment
behind a proxy does) and :meth:`StacApi.fail_next` (the next requests answered with a
given status); ``conforms_to`` holds the declared conformance classes (a test may
declare a later STAC API version, as stac-fastapi 5+ does).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import shapely
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ._search_params import ApiError, SearchParams, encode_token, sort_key
from ._stac_toc import OIDC_CONFIG_PATH
from .world import World

__all__ = ["CONFORMANCE", "StacApi", "role_for"]

logger = logging.getLogger(__name__)

GEOJSON = "application/geo+json"
JSON = "application/json"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#filter",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
]
_QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"


def _json(body: Any, status: int = 200, mimetype: str = JSON) -> Response:
    return Response(json.dumps(body), status=status, mimetype=mimetype)


def role_for(collection: str) -> str:
    """The sandbox's name of the role that may read a protected collection (the real
    realm's role names are not public)."""
    return f"read:{collection}"


class StacApi:
    """WSGI application serving the world's collections and items.

    Parameters
    ----------
    world : World
        The synthetic world.
    download_root : str
        Root of the download server (ends with ``/``); asset hrefs start with it.
    latency : float
        Seconds slept before answering each request (settable at runtime).
    fault_rate : float
        Fraction of requests answered 503 (settable at runtime).
    seed : int
        Seeds the fault draws.

    Attributes
    ----------
    protected : set of str
        Collections readable with an OIDC role only, as Terrascope's (settable at
        runtime): a request naming one answers 401 with ``WWW-Authenticate: Bearer``
        without a valid Bearer token and 403 when the token's user lacks the role
        :func:`role_for` names; a search that names no collection leaves their items out.
    """

    def __init__(
        self,
        world: World,
        download_root: str,
        *,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.world = world
        self.download_root = download_root
        self.latency = float(latency)
        self.fault_rate = self._default_fault_rate = float(fault_rate)
        self.conforms_to = list(CONFORMANCE)
        self.protected: set[str] = set()
        #: Roles of a valid access token, None when it is not one (the sandbox wires the
        #: download server's token issuer here); None: every token is refused.
        self.token_roles: Callable[[str], set[str] | None] | None = None
        self.requests = self.injected = 0
        self._faults: list[int] = []  # statuses of the next requests to fail
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        for cid in world.collections:
            self._items.extend(world.item_dicts(cid, download_root))
        self._by_id = {(i["collection"], i["id"]): i for i in self._items}
        # footprints: one per tile, but a TOC item's leaves out what lies beyond a swath
        # edge, so the items share the few distinct ones
        self._footprints: dict[str, Any] = {}
        self._footprint_of: list[str] = []
        for item in self._items:
            key = json.dumps(item["geometry"]["coordinates"])
            if key not in self._footprints:
                self._footprints[key] = shapely.geometry.shape(item["geometry"])
            self._footprint_of.append(key)
        self._urls = Map(
            [
                Rule("/", endpoint="landing", methods=["GET"]),
                Rule("/conformance", endpoint="conformance", methods=["GET"]),
                Rule("/queryables", endpoint="queryables", methods=["GET"]),
                Rule("/collections", endpoint="collections", methods=["GET"]),
                Rule("/collections/<cid>", endpoint="collection", methods=["GET"]),
                Rule("/collections/<cid>/queryables", endpoint="queryables", methods=["GET"]),
                Rule("/collections/<cid>/items", endpoint="collection_items", methods=["GET"]),
                Rule("/collections/<cid>/items/<iid>", endpoint="item", methods=["GET"]),
                Rule("/search", endpoint="search", methods=["GET", "POST"]),
            ],
            strict_slashes=False,
        )

    # --- WSGI ---------------------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (a JSON error body)."""
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        with self._lock:
            self._faults.extend([int(status)] * int(count))

    def reset_faults(self) -> None:
        """The constructor's fault rate, no pending faults, the declared conformance
        classes, no protected collection, the counts at 0."""
        with self._lock:
            self._faults.clear()
            self.fault_rate = self._default_fault_rate
            self.conforms_to = list(CONFORMANCE)
            self.protected = set()
            self.requests = self.injected = 0

    def _fault(self) -> int | None:
        with self._lock:
            self.requests += 1
            fault = None
            if self._faults:
                fault = self._faults.pop(0)
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                fault = 503
            self.injected += fault is not None
            return fault

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        if self.latency > 0:
            time.sleep(self.latency)
        fault = self._fault()
        if fault is not None:
            body = {"code": "InjectedFault", "description": f"injected HTTP {fault}"}
            return _json(body, fault)(environ, start_response)
        adapter = self._urls.bind_to_environ(environ)
        try:
            endpoint, args = adapter.match()
            response = getattr(self, f"_{endpoint}")(request, **args)
        except ApiError as err:
            response = _json({"code": err.code, "description": err.description}, err.status)
            response.headers.extend(err.headers)
        except HTTPException as err:
            code = {404: "NotFoundError", 405: "MethodNotAllowed"}.get(err.code or 500, "HTTPError")
            response = _json({"code": code, "description": err.description}, err.code or 500)
        except Exception:  # pragma: no cover - a bug in the sandbox
            logger.exception("STAC API error on %s %s", request.method, request.path)
            response = _json({"code": "InternalServerError", "description": "sandbox bug"}, 500)
        return response(environ, start_response)

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _base(request: Request) -> str:
        return request.host_url  # ends with "/"

    def _with_auth(self, item: dict[str, Any]) -> dict[str, Any]:
        """A protected collection's item as Terrascope's 2026 items say how to read them:
        ``auth:schemes`` (the realm's OpenID Connect configuration on the download
        server) and ``auth:refs`` on each asset."""
        root = self.download_root.split("/download/")[0]
        out = dict(item)
        out["properties"] = {
            **item["properties"],
            "auth:schemes": {
                "oidc": {
                    "type": "openIdConnect",
                    "openIdConnectUrl": f"{root}/{OIDC_CONFIG_PATH}",
                }
            },
        }
        out["assets"] = {k: {**a, "auth:refs": ["oidc"]} for k, a in item["assets"].items()}
        return out

    def _collection_doc(self, base: str, cid: str) -> dict[str, Any]:
        doc = json.loads(json.dumps(self.world.collections[cid]))
        doc["links"] = [
            {"rel": "self", "href": f"{base}collections/{cid}", "type": JSON},
            {"rel": "parent", "href": base, "type": JSON},
            {"rel": "root", "href": base, "type": JSON},
            {"rel": "items", "href": f"{base}collections/{cid}/items", "type": GEOJSON},
            {
                "rel": _QUERYABLES_REL,
                "href": f"{base}collections/{cid}/queryables",
                "type": "application/schema+json",
            },
            *doc.get("links", []),
        ]
        return doc

    def _with_links(self, base: str, item: dict[str, Any]) -> dict[str, Any]:
        cid, iid = item["collection"], item["id"]
        out = dict(item)
        if cid in self.protected and "auth:schemes" not in item["properties"]:
            out = self._with_auth(out)
        out["links"] = [
            {"rel": "self", "href": f"{base}collections/{cid}/items/{iid}", "type": GEOJSON},
            {"rel": "parent", "href": f"{base}collections/{cid}", "type": JSON},
            {"rel": "collection", "href": f"{base}collections/{cid}", "type": JSON},
            {"rel": "root", "href": base, "type": JSON},
        ]
        return out

    def _require_collection(self, cid: str, request: Request) -> None:
        if cid not in self.world.collections:
            raise ApiError(404, "NotFoundError", f"Collection {cid} not found")
        self._require_access(request, {cid})

    def _require_access(self, request: Request, cids: set[str] | None) -> None:
        """For a protected collection: 401 without a valid Bearer token, 403 when its
        user lacks the collection's role (:func:`role_for`)."""
        locked = sorted((cids or set()) & self.protected)
        if not locked:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "Unauthorized",
                f"Collection {locked[0]} needs an access token",
                {"WWW-Authenticate": 'Bearer realm="terrascope"'},
            )
        roles = self.token_roles(token.strip()) if self.token_roles is not None else None
        if roles is None:
            raise ApiError(
                401,
                "Unauthorized",
                "Invalid or expired access token",
                {"WWW-Authenticate": 'Bearer realm="terrascope", error="invalid_token"'},
            )
        for cid in locked:
            if role_for(cid) not in roles:
                raise ApiError(
                    403, "Forbidden", f"Missing role {role_for(cid)!r} to read collection {cid}"
                )

    # --- endpoints ----------------------------------------------------------------------

    def _landing(self, request: Request) -> Response:
        base = self._base(request)
        links = [
            {"rel": "self", "href": base, "type": JSON},
            {"rel": "root", "href": base, "type": JSON},
            {"rel": "conformance", "href": f"{base}conformance", "type": JSON},
            {"rel": "data", "href": f"{base}collections", "type": JSON},
            {"rel": "search", "href": f"{base}search", "type": GEOJSON, "method": "GET"},
            {"rel": "search", "href": f"{base}search", "type": GEOJSON, "method": "POST"},
            {
                "rel": _QUERYABLES_REL,
                "href": f"{base}queryables",
                "type": "application/schema+json",
            },
        ]
        links += [
            {
                "rel": "child",
                "href": f"{base}collections/{cid}",
                "type": JSON,
                "title": doc["title"],
            }
            for cid, doc in self.world.collections.items()
        ]
        return _json(
            {
                "type": "Catalog",
                "stac_version": "1.0.0",
                "id": "terrascope-sandbox",
                "title": "Terrascope STAC API (xarray-terrascope sandbox)",
                "description": "Offline stand-in for stac.terrascope.be with synthetic data.",
                "conformsTo": self.conforms_to,
                "links": links,
            }
        )

    def _conformance(self, request: Request) -> Response:
        return _json({"conformsTo": self.conforms_to})

    def _queryables(self, request: Request, cid: str | None = None) -> Response:
        if cid is not None:
            self._require_collection(cid, request)
        props = {
            "id": {"type": "string"},
            "collection": {"type": "string"},
            "datetime": {"type": "string", "format": "date-time"},
            "geometry": {"$ref": "https://geojson.org/schema/Geometry.json"},
            "eo:cloud_cover": {"type": "number", "minimum": 0, "maximum": 100},
            "platform": {"type": "string"},
            "sat:relative_orbit": {"type": "integer"},
            "mgrs:utm_zone": {"type": "integer"},
            "mgrs:latitude_band": {"type": "string"},
            "mgrs:grid_square": {"type": "string"},
        }
        return _json(
            {
                "$schema": "https://json-schema.org/draft/2019-09/schema",
                "$id": f"{self._base(request)}queryables",
                "type": "object",
                "title": "Queryables",
                "properties": props,
                "additionalProperties": True,
            },
            mimetype="application/schema+json",
        )

    def _collections(self, request: Request) -> Response:
        base = self._base(request)
        docs = [self._collection_doc(base, cid) for cid in self.world.collections]
        return _json(
            {
                "collections": docs,
                "links": [
                    {"rel": "root", "href": base, "type": JSON},
                    {"rel": "self", "href": f"{base}collections", "type": JSON},
                ],
                "numberMatched": len(docs),
                "numberReturned": len(docs),
            }
        )

    def _collection(self, request: Request, cid: str) -> Response:
        self._require_collection(cid, request)
        return _json(self._collection_doc(self._base(request), cid))

    def _item(self, request: Request, cid: str, iid: str) -> Response:
        self._require_collection(cid, request)
        item = self._by_id.get((cid, iid))
        if item is None:
            raise ApiError(404, "NotFoundError", f"Item {iid} in collection {cid} not found")
        return _json(self._with_links(self._base(request), item), mimetype=GEOJSON)

    def _collection_items(self, request: Request, cid: str) -> Response:
        self._require_collection(cid, request)
        args = {
            k: v
            for k, v in request.args.items()
            if k in ("bbox", "datetime", "limit", "token", "sortby")
        }
        params = SearchParams.from_query({**args, "collections": cid})
        return self._page(
            request, params, f"{self._base(request)}collections/{cid}/items", args, post=False
        )

    def _search(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(request.get_data(as_text=True) or "{}")
            except ValueError as err:
                raise ApiError(400, "RequestValidationError", f"Invalid JSON body: {err}") from err
            if not isinstance(body, dict):
                raise ApiError(400, "RequestValidationError", "The body must be a JSON object")
            params = SearchParams.from_body(body)
            self._require_access(request, params.collections)
            return self._page(request, params, f"{self._base(request)}search", body, post=True)
        args = dict(request.args.items())
        params = SearchParams.from_query(args)
        self._require_access(request, params.collections)
        return self._page(request, params, f"{self._base(request)}search", args, post=False)

    # --- searching ------------------------------------------------------------------------

    def _match(self, params: SearchParams) -> list[dict[str, Any]]:
        hits = None
        if params.geometry is not None:
            hits = {k for k, shape in self._footprints.items() if shape.intersects(params.geometry)}
        found = []
        for item, footprint in zip(self._items, self._footprint_of, strict=True):
            if params.collections is not None and item["collection"] not in params.collections:
                continue
            if params.collections is None and item["collection"] in self.protected:
                continue  # an unscoped search shows what the caller may read
            if params.ids is not None and item["id"] not in params.ids:
                continue
            if hits is not None and footprint not in hits:
                continue
            if not params.matches_datetime(item["properties"]["datetime"]):
                continue
            if params.filter is not None and not params.filter_matches(item):
                continue
            found.append(item)
        for field, descending in reversed(params.sort):
            found.sort(key=functools.partial(sort_key, field=field), reverse=descending)
        return found

    def _page(
        self, request: Request, params: SearchParams, url: str, raw: dict[str, Any], *, post: bool
    ) -> Response:
        found = self._match(params)
        page = found[params.offset : params.offset + params.limit]
        base = self._base(request)
        links: list[dict[str, Any]] = [
            {"rel": "root", "href": base, "type": JSON},
            {"rel": "self", "href": url, "type": GEOJSON},
        ]
        end = params.offset + len(page)
        if end < len(found):
            token = encode_token(end)
            if post:
                links.append(
                    {
                        "rel": "next",
                        "href": url,
                        "type": GEOJSON,
                        "method": "POST",
                        "body": {**raw, "token": token},
                        "merge": False,
                    }
                )
            else:
                query = urlencode(
                    {**{k: v for k, v in raw.items() if k != "token"}, "token": token}
                )
                links.append(
                    {"rel": "next", "href": f"{url}?{query}", "type": GEOJSON, "method": "GET"}
                )
        return _json(
            {
                "type": "FeatureCollection",
                "features": [self._with_links(base, item) for item in page],
                "links": links,
                "numberMatched": len(found),
                "numberReturned": len(page),
            },
            mimetype=GEOJSON,
        )
