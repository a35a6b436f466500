"""Reading derived values and conditions from a mapping spec (see adapters/expressions.py).

Values (an attribute's leaf, an operand):

    amount                                       # a column (a bare name)
    0, 1.5, true                                 # a number or boolean (a bare scalar)
    {const: sent}                                # any value, text included
    {sum: [NET, TAX]}                            # columns of the record, added
    {sum: {rows: items, column: amount, where: {type: TAX}}}     # over child rows
    {min: {rows: items, column: start_date}}     # also max; {count: {rows: payments}}
    {add: [a, b]}, {subtract: [total, paid]}, {multiply: [qty, price]}
    {coalesce: [{sum: ...}, 0]}                  # the first that is not null
    {case: [{when: CONDITION, then: VALUE}, ...], else: VALUE}
    {use: total}                                 # a value named under `values:`

Conditions (`when`, `where`):

    {status: DRAFT}                              # column = value; several keys: all hold
    {type: [TAX, USAGE]}                         # column in values
    {amount: {gt: 0}}                            # eq ne gt gte lt lte, in: [...]
    {due_date: null}, {due_date: {ne: null}}     # IS NULL, IS NOT NULL
    {gte: [VALUE, VALUE]}                        # compares two values (columns, aggregates)
    {all: [...]}, {any: [...]}, {not: CONDITION}

Every value has a kind (a column's, a literal's, an aggregate's), so that literals are
read as what the column holds, mismatched comparisons stop start-up, and the attribute's
transform is fitted to what the value is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, cast

from adapters.expressions import (
    Agg,
    AggregateName,
    All,
    Any_,
    Arith,
    ArithmeticName,
    Case,
    Cmp,
    Coalesce,
    Col,
    CompareName,
    Condition,
    Expr,
    In,
    IsNull,
    Lit,
    Not,
)
from adapters.kinds import KIND_NAMES, NUMERIC_KINDS, Kind
from mappings.errors import MappingSpecError
from mappings.loader import SpecMap

AGGREGATES: Final = frozenset({"min", "max", "count"})
ARITHMETIC: Final = frozenset({"add", "subtract", "multiply"})
#: Keys that make a leaf a derived value (`sum` too, when it is over child rows).
DERIVED_KEYS: Final = AGGREGATES | ARITHMETIC | {"coalesce", "case", "use"}
_VALUE_KEYS: Final = DERIVED_KEYS | {"column", "const", "sum"}
_COMPARE: Final = frozenset({"eq", "ne", "gt", "gte", "lt", "lte"})
_COLUMN_TESTS: Final = _COMPARE | {"in"}
_WIDEST: Final[tuple[Kind, ...]] = ("float", "decimal", "integer")
_SUMMABLE: Final = NUMERIC_KINDS | {"other"}

Fail = Callable[[str, int | None, str], MappingSpecError]
CheckColumn = Callable[[Any, str, int | None, str | None], str]
KindOf = Callable[[str, str | None], Kind | None]


def literal_kind(value: Any) -> Kind | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | Decimal):
        return "decimal"
    if isinstance(value, datetime):
        return "timestamptz" if value.tzinfo is not None else "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, str):
        return "text"
    return None


def as_kind(value: Any, kind: Kind | None) -> Any:
    """A literal as a column of `kind` holds it; ValueError when it cannot be one."""
    if value is None:
        return None
    if isinstance(value, float):
        value = Decimal(repr(value))
    if kind is None or kind == "other":
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{value!r} is not a boolean")
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a value of this {KIND_NAMES[kind]} column")
    try:
        if kind == "integer":
            number = Decimal(str(value))
            if number != number.to_integral_value():
                raise ValueError(f"{value!r} is not an integer")
            return int(number)
        if kind in ("decimal", "float"):
            return Decimal(str(value))
        if kind == "date" and not isinstance(value, datetime):
            return value if isinstance(value, date) else date.fromisoformat(str(value))
        if kind in ("datetime", "timestamptz"):
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
            if (moment.tzinfo is not None) != (kind == "timestamptz"):
                raise ValueError(
                    f"{value!r}: {KIND_NAMES[kind]} needs "
                    + ("an offset" if kind == "timestamptz" else "no offset")
                )
            return moment
        if kind == "uuid":
            return uuid.UUID(str(value))
        if kind == "text" and isinstance(value, str | int | Decimal):
            return str(value)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"{value!r} is not a value of this {KIND_NAMES[kind]} column") from exc
    raise ValueError(f"{value!r} is not a value of this {KIND_NAMES[kind]} column")


def comparable_kinds(left: Kind | None, right: Kind | None) -> bool:
    if left is None or right is None or left == right or "other" in (left, right):
        return True
    if left in NUMERIC_KINDS and right in NUMERIC_KINDS:
        return True
    return {left, right} <= {"text", "uuid"}


def common_kind(kinds: Collection[Kind | None]) -> Kind | None:
    """The kind of a value that is one of several (coalesce, case); ValueError if none."""
    known = {k for k in kinds if k is not None}
    if len(known) <= 1:
        return next(iter(known), None)
    if known <= NUMERIC_KINDS:
        return next(k for k in _WIDEST if k in known)
    names = ", ".join(KIND_NAMES[k] for k in sorted(known))
    raise ValueError(f"its values are of different kinds ({names})")


def known_values(expr: Expr) -> tuple[Any, ...] | None:
    """Every value an expression can give, when it is made of literals (else None)."""
    if isinstance(expr, Lit):
        return () if expr.value is None else (expr.value,)
    parts: list[Expr]
    if isinstance(expr, Case):
        parts = [value for _, value in expr.branches]
        if expr.default is not None:
            parts.append(expr.default)
    elif isinstance(expr, Coalesce):
        parts = list(expr.args)
    else:
        return None
    out: list[Any] = []
    for part in parts:
        values = known_values(part)
        if values is None:
            return None
        out.extend(values)
    return tuple(dict.fromkeys(out))


class ExpressionReader:
    """Reads values and conditions of one mapping, failing with its file and line."""

    def __init__(
        self,
        fail: Fail,
        check_column: CheckColumn,
        kind_of: KindOf,
        children: Collection[str] | None,
        named: SpecMap | None = None,
    ) -> None:
        self.fail = fail
        #: The mapping's `values:`, named values any value may `use`.
        self.named = named if named is not None else SpecMap()
        self._using: list[str] = []
        self.check_column = check_column
        self.kind_of = kind_of
        self.children = children
        #: Where each literal of the last leaf read is written (OAS errors name the branch).
        self.lines: dict[Any, int | None] = {}

    # -- values

    def leaf(self, node: SpecMap, place: str, scope: str | None) -> tuple[Expr, Kind | None]:
        """A derived attribute (`node` minus its `transform`) and its kind."""
        self.lines = {}
        keys = node.keys() & _VALUE_KEYS
        allowed = {"transform", "else"} if "case" in keys else {"transform"}
        extra = node.keys() - _VALUE_KEYS - allowed
        if len(keys) != 1 or extra:
            raise self.fail(
                place, node.line, "a derived value has exactly one of " + ", ".join(sorted(keys))
            )
        return self.value(node, place, node.line, scope)

    def value(
        self, node: Any, place: str, line: int | None, scope: str | None
    ) -> tuple[Expr, Kind | None]:
        if isinstance(node, str):
            return self.column(node, place, line, scope)
        if node is None or isinstance(node, bool | int | float | Decimal | date):
            literal = as_kind(node, None)
            return Lit(literal), literal_kind(literal)
        if not isinstance(node, SpecMap):
            raise self.fail(place, line, f"expected a value, not {node!r}")
        keys = node.keys() & _VALUE_KEYS
        if len(keys) != 1 or node.keys() - _VALUE_KEYS - {"else", "transform"}:
            raise self.fail(
                place,
                node.line or line,
                f"a value is a column, a number, or one of {', '.join(sorted(_VALUE_KEYS))}",
            )
        (key,) = keys
        at = node.line_of(key)
        arg = node[key]
        if key == "column":
            return self.column(arg, place, at, scope)
        if key == "const":
            literal = as_kind(arg, None)
            if literal is not None:
                self.lines.setdefault(literal, at)
            return Lit(literal), literal_kind(literal)
        if key == "sum" and isinstance(arg, list):
            return self.arithmetic("add", arg, place, at, scope)
        if key in AGGREGATES or key == "sum":
            return self.aggregate(cast(AggregateName, key), arg, place, at, scope)
        if key in ARITHMETIC:
            return self.arithmetic(cast(ArithmeticName, key), arg, place, at, scope)
        if key == "use":
            return self.use(arg, place, at, scope)
        if key == "coalesce":
            args = self.values(arg, place, at, scope, least=2)
            return Coalesce(tuple(e for e, _ in args)), self.common(args, place, at)
        return self.case(node, place, scope)

    def use(
        self, name: Any, place: str, line: int | None, scope: str | None
    ) -> tuple[Expr, Kind | None]:
        """A value named under `values:`, read where it is written (its errors name it)."""
        if not isinstance(name, str) or name not in self.named:
            known = ", ".join(self.named) or "none"
            raise self.fail(place, line, f"no value {name!r} under values: (known: {known})")
        if name in self._using:
            raise self.fail(place, line, f"value {name!r} uses itself")
        self._using.append(name)
        try:
            return self.value(self.named[name], f"values.{name}", self.named.line_of(name), scope)
        finally:
            self._using.pop()

    def column(
        self, name: Any, place: str, line: int | None, scope: str | None
    ) -> tuple[Expr, Kind | None]:
        name = self.check_column(name, place, line, scope)
        return Col(name), self.kind_of(name, scope)

    def values(
        self, arg: Any, place: str, line: int | None, scope: str | None, least: int
    ) -> list[tuple[Expr, Kind | None]]:
        if not isinstance(arg, list) or len(arg) < least:
            raise self.fail(place, line, f"takes a list of at least {least} values")
        return [self.value(item, place, _line(item, line), scope) for item in arg]

    def common(
        self, parts: list[tuple[Expr, Kind | None]], place: str, line: int | None
    ) -> Kind | None:
        try:
            return common_kind([kind for _, kind in parts])
        except ValueError as exc:
            raise self.fail(place, line, str(exc)) from None

    def arithmetic(
        self, op: ArithmeticName, arg: Any, place: str, line: int | None, scope: str | None
    ) -> tuple[Expr, Kind | None]:
        parts = self.values(arg, place, line, scope, least=1 if op == "add" else 2)
        if op == "subtract" and len(parts) != 2:
            raise self.fail(place, line, "subtract takes [value, value to take from it]")
        for expr, kind in parts:
            if kind is not None and kind not in NUMERIC_KINDS and kind != "other":
                raise self.fail(place, line, f"{op} of a {KIND_NAMES[kind]} value ({expr})")
        kinds = {kind for _, kind in parts}
        kind = None if None in kinds else next((k for k in _WIDEST if k in kinds), None)
        return Arith(op, tuple(e for e, _ in parts)), kind

    def aggregate(
        self, fn: AggregateName, arg: Any, place: str, line: int | None, scope: str | None
    ) -> tuple[Expr, Kind | None]:
        shape = f"{fn} takes {{rows: CHILD ROWS, column: COLUMN, where: CONDITION}}"
        if not isinstance(arg, SpecMap) or arg.keys() - {"rows", "column", "where"}:
            raise self.fail(place, line, shape)
        if scope is not None:
            raise self.fail(place, line, "an aggregate over child rows inside child rows")
        rows = arg.get("rows")
        if not isinstance(rows, str) or (self.children is not None and rows not in self.children):
            raise self.fail(place, arg.line_of("rows"), f"unknown child rows {rows!r} in source")
        column = arg.get("column")
        if column is None and fn != "count":
            raise self.fail(place, arg.line, shape)
        kind: Kind | None = "integer"
        if column is not None:
            column = self.check_column(column, place, arg.line_of("column"), rows)
            column_kind = self.kind_of(column, rows)
            if fn == "sum" and column_kind is not None and column_kind not in _SUMMABLE:
                raise self.fail(
                    place, arg.line_of("column"), f"sum of a {KIND_NAMES[column_kind]} column"
                )
            if fn != "count":
                kind = column_kind
        where = None
        if "where" in arg:
            where = self.condition(arg["where"], place, arg.line_of("where"), rows)
        return Agg(fn, rows, column, where), kind

    def case(self, node: SpecMap, place: str, scope: str | None) -> tuple[Expr, Kind | None]:
        branches = node["case"]
        line = node.line_of("case")
        shape = "case takes a list of {when: CONDITION, then: VALUE}"
        if not isinstance(branches, list) or not branches:
            raise self.fail(place, line, shape)
        parts: list[tuple[Condition, Expr]] = []
        kinds: list[tuple[Expr, Kind | None]] = []
        for branch in branches:
            if not isinstance(branch, SpecMap) or set(branch) != {"when", "then"}:
                raise self.fail(place, _line(branch, line), shape)
            condition = self.condition(branch["when"], place, branch.line_of("when"), scope)
            value = self.value(branch["then"], place, branch.line_of("then"), scope)
            parts.append((condition, value[0]))
            kinds.append(value)
        default = None
        if "else" in node:
            default = self.value(node["else"], place, node.line_of("else"), scope)
            kinds.append(default)
        kind = self.common(kinds, place, line)
        return Case(tuple(parts), default[0] if default else None), kind

    # -- conditions

    def condition(self, node: Any, place: str, line: int | None, scope: str | None) -> Condition:
        if not isinstance(node, SpecMap) or not node:
            raise self.fail(
                place, line, "a condition is a mapping ({column: value}, {gte: [a, b]}, ...)"
            )
        terms = [self.term(key, node[key], place, node.line_of(key), scope) for key in node]
        return terms[0] if len(terms) == 1 else All(tuple(terms))

    def term(
        self, key: str, arg: Any, place: str, line: int | None, scope: str | None
    ) -> Condition:
        if key in ("all", "any"):
            if not isinstance(arg, list) or not arg:
                raise self.fail(place, line, f"{key} takes a list of conditions")
            terms = tuple(self.condition(c, place, _line(c, line), scope) for c in arg)
            return All(terms) if key == "all" else Any_(terms)
        if key == "not":
            return Not(self.condition(arg, place, line, scope))
        if key in _COMPARE:
            if not isinstance(arg, list) or len(arg) != 2:
                raise self.fail(place, line, f"{key} takes [value, value]")
            (left, left_kind), (right, right_kind) = (
                self.value(v, place, _line(v, line), scope) for v in arg
            )
            if not comparable_kinds(left_kind, right_kind):
                raise self.fail(
                    place,
                    line,
                    f"compares a {KIND_NAMES[left_kind or 'other']} value"
                    f" with a {KIND_NAMES[right_kind or 'other']} value",
                )
            try:  # a literal is read as what the other side holds (a UUID, a date, ...)
                if isinstance(left, Lit):
                    left = Lit(as_kind(left.value, right_kind))
                if isinstance(right, Lit):
                    right = Lit(as_kind(right.value, left_kind))
            except ValueError as exc:
                raise self.fail(place, line, str(exc)) from None
            return Cmp(cast(CompareName, key), left, right)
        column = self.check_column(key, place, line, scope)
        kind = self.kind_of(column, scope)
        tests = arg if isinstance(arg, SpecMap) else SpecMap(eq=arg)
        if isinstance(arg, list):
            tests = SpecMap({"in": arg})
        if not tests or set(tests) - _COLUMN_TESTS:
            raise self.fail(place, line, f"a column test takes {', '.join(sorted(_COLUMN_TESTS))}")
        out = [self.test(Col(column), kind, op, tests[op], place, line) for op in tests]
        return out[0] if len(out) == 1 else All(tuple(out))

    def test(
        self, column: Col, kind: Kind | None, op: str, arg: Any, place: str, line: int | None
    ) -> Condition:
        try:
            if op == "in":
                if not isinstance(arg, list) or not arg:
                    raise ValueError("in takes a list of values")
                return In(column, tuple(as_kind(v, kind) for v in arg))
            if arg is None:
                if op not in ("eq", "ne"):
                    raise ValueError(f"{op} null is never true (use eq or ne)")
                return IsNull(column, op == "eq")
            return Cmp(cast(CompareName, op), column, Lit(as_kind(arg, kind)))
        except ValueError as exc:
            raise self.fail(place, line, f"{column.name}: {exc}") from None


def _line(node: Any, default: int | None) -> int | None:
    return node.line if isinstance(node, SpecMap) and node.line else default
