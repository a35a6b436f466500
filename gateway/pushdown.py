"""Split a TMF `Query` into what the back end runs and what the gateway finishes.

Each filter on an attribute read straight from a column is reversed through the
column's transform (`state=sent` becomes `STAT_CD = 'S'`, `amountDue.value.gt=10`
becomes `GRS_AMT > 1000`); one on a derived attribute (a sum over child rows, a
derived status) goes down the same way when the back end can compute the value
(`source.computed`: a SQL expression or correlated subquery). A term the mapping
cannot reverse, or the adapter cannot run, stays residual: the gateway applies it to
mapped resources. Sort goes down only whole; paging goes down only when nothing is
residual.

Attributes inside arrays, guarded objects and templates go down through
gateway/reverse_nested.py (a semi-join on child rows, a template read backwards). A
regex goes down exactly where the back end runs RE2 (`regex`); elsewhere a superset of
its matches goes down (`regex_candidates`: an index range, a LIKE) and the gateway
re-checks those candidates, so the answer is always RE2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapters.base import (
    MATCH_ALL,
    MATCH_NONE,
    AllOf,
    AnyOf,
    Compare,
    IsNull,
    Plan,
    Predicate,
    SortKey,
    Source,
)
from adapters.predicates import REGEX, REGEX_CANDIDATES
from adapters.sql_regex import anchored_literal
from gateway.errors import bad_request, clip
from gateway.query import Filter, Query
from gateway.reverse_nested import reverse_occurrences
from mappings.compiler import CompiledMapping, FieldRef
from mappings.reverse_paths import occurrences
from mappings.transforms import Transform


@dataclass(frozen=True, slots=True)
class ReadPlan:
    backend: Plan
    #: Terms the gateway applies to what the back end returns.
    residual: tuple[Filter, ...]
    sort_in_gateway: bool
    #: Residual terms of which nothing at all went down (the back end returns every
    #: record for them): what a refused unbounded scan names.
    unpushed: tuple[Filter, ...] = ()

    @property
    def windowed_by_backend(self) -> bool:
        return not self.residual and not self.sort_in_gateway


def plan_read(query: Query, mapping: CompiledMapping, source: Source) -> ReadPlan:
    """The read in back-end terms; a sort on an attribute the mapping never gives is a 400."""
    for term in query.sort:
        if term.path not in mapping.produced:
            raise bad_request(
                "Invalid sort",
                f"sort: {clip(term.path)!r} is not given by this back end's mapping"
                " (every resource would tie)",
            )
    pushed: list[Predicate] = []
    residual: list[Filter] = []
    unpushed: list[Filter] = []
    for flt in query.filters:
        predicate = reverse_filter(flt, mapping, source)
        exact = True
        if predicate is None and flt.op == "regex":
            predicate, exact = _reverse(flt, mapping, source, REGEX_CANDIDATES), False
        if predicate is not None and _runnable(_all([*pushed, predicate]), source):
            pushed.append(predicate)
            if not exact:
                residual.append(flt)
        else:
            residual.append(flt)
            unpushed.append(flt)
    order = _reverse_sort(query, mapping, source)
    sort_in_gateway = order is None
    where = _all(pushed)
    if not residual and not sort_in_gateway:
        backend = Plan(where, order or (), query.offset, query.limit)
    else:
        backend = Plan(where, order or ())
    return ReadPlan(backend, tuple(residual), sort_in_gateway, tuple(unpushed))


def _reference(path: str, mapping: CompiledMapping, source: Source) -> FieldRef | None:
    """The column an attribute is read from, or the back end's name for its derived value.

    None when neither exists (the back end cannot compute it, or has no `computed`).
    """
    ref = mapping.fields.get(path)
    if ref is not None:
        return ref
    derived = mapping.computed.get(path)
    define = getattr(source, "computed", None)
    if derived is None or define is None:
        return None
    name = define(derived.expr)
    return None if name is None else FieldRef(name, derived.transform)


def reverse_filter(flt: Filter, mapping: CompiledMapping, source: Source) -> Predicate | None:
    """The filter in back-end terms, or None when it must be applied by the gateway."""
    return _reverse(flt, mapping, source, REGEX)


def _reverse(
    flt: Filter, mapping: CompiledMapping, source: Source, regex_op: str
) -> Predicate | None:
    """The filter in back-end terms, a regex as `regex_op` (exact, or its candidates)."""
    ref = _reference(flt.path, mapping, source)
    if ref is None:
        return _reverse_nested(flt, mapping, source, regex_op)
    if flt.op == "regex":
        if flt.path not in mapping.fields or not _text_as_is(ref.transform):
            return None
        searches: list[Predicate] = [
            Compare(ref.column, regex_op, pattern.pattern) for pattern in flt.values
        ]
        found = searches[0] if len(searches) == 1 else AnyOf(tuple(searches))
        return found if _runnable(found, source) else None
    terms: list[Predicate] = []
    for value in flt.values:
        try:
            predicate = ref.transform.condition(ref.column, flt.op, value)
        except (ValueError, ArithmeticError):
            # No raw value stands for it (a 5,000-digit id, the year 1): equal to none,
            # unlike all; a range over it is left to the gateway, which compares TMF values.
            if flt.op not in ("eq", "ne"):
                return None
            predicate = MATCH_NONE if flt.op == "eq" else MATCH_ALL
        if predicate is None:
            return None
        # Several values: any of them (one flat OR), except for `ne`: different from all.
        if flt.op != "ne" and isinstance(predicate, AnyOf):
            terms.extend(predicate.terms)
        else:
            terms.append(predicate)
    if len(terms) == 1:
        combined = terms[0]
    else:
        combined = AllOf(tuple(terms)) if flt.op == "ne" else AnyOf(tuple(terms))
    combined = within_int64(combined)
    return combined if _runnable(combined, source) else None


def _text_as_is(transform: Transform) -> bool:
    """Whether the TMF value is the column's text itself (so a regex applies to it)."""
    return transform.name == "identity" and transform.json_type == "string"


def _reverse_nested(
    flt: Filter, mapping: CompiledMapping, source: Source, regex_op: str
) -> Predicate | None:
    """A filter on an attribute inside arrays, guarded objects or templates."""
    found = occurrences(mapping.fast_path.slow).get(flt.path)
    if not found:
        return None
    columns = source.columns
    kinds = getattr(columns, "kinds", None)
    child_kinds = getattr(columns, "child_kinds", None)

    def column_condition(column: str, transform: Transform, op: str, value: Any) -> Any:
        if op == "regex":
            return Compare(column, regex_op, value.pattern) if _text_as_is(transform) else None
        try:
            predicate = transform.condition(column, op, value)
        except (ValueError, ArithmeticError):
            return MATCH_NONE if op == "eq" else None
        return None if predicate is None else within_int64(predicate)

    def starts_with(column: str, text: str) -> Predicate:
        return Compare(column, REGEX_CANDIDATES, anchored_literal(text))

    type_ = _type_of(flt.values[0]) if flt.values else "string"
    candidates = starts_with if regex_op == REGEX_CANDIDATES else None
    combined = reverse_occurrences(
        flt, found, type_, kinds, child_kinds, column_condition, candidates
    )
    if combined is None:
        return None
    combined = within_int64(combined)
    return combined if _runnable(combined, source) else None


def _type_of(value: Any) -> str:
    """The OAS type a typed filter value stands for (gateway/query.py typed it so)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Decimal):
        return "number"
    if isinstance(value, datetime):
        return "date-time"
    return "string"


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def within_int64(predicate: Predicate) -> Predicate:
    """The predicate with every integer beyond 64 bits replaced by its meaning.

    Above the range: nothing equals it or is greater; every value is smaller or different
    (`column <= INT64_MAX`, which keeps "missing is never smaller"). Below it, mirrored.
    """
    if isinstance(predicate, Compare):
        value = predicate.value
        if isinstance(value, bool) or not isinstance(value, int):
            return predicate
        if value > INT64_MAX:
            if predicate.op in ("lt", "lte", "ne"):
                return Compare(predicate.column, "lte", INT64_MAX)
            return MATCH_NONE
        if value < INT64_MIN:
            if predicate.op in ("gt", "gte", "ne"):
                return Compare(predicate.column, "gte", INT64_MIN)
            return MATCH_NONE
        return predicate
    if isinstance(predicate, AnyOf):
        return AnyOf(tuple(within_int64(term) for term in predicate.terms))
    if isinstance(predicate, AllOf):
        return AllOf(tuple(within_int64(term) for term in predicate.terms))
    return predicate


def _all(predicates: list[Predicate]) -> Predicate:
    return predicates[0] if len(predicates) == 1 else AllOf(tuple(predicates))


def _runnable(predicate: Predicate, source: Source) -> bool:
    """Whether the back end can evaluate the predicate (its own judgement, if it has one)."""
    accepts = getattr(source, "accepts", None)
    if accepts is not None:
        return bool(accepts(predicate))
    return _each_term_runnable(predicate, source)


def _each_term_runnable(predicate: Predicate, source: Source) -> bool:
    if isinstance(predicate, Compare):
        return source.can_push(predicate.column, predicate.op)
    if isinstance(predicate, IsNull):
        return source.can_push(predicate.column, "eq")
    return all(_each_term_runnable(term, source) for term in predicate.terms)


def _reverse_sort(
    query: Query, mapping: CompiledMapping, source: Source
) -> tuple[SortKey, ...] | None:
    keys = []
    for term in query.sort:
        ref = _reference(term.path, mapping, source)
        if ref is None or not ref.transform.ordered or not source.can_sort(ref.column):
            return None
        keys.append(SortKey(ref.column, term.descending))
    return tuple(keys)
