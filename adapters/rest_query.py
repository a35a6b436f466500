"""Filters of a REST list call, in the API's own syntax, declared per field and operator.

    filters:
      status: {param: status, multiple: true}          # eq; several values comma-separated
      customer: {param: customer}
      created: {ranges: bracket}                       # created[gt] created[gte] ...
      total: {ranges: {gte: amount_min, lte: amount_max}}   # each operator's own name
      due_date: {param: due, ranges: suffix}           # due_gt, due_gte, ... (`_` + op)

Values arrive already in the back end's terms: the mapping's transform turned a filter's
date-time into unix seconds, its decimal into minor units. A term the API cannot take
(no parameter for that field and operator, several values where it takes one, the
same operator twice) is left to the gateway, which filters exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import MATCH_ALL, AllOf, AnyOf, Compare, Predicate, SourceSpecError

RANGE_OPS = ("gt", "gte", "lt", "lte")
_STYLES = {
    "bracket": lambda name, op: f"{name}[{op}]",
    "suffix": lambda name, op: f"{name}_{op}",
}


class ListFilters:
    """Field -> {operator: parameter name}, and which parameters take several values."""

    def __init__(self, spec: Any) -> None:
        self.params: dict[str, dict[str, str]] = {}
        multiple: set[str] = set()
        for column, entry in (spec or {}).items():
            place = f"source.list.filters.{column}"
            if not isinstance(entry, Mapping) or set(entry) - {"param", "multiple", "ranges"}:
                raise SourceSpecError(place, "expected {param, multiple, ranges}")
            name = entry.get("param", column if "ranges" in entry else None)
            if not isinstance(name, str):
                raise SourceSpecError(place, "give its param")
            ops: dict[str, str] = {}
            if "param" in entry:
                ops["eq"] = name
                if entry.get("multiple"):
                    multiple.add(name)
            ranges = entry.get("ranges")
            if isinstance(ranges, str):
                if ranges not in _STYLES:
                    raise SourceSpecError(place, f"ranges is {' or '.join(_STYLES)}, or a table")
                ops.update({op: _STYLES[ranges](name, op) for op in RANGE_OPS})
            elif isinstance(ranges, Mapping):
                for op, param in ranges.items():
                    if op not in RANGE_OPS or not isinstance(param, str):
                        raise SourceSpecError(
                            place, f"ranges maps {', '.join(RANGE_OPS)} to parameter names"
                        )
                    ops[op] = param
            elif ranges is not None:
                raise SourceSpecError(place, "ranges is bracket, suffix or a table")
            self.params[column] = ops
        self.multiple = frozenset(multiple)

    def can_push(self, column: str, op: str) -> bool:
        return op in self.params.get(column, {})

    def query(self, predicate: Predicate) -> dict[str, str] | None:
        """The query parameters for `predicate`; None when the API cannot take it."""
        if predicate == MATCH_ALL:
            return {}
        terms = predicate.terms if isinstance(predicate, AllOf) else (predicate,)
        out: dict[str, str] = {}
        for term in terms:
            found = self._term(term)
            if found is None or found[0] in out:
                return None
            out[found[0]] = found[1]
        return out

    def _term(self, term: Predicate) -> tuple[str, str] | None:
        if isinstance(term, AllOf):
            return None
        if isinstance(term, Compare):
            name = self.params.get(term.column, {}).get(term.op)
            return None if name is None else (name, _text(term.value))
        if not isinstance(term, AnyOf) or not term.terms:
            return None
        columns = {t.column for t in term.terms if isinstance(t, Compare) and t.op == "eq"}
        if len(columns) != 1 or not all(isinstance(t, Compare) for t in term.terms):
            return None
        if not all(t.op == "eq" for t in term.terms if isinstance(t, Compare)):
            return None
        name = self.params.get(columns.pop(), {}).get("eq")
        if name is None or (len(term.terms) > 1 and name not in self.multiple):
            return None
        values = [_text(t.value) for t in term.terms if isinstance(t, Compare)]
        if any("," in v for v in values) and len(values) > 1:
            return None  # a comma inside a value would read as two values
        return name, ",".join(values)


def _text(value: Any) -> str:
    """A value as a query parameter (as `str` writes it, booleans included)."""
    return str(value)
