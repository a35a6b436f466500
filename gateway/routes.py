"""HTTP routes of the TMF678 API: each endpoint is given the reader or service it uses.

A list route parses the TMF630 query, asks its reader, projects `fields` and
serialises; the other routes do the same for one resource, a PATCH, a bill request or a
hub. Methods the OAS does not define on a path answer 405, as a TMF `Error`.

Reads (GET by id, list pages) carry a strong `ETag` of the body they send (the `fields`
projection included) and answer `If-None-Match` with `304`. When the read cache served
them they may be kept by the caller: `Cache-Control: private, max-age=<TTL>` beside the
`Age` the read layer adds (gateway/request_scope.py); otherwise, as every other answer,
`no-store` (gateway/guards.py). What was rendered of a cache entry is kept with it
(gateway/cache.py `rendered`), so a hit is neither projected nor serialised again.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.access import Access, scoped_query, visible
from gateway.cache import Entry, Rendered, rendered, rendering
from gateway.config import PagingSettings
from gateway.errors import ApiError, not_found
from gateway.events import HubService
from gateway.fields import compile_fields, project
from gateway.oas import attribute_types
from gateway.on_demand import OnDemandService
from gateway.query import parse_fields, parse_query
from gateway.reads import Reader
from gateway.request_scope import RequestScope, current_request
from gateway.resources import API_PREFIX, CUSTOMER_BILL_ON_DEMAND, ResourceType
from gateway.writes import Patcher, PatchRequest, etag

Endpoint = Callable[[Request], Awaitable[Response]]


_CONTENT_TYPE = (b"content-type", b"application/json")
# What gateway/guards.py would add to every answer, sent by the read routes themselves.
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """The absolute API root for `href`s: the configured public URL, or the request's."""

    public_base_url: str | None

    def __call__(self, request: Request) -> str:
        if self.public_base_url:
            return self.public_base_url + API_PREFIX
        scope = request.scope
        for name, value in scope["headers"]:
            if name == b"host":  # what `request.url` would use, without building it
                host = value.decode("latin-1")
                return f"{scope['scheme']}://{host}{scope.get('root_path', '')}{API_PREFIX}"
        url = request.url
        return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}{API_PREFIX}"


def _projection(fields: tuple[str, ...] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Cuts a resource to the `fields` the caller asked for (all of it without `fields`)."""
    if fields is None:
        return lambda item: item
    tree = compile_fields(fields)
    return lambda item: project(item, tree)


#: An entity tag in an `If-None-Match` list (RFC 9110 section 8.8.3), or `*`.
_ENTITY_TAG = re.compile(r'\*|(?:W/)?"[^"]*"')


def none_match(header: str, tag: str) -> bool:
    """Whether `If-None-Match: header` names `tag`: the weak comparison of RFC 9110."""
    opaque = tag.removeprefix("W/")
    return any(
        candidate == "*" or candidate.removeprefix("W/") == opaque
        for candidate in _ENTITY_TAG.findall(header)
    )


class _ReadResponse(Response):
    """A read's answer from bytes rendered before: its headers are given as they go out."""

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = raw_headers


def read_response(
    request: Request,
    body: Rendered,
    state: RequestScope | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> Response:
    """A read's answer: the body with its validators, or `304` when the caller has it.

    It also says how the read cache served it (`state`, gateway/request_scope.py).
    """
    raw = [body.etag_header, _NOSNIFF, *headers]
    if state is not None and state.cache is not None and state.ttl is not None:
        # Answers depend on the caller's token (its account scope): private caches only.
        raw.append((b"cache-control", b"private, max-age=%d" % state.ttl))
        raw += state.headers()
    else:
        raw.append(_NO_STORE)
        if state is not None:
            raw += state.headers()
    for name, value in request.scope["headers"]:
        if name == b"if-none-match" and none_match(value.decode("latin-1"), body.etag):
            return _ReadResponse(304, b"", raw)
    raw += (body.length_header, _CONTENT_TYPE)
    return _ReadResponse(200, body.body, raw)


def _marked(error: ApiError, state: RequestScope | None) -> ApiError:
    """`error`, saying how the read cache served the read that led to it."""
    if state is not None:
        error.headers.update((k.decode(), v.decode()) for k, v in state.headers())
    return error


def _entry(state: RequestScope | None) -> Entry | None:
    return None if state is None else state.entry


def _fields(request: Request, attributes: Any) -> tuple[str, ...] | None:
    if not request.scope["query_string"]:
        return None
    return parse_fields(request.query_params.get("fields"), attributes)


def list_route(
    resource: ResourceType, reader: Reader, paging: PagingSettings, base: BaseUrl, access: Access
) -> Endpoint:
    attributes = attribute_types(resource.schema)

    async def list_resources(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.read)
        query = parse_query(
            request.url.query,
            attributes,
            default_limit=paging.default_limit,
            max_limit=paging.max_limit,
        )
        mine = scoped_query(query, resource, caller)
        root = base(request)
        page = await reader.list(mine, root) if mine else ([], 0)
        items, total = page

        def render() -> Rendered:
            shown = items if query.fields is None else list(map(_projection(query.fields), items))
            # The page's validator covers its total too, which a change elsewhere moves.
            return rendering(orjson.dumps(shown), etag({"items": shown, "total": total}, root))

        state = current_request()
        body = rendered(_entry(state), page, query.fields, render)
        counts = ((b"x-total-count", b"%d" % total), (b"x-result-count", b"%d" % len(items)))
        return read_response(request, body, state, counts)

    list_resources.__name__ = f"list_{resource.collection}"
    return list_resources


def get_route(resource: ResourceType, reader: Reader, base: BaseUrl, access: Access) -> Endpoint:
    attributes = attribute_types(resource.schema)

    async def get_resource(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.read)
        ident = request.path_params["id"]
        fields = _fields(request, attributes)
        root = base(request)
        item = await reader.get(ident, root)
        state = current_request()
        if item is None or not visible(item, resource, caller):
            raise _marked(not_found(resource.collection, ident), state)  # before any 304

        def render() -> Rendered:
            # Without `fields`, the tag is the one PATCH takes in `If-Match`.
            shown = _projection(fields)(item)
            return rendering(orjson.dumps(shown), etag(shown, root))

        projection: Hashable = fields
        return read_response(request, rendered(_entry(state), item, projection, render), state)

    get_resource.__name__ = f"retrieve_{resource.collection}"
    return get_resource


def patch_route(
    resource: ResourceType, patcher: Patcher | None, base: BaseUrl, access: Access
) -> Endpoint:
    attributes = attribute_types(resource.schema)

    async def patch_resource(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.write)
        if patcher is None:
            raise ApiError(501, "Not implemented", f"No back end offers PATCH of {resource.schema}")
        fields = parse_fields(request.query_params.get("fields"), attributes)
        item, tag = await patcher.patch(
            PatchRequest(
                request.path_params["id"],
                await request.body(),
                request.headers.get("content-type"),
                request.headers.get("if-match"),
                base(request),
                lambda item: visible(item, resource, caller),
            )
        )
        return JSONResponse(_projection(fields)(item), headers={"ETag": tag})

    patch_resource.__name__ = f"patch_{resource.collection}"
    return patch_resource


def create_on_demand_route(
    on_demand: OnDemandService | None, requests: Reader, base: BaseUrl, access: Access
) -> Endpoint:
    attributes = attribute_types(CUSTOMER_BILL_ON_DEMAND.schema)

    async def create_customer_bill_on_demand(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.order)
        if on_demand is None:
            raise ApiError(501, "Not implemented", "No back end is configured for bills on demand")
        fields = parse_fields(request.query_params.get("fields"), attributes)
        ident = await on_demand.accept(await request.body(), caller.allows_account)
        item = await requests.get(ident, base(request))
        if item is None:  # pragma: no cover - just stored
            raise ApiError(500, "Internal error", "The request was stored but cannot be read")
        return JSONResponse(
            _projection(fields)(item), status_code=201, headers={"Location": item["href"]}
        )

    return create_customer_bill_on_demand


def hub_routes(hubs: HubService | None, base: BaseUrl, access: Access) -> list[Route]:
    def service() -> HubService:
        if hubs is None:
            raise ApiError(501, "Not implemented", "Event notifications are not configured")
        return hubs

    async def register_listener(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.hub)
        hub = await service().register(await request.body(), caller)
        location = f"{base(request)}/hub/{hub['id']}"
        body = {**hub, "href": location}
        return JSONResponse(body, status_code=201, headers={"Location": location})

    async def unregister_listener(request: Request) -> Response:
        caller = await access.caller(request, access.scopes.hub)
        await service().unregister(request.path_params["id"], caller)
        return Response(status_code=204)

    return [
        Route(f"{API_PREFIX}/hub", register_listener, methods=["POST"]),
        Route(f"{API_PREFIX}/hub/{{id}}", unregister_listener, methods=["DELETE"]),
    ]


class PlainEndpoint:
    """An endpoint as a plain ASGI app: what Starlette's `request_response` makes of it,
    less its own exception layer (the ExceptionMiddleware around the router answers
    errors with the same handlers). For the cache-hit path, where every layer counts."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.__name__ = endpoint.__name__  # the route's name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


def resource_routes(
    resource: ResourceType, reader: Reader, paging: PagingSettings, base: BaseUrl, access: Access
) -> list[Route]:
    """`GET /{collection}/{id}` and `GET /{collection}` (by id first: a cache hit is tried
    against fewer routes)."""
    path = f"{API_PREFIX}/{resource.collection}"
    return [
        Route(
            f"{path}/{{id}}",
            PlainEndpoint(get_route(resource, reader, base, access)),
            methods=["GET"],
        ),
        Route(path, list_route(resource, reader, paging, base, access), methods=["GET"]),
    ]
