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

from mappings.errors import RecordMappingError
from mappings.transforms import Transform

Record: TypeAlias = Mapping[str, Any]
#: Errors a transform raises for a value it cannot convert (bad date, unknown code, ...).
_BAD_VALUE = (ValueError, TypeError, ArithmeticError)


@dataclass(frozen=True, slots=True)
class ColumnNode:
    """A column's value through its transform (null stays null)."""

    path: str
    column: str
    transform: Transform
    #: `file:line` of the value in the mapping, for the error a misfit record raises.
    where: str = ""

    def __call__(self, record: Record, base: str) -> Any:
        try:
            raw = record[self.column]
        except KeyError:
            raise RecordMappingError(
                self.path, f"column {self.column} missing from the record", self.where
            ) from None
        if raw is None:
            return raw
        try:
            return self.transform.to_tmf(raw)
        except _BAD_VALUE as exc:
            raise RecordMappingError(
                self.path, f"column {self.column}={raw!r}: {exc}", self.where
            ) from None


@dataclass(frozen=True, slots=True)
class ConstNode:
    """A value written in the mapping; None leaves the attribute out."""

    value: Any

    def __call__(self, record: Record, base: str) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class TemplateNode:
    """Text with columns (and `{base}`) filled in; None when a column read is null.

    `pieces` are (literal text, then a column name, "base" or None), as `string.Formatter`
    parses them, filled in order.
    """

    path: str
    pieces: tuple[tuple[str, str | None], ...]
    where: str = ""

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
                raise RecordMappingError(
                    self.path, f"column {name} missing from the record", self.where
                ) from None
            if value is None:
                return None
            out.append(str(value))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class SumNode:
    """The sum of several columns through a transform; None when any of them is null."""

    path: str
    columns: tuple[str, ...]
    transform: Transform
    where: str = ""

    def __call__(self, record: Record, base: str) -> Any:
        try:
            raws = [record[c] for c in self.columns]
        except KeyError as exc:
            raise RecordMappingError(
                self.path, f"column {exc.args[0]} missing from the record", self.where
            ) from None
        if any(r is None for r in raws):
            return None
        try:
            return self.transform.to_tmf(sum(raws))
        except _BAD_VALUE as exc:
            raise RecordMappingError(
                self.path, f"columns {list(self.columns)}={raws!r}: {exc}", self.where
            ) from None


@dataclass(frozen=True, slots=True)
class ObjectNode:
    """A nested object of the non-null values of `items`; None when column `when` is null."""

    items: tuple[tuple[str, Node], ...]
    when: str | None

    def __call__(self, record: Record, base: str) -> dict[str, Any] | None:
        if self.when is not None and record.get(self.when) is None:
            return None
        return _fill({}, self.items, record, base)


@dataclass(frozen=True, slots=True)
class EachNode:
    """An array with one `item` per row of the record's child rows `child`."""

    path: str
    child: str
    item: Node
    where: str = ""

    def __call__(self, record: Record, base: str) -> list[Any]:
        rows = record.get(self.child)
        if rows is None:
            raise RecordMappingError(
                self.path, f"child rows {self.child!r} missing from the record", self.where
            )
        return [self.item(row, base) for row in rows]


@dataclass(frozen=True, slots=True)
class ListNode:
    """An array of the non-null values of `elements` (columns of one record); None if empty."""

    elements: tuple[Node, ...]

    def __call__(self, record: Record, base: str) -> list[Any] | None:
        out = [v for v in (element(record, base) for element in self.elements) if v is not None]
        return out or None


Node: TypeAlias = ColumnNode | ConstNode | TemplateNode | SumNode | ObjectNode | EachNode | ListNode


@dataclass(frozen=True, slots=True)
class ResourceNode:
    """A whole TMF resource: `id`, then `href` and `@type` from the gateway, then `items`."""

    resource: str
    collection: str
    ident: Node
    items: tuple[tuple[str, Node], ...]
    where: str = ""

    def __call__(self, record: Record, base: str) -> dict[str, Any]:
        ident = self.ident(record, base)
        if ident is None:
            raise RecordMappingError("id", "the back-end record has no id", self.where)
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
