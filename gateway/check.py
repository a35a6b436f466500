"""`tmf678-gateway check`: is this configuration ready to serve, before serving it?

It loads the configuration and every mapping, reaches each back end in use, reads a few
real records of each resource through its mapping and validates them against the
TMF678 OAS, and compiles the on-demand actions. Every problem is one line on stderr:
`file:line: place: reason` for the configuration, mappings and actions (the mapping's
line of the attribute a record breaks), and `back end NAME: unreachable: ...` for a back
end that cannot be reached. Nothing is written anywhere (the gateway store is not
opened: it would be migrated).

Exit codes: 0 all good; 1 problems found (listed); 2 the configuration file itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from adapters.base import Adapter, BackendError
from adapters.registry import build_adapter
from gateway.calls import BackendDown
from gateway.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, ResourceBinding, load_config
from gateway.errors import ApiError
from gateway.oas import schema_errors
from gateway.query import Query
from gateway.resources import API_PREFIX, RESOURCE_TYPES
from gateway.services import StartupError, bind_reader, compile_actions
from mappings.compiler import read_mapping
from mappings.errors import SpecError

#: Records read (and validated) per resource and back end.
DEFAULT_SAMPLE = 20
_BASE = "http://gateway.check" + API_PREFIX


@dataclass(slots=True)
class Findings:
    """What the check found wrong, one line each, and what it checked."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    #: The last failure logged per back end (its reason, which a TMF error leaves out).
    details: dict[str, str] = field(default_factory=dict)

    def problem(self, line: str) -> None:
        self.problems.append(line)

    def keep_details(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        """A structlog processor: back-end failures' reasons kept, every log line dropped.

        The gateway logs why a back end failed and answers callers without it; `check`
        reports to the operator, so it puts the reason in the problem line instead.
        """
        backend, detail = event.get("backend"), event.get("detail")
        if isinstance(backend, str) and isinstance(detail, str):
            self.details[backend] = detail
        raise structlog.DropEvent


async def check(
    config: GatewayConfig, sample: int = DEFAULT_SAMPLE, found: Findings | None = None
) -> Findings:
    """Every problem of `config` that start-up or the first requests would meet."""
    found = found or Findings()
    adapters: dict[str, Adapter] = {}
    try:
        for name in sorted(config.backends_in_use()):
            adapter = await _reach(name, config, found)
            if adapter is not None:
                adapters[name] = adapter
        for collection, binding in _bindings(config):
            adapter = adapters.get(binding.backend)
            if adapter is None:
                continue
            if not await _check_resource(config, collection, binding, adapter, sample, found):
                del adapters[binding.backend]  # one line per back end, not per resource
                await adapter.close()
        if config.on_demand is not None:
            for name, path in config.on_demand.actions_by_backend.items():
                if name in adapters:
                    _check_action(adapters[name], path, found)
    finally:
        for adapter in adapters.values():
            await adapter.close()
    return found


def _bindings(config: GatewayConfig) -> list[tuple[str, ResourceBinding]]:
    pairs: list[tuple[str, ResourceBinding]] = list(config.single().items())
    for collection, routes in config.federated().items():
        pairs += [(collection, route) for route in routes]
    return pairs


async def _reach(name: str, config: GatewayConfig, found: Findings) -> Adapter | None:
    """The back end's adapter, opened within its timeout; None (and a line) if it cannot be."""
    timeout = config.backends[name].timeout_seconds
    try:
        adapter = build_adapter(name, config.backends[name])
        async with asyncio.timeout(timeout):
            await adapter.open()
    except (TimeoutError, BackendError) as exc:
        _unreachable(found, name, exc, timeout)
        return None
    return adapter


def _unreachable(found: Findings, name: str, exc: Exception, timeout: float) -> None:
    reason = exc.reason if isinstance(exc, BackendError) else f"no answer within {timeout:g} s"
    found.problem(f"back end {name}: unreachable: {reason}")


async def _check_resource(
    config: GatewayConfig,
    collection: str,
    binding: ResourceBinding,
    adapter: Adapter,
    sample: int,
    found: Findings,
) -> bool:
    """Read a sample through the mapping and validate it; False: the back end is unreachable."""
    name, timeout = binding.backend, config.backends[binding.backend].timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            reader = await bind_reader(
                collection, binding.mapping, adapter, timeout, config.paging.scan_batch_size
            )
    except StartupError as exc:
        found.problem(str(exc))  # file:line: place: reason
        return True
    except (TimeoutError, BackendError) as exc:
        _unreachable(found, name, exc, timeout)
        return False
    try:  # a plain reader: one call under the back end's timeout (gateway/calls.py)
        records, _ = await reader.list(Query(limit=sample), _BASE)
    except BackendDown as exc:
        detail = found.details.pop(name, None) or exc.message
        found.problem(f"back end {name}: unreachable: {detail}")
        return False
    except ApiError as exc:  # the reply does not fit the mapping (names the field)
        found.problem(f"{binding.mapping}: {collection} on {name}: {exc.message}")
        return True
    schema = RESOURCE_TYPES[collection].schema
    line_of = _attribute_lines(binding.mapping)
    invalid = 0
    for record in records:
        errors = schema_errors(schema, record)
        invalid += bool(errors)
        for error in errors:
            path = error.split(":", 1)[0]
            found.problem(
                f"{binding.mapping}:{line_of(path)}: {collection} id {record.get('id')!r}"
                f" on {name} breaks the OAS {schema}: {error}"
            )
    if not invalid:
        found.checked.append(f"{collection} on {name}: {len(records)} records valid")
    return True


def _attribute_lines(path: Path) -> Callable[[str], int | None]:
    """The mapping line of an OAS error path (`billingAccount/id`), or of its nearest parent."""
    spec = read_mapping(path)

    def line(error_path: str) -> int | None:
        parts = [p for p in error_path.split("/") if p and p != "<root>" and not p.isdigit()]
        return spec.line_at(".".join(["attributes", *parts]))

    return line


def _check_action(adapter: Adapter, path: Path, found: Findings) -> None:
    try:
        compile_actions(adapter, path)
    except StartupError as exc:
        found.problem(str(exc))
    except SpecError as exc:
        found.problem(str(exc))


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tmf678-gateway check", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    parser.add_argument(
        "--sample", type=_positive, default=DEFAULT_SAMPLE, help="records read per resource"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tmf678-gateway check: {exc}", file=sys.stderr)
        return 2
    found = Findings()
    structlog.configure(processors=[found.keep_details])  # reasons into the report
    asyncio.run(check(config, args.sample, found))
    for line in found.checked:
        print(f"ok: {line}")
    for line in found.problems:
        print(line, file=sys.stderr)
    if found.problems:
        print(f"tmf678-gateway check: {len(found.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"tmf678-gateway check: {config.source} is ready to serve")
    return 0
