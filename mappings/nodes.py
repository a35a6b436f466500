"""The typed tree a mapping compiles to: one node per value, callable as `(record, base)`.

Each node computes its TMF value from a back-end record and, when the record does not fit,
raises `RecordMappingError` naming the attribute and the column. The code generator
(fastpath.py) reads the same nodes to write one straight-line function per mapping and
calls the tree only when that function fails, so the tree is the reference behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
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
    parses them, filled in order. `transform` (if any) turns the built text into the TMF
    value (`upper`, a chain); filters on such a value are the gateway's (reverse_paths).
    """

    path: str
    pieces: tuple[tuple[str, str | None], ...]
    at: str = ""
    transform: Transform | None = None

    def __call__(self, record: Record, base: str) -> Any:
        text = self.text(record, base)
        if text is None or self.transform is None:
            return text
        try:
            return self.transform.to_tmf(text)
        except _BAD_VALUE as exc:
            raise self._error(f"template gave {text!r}: {exc}") from None

    def text(self, record: Record, base: str) -> str | None:
        """The template's text, before any transform."""
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
    """The sum of several columns through a transform.

    A null term (an absent optional field is null) counts as `default`; with no default,
    the sum is None and the attribute is left out. Numbers given as text ("12.50", as
    SOAP and REST replies give them) are read as exact decimals; a value that is not a
    number is the record's error, naming the column and the mapping's line. `typed`: the
    column kinds were reflected and are all numeric, so the values are summed as they are.
    """

    path: str
    columns: tuple[str, ...]
    transform: Transform
    at: str = ""
    default: int | Decimal | None = None
    #: Every column is known to hold numbers (reflected kinds): no text to read.
    typed: bool = False

    def __call__(self, record: Record, base: str) -> Any:
        raws = []
        for column in self.columns:
            try:
                raw = record[column]
            except KeyError:
                raise self._missing(column) from None
            if raw is None:
                if self.default is None:
                    return None
                raw = self.default
            raws.append(raw)
        total: int | Decimal = 0
        if self.typed:  # numbers as the back end's column types say
            total = sum(raws)
        else:  # replies of unknown types: each term read as an exact number
            for column, raw in zip(self.columns, raws, strict=True):
                try:
                    total += number_of(raw)
                except ValueError as exc:
                    raise self._error(f"column {column}={raw!r}: {exc}") from None
        try:
            return self.transform.to_tmf(total)
        except _BAD_VALUE as exc:
            raise self._error(f"columns {list(self.columns)} sum to {total!r}: {exc}") from None


def number_of(raw: Any) -> int | Decimal:
    """A term of a sum as an exact number: ints as they are, the rest as decimals.

    Text is read as a decimal ("12.50", " 7 "), a float by its shortest repr; booleans,
    non-finite values and anything else are not numbers (ValueError).
    """
    if type(raw) is int or type(raw) is Decimal:
        number: int | Decimal = raw
    elif isinstance(raw, str | float) and not isinstance(raw, bool):
        try:
            number = Decimal(raw.strip() if isinstance(raw, str) else repr(raw))
        except InvalidOperation:
            raise ValueError("not a number") from None
    elif isinstance(raw, int | Decimal) and not isinstance(raw, bool):
        number = raw
    else:
        raise ValueError(f"not a number ({type(raw).__name__})")
    if isinstance(number, Decimal) and not number.is_finite():
        raise ValueError("not a finite number")
    return number


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
