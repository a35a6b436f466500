"""Filtering and sorting of mapped TMF resources, for the terms a back end cannot take.

The semantics match what push-down asks of a back end: a missing attribute never
equals, is never greater or smaller, and is "not equal" to anything; missing values
sort last in both directions; several values of one term are OR-ed (`ne`: none of them).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from functools import cmp_to_key
from typing import Any

from gateway.query import Filter, SortTerm, parse_instant

Resource = Mapping[str, Any]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def values_at(resource: Any, parts: tuple[str, ...]) -> list[Any]:
    """Every value at a dotted path; arrays along the way are flattened."""
    current = [resource]
    for part in parts:
        following = []
        for item in current:
            if isinstance(item, list):
                item_values = [v.get(part) for v in item if isinstance(v, dict)]
            elif isinstance(item, dict):
                item_values = [item.get(part)]
            else:
                item_values = []
            for value in item_values:
                if isinstance(value, list):
                    following.extend(value)
                elif value is not None:
                    following.append(value)
        current = following
    return current


def comparable(value: Any, type_: str) -> Any:
    """A resource's value in the typed form filter values take (or None when unusable)."""
    if type_ == "date-time":
        return parse_instant(value) if isinstance(value, str) else None
    if type_ in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            return None
        return Decimal(str(value))
    if type_ == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else None


def compile_filters(
    filters: Iterable[Filter], types: Mapping[str, str]
) -> Callable[[Resource], bool]:
    """One predicate for the AND of the filters."""
    tests = [_compile_filter(f, types.get(f.path, "string")) for f in filters]

    def matches(resource: Resource) -> bool:
        return all(test(resource) for test in tests)

    return matches


def _compile_filter(flt: Filter, type_: str) -> Callable[[Resource], bool]:
    parts = tuple(flt.path.split("."))
    wanted = flt.values

    def present(resource: Resource) -> list[Any]:
        found = (comparable(v, type_) for v in values_at(resource, parts))
        return [v for v in found if v is not None]

    if flt.op == "regex":
        return lambda r: any(p.search(v) for v in present(r) for p in wanted)
    if flt.op == "ne":
        return lambda r: not any(v == w for v in present(r) for w in wanted)
    compare = _COMPARE[flt.op]
    return lambda r: any(_safe(compare, v, w) for v in present(r) for w in wanted)


def _safe(compare: Callable[[Any, Any], bool], left: Any, right: Any) -> bool:
    try:
        return compare(left, right)
    except TypeError:
        return False


def sort_key(terms: Iterable[SortTerm], types: Mapping[str, str]) -> Callable[[Resource], Any]:
    """A key for `sorted`/`heapq` giving the multi-key order of `sort=`; stable on ties."""
    compiled = [
        (tuple(t.path.split(".")), types.get(t.path, "string"), t.descending) for t in terms
    ]

    def extract(resource: Resource) -> list[Any]:
        out = []
        for parts, type_, _ in compiled:
            values = values_at(resource, parts)
            out.append(comparable(values[0], type_) if values else None)
        return out

    def compare(left: list[Any], right: list[Any]) -> int:
        for (_, _, descending), a, b in zip(compiled, left, right, strict=True):
            if a == b:
                continue
            if a is None:
                return 1
            if b is None:
                return -1
            try:
                smaller = a < b
            except TypeError:
                smaller = _type_rank(a) < _type_rank(b)
            return (1 if smaller else -1) if descending else (-1 if smaller else 1)
        return 0

    wrapped = cmp_to_key(compare)
    return lambda resource: wrapped(extract(resource))


def _type_rank(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, datetime) else "datetime"
