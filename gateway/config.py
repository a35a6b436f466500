"""Gateway configuration: a YAML file, checked at start-up with file and line in errors.

Strings may use `${NAME}` or `${NAME:-default}` to take a value from the environment
(database URLs, secrets). Relative mapping paths are relative to the config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.lifecycle import BILL_STATES, DEFAULT_BILL_TRANSITIONS
from gateway.resources import RESOURCE_TYPES
from mappings.errors import MappingSpecError
from mappings.loader import SpecMap, load_yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(MappingSpecError):
    """The gateway configuration is wrong; start-up stops with the file, place and reason."""


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: str
    timeout: float
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceBinding:
    collection: str
    backend: str
    mapping: Path
    id_prefix: str = ""
    accounts: str | None = None  # pattern of billingAccount ids this back end holds


@dataclass(frozen=True, slots=True)
class OnDemandConfig:
    #: back end -> its "bill now" action file; with several, accounts decide (federation)
    actions: dict[str, Path]
    mapping: Path
    worker: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventsConfig:
    delivery: dict[str, Any]
    allow_callback_networks: tuple[str, ...]
    #: collection -> (last-change attribute, poll interval in seconds)
    change_detection: dict[str, tuple[str, float]]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    backends: dict[str, BackendConfig]
    resources: dict[str, ResourceBinding]
    #: Resources served by several back ends at once (federation), in route order.
    federated: dict[str, list[ResourceBinding]] = field(default_factory=dict)
    public_base_url: str | None = None
    default_limit: int = 20
    max_limit: int = 1000
    scan_batch_size: int = 500
    bill_transitions: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_BILL_TRANSITIONS)
    )
    store_url: str = "sqlite+aiosqlite:///var/gateway_store.sqlite"
    on_demand: OnDemandConfig | None = None
    events: EventsConfig | None = None
    source: str = "<built-in>"


def load_config(path: str | Path = DEFAULT_CONFIG) -> GatewayConfig:
    path = Path(path)
    file = str(path)
    data = load_yaml(path)
    if not isinstance(data, SpecMap):
        raise ConfigError(file, "", 1, "a config file is a YAML mapping")

    def fail(place: str, node: SpecMap, key: str, reason: str) -> ConfigError:
        return ConfigError(file, place, node.line_of(key), reason)

    known = {"api", "paging", "backends", "resources", "lifecycle", "store", "on_demand", "events"}
    for key in data:
        if key not in known:
            raise fail(key, data, key, f"unknown key (known: {', '.join(sorted(known))})")

    api = _section(data, "api", file)
    public_base_url = _expand(api.get("public_base_url")) or None
    if public_base_url is not None and not re.match(r"^https?://", str(public_base_url)):
        raise fail("api.public_base_url", api, "public_base_url", "must start with http(s)://")

    paging = _section(data, "paging", file)
    default_limit = _positive_int(paging, "default_limit", 20, file)
    max_limit = _positive_int(paging, "max_limit", 1000, file)
    batch = _positive_int(paging, "scan_batch_size", 500, file)
    if default_limit > max_limit:
        raise fail("paging.default_limit", paging, "default_limit", "exceeds max_limit")

    backends: dict[str, BackendConfig] = {}
    section = _section(data, "backends", file)
    for name, spec in section.items():
        place = f"backends.{name}"
        if not isinstance(spec, SpecMap) or "kind" not in spec:
            raise fail(place, section, name, "a back end needs at least {kind: ...}")
        timeout = spec.get("timeout_seconds", 10)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise fail(f"{place}.timeout_seconds", spec, "timeout_seconds", "must be > 0")
        options = {k: _expand(v) for k, v in spec.items() if k not in ("kind", "timeout_seconds")}
        backends[name] = BackendConfig(name, str(spec["kind"]), float(timeout), options)

    resources: dict[str, ResourceBinding] = {}
    federated: dict[str, list[ResourceBinding]] = {}
    section = _section(data, "resources", file)
    for collection, spec in section.items():
        place = f"resources.{collection}"
        if collection not in RESOURCE_TYPES:
            raise fail(place, section, collection, "not a TMF678 resource collection")
        if isinstance(spec, list):
            routes = [
                _binding(collection, item, f"{place}[{i}]", backends, path, file, federated=True)
                for i, item in enumerate(spec)
            ]
            prefixes = [r.id_prefix for r in routes]
            for a in prefixes:
                if any(a != b and b.startswith(a) for b in prefixes) or prefixes.count(a) > 1:
                    raise fail(place, section, collection, f"id_prefix {a!r} is not distinct")
            federated[collection] = routes
        else:
            resources[collection] = _binding(collection, spec, place, backends, path, file)

    transitions = dict(DEFAULT_BILL_TRANSITIONS)
    lifecycle = _section(data, "lifecycle", file)
    for key in lifecycle:
        if key != "customerBill":
            raise fail(f"lifecycle.{key}", lifecycle, key, "only customerBill has a lifecycle")
    table = lifecycle.get("customerBill")
    if table is not None:
        transitions = _transitions(table, lifecycle, file)

    store = _section(data, "store", file)
    store_url = str(_expand(store.get("url") or GatewayConfig.store_url))
    on_demand = None
    section = data.get("on_demand")
    if section is not None:
        on_demand = _on_demand(section, data, backends, path.parent, file)

    events = None
    if data.get("events") is not None:
        events = _events(_section(data, "events", file), {**resources, **federated}, file)

    return GatewayConfig(
        backends=backends,
        resources=resources,
        federated=federated,
        public_base_url=str(public_base_url).rstrip("/") if public_base_url else None,
        default_limit=default_limit,
        max_limit=max_limit,
        scan_batch_size=batch,
        bill_transitions=transitions,
        store_url=store_url,
        on_demand=on_demand,
        events=events,
        source=file,
    )


def _binding(
    collection: str,
    spec: Any,
    place: str,
    backends: dict[str, BackendConfig],
    path: Path,
    file: str,
    federated: bool = False,
) -> ResourceBinding:
    line = spec.line if isinstance(spec, SpecMap) else None
    allowed = (
        {"backend", "mapping", "id_prefix", "accounts"} if federated else {"backend", "mapping"}
    )
    if (
        not isinstance(spec, SpecMap)
        or {"backend", "mapping"} - spec.keys()
        or spec.keys() - allowed
    ):
        raise ConfigError(file, place, line, f"expected {{{', '.join(sorted(allowed))}}}")
    if spec["backend"] not in backends:
        raise ConfigError(
            file, f"{place}.backend", spec.line_of("backend"), f"no back end {spec['backend']!r}"
        )
    prefix = str(spec.get("id_prefix") or "")
    if federated and not prefix:
        raise ConfigError(file, f"{place}.id_prefix", line, "each federated back end needs one")
    accounts = spec.get("accounts")
    if accounts is not None:
        try:
            re.compile(str(accounts))
        except re.error as exc:
            raise ConfigError(
                file, f"{place}.accounts", spec.line_of("accounts"), str(exc)
            ) from None
    mapping = path.parent / str(_expand(spec["mapping"]))
    return ResourceBinding(collection, spec["backend"], mapping, prefix, accounts)


_WORKER_OPTIONS = {
    "poll_seconds",
    "lease_seconds",
    "max_attempts",
    "retry_base_seconds",
    "retry_max_seconds",
    "pause_after_action_seconds",
}


def _on_demand(
    section: Any, data: SpecMap, backends: dict[str, BackendConfig], root: Path, file: str
) -> OnDemandConfig:
    place = "on_demand"
    single = isinstance(section, SpecMap) and {"backend", "action"} <= section.keys()
    several = isinstance(section, SpecMap) and isinstance(section.get("actions"), SpecMap)
    if not isinstance(section, SpecMap) or "mapping" not in section or single == several:
        raise ConfigError(
            file,
            place,
            data.line_of(place),
            "expected {backend, action, mapping} or {actions: {back end: action}, mapping}",
        )
    named = {section["backend"]: section["action"]} if single else dict(section["actions"])
    for backend in named:
        if backend not in backends:
            line = section.line_of("backend" if single else "actions")
            raise ConfigError(file, f"{place}.backend", line, f"no back end {backend!r}")
    worker = section.get("worker") or SpecMap()
    for key, value in worker.items():
        if key not in _WORKER_OPTIONS:
            raise ConfigError(file, f"{place}.worker.{key}", worker.line_of(key), "unknown option")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(file, f"{place}.worker.{key}", worker.line_of(key), "a number >= 0")
    return OnDemandConfig(
        actions={b: root / str(_expand(a)) for b, a in named.items()},
        mapping=root / str(_expand(section["mapping"])),
        worker=dict(worker),
    )


_DELIVERY_OPTIONS = {
    "timeout_seconds": (int, float),
    "max_attempts": (int,),
    "max_age_seconds": (int, float),
    "retry_base_seconds": (int, float),
    "retry_max_seconds": (int, float),
    "concurrency": (int,),
    "poll_seconds": (int, float),
    "post_to": (str,),
}


def _events(section: SpecMap, resources: dict[str, Any], file: str) -> EventsConfig:
    for key in section:
        if key not in ("delivery", "allow_callback_networks", "change_detection"):
            raise ConfigError(file, f"events.{key}", section.line_of(key), "unknown key")
    delivery = section.get("delivery") or SpecMap()
    for key, value in delivery.items():
        place = f"events.delivery.{key}"
        kinds = _DELIVERY_OPTIONS.get(key)
        if kinds is None:
            raise ConfigError(file, place, delivery.line_of(key), "unknown option")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ConfigError(file, place, delivery.line_of(key), "wrong type")
        if key == "post_to" and value not in ("listener", "callback"):
            raise ConfigError(file, place, delivery.line_of(key), "listener or callback")
    networks = section.get("allow_callback_networks") or []
    for network in networks:
        try:
            ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            line = section.line_of("allow_callback_networks")
            raise ConfigError(
                file, "events.allow_callback_networks", line, f"not a network: {network!r}"
            ) from None
    detection = {}
    for collection, spec in (section.get("change_detection") or SpecMap()).items():
        place = f"events.change_detection.{collection}"
        line = section.line_of("change_detection")
        if collection not in resources:
            raise ConfigError(file, place, line, "not a resource served from a back end")
        if not isinstance(spec, SpecMap) or "attribute" not in spec:
            raise ConfigError(file, place, line, "expected {attribute, interval_seconds}")
        detection[collection] = (str(spec["attribute"]), float(spec.get("interval_seconds", 5)))
    return EventsConfig(dict(delivery), tuple(str(n) for n in networks), detection)


def _transitions(table: Any, parent: SpecMap, file: str) -> dict[str, tuple[str, ...]]:
    place = "lifecycle.customerBill"
    if not isinstance(table, SpecMap):
        raise ConfigError(file, place, parent.line_of("customerBill"), "state: [next states]")
    out = {}
    for state, nexts in table.items():
        nexts = nexts or []
        if not isinstance(nexts, list):
            raise ConfigError(file, f"{place}.{state}", table.line_of(state), "a list of states")
        for name in (state, *nexts):
            if name not in BILL_STATES:
                raise ConfigError(
                    file, f"{place}.{state}", table.line_of(state), f"unknown state {name!r}"
                )
        out[state] = tuple(nexts)
    return out


def _section(data: SpecMap, key: str, file: str) -> SpecMap:
    value = data.get(key)
    if value is None:
        empty = SpecMap()
        empty.line = data.line_of(key)
        return empty
    if not isinstance(value, SpecMap):
        raise ConfigError(file, key, data.line_of(key), "must be a mapping")
    return value


def _positive_int(node: SpecMap, key: str, default: int, file: str) -> int:
    value = node.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(file, key, node.line_of(key), "must be a positive whole number")
    return value


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m[1], m[2] if m[2] is not None else ""), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value
