"""Gateway configuration: one typed model, read from YAML, with file and line in errors.

Every section is a pydantic model with its defaults and constraints; the running
gateway uses these same objects (no second copy of the options). Back ends are one
union discriminated by `kind`: each adapter kind, plugins included, brings its own
options model. Any mistake stops start-up with `file:line: place: reason`, the line
being that of the offending key.

Strings may use `${NAME}` or `${NAME:-default}` (defaults may nest) to take a value from
the environment (database URLs, secrets). Relative mapping and action paths are relative
to the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.base import BackendOptions, StrictModel
from adapters.registry import BUNDLED_KINDS, known_kinds, options_model
from gateway.auth import AuthSettings
from gateway.auth.settings import ScopeName
from gateway.lifecycle import BILL_STATES, DEFAULT_BILL_TRANSITIONS
from gateway.limits import Limits
from gateway.resources import RESOURCE_TYPES
from mappings.errors import MappingSpecError, SpecError
from mappings.loader import SpecMap, load_yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
#: `${NAME}` or `${NAME:-default}`; a default may hold `${OTHER...}` one level deep.
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:\$\{[^{}]*\}|[^{}])*))?\}")


class ConfigError(SpecError):
    """The gateway configuration is wrong; start-up stops with the file, place and reason."""


def _relative(value: Path, info: ValidationInfo) -> Path:
    """A path in the file is relative to the file's folder."""
    root = (info.context or {}).get("root")
    return value if root is None or value.is_absolute() else Path(root) / value


FilePath = Annotated[Path, AfterValidator(_relative)]
Seconds = Annotated[float, Field(ge=0)]
BillState = Literal["new", "onHold", "validated", "sent", "settled", "partiallyPaid"]
assert set(get_args(BillState)) == set(BILL_STATES)


class ApiSettings(StrictModel):
    #: Absolute origin (and path) for `href`s; when unset, built from each request.
    public_base_url: Annotated[str, Field(pattern=r"^https?://")] | None = None

    #: Host names (the Host header without port) answered when `public_base_url` is
    #: unset; empty: any. `href`s are built from the Host, so outside the demo set one.
    allowed_hosts: list[str] = []
    #: Origins allowed to call from a browser (CORS); empty: CORS off.
    cors_origins: list[str] = []

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None


class PagingSettings(StrictModel):
    default_limit: PositiveInt = 20
    #: Larger `limit`s are cut to this (X-Result-Count tells).
    max_limit: PositiveInt = 1000
    #: Rows per batch when the gateway must filter or sort itself.
    scan_batch_size: PositiveInt = 500
    #: Back-end records the gateway may read to answer one request when it must filter
    #: or sort itself; a request that needs more is a 400 naming the filter (not a 504).
    scan_budget_rows: PositiveInt = 100_000

    @model_validator(mode="after")
    def _default_within_max(self) -> PagingSettings:
        _not_above(self.default_limit, self.max_limit, "default_limit exceeds max_limit")
        return self


def _not_above(value: float, bound: float, message: str) -> None:
    if value > bound:
        raise ValueError(message)


class ResourceBinding(StrictModel):
    """Which back end serves a resource, through which mapping."""

    backend: str
    mapping: FilePath


class FederatedBinding(ResourceBinding):
    """One of several back ends serving a resource, told apart by the id prefix."""

    id_prefix: Annotated[str, Field(min_length=1)]
    #: Pattern of the billingAccount ids this back end holds (routes account queries).
    accounts: re.Pattern[str] | None = None


class WorkerSettings(StrictModel):
    """The on-demand worker: how it polls, leases, works concurrently and retries.

    Failures are retried by elapsed time, not by a count: a back-end outage shorter than
    `retry_for_seconds` (from the request's creation) delays a bill, it does not lose it.
    """

    poll_seconds: PositiveFloat = 1.0
    #: A claimed request is another worker's again after this (renewed while it runs).
    lease_seconds: PositiveFloat = 30.0
    #: Requests in flight at once, over all back ends.
    concurrency: PositiveInt = 16
    #: Requests in flight at once on one back end: a hung back end holds no more slots.
    per_backend_concurrency: PositiveInt = 4
    #: Back-end failures are retried until the request is this old; then terminatedWithError.
    retry_for_seconds: Seconds = 3600.0
    #: Optionally also give up after this many attempts (none: only time bounds retries).
    max_attempts: PositiveInt | None = None
    #: Exponential backoff between attempts, with jitter, capped.
    retry_base_seconds: Seconds = 1.0
    retry_max_seconds: Seconds = 60.0
    #: Failure drills only: hold the lease this long after the back end committed.
    pause_after_action_seconds: Seconds = 0.0

    @model_validator(mode="after")
    def _per_backend_within_total(self) -> WorkerSettings:
        _not_above(
            self.per_backend_concurrency,
            self.concurrency,
            "per_backend_concurrency exceeds concurrency",
        )
        return self


class OnDemandSettings(StrictModel):
    """Which back end makes bills on demand, with which declared action.

    One back end (`backend` + `action`), or several (`actions`: back end -> action),
    then the billing account decides (federation).
    """

    backend: str | None = None
    action: FilePath | None = None
    actions: dict[str, FilePath] | None = None
    mapping: FilePath
    worker: WorkerSettings = WorkerSettings()

    @model_validator(mode="after")
    def _one_form(self) -> OnDemandSettings:
        single = self.backend is not None and self.action is not None
        if single == (self.actions is not None) or (self.backend is None) != (self.action is None):
            raise ValueError(
                "expected {backend, action, mapping} or {actions: {back end: action}, mapping}"
            )
        return self

    @property
    def actions_by_backend(self) -> dict[str, Path]:
        if self.actions is not None:
            return dict(self.actions)
        assert self.backend is not None and self.action is not None
        return {self.backend: self.action}


class DeliverySettings(StrictModel):
    """Event delivery to subscribers: deadline, retries, dead-lettering, fan-out."""

    timeout_seconds: PositiveFloat = 5.0
    #: Then the event is dead-lettered (kept with its last error).
    max_attempts: Annotated[int, Field(ge=1)] = 8
    max_age_seconds: PositiveFloat = 86400.0
    retry_base_seconds: Seconds = 1.0
    retry_max_seconds: Seconds = 300.0
    #: Subscribers served at once.
    concurrency: PositiveInt = 32
    poll_seconds: PositiveFloat = 0.5
    #: `listener`: POST to {callback}/listener/{eventName}; `callback`: to the callback itself.
    post_to: Literal["listener", "callback"] = "listener"


class ChangeDetection(StrictModel):
    #: The last-change attribute, read in order from the back end.
    attribute: str
    interval_seconds: PositiveFloat = 5.0


class EventsSettings(StrictModel):
    #: Callback networks allowed although not public (loopback for the demo and tests).
    allow_callback_networks: list[IPv4Network | IPv6Network] = []
    delivery: DeliverySettings = DeliverySettings()
    change_detection: dict[str, ChangeDetection] = {}

    @field_validator("allow_callback_networks", mode="before")
    @classmethod
    def _host_bits_allowed(cls, value: Any) -> Any:
        if isinstance(value, str):  # `${ALLOW_CALLBACK_NETWORKS:-}`: comma separated
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):  # "10.1.2.3/8" means its network, as in firewall rules
            return [_network(v) for v in value]
        return value


def _network(value: Any) -> Any:
    try:
        return ip_network(str(value), strict=False)
    except ValueError:
        return value  # left to the field's own check, which names it


class StoreSettings(StrictModel):
    #: Any async SQLAlchemy URL; an embedded SQLite file by default.
    url: str = "sqlite+aiosqlite:///var/gateway_store.sqlite"


#: The collections a back end serves (bills on demand live in the gateway's store).
Collection = Literal["customerBill", "appliedCustomerBillingRate", "billCycle"]
assert set(get_args(Collection)) < set(RESOURCE_TYPES)


class RetrySettings(StrictModel):
    """Retries of idempotent reads (list, get by id): exponential backoff with full jitter."""

    #: Tries in all, the first included (4 at 30 % failures: 99.2 % succeed, 1.42 calls each).
    attempts: PositiveInt = 4
    #: The first retry waits up to this (random), each next one up to twice as long ...
    base_seconds: Seconds = 0.025
    #: ... but never more than this, nor past the request's deadline.
    max_seconds: Seconds = 1.0
    #: `BackendError.status` values worth another try (unreachable, reset, timed out).
    on_status: list[Annotated[int, Field(ge=500, le=599)]] = [503, 504]
    #: Retries in flight to a back end stay within this share of its reads in flight ...
    budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    #: ... or this many, whichever is more (Envoy's retry budget).
    budget_min: Annotated[int, Field(ge=0)] = 3


class BreakerSettings(StrictModel):
    """A circuit breaker per back end: stop calling one that keeps failing."""

    #: Opens after this many failures in a row (at 30 % flaky, 10 in a row is one in 170,000) ...
    consecutive_failures: PositiveInt = 10
    #: ... or when this share of the calls in the window failed ...
    failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    window_seconds: PositiveFloat = 10.0
    #: ... once the window holds at least this many calls.
    min_calls: PositiveInt = 20
    #: Open this long, then half-open: a few probe calls decide.
    cool_down_seconds: PositiveFloat = 5.0
    #: Probe calls let through at once while half-open; as many successes close it.
    half_open_probes: PositiveInt = 3


class BulkheadSettings(StrictModel):
    """A bound on concurrent calls to one back end, so one slow back end holds little."""

    max_concurrent: PositiveInt = 32
    #: Calls that may wait for a free slot; beyond, 503 at once.
    max_waiting: Annotated[int, Field(ge=0)] = 128
    #: How long a call waits for a slot before it is a 503.
    max_wait_seconds: Seconds = 0.5
    #: `Retry-After` of the 503 when the back end is busy.
    retry_after_seconds: PositiveInt = 1


class BackendPolicy(StrictModel):
    """How the gateway treats one back end (every number has a default)."""

    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    bulkhead: BulkheadSettings = BulkheadSettings()


class CacheSettings(StrictModel):
    """Read responses kept for a while: GET by id and list pages."""

    enabled: bool = True
    #: `memory`: in this process; `redis`: in the Redis at `redis_url`, shared by every
    #: instance that names it (invalidations reach them all).
    store: Literal["memory", "redis"] = "memory"
    #: `redis://host:port/db` (or `rediss://`, `unix://`); needed with `store: redis`.
    redis_url: str = ""
    #: Every key this gateway writes starts with it (several deployments, one Redis).
    redis_key_prefix: str = "tmf678:cache:"
    #: Deadline of each Redis call; past it the read goes to the back end uncached.
    redis_timeout_seconds: PositiveFloat = 0.25
    max_entries: PositiveInt = 10_000
    max_bytes: PositiveInt = 64 << 20
    #: Fresh this long after the read, by collection ...
    ttl_seconds: dict[Collection, Seconds] = {
        "customerBill": 5.0,
        "appliedCustomerBillingRate": 30.0,
        "billCycle": 300.0,
    }
    #: ... or this long for a collection not listed.
    default_ttl_seconds: Seconds = 5.0
    #: While a back end is down (or its breaker open), answers up to this old are served,
    #: marked stale; 0: never.
    stale_if_error_seconds: Seconds = 300.0

    @model_validator(mode="after")
    def _redis_named(self) -> CacheSettings:
        if self.store == "redis" and not self.redis_url.strip():
            raise ValueError("store: redis needs redis_url (e.g. redis://127.0.0.1:6379/0)")
        return self


class ResilienceSettings(StrictModel):
    """Timeouts, retries, breaker, bulkhead and cache around the back ends."""

    #: One deadline per incoming request, shared by all its back-end calls.
    request_deadline_seconds: PositiveFloat = 10.0
    #: API requests served at once; beyond, 503 at once. Each costs memory while it lasts
    #: (1,000 at once: about 25 MiB, which the allocator keeps afterwards).
    max_requests_in_flight: PositiveInt = 256
    #: `Retry-After` of the 503 when the gateway itself is full.
    overload_retry_after_seconds: PositiveInt = 1
    #: The policy of every back end ...
    default: BackendPolicy = BackendPolicy()
    #: ... with these changes for some (by back-end name; only the keys given change).
    backends: dict[str, BackendPolicy] = {}
    cache: CacheSettings = CacheSettings()
    #: A federated list with a back end down: `fail_fast` (503 naming it), or `partial`
    #: (answer from the others; `X-Partial-Result` names what was left out).
    federation: Literal["fail_fast", "partial"] = "fail_fast"

    def policy(self, backend: str) -> BackendPolicy:
        """The default policy with the back end's own keys laid over it."""
        override = self.backends.get(backend)
        if override is None:
            return self.default
        merged = _deep_merge(self.default.model_dump(), override.model_dump(exclude_unset=True))
        return BackendPolicy.model_validate(merged)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = (
            _deep_merge(below, value)
            if isinstance(below, dict) and isinstance(value, Mapping)
            else value
        )
    return out


class MetricsSettings(StrictModel):
    """`GET /metrics` for Prometheus (docs/operations.md).

    Like `/health` it needs no token by default, which is for loopback: with auth on and
    a non-loopback address, start-up asks for `scope` (scrapers send a bearer token) or
    an explicit `open_beyond_loopback: true` (a network only the scraper reaches).
    """

    enabled: bool = True
    #: The token scope a scrape needs (None: no token asked).
    scope: ScopeName | None = None
    open_beyond_loopback: bool = False


class GatewayConfig(StrictModel):
    """The whole configuration, as the running gateway uses it."""

    api: ApiSettings = ApiSettings()
    paging: PagingSettings = PagingSettings()
    #: Back ends by name; each validated by its kind's own options model.
    backends: dict[str, BackendOptions] = {}
    #: A resource from one back end, or (a list) federated over several.
    resources: dict[Collection, ResourceBinding | list[FederatedBinding]] = {}
    #: PATCH state transitions (default: `DEFAULT_BILL_TRANSITIONS`).
    lifecycle: dict[Literal["customerBill"], dict[BillState, list[BillState]]] = {}
    store: StoreSettings = StoreSettings()
    on_demand: OnDemandSettings | None = None
    events: EventsSettings | None = None
    #: Bearer tokens and scopes; off (anonymous, loopback only) unless enabled.
    auth: AuthSettings = AuthSettings()
    #: How much one request may make the gateway read, hold or do.
    limits: Limits = Limits()
    #: Retries, breakers, bulkheads and the read cache around the back ends.
    resilience: ResilienceSettings = ResilienceSettings()
    #: Prometheus `/metrics`: on, and who may scrape it.
    metrics: MetricsSettings = MetricsSettings()
    #: The file it was read from, for messages.
    _source: str = PrivateAttr("<built-in>")

    @property
    def source(self) -> str:
        return self._source

    @property
    def bill_transitions(self) -> dict[str, tuple[str, ...]]:
        table = self.lifecycle.get("customerBill")
        return {k: tuple(v) for k, v in (table or DEFAULT_BILL_TRANSITIONS).items()}

    def single(self) -> dict[str, ResourceBinding]:
        """Resources served by one back end."""
        return {c: b for c, b in self.resources.items() if isinstance(b, ResourceBinding)}

    def federated(self) -> dict[str, list[FederatedBinding]]:
        """Resources served by several back ends at once, in route order."""
        return {c: b for c, b in self.resources.items() if isinstance(b, list)}

    def backends_in_use(self) -> set[str]:
        names = {b.backend for b in self.single().values()}
        names |= {b.backend for routes in self.federated().values() for b in routes}
        if self.on_demand is not None:
            names |= self.on_demand.actions_by_backend.keys()
        return names


def load_config(path: str | Path = DEFAULT_CONFIG) -> GatewayConfig:
    """Read and check a configuration file; `ConfigError` names the file, line and place."""
    path = Path(path)
    file = str(path)
    try:
        data = load_yaml(path)
    except MappingSpecError as exc:
        raise ConfigError(exc.file, exc.place, exc.line, exc.reason) from None
    if not isinstance(data, SpecMap):
        raise ConfigError(file, "", 1, "a config file is a YAML mapping")
    raw = _expand(data)
    section = raw.get("backends") or {}
    try:
        backends = _backend_models(section).validate_python(section)
    except ValidationError as exc:
        raise _config_error(exc, data, file, ("backends",)) from None
    try:
        config = GatewayConfig.model_validate(
            {**raw, "backends": backends}, context={"root": path.parent}
        )
    except ValidationError as exc:
        raise _config_error(exc, data, file) from None
    config._source = file
    _check_references(config, data, file)
    return config


def _backend_models(section: Any) -> TypeAdapter[dict[str, BackendOptions]]:
    """Back ends as one union discriminated by `kind`: the bundled kinds and those used."""
    used = set()
    if isinstance(section, Mapping):
        used = {str(s.get("kind")) for s in section.values() if isinstance(s, Mapping)}
    models = [options_model(k) for k in sorted(set(BUNDLED_KINDS) | (used & set(known_kinds())))]
    union: Any = Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007
    return TypeAdapter(dict[str, union])


def _config_error(
    exc: ValidationError, data: SpecMap, file: str, prefix: tuple[str, ...] = ()
) -> ConfigError:
    """The most specific validation error, placed on the line of the key it is about.

    A wrong key comes first (its value's errors follow from it); of a union's errors (a
    resource is one binding or a list of them) the deepest one is about the form the file
    actually uses.
    """
    error = max(exc.errors(include_url=False), key=lambda e: ("[key]" in e["loc"], len(e["loc"])))
    loc: tuple[Any, ...] = prefix + tuple(error["loc"])
    if error["type"] == "unknown_key":
        loc += (error["ctx"]["key"],)
    place, line = _locate(data, loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = f"missing {loc[-1]!r}"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown back-end kind (known: {', '.join(known_kinds())})"
    elif error["type"] == "union_tag_not_found":
        message = "a back end needs at least {kind: ...}"
    return ConfigError(file, place, line, message)


def _locate(data: SpecMap, loc: tuple[Any, ...]) -> tuple[str, int | None]:
    """The dotted place and line of a validation error's location in the YAML."""
    node: Any = data
    line = data.line or 1
    parts: list[str] = []
    for item in loc:
        if isinstance(node, SpecMap) and item in node:
            line = node.line_of(item) or line
            node = node[item]
            parts.append(str(item))
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
            line = getattr(node, "line", None) or line
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        # else: a union member's tag or a model-level check: stay on the enclosing key
    return ".".join(parts), line


def _check_references(config: GatewayConfig, data: SpecMap, file: str) -> None:
    """What a model alone cannot know: names that must refer to other sections."""

    def fail(loc: tuple[Any, ...], reason: str) -> ConfigError:
        place, line = _locate(data, loc)
        return ConfigError(file, place, line, reason)

    for collection, binding in config.resources.items():
        routes = binding if isinstance(binding, list) else [binding]
        for i, route in enumerate(routes):
            loc: tuple[Any, ...] = ("resources", collection)
            loc += (i,) if isinstance(binding, list) else ()
            if route.backend not in config.backends:
                raise fail((*loc, "backend"), f"no back end {route.backend!r}")
        if isinstance(binding, list):
            prefixes = [r.id_prefix for r in binding]
            for a in prefixes:
                if prefixes.count(a) > 1 or any(a != b and b.startswith(a) for b in prefixes):
                    raise fail(("resources", collection), f"id_prefix {a!r} is not distinct")
    if config.on_demand is not None:
        key = "actions" if config.on_demand.actions is not None else "backend"
        for backend in config.on_demand.actions_by_backend:
            if backend not in config.backends:
                raise fail(("on_demand", key), f"no back end {backend!r}")
    if config.events is not None:
        for watched in config.events.change_detection:
            if watched not in config.resources:
                raise fail(
                    ("events", "change_detection", watched),
                    "not a resource served from a back end",
                )


def _substitute(text: str) -> str:
    """Environment values into `text`; a default used is substituted in turn."""
    return _ENV.sub(
        lambda m: os.environ[m[1]] if m[1] in os.environ else _substitute(m[2] or ""), text
    )


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _substitute(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value
