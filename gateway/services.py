"""Start-up: configuration in, the opened services that the routes use out.

Each back end is opened once (engines, pools, WSDLs), each resource's `source:` is
bound to it and its mapping compiled against the bound columns and the OAS; the store,
event delivery, change detectors and the on-demand worker start here. Any mistake stops
start-up with the file, place and reason. Everything opened is registered on the exit
stack, so leaving it closes it (and stops the background tasks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from adapters.base import Adapter, BackendAction, BackendError, BackendOptions, SourceSpecError
from adapters.registry import build_adapter
from gateway.auth import AuthConfigError, Authenticator
from gateway.cache import ReadCache
from gateway.cache_redis import RedisReadCache
from gateway.callbacks import CallbackPolicy
from gateway.config import (
    CacheSettings,
    EventsSettings,
    GatewayConfig,
    OnDemandSettings,
    ResourceBinding,
)
from gateway.delivery import DeliveryWorker
from gateway.detector import ChangeDetector
from gateway.events import EventPublisher, HubService
from gateway.federation import FederatedPatcher, FederatedReader
from gateway.health import Readiness, serving
from gateway.lifecycle import Lifecycle
from gateway.metrics import GatewayMetrics, StoreReader
from gateway.oas import attribute_types
from gateway.on_demand import BillMaker, OnDemandService
from gateway.partial import TolerantFederatedReader
from gateway.reads import BackendRoute, EmptyReader, Reader, ResourceReader
from gateway.resilience import Resilience
from gateway.resources import (
    APPLIED_CUSTOMER_BILLING_RATE,
    BILL_CYCLE,
    CUSTOMER_BILL,
    CUSTOMER_BILL_ON_DEMAND,
    REFERENCES,
    RESOURCE_TYPES,
    ResourceType,
)
from gateway.store import GatewayStore, operations_figures
from gateway.supervisor import Work, start_supervised
from gateway.writes import Patcher, ResourcePatcher
from mappings.compiler import compile_mapping, read_mapping
from mappings.errors import MappingSpecError
from mappings.loader import SpecMap, load_yaml

log = structlog.get_logger("gateway")


class StartupError(Exception):
    """The gateway cannot start: configuration, mapping or back end is wrong."""


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes use, by name: one reader per resource type and the write paths."""

    authenticator: Authenticator
    customer_bills: Reader
    applied_rates: Reader
    bill_cycles: Reader
    bill_requests: Reader
    bill_patcher: Patcher | None
    on_demand: OnDemandService | None
    hubs: HubService | None
    #: Where events are published (None when events are not configured).
    publisher: EventPublisher | None
    #: The API root used in events' hrefs (they leave outside any request).
    event_base_url: str
    #: What `/ready` checks (store, breakers of the back ends in use).
    readiness: Readiness | None = None


async def open_services(
    config: GatewayConfig,
    stack: AsyncExitStack,
    event_base_url: str,
    metrics: GatewayMetrics | None = None,
) -> Services:
    """Open every back end and the store; build readers, PATCH, on-demand and events.

    With `metrics`, back-end attempts are reported to it and it reads the cache, the
    breakers and the store when scraped.
    """
    authenticator = Authenticator(config.auth)
    try:
        await authenticator.open()
    except AuthConfigError as exc:
        raise StartupError(str(exc)) from exc
    stack.push_async_callback(authenticator.close)
    unknown = sorted(set(config.resilience.backends) - set(config.backends))
    if unknown:
        raise StartupError(f"resilience.backends: no back end {unknown[0]!r}")
    adapters = {
        name: await _open_adapter(name, config.backends[name], stack)
        for name in sorted(config.backends_in_use())
    }
    guards = Resilience(config.resilience, metrics.backend_observer if metrics else None)
    cache = _read_cache(config.resilience.cache)
    if cache is not None:
        stack.push_async_callback(cache.close)
    if metrics is not None:
        metrics.watch_breakers(lambda: guards.guards)
        if cache is not None:
            metrics.watch_cache(cache)
    readers: dict[str, Reader] = {}
    for collection, binding in config.single().items():
        readers[collection] = await _reader(config, collection, binding, adapters, guards, cache)
    federated = (
        TolerantFederatedReader if config.resilience.federation == "partial" else FederatedReader
    )
    for collection, bindings in config.federated().items():
        routes = [
            BackendRoute(
                b.backend,
                b.id_prefix,
                await _reader(config, collection, b, adapters, guards, cache),
                b.accounts,
            )
            for b in bindings
        ]
        types = attribute_types(RESOURCE_TYPES[collection].schema)
        readers[collection] = federated(
            collection, routes, types, _federated_references(config, collection)
        )

    def served(resource: ResourceType) -> Reader:
        return readers.get(resource.collection) or EmptyReader(resource.schema)

    bills, cycles = served(CUSTOMER_BILL), served(BILL_CYCLE)

    store = publisher = hubs = on_demand = None
    requests = served(CUSTOMER_BILL_ON_DEMAND)
    if config.on_demand is not None or config.events is not None:
        store = await _open_store(config, stack)
        if metrics is not None:
            opened = store
            metrics.watch_store(StoreReader(lambda: operations_figures(opened)))
    if config.events is not None:
        assert store is not None
        publisher, hubs = await _open_events(config.events, readers, store, stack, event_base_url)
    if config.on_demand is not None:
        assert store is not None
        requests, on_demand = await _open_on_demand(
            config, config.on_demand, bills, adapters, store, publisher, stack
        )
    return Services(
        authenticator=authenticator,
        customer_bills=bills,
        applied_rates=served(APPLIED_CUSTOMER_BILLING_RATE),
        bill_cycles=cycles,
        bill_requests=requests,
        bill_patcher=_bill_patcher(
            config, bills, cycles, publisher, CUSTOMER_BILL.collection in config.federated()
        ),
        on_demand=on_demand,
        hubs=hubs,
        publisher=publisher,
        event_base_url=event_base_url,
        readiness=Readiness(guards, serving(config), store, adapters=adapters),
    )


def _federated_references(
    config: GatewayConfig, collection: str
) -> dict[str, dict[str, tuple[str, str]]]:
    """Per back end, the references of `collection` to federated resources it also serves."""
    prefixes = {
        (referred, binding.backend): binding.id_prefix
        for referred, bindings in config.federated().items()
        for binding in bindings
    }
    references: dict[str, dict[str, tuple[str, str]]] = {}
    for binding in config.federated()[collection]:
        for attribute, referred in REFERENCES.get(collection, {}).items():
            prefix = prefixes.get((referred, binding.backend))
            if prefix:
                references.setdefault(binding.backend, {})[attribute] = (referred, prefix)
    return references


async def _open_adapter(name: str, options: BackendOptions, stack: AsyncExitStack) -> Adapter:
    try:
        adapter = build_adapter(name, options)
        await adapter.open()
    except BackendError as exc:
        raise StartupError(str(exc)) from exc
    stack.push_async_callback(adapter.close)
    return adapter


def _bill_patcher(
    config: GatewayConfig,
    bills: Reader,
    cycles: Reader,
    publisher: EventPublisher | None,
    federated: bool,
) -> Patcher | None:
    """PATCH of bills: on the one back end, or by id prefix on each federated one."""
    references: dict[str, Reader] = {}
    if cycles.routes:
        references["billCycle.id"] = cycles
    # A federated bill's billCycle is named by the federated id of its back end's cycle.
    cycle_prefixes = {route.backend: route.prefix for route in cycles.routes if route.prefix}
    patchers = {
        route.backend: ResourcePatcher(
            reader=route.reader,
            mvo_schema="CustomerBill_MVO",
            lifecycle=Lifecycle(config.bill_transitions),
            references=references,
            publisher=publisher,
            id_prefix=route.prefix,
            reference_prefixes=(
                {"billCycle.id": cycle_prefixes[route.backend]}
                if federated and route.backend in cycle_prefixes
                else {}
            ),
        )
        for route in bills.routes
        if route.reader.mapping.writable
    }
    if federated:
        assert isinstance(bills, FederatedReader)
        return FederatedPatcher(bills, patchers)
    return next(iter(patchers.values()), None)


#: How long a background task has to end once cancelled at shutdown.
_STOP_SECONDS = 10.0


def _run_in_background(stack: AsyncExitStack, work: Work, name: str) -> None:
    """Start long-running work now, supervised (restarted after a crash); the stack stops it."""
    task = start_supervised(work, name)

    async def stop() -> None:
        # Shutdown has a deadline too: work that does not end when cancelled is left behind
        # (logged), so that a stopping gateway hands over and exits.
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_STOP_SECONDS)
        if not done:
            log.error("background_task_not_stopped", task=name, seconds=_STOP_SECONDS)

    stack.push_async_callback(stop)


async def _open_store(config: GatewayConfig, stack: AsyncExitStack) -> GatewayStore:
    store = GatewayStore(config.store.url)
    try:
        await store.open()
    except BackendError as exc:
        raise StartupError(f"gateway store: {exc.reason}") from exc
    stack.push_async_callback(store.close)
    return store


async def _open_events(
    events: EventsSettings,
    readers: Mapping[str, Reader],
    store: GatewayStore,
    stack: AsyncExitStack,
    event_base_url: str,
) -> tuple[EventPublisher, HubService]:
    policy = CallbackPolicy(str(n) for n in events.allow_callback_networks)
    publisher = EventPublisher(store, events.delivery, event_base_url)
    worker = DeliveryWorker(store, events.delivery, policy)
    publisher.wake = worker.wake
    stack.push_async_callback(worker.close)
    _run_in_background(stack, worker.run, "event-delivery")
    for collection, detection in events.change_detection.items():
        routes = readers[collection].routes
        for route in routes:
            if not _detectable(route.reader, detection.attribute):
                if len(routes) > 1:  # federated: the other back ends are still watched
                    log.warning("change_detection_unavailable", backend=route.backend)
                    continue
                raise StartupError(
                    f"events.change_detection.{collection}: {detection.attribute!r} must be"
                    " read from a back-end column that sorts like the instants it holds"
                )
            detector = ChangeDetector(
                collection=collection,
                event_prefix=route.reader.mapping.resource,
                reader=route.reader,
                store=store,
                publisher=publisher,
                attribute=detection.attribute,
                interval=detection.interval_seconds,
                id_prefix=route.prefix,
            )
            _run_in_background(stack, detector.run, f"detector-{collection}-{route.backend}")
    return publisher, HubService(store, policy)


def _read_cache(settings: CacheSettings) -> ReadCache | None:
    """The read cache configured: none, in this process, or shared in Redis."""
    if not settings.enabled:
        return None
    if settings.store == "redis":
        return RedisReadCache(settings)
    return ReadCache(settings)


async def _reader(
    config: GatewayConfig,
    collection: str,
    binding: ResourceBinding,
    adapters: Mapping[str, Adapter],
    guards: Resilience,
    cache: ReadCache | None,
) -> ResourceReader:
    reader = await bind_reader(
        collection,
        binding.mapping,
        adapters[binding.backend],
        config.backends[binding.backend].timeout_seconds,
        config.paging.scan_batch_size,
    )
    reader.guard = guards.guard(binding.backend)
    reader.cache = cache
    reader.scan_budget = config.paging.scan_budget_rows
    return reader


async def bind_reader(
    collection: str, path: Path, adapter: Adapter, timeout: float, batch: int
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
            raise MappingSpecError(file, exc.place, spec.line_at(exc.place), exc.reason) from None
        mapping = compile_mapping(
            spec, file=file, columns=source.columns, attribute_types=attributes.types
        )
    except MappingSpecError as exc:
        raise StartupError(str(exc)) from exc
    check_writes = getattr(source, "check_writes", None)  # can each be written? (REST)
    if callable(check_writes) and mapping.writable:
        written = [ref.column for ref in mapping.writable.values()]
        if mapping.stamp is not None:
            written.append(mapping.stamp.column)
        problem = check_writes(written)
        if problem is not None:
            raise StartupError(f"{file}: writes: {problem}")
    log.info("resource_ready", resource=collection, backend=adapter.name, mapping=file)
    return ResourceReader(
        mapping=mapping,
        source=source,
        backend=adapter.name,
        attributes=attributes,
        timeout=timeout,
        batch_size=batch,
    )


async def _open_on_demand(
    config: GatewayConfig,
    settings: OnDemandSettings,
    bills: Reader,
    adapters: Mapping[str, Adapter],
    store: GatewayStore,
    publisher: EventPublisher | None,
    stack: AsyncExitStack,
) -> tuple[ResourceReader, OnDemandService]:
    routes = {route.backend: route for route in bills.routes}
    if not routes:
        raise StartupError("on_demand needs customerBill served by a back end (bills it makes)")
    requests = await bind_reader(
        CUSTOMER_BILL_ON_DEMAND.collection,
        settings.mapping,
        store.adapter,
        10.0,
        config.paging.scan_batch_size,
    )
    makers = []
    for name, path in settings.actions_by_backend.items():
        route = routes.get(name)
        if route is None or "id" not in route.reader.mapping.fields:
            raise StartupError(f"on_demand: back end {name!r} does not serve customerBill")
        action, find = compile_actions(adapters[name], path)
        makers.append(
            BillMaker(
                backend=name,
                action=action,
                find=find,
                timeout=config.backends[name].timeout_seconds,
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
        settings=settings.worker,
        publisher=publisher,
    )
    _run_in_background(stack, service.run_worker, "on-demand-worker")
    return requests, service


def _detectable(reader: ResourceReader, attribute: str) -> bool:
    """Whether changes can be found by reading the attribute in order from the back end."""
    ref = reader.mapping.fields.get(attribute)
    return ref is not None and ref.transform.ordered and reader.source.can_sort(ref.column)


def compile_actions(adapter: Adapter, path: Path) -> tuple[BackendAction, BackendAction | None]:
    """A declared back-end action and its optional `find:`, compiled at start-up.

    `find:` is an action of its own, in the same back end's terms, that looks up the bill
    made for a request (its `request_id`): done with the bill's key, or rejected when
    there is none. Mistakes in either name the file and line.
    """
    file = str(path)
    try:
        spec = load_yaml(path)
        if not isinstance(spec, SpecMap):
            raise MappingSpecError(file, "", 1, "an action file is a YAML mapping")
        find = spec.get("find")
        if find is not None and not isinstance(find, SpecMap):
            raise MappingSpecError(file, "find", spec.line_of("find"), "find is an action")
        try:
            action = adapter.action({k: v for k, v in spec.items() if k != "find"})
        except SourceSpecError as exc:
            key = exc.place.split(".")[0].split("[")[0]
            raise MappingSpecError(file, exc.place, spec.line_of(key), exc.reason) from None
        if find is None:
            return action, None
        try:
            return action, adapter.action(find)
        except SourceSpecError as exc:
            key = exc.place.split(".")[0].split("[")[0]
            line = find.line_of(key)
            raise MappingSpecError(file, f"find.{exc.place}", line, exc.reason) from None
    except MappingSpecError as exc:
        raise StartupError(str(exc)) from exc
