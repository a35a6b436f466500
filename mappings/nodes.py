"""The typed tree a mapping compiles to: one node per value, callable as `(record, base)`.

Each node computes its TMF value from a back-end record and, when the record does not fit,
raises `RecordMappingError` naming the attribute and the column. The code generator
(fastpath.py) reads the same nodes to write one straight-line function per mapping and
calls the tree only when that function fails, so the tree is the reference behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from adapters.expressions import Condition, Expr, MissingData, Truth
from mappings.errors import RecordMappingError
from mappings.transforms import Transform

Record: TypeAlias = Mapping[str, Any]
#: Errors a transform raises for a value it cannot convert (bad date, unknown code, ...).
_BAD_VALUE = (ValueError, TypeError, ArithmeticError)


class _Located:
    """A node that names its attribute (`path`) and its place in the mapping (`at`) in errors."""

    __slots__ = ()
    path: str
    #: `file:line` of the value in the mapping, for the error a misfit record raises.
    at: str

    def _error(self, message: str) -> RecordMappingError:
        return RecordMappingError(self.path, message, self.at)

    def _missing(self, column: str) -> RecordMappingError:
        return self._error(f"column {column} missing from the record")


@dataclass(frozen=True, slots=True)
class ColumnNode(_Located):
    """A column's value through its transform (null stays null)."""

    path: str
    column: str
    transform: Transform
    at: str = ""

    def __call__(self, record: Record, base: str) -> Any:
        try:
            raw = record[self.column]
        except KeyError:
            raise self._missing(self.column) from None
        try:
            return None if raw is None else self.transform.to_tmf(raw)
        except _BAD_VALUE as exc:
            raise self._error(f"column {self.column}={raw!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ConstNode:
    """A value written in the mapping; None leaves the attribute out."""

    value: Any

    def __call__(self, record: Record, base: str) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class TemplateNode(_Located):
    """Text with columns (and `{base}`) filled in; None when a column read is null.

    `pieces` are (literal text, then a column name, "base" or None), as `string.Formatter`
    parses them, filled in order.
    """

    path: str
    pieces: tuple[tuple[str, str | None], ...]
    at: str = ""

    def __call__(self, record: Record, base: str) -> str | None:
        out = []
        for literal, name in self.pieces:
            out.append(literal)
            if name is None:
                continue
            if name == "base":
                out.append(base)
                continue
            try:
                value = record[name]
            except KeyError:
                raise self._missing(name) from None
            if value is None:
                return None
            out.append(str(value))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class SumNode(_Located):
    """The sum of several columns through a transform; None when any of them is null."""

    path: str
    columns: tuple[str, ...]
    transform: Transform
    at: str = ""

    def __call__(self, record: Record, base: str) -> Any:
        try:
            raws = [record[c] for c in self.columns]
        except KeyError as exc:
            raise self._missing(exc.args[0]) from None
        if any(r is None for r in raws):
            return None
        try:
            return self.transform.to_tmf(sum(raws))
        except _BAD_VALUE as exc:
            raise self._error(f"columns {list(self.columns)}={raws!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class DerivedNode(_Located):
    """A value computed from the record (and its child rows), through a transform.

    `values`: every value the expression can give, when it is made of literals.
    """

    path: str
    expr: Expr
    transform: Transform
    values: tuple[Any, ...] | None = None
    at: str = ""

    def __call__(self, record: Record, base: str) -> Any:
        try:
            raw = self.expr.evaluate(record)
        except MissingData as exc:
            raise self._error(str(exc)) from None
        except _BAD_VALUE as exc:
            raise self._error(f"cannot compute it: {exc}") from None
        if raw is None:
            return None
        try:
            return self.transform.to_tmf(raw)
        except _BAD_VALUE as exc:
            raise self._error(f"computed {raw!r}: {exc}") from None


def holds(condition: Condition, row: Record, path: str, at: str) -> Truth:
    """A condition on a row; a row that cannot be judged is the mapping's error."""
    try:
        return condition.holds(row)
    except MissingData as exc:
        raise RecordMappingError(path, str(exc), at) from None
    except _BAD_VALUE as exc:
        raise RecordMappingError(path, f"cannot judge the condition: {exc}", at) from None


@dataclass(frozen=True, slots=True)
class ObjectNode(_Located):
    """A nested object of the non-null values of `items`.

    None when column `when` is null, or when `condition` does not hold.
    """

    items: tuple[tuple[str, Node], ...]
    when: str | None
    condition: Condition | None = None
    path: str = ""
    at: str = ""

    def __call__(self, record: Record, base: str) -> dict[str, Any] | None:
        if self.when is not None and record.get(self.when) is None:
            return None
        if (
            self.condition is not None
            and holds(self.condition, record, self.path, self.at) is not True
        ):
            return None
        return _fill({}, self.items, record, base)


@dataclass(frozen=True, slots=True)
class EachNode(_Located):
    """An array with one `item` per row of the record's child rows (that meet `where`).

    `child` is the name the adapter gives those rows in the record.
    """

    path: str
    child: str
    item: Node
    at: str = ""
    where: Condition | None = None

    def __call__(self, record: Record, base: str) -> list[Any]:
        rows = record.get(self.child)
        if rows is None:
            raise self._error(f"child rows {self.child!r} missing from the record")
        if self.where is None:
            return [self.item(row, base) for row in rows]
        where = self.where
        return [
            self.item(row, base) for row in rows if holds(where, row, self.path, self.at) is True
        ]


@dataclass(frozen=True, slots=True)
class ListNode:
    """An array of the non-null values of `elements` (columns of one record); None if empty."""

    elements: tuple[Node, ...]

    def __call__(self, record: Record, base: str) -> list[Any] | None:
        out = [v for v in (element(record, base) for element in self.elements) if v is not None]
        return out or None


Node: TypeAlias = (
    ColumnNode | ConstNode | TemplateNode | SumNode | DerivedNode | ObjectNode | EachNode | ListNode
)


@dataclass(frozen=True, slots=True)
class ResourceNode:
    """A whole TMF resource: `id`, then `href` and `@type` from the gateway, then `items`."""

    resource: str
    collection: str
    ident: Node
    items: tuple[tuple[str, Node], ...]
    at: str = ""

    def __call__(self, record: Record, base: str) -> dict[str, Any]:
        ident = self.ident(record, base)
        if ident is None:
            raise RecordMappingError("id", "the back-end record has no id", self.at)
        out: dict[str, Any] = {"id": ident, "href": f"{base}/{self.collection}/{ident}"}
        out["@type"] = self.resource
        return _fill(out, self.items, record, base)


def _fill(
    out: dict[str, Any], items: tuple[tuple[str, Node], ...], record: Record, base: str
) -> dict[str, Any]:
    for key, node in items:
        value = node(record, base)
        if value is not None:
            out[key] = value
    return out
