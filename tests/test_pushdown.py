"""Push-down: which terms reach the back end, proved by the SQL it receives."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from adapters.base import AllOf, AnyOf, Compare, IsNull, SortKey
from adapters.sql_regex import runs_re2
from gateway.app import create_app
from gateway.errors import ApiError
from gateway.oas import attribute_types
from gateway.pushdown import plan_read
from gateway.query import Filter, Query, SortTerm
from mappings.compiler import load_mapping
from tests.conftest import API, ROOT, gateway_config
from tests.test_sql_dialects import config_for, seeded


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


# The oracle: every operator on every kind of attribute, with push-down on and off.
# Off, the gateway evaluates every term itself (gateway/residual.py: the reference
# semantics); on, the back end takes what it can. Results, order and totals must agree.


class NothingPushed:
    """The same source, taking no filter and no sort."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.columns = inner.columns
        self.key_column = inner.key_column

    def can_push(self, column: str, op: str) -> bool:
        return False

    def accepts(self, predicate: Any) -> bool:
        return False

    def can_sort(self, column: str) -> bool:
        return False

    async def page(self, plan: Any) -> Any:
        return await self._inner.page(plan)

    def stream(self, plan: Any, batch_size: int) -> Any:
        return self._inner.stream(plan, batch_size)


# (collection, attribute, kind, sort used with it)
ORACLE_ATTRIBUTES = [
    ("customerBill", "billNo", "scalar", "-billDate"),
    ("customerBill", "billingAccount.id", "nested", "-billDate"),
    ("customerBill", "billCycle.id", "nested", "billNo"),
    ("customerBill", "taxItem.taxCategory", "array of children", "-billDate"),
    ("customerBill", "taxItem.taxAmount.value", "array of children", "-billDate"),
    ("customerBill", "taxItem.@type", "array of children", "billNo"),
    ("customerBill", "billDocument.name", "templated", "-billDate"),
    ("customerBill", "billDocument.url", "templated", "billNo"),
    ("customerBill", "billDocument.@type", "templated", "billNo"),
    ("customerBill", "billCycle.@type", "nested", "billNo"),
    ("customerBill", "state", "enum", "-billDate"),
    ("customerBill", "category", "enum", "billNo"),
    ("customerBill", "billDate", "date", "-amountDue.value"),
    ("customerBill", "nextBillDate", "date", "billNo"),
    ("customerBill", "amountDue.value", "amount", "-billDate"),
    ("customerBill", "remainingAmount.value", "amount", "billNo"),
    ("appliedCustomerBillingRate", "name", "scalar", "-date"),
    ("appliedCustomerBillingRate", "appliedTax.taxCategory", "templated", "-date"),
    ("appliedCustomerBillingRate", "date", "date", "name"),
    ("appliedCustomerBillingRate", "taxExcludedAmount.value", "amount", "-date"),
    ("appliedCustomerBillingRate", "isBilled", "enum", "-date"),
]
ORACLE_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "regex")
#: Terms the back end cannot answer exactly, so the gateway still must (with push-down on).
STILL_RESIDUAL = {
    ("billDocument.name", "gt"),
    ("billDocument.name", "gte"),
    ("billDocument.name", "lt"),
    ("billDocument.name", "lte"),
    ("billDocument.name", "regex"),
    ("billDocument.url", "gt"),
    ("billDocument.url", "gte"),
    ("billDocument.url", "lt"),
    ("billDocument.url", "lte"),
    ("billDocument.url", "regex"),
    ("billCycle.id", "gt"),  # ids are text made of integers: only equality goes down
    ("billCycle.id", "gte"),
    ("billCycle.id", "lt"),
    ("billCycle.id", "lte"),
    ("billCycle.id", "regex"),
    ("state", "gt"),  # code tables are unordered
    ("state", "gte"),
    ("state", "lt"),
    ("state", "lte"),
    ("state", "regex"),
    ("category", "gt"),
    ("category", "gte"),
    ("category", "lt"),
    ("category", "lte"),
    ("category", "regex"),
}


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def oracle_readers(
    request: pytest.FixtureRequest, demo_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """The demo back end on SQLite (RE2 in the database) and on PostgreSQL (regex
    candidates, re-checked; counts from an enforced foreign key): same answers."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            config = gateway_config(demo_db)
        else:
            legacy = stack.enter_context(seeded("postgresql", tmp_path_factory.mktemp("pg")))
            config = config_for(legacy.url, tmp_path_factory.mktemp("oracle"))
        yield stack.enter_context(_readers(config))


@contextlib.contextmanager
def _readers(config: Any) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    app = create_app(config)
    with TestClient(app) as client:
        services = app.state.services
        yield (
            client,
            {
                "customerBill": services.customer_bills,
                "appliedCustomerBillingRate": services.applied_rates,
            },
        )


def _every_value(resources: list[dict[str, Any]], path: str) -> list[Any]:
    from gateway.residual import values_at

    found = [v for r in resources for v in values_at(r, tuple(path.split(".")))]
    return sorted(set(found), key=lambda v: (str(type(v)), v))


def _as_text(value: Any) -> str:
    from urllib.parse import quote

    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(str(value), safe="")


def _oracle_queries(path: str, op: str, values: list[Any], closed: bool) -> list[str]:
    """Terms of `op` on `path` whose values come from the data (and one that never does)."""
    if op == "regex":
        texts = [v for v in values if isinstance(v, str)]
        if not texts:
            return []
        middle = texts[len(texts) // 2]
        from urllib.parse import quote

        import re2

        anchored = "^" + re2.escape(middle[: max(1, len(middle) - 2)])
        fragment = re2.escape(middle[1:4]) if len(middle) > 3 else re2.escape(middle)
        return [
            f"{path}=~{quote(anchored, safe='')}",
            f"{path}=~{quote(fragment, safe='')}",
            f"{path}=~{quote('^(x|' + re2.escape(middle) + ')$', safe='')}",
            f"{path}=~{quote('[0-9]_%', safe='')}",
        ]
    chosen = [values[len(values) // 3], values[-1]]
    queries = [f"{path}.{op}={_as_text(v)}" for v in dict.fromkeys(chosen)]
    if op in ("eq", "ne"):
        both = ",".join(_as_text(v) for v in dict.fromkeys(chosen[:2]))
        queries.append(f"{path}.{op}={both}")
        if not closed:
            queries.append(f"{path}.{op}=no-such.pdf")
    return queries


@pytest.mark.parametrize(("collection", "path", "kind", "sort"), ORACLE_ATTRIBUTES)
def test_every_operator_agrees_with_push_down_on_and_off(
    oracle_readers, collection: str, path: str, kind: str, sort: str
) -> None:
    import dataclasses

    from gateway.query import parse_query

    client, readers = oracle_readers
    on = dataclasses.replace(readers[collection], cache=None, guard=None)
    off = dataclasses.replace(on, source=NothingPushed(on.source))
    schema = "CustomerBill" if collection == "customerBill" else "AppliedCustomerBillingRate"
    attributes = attribute_types(schema)

    def read(reader: Any, text: str) -> tuple[list[str], int]:
        query = parse_query(text, attributes, default_limit=20, max_limit=5000)
        found, total = client.portal.call(reader.list, query, "http://x")
        return [r["id"] for r in found], total

    everything, _ = client.portal.call(
        off.list, parse_query("limit=5000", attributes, default_limit=20, max_limit=5000), "h"
    )
    values = _every_value(everything, path)
    assert values, f"no data for {path}: the oracle would prove nothing"
    checked = 0
    for op in ORACLE_OPS:
        if op in ("gt", "gte", "lt", "lte") and isinstance(values[0], bool):
            continue
        if op == "regex" and attributes.types[path] != "string":
            continue
        free_text = attributes.types[path] == "string" and path not in attributes.enums
        for term in _oracle_queries(path, op, values, not free_text):
            for window in (
                "offset=1&limit=5000",
                "offset=2&limit=5",
                f"sort={sort}&offset=2&limit=5",
            ):
                text = f"{term}&{window}"
                assert read(on, text) == read(off, text), text
                checked += 1
            query = parse_query(term, attributes, default_limit=20, max_limit=5000)
            plan = plan_read(query, on.mapping, on.source)
            if (path, op) in STILL_RESIDUAL:
                continue
            if op == "regex" and not runs_re2(on.source.adapter.engine.dialect.name):
                # Candidates go down (an index range, a LIKE, `~`); RE2 re-checks them.
                assert plan.unpushed == (), f"{term} was not pushed down"
                continue
            assert plan.residual == (), f"{term} was not pushed down"
    assert checked


def test_the_oracle_selects_some_and_not_all(oracle_readers) -> None:
    """Guard against terms that select all or nothing (an oracle that cannot fail)."""
    client, readers = oracle_readers
    reader = readers["customerBill"]
    attributes = attribute_types("CustomerBill")
    from gateway.query import parse_query

    def total(text: str) -> int:
        query = parse_query(text, attributes, default_limit=20, max_limit=5000)
        return int(client.portal.call(reader.list, query, "h")[1])

    everything = total("limit=1")
    for term in (
        "taxItem.taxCategory=VAT7",
        "taxItem.taxCategory.ne=VAT7",
        "billDocument.name.ne=INV24-000001.pdf",
        "billNo=~0$",
        "amountDue.value.gt=60",
    ):
        assert 0 < total(term) < everything, term
    assert total("billDocument.name=INV24-000001.pdf") in (0, 1)


def test_a_scan_past_the_budget_is_a_400_naming_the_filter(demo_db: Path) -> None:
    from gateway.config import PagingSettings
    from tests.conftest import assert_valid

    app = create_app(gateway_config(demo_db, paging=PagingSettings(scan_budget_rows=50)))
    with TestClient(app) as client:
        # A range on a template cannot go down: every bill would be read (300 > 50).
        response = client.get(f"{API}/customerBill?billDocument.name.gt=INV24&limit=5")
        assert response.status_code == 400
        body = response.json()
        assert_valid("Error", body)
        assert body["code"] == "INVALID_QUERY"
        assert "'billDocument.name.gt=INV24'" in body["message"]
        assert "300 records" in body["message"] and "billingAccount.id" in body["message"]
        # Narrowed by a filter that goes down, the same term is answered.
        narrowed = client.get(
            f"{API}/customerBill?billingAccount.id=BA-000010&billDocument.name.gt=INV24"
        )
        assert narrowed.status_code == 200 and narrowed.json()
        # A sort the back end cannot do over every bill is refused the same way.
        sorted_ = client.get(f"{API}/customerBill?sort=state&limit=5")
        assert sorted_.status_code == 400 and "the sort" in sorted_.json()["message"]
        # What goes down whole reads no more than the page, whatever the budget.
        assert client.get(f"{API}/customerBill?taxItem.taxCategory=VAT7").status_code == 200


def test_a_source_that_cannot_count_is_stopped_while_streaming(demo_db: Path) -> None:
    import dataclasses

    from gateway.query import parse_query

    app = create_app(gateway_config(demo_db))
    with TestClient(app) as client:
        reader = app.state.services.customer_bills
        streamed = dataclasses.replace(
            reader, source=NothingPushed(reader.source), cache=None, guard=None, scan_budget=120
        )
        query = parse_query(
            "billDocument.name.gt=INV24", attribute_types("CustomerBill"),
            default_limit=20, max_limit=100,
        )  # fmt: skip
        with pytest.raises(ApiError) as info:
            client.portal.call(streamed.list, query, "h")
        assert info.value.status == 400 and "more than 120 records" in (info.value.message or "")


def test_regex_array_and_template_filters_go_down_in_one_statement(
    app_client, sql: Statements
) -> None:
    client, _ = app_client
    cases = {
        # An anchored literal is an index range, nothing else.
        "billNo=~^INV24-00001": ['"INV_HDR"."INV_NO" >= ?', '"INV_HDR"."INV_NO" < ?'],
        # Anything else: a LIKE pre-filter, then RE2 itself, in the database.
        "billNo=~^INV2.-0+1$": ['"INV_HDR"."INV_NO" LIKE ? ESCAPE', "re2_search(?,"],
        # Child rows: a rare match is a semi-join; a common one probes the records of
        # the key's index in order (20 probes find a page, where the semi-join would
        # gather every match first).
        "taxItem.taxCategory=VAT0": ['"INV_HDR"."INV_ID" IN (SELECT', '"TAX_CD" = ?'],
        "taxItem.taxCategory=VAT7": ["WHERE EXISTS (SELECT", '"TAX_CD" = ?'],
        "taxItem.taxCategory.ne=VAT7": ["WHERE NOT (EXISTS (SELECT", '"TAX_CD" = ?'],
        # A template read backwards.
        "billDocument.name=INV24-000007.pdf": ['"INV_HDR"."INV_NO" = ?'],
    }
    for term, fragments in cases.items():
        sql.seen.clear()
        response = client.get(f"{API}/customerBill?{term}&limit=2")
        assert response.status_code == 200, term
        statement, _ = sql.main()
        assert "LIMIT" in statement, f"{term}: the back end did not answer the page"
        for fragment in fragments:
            assert fragment in statement, (term, statement)
    sql.seen.clear()
    found = client.get(f"{API}/customerBill?billDocument.name=INV24-000007.pdf").json()
    assert [b["billNo"] for b in found] == ["INV24-000007"]


def test_no_child_row_matching_is_counted_as_the_complement(app_client, sql: Statements) -> None:
    """`ne` on an array: every bill less those with a match (two cheap counts), exactly."""
    client, _ = app_client
    every = int(client.get(f"{API}/customerBill?limit=1").headers["X-Total-Count"])
    sql.seen.clear()
    response = client.get(f"{API}/customerBill?taxItem.taxCategory.ne=VAT7&limit=3")
    assert response.status_code == 200
    counts = [s for s, _ in sql.seen if "count(*)" in s]
    assert len(counts) == 2 and not any("NOT IN" in s or "NOT (" in s for s in counts), counts
    with_vat7 = client.get(f"{API}/customerBill?taxItem.taxCategory=VAT7&limit=1")
    total = int(response.headers["X-Total-Count"])
    assert total == every - int(with_vat7.headers["X-Total-Count"])
    assert 0 < total < every


def test_child_row_counts_use_an_enforced_foreign_key_only(oracle_readers) -> None:
    """PostgreSQL enforces INV_TAX's foreign key: the distinct keys of matching tax lines
    count the bills. SQLite does not enforce it: the semi-join checks each bill is there."""
    client, readers = oracle_readers
    reader = readers["customerBill"]
    engine = reader.source.adapter.engine.sync_engine
    statements = Statements()
    event.listen(engine, "before_cursor_execute", statements)
    try:
        response = client.get(f"{API}/customerBill?taxItem.taxCategory=VAT7&limit=1&offset=3")
    finally:
        event.remove(engine, "before_cursor_execute", statements)
    assert response.status_code == 200
    counts = [s for s, _ in statements.seen if "count(*)" in s and "INV_TAX" in s]
    assert len(counts) == 1, statements.seen
    distinct = "SELECT DISTINCT" in counts[0]
    assert distinct == (engine.dialect.name == "postgresql"), counts[0]
    every = client.get(f"{API}/customerBill?limit=1000").json()
    expected = sum(any(t["taxCategory"] == "VAT7" for t in b.get("taxItem", [])) for b in every)
    assert int(response.headers["X-Total-Count"]) == expected > 0
