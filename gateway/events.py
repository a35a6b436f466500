"""Events of TMF678 and the subscriptions (hubs) that receive them.

An event is written to the store's outbox once per matching hub, in the same store
transaction as the change it reports, so it is delivered (at least once) or the change
did not happen. For back-end resources, the gateway remembers the last state it
reported per bill (`seen_state`); an event is emitted only when that changes, which is
what makes the gateway's own writes and the change detector agree on "exactly once".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from time import time
from typing import Any

import orjson
import structlog
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.callbacks import CallbackPolicy
from gateway.config import DeliverySettings
from gateway.errors import bad_request, not_found
from gateway.oas import AttributeTypes, attribute_types, schema_errors
from gateway.patch import invalid, parse_body
from gateway.query import RESERVED, parse_query
from gateway.residual import compile_filters
from gateway.store import GatewayStore, hub, now_text, outbox, seen_state

log = structlog.get_logger("gateway.events")

Resource = dict[str, Any]

#: Event type -> the key of the resource inside `event`.
EVENT_TYPES = {
    "CustomerBillCreateEvent": "customerBill",
    "CustomerBillStateChangeEvent": "customerBill",
    "CustomerBillOnDemandCreateEvent": "customerBillOnDemand",
    "CustomerBillOnDemandStateChangeEvent": "customerBillOnDemand",
}


def build_event(event_type: str, resource: Resource) -> Resource:
    """An event document as the OAS defines it, with a fresh, stable `eventId`."""
    ident = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "@type": event_type,
        "eventId": ident,
        "id": ident,
        "eventTime": now,
        "timeOccurred": now,
        "eventType": event_type,
        "domain": "CustomerBillManagement",
        "title": event_type,
        "event": {EVENT_TYPES[event_type]: resource},
    }


def listener_name(event_type: str) -> str:
    return event_type[0].lower() + event_type[1:]


@cache
def event_attributes() -> AttributeTypes:
    """What a hub query may filter on: the union of the four event schemas."""
    types: dict[str, str] = {}
    in_array: set[str] = set()
    for event_type in EVENT_TYPES:
        found = attribute_types(event_type, max_depth=5)
        for path, type_ in found.types.items():
            types.setdefault(path, type_)
        in_array |= found.in_array
    return AttributeTypes(types, frozenset(in_array))


def compile_hub_query(query: str | None) -> Callable[[Resource], bool]:
    """A hub's `query` (TMF630 filters on the event) as a predicate; 400 when malformed."""
    if not query:
        return lambda event: True
    parsed = parse_query(query.lstrip("?"), event_attributes(), default_limit=1, max_limit=1)
    used = {part.split("=", 1)[0] for part in query.lstrip("?").split("&")}
    if used & RESERVED:
        raise bad_request("Invalid hub query", "a hub query takes filters only")
    return compile_filters(parsed.filters, event_attributes().types)


class EventPublisher:
    """Turns changes into outbox rows, one per subscribed hub whose query matches."""

    def __init__(self, store: GatewayStore, settings: DeliverySettings, base_url: str) -> None:
        self.store = store
        self.settings = settings
        self.base_url = base_url  # for hrefs inside events, which are sent outside requests
        self._queries: dict[str, Callable[[Resource], bool]] = {}
        self.wake: Callable[[], None] = lambda: None

    def url_for(self, callback: str, event_type: str) -> str:
        if self.settings.post_to == "callback":
            return callback
        return f"{callback.rstrip('/')}/listener/{listener_name(event_type)}"

    async def publish(self, conn: AsyncConnection, events: Sequence[Resource]) -> int:
        """Queue `events` for every matching hub, inside the caller's store transaction."""
        if not events:
            return 0
        hubs = (await conn.execute(select(hub))).mappings().all()
        now = time()
        rows = []
        for event in events:
            payload = orjson.dumps(event).decode()
            for subscriber in hubs:
                if self._matches(subscriber, event):
                    rows.append(
                        {
                            "event_id": event["eventId"],
                            "hub_id": subscriber["id"],
                            "url": self.url_for(subscriber["callback"], event["eventType"]),
                            "event_type": event["eventType"],
                            "payload": payload,
                            "state": "pending",
                            "attempts": 0,
                            "due_at": now,
                            "created_at": now,
                        }
                    )
        if rows:
            await conn.execute(insert(outbox), rows)
            log.info("events_queued", events=len(events), deliveries=len(rows))
        return len(rows)

    def _matches(self, subscriber: Any, event: Resource) -> bool:
        test = self._queries.get(subscriber["id"])
        if test is None:
            try:
                test = compile_hub_query(subscriber["query"])
            except Exception:  # a query stored by an older version that no longer parses
                log.warning("hub_query_unusable", hub=subscriber["id"])
                test = lambda event: False  # noqa: E731
            self._queries[subscriber["id"]] = test
        return test(event)

    async def observe(
        self,
        conn: AsyncConnection,
        resource_type: str,
        key: str,
        state: str | None,
        *,
        existed: bool = False,
    ) -> str | None:
        """Record a back-end resource's state; the event type due for it, if any.

        A key seen for the first time is a creation (unless the caller knows it `existed`,
        as a PATCH does); a known key whose state differs is a state change; anything else
        was already reported.
        """
        changed = await conn.execute(
            update(seen_state)
            .where(
                (seen_state.c.resource == resource_type)
                & (seen_state.c.key == key)
                & ((seen_state.c.state != state) | seen_state.c.state.is_(None))
            )
            .values(state=state)
        )
        if changed.rowcount:
            return "StateChangeEvent"
        known = await conn.execute(
            select(seen_state.c.key).where(
                (seen_state.c.resource == resource_type) & (seen_state.c.key == key)
            )
        )
        if known.first() is not None:
            return None
        await conn.execute(insert(seen_state).values(resource=resource_type, key=key, state=state))
        return "StateChangeEvent" if existed else "CreateEvent"


class HubService:
    """POST /hub and DELETE /hub/{id}."""

    def __init__(self, store: GatewayStore, policy: CallbackPolicy) -> None:
        self.store = store
        self.policy = policy

    async def register(self, body: bytes) -> Resource:
        request = parse_body(body)
        if not isinstance(request, dict):
            raise invalid("Invalid body", "A Hub is a JSON object")
        request.setdefault("@type", "Hub")  # required by the OAS, with one sensible value
        errors = schema_errors("Hub_FVO", request)
        if errors:
            raise invalid("Invalid Hub", "; ".join(errors[:5]))
        callback, query = request["callback"], request.get("query")
        await self.policy.require(callback)
        compile_hub_query(query)
        ident = str(uuid.uuid4())
        async with self.store.transaction() as conn:
            await conn.execute(
                insert(hub).values(id=ident, callback=callback, query=query, created_at=now_text())
            )
        log.info("hub_registered", hub=ident, callback=callback)
        out = {"id": ident, "callback": callback, "@type": "Hub"}
        if query:
            out["query"] = query
        return out

    async def unregister(self, ident: str) -> None:
        async with self.store.transaction() as conn:
            gone = await conn.execute(delete(hub).where(hub.c.id == ident))
            if not gone.rowcount:
                raise not_found("hub", ident)
            # Deleting a subscription stops its deliveries, including those queued.
            await conn.execute(
                delete(outbox).where((outbox.c.hub_id == ident) & (outbox.c.state == "pending"))
            )
        log.info("hub_unregistered", hub=ident)
