"""A normalized invoice ledger served by YAML alone, held to a SQL ground truth.

The schema is the shape an open-source billing engine keeps: an invoice header with no
totals and no status column, item lines of several kinds (recurring, usage, tax,
adjustments, credits), payments; UUID ids; native DATE, DATETIME and DECIMAL columns.
`mappings/ledger_sql/*.yaml` serve it. Every case states its expected answer as SQL
written here, run on the same database: the gateway must give the same ids in the same
order, with the same total, with push-down on and off, on SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB are the local servers of tests/databases.py; the tests on them are
skipped without them (and fail under CI=true, where they must be there). MariaDB keeps
UUIDs as text, instants as wall-clock DATETIMEs and booleans as TINYINT(1), as SQLite
does in its own way; its text compares ignoring case unless the adapter says otherwise.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import (
    CHAR,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    insert,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from adapters.base import AllOf, Compare
from gateway.app import create_app
from gateway.config import load_config
from gateway.pushdown import plan_read
from gateway.query import parse_query
from tests.conftest import API, ROOT, assert_valid, fetch_all
from tests.databases import fresh_database
from tests.test_reads import NoPushdown

BERLIN = ZoneInfo("Europe/Berlin")
MAPPINGS = ROOT / "mappings" / "ledger_sql"

# ---------------------------------------------------------------------------- the schema

metadata = MetaData()
#: UUIDs: native on PostgreSQL, canonical text on SQLite and MariaDB.
UUID = Uuid(as_uuid=True).with_variant(CHAR(36), "sqlite", "mysql", "mariadb")
MONEY = Numeric(15, 4)

accounts = Table(
    "accounts",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("external_key", String(40), nullable=False),
    Column("currency", CHAR(3), nullable=False),
)
invoices = Table(
    "invoices",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("account_id", UUID, ForeignKey("accounts.id"), nullable=False),
    Column("invoice_number", Integer, nullable=False, unique=True),
    Column("invoice_date", Date, nullable=False),
    Column("due_date", Date, nullable=True),
    Column("updated_date", DateTime, nullable=False),  # wall clock, Europe/Berlin
    Column("currency", CHAR(3), nullable=False),
    Column("status", String(12), nullable=False),  # DRAFT, COMMITTED, VOID
)
invoice_items = Table(
    "invoice_items",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("invoice_id", UUID, ForeignKey("invoices.id"), nullable=False),
    Column("account_id", UUID, nullable=False),
    Column("type", String(12), nullable=False),  # RECURRING USAGE TAX ITEM_ADJ CBA_ADJ
    Column("description", String(60), nullable=False),
    Column("start_date", Date, nullable=True),
    Column("end_date", Date, nullable=True),
    Column("amount", MONEY, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("billed", Boolean, nullable=True),
    # An instant: TIMESTAMP WITH TIME ZONE on PostgreSQL, Berlin wall clock on SQLite.
    Column("created_date", DateTime(timezone=True), nullable=False),
)
invoice_payments = Table(
    "invoice_payments",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("invoice_id", UUID, ForeignKey("invoices.id"), nullable=False),
    Column("type", String(12), nullable=False),  # PAYMENT, REFUND
    Column("success", Boolean, nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("payment_date", DateTime(timezone=True), nullable=False),
)

# ------------------------------------------------------------------------------ the data

#: Invoice dates: first of each month, and a few mid-month, several invoices on each.
DATES = [date(2024, m, 1) for m in range(1, 13)] + [date(2024, 4, 15), date(2024, 9, 17)]
EXACT_UPDATE = datetime(2024, 6, 15, 10, 30, tzinfo=BERLIN)
EXACT_CREATED = datetime(2024, 5, 20, 9, 45, 30, tzinfo=UTC)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def ledger_rows() -> dict[str, list[dict[str, Any]]]:
    """The ledger's rows, the same on every run (a seeded generator)."""
    rng = random.Random(13)
    accts = [
        {"id": _uuid(rng), "external_key": f"ACME-{n:03d}", "currency": ("EUR", "USD")[n % 2]}
        for n in range(6)
    ]
    numbers = [65, *rng.sample([n for n in range(1, 400) if n != 65], 89)]
    invs: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    payments: list[dict[str, Any]] = []
    for n, number in enumerate(numbers):
        account = accts[n % len(accts)]
        day = DATES[0] if n < 3 else date(2024, 4, 1) if n < 8 else rng.choice(DATES)
        stamp = datetime.combine(
            day + timedelta(days=rng.randrange(0, 9)),
            time(rng.randrange(8, 18), rng.choice((0, 15, 30, 45))),
            BERLIN,
        )
        invoice = {
            "id": _uuid(rng),
            "account_id": account["id"],
            "invoice_number": number,
            "invoice_date": day,
            "due_date": None if n % 10 == 9 else day + timedelta(days=30),
            "updated_date": EXACT_UPDATE if n == 11 else stamp,
            "currency": account["currency"],
            "status": "DRAFT" if n % 9 == 4 else "VOID" if n % 17 == 6 else "COMMITTED",
        }
        invs.append(invoice)
        for k in range(rng.randrange(0, 6)):
            kind = rng.choice(("RECURRING", "RECURRING", "USAGE", "TAX", "ITEM_ADJ", "CBA_ADJ"))
            start = day.replace(day=1) - timedelta(days=rng.choice((0, 31)))
            cents = rng.randrange(100, 20000) if kind in ("RECURRING", "USAGE") else 0
            if kind == "TAX":
                cents = rng.randrange(10, 3000)
            elif kind in ("ITEM_ADJ", "CBA_ADJ"):
                cents = -rng.randrange(50, 3000)
            created = stamp - timedelta(hours=rng.randrange(1, 200), minutes=rng.randrange(60))
            items.append(
                {
                    "id": _uuid(rng),
                    "invoice_id": invoice["id"],
                    "account_id": account["id"],
                    "type": kind,
                    "description": {
                        "RECURRING": "Monthly plan",
                        "USAGE": "Roaming data",
                        "TAX": rng.choice(("Tax VAT19", "Tax VAT7")),
                        "ITEM_ADJ": "Goodwill adjustment",
                        "CBA_ADJ": "Credit applied",
                    }[kind],
                    "start_date": None if kind == "TAX" else start,
                    "end_date": None if kind == "TAX" else start + timedelta(days=30),
                    "amount": Decimal(cents) / 100,
                    "currency": account["currency"],
                    "billed": None if k == 4 else invoice["status"] != "DRAFT",
                    "created_date": created,
                }
            )
    for index in (3, 40):  # amounts equal to a filter value
        items[index]["amount"] = Decimal("12.34")
    items[7]["created_date"] = EXACT_CREATED
    for cents in (10, 20):  # 0.10 + 0.20: exactly 0.30 only in decimal arithmetic
        items.append(
            {**items[-1], "id": _uuid(rng), "type": "USAGE", "amount": Decimal(cents) / 100}
        )
    payments.extend(_payments(invs, items))
    return {
        "accounts": accts,
        "invoices": invs,
        "invoice_items": items,
        "invoice_payments": payments,
    }


def _payments(invoices: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Payments: in full (at once or in parts), in part, refunded, failed, or none."""
    rng = random.Random(31)
    out: list[dict[str, Any]] = []
    totals: dict[uuid.UUID, Decimal] = {}
    for item in items:
        totals[item["invoice_id"]] = totals.get(item["invoice_id"], Decimal(0)) + item["amount"]
    cent = Decimal("0.01")
    for invoice in invoices:
        total = totals.get(invoice["id"], Decimal(0))
        if invoice["status"] == "DRAFT" or total <= 0:
            continue
        when = invoice["updated_date"] + timedelta(days=3)

        def pay(
            amount: Decimal,
            success: bool = True,
            kind: str = "PAYMENT",
            invoice: dict[str, Any] = invoice,
            when: datetime = when,
        ) -> None:
            out.append(
                {
                    "id": _uuid(rng),
                    "invoice_id": invoice["id"],
                    "type": kind,
                    "success": success,
                    "amount": amount,
                    "payment_date": when + timedelta(hours=len(out)),
                }
            )

        draw = rng.random()
        if draw < 0.3 or invoice is invoices[-1]:
            pay(total)
        elif draw < 0.45:
            part = (total / 3).quantize(cent)
            pay(part)
            pay(total - part)
        elif draw < 0.65:
            pay((total / 2).quantize(cent))
        elif draw < 0.75:
            pay(total, success=False)
        elif draw < 0.8:
            pay(total)
            pay(-(total / 4).quantize(cent), kind="REFUND")
    return out


def _for_dialect(row: dict[str, Any], dialect: str) -> dict[str, Any]:
    """A row as the dialect stores it: SQLite and MariaDB keep UUIDs as text and wall clocks."""
    if dialect == "postgresql":
        return {k: v.replace(tzinfo=None) if k == "updated_date" else v for k, v in row.items()}
    out = {}
    for key, value in row.items():
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.astimezone(BERLIN).replace(tzinfo=None)
        out[key] = value
    return out


async def _seed(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            dialect = conn.dialect.name
            for name, rows in ledger_rows().items():
                if rows:
                    await conn.execute(
                        insert(metadata.tables[name]), [_for_dialect(r, dialect) for r in rows]
                    )
    finally:
        await engine.dispose()


async def _query(url: str, sql: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [str(row[0]) for row in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------- the back ends


@dataclass(frozen=True)
class Ledger:
    """A seeded ledger database: its URL and its dialect."""

    url: str
    dialect: str

    def truth(self, sql: str) -> list[str]:
        if self.dialect == "mariadb":
            sql = _in_mariadb_terms(sql)
        return asyncio.run(_query(self.url, sql))


def _in_mariadb_terms(sql: str) -> str:
    """MariaDB has no NULLS LAST (DESC puts NULLs last anyway) and casts to CHAR."""
    sql = sql.replace(" DESC NULLS LAST", " DESC")
    sql = re.sub(r"([\w.]+) NULLS LAST", r"\1 IS NULL, \1", sql)
    return re.sub(r"AS VARCHAR\((\d+)\)", r"AS CHAR(\1)", sql)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
        url = f"sqlite+aiosqlite:///{path}"
        asyncio.run(_seed(url))
        yield Ledger(url, "sqlite")
        return
    with fresh_database(request.param, "tmf678_ledger") as url:
        asyncio.run(_seed(url))
        yield Ledger(url, request.param)


def ledger_config(url: str, tmp_path: Path, resources: dict[str, str] | None = None) -> Any:
    """A gateway configuration serving the ledger by its YAML mappings alone."""
    resources = resources or {
        "customerBill": "customer_bill.yaml",
        "appliedCustomerBillingRate": "applied_customer_billing_rate.yaml",
        "billCycle": "bill_cycle.yaml",
    }
    lines = ["backends:", f"  ledger: {{kind: sql, url: '{url}'}}", "resources:"]
    lines += [
        f"  {name}: {{backend: ledger, mapping: '{MAPPINGS / file}'}}"
        for name, file in resources.items()
    ]
    path = tmp_path / "ledger.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@pytest.fixture(scope="module", params=["pushdown", "gateway"])
def api(
    request: pytest.FixtureRequest, ledger: Ledger, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    app = create_app(ledger_config(ledger.url, tmp_path_factory.mktemp("config")))
    with TestClient(app) as client:
        if request.param == "gateway":
            services = app.state.services
            for reader in (services.customer_bills, services.applied_rates, services.bill_cycles):
                for route in reader.routes:
                    route.reader.source = NoPushdown(route.reader.source)
        yield client


# ------------------------------------------------------------------------ the cases

Where = Callable[[str], str]  # dialect -> SQL condition


def stamp(dialect: str, instant: str) -> str:
    """An instant as `created_date` holds it (Berlin wall clock on SQLite and MariaDB)."""
    value = datetime.fromisoformat(instant)
    if dialect != "postgresql":
        return f"'{value.astimezone(BERLIN).strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    return f"'{value.astimezone(UTC).isoformat()}'"


def local(instant: str) -> str:
    """An instant as Berlin wall-clock text (the `updated_date` column)."""
    return (
        f"'{datetime.fromisoformat(instant).astimezone(BERLIN).strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    )


def fixed(sql: str) -> Where:
    return lambda dialect: sql


def amount(dialect: str) -> str:
    """Amounts exactly: NUMERIC/DECIMAL is; SQLite's REAL is not, so whole 1/10000s."""
    return "amount" if dialect != "sqlite" else "CAST(ROUND(amount * 10000) AS INTEGER)"


def money(dialect: str, value: str) -> str:
    """A decimal literal in the unit `amount` gives."""
    return value if dialect != "sqlite" else str(int(Decimal(value) * 10000))


UNTAXED = " AND t.type <> 'TAX'"


def total(dialect: str, where: str = "") -> str:
    rows = f"FROM invoice_items t WHERE t.invoice_id = i.id{where}"
    return f"COALESCE((SELECT SUM({amount(dialect)}) {rows}), 0)"


def paid(dialect: str) -> str:
    rows = "FROM invoice_payments p WHERE p.invoice_id = i.id AND p.success = TRUE"
    return f"COALESCE((SELECT SUM({amount(dialect)}) {rows}), 0)"


def state(dialect: str) -> str:
    return (
        "CASE WHEN status = 'DRAFT' THEN 'new' WHEN status = 'VOID' THEN 'onHold'"
        f" WHEN {paid(dialect)} >= {total(dialect)} THEN 'settled'"
        f" WHEN {paid(dialect)} > 0 THEN 'partiallyPaid' ELSE 'sent' END"
    )


def category(dialect: str) -> str:
    lines = f"(SELECT SUM({amount(dialect)}) FROM invoice_items t WHERE t.invoice_id = i.id)"
    return f"CASE WHEN {lines} < 0 THEN 'creditNote' ELSE 'normal' END"


def recurring(fn: str, column: str) -> str:
    rows = "FROM invoice_items t WHERE t.invoice_id = i.id AND t.type = 'RECURRING'"
    return f"(SELECT {fn}({column}) {rows})"


def lines(where: str) -> str:
    return f"EXISTS (SELECT 1 FROM invoice_items t WHERE t.invoice_id = i.id AND {where})"


ROWS = ledger_rows()
INVOICE = ROWS["invoices"][5]
ITEM = ROWS["invoice_items"][3]
ACCOUNT = ROWS["accounts"][2]

#: TMF attribute -> the SQL it is in the ground truth (invoices `i`, invoice_items `t`).
BILL_CASES: list[tuple[str, Where]] = [
    (f"id={INVOICE['id']}", fixed(f"i.id = '{INVOICE['id']}'")),
    (f"id={str(INVOICE['id']).upper()}", fixed("1 = 0")),
    ("id=not-a-uuid", fixed("1 = 0")),
    (f"id.ne={INVOICE['id']}", fixed(f"i.id <> '{INVOICE['id']}'")),
    ("billNo=65", fixed("invoice_number = 65")),
    ("billNo=065", fixed("1 = 0")),
    ("billNo.ne=65", fixed("invoice_number <> 65")),
    ("billDate=2024-04-01", fixed("invoice_date = '2024-04-01'")),
    ("billDate.gte=2024-04-01", fixed("invoice_date >= '2024-04-01'")),
    ("billDate.gt=2024-04-01", fixed("invoice_date > '2024-04-01'")),
    ("billDate.lt=2024-04-01T12:00:00Z", fixed("invoice_date <= '2024-04-01'")),
    ("billDate.lte=2024-04-01", fixed("invoice_date <= '2024-04-01'")),
    ("billDate.gt=2024-03-31T23:00:00-02:00", fixed("invoice_date > '2024-04-01'")),
    ("billDate.ne=2024-04-01", fixed("invoice_date <> '2024-04-01'")),
    ("billDate=2024-04-01T00:00:00%2B02:00", fixed("1 = 0")),
    ("billDate=2024-04-01,2024-09-17", fixed("invoice_date IN ('2024-04-01', '2024-09-17')")),
    ("paymentDueDate.lte=2024-05-01", fixed("due_date <= '2024-05-01'")),
    (
        "paymentDueDate.ne=2024-05-01",
        fixed("(due_date <> '2024-05-01' OR due_date IS NULL)"),
    ),
    (
        "lastUpdate.gte=2024-06-01T00:00:00Z",
        fixed(f"updated_date >= {local('2024-06-01T00:00:00+00:00')}"),
    ),
    (
        f"lastUpdate={EXACT_UPDATE.isoformat().replace('+', '%2B')}",
        fixed(f"updated_date = {local(EXACT_UPDATE.isoformat())}"),
    ),
    (
        "lastUpdate.lt=2024-04-03T10:00:00%2B02:00",
        fixed(f"updated_date < {local('2024-04-03T10:00:00+02:00')}"),
    ),
    (f"billingAccount.id={ACCOUNT['id']}", fixed(f"account_id = '{ACCOUNT['id']}'")),
    # sums over child rows, with and without a filter on the rows
    ("amountDue.value.gt=100", lambda d: f"{total(d)} > {money(d, '100')}"),
    ("amountDue.value=0", lambda d: f"{total(d)} = 0"),
    ("amountDue.value.lte=50.5", lambda d: f"{total(d)} <= {money(d, '50.5')}"),
    ("taxIncludedAmount.value.gte=200", lambda d: f"{total(d)} >= {money(d, '200')}"),
    ("taxExcludedAmount.value.lt=50", lambda d: f"{total(d, UNTAXED)} < {money(d, '50')}"),
    ("amountDue.unit=USD", fixed("currency = 'USD'")),
    # arithmetic on amounts: total minus what was paid, exactly
    ("remainingAmount.value=0", lambda d: f"{total(d)} - {paid(d)} = 0"),
    ("remainingAmount.value.gt=0", lambda d: f"{total(d)} - {paid(d)} > 0"),
    ("remainingAmount.value.lt=0", lambda d: f"{total(d)} - {paid(d)} < 0"),
    # a state derived from values and comparisons of aggregates
    ("state=settled", lambda d: f"{state(d)} = 'settled'"),
    ("state=partiallyPaid", lambda d: f"{state(d)} = 'partiallyPaid'"),
    ("state=new,onHold", lambda d: f"{state(d)} IN ('new', 'onHold')"),
    ("state.ne=sent", lambda d: f"{state(d)} <> 'sent'"),
    (
        "state=sent&amountDue.value.gt=100",
        lambda d: f"{state(d)} = 'sent' AND {total(d)} > {money(d, '100')}",
    ),
    ("category=creditNote", lambda d: f"{category(d)} = 'creditNote'"),
    ("category.ne=creditNote", lambda d: f"{category(d)} <> 'creditNote'"),
    # min / max over the recurring lines' dates
    (
        "billingPeriod.startDateTime.gte=2024-05-01",
        fixed(f"{recurring('MIN', 'start_date')} >= '2024-05-01'"),
    ),
    (
        "billingPeriod.endDateTime.lt=2024-06-01",
        fixed(f"{recurring('MAX', 'end_date')} < '2024-06-01'"),
    ),
    (
        "billingPeriod.startDateTime.ne=2024-03-01",
        fixed(
            f"({recurring('MIN', 'start_date')} <> '2024-03-01'"
            f" OR {recurring('MIN', 'start_date')} IS NULL)"
        ),
    ),
    # filtered child arrays: taxItem is the TAX lines only
    (
        "taxItem.taxCategory=Tax VAT7",
        fixed(lines("t.type = 'TAX' AND t.description = 'Tax VAT7'")),
    ),
    ("taxItem.taxAmount.value.gt=20", fixed(lines("t.type = 'TAX' AND t.amount > 20"))),
    (
        "appliedPayment.appliedAmount.value.gt=100",
        fixed(
            "EXISTS (SELECT 1 FROM invoice_payments p WHERE p.invoice_id = i.id"
            " AND p.success = TRUE AND p.amount > 100)"
        ),
    ),
]

RATE_CASES: list[tuple[str, Where]] = [
    (f"id={ITEM['id']}", fixed(f"t.id = '{ITEM['id']}'")),
    (f"bill.id={ITEM['invoice_id']}", fixed(f"invoice_id = '{ITEM['invoice_id']}'")),
    ("isBilled=true", fixed("billed = TRUE")),
    ("isBilled=false", fixed("billed = FALSE")),
    ("isBilled.ne=true", fixed("(billed <> TRUE OR billed IS NULL)")),
    ("taxExcludedAmount.value.gt=10.5", fixed("amount > 10.5")),
    ("taxExcludedAmount.value=12.34", fixed("amount = 12.34")),
    ("taxExcludedAmount.value.lte=-5", fixed("amount <= -5")),
    ("taxExcludedAmount.unit=USD", fixed("currency = 'USD'")),
    (
        "date.gte=2024-06-01T00:00:00Z",
        lambda d: f"created_date >= {stamp(d, '2024-06-01T00:00:00+00:00')}",
    ),
    (
        f"date={EXACT_CREATED.astimezone(BERLIN).isoformat().replace('+', '%2B')}",
        lambda d: f"created_date = {stamp(d, EXACT_CREATED.isoformat())}",
    ),
    ("date.lt=2024-03-10", lambda d: f"created_date < {stamp(d, '2024-03-10T00:00:00+00:00')}"),
    ("periodCoverage.startDateTime.gte=2024-05-01", fixed("start_date >= '2024-05-01'")),
    ("periodCoverage.endDateTime=2024-03-02", fixed("end_date = '2024-03-02'")),
    (
        "appliedBillingRateType=appliedBillingCredit",
        fixed("type IN ('ITEM_ADJ', 'CBA_ADJ')"),
    ),
    (
        "appliedBillingRateType.ne=appliedBillingCredit",
        fixed("type NOT IN ('ITEM_ADJ', 'CBA_ADJ')"),
    ),
    ("name=Tax VAT7", fixed("description = 'Tax VAT7'")),
]

BILL_SORTS: list[tuple[str, str | Where]] = [
    ("billDate", "invoice_date"),
    ("-billDate", "invoice_date DESC"),
    ("-lastUpdate", "updated_date DESC"),
    ("paymentDueDate", "due_date NULLS LAST"),
    ("-paymentDueDate,billDate", "due_date DESC NULLS LAST, invoice_date"),
    ("billNo", "CAST(invoice_number AS VARCHAR(12))"),
    ("-id", "i.id DESC"),
    ("billingAccount.id,-billDate", "account_id, invoice_date DESC"),
    ("amountDue.value", lambda d: total(d)),
    ("-remainingAmount.value", lambda d: f"{total(d)} - {paid(d)} DESC"),
    ("state,billDate", lambda d: f"{state(d)}, invoice_date"),
    ("-billingPeriod.startDateTime", f"{recurring('MIN', 'start_date')} DESC NULLS LAST"),
    ("category,-taxExcludedAmount.value", lambda d: f"{category(d)}, {total(d, UNTAXED)} DESC"),
]

RATE_SORTS: list[tuple[str, str | Where]] = [
    ("date", "created_date"),
    ("-taxExcludedAmount.value", "amount DESC"),
    ("periodCoverage.startDateTime", "start_date NULLS LAST"),
    ("-isBilled,date", "billed DESC NULLS LAST, created_date"),
    ("name,-date", "description, created_date DESC"),
]

RUNS = (
    "(SELECT CAST(invoice_date AS VARCHAR(10)) AS run_id, invoice_date AS run_date,"
    " MIN(due_date) AS due_date FROM invoices GROUP BY invoice_date) r"
)
TABLES = {
    "customerBill": "invoices i",
    "appliedCustomerBillingRate": "invoice_items t",
    "billCycle": RUNS,
}
KEYS = {"customerBill": "i.id", "appliedCustomerBillingRate": "t.id", "billCycle": "r.run_id"}
SCHEMAS = {
    "customerBill": "CustomerBill",
    "appliedCustomerBillingRate": "AppliedCustomerBillingRate",
    "billCycle": "BillCycle",
}


def expected_ids(ledger: Ledger, collection: str, where: str, order: str = "") -> list[str]:
    key = KEYS[collection]
    sql = f"SELECT {key} FROM {TABLES[collection]} WHERE {where} ORDER BY {order or key}"
    if order:
        sql += f", {key}"
    return ledger.truth(sql)


CYCLE_CASES: list[tuple[str, Where]] = [
    ("billingDate.gte=2024-06-01", fixed("run_date >= '2024-06-01'")),
    ("billingDate=2024-04-15", fixed("run_date = '2024-04-15'")),
    ("paymentDueDate.lt=2024-05-01", fixed("due_date < '2024-05-01'")),
    ("id=2024-04-01,2024-09-17", fixed("run_id IN ('2024-04-01', '2024-09-17')")),
    ("name=~-0[4-6]-", fixed("run_date >= '2024-04-01' AND run_date < '2024-07-01'")),
]
CYCLE_SORTS: list[tuple[str, str | Where]] = [
    ("-billingDate", "run_date DESC"),
    ("paymentDueDate", "due_date NULLS LAST"),
]

CASES = (
    [("customerBill", p, w) for p, w in BILL_CASES]
    + [("appliedCustomerBillingRate", p, w) for p, w in RATE_CASES]
    + [("billCycle", p, w) for p, w in CYCLE_CASES]
)


@pytest.mark.parametrize(("collection", "params", "where"), CASES, ids=[c[1] for c in CASES])
def test_filters_agree_with_sql(
    api: TestClient, ledger: Ledger, collection: str, params: str, where: Where
) -> None:
    expected = expected_ids(ledger, collection, where(ledger.dialect))
    got = fetch_all(api, collection, params)
    assert [item["id"] for item in got] == expected
    page = api.get(f"{API}/{collection}?{params}&limit=3&offset=1")
    assert page.status_code == 200, page.text
    assert page.headers["X-Total-Count"] == str(len(expected))
    assert [item["id"] for item in page.json()] == expected[1:4]
    for item in page.json():
        assert_valid(SCHEMAS[collection], item)


SORTS = [
    (collection, sort, order if callable(order) else fixed(order))
    for collection, sorts in (
        ("customerBill", BILL_SORTS),
        ("appliedCustomerBillingRate", RATE_SORTS),
        ("billCycle", CYCLE_SORTS),
    )
    for sort, order in sorts
]


@pytest.mark.parametrize(("collection", "sort", "order"), SORTS, ids=[s[1] for s in SORTS])
def test_sorts_agree_with_sql(
    api: TestClient, ledger: Ledger, collection: str, sort: str, order: Where
) -> None:
    expected = expected_ids(ledger, collection, "1 = 1", order(ledger.dialect))
    got = fetch_all(api, collection, f"sort={sort}")
    assert [item["id"] for item in got] == expected
    page = api.get(f"{API}/{collection}?sort={sort}&offset=5&limit=7").json()
    assert [item["id"] for item in page] == expected[5:12]


def test_cases_select_something_and_not_everything(ledger: Ledger) -> None:
    """A case whose SQL selects all or nothing could not tell a wrong answer."""
    for collection, params, where in CASES:
        if "1 = 0" in where(ledger.dialect):
            continue
        chosen = len(expected_ids(ledger, collection, where(ledger.dialect)))
        total = len(expected_ids(ledger, collection, "1 = 1"))
        assert 0 < chosen < total, params


def test_native_values_are_served_as_the_oas_says(api: TestClient, ledger: Ledger) -> None:
    bill = api.get(f"{API}/customerBill/{INVOICE['id']}").json()
    assert bill["id"] == str(INVOICE["id"])
    assert bill["billDate"] == f"{INVOICE['invoice_date'].isoformat()}T00:00:00+00:00"
    assert bill["billNo"] == str(INVOICE["invoice_number"])
    assert datetime.fromisoformat(bill["lastUpdate"]) == INVOICE["updated_date"]
    assert_valid("CustomerBill", bill)
    rate = api.get(f"{API}/appliedCustomerBillingRate/{ITEM['id']}").json()
    assert rate["taxExcludedAmount"]["value"] == float(ITEM["amount"])
    assert datetime.fromisoformat(rate["date"]) == ITEM["created_date"]
    assert rate["date"].endswith(("+01:00", "+02:00"))  # served in the mapping's zone
    assert_valid("AppliedCustomerBillingRate", rate)


def test_native_columns_are_pushed_down_as_native_values(api: TestClient) -> None:
    """Dates compare as dates, instants as date-times, amounts as decimals, ids as UUIDs."""
    reader = api.app.state.services.customer_bills.routes[0].reader  # type: ignore[attr-defined]
    rates = api.app.state.services.applied_rates.routes[0].reader  # type: ignore[attr-defined]
    if isinstance(reader.source, NoPushdown):
        pytest.skip("push-down is off")
    types = reader.attributes
    query = parse_query(
        "billDate.gte=2024-04-01&lastUpdate.lt=2024-06-01T00:00:00Z",
        types,
        default_limit=20,
        max_limit=100,
    )
    plan = plan_read(query, reader.mapping, reader.source)
    assert not plan.residual
    assert plan.backend.where == AllOf(
        (
            Compare("invoice_date", "gte", date(2024, 4, 1)),
            Compare("updated_date", "lt", datetime(2024, 6, 1, 2, 0)),
        )
    )
    query = parse_query(
        "taxExcludedAmount.value.gt=10.5", rates.attributes, default_limit=20, max_limit=100
    )
    plan = plan_read(query, rates.mapping, rates.source)
    assert plan.backend.where == Compare("amount", "gt", Decimal("10.5"))
    runs = api.app.state.services.bill_cycles.routes[0].reader  # type: ignore[attr-defined]
    query = parse_query(
        "billingDate.gte=2024-06-01&sort=-billingDate",
        runs.attributes,
        default_limit=5,
        max_limit=9,
    )
    plan = plan_read(query, runs.mapping, runs.source)  # a query source takes them too
    assert plan.windowed_by_backend
    assert plan.backend.where == Compare("run_date", "gte", date(2024, 6, 1))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("state=bogus", "'bogus' is not a value of state (one of new, onHold, validated"),
        ("state=new,bogus&billDate.gte=2024-01-01", "'bogus' is not a value of state"),
        ("sort=nextBillDate", "'nextBillDate' is not given by this back end's mapping"),
        ("sort=billDate,-runType", "'runType' is not given by this back end's mapping"),
    ],
)
def test_requests_that_cannot_mean_anything_are_400(
    api: TestClient, params: str, message: str
) -> None:
    response = api.get(f"{API}/customerBill?{params}")
    assert response.status_code == 400, response.text
    assert_valid("Error", response.json())
    assert message in response.json()["message"]


def test_a_resource_no_back_end_serves_is_501(ledger: Ledger, tmp_path: Path) -> None:
    config = ledger_config(ledger.url, tmp_path, {"customerBill": "customer_bill.yaml"})
    with TestClient(create_app(config)) as client:
        for path in ("/billCycle", "/billCycle/1", "/billCycle?name=x"):
            response = client.get(f"{API}{path}")
            assert response.status_code == 501, path
            assert_valid("Error", response.json())
            assert "BillCycle" in response.json()["message"]
        assert client.get(f"{API}/customerBill?limit=1").status_code == 200


def test_derived_attributes_go_down_where_the_database_computes_them_exactly(
    api: TestClient, ledger: Ledger
) -> None:
    """PostgreSQL and MariaDB compute every derived value in SQL; SQLite all but sums of
    decimals."""
    reader = api.app.state.services.customer_bills.routes[0].reader  # type: ignore[attr-defined]
    if isinstance(reader.source, NoPushdown):
        pytest.skip("push-down is off")
    query = parse_query(
        "state=settled&amountDue.value.gt=100&billingPeriod.startDateTime.gte=2024-05-01"
        "&category=normal&sort=-billingPeriod.endDateTime",
        reader.attributes,
        default_limit=20,
        max_limit=100,
    )
    plan = plan_read(query, reader.mapping, reader.source)
    residual = [flt.path for flt in plan.residual]
    if ledger.dialect != "sqlite":
        assert residual == [] and plan.windowed_by_backend
    else:
        assert residual == ["state", "amountDue.value", "category"]
        assert not plan.sort_in_gateway  # min/max of dates are exact anywhere


def test_federated_sorts_on_keys_some_back_ends_do_not_give(ledger: Ledger, tmp_path: Path) -> None:
    """Resources of a back end without the key sort last; a key none gives is a 400."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "resource: CustomerBill\nsource: {table: invoices, key: id}\n"
        "attributes:\n  id: id\n"
        "  billDate: {column: invoice_date, transform: {date: {zone: UTC}}}\n"
    )
    path = tmp_path / "federated.yaml"
    path.write_text(
        f"backends:\n  full: {{kind: sql, url: '{ledger.url}'}}\n"
        f"  plain: {{kind: sql, url: '{ledger.url}'}}\n"
        "resources:\n  customerBill:\n"
        f"    - {{backend: full, mapping: '{MAPPINGS / 'customer_bill.yaml'}', id_prefix: F-}}\n"
        f"    - {{backend: plain, mapping: '{plain}', id_prefix: P-}}\n"
    )
    with TestClient(create_app(load_config(path))) as client:
        got = fetch_all(client, "customerBill", "sort=-billingPeriod.startDateTime,billDate")
        start = recurring("MIN", "start_date")
        dated = expected_ids(
            ledger, "customerBill", f"{start} IS NOT NULL", f"{start} DESC, invoice_date"
        )
        # Then, tied on the missing key: by billDate, the first back end first, then by id.
        days = dict(
            zip(
                ledger.truth("SELECT id FROM invoices ORDER BY id"),
                ledger.truth("SELECT invoice_date FROM invoices ORDER BY id"),
                strict=True,
            )
        )
        undated = expected_ids(ledger, "customerBill", f"{start} IS NULL")
        tail = sorted([(days[i], 0, i) for i in undated] + [(days[i], 1, i) for i in days])
        expected = [f"F-{i}" for i in dated] + [("F-", "P-")[r] + i for _, r, i in tail]
        assert [i["id"] for i in got] == expected
        refused = client.get(f"{API}/customerBill?sort=nextBillDate")
        assert refused.status_code == 400
        assert "not given by any back end's mapping" in refused.json()["message"]
