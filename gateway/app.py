"""Wiring: configuration in, a Starlette application out.

At start-up the lifespan opens each back end once (engines, pools), binds each
resource's `source:` to it, and compiles each mapping against the bound columns and
the OAS. Any mistake stops start-up with the file, place and reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from adapters.base import Adapter, BackendError, SourceSpecError
from adapters.registry import build_adapter
from gateway.config import ConfigError, GatewayConfig
from gateway.errors import ApiError, error_response
from gateway.lifecycle import Lifecycle
from gateway.logs import RequestLogMiddleware
from gateway.oas import attribute_types
from gateway.reads import EmptyReader, ResourceReader
from gateway.resources import BILL_CYCLE, CUSTOMER_BILL, RESOURCE_TYPES
from gateway.routes import Api, api_routes
from gateway.writes import ResourcePatcher
from mappings.compiler import compile_mapping, read_mapping
from mappings.errors import MappingSpecError

log = structlog.get_logger("gateway")


class StartupError(Exception):
    """The gateway cannot start: configuration, mapping or back end is wrong."""


async def open_readers(config: GatewayConfig, api: Api, stack: AsyncExitStack) -> None:
    """Open every back end and build every resource's reader into `api.readers`."""
    adapters: dict[str, Adapter] = {}
    for name in sorted({b.backend for b in config.resources.values()}):
        backend = config.backends[name]
        try:
            adapter = build_adapter(backend)
            await adapter.open()
        except (BackendError, ConfigError) as exc:
            raise StartupError(str(exc)) from exc
        stack.push_async_callback(adapter.close)
        adapters[name] = adapter
    for collection, resource in RESOURCE_TYPES.items():
        binding = config.resources.get(collection)
        if binding is None:
            api.readers[collection] = EmptyReader()
            continue
        backend = config.backends[binding.backend]
        file = str(binding.mapping)
        attributes = attribute_types(resource.schema)
        try:
            spec = read_mapping(binding.mapping)
            if spec["resource"] != resource.schema:
                raise MappingSpecError(
                    file, "resource", spec.line_of("resource"), f"expected {resource.schema}"
                )
            try:
                source = await adapters[binding.backend].bind(spec.get("source") or {})
            except SourceSpecError as exc:
                raise MappingSpecError(
                    file, exc.place, spec.line_of("source"), exc.reason
                ) from None
            mapping = compile_mapping(
                spec, file=file, columns=source.columns, attribute_types=attributes.types
            )
        except MappingSpecError as exc:
            raise StartupError(str(exc)) from exc
        api.readers[collection] = ResourceReader(
            mapping=mapping,
            source=source,
            backend=binding.backend,
            attributes=attributes,
            timeout=backend.timeout,
            batch_size=config.scan_batch_size,
        )
        log.info("resource_ready", resource=collection, backend=binding.backend, mapping=file)
    bills = api.readers.get(CUSTOMER_BILL.collection)
    if isinstance(bills, ResourceReader) and bills.mapping.writable:
        cycles = api.readers.get(BILL_CYCLE.collection)
        api.patchers[CUSTOMER_BILL.collection] = ResourcePatcher(
            reader=bills,
            mvo_schema="CustomerBill_MVO",
            lifecycle=Lifecycle(config.bill_transitions),
            references={"billCycle.id": cycles} if isinstance(cycles, ResourceReader) else {},
        )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "Not found", f"No resource at {request.url.path}")
    elif exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        error = ApiError(
            405,
            "Method not allowed",
            f"{request.method} is not defined on {request.url.path} (allowed: {allowed})",
            headers={"Allow": allowed} if allowed else None,
        )
    else:
        error = ApiError(exc.status_code, exc.detail or "Error")
    return error_response(error)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route offers on this path (one route per operation here)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is Match.PARTIAL and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return sorted(methods)


def create_app(config: GatewayConfig) -> Starlette:
    api = Api(
        default_limit=config.default_limit,
        max_limit=config.max_limit,
        public_base_url=config.public_base_url,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await open_readers(config, api, stack)
            log.info("gateway_started", config=config.source)
            yield
        log.info("gateway_stopped")

    app = Starlette(
        routes=api_routes(api),
        middleware=[Middleware(RequestLogMiddleware)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.api = api
    return app
