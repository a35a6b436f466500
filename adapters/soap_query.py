"""SOAP back ends read through one generic `query` operation in a query language.

Subscription-billing platforms answer reads with `query(queryString)`: a small SQL-like
language (`select Id, Amount from Invoice where Status = 'Posted'`), a batch of records,
the number of all matches (`size`), `done`, and a `queryLocator` that `queryMore` takes
for the next batch. Here TMF filters and sorts become that language where the mapping
declares a field can take them (the values already in the back end's terms, through
the attribute's transform); the gateway applies the rest itself. Offsets are reached by
walking the cursor, within `max_walk` records.

    source:
      key: Id
      query:
        object: Invoice                       # the WSDL type (xsi:type) of the records
        fields: [Id, AccountId, Amount, Status, InvoiceDate]   # checked against the WSDL
        filters:                              # field: operators it takes, and its literal
          Status: {ops: [eq, ne]}
          InvoiceDate: {ops: [eq, ne, gt, gte, lt, lte]}
          Amount: {ops: [gt, gte, lt, lte], type: number}
        sort: [InvoiceDate, InvoiceNumber]    # fields the language may order by
        max_walk: 5000
      get: {query: "select {fields} from Invoice where Id = '{key}'"}
      lookups:                                # fields of a related object, cached
        Account: {by: AccountId, fields: [Currency], cache_seconds: 300}
      update: {type: Invoice, check_expected: true}

A field absent from a record (the API leaves out nulls) is None in it, so the attribute
is left out of the resource. A looked-up field is named `<Object>.<field>`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from lxml import etree

from adapters.base import (
    MATCH_ALL,
    MATCH_NONE,
    AllOf,
    AnyOf,
    BackendError,
    BackendReplyError,
    Compare,
    IsNull,
    Page,
    Plan,
    Predicate,
    SortKey,
    SourceColumns,
    SourceSpecError,
    key_lookup,
)
from adapters.soap import _find, _text, fill_text, quoted_literal

if TYPE_CHECKING:
    from adapters.soap import SoapAdapter

Record = dict[str, Any]
OPERATORS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
#: Related ids per look-up query (one `or` term each).
LOOKUP_CHUNK = 50


class WalkTooDeep(BackendError):
    """An offset deeper than the cursor may be walked: the caller's request, a 400."""

    def __init__(self, backend: str, offset: int, budget: int) -> None:
        self.summary = (
            f"offset {offset} is beyond the {budget} records this back end's cursor may be"
            " walked; narrow the list with filters"
        )
        super().__init__(f"back end {backend!r}: {self.summary}", status=400)


@dataclass(frozen=True, slots=True)
class FieldFilter:
    ops: frozenset[str]
    number: bool


@dataclass(frozen=True, slots=True)
class Lookup:
    object: str
    by: str
    fields: tuple[str, ...]
    cache_seconds: float


@dataclass(slots=True)
class Batch:
    records: list[Record]
    size: int
    done: bool
    locator: str | None


class SoapQuerySource:
    """One object of a query-language SOAP API as a gateway source."""

    def __init__(self, adapter: SoapAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        self.backend = adapter.name
        key = spec.get("key")
        if not isinstance(key, str) or not key:
            raise SourceSpecError("source.key", "name the field that identifies a record")
        self.key_column = key
        query = spec.get("query") or {}
        self.object = _name(query.get("object"), "source.query.object")
        fields = query.get("fields")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise SourceSpecError("source.query.fields", "list the fields to select")
        self.fields: tuple[str, ...] = tuple(dict.fromkeys([key, *fields]))
        self.operation = adapter._operation(query.get("operation", "query"), "source.query")
        self.more = adapter._operation(query.get("more", "queryMore"), "source.query.more")
        self.locator_at = str(query.get("locator", "queryLocator"))
        self.records_at = str(query.get("records", "records"))
        self.max_walk = int(query.get("max_walk", 5000))
        self.filters = {
            column: _field_filter(column, value)
            for column, value in (query.get("filters") or {}).items()
        }
        self.sortable = frozenset(query.get("sort") or ())
        known = adapter.type_fields(self.object)
        for place, names in (
            ("source.query.fields", self.fields),
            ("source.query.filters", tuple(self.filters)),
            ("source.query.sort", tuple(self.sortable)),
        ):
            missing = [n for n in names if known is not None and n not in known]
            if missing:
                raise SourceSpecError(
                    place, f"type {self.object!r} has no field {missing[0]!r} in the WSDL"
                )
        for name in (*self.filters, *self.sortable):
            if name not in self.fields:
                raise SourceSpecError(
                    "source.query", f"{name!r} is filtered or sorted on: select it"
                )
        get = spec.get("get") or {}
        self.get_query = str(get["query"]) if get.get("query") else None
        self.lookups = tuple(
            _lookup(adapter, name, value) for name, value in (spec.get("lookups") or {}).items()
        )
        for lookup in self.lookups:
            if lookup.by not in self.fields:
                raise SourceSpecError(f"source.lookups.{lookup.object}", f"select {lookup.by!r}")
        self._cache: dict[tuple[str, str], tuple[float, Record]] = {}
        update = spec.get("update") or {}
        self.update_type = str(update["type"]) if update.get("type") else None
        self.update_operation = (
            adapter._operation(update.get("operation", "update"), "source.update")
            if self.update_type
            else None
        )
        self.check_expected = bool(update.get("check_expected", True))

    # What the language can take.

    @property
    def columns(self) -> SourceColumns:
        looked_up = {f"{lk.object}.{f}" for lk in self.lookups for f in lk.fields}
        return SourceColumns(record=frozenset({*self.fields, *looked_up}))

    def can_push(self, column: str, op: str) -> bool:
        found = self.filters.get(column)
        return found is not None and op in found.ops

    def accepts(self, predicate: Predicate) -> bool:
        if isinstance(predicate, Compare):
            return self.can_push(predicate.column, predicate.op) and _literal_ok(
                self.filters[predicate.column], predicate.value
            )
        if isinstance(predicate, IsNull):
            return predicate.column in self.filters
        return all(self.accepts(term) for term in predicate.terms)

    def can_sort(self, column: str) -> bool:
        return column in self.sortable

    def where_clause(self, predicate: Predicate) -> str | None:
        """The condition in the query language ("" for all; None: matches nothing)."""
        simple = _simplify(predicate)
        if simple == MATCH_NONE:
            return None
        if simple == MATCH_ALL:
            return ""
        return self._render(simple)

    def _render(self, predicate: Predicate) -> str:
        if isinstance(predicate, Compare):
            field = self.filters[predicate.column]
            return (
                f"{predicate.column} {OPERATORS[predicate.op]} {_literal(field, predicate.value)}"
            )
        if isinstance(predicate, IsNull):
            return f"{predicate.column} = null"
        joiner = " or " if isinstance(predicate, AnyOf) else " and "
        return "(" + joiner.join(self._render(t) for t in predicate.terms) + ")"

    def query_text(self, where: Predicate, order: tuple[SortKey, ...]) -> str | None:
        clause = self.where_clause(where)
        if clause is None:
            return None
        text = f"select {', '.join(self.fields)} from {self.object}"
        if clause:
            text += f" where {clause}"
        if order:
            keys = [*order]
            if not any(k.column == self.key_column for k in keys):
                keys.append(SortKey(self.key_column))  # a total order: pages never overlap
            text += " order by " + ", ".join(
                f"{k.column} desc" if k.descending else k.column for k in keys
            )
        return text

    # Reading.

    async def _first(self, text: str) -> Batch:
        return self._batch(await self.adapter.call(self.operation, {"queryString": text}))

    async def _next(self, locator: str) -> Batch:
        return self._batch(await self.adapter.call(self.more, {"queryLocator": locator}))

    def _batch(self, body: etree._Element) -> Batch:
        size_text = _text(_find(body, "size"))
        done_text = _text(_find(body, "done"))
        try:
            size = int(size_text or "")
        except ValueError:
            raise BackendReplyError(f"back end {self.backend!r}: query reply has no size") from None
        if done_text not in ("true", "false", "1", "0"):
            raise BackendReplyError(f"back end {self.backend!r}: query reply has no done flag")
        done = done_text in ("true", "1")
        locator = _text(_find(body, self.locator_at)) or None
        if not done and locator is None:
            raise BackendReplyError(
                f"back end {self.backend!r}: query reply is not done but has no locator"
            )
        records = [self._record(e) for e in body.iter(f"{{*}}{self.records_at}")]
        return Batch(records, size, done, locator)

    def _record(self, element: etree._Element) -> Record:
        """A record's fields; every selected field is there, None when the reply leaves it out."""
        out: Record = dict.fromkeys(self.fields)
        for child in element:
            tag = child.tag
            if isinstance(tag, str):
                out[tag.rpartition("}")[2]] = child.text
        return out

    async def _walk(self, text: str) -> AsyncIterator[Batch]:
        batch = await self._first(text)
        yield batch
        while not batch.done and batch.locator is not None:
            batch = await self._next(batch.locator)
            yield batch

    async def page(self, plan: Plan) -> Page:
        if self._by_key(plan.where):
            found = await self.one(plan.where)
            records = [found] if found is not None else []
            window = records[plan.offset :]
            return Page(window if plan.limit is None else window[: plan.limit], len(records))
        text = self.query_text(plan.where, plan.order_by)
        if text is None:
            return Page([], 0)
        if plan.offset > self.max_walk:
            raise WalkTooDeep(self.backend, plan.offset, self.max_walk)
        wanted = plan.limit
        skipped, out, size = 0, [], 0
        async for batch in self._walk(text):
            size = batch.size
            if plan.offset >= size or wanted == 0:
                break
            take = batch.records
            if skipped < plan.offset:
                skip = min(plan.offset - skipped, len(take))
                skipped += skip
                take = take[skip:]
            out.extend(take)
            if wanted is not None and len(out) >= wanted:
                out = out[:wanted]
                break
        await self._look_up(out)
        return Page(out, size)

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[Record]]:
        if self._by_key(plan.where):
            found = await self.one(plan.where)
            if found is not None:
                yield [found]
            return
        text = self.query_text(plan.where, plan.order_by)
        if text is None:
            return
        async for batch in self._walk(text):
            if batch.records:
                await self._look_up(batch.records)
                yield batch.records

    def _by_key(self, predicate: Predicate) -> bool:
        return self.get_query is not None and key_lookup(predicate, self.key_column) is not None

    async def one(self, where: Predicate) -> Record | None:
        if self._by_key(where):
            key = key_lookup(where, self.key_column)
            assert self.get_query is not None
            try:
                text = fill_text(
                    self.get_query.replace("{fields}", ", ".join(self.fields)), {"key": key}
                )
            except ValueError:
                return None  # a key the typed placeholder refuses names no record
            batch = await self._first(text)
            found = [r for r in batch.records if r.get(self.key_column) == str(key)]
            if len(batch.records) > 1 or (batch.records and not found):
                raise BackendReplyError(
                    f"back end {self.backend!r}: a read by id answered another record"
                )
            await self._look_up(found)
            return found[0] if found else None
        page = await self.page(Plan(where=where, limit=1))
        return page.records[0] if page.records else None

    async def _look_up(self, records: list[Record]) -> None:
        """Fill each look-up's fields from the related object (cached by its id)."""
        now = time.monotonic()
        for lookup in self.lookups:
            wanted = {str(r[lookup.by]) for r in records if r.get(lookup.by) is not None}
            missing = sorted(
                i
                for i in wanted
                if (hit := self._cache.get((lookup.object, i))) is None or hit[0] < now
            )
            for start in range(0, len(missing), LOOKUP_CHUNK):
                chunk = missing[start : start + LOOKUP_CHUNK]
                ids = " or ".join(f"Id = '{quoted_literal(i)}'" for i in chunk)
                text = f"select Id, {', '.join(lookup.fields)} from {lookup.object} where {ids}"
                async for batch in self._walk(text):
                    for element in batch.records:
                        related = {k: element.get(k) for k in lookup.fields}
                        self._cache[(lookup.object, str(element.get("Id")))] = (
                            now + lookup.cache_seconds,
                            related,
                        )
            for record in records:
                hit = self._cache.get((lookup.object, str(record.get(lookup.by))))
                values = hit[1] if hit is not None else {}
                for name in lookup.fields:
                    record[f"{lookup.object}.{name}"] = values.get(name)

    # Writing.

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        """Compare-and-set by a read then the update (the API has no conditional update)."""
        key = key_lookup(where, self.key_column)
        if self.update_type is None or self.update_operation is None or key is None:
            raise BackendError(f"back end {self.backend!r}: updates are not configured")
        if expected and self.check_expected:
            current = await self.one(where) if self.get_query else None
            if current is None or any(current.get(k) != v for k, v in expected.items()):
                return 0
        zobject = {"@type": self.update_type, "Id": key, **values}
        body = await self.adapter.call(self.update_operation, {"zObjects": [zobject]})
        if _text(_find(body, "Success")) == "true":
            return 1
        code = _text(_find(body, "Code")) or ""
        if code == "INVALID_ID":
            return 0
        message = _text(_find(body, "Message")) or "no reason given"
        raise BackendError(f"back end {self.backend!r}: update refused: {code} {message}")


def _name(value: Any, place: str) -> str:
    if not isinstance(value, str) or not value:
        raise SourceSpecError(place, "give a name")
    return value


def _field_filter(column: str, spec: Any) -> FieldFilter:
    if isinstance(spec, list):
        spec = {"ops": spec}
    if not isinstance(spec, Mapping):
        raise SourceSpecError(f"source.query.filters.{column}", "give {ops: [...], type: ...}")
    ops = frozenset(spec.get("ops") or ("eq",))
    if not ops <= OPERATORS.keys():
        raise SourceSpecError(
            f"source.query.filters.{column}", f"operators are {', '.join(OPERATORS)}"
        )
    kind = spec.get("type", "text")
    if kind not in ("text", "number"):
        raise SourceSpecError(f"source.query.filters.{column}", "type is text or number")
    return FieldFilter(ops, kind == "number")


def _lookup(adapter: SoapAdapter, name: str, spec: Any) -> Lookup:
    place = f"source.lookups.{name}"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("by"), str):
        raise SourceSpecError(place, "give by: <field holding the related id>, fields: [...]")
    fields = tuple(spec.get("fields") or ())
    known = adapter.type_fields(name)
    unknown = [f for f in fields if known is not None and f not in known]
    if not fields or unknown:
        raise SourceSpecError(
            place,
            f"type {name!r} has no field {unknown[0]!r} in the WSDL"
            if unknown
            else "list its fields",
        )
    return Lookup(name, spec["by"], fields, float(spec.get("cache_seconds", 300)))


def _literal_ok(field: FieldFilter, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if field.number:
        return isinstance(value, int | float | Decimal)
    return isinstance(value, str | int | Decimal)


def _literal(field: FieldFilter, value: Any) -> str:
    if field.number:
        return str(value)
    return f"'{quoted_literal(str(value))}'"


def _simplify(predicate: Predicate) -> Predicate:
    """Empty ANDs and ORs folded away (the language has no literal true or false)."""
    if isinstance(predicate, AllOf | AnyOf):
        terms = [_simplify(t) for t in predicate.terms]
        if isinstance(predicate, AllOf):
            if MATCH_NONE in terms:
                return MATCH_NONE
            terms = [t for t in terms if t != MATCH_ALL]
            return terms[0] if len(terms) == 1 else AllOf(tuple(terms))
        if MATCH_ALL in terms:
            return MATCH_ALL
        terms = [t for t in terms if t != MATCH_NONE]
        return terms[0] if len(terms) == 1 else AnyOf(tuple(terms))
    return predicate
