"""HTTP routes of the TMF678 API: one list and one read route per resource type.

A route parses the TMF630 query, asks the resource's reader, projects `fields`, and
serialises. Methods the OAS does not define on a path answer 405, as a TMF `Error`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import ApiError, not_found
from gateway.events import HubService
from gateway.fields import compile_fields, project
from gateway.oas import attribute_types
from gateway.on_demand import OnDemandService
from gateway.query import parse_fields, parse_query
from gateway.reads import Reader
from gateway.resources import (
    API_PREFIX,
    CUSTOMER_BILL,
    CUSTOMER_BILL_ON_DEMAND,
    RESOURCE_TYPES,
    ResourceType,
)
from gateway.writes import etag


class Patcher(Protocol):
    async def patch(
        self, ident: str, body: bytes, content_type: str | None, if_match: str | None, base: str
    ) -> tuple[dict[str, Any], str]: ...


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Api:
    """What the routes need at request time; the readers are filled in at start-up."""

    def __init__(
        self,
        *,
        default_limit: int,
        max_limit: int,
        public_base_url: str | None,
        event_base_url: str = "http://localhost:8678",
    ) -> None:
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.public_base_url = public_base_url
        #: Events leave outside any request: their hrefs use this API root.
        self.event_base_url = (public_base_url or event_base_url.rstrip("/")) + API_PREFIX
        self.readers: dict[str, Reader] = {}
        self.patchers: dict[str, Patcher] = {}
        self.on_demand: OnDemandService | None = None
        self.hubs: HubService | None = None

    def base_url(self, request: Request) -> str:
        """The absolute API root for `href`s: the configured public URL, or the request's."""
        if self.public_base_url:
            return self.public_base_url + API_PREFIX
        url = request.url
        return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}{API_PREFIX}"


def _list_route(api: Api, resource: ResourceType) -> Callable[[Request], Any]:
    attributes = attribute_types(resource.schema)

    async def list_resources(request: Request) -> Response:
        query = parse_query(
            request.url.query,
            attributes,
            default_limit=api.default_limit,
            max_limit=api.max_limit,
        )
        items, total = await api.readers[resource.collection].list(query, api.base_url(request))
        if query.fields is not None:
            tree = compile_fields(query.fields)
            items = [project(item, tree) for item in items]
        headers = {"X-Total-Count": str(total), "X-Result-Count": str(len(items))}
        return JSONResponse(items, headers=headers)

    list_resources.__name__ = f"list_{resource.collection}"
    return list_resources


def _get_route(api: Api, resource: ResourceType) -> Callable[[Request], Any]:
    attributes = attribute_types(resource.schema)

    async def get_resource(request: Request) -> Response:
        ident = request.path_params["id"]
        fields = parse_fields(request.query_params.get("fields"), attributes)
        base = api.base_url(request)
        item = await api.readers[resource.collection].get(ident, base)
        if item is None:
            raise not_found(resource.collection, ident)
        tag = etag(item, base)
        if fields is not None:
            item = project(item, compile_fields(fields))
        return JSONResponse(item, headers={"ETag": tag})

    get_resource.__name__ = f"retrieve_{resource.collection}"
    return get_resource


def _patch_route(api: Api, resource: ResourceType) -> Callable[[Request], Any]:
    attributes = attribute_types(resource.schema)

    async def patch_resource(request: Request) -> Response:
        patcher = api.patchers.get(resource.collection)
        if patcher is None:
            raise ApiError(501, "Not implemented", f"No back end offers PATCH of {resource.schema}")
        fields = parse_fields(request.query_params.get("fields"), attributes)
        item, tag = await patcher.patch(
            request.path_params["id"],
            await request.body(),
            request.headers.get("content-type"),
            request.headers.get("if-match"),
            api.base_url(request),
        )
        if fields is not None:
            item = project(item, compile_fields(fields))
        return JSONResponse(item, headers={"ETag": tag})

    patch_resource.__name__ = f"patch_{resource.collection}"
    return patch_resource


def _create_on_demand_route(api: Api) -> Callable[[Request], Any]:
    attributes = attribute_types(CUSTOMER_BILL_ON_DEMAND.schema)

    async def create_customer_bill_on_demand(request: Request) -> Response:
        if api.on_demand is None:
            raise ApiError(501, "Not implemented", "No back end is configured for bills on demand")
        fields = parse_fields(request.query_params.get("fields"), attributes)
        ident = await api.on_demand.accept(await request.body())
        item = await api.readers[CUSTOMER_BILL_ON_DEMAND.collection].get(
            ident, api.base_url(request)
        )
        if item is None:  # pragma: no cover - just stored
            raise ApiError(500, "Internal error", "The request was stored but cannot be read")
        location = item["href"]
        if fields is not None:
            item = project(item, compile_fields(fields))
        return JSONResponse(item, status_code=201, headers={"Location": location})

    return create_customer_bill_on_demand


def _hub_routes(api: Api) -> list[Route]:
    def hubs() -> HubService:
        if api.hubs is None:
            raise ApiError(501, "Not implemented", "Event notifications are not configured")
        return api.hubs

    async def register_listener(request: Request) -> Response:
        hub = await hubs().register(await request.body())
        location = f"{api.base_url(request)}/hub/{hub['id']}"
        body = {**hub, "href": location}
        return JSONResponse(body, status_code=201, headers={"Location": location})

    async def unregister_listener(request: Request) -> Response:
        await hubs().unregister(request.path_params["id"])
        return Response(status_code=204)

    return [
        Route(f"{API_PREFIX}/hub", register_listener, methods=["POST"]),
        Route(f"{API_PREFIX}/hub/{{id}}", unregister_listener, methods=["DELETE"]),
    ]


def api_routes(api: Api) -> list[Route]:
    routes = []
    for resource in RESOURCE_TYPES.values():
        base = f"{API_PREFIX}/{resource.collection}"
        routes.append(Route(base, _list_route(api, resource), methods=["GET"]))
        routes.append(Route(f"{base}/{{id}}", _get_route(api, resource), methods=["GET"]))
    bills = f"{API_PREFIX}/{CUSTOMER_BILL.collection}/{{id}}"
    routes.append(Route(bills, _patch_route(api, CUSTOMER_BILL), methods=["PATCH"]))
    requests = f"{API_PREFIX}/{CUSTOMER_BILL_ON_DEMAND.collection}"
    routes.append(Route(requests, _create_on_demand_route(api), methods=["POST"]))
    routes.extend(_hub_routes(api))
    return routes
