"""The gateway's checks of back-end replies: each lie a back end tells is a 502, never a 200.

A lying source wraps the demo SQLite back end's real source and corrupts its answers in
one way each; the gateway must cut a page that is too long (the window is still right)
and refuse the rest with a TMF Error naming the back end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.base import Page, Plan, Source
from gateway.app import create_app
from gateway.reply_checks import ReplyCheckFailed, checked_page, checked_stream
from tests.conftest import API, assert_valid, gateway_config


class Lying:
    """The real source, with one kind of lie in its pages or its scans' batches."""

    def __init__(self, inner: Source, lie: str) -> None:
        self._inner = inner
        self.lie = lie

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # A scan's lies need a scan: nothing is pushed down then.
    def can_push(self, column: str, op: str) -> bool:
        return self.lie not in ("repeats_page", "id_on_two_pages")

    def accepts(self, predicate: Any) -> bool:
        return self.lie not in ("repeats_page", "id_on_two_pages")

    async def page(self, plan: Plan) -> Page:
        if self.lie == "ignores_offset":  # the first page again, whatever the offset
            plan = Plan(plan.where, plan.order_by, 0, plan.limit)
        if self.lie == "too_long" and plan.limit is not None:
            plan = Plan(plan.where, plan.order_by, plan.offset, plan.limit + 5)
        page = await self._inner.page(plan)
        if self.lie == "duplicate_in_page" and len(page.records) > 1:
            page.records[1] = dict(page.records[0])
        if self.lie == "total_too_small":
            page.total = len(page.records) - 1
        if self.lie == "total_too_large":
            page.total += 40
        return page

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        previous: list[dict[str, Any]] | None = None
        count = 0
        async for batch in self._inner.stream(plan, 7):
            count += 1
            if self.lie == "repeats_page" and previous is not None:
                batch = previous
            if self.lie == "id_on_two_pages" and previous is not None and count == 3:
                batch = [previous[-1], *batch[1:]]
            previous = batch
            yield batch


@pytest.fixture
def lying_gateway(scratch_db: Path) -> Iterator[tuple[TestClient, Any]]:
    app = create_app(gateway_config(scratch_db))
    with TestClient(app) as client:
        route = app.state.services.customer_bills.routes[0]
        honest = route.reader.source

        def lie(kind: str | None) -> None:
            route.reader.source = honest if kind is None else Lying(honest, kind)
            route.reader.forget()

        yield client, lie


def error_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 502, response.text
    body: dict[str, Any] = response.json()
    assert_valid("Error", body)
    return body


def test_a_page_longer_than_asked_for_is_cut_to_the_window(lying_gateway: Any) -> None:
    client, lie = lying_gateway
    honest = client.get(f"{API}/customerBill?offset=3&limit=4").json()
    lie("too_long")
    cut = client.get(f"{API}/customerBill?offset=3&limit=4")
    assert cut.status_code == 200
    assert [b["id"] for b in cut.json()] == [b["id"] for b in honest]


@pytest.mark.parametrize(
    ("lie_kind", "words"),
    [
        ("ignores_offset", "a total of"),
        ("duplicate_in_page", "twice in one page"),
        ("total_too_small", "a total of"),
        ("total_too_large", "means"),
    ],
)
def test_a_page_that_contradicts_itself_is_a_502_naming_the_back_end(
    lying_gateway: Any, lie_kind: str, words: str
) -> None:
    client, lie = lying_gateway
    total = int(client.get(f"{API}/customerBill?limit=1").headers["X-Total-Count"])
    lie(lie_kind)
    # Near the end, so a page that ignores its offset and one past the true total both show.
    response = client.get(f"{API}/customerBill?offset={total - 3}&limit=10")
    body = error_of(response)
    assert "'legacy_billing'" in body["message"] and "inconsistent" in body["message"]
    assert words in body["message"]


@pytest.mark.parametrize("lie_kind", ["repeats_page", "id_on_two_pages"])
def test_a_scan_that_repeats_records_is_a_502_naming_the_back_end(
    lying_gateway: Any, lie_kind: str
) -> None:
    client, lie = lying_gateway
    assert client.get(f"{API}/customerBill?state.ne=onHold&limit=5").status_code == 200
    lie(lie_kind)
    body = error_of(client.get(f"{API}/customerBill?state.ne=onHold&limit=5"))
    assert "'legacy_billing'" in body["message"] and "inconsistent" in body["message"]


def records(*keys: int) -> list[dict[str, Any]]:
    return [{"id": k, "v": str(k)} for k in keys]


@pytest.mark.parametrize(
    ("plan", "page", "fails"),
    [
        (Plan(offset=0, limit=2), Page(records(1, 2), 2), None),
        (Plan(offset=0, limit=2), Page(records(1, 2, 3), 9), None),  # cut, not refused
        (Plan(offset=4, limit=2), Page([], 4), None),  # past the end
        (Plan(offset=0, limit=0), Page([], 9), None),  # a count only
        (Plan(offset=0, limit=3), Page(records(1, 1), 2), "twice in one page"),
        (Plan(offset=2, limit=3), Page(records(1, 2), 3), "a total of 3"),
        (Plan(offset=0, limit=3), Page(records(1), 5), "1 records where"),
        (Plan(offset=3, limit=3), Page([], 5), "0 records where"),
        (Plan(offset=0, limit=None), Page(records(1, 2), 3), "2 records where"),
        (Plan(offset=0, limit=5), Page(records(1), -1), "a total of -1"),
    ],
)
def test_checked_page(plan: Plan, page: Page, fails: str | None) -> None:
    if fails is None:
        checked = checked_page("b", "id", plan, page)
        assert checked.records == page.records[: plan.limit]
        return
    with pytest.raises(ReplyCheckFailed, match=fails) as info:
        checked_page("b", "id", plan, page)
    assert info.value.status == 502 and "'b'" in info.value.reason


def test_checked_stream() -> None:
    async def batches(*pages: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
        for page in pages:
            yield page

    async def walk(*pages: list[dict[str, Any]]) -> int:
        seen = 0
        async for batch in checked_stream("b", "id", batches(*pages)):
            seen += len(batch)
        return seen

    assert asyncio.run(walk(records(1, 2), records(3), records())) == 3
    # Records without their key cannot be compared: they pass.
    assert asyncio.run(walk([{"v": 1}], [{"v": 1}])) == 2
    with pytest.raises(ReplyCheckFailed, match="repeats the previous"):
        asyncio.run(walk(records(1, 2), records(1, 2)))
    with pytest.raises(ReplyCheckFailed, match="on two pages"):
        asyncio.run(walk(records(1, 2), records(3, 1)))
    with pytest.raises(ReplyCheckFailed, match="on two pages"):
        asyncio.run(walk(records(1, 1)))
