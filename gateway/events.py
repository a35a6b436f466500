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
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth import Caller
from gateway.callbacks import CallbackPolicy
from gateway.config import DeliverySettings
from gateway.errors import bad_request, not_found
from gateway.oas import AttributeTypes, attribute_types, schema_errors
from gateway.patch import invalid, parse_body
from gateway.query import RESERVED, parse_query
from gateway.residual import compile_filters
from gateway.store import EventKind, GatewayStore, Hub, OutboxEvent

log = structlog.get_logger("gateway.events")
audit = structlog.get_logger("gateway.audit")

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
        hubs = await self.store.hubs(conn)
        queued = []
        for event in events:
            payload = orjson.dumps(event).decode()
            for subscriber in hubs:
                if self._matches(subscriber, event):
                    queued.append(
                        OutboxEvent(
                            event_id=event["eventId"],
                            hub_id=subscriber.id,
                            url=self.url_for(subscriber.callback, event["eventType"]),
                            event_type=event["eventType"],
                            payload=payload,
                        )
                    )
        if queued:
            await self.store.enqueue_events(conn, queued)
            log.info("events_queued", events=len(events), deliveries=len(queued))
        return len(queued)

    def _matches(self, subscriber: Hub, event: Resource) -> bool:
        if subscriber.accounts is not None and _account(event) not in subscriber.accounts:
            return False  # a subscriber never learns of another account's resources
        test = self._queries.get(subscriber.id)
        if test is None:
            try:
                test = compile_hub_query(subscriber.query)
            except Exception:  # a query stored by an older version that no longer parses
                log.warning("hub_query_unusable", hub=subscriber.id)
                test = lambda event: False  # noqa: E731
            self._queries[subscriber.id] = test
        return test(event)

    async def observe(
        self,
        conn: AsyncConnection,
        resource_type: str,
        key: str,
        state: str | None,
        *,
        existed: bool = False,
    ) -> EventKind | None:
        """Record a back-end resource's state; the event kind due for it, if any.

        See `GatewayStore.record_state`: one log of reported states is shared by the
        gateway's own writes and the change detector, so each change is told once.
        """
        return await self.store.record_state(conn, resource_type, key, state, existed=existed)


class HubService:
    """POST /hub and DELETE /hub/{id}."""

    def __init__(self, store: GatewayStore, policy: CallbackPolicy) -> None:
        self.store = store
        self.policy = policy

    async def register(self, body: bytes, caller: Caller) -> Resource:
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
        ident = await self.store.add_hub(callback, query, caller.subject, caller.accounts)
        log.info("hub_registered", hub=ident, callback=callback)
        audit.info("hub_registered", id=ident, callback=callback, query=query)
        out = {"id": ident, "callback": callback, "@type": "Hub"}
        if query:
            out["query"] = query
        return out

    async def unregister(self, ident: str, caller: Caller) -> None:
        # Deleting a subscription stops its deliveries, including those queued. Another
        # caller's hub is a 404, as one that does not exist.
        if not await self.store.remove_hub(ident, caller.subject):
            raise not_found("hub", ident)
        log.info("hub_unregistered", hub=ident)
        audit.info("hub_unregistered", id=ident)


def _account(event: Resource) -> str | None:
    """The billing account of the resource an event is about."""
    for resource in (event.get("event") or {}).values():
        account = resource.get("billingAccount") if isinstance(resource, dict) else None
        if isinstance(account, dict) and isinstance(account.get("id"), str):
            return str(account["id"])
    return None
