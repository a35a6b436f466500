"""PATCH of a resource: apply the patch, keep to the writable attributes, write, re-read.

The write reaches the back end through the mapping's reverse direction (a state becomes
its legacy code, a bill cycle id its legacy key) as one compare-and-set statement: it
only changes the row if the columns still hold what the patch was checked against. When
another writer got there first, the patch is checked again on the fresh resource (so a
lifecycle rule is never bypassed), or answered 412 when the caller sent `If-Match`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

import orjson
import structlog

from adapters.base import Predicate
from gateway.calls import backend_call
from gateway.errors import ApiError, not_found
from gateway.events import EventPublisher, build_event
from gateway.lifecycle import Lifecycle
from gateway.oas import load_spec, schema_errors
from gateway.patch import apply_patch, invalid
from gateway.pushdown import reverse_filter
from gateway.query import Filter
from gateway.reads import Reader, ResourceReader
from gateway.resources import with_prefixed_id

Resource = dict[str, Any]
_ATTEMPTS = 3
#: What the audit log records of a PATCH, before and after.
_AUDITED = ("state", "billCycle")
audit = structlog.get_logger("gateway.audit")
log = structlog.get_logger("gateway.writes")


def etag(resource: Resource, base: str) -> str:
    """A strong validator of the resource's content (independent of the request's host)."""
    body = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).replace(base.encode(), b"")
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches_if_match(header: str, current: str) -> bool:
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or current in tags


@cache
def mvo_properties(schema: str) -> frozenset[str]:
    """First-level attributes a `_MVO` schema of the OAS lets a client send."""
    found: set[str] = set()
    schemas = load_spec()["components"]["schemas"]

    def walk(node: dict[str, Any]) -> None:
        if "$ref" in node:
            walk(schemas[node["$ref"].rsplit("/", 1)[1]])
            return
        found.update(node.get("properties", {}))
        for part in node.get("allOf", ()):
            walk(part)

    walk(schemas[schema])
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class PatchRequest:
    """A PATCH as the route received it."""

    ident: str
    body: bytes
    content_type: str | None
    if_match: str | None
    #: The API root of this request, for `href`s.
    base: str
    #: Whether the caller may see a resource (its data scope): one it may not is a 404.
    visible: Callable[[Resource], bool] = lambda item: True


class Patcher(Protocol):
    async def patch(self, request: PatchRequest) -> tuple[Resource, str]:
        """The patched resource and its ETag."""
        ...


@dataclass(slots=True)
class ResourcePatcher:
    """PATCH for one resource type over its reader's mapping and source."""

    reader: ResourceReader
    mvo_schema: str
    lifecycle: Lifecycle | None = None
    #: Writable references that must resolve, e.g. `billCycle.id` -> the billCycle reader.
    references: dict[str, Reader] = field(default_factory=dict)
    publisher: EventPublisher | None = None
    #: A federated route's id prefix: events and the change log use the federated ids.
    id_prefix: str = ""
    #: Federated references (`billCycle.id` -> `L-`): callers write the federated id, the
    #: back end gets its own.
    reference_prefixes: dict[str, str] = field(default_factory=dict)

    async def patch(self, request: PatchRequest) -> tuple[Resource, str]:
        ident, if_match, base = request.ident, request.if_match, request.base
        mapping, source = self.reader.mapping, self.reader.source
        by_id = reverse_filter(Filter("id", "eq", (ident,), "id"), mapping, source)
        if by_id is None:
            raise ApiError(501, "Not implemented", "This back end cannot update by id")
        for _ in range(_ATTEMPTS):
            async with backend_call(self.reader.backend, self.reader.timeout):
                record = await source.one(by_id)
                if record is None:
                    raise not_found(mapping.collection, ident)
                current = mapping.to_tmf(record, base)
            if not request.visible(current):
                raise not_found(mapping.collection, ident)
            if if_match is not None and not matches_if_match(if_match, etag(current, base)):
                raise ApiError(
                    412,
                    "Precondition failed",
                    "The resource changed since the ETag in If-Match was read",
                    code="PRECONDITION_FAILED",
                )
            updated = apply_patch(current, request.body, request.content_type)
            changes = await self._changes(current, updated, base)
            if not changes:
                return current, etag(current, base)
            values = {ref.column: raw for ref, raw in changes}
            expected = {ref.column: record[ref.column] for ref, _ in changes}
            if mapping.stamp is not None:
                values[mapping.stamp.column] = mapping.stamp.transform.to_raw(datetime.now(UTC))
            async with backend_call(self.reader.backend, self.reader.timeout):
                written = await source.update(by_id, values, expected)
            if written:
                break
            if if_match is not None:
                raise ApiError(412, "Precondition failed", "The resource changed meanwhile")
        else:
            raise ApiError(
                409, "Concurrent update", "The resource kept changing; try again", code="CONFLICT"
            )
        self.reader.forget(ident)  # cached reads of it, and lists it is in, are out of date
        if self.reader.cache is not None:
            await self.reader.cache.settled()  # a shared cache: every instance sees it first
        reread = await self._reread(by_id, ident, base)
        # The write succeeded: report it, with what is known when the re-read failed.
        written_record, fresh = reread if reread is not None else (None, updated)
        audit.info(
            f"{mapping.collection}_patched",
            id=self.id_prefix + ident,
            before={k: current.get(k) for k in _AUDITED},
            after={k: fresh.get(k) for k in _AUDITED},
        )
        if self.publisher is not None and fresh.get("state") != current.get("state"):
            base_url = self.publisher.base_url
            resource = (
                mapping.to_tmf(written_record, base_url)
                if written_record is not None
                else _patched(mapping.to_tmf(record, base_url), request)
            )
            if resource is not None:
                event_resource = with_prefixed_id(
                    resource, self.id_prefix, base_url, mapping.collection
                )
                await self._state_changed(event_resource)
        return fresh, etag(fresh, base)

    async def _reread(
        self, by_id: Predicate, ident: str, base: str
    ) -> tuple[dict[str, Any], Resource] | None:
        """The record as written and its resource; None (logged) when it cannot be read now."""
        where = {"resource": self.reader.mapping.collection, "id": self.id_prefix + ident}
        try:
            async with backend_call(self.reader.backend, self.reader.timeout):
                record = await self.reader.source.one(by_id)
                fresh = None if record is None else self.reader.mapping.to_tmf(record, base)
        except ApiError as exc:
            log.warning("patch_reread_failed", **where, status=exc.status, detail=exc.message)
            return None
        if record is None or fresh is None:
            log.warning("patch_reread_failed", **where, detail="not found after the write")
            return None
        return record, fresh

    async def _state_changed(self, resource: Resource) -> None:
        """Report the new state, unless the change detector already has (it shares the log)."""
        assert self.publisher is not None
        async with self.publisher.store.transaction() as conn:
            kind = await self.publisher.observe(
                conn,
                self.reader.mapping.collection,
                resource["id"],
                resource["state"],
                existed=True,
            )
            if kind is not None:
                event_type = f"{self.reader.mapping.resource}{kind}"
                await self.publisher.publish(conn, [build_event(event_type, resource)])

    async def _changes(
        self, current: Resource, updated: Resource, base: str
    ) -> list[tuple[Any, Any]]:
        """(column ref, raw value) pairs to write; 400 for anything not writable."""
        allowed = mvo_properties(self.mvo_schema)
        touched = {k for k in current.keys() | updated.keys() if current.get(k) != updated.get(k)}
        refused = sorted(touched - allowed)
        if refused:
            writable = ", ".join(sorted(allowed - {"@type", "@baseType", "@schemaLocation"}))
            raise invalid(
                "Attribute not writable",
                f"{', '.join(refused)} cannot be changed (writable: {writable})",
            )
        sent = {k: updated[k] for k in allowed if k in updated}
        errors = schema_errors(self.mvo_schema, sent)
        if errors:
            raise invalid("Invalid value", "; ".join(errors[:5]))
        if updated.get("@type") != current["@type"]:
            raise invalid("Invalid value", f"@type must stay {current['@type']!r}")
        changes = []
        for key in sorted(touched - {"@type", "@baseType", "@schemaLocation"}):
            if key not in updated:
                raise invalid("Attribute not removable", f"{key} cannot be removed")
            path, value = _written_leaf(key, updated[key])
            if path == "state" and self.lifecycle is not None:
                self.lifecycle.check(current.get("state"), value)
            target = self.references.get(path)
            shown = value  # the id as the caller names it (federated: with its prefix)
            prefix = self.reference_prefixes.get(path)
            if prefix is not None and value != _written_leaf(key, current.get(key))[1]:
                if not (isinstance(value, str) and value.startswith(prefix)):
                    raise invalid(
                        "Unknown reference",
                        f"{key} {value!r} is not held by this bill's back end "
                        f"(its ids start with {prefix!r})",
                    )
                value = value[len(prefix) :]
            if value == _written_leaf(key, current.get(key))[1]:
                continue  # e.g. only a reference's href or name differs: nothing to write
            ref = self.reader.mapping.writable.get(path)
            if ref is None:
                raise invalid("Attribute not writable", f"{key} cannot be changed on this back end")
            if target is not None and await target.get(str(shown), base) is None:
                raise invalid("Unknown reference", f"{key} {shown!r} does not exist")
            try:
                changes.append((ref, ref.transform.to_raw(value)))
            except (ValueError, TypeError) as exc:
                raise invalid("Invalid value", f"{key}: {exc}") from None
        return changes


def _patched(resource: Resource, request: PatchRequest) -> Resource | None:
    """The patch applied to the resource as read before the write (for its event)."""
    try:
        return apply_patch(resource, request.body, request.content_type)
    except ApiError as exc:  # e.g. a `test` of an href, which names the caller's host
        log.warning("patch_event_unbuilt", id=resource.get("id"), detail=exc.message)
        return None


def _written_leaf(key: str, value: Any) -> tuple[str, Any]:
    """A reference (`{id, href, ...}`) is written by its id; anything else as it is."""
    if isinstance(value, dict):
        return f"{key}.id", value.get("id")
    return key, value
