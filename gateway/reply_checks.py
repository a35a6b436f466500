"""Checks of what a back end hands the gateway, so a lying back end is a 502, never a 200.

Back ends of every kind get paging wrong in the same few ways: a page longer than asked
for, the first page again for every offset, the same record on two pages, a total that
the records contradict. Each of these would reach the caller as a plausible 200 with
wrong data. The reader passes every page and every batch of a scan through here:
- a page longer than its limit is cut to it (the back end ignored the limit: the
  first `limit` records are still the window asked for), and logged;
- a key twice in one page, or in two batches of one scan, a batch that repeats the
  previous one, a total below the records returned, or fewer records than the total
  says the window holds, are a `ReplyCheckFailed` (a 502 naming the back end).
Records without the key column (a source that does not return it) are not compared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import structlog

from adapters.base import BackendReplyError, Page, Plan

log = structlog.get_logger("gateway.reply_checks")


class ReplyCheckFailed(BackendReplyError):
    """The back end's reply contradicts itself or the request: its caller gets a 502."""

    def __init__(self, backend: str, what: str) -> None:
        #: What the caller's TMF Error says (no data, only the kind of contradiction).
        self.summary = f"its reply was inconsistent ({what})"
        super().__init__(f"back end {backend!r}: inconsistent reply: {what}")


def _keys(records: list[dict[str, Any]], key_column: str) -> list[Any]:
    return [r[key_column] for r in records if r.get(key_column) is not None]


def _first_repeat(keys: list[Any], seen: set[Any]) -> Any | None:
    """The first key already in `seen` (or twice in `keys`); adds the others to `seen`."""
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def checked_page(backend: str, key_column: str, plan: Plan, page: Page) -> Page:
    """The page as the plan asked for it, or ReplyCheckFailed when it cannot be."""
    records = page.records
    if plan.limit is not None and len(records) > plan.limit:
        log.warning(
            "backend_page_too_long", backend=backend, limit=plan.limit, returned=len(records)
        )
        records = records[: plan.limit]
    repeated = _first_repeat(_keys(records, key_column), set())
    if repeated is not None:
        raise ReplyCheckFailed(backend, "the same record twice in one page")
    total = page.total
    if total < 0 or total < plan.offset + len(records) and records:
        raise ReplyCheckFailed(
            backend, f"a total of {total} with records beyond it at offset {plan.offset}"
        )
    left = max(total - plan.offset, 0)
    expected = left if plan.limit is None else min(plan.limit, left)
    if len(records) < expected:
        raise ReplyCheckFailed(
            backend,
            f"{len(records)} records where its total of {total} means {expected}"
            f" at offset {plan.offset}",
        )
    return page if records is page.records else Page(records, total)


async def checked_stream(
    backend: str, key_column: str, batches: AsyncIterator[list[dict[str, Any]]]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The batches of a scan, failing at a batch that repeats one or a record seen before."""
    seen: set[Any] = set()
    previous: list[Any] | None = None
    try:
        async for batch in batches:
            keys = _keys(batch, key_column)
            if keys and keys == previous:
                raise ReplyCheckFailed(backend, "a page that repeats the previous one")
            if _first_repeat(keys, seen) is not None:
                raise ReplyCheckFailed(backend, "the same record on two pages")
            previous = keys
            yield batch
    finally:
        # The back end's generator holds a connection or a cursor: release it now, not
        # whenever it is collected.
        close = getattr(batches, "aclose", None)
        if close is not None:
            await close()
