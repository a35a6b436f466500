"""Filters on attributes inside arrays, guarded objects and templates, in back-end terms.

`taxItem.taxCategory=VAT7` asks for bills with some tax row of code VAT7: a semi-join
on the child rows (`Compare("taxes", "exists", ChildMatch(...))`, adapters/predicates.py).
`billDocument.name=INV24-000001.pdf` asks for the bill whose `{INV_NO}.pdf` is that:
`INV_NO = 'INV24-000001'` (mappings/reverse_template.py), and the element must be
there (its `when` column set). The meaning is the gateway's own (gateway/residual.py):
a term holds when any value of the attribute matches; `ne` when none equals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull, Predicate
from adapters.kinds import Kind
from adapters.predicates import EXISTS, NOT_EXISTS, NOT_NULL, ChildMatch
from adapters.sql_regex import analyse
from gateway.query import Filter
from gateway.residual import comparable
from mappings.nodes import ColumnNode, ConstNode, TemplateNode
from mappings.reverse_paths import Occurrence
from mappings.reverse_template import (
    StartsWith,
    template_differs,
    template_equals,
    template_prefix_candidates,
)
from mappings.transforms import Transform

#: The predicate of one value on one column, or None when it cannot be reversed.
ColumnCondition = Callable[[str, Transform, str, Any], Predicate | None]


def reverse_occurrences(
    flt: Filter,
    found: tuple[Occurrence, ...],
    type_: str,
    kinds: Mapping[str, Kind] | None,
    child_kinds: Mapping[str, Mapping[str, Kind]] | None,
    column_condition: ColumnCondition,
    starts_with: StartsWith | None = None,
) -> Predicate | None:
    """The filter over every place its attribute comes from; None when one cannot be.

    `starts_with`: given, a regex on a template goes down as a superset of its matches
    (the records whose template may start with the pattern's literal prefix), for the
    gateway to re-check.
    """
    negative = flt.op == "ne"
    op = "eq" if negative else flt.op
    terms: list[Predicate] = []
    for occurrence in found:
        scope = kinds if occurrence.child is None else _child(child_kinds, occurrence.child)
        matches: list[Predicate] = []
        for value in flt.values:
            matched = _holds(occurrence, op, value, type_, scope, column_condition, starts_with)
            if matched is None:
                return None
            matches.append(matched)
        found_any = any_of(matches)
        if occurrence.child is None:
            term = _negate(occurrence, flt.values, type_, scope) if negative else found_any
            if term is None:
                return None
            terms.append(term)
            continue
        if found_any == MATCH_NONE:
            terms.append(MATCH_ALL if negative else MATCH_NONE)
            continue
        match = ChildMatch(occurrence.where, found_any)
        terms.append(Compare(occurrence.child, NOT_EXISTS if negative else EXISTS, match))
    return all_of(terms) if negative else any_of(terms)


def _child(
    child_kinds: Mapping[str, Mapping[str, Kind]] | None, child: str
) -> Mapping[str, Kind] | None:
    return None if child_kinds is None else child_kinds.get(child)


def _holds(
    occurrence: Occurrence,
    op: str,
    value: Any,
    type_: str,
    kinds: Mapping[str, Kind] | None,
    column_condition: ColumnCondition,
    starts_with: StartsWith | None,
) -> Predicate | None:
    """Where this occurrence gives a value that meets `op value` (never `ne`)."""
    present = all_of([Compare(g, NOT_NULL, None) for g in occurrence.guards])
    leaf = occurrence.leaf
    if isinstance(leaf, ConstNode):
        held = _const_holds(leaf.value, op, value, type_)
        return present if held else MATCH_NONE
    if isinstance(leaf, TemplateNode):
        if op == "regex" and starts_with is not None:
            prefix = analyse(value.pattern).prefix
            maybe = template_prefix_candidates(leaf.pieces, prefix, kinds, starts_with)
            return None if maybe is None else all_of([present, maybe])
        if op != "eq" or not isinstance(value, str):
            return None
        equal = template_equals(leaf.pieces, value, kinds)
        return None if equal is None else all_of([present, equal])
    assert isinstance(leaf, ColumnNode)
    condition = column_condition(leaf.column, leaf.transform, op, value)
    return None if condition is None else all_of([present, condition])


def _negate(
    occurrence: Occurrence, values: tuple[Any, ...], type_: str, kinds: Mapping[str, Kind] | None
) -> Predicate | None:
    """Records where this (record-level) occurrence equals none of `values`."""
    absent = [IsNull(g) for g in occurrence.guards]
    leaf = occurrence.leaf
    terms: list[Predicate] = []
    for value in values:
        if isinstance(leaf, ConstNode):
            equal = _const_holds(leaf.value, "eq", value, type_)
            terms.append(any_of(list(absent)) if equal else MATCH_ALL)
            continue
        if isinstance(leaf, TemplateNode):
            differs = None
            if isinstance(value, str):
                differs = template_differs(leaf.pieces, value, kinds)
            if differs is None:
                return None
            terms.append(any_of([*absent, differs]))
            continue
        try:
            differs_from = leaf.transform.condition(leaf.column, "ne", value)
        except (ValueError, ArithmeticError):
            differs_from = MATCH_ALL
        if differs_from is None:
            return None
        terms.append(any_of([*absent, differs_from]))
    return all_of(terms)


def _const_holds(const: Any, op: str, value: Any, type_: str) -> bool:
    """A constant compared as the gateway compares a resource's value."""
    mine = comparable(const, type_)
    if mine is None:
        return False
    if op == "regex":
        return bool(value.search(mine))
    try:
        if op == "eq":
            return bool(mine == value)
        if op == "gt":
            return bool(mine > value)
        if op == "gte":
            return bool(mine >= value)
        if op == "lt":
            return bool(mine < value)
        return bool(mine <= value)
    except TypeError:
        return False


def any_of(terms: list[Predicate]) -> Predicate:
    """OR, simplified: a term that is always true decides; never-true terms drop out."""
    kept = []
    for term in terms:
        if term == MATCH_ALL:
            return MATCH_ALL
        if term != MATCH_NONE and term not in kept:
            kept.append(term)
    return kept[0] if len(kept) == 1 else AnyOf(tuple(kept))


def all_of(terms: list[Predicate]) -> Predicate:
    """AND, simplified: a term that is never true decides; always-true terms drop out."""
    kept = []
    for term in terms:
        if term == MATCH_NONE:
            return MATCH_NONE
        if term != MATCH_ALL and term not in kept:
            kept.append(term)
    return kept[0] if len(kept) == 1 else AllOf(tuple(kept))
