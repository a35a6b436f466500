"""The gateway's own state: on-demand bill requests (hub and outbox to follow).

An embedded SQLite file by default; any async SQLAlchemy URL (PostgreSQL) when several
gateway processes share the work. The schema is created and migrated at start-up from
the numbered migrations below, recorded in `store_schema_version`. Work is shared by
leases: a worker claims a request with a compare-and-set on `lease_until`, so two
workers never run the same request at once, and a crashed worker's claim runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import time
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.base import BackendError
from adapters.sql import SqlAdapter, SqlOptions

STORE_BACKEND = "gateway_store"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

metadata = MetaData()

schema_version = Table(
    "store_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", String(20), nullable=False),
)

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
)

# The transactional outbox: one row per (event, subscriber), written in the same store
# transaction as the change it reports, delivered at least once by the delivery worker.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("hub_id", String(36), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("event_type", String(60), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(12), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", Float, nullable=False),  # epoch seconds: next attempt, or lease end
    Column("created_at", Float, nullable=False),
    Column("last_error", Text),
    Index("ix_outbox_due", "state", "due_at"),
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


def _migration_1(conn: Connection) -> None:
    bill_on_demand.create(conn)


def _migration_2(conn: Connection) -> None:
    for table in (hub, outbox, seen_state, watermark):
        table.create(conn)


def _migration_3(conn: Connection) -> None:
    # Stores created by migration 1 before `backend` existed lack the column.
    if "backend" not in {c["name"] for c in inspect(conn).get_columns("bill_on_demand")}:
        conn.execute(text("ALTER TABLE bill_on_demand ADD COLUMN backend VARCHAR(60)"))


#: Append only: each entry runs once, in order, in its own transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3]


def now_text() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class OnDemandRequest:
    id: str
    account_id: str
    attempts: int
    backend: str | None


class GatewayStore:
    def __init__(self, url: str) -> None:
        self.adapter = SqlAdapter(STORE_BACKEND, SqlOptions(url=url))

    async def open(self) -> None:
        url = make_url(self.adapter.url)
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        await self.adapter.open()
        if url.drivername.startswith("sqlite"):
            event.listen(self.adapter.engine.sync_engine, "connect", _sqlite_durability)
            await self.adapter.engine.dispose()  # reconnect with the setting applied
        async with self.adapter.engine.begin() as conn:
            if url.drivername.startswith("sqlite"):
                # Readers never block the writer, and other gateway processes may share it.
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            await conn.run_sync(_migrate)

    async def close(self) -> None:
        await self.adapter.close()

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
        try:
            async with self.adapter.engine.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            select(bill_on_demand)
                            .where(due)
                            .order_by(bill_on_demand.c.seq)
                            .limit(1)
                        )
                    )
                    .mappings()
                    .first()
                )
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
        except SQLAlchemyError as exc:
            raise BackendError(f"gateway store: {exc}", status=503) from exc
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
            update(bill_on_demand)
            .where(
                (bill_on_demand.c.id == ident)
                & (bill_on_demand.c.state == "inProgress")
                & (bill_on_demand.c.lease_owner == owner)
            )
            .values(values)
        )
        return result.rowcount == 1

    async def on_demand_row(self, conn: AsyncConnection, ident: str) -> dict[str, Any]:
        row = await conn.execute(select(bill_on_demand).where(bill_on_demand.c.id == ident))
        return dict(row.mappings().one())

    async def retry_on_demand_later(self, ident: str, owner: str, delay: float) -> None:
        """Give the request back, not to be claimed before `delay` seconds from now."""
        await self._execute(
            update(bill_on_demand)
            .where((bill_on_demand.c.id == ident) & (bill_on_demand.c.lease_owner == owner))
            .values(lease_until=time() + delay, updated_at=now_text())
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One store transaction: committed when the block ends, rolled back if it raises."""
        try:
            async with self.adapter.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise BackendError(f"gateway store: {exc}", status=503) from exc

    # The outbox, for the delivery worker.

    async def hubs_with_due_events(self) -> list[str]:
        due = (outbox.c.state == "pending") & (outbox.c.due_at <= time())
        async with self.transaction() as conn:
            rows = await conn.execute(select(outbox.c.hub_id).where(due).distinct())
            return [r[0] for r in rows]

    async def claim_events(self, hub_id: str, lease: float, limit: int) -> list[dict[str, Any]]:
        """Due events of one hub, oldest first, leased so no other worker sends them now."""
        now = time()
        due = (outbox.c.hub_id == hub_id) & (outbox.c.state == "pending") & (outbox.c.due_at <= now)
        async with self.transaction() as conn:
            seqs = select(outbox.c.seq).where(due).order_by(outbox.c.seq).limit(limit)
            rows = await conn.execute(
                update(outbox)
                .where(outbox.c.seq.in_(seqs.scalar_subquery()) & (outbox.c.due_at <= now))
                .values(due_at=now + lease)
                .returning(outbox)
            )
            return sorted((dict(r) for r in rows.mappings()), key=lambda r: r["seq"])

    async def settle_events(
        self, delivered: list[int], retry: list[tuple[int, float, str]], dead: list[tuple[int, str]]
    ) -> None:
        """Record delivery outcomes: sent, to try again at a time, or given up."""
        async with self.transaction() as conn:
            if delivered:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.seq.in_(delivered))
                    .values(state="delivered", attempts=outbox.c.attempts + 1, last_error=None)
                )
            for seq, due_at, error in retry:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.seq == seq)
                    .values(due_at=due_at, attempts=outbox.c.attempts + 1, last_error=error)
                )
            for seq, error in dead:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.seq == seq)
                    .values(state="dead", attempts=outbox.c.attempts + 1, last_error=error)
                )

    async def release_events(self, seqs: list[int], due_at: float) -> None:
        """Give claimed events back unsent, due at `due_at` (not counted as attempts)."""
        async with self.transaction() as conn:
            await conn.execute(update(outbox).where(outbox.c.seq.in_(seqs)).values(due_at=due_at))

    async def purge_delivered(self, older_than: float) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                delete(outbox).where(
                    (outbox.c.state == "delivered") & (outbox.c.created_at < older_than)
                )
            )

    # The change detector's position.

    async def get_watermark(self, name: str) -> str | None:
        async with self.transaction() as conn:
            row = await conn.execute(select(watermark.c.value).where(watermark.c.name == name))
            found = row.first()
            return found[0] if found else None

    async def _execute(self, statement: Any) -> Any:
        try:
            async with self.adapter.engine.begin() as conn:
                return await conn.execute(statement)
        except SQLAlchemyError as exc:
            raise BackendError(f"gateway store: {exc}", status=503) from exc


def _sqlite_durability(dbapi_connection: Any, _: Any) -> None:
    # In WAL mode, NORMAL survives a crash of the gateway (kill -9) and loses at most the
    # last commits on a power cut; FULL would fsync every outbox write.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _migrate(conn: Connection) -> None:
    schema_version.create(conn, checkfirst=True)
    applied = set(conn.execute(select(schema_version.c.version)).scalars())
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number in applied:
            continue
        migration(conn)
        conn.execute(insert(schema_version).values(version=number, applied_at=now_text()))


async def set_watermark(conn: AsyncConnection, name: str, value: str) -> None:
    """Move a named position, inside the caller's transaction."""
    moved = await conn.execute(
        update(watermark).where(watermark.c.name == name).values(value=value)
    )
    if not moved.rowcount:
        await conn.execute(insert(watermark).values(name=name, value=value))
