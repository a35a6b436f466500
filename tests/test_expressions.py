"""Derived values: SQL's semantics in Python, and the same answers from SQL itself."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Date,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    insert,
    select,
)

from adapters.expressions import (
    Agg,
    All,
    Any_,
    Arith,
    Case,
    Cmp,
    Coalesce,
    Col,
    Expr,
    In,
    IsNull,
    Lit,
    MissingData,
    Not,
    aggregates,
)
from adapters.sql_derived import ChildTable, NotInSql, SqlExpressions

metadata = MetaData()
heads = Table(
    "heads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("n", Integer, nullable=True),
    Column("s", String(5), nullable=True),
)
lines = Table(
    "lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("head_id", Integer, nullable=False),
    Column("kind", String(5), nullable=True),
    Column("qty", Integer, nullable=True),
    Column("day", Date, nullable=True),
    Column("price", Numeric(10, 2), nullable=True),
)
HEADS = [
    {"id": 1, "n": 5, "s": "A"},
    {"id": 2, "n": None, "s": "B"},
    {"id": 3, "n": 0, "s": None},
    {"id": 4, "n": -2, "s": "A"},
]
LINES = [
    {"head_id": 1, "kind": "TAX", "qty": 3, "day": date(2024, 1, 5), "price": Decimal("0.10")},
    {"head_id": 1, "kind": "NET", "qty": None, "day": date(2024, 1, 1), "price": Decimal("0.20")},
    {"head_id": 1, "kind": None, "qty": 4, "day": None, "price": None},
    {"head_id": 2, "kind": "NET", "qty": 7, "day": date(2024, 2, 1), "price": Decimal("1")},
    {"head_id": 4, "kind": "TAX", "qty": None, "day": None, "price": None},
]

TAX = In(Col("kind"), ("TAX",))
TOTAL = Agg("sum", "lines", "qty")
EXPRESSIONS: list[Expr] = [
    TOTAL,
    Agg("sum", "lines", "qty", TAX),
    Agg("count", "lines", None),
    Agg("count", "lines", "qty"),
    Agg("count", "lines", None, IsNull(Col("kind"))),
    Agg("min", "lines", "day", Not(TAX)),
    Agg("max", "lines", "day"),
    Coalesce((TOTAL, Lit(0))),
    Arith("subtract", (Coalesce((TOTAL, Lit(0))), Col("n"))),
    Arith("multiply", (Col("n"), Lit(3))),
    Arith("add", (Col("n"), TOTAL)),
    Case(((Cmp("gt", Col("n"), Lit(1)), Lit("big")),), Lit("small")),
    # three-valued logic: a null makes a comparison unknown, and NOT unknown is unknown
    Case(((Not(Cmp("gt", Col("n"), Lit(1))), Lit("not big")),), Lit("else")),
    Case(((Any_((Cmp("eq", Col("s"), Lit("A")), Cmp("gt", Col("n"), Lit(100)))), Lit("y")),)),
    Case(((All((IsNull(Col("s"), False), Cmp("lt", Col("n"), Lit(1)))), Lit("y")),), Lit("n")),
    Case(((Cmp("gte", TOTAL, Col("n")), Lit("covered")),), Lit("short")),
    Case(((In(Col("s"), ("A", "B")), Col("n")),), Coalesce((Col("n"), Lit(-1)))),
]


def records() -> list[dict[str, Any]]:
    return [
        {
            **head,
            "lines": [
                {**line, "id": n} for n, line in enumerate(LINES) if line["head_id"] == head["id"]
            ],
        }
        for head in HEADS
    ]


@pytest.fixture(scope="module")
def database() -> Any:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(heads), HEADS)
        conn.execute(insert(lines), [{**line, "id": n} for n, line in enumerate(LINES)])
    yield engine
    engine.dispose()


def translator(exact_decimals: bool = False) -> SqlExpressions:
    kinds = {"id": "integer", "head_id": "integer", "kind": "text", "qty": "integer"}
    return SqlExpressions(
        heads,
        "id",
        {"id": "integer", "n": "integer", "s": "text"},
        {"lines": ChildTable(lines, "head_id", {**kinds, "day": "date", "price": "decimal"})},
        exact_decimals,
    )


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=[str(i) for i in range(len(EXPRESSIONS))])
def test_sql_and_python_give_the_same_values(database: Any, expr: Expr) -> None:
    element = translator().element(expr)
    with database.connect() as conn:
        got = dict(conn.execute(select(heads.c.id, element).order_by(heads.c.id)).all())
    expected = {record["id"]: expr.evaluate(record) for record in records()}
    assert got == expected


def test_the_python_side_follows_sql_null_rules() -> None:
    first, second, third, _ = records()
    assert TOTAL.evaluate(first) == 7  # nulls ignored
    assert TOTAL.evaluate(third) is None  # no rows: null, not 0
    assert Agg("count", "lines", "qty").evaluate(third) == 0
    assert Arith("add", (Col("n"), Lit(1))).evaluate(second) is None
    assert Cmp("gt", Col("n"), Lit(1)).holds(second) is None
    assert Not(Cmp("gt", Col("n"), Lit(1))).holds(second) is None
    assert All((Cmp("gt", Col("n"), Lit(1)), never())).holds(second) is False
    assert Any_((Cmp("gt", Col("n"), Lit(1)), always())).holds(second) is True
    assert In(Col("s"), ("A",)).holds(third) is None


def always() -> Cmp:
    return Cmp("eq", Lit(1), Lit(1))


def never() -> Cmp:
    return Cmp("eq", Lit(1), Lit(0))


def test_decimals_are_exact() -> None:
    (record, *_) = records()
    total = Agg("sum", "lines", "price")
    assert total.evaluate(record) == Decimal("0.30")
    assert Cmp("eq", total, Lit(Decimal("0.3"))).holds(record) is True
    assert Arith("subtract", (total, Lit(0.1))).evaluate(record) == Decimal("0.20")


def test_sums_of_decimals_are_not_asked_of_sqlite() -> None:
    with pytest.raises(NotInSql):
        translator().element(Agg("sum", "lines", "price"))
    with pytest.raises(NotInSql):
        translator().element(Arith("add", (Col("n"), Lit(Decimal("0.5")))))
    translator().element(Agg("max", "lines", "price"))  # picking one value is exact
    translator(exact_decimals=True).element(Agg("sum", "lines", "price"))


def test_missing_columns_and_rows_are_reported() -> None:
    with pytest.raises(MissingData, match="column qty missing"):
        TOTAL.evaluate({"lines": [{"kind": "TAX"}]})
    with pytest.raises(MissingData, match="child rows 'lines' missing"):
        TOTAL.evaluate({"id": 1})


def test_aggregates_are_found_anywhere_in_an_expression() -> None:
    expr = Case(((Cmp("gte", TOTAL, Lit(1)), Lit("x")),), Coalesce((Agg("max", "lines", "day"),)))
    assert aggregates(expr) == [TOTAL, Agg("max", "lines", "day")]
