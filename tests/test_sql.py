"""The SQL adapter against a real SQLite file: binding, plans, streaming, children."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest
from sqlalchemy import event

from adapters.base import (
    AllOf,
    AnyOf,
    BackendError,
    Compare,
    IsNull,
    Plan,
    SortKey,
    SourceSpecError,
)
from adapters.expressions import Agg, Col, In
from adapters.sql import SqlAdapter, SqlOptions, SqlSource, _total_from_window

T = TypeVar("T")
BILLS = {
    "table": "INV_HDR",
    "key": "INV_ID",
    "children": {"taxes": {"table": "INV_TAX", "key": "INV_ID", "order_by": ["SEQ_NO"]}},
}


def run(db: Path, work: Callable[[SqlSource], Awaitable[T]], spec: dict[str, Any] = BILLS) -> T:
    async def main() -> T:
        adapter = SqlAdapter("legacy", SqlOptions(url=f"sqlite+aiosqlite:///{db}"))
        await adapter.open()
        try:
            return await work(await adapter.bind(spec))
        finally:
            await adapter.close()

    return asyncio.run(main())


def legacy(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_page_filters_orders_windows_and_counts(demo_db: Path) -> None:
    plan = Plan(
        where=AllOf(
            (
                AnyOf((Compare("STAT_CD", "eq", "N"), Compare("STAT_CD", "eq", "H"))),
                Compare("GRS_AMT", "gt", 5000),
            )
        ),
        order_by=(SortKey("INV_DT", descending=True),),
        offset=2,
        limit=5,
    )
    page = run(demo_db, lambda s: s.page(plan))
    expected = legacy(
        demo_db,
        "SELECT INV_ID FROM INV_HDR WHERE STAT_CD IN ('N','H') AND GRS_AMT > 5000 "
        "ORDER BY INV_DT DESC, INV_ID LIMIT 5 OFFSET 2",
    )
    assert [r["INV_ID"] for r in page.records] == [e[0] for e in expected]
    assert (
        page.total
        == legacy(
            demo_db, "SELECT count(*) FROM INV_HDR WHERE STAT_CD IN ('N','H') AND GRS_AMT > 5000"
        )[0][0]
    )


def test_children_come_with_their_records_in_order(demo_db: Path) -> None:
    page = run(demo_db, lambda s: s.page(Plan(limit=20)))
    for record in page.records:
        seqs = [t["SEQ_NO"] for t in record["taxes"]]
        assert seqs == sorted(seqs) and seqs
        expected = legacy(
            demo_db,
            "SELECT TAX_AMT FROM INV_TAX WHERE INV_ID = ? ORDER BY SEQ_NO",
            record["INV_ID"],
        )
        assert [t["TAX_AMT"] for t in record["taxes"]] == [e[0] for e in expected]


def test_stream_yields_every_match_in_bounded_batches(demo_db: Path) -> None:
    async def collect(source: SqlSource) -> list[list[dict[str, Any]]]:
        return [batch async for batch in source.stream(Plan(where=IsNull("RUN_ID")), 7)]

    batches = run(demo_db, collect)
    assert all(len(b) <= 7 for b in batches)
    ids = [r["INV_ID"] for b in batches for r in b]
    assert ids == [
        e[0]
        for e in legacy(demo_db, "SELECT INV_ID FROM INV_HDR WHERE RUN_ID IS NULL ORDER BY INV_ID")
    ]
    assert all("taxes" in r for b in batches for r in b)


def test_one_and_empty_predicates(demo_db: Path) -> None:
    assert run(demo_db, lambda s: s.one(Compare("INV_ID", "eq", 9)))["INV_ID"] == 9
    assert run(demo_db, lambda s: s.one(Compare("INV_ID", "eq", -1))) is None
    assert run(demo_db, lambda s: s.page(Plan(where=AnyOf(())))).total == 0
    assert run(demo_db, lambda s: s.page(Plan(where=AllOf(()), limit=1))).total == 300


@pytest.mark.parametrize(
    ("spec", "place", "reason"),
    [
        ({"table": "INVOICES", "key": "ID"}, "source.table", "no table 'INVOICES'"),
        ({"table": "INV_HDR", "key": "ID"}, "source.key", "no column 'ID'"),
        ({"table": "INV_HDR", "key": "INV_ID", "where": 1}, "source", "unknown key"),
        (
            {"table": "INV_HDR", "key": "INV_ID", "children": {"t": {"table": "INV_TAX"}}},
            "source.children.t.key",
            "no column None",
        ),
        ({"key": "INV_ID"}, "source", "give either a table or a select"),
        ({"table": "", "key": "INV_ID"}, "source.table", "a table name is required"),
    ],
)
def test_bind_refuses_what_the_database_does_not_have(
    demo_db: Path, spec: dict[str, Any], place: str, reason: str
) -> None:
    with pytest.raises(SourceSpecError) as info:
        run(demo_db, lambda s: asyncio.sleep(0), spec)
    assert info.value.place == place and reason in info.value.reason


def test_an_unreachable_database_fails_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = aiosqlite.core._connection_worker_thread

    @functools.wraps(worker)
    def slow_worker(tx: Any) -> None:  # a loaded machine: the driver thread lags behind
        class Lagging:
            def get(self) -> Any:
                item = tx.get()
                time.sleep(0.2)
                return item

        worker(Lagging())

    monkeypatch.setattr(aiosqlite.core, "_connection_worker_thread", slow_worker)
    adapter = SqlAdapter("gone", SqlOptions(url=f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"))
    before = set(threading.enumerate())
    with pytest.raises(BackendError, match="cannot connect to back end 'gone'"):
        asyncio.run(adapter.open())
    # The driver's thread ended while the event loop lived: it had someone to report to.
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize(
    ("offset", "limit", "fetched", "total"),
    [
        (0, 10, 3, 3),
        (5, 10, 3, 8),
        (0, 10, 10, None),
        (5, 10, 0, None),
        (0, 10, 0, 0),
        (0, 0, 0, None),
        (0, None, 4, 4),
    ],
)
def test_total_is_known_without_count_only_when_the_window_ran_out(
    offset: int, limit: int | None, fetched: int, total: int | None
) -> None:
    assert _total_from_window(offset, limit, fetched) == total


def test_derived_values_filter_and_sort_in_one_statement(demo_db: Path) -> None:
    vat = Agg("sum", "taxes", "TAX_AMT", In(Col("TAX_CD"), ("VAT19",)))
    seen: list[tuple[str, Any]] = []

    async def work(source: SqlSource) -> Any:
        name = source.computed(vat)
        assert name is not None and source.computed(vat) == name  # one name per value
        assert source.can_push(name, "gt") and source.can_sort(name)
        assert source.computed(Agg("sum", "taxes", "TAX_RT")) is None  # text: not summed

        def remember(conn, cursor, statement, parameters, context, executemany) -> None:
            seen.append((statement, parameters))

        event.listen(source.adapter.engine.sync_engine, "before_cursor_execute", remember)
        plan = Plan(Compare(name, "gt", 1000), (SortKey(name, descending=True),), 0, 5)
        return await source.page(plan)

    page = run(demo_db, work)
    expected = legacy(
        demo_db,
        "SELECT h.INV_ID, (SELECT SUM(t.TAX_AMT) FROM INV_TAX t WHERE t.INV_ID = h.INV_ID"
        " AND t.TAX_CD = 'VAT19') AS vat FROM INV_HDR h WHERE vat > 1000"
        " ORDER BY vat DESC, h.INV_ID",
    )
    assert [r["INV_ID"] for r in page.records] == [row[0] for row in expected[:5]]
    assert page.total == len(expected)
    statement, parameters = seen[0]
    assert "VAT19" not in statement and "VAT19" in str(parameters)  # bound, not spliced
    assert (
        'FROM "INV_TAX"' in statement and '"INV_TAX_1"."INV_ID" = "INV_HDR"."INV_ID"' in statement
    )


ACCOUNT_BILLS = {
    "select": 'SELECT h."INV_ID", h."INV_DT", a."ACCT_NM" FROM "INV_HDR" h'
    ' JOIN "ACCT_MASTER" a ON a."ACCT_NO" = h."ACCT_NO"',
    "key": "INV_ID",
    "types": {"INV_ID": "integer", "ACCT_NM": "text"},
    "children": {
        "taxes": {
            "select": 'SELECT "INV_ID", "SEQ_NO", "TAX_CD" FROM "INV_TAX"',
            "key": "INV_ID",
            "order_by": ["SEQ_NO"],
        }
    },
}


def test_a_query_is_a_source_like_a_table(demo_db: Path) -> None:
    async def work(source: SqlSource) -> Any:
        assert source.columns.record == {"INV_ID", "INV_DT", "ACCT_NM"}
        assert source.columns.kinds["ACCT_NM"] == "text"  # type: ignore[attr-defined]
        assert source.columns.kinds["INV_DT"] == "other"  # type: ignore[attr-defined]
        plan = Plan(Compare("ACCT_NM", "gte", "M"), (SortKey("INV_DT", True),), 2, 3)
        page = await source.page(plan)
        with pytest.raises(BackendError, match="read only"):
            await source.update(Compare("INV_ID", "eq", 1), {"INV_DT": "x"}, {})
        return page

    page = run(demo_db, work, ACCOUNT_BILLS)
    expected = legacy(
        demo_db,
        "SELECT h.INV_ID FROM INV_HDR h JOIN ACCT_MASTER a ON a.ACCT_NO = h.ACCT_NO"
        " WHERE a.ACCT_NM >= 'M' ORDER BY h.INV_DT DESC, h.INV_ID",
    )
    assert [r["INV_ID"] for r in page.records] == [row[0] for row in expected[2:5]]
    assert page.total == len(expected)
    taxes = [row for r in page.records for row in r["taxes"]]
    assert taxes and all(set(row) == {"INV_ID", "SEQ_NO", "TAX_CD"} for row in taxes)


def test_declared_types_replace_what_sqlite_says(demo_db: Path) -> None:
    spec = {"table": "INV_HDR", "key": "INV_ID", "types": {"GRS_AMT": "decimal"}}

    async def work(source: SqlSource) -> Any:
        assert source.columns.kinds["GRS_AMT"] == "decimal"  # type: ignore[attr-defined]
        return await source.one(Compare("INV_ID", "eq", 1))

    assert isinstance(run(demo_db, work, spec)["GRS_AMT"], Decimal)


@pytest.mark.parametrize(
    ("spec", "place", "reason"),
    [
        ({"select": "SELECT nope FROM INV_HDR", "key": "x"}, "source.select", "the query fails"),
        ({"select": " ", "key": "x"}, "source.select", "a SELECT statement is required"),
        (
            {"select": 'SELECT "INV_ID" FROM "INV_HDR"', "key": "INV_ID", "types": {"X": "text"}},
            "source.types",
            "the query gives no ['X']",
        ),
        (
            {"table": "INV_HDR", "key": "INV_ID", "types": {"INV_ID": "money"}},
            "source.types.INV_ID",
            "a kind is one of",
        ),
        (
            {"select": 'SELECT "INV_ID" FROM "INV_HDR"', "key": "ID"},
            "source.key",
            "no column 'ID' in the query",
        ),
        (
            {"table": "INV_HDR", "select": "SELECT 1", "key": "INV_ID"},
            "source",
            "give either a table or a select",
        ),
    ],
)
def test_query_sources_refuse_what_cannot_work(
    demo_db: Path, spec: dict[str, Any], place: str, reason: str
) -> None:
    with pytest.raises(SourceSpecError) as info:
        run(demo_db, lambda source: asyncio.sleep(0), spec)
    assert info.value.place == place
    assert reason in info.value.reason


def test_child_row_matches_agree_as_semi_join_and_as_probe(demo_db: Path) -> None:
    from adapters.predicates import ChildMatch

    vat7 = Compare("taxes", "exists", ChildMatch(None, Compare("TAX_CD", "eq", "VAT7")))
    not_vat7 = Compare("taxes", "not_exists", ChildMatch(None, Compare("TAX_CD", "eq", "VAT7")))
    order = (SortKey("INV_DT", descending=True),)
    statements: list[str] = []

    async def work(source: SqlSource) -> list[tuple[list[int], int]]:
        event.listen(
            source.adapter.engine.sync_engine,
            "before_cursor_execute",
            lambda *args: statements.append(args[2]),
        )
        out = []
        for where in (vat7, not_vat7):
            # The whole list (a semi-join), and a short page (probes along the sort).
            every = await source.page(Plan(where, order))
            page = await source.page(Plan(where, order, offset=1, limit=3))
            ids = [r["INV_ID"] for r in every.records]
            assert [r["INV_ID"] for r in page.records] == ids[1:4]
            assert page.total == every.total == len(ids)
            out.append((ids, every.total))
        return out

    (with_vat7, total7), (without, total_other) = run(demo_db, work)
    expected = {r[0] for r in legacy(demo_db, "SELECT INV_ID FROM INV_TAX WHERE TAX_CD = 'VAT7'")}
    assert set(with_vat7) == expected and 0 < total7 < 300
    assert total7 + total_other == 300 and not set(without) & expected
    assert any(" IN (SELECT" in s for s in statements)
    assert any("EXISTS (SELECT" in s for s in statements)
