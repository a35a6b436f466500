"""The gateway's own state: on-demand bill requests (hub and outbox to follow).

An embedded SQLite file by default; any async SQLAlchemy URL (PostgreSQL) when several
gateway processes share the work. The schema is created and migrated at start-up from
the numbered migrations below, recorded in `store_schema_version`. Work is shared by
leases: a worker claims a request with a compare-and-set on `lease_until`, so two
workers never run the same request at once, and a crashed worker's claim runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
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
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from adapters.base import BackendError
from adapters.sql import SqlAdapter

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
)


def _migration_1(conn: Connection) -> None:
    bill_on_demand.create(conn)


#: Append only: each entry runs once, in order, in its own transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1]


def now_text() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class OnDemandRequest:
    id: str
    account_id: str
    attempts: int


class GatewayStore:
    def __init__(self, url: str) -> None:
        self.adapter = SqlAdapter(STORE_BACKEND, url)

    async def open(self) -> None:
        url = make_url(self.adapter.url)
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        await self.adapter.open()
        async with self.adapter.engine.begin() as conn:
            await conn.run_sync(_migrate)

    async def close(self) -> None:
        await self.adapter.close()

    async def create_on_demand(
        self,
        *,
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
        }
        await self._execute(insert(bill_on_demand).values(row))
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
        return OnDemandRequest(row["id"], row["billing_account_id"], row["attempts"] + 1)

    async def finish_on_demand(
        self,
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
        result = await self._execute(
            update(bill_on_demand)
            .where(
                (bill_on_demand.c.id == ident)
                & (bill_on_demand.c.state == "inProgress")
                & (bill_on_demand.c.lease_owner == owner)
            )
            .values(values)
        )
        return result.rowcount == 1

    async def retry_on_demand_later(self, ident: str, owner: str, delay: float) -> None:
        """Give the request back, not to be claimed before `delay` seconds from now."""
        await self._execute(
            update(bill_on_demand)
            .where((bill_on_demand.c.id == ident) & (bill_on_demand.c.lease_owner == owner))
            .values(lease_until=time() + delay, updated_at=now_text())
        )

    async def _execute(self, statement: Any) -> Any:
        try:
            async with self.adapter.engine.begin() as conn:
                return await conn.execute(statement)
        except SQLAlchemyError as exc:
            raise BackendError(f"gateway store: {exc}", status=503) from exc


def _migrate(conn: Connection) -> None:
    schema_version.create(conn, checkfirst=True)
    applied = set(conn.execute(select(schema_version.c.version)).scalars())
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number in applied:
            continue
        migration(conn)
        conn.execute(insert(schema_version).values(version=number, applied_at=now_text()))
