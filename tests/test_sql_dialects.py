"""The SQL adapter over the demo legacy database on SQLite, PostgreSQL and MariaDB alike.

The same requests run on each engine: read by id, every filter operator, sorts, paging,
PATCH with its compare-and-set, and the "bill now" action. Each expected answer is SQL
written here (or rows read here and ordered by Python's code-point order), run on the
same database: it never comes from the gateway. Where the engines differ (case and
collation, NULL ordering, LIMIT/OFFSET, RETURNING, row locks), this is where it shows.

PostgreSQL and MariaDB are the local servers of tests/databases.py: without them these
runs are skipped (and fail under CI=true).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from adapters.base import ActionResult, BackendError
from adapters.sql import SqlAdapter, SqlOptions
from gateway.app import create_app
from gateway.config import GatewayConfig, load_config
from simulators.billing_db import create_and_seed, sqlite_url
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.databases import fresh_database

ENGINES = ("sqlite", "postgresql", "mariadb")


@dataclass(frozen=True)
class Legacy:
    """A seeded demo database: its async URL and engine."""

    url: str
    engine: str

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """The ground truth: `sql` (double-quoted names are rewritten for MariaDB)."""
        if self.engine == "mariadb":
            sql = sql.replace('"', "`")
        return asyncio.run(_rows(self.url, sql, params))

    def ids(self, sql: str, **params: Any) -> list[str]:
        return [str(row[0]) for row in self.rows(sql, **params)]


async def _rows(url: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(sql), params)]
    finally:
        await engine.dispose()


@contextmanager
def seeded(engine: str, folder: Path) -> Iterator[Legacy]:
    """The default demo database (300 bills) on `engine`, dropped afterwards."""
    if engine == "sqlite":
        path = folder / "legacy.sqlite"
        create_and_seed(sqlite_url(path))
        yield Legacy(f"sqlite+aiosqlite:///{path}", engine)
        return
    with fresh_database(engine, "tmf678_legacy") as url:  # type: ignore[arg-type]
        create_and_seed(url)
        yield Legacy(url, engine)


def config_for(url: str, folder: Path) -> GatewayConfig:
    """config/default.yaml with the legacy back end at `url` and a store of its own."""
    config = load_config(ROOT / "config" / "default.yaml")
    backend = config.backends["legacy_billing"].model_copy(update={"url": url})
    store = config.store.model_copy(update={"url": f"sqlite+aiosqlite:///{folder}/store.sqlite"})
    return config.model_copy(
        update={
            "backends": {**config.backends, "legacy_billing": backend},
            "store": store,
            "events": None,
        }
    )


@pytest.fixture(scope="module", params=ENGINES)
def legacy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Legacy]:
    """A demo database per engine, shared by the module's read-only tests."""
    with seeded(request.param, tmp_path_factory.mktemp(request.param)) as db:
        yield db


@pytest.fixture(scope="module")
def client(legacy: Legacy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(config_for(legacy.url, tmp_path_factory.mktemp("gateway")))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(params=ENGINES)
def writable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Legacy, TestClient]]:
    """A demo database of this test's own on each engine, and a gateway over it."""
    with seeded(request.param, tmp_path) as db:
        config = tuned(
            config_for(db.url, tmp_path),
            worker={"poll_seconds": 0.05, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2},
        )
        with TestClient(create_app(config)) as test_client:
            yield db, test_client


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


# ------------------------------------------------------------------------------- reads


def test_read_by_id_gives_the_row(legacy: Legacy, client: TestClient) -> None:
    rows = legacy.rows(
        'SELECT "INV_ID", "INV_NO", "STAT_CD", "GRS_AMT", "ACCT_NO", "NXT_INV_DT"'
        ' FROM "INV_HDR" ORDER BY "INV_ID"'
    )
    states = {"N": "new", "H": "onHold", "V": "validated", "S": "sent", "C": "settled"}
    states["P"] = "partiallyPaid"
    for inv_id, inv_no, state, gross, account, next_bill in (rows[0], rows[150], rows[-1]):
        response = client.get(f"{API}/customerBill/{inv_id}")
        assert response.status_code == 200, response.text
        bill = response.json()
        assert_valid("CustomerBill", bill)
        assert (bill["id"], bill["billNo"], bill["state"]) == (str(inv_id), inv_no, states[state])
        assert round(bill["amountDue"]["value"] * 100) == gross
        assert bill["billingAccount"]["id"] == account
        assert ("nextBillDate" in bill) == (next_bill is not None)
    missing = client.get(f"{API}/customerBill/{rows[-1][0] + 1000}")
    assert missing.status_code == 404
    assert_valid("Error", missing.json())


def _bill_value(legacy: Legacy, column: str, position: int) -> Any:
    """A value a bill really has (so gte/lte meet equality), by position in id order."""
    return legacy.rows(f'SELECT "{column}" FROM "INV_HDR" ORDER BY "INV_ID"')[position][0]


def _midnight_in_berlin(day: str) -> str:
    """A 'YYYYMMDD' legacy date as the instant the mapping gives it, URL-encoded."""
    start = datetime.strptime(day, "%Y%m%d").replace(tzinfo=ZoneInfo("Europe/Berlin"))
    return start.isoformat().replace("+", "%2B")


OPERATORS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@pytest.mark.parametrize("op", list(OPERATORS))
def test_every_operator_on_numbers_text_and_dates(
    legacy: Legacy, client: TestClient, op: str
) -> None:
    gross = _bill_value(legacy, "GRS_AMT", 150)
    account = _bill_value(legacy, "ACCT_NO", 99)
    day = _bill_value(legacy, "INV_DT", 200)
    cases = [
        (f"amountDue.value.{op}={gross / 100}", f'"GRS_AMT" {OPERATORS[op]} :v', gross),
        (f"billingAccount.id.{op}={account}", f'"ACCT_NO" {OPERATORS[op]} :v', account),
        (
            f"billDate.{op}={_midnight_in_berlin(day)}",
            f'"INV_DT" {OPERATORS[op]} :v',
            day,
        ),
    ]
    for query, condition, value in cases:
        expected = legacy.ids(
            f'SELECT "INV_ID" FROM "INV_HDR" WHERE {condition} ORDER BY "INV_ID"', v=value
        )
        assert expected, query
        assert ids(fetch_all(client, "customerBill", query)) == expected, query


def test_text_is_matched_with_its_case(legacy: Legacy, client: TestClient) -> None:
    """MariaDB's default collations ignore case; the demo schema's columns do not."""
    number = _bill_value(legacy, "INV_NO", 10)
    assert ids(fetch_all(client, "customerBill", f"billNo={number}")) == legacy.ids(
        'SELECT "INV_ID" FROM "INV_HDR" WHERE "INV_NO" = :v', v=number
    )
    assert fetch_all(client, "customerBill", f"billNo={number.lower()}") == []
    rates = fetch_all(client, "appliedCustomerBillingRate", "name=mobile%20s")
    assert rates == []
    assert len(fetch_all(client, "appliedCustomerBillingRate", "name=Mobile%20S")) == int(
        legacy.rows('SELECT COUNT(*) FROM "CHG_LINE" WHERE "CHG_NM" = \'Mobile S\'')[0][0]
    )


@pytest.mark.parametrize(
    ("query", "pattern", "column"),
    [
        ("billNo=~^INV24-00001", r"^INV24-00001", "INV_NO"),
        ("billingAccount.id=~(?i)ba-00001[0-4]$", r"(?i)ba-00001[0-4]$", "ACCT_NO"),
        ("billNo=~^inv24", r"^inv24", "INV_NO"),
    ],
)
def test_regex_filters_give_what_python_finds(
    legacy: Legacy, client: TestClient, query: str, pattern: str, column: str
) -> None:
    """Pushed down or evaluated by the gateway: RE2 semantics, case included."""
    compiled = re.compile(pattern)
    rows = legacy.rows(f'SELECT "INV_ID", "{column}" FROM "INV_HDR" ORDER BY "INV_ID"')
    expected = [str(inv_id) for inv_id, value in rows if compiled.search(value)]
    assert ids(fetch_all(client, "customerBill", query.replace("+", "%2B"))) == expected


def _ordered(rows: list[tuple[Any, ...]], descending: bool) -> list[str]:
    """(id, value) rows in the gateway's order: by value, missing last, then by id."""
    present = [r for r in rows if r[1] is not None]
    present.sort(key=lambda r: r[0])
    present.sort(key=lambda r: r[1], reverse=descending)
    missing = sorted((r for r in rows if r[1] is None), key=lambda r: r[0])
    return [str(r[0]) for r in present + missing]


@pytest.mark.parametrize(
    ("collection", "sort", "table", "key", "column"),
    [
        ("customerBill", "-amountDue.value", "INV_HDR", "INV_ID", "GRS_AMT"),
        ("customerBill", "billNo", "INV_HDR", "INV_ID", "INV_NO"),
        ("customerBill", "nextBillDate", "INV_HDR", "INV_ID", "NXT_INV_DT"),
        ("customerBill", "-nextBillDate", "INV_HDR", "INV_ID", "NXT_INV_DT"),
        ("appliedCustomerBillingRate", "name", "CHG_LINE", "CHG_ID", "CHG_NM"),
        ("appliedCustomerBillingRate", "-description", "CHG_LINE", "CHG_ID", "CHG_TXT"),
    ],
)
def test_sorts_follow_code_points_with_missing_values_last(
    legacy: Legacy,
    client: TestClient,
    collection: str,
    sort: str,
    table: str,
    key: str,
    column: str,
) -> None:
    rows = legacy.rows(f'SELECT "{key}", "{column}" FROM "{table}"')
    expected = _ordered(rows, sort.startswith("-"))
    assert ids(fetch_all(client, collection, f"sort={sort}")) == expected


@pytest.mark.parametrize(("offset", "limit"), [(0, 7), (37, 25), (295, 10), (400, 5)])
def test_pages_are_windows_of_the_sorted_rows(
    legacy: Legacy, client: TestClient, offset: int, limit: int
) -> None:
    rows = legacy.rows('SELECT "INV_ID", "INV_DT" FROM "INV_HDR"')
    expected = _ordered(rows, descending=True)
    response = client.get(
        f"{API}/customerBill?sort=-billDate&offset={offset}&limit={limit}&state.ne=settled"
    )
    assert response.status_code == 200, response.text
    unsettled = {
        str(r[0]) for r in legacy.rows('SELECT "INV_ID" FROM "INV_HDR" WHERE "STAT_CD" <> \'C\'')
    }
    expected = [i for i in expected if i in unsettled]
    assert ids(response.json()) == expected[offset : offset + limit]
    assert int(response.headers["X-Total-Count"]) == len(expected)
    for bill in response.json():
        assert_valid("CustomerBill", bill)


# ------------------------------------------------------------------------------ writes


def test_patch_writes_the_row_and_its_stamp(writable: tuple[Legacy, TestClient]) -> None:
    db, client = writable
    (inv_id, stamp) = db.rows(
        'SELECT "INV_ID", "UPD_TS" FROM "INV_HDR" WHERE "STAT_CD" = \'N\' ORDER BY "INV_ID"'
    )[0]
    response = client.patch(
        f"{API}/customerBill/{inv_id}",
        json={"state": "validated"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert response.json()["state"] == "validated"
    ((state, new_stamp),) = db.rows(
        'SELECT "STAT_CD", "UPD_TS" FROM "INV_HDR" WHERE "INV_ID" = :i', i=inv_id
    )
    assert state == "V" and new_stamp != stamp and len(new_stamp) == 14
    illegal = client.patch(
        f"{API}/customerBill/{inv_id}",
        json={"state": "new"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert illegal.status_code == 409
    assert db.rows('SELECT "STAT_CD" FROM "INV_HDR" WHERE "INV_ID" = :i', i=inv_id) == [("V",)]


def test_concurrent_conditional_patches_one_wins(writable: tuple[Legacy, TestClient]) -> None:
    """The compare-and-set holds on every engine: the same ETag wins once."""
    db, client = writable
    (inv_id,) = db.rows('SELECT "INV_ID" FROM "INV_HDR" WHERE "STAT_CD" = \'N\' ORDER BY 1')[3]
    etag = client.get(f"{API}/customerBill/{inv_id}").headers["ETag"]
    targets = ["validated", "onHold", "sent", "validated", "onHold", "sent"]

    def patch(state: str) -> int:
        return client.patch(
            f"{API}/customerBill/{inv_id}",
            json={"state": state},
            headers={"Content-Type": "application/merge-patch+json", "If-Match": etag},
        ).status_code

    with ThreadPoolExecutor(len(targets)) as pool:
        statuses = list(pool.map(patch, targets))
    assert sorted(statuses) == [200] + [412] * (len(targets) - 1), statuses
    ((state,),) = db.rows('SELECT "STAT_CD" FROM "INV_HDR" WHERE "INV_ID" = :i', i=inv_id)
    assert state in ("V", "H", "S")


# ---------------------------------------------------------------------------- bill now

ON_DEMAND = f"{API}/customerBillOnDemand"


def _account_with_unbilled(db: Legacy) -> str:
    return str(
        db.rows(
            'SELECT c."ACCT_NO" FROM "CHG_LINE" c JOIN "ACCT_MASTER" a'
            ' ON a."ACCT_NO" = c."ACCT_NO" WHERE c."INV_ID" IS NULL AND a."STAT_CD" = \'A\''
            ' GROUP BY c."ACCT_NO" ORDER BY COUNT(*) DESC, c."ACCT_NO"'
        )[0][0]
    )


def _finished(client: TestClient, href: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = client.get(href).json()
        if body["state"] != "inProgress":
            assert_valid("CustomerBillOnDemand", body)
            return body
        time.sleep(0.05)
    raise AssertionError(f"{href} still inProgress after {seconds} s")


def test_bill_now_makes_the_bill_from_the_unbilled_charges(
    writable: tuple[Legacy, TestClient],
) -> None:
    db, client = writable
    account = _account_with_unbilled(db)
    unbilled = db.rows(
        'SELECT "CHG_ID", "NET_AMT", "TAX_AMT", "TAX_CD" FROM "CHG_LINE"'
        ' WHERE "ACCT_NO" = :a AND "INV_ID" IS NULL ORDER BY "CHG_ID"',
        a=account,
    )
    created = client.post(ON_DEMAND, json={"billingAccount": {"id": account}})
    assert created.status_code == 201, created.text
    done = _finished(client, created.json()["href"])
    assert done["state"] == "done", done
    bill_id = int(done["customerBill"]["id"])
    ((ref, net, tax, gross, open_amt, state, inv_no),) = db.rows(
        'SELECT "EXT_REF", "NET_AMT", "TAX_AMT", "GRS_AMT", "OPEN_AMT", "STAT_CD", "INV_NO"'
        ' FROM "INV_HDR" WHERE "INV_ID" = :i',
        i=bill_id,
    )
    assert ref == created.json()["id"] and state == "N"
    assert inv_no == "OD-" + ref[:12]
    assert net == sum(r[1] for r in unbilled) and tax == sum(r[2] for r in unbilled)
    assert gross == open_amt == net + tax
    assert db.ids(
        'SELECT "CHG_ID" FROM "CHG_LINE" WHERE "INV_ID" = :i AND "BILLED_FLG" = \'Y\''
        ' ORDER BY "CHG_ID"',
        i=bill_id,
    ) == [str(r[0]) for r in unbilled]
    taxes = db.rows(
        'SELECT "SEQ_NO", "TAX_CD", "TAX_AMT" FROM "INV_TAX" WHERE "INV_ID" = :i ORDER BY 1',
        i=bill_id,
    )
    by_code: dict[str, int] = {}
    for _, _, amount, code in unbilled:
        by_code[code] = by_code.get(code, 0) + amount
    assert [(seq, code, amount) for seq, code, amount in taxes] == [
        (n, code, by_code[code]) for n, code in enumerate(sorted(by_code), start=1)
    ]
    bill = client.get(done["customerBill"]["href"])
    assert bill.status_code == 200
    assert_valid("CustomerBill", bill.json())
    # A second request for the account finds nothing left to bill.
    again = client.post(ON_DEMAND, json={"billingAccount": {"id": account}})
    assert _finished(client, again.json()["href"])["state"] == "rejected"


async def _race(url: str, account: str, requests: int) -> list[ActionResult]:
    """`requests` bill-now actions for one account at once, each retried until it answers."""
    adapter = SqlAdapter("legacy", SqlOptions(kind="sql", url=url, pool_size=requests))
    await adapter.open()
    try:
        spec = yaml.safe_load(
            (ROOT / "mappings" / "legacy_sql" / "actions" / "produce_bill.yaml").read_text()
        )
        action = adapter.action(spec)

        async def one(n: int) -> ActionResult:
            for _ in range(50):
                try:
                    return await action.run({"request_id": f"race-{n:02d}", "account_id": account})
                except BackendError:  # SQLite: busy; the worker would retry too
                    await asyncio.sleep(0.05)
            raise AssertionError("no answer after 50 attempts")

        return list(await asyncio.gather(*(one(n) for n in range(requests))))
    finally:
        await adapter.close()


def test_concurrent_bill_now_for_one_account_bills_each_charge_once(
    writable: tuple[Legacy, TestClient],
) -> None:
    """Row locks (FOR UPDATE) where the engine has them; SQLite's single writer otherwise."""
    db, _ = writable
    account = _account_with_unbilled(db)
    unbilled = db.ids(
        'SELECT "CHG_ID" FROM "CHG_LINE" WHERE "ACCT_NO" = :a AND "INV_ID" IS NULL ORDER BY 1',
        a=account,
    )
    results = asyncio.run(_race(db.url, account, 4))
    assert sorted(r.outcome for r in results) == ["done", "rejected", "rejected", "rejected"]
    (done,) = [r for r in results if r.outcome == "done"]
    assert {r.reason for r in results if r.outcome == "rejected"} == {
        "the billing account has no unbilled charges"
    }
    bills = db.ids('SELECT "INV_ID" FROM "INV_HDR" WHERE "EXT_REF" LIKE \'race-%\'')
    assert bills == [str(done.value)]
    assert (
        db.ids('SELECT "CHG_ID" FROM "CHG_LINE" WHERE "INV_ID" = :i ORDER BY 1', i=int(done.value))
        == unbilled
    )
