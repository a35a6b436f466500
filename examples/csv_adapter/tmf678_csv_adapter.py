"""An example adapter plugin: bills kept in a CSV file (read-only).

A new kind of back end is one class with the adapter contract of `adapters/base.py`,
registered under the entry point group `tmf678_gateway.adapters` (see pyproject.toml
beside this file). Its `Options` model says what its config block may hold (checked at
start-up, with the YAML file and line of a mistake); the gateway builds it as
`CsvAdapter(name, options)`.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from adapters.base import (
    AllOf,
    AnyOf,
    BackendError,
    BackendOptions,
    Compare,
    IsNull,
    Page,
    Plan,
    Predicate,
    SourceColumns,
    SourceSpecError,
)


class CsvOptions(BackendOptions):
    kind: Literal["csv"] = "csv"
    directory: Path


class CsvAdapter:
    Options: ClassVar[type[CsvOptions]] = CsvOptions

    def __init__(self, name: str, options: CsvOptions) -> None:
        self.name = name
        self.directory = options.directory

    async def open(self) -> None:
        if not self.directory.is_dir():
            raise BackendError(f"back end {self.name!r}: no directory {self.directory}")

    async def close(self) -> None:
        pass

    async def bind(self, spec: Mapping[str, Any]) -> CsvSource:
        path = self.directory / str(spec.get("file", ""))
        if not path.is_file():
            raise SourceSpecError("source.file", f"no CSV file {path}")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return CsvSource(rows, str(spec.get("key", "id")))

    def action(self, spec: Mapping[str, Any]) -> Any:
        raise SourceSpecError("action", "the CSV back end is read-only")


class CsvSource:
    def __init__(self, rows: list[dict[str, str]], key: str) -> None:
        self.rows = rows
        self.key_column = key
        self.columns = SourceColumns(record=frozenset(rows[0]) if rows else frozenset())

    def can_push(self, column: str, op: str) -> bool:
        return op in ("eq", "ne")  # evaluated here, in the adapter

    def can_sort(self, column: str) -> bool:
        return False

    def _matches(self, row: dict[str, str], predicate: Predicate) -> bool:
        if isinstance(predicate, Compare):
            equal = row.get(predicate.column) == str(predicate.value)
            return equal if predicate.op == "eq" else not equal
        if isinstance(predicate, IsNull):
            return row.get(predicate.column) in (None, "")
        if isinstance(predicate, AnyOf):
            return any(self._matches(row, t) for t in predicate.terms)
        if isinstance(predicate, AllOf):
            return all(self._matches(row, t) for t in predicate.terms)
        raise TypeError(predicate)

    async def page(self, plan: Plan) -> Page:
        found = [r for r in self.rows if self._matches(r, plan.where)]
        end = None if plan.limit is None else plan.offset + plan.limit
        return Page(found[plan.offset : end], len(found))

    async def one(self, where: Predicate) -> dict[str, str] | None:
        return next((r for r in self.rows if self._matches(r, where)), None)

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[dict[str, str]]]:
        found = [r for r in self.rows if self._matches(r, plan.where)]
        for start in range(0, len(found), batch_size):
            yield found[start : start + batch_size]

    async def update(self, where: Predicate, values: Any, expected: Any) -> int:
        raise BackendError("the CSV back end is read-only")
