"""Derived values over a record's columns and child rows, in back-end terms.

A mapping may compute an attribute instead of reading one column: a sum over the
invoice's item lines of one kind, the earliest of their dates, remaining = total − paid,
a status derived from such values. The same expression is evaluated two ways that must
agree: here, in Python, on a record the adapter returned (with its child rows), and by an
adapter that can (SQL), as an expression or correlated subquery in its own query, so
filters and sorts on the derived attribute go down to the back end.

The semantics are SQL's, so the two agree: an aggregate ignores nulls and is null over
no values (`count` is 0); arithmetic with a null is null; a comparison with a null is
unknown, and a condition only holds when it is true (`case` takes the first true
branch). Numbers are exact: decimals stay `Decimal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeAlias

Row: TypeAlias = Mapping[str, Any]
Truth: TypeAlias = bool | None  # None: unknown (a null was compared)


class MissingData(LookupError):
    """A column or the child rows an expression reads are not in the record."""


def _read(row: Row, column: str) -> Any:
    try:
        return row[column]
    except KeyError:
        raise MissingData(f"column {column} missing from the record") from None


def _exact(value: Any) -> Any:
    """Floats meet decimals as the decimal they print as (never binary fractions)."""
    return Decimal(repr(value)) if isinstance(value, float) else value


@dataclass(frozen=True, slots=True)
class Col:
    """A column of the row the expression is evaluated on."""

    name: str

    def evaluate(self, row: Row) -> Any:
        return _read(row, self.name)


@dataclass(frozen=True, slots=True)
class Lit:
    """A value written in the mapping (already of the type the column holds)."""

    value: Any

    def evaluate(self, row: Row) -> Any:
        return self.value


AggregateName = Literal["sum", "min", "max", "count"]


@dataclass(frozen=True, slots=True)
class Agg:
    """`fn` over the record's child rows `rows` that meet `where` (count: rows or values)."""

    fn: AggregateName
    rows: str
    column: str | None
    where: Condition | None = None

    def evaluate(self, row: Row) -> Any:
        children = row.get(self.rows)
        if children is None:
            raise MissingData(f"child rows {self.rows!r} missing from the record")
        if self.where is not None:
            children = [c for c in children if self.where.holds(c) is True]
        if self.column is None:
            return len(children)
        values = [_exact(v) for v in (_read(c, self.column) for c in children) if v is not None]
        if self.fn == "count":
            return len(values)
        if not values:
            return None
        if self.fn == "sum":
            total = values[0]
            for value in values[1:]:
                total += value
            return total
        return min(values) if self.fn == "min" else max(values)


ArithmeticName = Literal["add", "subtract", "multiply"]


@dataclass(frozen=True, slots=True)
class Arith:
    """`add`, `subtract` (the first minus the rest) or `multiply`; null if any is null."""

    op: ArithmeticName
    args: tuple[Expr, ...]

    def evaluate(self, row: Row) -> Any:
        values = [_exact(arg.evaluate(row)) for arg in self.args]
        if any(v is None for v in values):
            return None
        result = values[0]
        for value in values[1:]:
            if self.op == "add":
                result = result + value
            elif self.op == "subtract":
                result = result - value
            else:
                result = result * value
        return result


@dataclass(frozen=True, slots=True)
class Coalesce:
    """The first of `args` that is not null."""

    args: tuple[Expr, ...]

    def evaluate(self, row: Row) -> Any:
        for arg in self.args:
            value = arg.evaluate(row)
            if value is not None:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Case:
    """The value of the first branch whose condition is true; else `default` (or null)."""

    branches: tuple[tuple[Condition, Expr], ...]
    default: Expr | None = None

    def evaluate(self, row: Row) -> Any:
        for condition, value in self.branches:
            if condition.holds(row) is True:
                return value.evaluate(row)
        return None if self.default is None else self.default.evaluate(row)


Expr: TypeAlias = Col | Lit | Agg | Arith | Coalesce | Case

CompareName = Literal["eq", "ne", "gt", "gte", "lt", "lte"]


@dataclass(frozen=True, slots=True)
class Cmp:
    """`left <op> right`; unknown when either is null."""

    op: CompareName
    left: Expr
    right: Expr

    def holds(self, row: Row) -> Truth:
        left = _exact(self.left.evaluate(row))
        right = _exact(self.right.evaluate(row))
        if left is None or right is None:
            return None
        if self.op == "eq":
            return bool(left == right)
        if self.op == "ne":
            return bool(left != right)
        if self.op == "gt":
            return bool(left > right)
        if self.op == "gte":
            return bool(left >= right)
        if self.op == "lt":
            return bool(left < right)
        return bool(left <= right)


@dataclass(frozen=True, slots=True)
class In:
    """`expr IN (values)`; unknown when `expr` is null."""

    expr: Expr
    values: tuple[Any, ...]

    def holds(self, row: Row) -> Truth:
        value = _exact(self.expr.evaluate(row))
        return None if value is None else value in self.values


@dataclass(frozen=True, slots=True)
class IsNull:
    """`expr IS NULL` (or `IS NOT NULL`): never unknown."""

    expr: Expr
    null: bool = True

    def holds(self, row: Row) -> Truth:
        return (self.expr.evaluate(row) is None) == self.null


def _kleene(terms: tuple[Condition, ...], row: Row, settles: bool) -> Truth:
    """AND (`settles=False`) or OR (`settles=True`) in three-valued logic, as SQL has it:
    one term equal to `settles` decides; otherwise an unknown term makes it unknown."""
    result: Truth = not settles
    for term in terms:
        value = term.holds(row)
        if value is settles:
            return settles
        if value is None:
            result = None
    return result


@dataclass(frozen=True, slots=True)
class All:
    terms: tuple[Condition, ...]

    def holds(self, row: Row) -> Truth:
        return _kleene(self.terms, row, settles=False)


@dataclass(frozen=True, slots=True)
class Any_:
    terms: tuple[Condition, ...]

    def holds(self, row: Row) -> Truth:
        return _kleene(self.terms, row, settles=True)


@dataclass(frozen=True, slots=True)
class Not:
    term: Condition

    def holds(self, row: Row) -> Truth:
        value = self.term.holds(row)
        return None if value is None else not value


Condition: TypeAlias = Cmp | In | IsNull | All | Any_ | Not


def aggregates(expr: Expr | Condition) -> Sequence[Agg]:
    """Every aggregate an expression (or condition) reads, outermost first."""
    found: list[Agg] = []

    def visit(node: Expr | Condition | None) -> None:
        match node:
            case Agg():
                found.append(node)
            case Arith(args=args) | Coalesce(args=args):
                for arg in args:
                    visit(arg)
            case Case(branches=branches, default=default):
                for condition, value in branches:
                    visit(condition)
                    visit(value)
                visit(default)
            case Cmp(left=left, right=right):
                visit(left)
                visit(right)
            case In(expr=inner) | IsNull(expr=inner):
                visit(inner)
            case All(terms=terms) | Any_(terms=terms):
                for term in terms:
                    visit(term)
            case Not(term=term):
                visit(term)
            case _:
                pass

    visit(expr)
    return found
