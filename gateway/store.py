"""The gateway's own state, and the only module that speaks SQL to it.

Tables, and who writes them (always through the methods of `GatewayStore`):

- `bill_on_demand`: bill requests. `POST /customerBillOnDemand` creates them (on_demand.py);
  the on-demand worker claims, retries and finishes them.
- `hub`: event subscriptions, added by `POST /hub` and removed by `DELETE /hub/{id}`
  (events.py), which also drops the hub's undelivered events.
- `outbox`: one row per (event, subscriber), queued by the event publisher (events.py) in
  the same transaction as the change it reports; claimed, settled and purged by the
  delivery worker (delivery.py).
- `seen_state`: the last state reported per back-end resource, recorded by the publisher
  for the gateway's own writes and by the change detector (detector.py), which also
  records its first pass there.
- `watermark`: how far each change detector has read.
- `lease`: named leases on exclusive jobs (a back end's change detector, a hub's sender).
- `alembic_version`: the schema's revision (gateway/migrations).

An embedded SQLite file by default; PostgreSQL (any async SQLAlchemy URL) when several
gateway processes share the work. The schema is created and migrated by Alembic, at
start-up or by `tmf678-gateway migrate`, under a lock (gateway/migrations). Work is
shared by leases: a worker claims a request or an event with a compare-and-set on its
lease time (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent claimers take different
rows), so two workers never run the same one at once; a crashed worker's claim runs out,
and a worker that stops hands its claims back at once. A method that takes an `AsyncConnection`
runs inside the caller's transaction (`transaction()`), so that a change, its recorded
state and the events reporting it commit together; the others run in their own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import time
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Float,
    Index,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Update,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.base import BackendError
from adapters.sql import SqlAdapter, SqlOptions
from gateway import migrations

STORE_BACKEND = "gateway_store"
#: The owner recorded for what an anonymous caller (the loopback demo) creates.
ANONYMOUS_OWNER = "anonymous"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Rows per INSERT of a first pass: well under the bound parameters a statement may have.
_INSERT_BATCH = 1000

metadata = MetaData()

bill_on_demand = Table(
    "bill_on_demand",
    metadata,
    Column("seq", Integer, primary_key=True),  # creation order: the listing's default order
    Column("id", String(36), nullable=False, unique=True),
    Column("state", String(20), nullable=False, index=True),
    Column("billing_account_id", String(64), nullable=False, index=True),
    Column("billing_account_name", String(200)),
    Column("name", String(200)),
    Column("description", Text),
    Column("related_party", Text),  # JSON, as the client sent it
    Column("customer_bill_id", String(64)),
    Column("created_at", String(20), nullable=False),
    Column("updated_at", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(36)),
    Column("lease_until", Float, index=True),  # epoch seconds; also "not before" for retries
    Column("backend", String(60)),  # which back end makes the bill (several may be able to)
)


hub = Table(
    "hub",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("callback", Text, nullable=False),
    Column("query", Text),
    Column("created_at", String(20), nullable=False),
    # Who created it (only they may delete it), and the billing accounts whose events it
    # may receive (JSON list; NULL: every account).
    Column("owner", String(200)),
    Column("owner_accounts", Text),
)

# The transactional outbox: one row per (event, subscriber), written in the same store
# transaction as the change it reports, delivered at least once by the delivery worker.
outbox = Table(
    "outbox",
    metadata,
    # 64 bits: a row per event and subscriber adds up. SQLite's INTEGER key is 64 bits
    # already, and only INTEGER makes it the autoincrementing row id.
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("hub_id", String(36), nullable=False),
    Column("url", Text, nullable=False),
    Column("event_type", String(60), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(12), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", Float, nullable=False),  # epoch seconds: next attempt, or lease end
    Column("created_at", Float, nullable=False),
    Column("last_error", Text),
    Column("lease_owner", String(36)),  # the gateway whose claim it is under (while due_at)
    Index("ix_outbox_due", "state", "due_at"),
    # A hub's claim: its pending events in order, and those not due (migration 0003).
    Index("ix_outbox_hub_order", "hub_id", "state", "seq"),
    Index("ix_outbox_hub_due", "hub_id", "state", "due_at"),
)

# Named leases on exclusive jobs shared by several gateways (a back end's change detector,
# a hub's sender): whoever holds an unexpired row does the job.
named_lease = Table(
    "lease",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("owner", String(36), nullable=False),
    Column("until", Float, nullable=False),  # epoch seconds
)

# What the change detector last saw of each back-end resource, and how far it has read.
seen_state = Table(
    "seen_state",
    metadata,
    Column("resource", String(40), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("state", String(40)),
)
watermark = Table(
    "watermark",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("value", Text, nullable=False),
)


#: What a state recorded for a back-end resource calls for: the suffix of its event type.
EventKind = Literal["CreateEvent", "StateChangeEvent"]


def _held(ident: str, owner: str) -> ColumnElement[bool]:
    """The request `ident`, still in progress and leased to `owner`."""
    return (
        (bill_on_demand.c.id == ident)
        & (bill_on_demand.c.state == "inProgress")
        & (bill_on_demand.c.lease_owner == owner)
    )


def now_text() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class OnDemandRequest:
    """A claimed request: what the worker needs to make its bill."""

    id: str
    account_id: str
    attempts: int  # this one included
    backend: str | None
    created_at: float | None = None  # epoch seconds (whole seconds, as stored)


@dataclass(frozen=True, slots=True)
class Hub:
    """A subscription: where its events go, and which (a TMF630 filter on the event)."""

    id: str
    callback: str
    query: str | None
    #: The billing accounts whose events its owner may see; None: every account.
    accounts: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event for one subscriber, to be queued."""

    event_id: str
    hub_id: str
    url: str
    event_type: str
    payload: str  # the event document, as sent


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """A queued event leased to one delivery worker."""

    seq: int
    event_id: str
    url: str
    payload: str
    attempts: int  # attempts made before this one
    created_at: float  # epoch seconds


class GatewayStore:
    def __init__(self, url: str) -> None:
        self.adapter = SqlAdapter(STORE_BACKEND, SqlOptions(url=url))

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, and (unless told not to) create or migrate the schema."""
        url = make_url(self.adapter.url)
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        await self.adapter.open()
        if url.drivername.startswith("sqlite"):
            event.listen(self.adapter.engine.sync_engine, "connect", _sqlite_durability)
            await self.adapter.engine.dispose()  # reconnect with the setting applied
        if url.drivername.startswith("sqlite"):
            async with self.adapter.engine.connect() as conn:
                # Readers never block the writer, and other gateway processes may share it.
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        if migrate:
            await self.migrate()

    async def migrate(self) -> str:
        """Bring the schema to the newest revision (see gateway/migrations); that revision."""
        try:
            return await migrations.upgrade(self.adapter.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise BackendError(f"gateway store: migration failed: {exc}", status=503) from exc

    async def close(self) -> None:
        await self.adapter.close()

    async def ping(self) -> None:
        """Reach the store's database (readiness); raises when it cannot be reached."""
        async with self.transaction() as conn:
            await conn.execute(select(1))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One store transaction: committed when the block ends, rolled back if it raises."""
        try:
            async with self.adapter.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise BackendError(f"gateway store: {exc}", status=503) from exc

    # Bills on demand: the API creates requests, the workers claim and finish them.

    async def create_on_demand(
        self,
        conn: AsyncConnection,
        *,
        backend: str,
        account_id: str,
        account_name: str | None,
        name: str | None,
        description: str | None,
        related_party: Any,
    ) -> str:
        """Store a new request, `inProgress` and due for work; returns its id."""
        ident = str(uuid.uuid4())
        stamp = now_text()
        row = {
            "id": ident,
            "state": "inProgress",
            "billing_account_id": account_id,
            "billing_account_name": account_name,
            "name": name,
            "description": description,
            "related_party": orjson.dumps(related_party).decode() if related_party else None,
            "created_at": stamp,
            "updated_at": stamp,
            "attempts": 0,
            "backend": backend,
        }
        await conn.execute(insert(bill_on_demand).values(row))
        return ident

    async def claim_on_demand(self, owner: str, lease_seconds: float) -> OnDemandRequest | None:
        """The oldest request due for work, leased to `owner`; None when there is none."""
        now = time()
        due = (bill_on_demand.c.state == "inProgress") & or_(
            bill_on_demand.c.lease_until.is_(None), bill_on_demand.c.lease_until <= now
        )
        async with self.transaction() as conn:
            oldest = (
                select(bill_on_demand)
                .where(due)
                .order_by(bill_on_demand.c.seq)
                .limit(1)
                .with_for_update(skip_locked=True)  # PostgreSQL: others take the next one
            )
            row = (await conn.execute(oldest)).mappings().first()
            if row is None:
                return None
            claimed = await conn.execute(
                update(bill_on_demand)
                .where(due & (bill_on_demand.c.seq == row["seq"]))
                .values(
                    lease_owner=owner,
                    lease_until=now + lease_seconds,
                    attempts=bill_on_demand.c.attempts + 1,
                )
            )
        if claimed.rowcount != 1:
            return None  # another worker was quicker
        return OnDemandRequest(
            row["id"], row["billing_account_id"], row["attempts"] + 1, row["backend"]
        )

    async def finish_on_demand(
        self,
        conn: AsyncConnection,
        ident: str,
        owner: str,
        state: str,
        *,
        customer_bill_id: str | None = None,
        description: str | None = None,
    ) -> bool:
        """Record the outcome, if `owner` still holds the lease (else another worker does)."""
        values: dict[str, Any] = {"state": state, "updated_at": now_text(), "lease_until": None}
        if customer_bill_id is not None:
            values["customer_bill_id"] = customer_bill_id
        if description is not None:
            values["description"] = description
        result = await conn.execute(
            update(bill_on_demand).where(_held(ident, owner)).values(values)
        )
        return result.rowcount == 1

    async def on_demand_row(self, conn: AsyncConnection, ident: str) -> dict[str, Any]:
        """A request's row, column by column, for its mapping to make the TMF resource."""
        row = await conn.execute(select(bill_on_demand).where(bill_on_demand.c.id == ident))
        return dict(row.mappings().one())

    async def retry_on_demand_later(self, ident: str, owner: str, delay: float) -> None:
        """Give the request back, not to be claimed before `delay` seconds from now."""
        async with self.transaction() as conn:
            await conn.execute(
                update(bill_on_demand)
                .where((bill_on_demand.c.id == ident) & (bill_on_demand.c.lease_owner == owner))
                .values(lease_until=time() + delay, updated_at=now_text())
            )

    async def claim_on_demand_requests(
        self,
        owner: str,
        lease_seconds: float,
        limit: int,
        *,
        backend: str,
        strays_besides: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> list[OnDemandRequest]:
        """Up to `limit` due requests for `backend`, oldest first, leased to `owner`.

        Several workers (and several requests per worker) share the work this way. With
        `strays_besides` (every back end the caller serves), requests recorded for no back
        end or for one not listed are claimed too, so that none is left behind. `skip`:
        requests the caller is running already (and whose lease it renews).
        """
        if limit <= 0:
            return []
        now = time()
        table = bill_on_demand.c
        due = (table.state == "inProgress") & or_(
            table.lease_until.is_(None), table.lease_until <= now
        )
        mine: ColumnElement[bool] = table.backend == backend
        if strays_besides is not None:
            mine = or_(mine, table.backend.is_(None), table.backend.not_in(list(strays_besides)))
        candidates = (
            select(table.seq)
            .where(due & mine & table.id.not_in(list(skip)))
            .order_by(table.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: others take the next ones
        )
        async with self.transaction() as conn:
            # Two statements: PostgreSQL may run a LIMIT subquery of an UPDATE more than once.
            seqs = list((await conn.execute(candidates)).scalars())
            if not seqs:
                return []
            rows = await conn.execute(
                update(bill_on_demand)
                .where(table.seq.in_(seqs) & due)
                .values(
                    lease_owner=owner,
                    lease_until=now + lease_seconds,
                    attempts=table.attempts + 1,
                )
                .returning(
                    table.seq,
                    table.id,
                    table.billing_account_id,
                    table.attempts,
                    table.backend,
                    table.created_at,
                )
            )
            claimed = sorted(rows, key=lambda row: row[0])
        return [
            OnDemandRequest(ident, account, attempts, row_backend, _epoch(created))
            for _, ident, account, attempts, row_backend, created in claimed
        ]

    async def renew_on_demand_lease(self, ident: str, owner: str, lease_seconds: float) -> bool:
        """Keep a running request's lease; False when `owner` no longer holds it."""
        async with self.transaction() as conn:
            renewed = await conn.execute(
                update(bill_on_demand)
                .where(_held(ident, owner))
                .values(lease_until=time() + lease_seconds)
            )
        return renewed.rowcount == 1

    # Hubs: the subscriptions events are queued for.

    async def add_hub(
        self,
        callback: str,
        query: str | None,
        owner: str = ANONYMOUS_OWNER,
        accounts: frozenset[str] | None = None,
    ) -> str:
        """Store a subscription of `owner`, who may see `accounts`; returns its id."""
        ident = str(uuid.uuid4())
        scope = None if accounts is None else orjson.dumps(sorted(accounts)).decode()
        async with self.transaction() as conn:
            await conn.execute(
                insert(hub).values(
                    id=ident,
                    callback=callback,
                    query=query,
                    created_at=now_text(),
                    owner=owner,
                    owner_accounts=scope,
                )
            )
        return ident

    async def remove_hub(self, ident: str, owner: str = ANONYMOUS_OWNER) -> bool:
        """Delete `owner`'s subscription and its undelivered events; False when there is none.

        Another caller's hub is not theirs to delete, and is reported as absent. Delivered
        and dead-lettered rows stay, as the record of what was sent.
        """
        mine = func.coalesce(hub.c.owner, ANONYMOUS_OWNER) == owner
        async with self.transaction() as conn:
            gone = await conn.execute(delete(hub).where((hub.c.id == ident) & mine))
            if not gone.rowcount:
                return False
            await conn.execute(
                delete(outbox).where((outbox.c.hub_id == ident) & (outbox.c.state == "pending"))
            )
        return True

    async def hubs(self, conn: AsyncConnection) -> list[Hub]:
        """Every subscription, oldest first, as the caller's transaction sees them."""
        rows = await conn.execute(
            select(hub.c.id, hub.c.callback, hub.c.query, hub.c.owner_accounts).order_by(hub.c.seq)
        )
        return [
            Hub(ident, callback, query, None if scope is None else frozenset(orjson.loads(scope)))
            for ident, callback, query, scope in rows
        ]

    # The outbox: the publisher queues, the delivery workers claim and settle.

    async def enqueue_events(self, conn: AsyncConnection, events: Sequence[OutboxEvent]) -> None:
        """Queue deliveries, due now, inside the caller's transaction (the change's own)."""
        if not events:
            return
        now = time()
        rows = [
            {
                "event_id": e.event_id,
                "hub_id": e.hub_id,
                "url": e.url,
                "event_type": e.event_type,
                "payload": e.payload,
                "state": "pending",
                "attempts": 0,
                "due_at": now,
                "created_at": now,
            }
            for e in events
        ]
        await conn.execute(insert(outbox), rows)

    async def hubs_with_due_events(self) -> list[str]:
        """Ids of the hubs that have events due for sending now.

        Asked hub by hub (one look-up in `ix_outbox_hub_due` each), not by reading every
        due event: the delivery worker asks several times a second. (A hub's removal drops
        its pending events, so none is left to a hub that is gone.)
        """
        due = (
            (outbox.c.hub_id == hub.c.id)
            & (outbox.c.state == "pending")
            & (outbox.c.due_at <= time())
        )
        async with self.transaction() as conn:
            rows = await conn.execute(select(hub.c.id).where(exists().where(due)))
            return [r[0] for r in rows]

    async def claim_events(
        self, hub_id: str, lease: float, limit: int, owner: str | None = None
    ) -> list[ClaimedEvent]:
        """Due events of one hub, oldest first, leased (to `owner`) so no other worker sends
        them now.

        In order: only events queued before the hub's first pending event that is not due
        (one claimed and not settled, or waiting for its retry) are claimed, so a hub never
        gets an event before one queued earlier is delivered or dead-lettered.
        """
        async with self.transaction() as conn:
            return await _claim_in(conn, hub_id, lease, limit, owner)

    async def settle_and_claim(
        self,
        hub_id: str,
        delivered: list[int],
        dead: list[tuple[int, str]],
        lease: float,
        limit: int,
        owner: str | None = None,
    ) -> list[ClaimedEvent]:
        """Record a batch's outcomes and claim the hub's next batch in one transaction.

        One commit per batch instead of two (`settle_events`, then `claim_events`); the
        claim sees the settled events as gone, so order is kept as with the two calls.
        """
        async with self.transaction() as conn:
            await _settle_in(conn, delivered, [], dead)
            return await _claim_in(conn, hub_id, lease, limit, owner)

    async def settle_events(
        self, delivered: list[int], retry: list[tuple[int, float, str]], dead: list[tuple[int, str]]
    ) -> None:
        """Record delivery outcomes: sent, to try again at a time, or given up."""
        async with self.transaction() as conn:
            await _settle_in(conn, delivered, retry, dead)

    async def release_events(self, seqs: list[int], due_at: float) -> None:
        """Give claimed events back unsent, due at `due_at` (not counted as attempts)."""
        async with self.transaction() as conn:
            await conn.execute(
                update(outbox).where(outbox.c.seq.in_(seqs)).values(due_at=due_at, lease_owner=None)
            )

    async def purge_delivered(self, older_than: float) -> int:
        """Forget delivered events queued before `older_than` (epoch seconds); how many."""
        async with self.transaction() as conn:
            purged = await conn.execute(
                delete(outbox).where(
                    (outbox.c.state == "delivered") & (outbox.c.created_at < older_than)
                )
            )
        return purged.rowcount

    # States reported per back-end resource: the gateway's writes and the change detector.

    async def record_state(
        self,
        conn: AsyncConnection,
        resource: str,
        key: str,
        state: str | None,
        *,
        existed: bool = False,
    ) -> EventKind | None:
        """Record a resource's state; the kind of event it calls for, if any.

        A key seen for the first time is a creation (unless the caller knows it `existed`,
        as a PATCH does); a known key whose state differs is a state change; anything else
        was already reported.
        """
        if await self._change_state(conn, resource, key, state):
            return "StateChangeEvent"
        known = await conn.execute(
            select(seen_state.c.key).where(
                (seen_state.c.resource == resource) & (seen_state.c.key == key)
            )
        )
        if known.first() is not None:
            return None
        added = await conn.execute(
            _insert_missing(conn, seen_state).values(resource=resource, key=key, state=state)
        )
        if added.rowcount:
            return "StateChangeEvent" if existed else "CreateEvent"
        # Another transaction recorded the key meanwhile (and reports it); ours may differ.
        return "StateChangeEvent" if await self._change_state(conn, resource, key, state) else None

    async def _change_state(
        self, conn: AsyncConnection, resource: str, key: str, state: str | None
    ) -> bool:
        changed = await conn.execute(
            update(seen_state)
            .where(
                (seen_state.c.resource == resource)
                & (seen_state.c.key == key)
                & seen_state.c.state.is_distinct_from(state)
            )
            .values(state=state)
        )
        return bool(changed.rowcount)

    async def record_baseline_states(
        self, conn: AsyncConnection, resource: str, states: Mapping[str, str | None]
    ) -> int:
        """Record states (key -> state) without events; the number of keys that were new.

        A key already recorded keeps its state: the gateway recorded it while this pass
        was reading, so it is newer than what the pass read.
        """
        keys = list(states)
        new: dict[str, str | None] = {}
        for start in range(0, len(keys), _INSERT_BATCH):
            batch = keys[start : start + _INSERT_BATCH]
            known = await conn.execute(
                select(seen_state.c.key).where(
                    (seen_state.c.resource == resource) & seen_state.c.key.in_(batch)
                )
            )
            seen = set(known.scalars())
            new.update((key, states[key]) for key in batch if key not in seen)
        rows = [{"resource": resource, "key": k, "state": v} for k, v in new.items()]
        for start in range(0, len(rows), _INSERT_BATCH):
            await conn.execute(
                _insert_missing(conn, seen_state), rows[start : start + _INSERT_BATCH]
            )
        return len(rows)

    # The change detectors' positions.

    async def get_watermark(self, name: str) -> str | None:
        """A named position, or None when it was never set."""
        async with self.transaction() as conn:
            row = await conn.execute(select(watermark.c.value).where(watermark.c.name == name))
            found = row.first()
            return found[0] if found else None

    async def set_watermark(self, conn: AsyncConnection, name: str, value: str) -> None:
        """Move a named position, inside the caller's transaction."""
        move = update(watermark).where(watermark.c.name == name).values(value=value)
        if (await conn.execute(move)).rowcount:
            return
        added = await conn.execute(_insert_missing(conn, watermark).values(name=name, value=value))
        if not added.rowcount:  # another transaction set it first
            await conn.execute(move)

    # Leases on exclusive jobs shared by several gateways.

    async def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the lease `name` for `seconds` from now; False while another holds it.

        Taken when free or expired, renewed when `owner` holds it already: one atomic
        statement, so two gateways asking at once never both get it.
        """
        now = time()
        async with self.transaction() as conn:
            dialect = conn.dialect.name
            if dialect in ("postgresql", "sqlite"):
                insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
                offer = insert_(named_lease).values(name=name, owner=owner, until=now + seconds)
                taken = await conn.execute(
                    offer.on_conflict_do_update(
                        index_elements=[named_lease.c.name],
                        set_={"owner": owner, "until": now + seconds},
                        where=(named_lease.c.until <= now) | (named_lease.c.owner == owner),
                    )
                )
                return taken.rowcount == 1
            renewed = await conn.execute(
                update(named_lease)
                .where(
                    (named_lease.c.name == name)
                    & ((named_lease.c.until <= now) | (named_lease.c.owner == owner))
                )
                .values(owner=owner, until=now + seconds)
            )
            if renewed.rowcount:
                return True
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        insert(named_lease).values(name=name, owner=owner, until=now + seconds)
                    )
            except IntegrityError:
                return False  # another holder
            return True

    async def lease_holder(self, name: str) -> str | None:
        """Who holds the lease `name` now (None: nobody, or it ran out)."""
        async with self.transaction() as conn:
            row = await conn.execute(
                select(named_lease.c.owner).where(
                    (named_lease.c.name == name) & (named_lease.c.until > time())
                )
            )
            found = row.first()
            return found[0] if found else None

    async def release_leases(self, owner: str, names: Collection[str] | None = None) -> int:
        """Give up `owner`'s leases (those `names`, or all); how many there were."""
        which = named_lease.c.owner == owner
        if names is not None:
            which = which & named_lease.c.name.in_(list(names))
        async with self.transaction() as conn:
            released = await conn.execute(delete(named_lease).where(which))
        return released.rowcount

    async def release_on_demand_claims(self, owner: str, idents: Collection[str]) -> int:
        """Hand back the requests `idents` that `owner` is running: due at once for another.

        (Requests `owner` put off for a retry keep their time.)
        """
        if not idents:
            return 0
        async with self.transaction() as conn:
            released = await conn.execute(
                update(bill_on_demand)
                .where(
                    (bill_on_demand.c.lease_owner == owner)
                    & (bill_on_demand.c.state == "inProgress")
                    & bill_on_demand.c.id.in_(list(idents))
                )
                .values(lease_owner=None, lease_until=None)
            )
        return released.rowcount

    async def release_event_claims(self, owner: str) -> int:
        """Hand back the events `owner` claimed and has not settled: due at once."""
        async with self.transaction() as conn:
            released = await conn.execute(
                update(outbox)
                .where((outbox.c.lease_owner == owner) & (outbox.c.state == "pending"))
                .values(due_at=time(), lease_owner=None)
            )
        return released.rowcount


def _epoch(stamp: str) -> float:
    """A stored time stamp as epoch seconds."""
    return datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def _attempted(which: ColumnElement[bool]) -> Update:
    """An UPDATE of the outbox rows `which` that counts one more delivery attempt."""
    return update(outbox).where(which).values(attempts=outbox.c.attempts + 1)


async def _claim_in(
    conn: AsyncConnection, hub_id: str, lease: float, limit: int, owner: str | None
) -> list[ClaimedEvent]:
    """`GatewayStore.claim_events` inside the caller's transaction."""
    now = time()
    pending = (outbox.c.hub_id == hub_id) & (outbox.c.state == "pending")
    # `seq + 0`: not read in `seq` order (ix_outbox_hub_order, through every due event of
    # the hub), but found by `due_at` (ix_outbox_hub_due): the few not due.
    waiting = (
        select(func.min(outbox.c.seq + 0))
        .where(pending & (outbox.c.due_at > now))
        .scalar_subquery()
    )
    # Those before the first one not due are due (so no `due_at` term here, which would
    # lead SQLite to read all of the hub's due events and sort them: see migration 0003).
    due = pending & (waiting.is_(None) | (outbox.c.seq < waiting))
    # PostgreSQL: rows another worker is claiming are skipped, not waited for and lost.
    # The choice is a CTE, evaluated once: with the LIMIT in an IN sub-query,
    # PostgreSQL may run the sub-query again and claim more than `limit` rows.
    chosen = (
        select(outbox.c.seq)
        .where(due)
        .order_by(outbox.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("chosen")
    )
    rows = await conn.execute(
        update(outbox)
        .where((outbox.c.seq == chosen.c.seq) & (outbox.c.due_at <= now))
        .values(due_at=now + lease, lease_owner=owner)
        .returning(
            outbox.c.seq,
            outbox.c.event_id,
            outbox.c.url,
            outbox.c.payload,
            outbox.c.attempts,
            outbox.c.created_at,
        )
    )
    claimed = [ClaimedEvent(*row) for row in rows]
    return sorted(claimed, key=lambda e: e.seq)


async def _settle_in(
    conn: AsyncConnection,
    delivered: list[int],
    retry: list[tuple[int, float, str]],
    dead: list[tuple[int, str]],
) -> None:
    """`GatewayStore.settle_events` inside the caller's transaction."""
    if delivered:
        await conn.execute(
            _attempted(outbox.c.seq.in_(delivered)).values(state="delivered", last_error=None)
        )
    for seq, due_at, error in retry:
        await conn.execute(
            _attempted(outbox.c.seq == seq).values(
                due_at=due_at, last_error=error, lease_owner=None
            )
        )
    for seq, error in dead:
        await conn.execute(_attempted(outbox.c.seq == seq).values(state="dead", last_error=error))


def _insert_missing(conn: AsyncConnection, table: Table) -> Insert:
    """An INSERT that skips a row whose key another transaction has just written.

    SQLite and PostgreSQL skip it (the caller sees a row count of 0); elsewhere a plain
    INSERT, which fails the transaction in that race.
    """
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


def _sqlite_durability(dbapi_connection: Any, _: Any) -> None:
    # In WAL mode, NORMAL survives a crash of the gateway (kill -9) and loses at most the
    # last commits on a power cut; FULL would fsync every outbox write.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Figures for `/metrics` (gateway/metrics.py reads them at scrape time, cached briefly).


@dataclass(frozen=True, slots=True)
class OperationsFigures:
    """The store's queues as an operator watches them."""

    outbox_pending: int
    #: Epoch seconds when the oldest undelivered event was queued (None: none pending).
    outbox_oldest_pending: float | None
    outbox_dead: int
    on_demand_by_state: dict[str, int]


async def operations_figures(store: GatewayStore) -> OperationsFigures:
    """Outbox depth, oldest undelivered event and dead letters; on-demand requests by state.

    Two grouped counts over indexed `state` columns, in one transaction. The outbox's
    delivered rows (most of it until purged) are not counted.
    """
    outbox_rows = (
        select(outbox.c.state, func.count(), func.min(outbox.c.created_at))
        .where(outbox.c.state.in_(("pending", "dead")))  # not the delivered (the many)
        .group_by(outbox.c.state)
    )
    requests = select(bill_on_demand.c.state, func.count()).group_by(bill_on_demand.c.state)
    async with store.transaction() as conn:
        by_state = {row[0]: (row[1], row[2]) for row in await conn.execute(outbox_rows)}
        on_demand = {row[0]: int(row[1]) for row in await conn.execute(requests)}
    pending, oldest = by_state.get("pending", (0, None))
    dead, _ = by_state.get("dead", (0, None))
    return OperationsFigures(
        outbox_pending=int(pending),
        outbox_oldest_pending=None if oldest is None else float(oldest),
        outbox_dead=int(dead),
        on_demand_by_state=on_demand,
    )
