"""Assembly: configuration in, a Starlette application out.

`open_services` (gateway/services.py) opens the back ends and builds the readers and
write paths; this module hands each route the object it uses and adds the middleware
and error handlers. Nothing here decides anything about resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import Lifespan

from adapters.base import QueryRefused
from gateway.access import Access
from gateway.api_description import ApiDescription, api_description_routes
from gateway.config import GatewayConfig
from gateway.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    query_refused_handler,
)
from gateway.guards import GuardMiddleware
from gateway.health import health_routes
from gateway.logs import RequestLogMiddleware
from gateway.metrics import GatewayMetrics, metrics_routes
from gateway.request_scope import RequestScopeMiddleware
from gateway.resources import (
    API_PREFIX,
    APPLIED_CUSTOMER_BILLING_RATE,
    BILL_CYCLE,
    CUSTOMER_BILL,
    CUSTOMER_BILL_ON_DEMAND,
)
from gateway.routes import (
    BaseUrl,
    create_on_demand_route,
    hub_routes,
    patch_route,
    resource_routes,
)
from gateway.services import Services, StartupError, open_services

__all__ = ["StartupError", "api_routes", "build_app", "create_app", "open_services"]

log = structlog.get_logger("gateway")


def api_routes(
    config: GatewayConfig,
    services: Services,
    metrics: GatewayMetrics | None = None,
    description: ApiDescription | None = None,
) -> list[BaseRoute]:
    """Every TMF678 operation, each given the reader or service it uses."""
    paging = config.paging
    base = BaseUrl(config.api.public_base_url)
    access = Access(services.authenticator, config.auth.scopes)
    bill = f"{API_PREFIX}/{CUSTOMER_BILL.collection}/{{id}}"
    requests = f"{API_PREFIX}/{CUSTOMER_BILL_ON_DEMAND.collection}"
    rates = APPLIED_CUSTOMER_BILLING_RATE
    operations: list[BaseRoute] = [
        *health_routes(services.readiness),  # outside the API prefix, without auth
        # The OAS itself: public, like the standard it is (gateway/api_description.py).
        *api_description_routes(description or ApiDescription(), base),
    ]
    if metrics is not None:
        operations += metrics_routes(metrics, access, config.metrics.scope)
    return [
        *operations,
        *resource_routes(CUSTOMER_BILL, services.customer_bills, paging, base, access),
        *resource_routes(rates, services.applied_rates, paging, base, access),
        *resource_routes(BILL_CYCLE, services.bill_cycles, paging, base, access),
        *resource_routes(CUSTOMER_BILL_ON_DEMAND, services.bill_requests, paging, base, access),
        Route(
            bill,
            patch_route(CUSTOMER_BILL, services.bill_patcher, base, access),
            methods=["PATCH"],
        ),
        Route(
            requests,
            create_on_demand_route(services.on_demand, services.bill_requests, base, access),
            methods=["POST"],
        ),
        *hub_routes(services.hubs, base, access),
    ]


def gateway_metrics(config: GatewayConfig) -> GatewayMetrics | None:
    """The process's metrics, unless `metrics.enabled` is off."""
    return GatewayMetrics() if config.metrics.enabled else None


def api_description(config: GatewayConfig) -> ApiDescription:
    """The served OAS, rendered now for the configured public root (if there is one)."""
    description = ApiDescription()
    if config.api.public_base_url:
        for kind in ("json", "yaml"):
            description.render(config.api.public_base_url + API_PREFIX, kind)
    return description


def _starlette(
    config: GatewayConfig,
    metrics: GatewayMetrics | None,
    routes: list[BaseRoute] | None = None,
    lifespan: Lifespan[Starlette] | None = None,
) -> Starlette:
    guard = Middleware(
        GuardMiddleware,
        limits=config.limits,
        cors_origins=config.api.cors_origins,
        allowed_hosts=[] if config.api.public_base_url else config.api.allowed_hosts,
    )
    resilience = config.resilience
    in_flight = Middleware(
        RequestScopeMiddleware,
        deadline_seconds=resilience.request_deadline_seconds,
        max_in_flight=resilience.max_requests_in_flight,
        retry_after_seconds=resilience.overload_retry_after_seconds,
    )
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestLogMiddleware, metrics=metrics), guard, in_flight],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            QueryRefused: query_refused_handler,
        },
        lifespan=lifespan,
    )


def build_app(
    config: GatewayConfig, services: Services, metrics: GatewayMetrics | None = None
) -> Starlette:
    """The application over services that are already open (the server's way).

    `metrics` is what `open_services` reported to (None: no `/metrics`).
    """
    routes = api_routes(config, services, metrics, api_description(config))
    app = _starlette(config, metrics, routes=routes)
    app.state.services = services
    return app


def create_app(config: GatewayConfig, *, event_base_url: str | None = None) -> Starlette:
    """The application, opening its services in its lifespan (the test client's way).

    `event_base_url` is where it is reached, for hrefs in events.
    """
    root = config.api.public_base_url or (event_base_url or "http://localhost:8678").rstrip("/")
    metrics = gateway_metrics(config)
    description = api_description(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            services = await open_services(config, stack, root + API_PREFIX, metrics)
            app.router.routes[:] = api_routes(config, services, metrics, description)
            app.state.services = services
            log.info("gateway_started", config=config.source)
            yield
        log.info("gateway_stopped")

    return _starlette(config, metrics, lifespan=lifespan)
