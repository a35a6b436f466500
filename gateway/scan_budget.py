"""How many back-end records one request may make the gateway read: past it, a clear 400.

A filter the back end cannot take (gateway/pushdown.py) makes the gateway read every
record the rest of the query selects. On a real-sized biller that is millions of rows
and ends in a 504 after the whole timeout; with a budget it ends at once, with a TMF
Error naming the filter that could not go down and the filters that would narrow it.
A source that can count (`count(predicate)`, the SQL adapter) is asked first, so the
refusal costs one COUNT; any other is stopped while streaming, at the budget.
"""

from __future__ import annotations

from adapters.base import Predicate, Source
from gateway.errors import ApiError, clip
from gateway.pushdown import ReadPlan
from mappings.compiler import CompiledMapping

#: Attributes suggested as narrowing filters, at most.
_SUGGESTED = 4


async def check_before_scan(
    source: Source, plan: ReadPlan, mapping: CompiledMapping, budget: int
) -> None:
    """Refuse now when the back end says the scan would read more than `budget` records."""
    count = getattr(source, "count", None)
    if count is None:
        return
    where: Predicate = plan.backend.where
    total = await count(where)
    if total > budget:
        raise too_broad(plan, mapping, budget, total)


def _narrowing(mapping: CompiledMapping) -> list[str]:
    """Attributes the back end filters on, the most selective kinds first: ids, dates."""

    def rank(path: str) -> tuple[int, str]:
        if path == "id" or path.endswith(".id"):
            return 0, path
        if mapping.fields[path].transform.name == "date":
            return 1, path
        return 2, path

    usable = [p for p in mapping.fields if not p.endswith(("@type", "href", "unit"))]
    return sorted(usable, key=rank)


def too_broad(
    plan: ReadPlan, mapping: CompiledMapping, budget: int, total: int | None = None
) -> ApiError:
    """The 400 for a scan past the budget: what could not go down, and what would help."""
    culprits = plan.unpushed or plan.residual
    named = ", ".join(repr(clip(f.param, 80)) for f in culprits) or "the sort"
    hint = ", ".join(_narrowing(mapping)[:_SUGGESTED])
    size = f"{total} records" if total is not None else f"more than {budget} records"
    return ApiError(
        400,
        "Query needs a narrowing filter",
        f"{named} cannot be evaluated by the back end; answering would read {size}"
        f" (at most {budget} per request). Add a filter the back end can take, such as"
        f" {hint}.",
        code="INVALID_QUERY",
    )
