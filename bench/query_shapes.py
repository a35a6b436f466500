"""Query shapes at scale: every TMF630 operator on every kind of attribute, 1M bills.

Runs the gateway in this process (the whole ASGI app, started and stopped with its
lifespan) over the benchmark database (`make bench-db`) and sends each query shape
`--repeat` times, one at a time: each operator (eq, ne, gt, gte, lt, lte, regex
anchored and unanchored) on a scalar (`billNo`), a date (`billDate`), an amount
(`amountDue.value`), an array of child rows (`taxItem.taxCategory`) and a templated
attribute (`billDocument.name`), with and without a sort. Prints p50/p95 wall time, the
median CPU time of this process per request (the gateway and SQLite both run in it; on
a shared, loaded machine it is the steadier figure), the status,
the back-end records the gateway read (page rows, streamed rows), and where the filter
ran ("down": the back end answered the page and the total; "gateway": the gateway
filtered or sorted a stream). One run, this machine; not a test.

    python bench/query_shapes.py --db var/bench_billing.sqlite [--repeat 5]
    python bench/query_shapes.py --url postgresql+asyncpg://postgres@127.0.0.1:5432/DB
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.pushdown import plan_read  # noqa: E402
from gateway.query import parse_query  # noqa: E402
from simulators.billing_db import metadata  # noqa: E402

API = "/tmf-api/customerBillManagement/v5"


class Counting:
    """The bill source, counting the records it hands the gateway."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def page(self, plan: Any) -> Any:
        page = await self._inner.page(plan)
        self.rows += len(page.records)
        return page

    async def stream(self, plan: Any, batch_size: int) -> Any:
        async for records in self._inner.stream(plan, batch_size):
            self.rows += len(records)
            yield records


def shapes() -> list[tuple[str, str, str]]:
    """(attribute kind, operator, query) for every shape measured."""
    attributes = [
        ("scalar", "billNo", "INV24-500000", "^INV24-0009", "99999"),
        ("date", "billDate", "2024-07-16", None, None),
        ("amount", "amountDue.value", "42.56", None, None),
        ("array of children", "taxItem.taxCategory", "VAT7", "^VAT7", "T7"),
        ("templated", "billDocument.name", "INV24-000001.pdf", "^INV24-0009", "99999"),
    ]
    out = []
    for kind, path, value, anchored, unanchored in attributes:
        for op in ("eq", "ne", "gt", "gte", "lt", "lte"):
            out.append((kind, op, f"{path}.{op}={quote(value, safe='')}"))
        if anchored is not None and unanchored is not None:
            out.append((kind, "regex ^", f"{path}=~{quote(anchored, safe='')}"))
            out.append((kind, "regex", f"{path}=~{quote(unanchored, safe='')}"))
    return out


EXTRA = [
    ("the issue's", "regex ACBR", "appliedCustomerBillingRate?name=~Roaming&limit=20"),
    (
        "the issue's",
        "amount ACBR",
        "appliedCustomerBillingRate?taxExcludedAmount.value.gt=50&sort=-date&limit=20",
    ),
    ("the issue's", "regex acct", "customerBill?billingAccount.id=~^BA-00001&limit=20"),
]


def ensure_indexes(url: str) -> None:
    """The schema's indexes, and planner statistics, as a real biller's database has them.

    Cheap when they are there; a database seeded before an index was added gets it, and
    then fresh statistics (ANALYZE), which let the planner prefer the sort's index over a
    broad range's.
    """
    asyncio.run(_ensure_indexes(url))


async def _ensure_indexes(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            created = await conn.run_sync(_create_missing_indexes)
            if created or not await conn.run_sync(_analysed):
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()


def _create_missing_indexes(conn: Connection) -> int:
    existing = {
        (table.name, str(index["name"]).lower())
        for table in metadata.sorted_tables
        for index in inspect(conn).get_indexes(table.name)
    }
    created = 0
    for table in metadata.sorted_tables:
        for index in table.indexes:
            if (table.name, str(index.name).lower()) not in existing:
                index.create(conn)  # not at all where its `ddl_if` says another dialect
                created += 1
    return created


def _analysed(conn: Connection) -> bool:
    if conn.dialect.name == "sqlite":
        query = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        if not conn.exec_driver_sql(query).scalar_one():
            return False
        return bool(conn.exec_driver_sql("SELECT count(*) FROM sqlite_stat1").scalar_one())
    query = (
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'INV_HDR'"
        " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
    )
    return bool(conn.exec_driver_sql(query).scalar_one())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / "var" / "bench_billing.sqlite")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--url",
        default="",
        help="the demo database elsewhere: an async SQLAlchemy URL (postgresql+asyncpg://...),"
        " seeded with `python -m simulators.billing_db --url URL --bills N`",
    )
    parser.add_argument("--only", default="", help="measure the shapes whose query has this")
    args = parser.parse_args()
    url = args.url or f"sqlite+aiosqlite:///{args.db}"
    if not args.url and not args.db.exists():
        print(f"{args.db} does not exist: run `make bench-db`", file=sys.stderr)
        return 1
    ensure_indexes(url)
    config = load_config(ROOT / "config" / "default.yaml")
    backend = config.backends["legacy_billing"].model_copy(update={"url": url})
    store = args.db.with_name("bench_store.sqlite")
    config = config.model_copy(
        update={
            "backends": {**config.backends, "legacy_billing": backend},
            "store": config.store.model_copy(update={"url": f"sqlite+aiosqlite:///{store}"}),
            # The change detector's first pass over a million bills would compete.
            "events": None,
        }
    )
    app = create_app(config)
    with TestClient(app) as client:
        services = app.state.services
        readers = {
            "customerBill": services.customer_bills,
            "appliedCustomerBillingRate": services.applied_rates,
        }
        counters = {}
        for name, reader in readers.items():
            counters[name] = Counting(reader.source)
            reader.cache = None
            reader.source = counters[name]
        print(
            f"{'kind':18} {'op':10} {'sort':5} {'p50 ms':>8} {'p95 ms':>8} {'cpu ms':>8}"
            f" {'status':>6} {'rows read':>10} {'where':8} query"
        )
        worst: dict[str, float] = {}
        runs = [
            (kind, op, sort, f"customerBill?{query}{'&sort=-billDate' if sort else ''}&limit=20")
            for kind, op, query in shapes()
            for sort in (False, True)
        ]
        runs += [(kind, op, False, query) for kind, op, query in EXTRA]
        runs = [run for run in runs if args.only in run[3]]
        for kind, op, sort, url in runs:
            collection, _, text = url.partition("?")
            reader = readers[collection]
            counter = counters[collection]
            samples = []
            cpu = []
            status = 0
            rows = 0
            for _ in range(args.repeat):
                counter.rows = 0
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get(f"{API}/{url}")
                samples.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
                status = response.status_code
                rows = counter.rows
            where = "-"
            if status == 200:
                query = parse_query(text, reader.attributes, default_limit=20, max_limit=1000)
                plan = plan_read(query, reader.mapping, reader.source)
                where = "down" if plan.windowed_by_backend else "gateway"
            ordered = sorted(samples)
            p50 = statistics.median(ordered)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            cpu_p50 = statistics.median(cpu)
            label = "regex" if op.startswith("regex") and op != "regex ^" else op
            worst[label] = max(worst.get(label, 0.0), cpu_p50)
            print(
                f"{kind:18} {op:10} {'yes' if sort else 'no':5} {p50:8.1f} {p95:8.1f}"
                f" {cpu_p50:8.1f} {status:>6} {rows:>10} {where:8} {url}"
            )
        print(
            "worst CPU p50 per operator (ms): "
            + ", ".join(f"{k} {v:.0f}" for k, v in worst.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
