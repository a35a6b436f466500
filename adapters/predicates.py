"""Predicates beyond plain comparisons, carried as `Compare` terms with operators of their own.

The adapter contract (adapters/base.py) knows `Compare`, `IsNull`, `AnyOf` and `AllOf`.
The terms below travel as a `Compare` whose `op` names them, so every adapter that does
not know them simply declines them (`can_push(column, op)` is False) and the gateway
evaluates the filter itself:

- `Compare(column, "not_null", None)`: the column holds a value;
- `Compare(column, "regex", pattern)`: RE2's `search(pattern, value)`, exactly;
- `Compare(column, "regex_candidates", pattern)`: a superset of those rows (the gateway
  re-checks them with RE2);
- `Compare(child, "exists", ChildMatch)` / `"not_exists"`: some / no row of the record's
  child rows `child` meets the match (`ChildMatch.where` then `ChildMatch.predicate`,
  both on the child's columns).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import Predicate
from adapters.expressions import Condition

NOT_NULL = "not_null"
REGEX = "regex"
REGEX_CANDIDATES = "regex_candidates"
EXISTS = "exists"
NOT_EXISTS = "not_exists"
#: Operators on a column of the record (or of a child row, inside a `ChildMatch`).
COLUMN_OPS = frozenset({NOT_NULL, REGEX, REGEX_CANDIDATES})
#: Operators on a record's child rows (the `Compare`'s column names the child rows).
CHILD_OPS = frozenset({EXISTS, NOT_EXISTS})


@dataclass(frozen=True, slots=True)
class ChildMatch:
    """Child rows that meet the array's own `where` (the mapping's) and `predicate`."""

    where: Condition | None
    predicate: Predicate
