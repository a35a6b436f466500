"""Derived values (adapters/expressions.py) as SQL: expressions and correlated subqueries.

An aggregate over child rows becomes `(SELECT SUM(c.amount) FROM items c WHERE
c.invoice_id = invoices.id AND c.type = :p)`, correlated to the record's own table, so a
filter or sort on a derived attribute is one statement with bound parameters. SQL's
null rules are the expressions' own (they were written after them).

A dialect that cannot compute a value exactly is not asked to: SQLite keeps DECIMAL
columns as binary floating point, so its sums and arithmetic on them are refused here
(the gateway then filters itself, exactly).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.expression import FromClause

from adapters.expressions import (
    Agg,
    All,
    Any_,
    Arith,
    Case,
    Cmp,
    Coalesce,
    Col,
    Condition,
    Expr,
    In,
    IsNull,
    Lit,
    Not,
)
from adapters.kinds import Kind

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class NotInSql(Exception):
    """The back end cannot compute this value (exactly): the gateway must."""


class ChildTable:
    """What a correlated subquery needs of child rows: their table and the key to join on."""

    def __init__(self, table: FromClause, key: str, kinds: Mapping[str, Kind]) -> None:
        self.table = table
        self.key = key
        self.kinds = kinds


class SqlExpressions:
    """Translates expressions over one table (and its child tables) into SQL."""

    def __init__(
        self,
        table: FromClause,
        key: str,
        kinds: Mapping[str, Kind],
        children: Mapping[str, ChildTable],
        exact_decimals: bool,
    ) -> None:
        self.table = table
        self.key = key
        self.kinds = kinds
        self.children = children
        self.exact_decimals = exact_decimals

    def element(self, expr: Expr) -> ColumnElement[Any]:
        """The expression as SQL over the record's table; raises NotInSql."""
        return self._expr(expr, self.table, self.kinds)

    def condition(
        self, cond: Condition, table: FromClause, kinds: Mapping[str, Kind]
    ) -> ColumnElement[bool]:
        """A condition on the rows of `table` (a child table's alias); raises NotInSql."""
        return self._condition(cond, table, kinds)

    def _expr(self, expr: Expr, table: FromClause, kinds: Mapping[str, Kind]) -> ColumnElement[Any]:
        if isinstance(expr, Col):
            return table.c[expr.name]
        if isinstance(expr, Lit):
            return literal(expr.value)
        if isinstance(expr, Agg):
            return self._aggregate(expr)
        if isinstance(expr, Arith):
            self._exact(expr, kinds)
            parts = [self._expr(arg, table, kinds) for arg in expr.args]
            combine = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul}
            result = parts[0]
            for part in parts[1:]:
                result = combine[expr.op](result, part)
            return result
        if isinstance(expr, Coalesce):
            return func.coalesce(*(self._expr(arg, table, kinds) for arg in expr.args))
        if isinstance(expr, Case):
            whens = [
                (self._condition(cond, table, kinds), self._expr(value, table, kinds))
                for cond, value in expr.branches
            ]
            default = None if expr.default is None else self._expr(expr.default, table, kinds)
            return case(*whens, else_=default)
        raise NotInSql(f"no SQL for {expr!r}")

    def _aggregate(self, agg: Agg) -> ColumnElement[Any]:
        child = self.children.get(agg.rows)
        if child is None:
            raise NotInSql(f"no child rows {agg.rows!r}")
        rows = child.table.alias()
        if agg.fn == "sum" and agg.column is not None:
            self._exact_column(child.kinds.get(agg.column))
        if agg.column is None:
            measure: ColumnElement[Any] = func.count()
        else:
            column = rows.c[agg.column]
            if agg.fn == "sum":
                measure = func.sum(column)
            elif agg.fn == "min":
                measure = func.min(column)
            elif agg.fn == "max":
                measure = func.max(column)
            else:
                measure = func.count(column)
        query = select(measure).where(rows.c[child.key] == self.table.c[self.key])
        if agg.where is not None:
            query = query.where(self._condition(agg.where, rows, child.kinds))
        return query.scalar_subquery()

    def _condition(
        self, cond: Condition, table: FromClause, kinds: Mapping[str, Kind]
    ) -> ColumnElement[bool]:
        if isinstance(cond, Cmp):
            left = self._expr(cond.left, table, kinds)
            right = self._expr(cond.right, table, kinds)
            result: ColumnElement[bool] = COMPARE[cond.op](left, right)
            return result
        if isinstance(cond, In):
            return self._expr(cond.expr, table, kinds).in_(cond.values)
        if isinstance(cond, IsNull):
            inner = self._expr(cond.expr, table, kinds)
            return inner.is_(None) if cond.null else inner.is_not(None)
        if isinstance(cond, All):
            return and_(true(), *(self._condition(t, table, kinds) for t in cond.terms))
        if isinstance(cond, Any_):
            return or_(false(), *(self._condition(t, table, kinds) for t in cond.terms))
        if isinstance(cond, Not):
            return not_(self._condition(cond.term, table, kinds))
        raise NotInSql(f"no SQL for {cond!r}")

    def _exact(self, expr: Arith, kinds: Mapping[str, Kind]) -> None:
        if not self.exact_decimals and not all(self._integral(a, kinds) for a in expr.args):
            raise NotInSql("this back end does not compute with decimals exactly")

    def _exact_column(self, kind: Kind | None) -> None:
        if not self.exact_decimals and kind != "integer":
            raise NotInSql("this back end does not add decimals exactly")

    def _integral(self, expr: Expr, kinds: Mapping[str, Kind]) -> bool:
        """Whether a value is always a whole number (exact in any SQL)."""
        if isinstance(expr, Col):
            return kinds.get(expr.name) == "integer"
        if isinstance(expr, Lit):
            return isinstance(expr.value, int) and not isinstance(expr.value, bool)
        if isinstance(expr, Agg):
            child = self.children.get(expr.rows)
            column_kind = (
                None if child is None or expr.column is None else child.kinds.get(expr.column)
            )
            return expr.fn == "count" or column_kind == "integer"
        if isinstance(expr, Arith | Coalesce):
            return all(self._integral(arg, kinds) for arg in expr.args)
        values = [v for _, v in expr.branches] + ([expr.default] if expr.default else [])
        return all(self._integral(value, kinds) for value in values)
