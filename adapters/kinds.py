"""What kind of value a back-end column holds, as far as a mapping needs to know.

A SQL back end reflects its tables' types at start-up; the mapping compiler reads them
here (in back-end terms, free of any driver's type classes) so that a transform that
cannot read a column (a text date format on a DATE column) stops start-up, and so that
native values (dates, decimals, UUIDs) are served, compared and pushed down as what
they are. Back ends that cannot say (REST, SOAP) give no kinds: values are taken as
they come.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from adapters.base import SourceColumns

Kind: TypeAlias = Literal[
    "text",
    "integer",
    "decimal",
    "float",
    "boolean",
    "date",
    "datetime",
    "timestamptz",
    "uuid",
    "binary",
    "other",
]

#: How a start-up error names each kind (SQL's words, which the integrator knows).
KIND_NAMES: Final[Mapping[str, str]] = {
    "text": "text (CHAR/VARCHAR)",
    "integer": "INTEGER",
    "decimal": "DECIMAL/NUMERIC",
    "float": "FLOAT/REAL",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "DATETIME/TIMESTAMP (no time zone)",
    "timestamptz": "TIMESTAMP WITH TIME ZONE",
    "uuid": "UUID",
    "binary": "binary (BLOB/BYTEA)",
    "other": "column of another type",
}

NUMERIC_KINDS: Final = frozenset({"integer", "decimal", "float"})
TEMPORAL_KINDS: Final = frozenset({"date", "datetime", "timestamptz"})


@dataclass(slots=True)
class TypedColumns(SourceColumns):
    """A source's columns with the kind of each (children's too)."""

    kinds: Mapping[str, Kind] = field(default_factory=dict)
    child_kinds: Mapping[str, Mapping[str, Kind]] = field(default_factory=dict)
    #: Whether sums and differences of DECIMAL columns are exact in the back end
    #: (SQLite keeps them as binary floating point: not).
    exact_decimals: bool = True

    def kind(self, column: str, child: str | None = None) -> Kind | None:
        kinds = self.kinds if child is None else self.child_kinds.get(child, {})
        return kinds.get(column)


def kind_of(columns: SourceColumns | None, column: str, child: str | None = None) -> Kind | None:
    """The kind of a column, or None when the back end does not say."""
    if isinstance(columns, TypedColumns):
        return columns.kind(column, child)
    return None
