"""How a REST list call pages, and walking it so the answer is exact or refused.

Four styles, each with the page size's parameter (required: an API's default page size
must never decide how much is read):

    {style: page, page: page, size: size, first: 1, max_size: 100}
    {style: offset, offset: offset, limit: limit, max_size: 100}
    {style: next, next: links.next, size: per_page, max_size: 100}     # a link to follow
    {style: cursor, cursor: starting_after, size: limit, has_more: has_more,
     cursor_from: id, max_size: 100}                # the cursor is a field of the last record

Whether the back end reports a total is said by the list's `total:` (a path in the
reply). Without one the gateway walks the whole list to count it, within the back end's
`list_walk_budget` (records); a list longer than that is refused with a 4xx
(`QueryRefused`), never answered with a wrong count or a short page. A walk that sees
the same cursor, the same link or the same record twice is a paging loop: a 502 naming
the back end, after a bounded number of calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import BackendReplyError, QueryRefused, SourceSpecError

Record = dict[str, Any]
#: One call of the list: (path or URL, query parameters) -> (records, the whole reply).
Fetch = Callable[[str, dict[str, Any]], Awaitable[tuple[list[Record], Any]]]

STYLES = ("page", "offset", "next", "cursor")
_KEYS = {
    "page": {"style", "page", "size", "first", "max_size"},
    "offset": {"style", "offset", "limit", "max_size"},
    "next": {"style", "next", "size", "max_size"},
    "cursor": {"style", "cursor", "size", "has_more", "cursor_from", "max_size"},
}
#: The parameter that sets the page size, per style.
_SIZE_KEY = {"page": "size", "offset": "limit", "next": "size", "cursor": "size"}


def at_path(document: Any, path: str | None) -> Any:
    """The value at a dotted path of a JSON document (None where it is missing)."""
    if not path:
        return document
    for part in path.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document


@dataclass(frozen=True, slots=True)
class Paging:
    """A list call's paging, checked at start-up."""

    style: str
    size_param: str
    max_size: int
    page_param: str = "page"
    first: int = 1
    offset_param: str = "offset"
    next_at: str = "next"
    cursor_param: str = "starting_after"
    has_more_at: str = "has_more"
    cursor_from: str = "id"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Paging:
        place = "source.list.paging"
        if not isinstance(spec, Mapping) or spec.get("style") not in STYLES:
            raise SourceSpecError(place, f"give the style: one of {', '.join(STYLES)}")
        style = str(spec["style"])
        unknown = set(spec) - _KEYS[style]
        if unknown:
            raise SourceSpecError(place, f"unknown key(s) {sorted(unknown)} for style {style}")
        size_key = _SIZE_KEY[style]
        if not isinstance(spec.get(size_key), str):
            raise SourceSpecError(
                place,
                f"name the page size's parameter ({size_key}: ...): without it the API's"
                " default page size would decide how much is read",
            )
        max_size = spec.get("max_size", 100)
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise SourceSpecError(place, "max_size is a positive integer")
        if style == "cursor":
            for key in ("cursor", "has_more", "cursor_from"):
                if not isinstance(spec.get(key), str):
                    raise SourceSpecError(place, f"cursor paging needs {key}: ...")
        if style == "next" and not isinstance(spec.get("next"), str):
            raise SourceSpecError(place, "next paging needs next: (where the link is)")
        return cls(
            style=style,
            size_param=spec[size_key],
            max_size=max_size,
            page_param=str(spec.get("page", "page")),
            first=int(spec.get("first", 1)),
            offset_param=str(spec.get("offset", "offset")),
            next_at=str(spec.get("next", "next")),
            cursor_param=str(spec.get("cursor", "starting_after")),
            has_more_at=str(spec.get("has_more", "has_more")),
            cursor_from=str(spec.get("cursor_from", "id")),
        )

    @property
    def jumps(self) -> bool:
        """Whether a read can start at any record (page/offset) rather than at the first."""
        return self.style in ("page", "offset")


class Walk:
    """One walk through a list: every call counted, loops and over-long lists caught."""

    def __init__(
        self,
        backend: str,
        paging: Paging,
        fetch: Fetch,
        key_column: str,
        budget: int,
    ) -> None:
        self.backend = backend
        self.paging = paging
        self.fetch = fetch
        self.key_column = key_column
        self.budget = budget
        self.calls = 0
        self.read = 0
        self._seen: set[Any] = set()

    def _loop(self, what: str) -> BackendReplyError:
        error = BackendReplyError(
            f"back end {self.backend!r}: paging loop ({what}) after {self.calls} calls;"
            " check the source's paging block"
        )
        error.summary = "its list paging loops"  # type: ignore[attr-defined]
        return error

    def _refused(self) -> QueryRefused:
        return QueryRefused(
            f"back end {self.backend!r}: the list is longer than {self.budget} records",
            f"Answering needs more than {self.budget} records of back end {self.backend!r},"
            " which reports no count and must be read through; add filters to narrow the"
            " query",
        )

    def _take(self, records: list[Record]) -> None:
        """Count a page's records; a record seen before means the paging went round."""
        self.read += len(records)
        for record in records:
            key = record.get(self.key_column)
            if key in self._seen:
                raise self._loop(f"record {key!r} came twice")
            self._seen.add(key)
        if self.read > self.budget:
            raise self._refused()

    async def _call(self, url: str, params: dict[str, Any]) -> tuple[list[Record], Any]:
        self.calls += 1
        return await self.fetch(url, params)

    async def pages(
        self, path: str, params: dict[str, Any], start: int = 0, size: int | None = None
    ) -> AsyncIterator[tuple[list[Record], Any]]:
        """Pages from record `start` (page/offset: rounded down to a page; others: 0) to
        the end; the caller may stop early."""
        paging = self.paging
        size = size or paging.max_size
        if paging.style == "page":
            number, short = start // size, 0
            while True:
                query = {
                    **params,
                    paging.page_param: number + paging.first,
                    paging.size_param: size,
                }
                records, body = await self._call(path, query)
                if records and short:  # records were skipped: the API caps its pages
                    raise BackendReplyError(
                        f"back end {self.backend!r}: a page of {short} records for size {size}"
                        f" was not the last; set max_size to at most {short}"
                    )
                self._take(records)
                yield records, body
                if not records:
                    return
                short = len(records) if len(records) < size else 0
                number += 1
        elif paging.style == "offset":
            offset = start
            while True:
                query = {**params, paging.offset_param: offset, paging.size_param: size}
                records, body = await self._call(path, query)
                self._take(records)
                yield records, body
                if not records:
                    return
                offset += len(records)
        elif paging.style == "next":
            url: str = path
            query = {**params, paging.size_param: size}
            links = {url}
            while True:
                records, body = await self._call(url, query)
                self._take(records)
                yield records, body
                link = at_path(body, paging.next_at)
                if not link:
                    return
                if not isinstance(link, str):
                    raise BackendReplyError(
                        f"back end {self.backend!r}: the next link at {paging.next_at!r}"
                        " is not text"
                    )
                if link in links:
                    raise self._loop(f"link {link!r} came twice")
                links.add(link)
                url, query = link, {}
        else:
            cursors: set[Any] = set()
            query = {**params, paging.size_param: size}
            while True:
                records, body = await self._call(path, query)
                self._take(records)
                yield records, body
                more = at_path(body, paging.has_more_at)
                if not isinstance(more, bool):
                    raise BackendReplyError(
                        f"back end {self.backend!r}: no true/false at {paging.has_more_at!r}"
                    )
                if not more:
                    return
                if not records:
                    raise self._loop("an empty page says there is more")
                cursor = records[-1].get(paging.cursor_from)
                if cursor is None or cursor in cursors:
                    raise self._loop(f"cursor {cursor!r} came twice")
                cursors.add(cursor)
                query = {**params, paging.size_param: size, paging.cursor_param: cursor}
