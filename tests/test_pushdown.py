"""Push-down: which terms reach the back end, proved by the SQL it receives."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from adapters.base import AllOf, AnyOf, Compare, IsNull, SortKey
from gateway.app import create_app
from gateway.errors import ApiError
from gateway.oas import attribute_types
from gateway.pushdown import plan_read
from gateway.query import Filter, Query, SortTerm
from mappings.compiler import load_mapping
from tests.conftest import API, ROOT, gateway_config


class Statements:
    """Every SQL statement (and its parameters) the adapter sends."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append((" ".join(statement.split()), parameters))

    def main(self) -> tuple[str, Any]:
        return next((s, p) for s, p in self.seen if 'FROM "INV_HDR"' in s and "count" not in s)


@pytest.fixture(scope="module")
def app_client(demo_db: Path) -> Iterator[tuple[TestClient, Any]]:
    app = create_app(gateway_config(demo_db))
    with TestClient(app) as client:
        yield client, app.state.services.customer_bills


@pytest.fixture
def sql(app_client) -> Iterator[Statements]:
    _, reader = app_client
    engine = reader.source.adapter.engine.sync_engine
    statements = Statements()
    event.listen(engine, "before_cursor_execute", statements)
    yield statements
    event.remove(engine, "before_cursor_execute", statements)


def test_filters_sort_and_window_go_down_as_bound_parameters(app_client, sql: Statements) -> None:
    client, _ = app_client
    response = client.get(
        f"{API}/customerBill?billingAccount.id=BA-000010&state=settled,partiallyPaid"
        "&amountDue.value.gt=10&billDate.gte=2024-03-01T00:00:00%2B01:00&sort=-billDate&offset=1&limit=2"
    )
    assert response.status_code == 200
    statement, params = sql.main()
    assert '"INV_HDR"."ACCT_NO" = ?' in statement
    assert '"INV_HDR"."STAT_CD" = ?' in statement
    assert '"INV_HDR"."GRS_AMT" > ?' in statement
    assert '"INV_HDR"."INV_DT" >= ?' in statement
    assert 'ORDER BY "INV_HDR"."INV_DT" DESC, "INV_HDR"."INV_ID" ASC' in statement
    assert "LIMIT ? OFFSET ?" in statement
    assert list(params) == ["BA-000010", "C", "P", 1000, "20240301", 2, 1]
    assert "BA-000010" not in statement  # values are never spliced into the SQL text


def test_count_is_pushed_down_too(app_client, sql: Statements) -> None:
    client, _ = app_client
    response = client.get(f"{API}/customerBill?state=new&limit=3")
    counts = [s for s, _ in sql.seen if s.startswith("SELECT count(*)")]
    assert len(counts) == 1 and '"INV_HDR"."STAT_CD" = ?' in counts[0]
    assert int(response.headers["X-Total-Count"]) > 3


def test_the_back_end_reads_only_the_page(app_client, sql: Statements) -> None:
    client, reader = app_client
    rows: list[int] = []
    original = reader.source.page

    async def counting(plan):
        page = await original(plan)
        rows.append(len(page.records))
        return page

    reader.source.page = counting
    try:
        client.get(f"{API}/customerBill?state=settled&limit=5")
    finally:
        reader.source.page = original
    assert rows == [5]


def test_residual_terms_stream_and_keep_exact_totals(app_client, sql: Statements) -> None:
    client, _ = app_client
    # state.gt cannot be reversed through the code table; billingAccount.id can.
    response = client.get(f"{API}/customerBill?billingAccount.id=BA-000010&state.gt=p&limit=2")
    statement, params = sql.main()
    where = statement.split(" WHERE ", 1)[1]
    assert where == '"INV_HDR"."ACCT_NO" = ? ORDER BY "INV_HDR"."INV_ID" ASC'
    assert "LIMIT" not in statement  # the gateway counts every match itself
    everything = client.get(f"{API}/customerBill?billingAccount.id=BA-000010&limit=1000").json()
    expected = [b["id"] for b in everything if b["state"] > "p"]
    assert response.headers["X-Total-Count"] == str(len(expected))
    assert [b["id"] for b in response.json()] == expected[:2]


def test_injection_attempts_are_only_values(app_client) -> None:
    client, _ = app_client
    for value in ("x' OR '1'='1", 'x"; DROP TABLE INV_HDR; --', "%' --"):
        response = client.get(f"{API}/customerBill", params={"billingAccount.id": value})
        assert response.status_code == 200 and response.json() == []
    assert client.get(f"{API}/customerBill?limit=1").headers["X-Total-Count"] == "300"


# Planning alone, on the bundled mapping, with a source that can take everything.
class AllColumns:
    columns = None

    def can_push(self, column: str, op: str) -> bool:
        return True

    def can_sort(self, column: str) -> bool:
        return True


@pytest.fixture(scope="module")
def bill_mapping():
    return load_mapping(
        ROOT / "mappings" / "legacy_sql" / "customer_bill.yaml",
        attribute_types=attribute_types("CustomerBill").types,
    )


def test_plan_reverses_values_through_transforms(bill_mapping) -> None:
    query = Query(
        filters=(
            Filter("state", "eq", ("sent", "settled"), "p"),
            Filter("state", "ne", ("new", "onHold"), "p"),
            Filter("amountDue.value", "lte", (Decimal("12.345"),), "p"),
        ),
        sort=(SortTerm("billNo", False),),
        offset=3,
        limit=4,
    )
    plan = plan_read(query, bill_mapping, AllColumns())
    assert plan.residual == () and not plan.sort_in_gateway
    assert plan.backend.where == AllOf(
        (
            AnyOf((Compare("STAT_CD", "eq", "S"), Compare("STAT_CD", "eq", "C"))),
            AllOf(
                (
                    AnyOf((Compare("STAT_CD", "ne", "N"), IsNull("STAT_CD"))),
                    AnyOf((Compare("STAT_CD", "ne", "H"), IsNull("STAT_CD"))),
                )
            ),
            Compare("GRS_AMT", "lte", 1234),
        )
    )
    assert plan.backend.order_by == (SortKey("INV_NO"),)
    assert (plan.backend.offset, plan.backend.limit) == (3, 4)


def test_plan_leaves_what_it_cannot_reverse_to_the_gateway(bill_mapping) -> None:
    query = Query(
        filters=(
            Filter("billCycle.href", "eq", ("https://x/billCycle/1",), "p"),
            Filter("billingAccount.id", "eq", ("BA-1",), "p"),
        ),
        sort=(SortTerm("state", False),),
        limit=4,
    )
    plan = plan_read(query, bill_mapping, AllColumns())
    # The href's template holds the request's base URL, which no column has.
    assert [f.path for f in plan.residual] == ["billCycle.href"]
    assert plan.unpushed == plan.residual
    assert plan.sort_in_gateway
    assert plan.backend.where == Compare("ACCT_NO", "eq", "BA-1")
    assert plan.backend.limit is None and plan.backend.offset == 0


def test_plan_respects_what_the_adapter_declares(bill_mapping) -> None:
    class EqualityOnly(AllColumns):
        def can_push(self, column: str, op: str) -> bool:
            return op in ("eq",)

    query = Query(filters=(Filter("amountDue.value", "gt", (Decimal(1),), "p"),), limit=2)
    plan = plan_read(query, bill_mapping, EqualityOnly())
    assert [f.path for f in plan.residual] == ["amountDue.value"]


def test_a_sort_the_mapping_cannot_give_is_a_400(bill_mapping) -> None:
    assert "financialAccount.id" in attribute_types("CustomerBill").types
    assert "financialAccount.id" not in bill_mapping.produced
    query = Query(sort=(SortTerm("billDate", False), SortTerm("financialAccount.id", True)))
    with pytest.raises(ApiError) as info:
        plan_read(query, bill_mapping, AllColumns())
    assert info.value.status == 400 and "'financialAccount.id'" in info.value.message
    assert {
        "billDate",
        "billCycle.id",
        "amountDue.value",
        "billCycle.@type",
    } <= bill_mapping.produced
    assert not any(p.startswith(("taxItem", "billDocument")) for p in bill_mapping.produced)
