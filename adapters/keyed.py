"""What REST and SOAP sources share: equality filters as request parameters, and lookups
by key sent to the back end's own `get` call instead of a filtered list.

A subclass names its filters (`{column: {<name_field>: ..., multiple: bool}}`), says
whether it has a `get` call, and supplies the three ways it reads: `_get` (one record by
key), `_list_page` and `_list_stream` (through the list call). `page`, `one` and `stream`
here choose between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from adapters.base import (
    BackendError,
    Compare,
    Page,
    Plan,
    Predicate,
    SourceSpecError,
    equalities,
    key_lookup,
)

Record = dict[str, Any]


class KeyedSource:
    """A source whose API filters by equality on named parameters and gets one by key."""

    columns = None  # an HTTP API cannot be asked for its fields: known when records arrive
    key_column: str

    def __init__(
        self, backend: str, key_column: Any, filters: Any, *, name: str, has_get: bool
    ) -> None:
        """`name` is what the API calls a filter's parameter (`param`, `element`)."""
        self.backend = backend
        if not isinstance(key_column, str):
            raise SourceSpecError("source.key", "name the field that identifies a record")
        self.key_column = key_column
        self.filters: dict[str, Mapping[str, Any]] = dict(filters or {})
        self._names: dict[str, str] = {}
        for column, spec in self.filters.items():
            if not isinstance(spec, Mapping) or not isinstance(spec.get(name), str):
                raise SourceSpecError(f"source.list.filters.{column}", f"give its {name}")
            self._names[column] = spec[name]
        #: Parameter names that take several values (the others one value only).
        self.multiple = frozenset(
            self._names[c] for c, spec in self.filters.items() if spec.get("multiple")
        )
        self._has_get = has_get

    # What the API can take.

    def can_push(self, column: str, op: str) -> bool:
        return op == "eq" and column in self.filters

    def accepts(self, predicate: Predicate) -> bool:
        """Equality on filterable fields; several values only where the API takes a list."""
        return self._by_key(predicate) or self._params(predicate) is not None

    def _by_key(self, predicate: Predicate) -> bool:
        """A lookup by the record's key, which the API answers with its `get` call."""
        return self._has_get and key_lookup(predicate, self.key_column) is not None

    def _params(self, predicate: Predicate) -> dict[str, list[Any]] | None:
        """{parameter: values} for a filter the API takes; None for any other."""
        wanted = equalities(predicate)
        if wanted is None:
            return None
        params: dict[str, list[Any]] = {}
        for column, values in wanted.items():
            name = self._names.get(column)
            if name is None or (len(values) > 1 and name not in self.multiple):
                return None
            params[name] = values
        return params

    def _update_key(self, where: Predicate, configured: bool) -> Any:
        """The key of the one record an update names (updates go by key only)."""
        if not configured or not (isinstance(where, Compare) and where.column == self.key_column):
            raise BackendError(f"back end {self.backend!r}: updates are not configured")
        return where.value

    # Reading: a key lookup goes to `_get`, anything else to the list call.

    async def _get(self, key: Any) -> Record | None:
        raise NotImplementedError

    async def _list_page(self, plan: Plan) -> Page:
        raise NotImplementedError

    def _list_stream(self, plan: Plan) -> AsyncIterator[list[Record]]:
        raise NotImplementedError

    async def page(self, plan: Plan) -> Page:
        if not self._by_key(plan.where):
            return await self._list_page(plan)
        found = await self.one(plan.where)
        records = [found] if found is not None else []
        window = records[plan.offset :]
        return Page(window if plan.limit is None else window[: plan.limit], len(records))

    async def one(self, where: Predicate) -> Record | None:
        if self._by_key(where):
            assert isinstance(where, Compare)
            return await self._get(where.value)
        found = await self.page(Plan(where=where, limit=1))
        return found.records[0] if found.records else None

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[Record]]:
        if self._by_key(plan.where):
            found = await self.one(plan.where)
            if found is not None:
                yield [found]
            return
        async for records in self._list_stream(plan):
            yield records
