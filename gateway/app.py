"""Wiring: configuration in, a Starlette application out.

At start-up the lifespan opens each back end once (engines, pools), binds each
resource's `source:` to it, and compiles each mapping against the bound columns and
the OAS. Any mistake stops start-up with the file, place and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.routing import Route as HttpRoute

from adapters.base import Adapter, BackendError, SourceSpecError
from adapters.registry import build_adapter, options_model
from gateway.callbacks import CallbackPolicy
from gateway.config import ConfigError, GatewayConfig, ResourceBinding
from gateway.delivery import DeliveryWorker
from gateway.detector import ChangeDetector
from gateway.errors import ApiError, error_response
from gateway.events import DeliverySettings, EventPublisher, HubService
from gateway.federation import FederatedPatcher, FederatedReader, Route
from gateway.lifecycle import Lifecycle
from gateway.logs import RequestLogMiddleware
from gateway.oas import attribute_types
from gateway.on_demand import BillMaker, OnDemandService, worker_settings
from gateway.reads import EmptyReader, ResourceReader
from gateway.resources import BILL_CYCLE, CUSTOMER_BILL, CUSTOMER_BILL_ON_DEMAND, RESOURCE_TYPES
from gateway.routes import Api, api_routes
from gateway.store import STORE_BACKEND, GatewayStore
from gateway.writes import ResourcePatcher
from mappings.compiler import compile_mapping, read_mapping
from mappings.errors import MappingSpecError
from mappings.loader import SpecMap, load_yaml

log = structlog.get_logger("gateway")


class StartupError(Exception):
    """The gateway cannot start: configuration, mapping or back end is wrong."""


async def open_gateway(config: GatewayConfig, api: Api, stack: AsyncExitStack) -> None:
    """Open every back end and the store; build readers, PATCH and on-demand into `api`.

    Everything opened is registered on `stack`, so leaving it closes it (and stops the
    on-demand worker).
    """
    adapters: dict[str, Adapter] = {}
    needed = {b.backend for b in config.resources.values()}
    needed |= {b.backend for routes in config.federated.values() for b in routes}
    if config.on_demand is not None:
        needed |= config.on_demand.actions.keys()
    for name in sorted(needed):
        backend = config.backends[name]
        try:
            options = options_model(backend.kind).model_validate(
                {"kind": backend.kind, "timeout_seconds": backend.timeout, **backend.options}
            )
            adapter = build_adapter(name, options)
            await adapter.open()
        except (LookupError, ValueError) as exc:
            raise StartupError(f"backends.{name}: {exc}") from exc
        except (BackendError, ConfigError) as exc:
            raise StartupError(str(exc)) from exc
        stack.push_async_callback(adapter.close)
        adapters[name] = adapter
    for collection, binding in config.resources.items():
        api.readers[collection] = await _bound_reader(config, binding, adapters)
    for collection, bindings in config.federated.items():
        api.readers[collection] = await _federated(config, collection, bindings, adapters, api)
    store = publisher = None
    if config.on_demand is not None or config.events is not None:
        store = await _open_store(config, stack)
    if config.events is not None:
        assert store is not None
        publisher = await _open_events(config, api, store, stack)
    if config.on_demand is not None:
        assert store is not None
        await _open_on_demand(config, api, adapters, store, publisher, stack)
    for collection in RESOURCE_TYPES:
        api.readers.setdefault(collection, EmptyReader())
    bills = api.readers.get(CUSTOMER_BILL.collection)
    if isinstance(bills, ResourceReader) and bills.mapping.writable:
        api.patchers[CUSTOMER_BILL.collection] = _bill_patcher(config, api, bills, publisher)
    elif isinstance(bills, FederatedReader):
        for route in bills.routes:
            if route.reader.mapping.writable:
                route.patcher = _bill_patcher(config, api, route.reader, publisher, route.prefix)
        api.patchers[CUSTOMER_BILL.collection] = FederatedPatcher(bills)


def _bill_patcher(
    config: GatewayConfig,
    api: Api,
    bills: ResourceReader,
    publisher: EventPublisher | None,
    id_prefix: str = "",
) -> ResourcePatcher:
    cycles = api.readers.get(BILL_CYCLE.collection)
    return ResourcePatcher(
        reader=bills,
        mvo_schema="CustomerBill_MVO",
        lifecycle=Lifecycle(config.bill_transitions),
        references={"billCycle.id": cycles} if isinstance(cycles, ResourceReader) else {},
        publisher=publisher,
        id_prefix=id_prefix,
    )


async def _federated(
    config: GatewayConfig,
    collection: str,
    bindings: list[ResourceBinding],
    adapters: dict[str, Adapter],
    api: Api,
) -> FederatedReader:
    routes = []
    for binding in bindings:
        reader = await _bound_reader(config, binding, adapters)
        pattern = re.compile(binding.accounts) if binding.accounts else None
        routes.append(Route(binding.backend, binding.id_prefix, reader, pattern))
    return FederatedReader(collection, routes, attribute_types(RESOURCE_TYPES[collection].schema))


def _run_in_background(stack: AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> None:
    """Start a long-running task now; the stack cancels it on the way out."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


async def _open_store(config: GatewayConfig, stack: AsyncExitStack) -> GatewayStore:
    store = GatewayStore(config.store_url)
    try:
        await store.open()
    except BackendError as exc:
        raise StartupError(f"gateway store: {exc.reason}") from exc
    stack.push_async_callback(store.close)
    return store


async def _open_events(
    config: GatewayConfig, api: Api, store: GatewayStore, stack: AsyncExitStack
) -> EventPublisher:
    events = config.events
    assert events is not None
    settings = DeliverySettings(**events.delivery)
    policy = CallbackPolicy(events.allow_callback_networks)
    publisher = EventPublisher(store, settings, api.event_base_url)
    worker = DeliveryWorker(store, settings, policy)
    publisher.wake = worker.wake
    stack.push_async_callback(worker.close)
    _run_in_background(stack, worker.run(), "event-delivery")
    api.hubs = HubService(store, policy)
    for collection, (attribute, interval) in events.change_detection.items():
        reader = api.readers.get(collection)
        federated = isinstance(reader, FederatedReader)
        for route in _routes(reader).values():
            if not _detectable(route.reader, attribute):
                if federated:  # the other back ends are still watched
                    log.warning("change_detection_unavailable", backend=route.backend)
                    continue
                raise StartupError(
                    f"{config.source}: events.change_detection.{collection}: {attribute!r} must"
                    " be read from a back-end column that sorts like the instants it holds"
                )
            detector = ChangeDetector(
                collection=collection,
                event_prefix=route.reader.mapping.resource,
                reader=route.reader,
                store=store,
                publisher=publisher,
                attribute=attribute,
                interval=interval,
                id_prefix=route.prefix,
            )
            _run_in_background(stack, detector.run(), f"detector-{collection}-{route.backend}")
    return publisher


async def _bound_reader(
    config: GatewayConfig, binding: ResourceBinding, adapters: dict[str, Adapter]
) -> ResourceReader:
    backend = config.backends[binding.backend]
    return await _reader(
        binding.collection,
        binding.mapping,
        adapters[binding.backend],
        backend.name,
        backend.timeout,
        config.scan_batch_size,
    )


async def _reader(
    collection: str, path: Path, adapter: Adapter, backend: str, timeout: float, batch: int
) -> ResourceReader:
    """Bind a mapping's source to its back end and compile the mapping against it."""
    resource = RESOURCE_TYPES[collection]
    file = str(path)
    attributes = attribute_types(resource.schema)
    try:
        spec = read_mapping(path)
        if spec["resource"] != resource.schema:
            raise MappingSpecError(
                file, "resource", spec.line_of("resource"), f"expected {resource.schema}"
            )
        try:
            source = await adapter.bind(spec.get("source") or {})
        except SourceSpecError as exc:
            raise MappingSpecError(file, exc.place, spec.line_of("source"), exc.reason) from None
        mapping = compile_mapping(
            spec, file=file, columns=source.columns, attribute_types=attributes.types
        )
    except MappingSpecError as exc:
        raise StartupError(str(exc)) from exc
    log.info("resource_ready", resource=collection, backend=backend, mapping=file)
    return ResourceReader(
        mapping=mapping,
        source=source,
        backend=backend,
        attributes=attributes,
        timeout=timeout,
        batch_size=batch,
    )


async def _open_on_demand(
    config: GatewayConfig,
    api: Api,
    adapters: dict[str, Adapter],
    store: GatewayStore,
    publisher: EventPublisher | None,
    stack: AsyncExitStack,
) -> None:
    settings = config.on_demand
    assert settings is not None
    bills = api.readers.get(CUSTOMER_BILL.collection)
    routes = _routes(bills)
    if not routes:
        raise StartupError("on_demand needs customerBill served by a back end (bills it makes)")
    requests = await _reader(
        CUSTOMER_BILL_ON_DEMAND.collection,
        settings.mapping,
        store.adapter,
        STORE_BACKEND,
        10.0,
        config.scan_batch_size,
    )
    api.readers[CUSTOMER_BILL_ON_DEMAND.collection] = requests
    makers = []
    for name, path in settings.actions.items():
        route = routes.get(name)
        if route is None or "id" not in route.reader.mapping.fields:
            raise StartupError(f"on_demand: back end {name!r} does not serve customerBill")
        makers.append(
            BillMaker(
                backend=name,
                action=_action(adapters[name], path),
                timeout=config.backends[name].timeout,
                bill_id=route.reader.mapping.fields["id"].transform,
                prefix=route.prefix,
                accounts=route.accounts,
            )
        )
    service = OnDemandService(
        store=store,
        makers=makers,
        bills=bills,
        requests=requests.mapping,
        settings=worker_settings(settings.worker),
        publisher=publisher,
    )
    api.on_demand = service
    _run_in_background(stack, service.run_worker(), "on-demand-worker")


def _detectable(reader: Any, attribute: str) -> bool:
    """Whether changes can be found by reading the attribute in order from the back end."""
    if not isinstance(reader, ResourceReader):
        return False
    ref = reader.mapping.fields.get(attribute)
    return ref is not None and ref.transform.ordered and reader.source.can_sort(ref.column)


def _routes(reader: Any) -> dict[str, Route]:
    """A resource's back ends by name: one unprefixed route, the federated ones, or none."""
    if isinstance(reader, FederatedReader):
        return {route.backend: route for route in reader.routes}
    if isinstance(reader, ResourceReader):
        return {reader.backend: Route(reader.backend, "", reader)}
    return {}


def _action(adapter: Adapter, path: Path) -> Any:
    """A declared back-end action, compiled at start-up; mistakes name file and line."""
    file = str(path)
    try:
        spec = load_yaml(path)
        if not isinstance(spec, SpecMap):
            raise MappingSpecError(file, "", 1, "an action file is a YAML mapping")
        try:
            return adapter.action(spec)
        except SourceSpecError as exc:
            key = exc.place.split(".")[0].split("[")[0]
            raise MappingSpecError(file, exc.place, spec.line_of(key), exc.reason) from None
    except MappingSpecError as exc:
        raise StartupError(str(exc)) from exc


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
        if match is Match.PARTIAL and isinstance(route, HttpRoute) and route.methods:
            methods |= route.methods
    return sorted(methods)


def create_app(config: GatewayConfig, *, event_base_url: str | None = None) -> Starlette:
    """The application; `event_base_url` is where it is reached (for hrefs in events)."""
    api = Api(
        default_limit=config.default_limit,
        max_limit=config.max_limit,
        public_base_url=config.public_base_url,
        **({"event_base_url": event_base_url} if event_base_url else {}),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await open_gateway(config, api, stack)
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
