"""The REST adapter: respx for the HTTP layer, the REST simulator for the whole path."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest
import respx
from starlette.testclient import TestClient

from adapters.base import AllOf, AnyOf, BackendError, Compare, Plan, SortKey, SourceSpecError
from adapters.rest import RestAdapter, RestOptions, RestSource, flatten
from gateway.app import create_app
from gateway.config import load_config
from simulators.rest_billing import create_app as create_simulator
from simulators.rest_billing import seed
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.misbehaving import late
from tests.raw_http import RawRequest, RawServer, reply
from tests.servers import ThreadedServer
from tests.test_on_demand import (
    bill_now_of,
    ident_of,
    request_bill,
    rest_accounts,
    wait_until_finished,
)
from tests.test_on_demand import rest_gateway as on_demand_gateway


@pytest.fixture
def http() -> Iterator[respx.MockRouter]:
    """respx in front of whichever transport the adapter uses (ours, by default)."""
    with respx.mock(using="httpx") as router:
        yield router


BASE = "http://billing.test"
SPEC = {
    "key": "id",
    "list": {
        "path": "/items",
        "records": "data",
        "total": "meta.total",
        "paging": {"style": "page", "page": "p", "size": "n", "first": 1, "max_size": 2},
        "filters": {"status": {"param": "st", "multiple": True}, "acct": {"param": "a"}},
        "sort": {"param": "order", "columns": ["id", "when"], "descending_prefix": "-"},
    },
    "get": {"path": "/items/{key}"},
    "update": {"method": "PATCH", "path": "/items/{key}"},
}
ITEMS = [{"id": f"i{n}", "status": "A" if n % 2 else "B", "nested": {"x": n}} for n in range(5)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_source(work: Any, spec: dict[str, Any] = SPEC, **options: Any) -> Any:
    adapter = RestAdapter("billing", RestOptions(base_url=BASE, **options))
    await adapter.open()
    try:
        return await work(await adapter.bind(spec))
    finally:
        await adapter.close()


def paged(request: httpx.Request) -> httpx.Response:
    page, size = int(request.url.params["p"]), int(request.url.params["n"])
    chunk = ITEMS[(page - 1) * size : page * size]
    return httpx.Response(200, json={"data": chunk, "meta": {"total": len(ITEMS)}})


def test_page_paging_windows_across_pages(http: respx.MockRouter) -> None:
    route = http.get(f"{BASE}/items").mock(side_effect=paged)
    page = run(with_source(lambda s: s.page(Plan(offset=1, limit=3))))
    assert [r["id"] for r in page.records] == ["i1", "i2", "i3"]
    assert page.total == 5
    assert [c.request.url.params["p"] for c in route.calls] == ["1", "2"]
    assert page.records[0]["nested.x"] == 1  # nested fields are flattened


@pytest.mark.parametrize(
    ("offset", "limit", "calls", "ids"),
    [
        (0, 2, [("1", "2")], ["i0", "i1"]),  # one page of exactly the limit
        (2, 2, [("2", "2")], ["i2", "i3"]),
        (3, 2, [("2", "3")], ["i3", "i4"]),  # a page of 3 starting at 3 holds both
        (1, 9, [("1", "10")], ["i1", "i2", "i3", "i4"]),  # no size fits: the largest
    ],
)
def test_pages_are_sized_to_the_window(
    http: respx.MockRouter, offset: int, limit: int, calls: list[Any], ids: list[str]
) -> None:
    route = http.get(f"{BASE}/items").mock(side_effect=paged)
    spec = copy.deepcopy(SPEC)
    spec["list"]["paging"]["max_size"] = 10
    page = run(with_source(lambda s: s.page(Plan(offset=offset, limit=limit)), spec))
    assert [r["id"] for r in page.records] == ids and page.total == 5
    assert [(c.request.url.params["p"], c.request.url.params["n"]) for c in route.calls] == calls


def test_offset_and_next_link_paging(http: respx.MockRouter) -> None:
    def by_offset(request: httpx.Request) -> httpx.Response:
        start, limit = int(request.url.params["from"]), int(request.url.params["max"])
        return httpx.Response(200, json={"rows": ITEMS[start : start + limit], "count": 5})

    http.get(f"{BASE}/off").mock(side_effect=by_offset)
    spec = {
        **SPEC,
        "list": {
            "path": "/off",
            "records": "rows",
            "total": "count",
            "paging": {"style": "offset", "offset": "from", "limit": "max", "max_size": 2},
        },
    }
    page = run(with_source(lambda s: s.page(Plan(offset=3, limit=5)), spec))
    assert [r["id"] for r in page.records] == ["i3", "i4"] and page.total == 5

    http.get(f"{BASE}/next").mock(
        return_value=httpx.Response(
            200, json={"rows": ITEMS[:3], "links": {"next": f"{BASE}/next2"}}
        )
    )
    http.get(f"{BASE}/next2").mock(
        return_value=httpx.Response(200, json={"rows": ITEMS[3:], "links": {"next": None}})
    )
    spec = {
        **SPEC,
        "list": {
            "path": "/next",
            "records": "rows",
            "paging": {"style": "next", "next": "links.next", "size": "n"},
        },
    }
    page = run(with_source(lambda s: s.page(Plan(offset=2, limit=2)), spec))
    assert [r["id"] for r in page.records] == ["i2", "i3"] and page.total == 5


def test_filters_and_sort_become_query_parameters(http: respx.MockRouter) -> None:
    route = http.get(f"{BASE}/items").mock(side_effect=paged)
    where = AnyOf((Compare("status", "eq", "A"), Compare("status", "eq", "B")))
    plan = Plan(where=where, order_by=(SortKey("when", True),), limit=1)
    run(with_source(lambda s: s.page(plan)))
    params = route.calls[0].request.url.params
    assert params["st"] == "A,B" and params["order"] == "-when,id"


def test_what_the_api_accepts() -> None:
    source = RestSource(RestAdapter("b", RestOptions(base_url=BASE)), SPEC)
    assert source.accepts(Compare("acct", "eq", "x"))
    assert source.accepts(AnyOf((Compare("status", "eq", "A"), Compare("status", "eq", "B"))))
    assert not source.accepts(AnyOf((Compare("acct", "eq", "x"), Compare("acct", "eq", "y"))))
    assert not source.accepts(Compare("status", "ne", "A"))
    assert not source.accepts(Compare("other", "eq", "A"))
    assert source.can_sort("when") and not source.can_sort("status")


def test_get_one_update_and_not_found(http: respx.MockRouter) -> None:
    http.get(f"{BASE}/items/i1").mock(return_value=httpx.Response(200, json=ITEMS[1]))
    http.get(f"{BASE}/items/zz").mock(return_value=httpx.Response(404, json={}))
    patch = http.patch(f"{BASE}/items/i1").mock(return_value=httpx.Response(200, json={}))
    http.patch(f"{BASE}/items/i2").mock(return_value=httpx.Response(409, json={}))

    async def work(source: RestSource) -> tuple[Any, ...]:
        return (
            await source.one(Compare("id", "eq", "i1")),
            await source.one(Compare("id", "eq", "zz")),
            await source.update(Compare("id", "eq", "i1"), {"status": "B"}, {"status": "A"}),
            await source.update(Compare("id", "eq", "i2"), {"status": "B"}, {"status": "A"}),
        )

    found, missing, written, conflict = run(with_source(work))
    assert found["nested.x"] == 1 and missing is None and (written, conflict) == (1, 0)
    assert patch.calls[0].request.content == b'{"status":"B","expected_status":"A"}'


# Values placed in URL paths: one percent-encoded segment each, never more path or a query.

AWKWARD_IDS = ["INV-1?status=PAID&x=", "../../admin/users", "a/b#c", "50% off", "é"]
ACTION = {"run": {"method": "POST", "path": "/accounts/{account_id}/bill-now", "result": "ref"}}


def test_path_values_are_encoded_as_one_segment(http: respx.MockRouter) -> None:
    """The exact URL httpx puts on the wire (respx sits where the transport would)."""
    got = http.get(url__startswith=f"{BASE}/items/").mock(
        return_value=httpx.Response(200, json={"id": "x"})
    )
    patched = http.patch(url__startswith=f"{BASE}/items/").mock(
        return_value=httpx.Response(200, json={})
    )
    billed = http.post(url__startswith=f"{BASE}/accounts/").mock(
        return_value=httpx.Response(200, json={"ref": "R1"})
    )

    async def work(source: RestSource) -> None:
        ident = "INV-1?status=PAID&x=/../y"
        await source.one(Compare("id", "eq", ident))
        await source.update(Compare("id", "eq", ident), {"status": "B"}, {})
        await source.adapter.action(ACTION).run({"account_id": ident})

    run(with_source(work))
    encoded = b"INV-1%3Fstatus%3DPAID%26x%3D%2F..%2Fy"
    assert got.calls[0].request.url.raw_path == b"/items/" + encoded
    assert patched.calls[0].request.url.raw_path == b"/items/" + encoded
    assert billed.calls[0].request.url.raw_path == b"/accounts/" + encoded + b"/bill-now"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_path_values_reach_a_loopback_back_end_as_one_segment(transport: str) -> None:
    async def answer(request: RawRequest) -> bytes:
        if request.method == "POST":
            return reply(b'{"ref": "R1"}')
        return reply(orjson.dumps({"id": unquote(request.target.rsplit("/", 1)[1])}))

    async def work() -> tuple[list[Any], list[str]]:
        async with RawServer(answer) as server:
            adapter = RestAdapter(
                "billing", RestOptions(base_url=server.url, http_transport=transport)
            )
            await adapter.open()
            try:
                source = await adapter.bind(SPEC)
                action = adapter.action(ACTION)
                outcomes: list[Any] = []
                for ident in AWKWARD_IDS:
                    outcomes.append(await source.one(Compare("id", "eq", ident)))
                    outcomes.append(await source.update(Compare("id", "eq", ident), {}, {}))
                    outcomes.append((await action.run({"account_id": ident})).value)
                for ident in ("..", ".", ""):  # no encoding keeps these from moving the path
                    outcomes.append(await source.one(Compare("id", "eq", ident)))
                    outcomes.append(await source.update(Compare("id", "eq", ident), {}, {}))
                    with pytest.raises(BackendError, match="cannot be a path segment"):
                        await action.run({"account_id": ident})
            finally:
                await adapter.close()
            return outcomes, [f"{r.method} {r.target}" for r in server.requests]

    outcomes, targets = run(work())
    expected: list[Any] = []
    for ident in AWKWARD_IDS:
        expected += [{"id": ident}, 1, "R1"]
    assert outcomes == expected + [None, 0] * 3
    assert len(targets) == 3 * len(AWKWARD_IDS)  # nothing was sent for "..", "." or ""
    for n, ident in enumerate(AWKWARD_IDS):
        for target, (method, before, after) in zip(
            targets[3 * n : 3 * n + 3],
            [("GET", "/items/", ""), ("PATCH", "/items/", ""), ("POST", "/accounts/", "/bill-now")],
            strict=True,
        ):
            verb, _, path = target.partition(" ")
            assert verb == method and "?" not in path and "#" not in path
            assert path.startswith(before) and path.endswith(after)
            segment = path[len(before) : len(path) - len(after)]
            assert "/" not in segment and unquote(segment) == ident


@pytest.mark.parametrize(
    ("reply", "status", "words"),
    [
        (httpx.Response(200, text="<html>oops</html>"), 502, "not JSON"),
        (httpx.Response(200, json={"data": {"id": 1}, "meta": {"total": 1}}), 502, "no list"),
        (httpx.Response(200, json={"data": [], "meta": {}}), 502, "no total"),
        (httpx.Response(500, json={"error": "x"}), 502, "answered 500"),
        (httpx.TimeoutException("slow"), 504, "no answer"),
        (httpx.ConnectError("refused"), 503, "refused"),
    ],
)
def test_bad_replies_are_backend_errors(
    http: respx.MockRouter, reply: Any, status: int, words: str
) -> None:
    http.get(f"{BASE}/items").mock(side_effect=[reply])
    with pytest.raises(BackendError) as info:
        run(with_source(lambda s: s.page(Plan(limit=1))))
    assert info.value.status == status and words in info.value.reason


def test_static_header_and_basic_auth(http: respx.MockRouter) -> None:
    route = http.get(f"{BASE}/items").mock(side_effect=paged)
    run(
        with_source(
            lambda s: s.page(Plan(limit=1)),
            auth={"type": "header", "name": "X-Api-Key", "value": "k1"},
        )
    )
    assert route.calls[-1].request.headers["X-Api-Key"] == "k1"
    run(
        with_source(
            lambda s: s.page(Plan(limit=1)),
            auth={"type": "basic", "username": "u", "password": "p"},
        )
    )
    assert route.calls[-1].request.headers["Authorization"].startswith("Basic ")


def test_oauth2_tokens_are_cached_and_refreshed_on_401(http: respx.MockRouter) -> None:
    tokens = iter(["t1", "t2"])
    token_route = http.post(f"{BASE}/token").mock(
        side_effect=lambda r: httpx.Response(
            200, json={"access_token": next(tokens), "expires_in": 300}
        )
    )
    seen: list[str] = []

    def items(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer t1" and len(seen) > 2:
            return httpx.Response(401, json={})  # t1 revoked after two calls
        return paged(request)

    http.get(f"{BASE}/items").mock(side_effect=items)
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": "/token",
        "client_id": "c",
        "client_secret": "s",
    }

    async def work(source: RestSource) -> None:
        for _ in range(4):
            await source.page(Plan(limit=1))

    run(with_source(work, auth=auth))
    assert seen == ["Bearer t1", "Bearer t1", "Bearer t1", "Bearer t2", "Bearer t2"]
    assert token_route.call_count == 2
    assert token_route.calls[0].request.headers["Authorization"].startswith("Basic ")


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "l": [{"x": {"y": 3}}], "s": [1]}) == {
        "a.b": 1,
        "a.c.d": 2,
        "l": [{"x.y": 3}],
        "s": [1],
    }


# The whole path: gateway -> REST adapter -> the REST simulator on loopback.

STATES = {
    "OPEN": "new",
    "ON_HOLD": "onHold",
    "APPROVED": "validated",
    "ISSUED": "sent",
    "PAID": "settled",
    "PART_PAID": "partiallyPaid",
}


@pytest.fixture
def rest_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    simulator = create_simulator(seed())
    with ThreadedServer(simulator) as server:
        monkeypatch.setenv("ENTERPRISE_URL", server.base)
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = tuned(load_config(ROOT / "config" / "rest.yaml"), worker={"poll_seconds": 0.05})
        with TestClient(create_app(config)) as client:
            client.simulator = simulator.state.data  # type: ignore[attr-defined]
            yield client


def test_reads_through_the_rest_back_end(rest_gateway: TestClient) -> None:
    data = rest_gateway.simulator
    invoices = sorted(data.invoices.values(), key=lambda i: i["invoice_id"])
    bills = fetch_all(rest_gateway, "customerBill")
    assert [b["id"] for b in bills] == [i["invoice_id"] for i in invoices]
    for bill in bills:
        assert_valid("CustomerBill", bill)
    first = invoices[0]
    bill = rest_gateway.get(f"{API}/customerBill/{first['invoice_id']}").json()
    assert bill["state"] == STATES[first["status"]]
    assert bill["amountDue"]["value"] == first["total_cents"] / 100
    assert bill["billingPeriod"]["startDateTime"].startswith(first["period"]["from"])
    assert rest_gateway.get(f"{API}/customerBill/EI-999999").status_code == 404


@pytest.mark.parametrize(
    ("params", "oracle"),
    [
        ("state=new,sent", lambda i: i["status"] in ("OPEN", "ISSUED")),
        ("billingAccount.id=ENT-0003", lambda i: i["account_id"] == "ENT-0003"),
        (
            "state=settled&billingAccount.id=ENT-0007",
            lambda i: i["status"] == "PAID" and i["account_id"] == "ENT-0007",
        ),
        ("amountDue.value.gt=10000", lambda i: i["total_cents"] > 1_000_000),  # residual
        ("billDate.gte=2024-10-01", lambda i: i["issued_on"] >= "2024-10-01"),  # residual
    ],
)
def test_filters_push_down_where_the_api_can(
    rest_gateway: TestClient, params: str, oracle: Any
) -> None:
    invoices = sorted(rest_gateway.simulator.invoices.values(), key=lambda i: i["invoice_id"])
    expected = [i["invoice_id"] for i in invoices if oracle(i)]
    assert 0 < len(expected) < len(invoices)
    got = fetch_all(rest_gateway, "customerBill", params)
    assert [b["id"] for b in got] == expected
    page = rest_gateway.get(f"{API}/customerBill?{params}&offset=1&limit=2")
    assert page.headers["X-Total-Count"] == str(len(expected))
    assert [b["id"] for b in page.json()] == expected[1:3]


def test_sort_and_paging_through_the_api(rest_gateway: TestClient) -> None:
    invoices = sorted(rest_gateway.simulator.invoices.values(), key=lambda i: i["invoice_id"])
    expected = [
        i["invoice_id"] for i in sorted(invoices, key=lambda i: i["issued_on"], reverse=True)
    ]
    pages = []
    for offset in range(0, len(invoices), 7):
        page = rest_gateway.get(f"{API}/customerBill?sort=-billDate&offset={offset}&limit=7")
        pages.extend(b["id"] for b in page.json())
    ranked = {i: n for n, i in enumerate(expected)}
    dates = {i["invoice_id"]: i["issued_on"] for i in invoices}
    assert sorted(pages) == sorted(expected)
    assert [dates[p] for p in pages] == sorted((dates[p] for p in pages), reverse=True)
    assert len(ranked) == len(pages)


def test_patch_and_bill_on_demand_through_the_rest_back_end(rest_gateway: TestClient) -> None:
    data = rest_gateway.simulator
    ident = next(i for i, v in sorted(data.invoices.items()) if v["status"] == "OPEN")
    response = rest_gateway.patch(
        f"{API}/customerBill/{ident}",
        json={"state": "onHold"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert data.invoices[ident]["status"] == "ON_HOLD"
    illegal = rest_gateway.patch(
        f"{API}/customerBill/{ident}",
        json={"state": "settled"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert illegal.status_code == 409

    account = next(a for a, cents in sorted(data.unbilled_cents.items()) if cents > 0)
    created = rest_gateway.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": account}}
    )
    assert created.status_code == 201, created.text
    for _ in range(200):
        request = rest_gateway.get(created.headers["Location"]).json()
        if request["state"] != "inProgress":
            break
        asyncio.run(asyncio.sleep(0.02))
    assert request["state"] == "done", request
    assert_valid("CustomerBillOnDemand", request)
    bill = rest_gateway.get(request["customerBill"]["href"]).json()
    assert_valid("CustomerBill", bill)
    assert bill["runType"] == "offCycle" and bill["billingAccount"]["id"] == account
    unknown = rest_gateway.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": "ENT-9999"}}
    )
    assert unknown.status_code == 400 and "unknown billing account" in unknown.json()["message"]


def test_a_record_that_does_not_fit_is_a_502(rest_gateway: TestClient) -> None:
    data = rest_gateway.simulator
    ident = sorted(data.invoices)[0]
    broken = copy.deepcopy(data.invoices[ident])
    broken["total_cents"] = "lots"
    data.invoices[ident] = broken
    response = rest_gateway.get(f"{API}/customerBill/{ident}")
    assert response.status_code == 502
    assert_valid("Error", response.json())
    assert "enterprise" in response.json()["message"]
    assert "amountDue.value" in response.json()["message"]


def test_a_bill_now_answered_after_the_timeout_ends_done_with_the_bill_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service takes 6 s (timeout 5 s) but made the bill: the bundled action's `find:`
    looks it up by the request's reference, so the request is `done` with it, at once."""
    with on_demand_gateway(tmp_path, monkeypatch, timeout=5.0) as (client, back_end, data):
        back_end.on(bill_now_of(), late(6.0))
        (account,) = rest_accounts(data, 1)
        invoices_before = len(data.invoices)
        href = request_bill(client, account)
        done = wait_until_finished(client.get, href, 20)
        assert done["state"] == "done", done
        assert done["customerBill"]["id"] == data.references[ident_of(href)]
        assert len(data.invoices) == invoices_before + 1
        bill_nows = [c for c in back_end.calls if bill_now_of()(c)]
        lookups = [c for c in back_end.calls if "/bill-now-references/" in c.path]
        assert len(bill_nows) == 1 and len(lookups) == 1  # found, not made again
        bill = client.get(done["customerBill"]["href"])
        assert bill.status_code == 200 and bill.json()["billingAccount"]["id"] == account
        assert_valid("CustomerBill", bill.json())


def test_the_simulators_reference_lookup() -> None:
    """What the action's `find:` asks: 404 before the bill is made, its invoice after."""
    simulator = TestClient(create_simulator(seed()))
    token = simulator.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=("gateway", "s3cret"),
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert simulator.get("/api/v1/bill-now-references/r-1", headers=headers).status_code == 404
    made = simulator.post(
        "/api/v1/accounts/ENT-0001/bill-now", json={"reference": "r-1"}, headers=headers
    )
    assert made.status_code == 201
    found = simulator.get("/api/v1/bill-now-references/r-1", headers=headers)
    assert found.json()["invoice_id"] == made.json()["invoice_id"]


def test_charges_and_bill_runs_through_the_rest_back_end(rest_gateway: TestClient) -> None:
    """The REST example config serves all three resources; filters agree with the data."""
    data = rest_gateway.simulator  # type: ignore[attr-defined]
    rates = fetch_all(rest_gateway, "appliedCustomerBillingRate")
    assert [r["id"] for r in rates] == sorted(data.charges)
    for rate in rates:
        assert_valid("AppliedCustomerBillingRate", rate)
    charge = data.charges["CH-000003"]
    one = rest_gateway.get(f"{API}/appliedCustomerBillingRate/CH-000003").json()
    assert one["bill"]["id"] == charge["invoice_id"] and one["isBilled"] is True
    net, tax = charge["net_cents"], charge["tax"]["amount_cents"]
    assert one["taxIncludedAmount"]["value"] == (net + tax) / 100
    cases = [
        ("isBilled=false", lambda c: not c["billed"]),
        ("billingAccount.id=ENT-0002", lambda c: c["account_id"] == "ENT-0002"),
        ("bill.id=EI-000007", lambda c: c["invoice_id"] == "EI-000007"),
    ]
    for params, oracle in cases:
        expected = sorted(ident for ident, c in data.charges.items() if oracle(c))
        assert 0 < len(expected) < len(data.charges), params
        found = fetch_all(rest_gateway, "appliedCustomerBillingRate", params)
        assert [r["id"] for r in found] == expected, params
    by_date = fetch_all(rest_gateway, "appliedCustomerBillingRate", "sort=-date")
    dates = [r["date"] for r in by_date]
    assert dates == sorted(dates, reverse=True)
    cycles = fetch_all(rest_gateway, "billCycle", "sort=-billingDate")
    assert [c["id"] for c in cycles] == sorted(data.runs, reverse=True)
    for cycle in cycles:
        assert_valid("BillCycle", cycle)
    march = fetch_all(rest_gateway, "billCycle", "name=ENT-2024-03")
    assert [c["id"] for c in march] == ["BR-202403"]
    assert rest_gateway.get(f"{API}/billCycle/BR-209901").status_code == 404


def _listing(path: str, paging: dict[str, Any], total: str | None = None) -> dict[str, Any]:
    listing: dict[str, Any] = {"path": path, "records": "rows", "paging": paging}
    if total is not None:
        listing["total"] = total
    return {"key": "id", "list": listing}


def test_offset_paging_without_a_total_counts_by_reading_through(
    http: respx.MockRouter,
) -> None:
    def by_offset(request: httpx.Request) -> httpx.Response:
        start, limit = int(request.url.params["from"]), int(request.url.params["max"])
        return httpx.Response(200, json={"rows": ITEMS[start : start + min(limit, 2)]})

    route = http.get(f"{BASE}/off").mock(side_effect=by_offset)  # serves 2 at most
    spec = _listing("/off", {"style": "offset", "offset": "from", "limit": "max", "max_size": 4})
    page = run(with_source(lambda s: s.page(Plan(offset=3, limit=1)), spec))
    assert [r["id"] for r in page.records] == ["i3"] and page.total == 5
    offsets = [c.request.url.params["from"] for c in route.calls]
    assert offsets == ["0", "2", "4", "5"]  # short pages are not the end: the empty one is


def test_a_page_api_capping_its_pages_is_an_error_not_a_short_answer(
    http: respx.MockRouter,
) -> None:
    def capped(request: httpx.Request) -> httpx.Response:
        page, size = int(request.url.params["p"]), min(int(request.url.params["n"]), 2)
        return httpx.Response(200, json={"rows": ITEMS[(page - 1) * size : page * size]})

    http.get(f"{BASE}/capped").mock(side_effect=capped)
    spec = _listing("/capped", {"style": "page", "page": "p", "size": "n", "max_size": 4})
    with pytest.raises(BackendError, match="set max_size to at most 2"):
        run(with_source(lambda s: s.page(Plan()), spec))


def test_a_total_the_pages_do_not_hold_is_an_error(http: respx.MockRouter) -> None:
    def lying(request: httpx.Request) -> httpx.Response:
        start, limit = int(request.url.params["o"]), int(request.url.params["l"])
        return httpx.Response(200, json={"rows": ITEMS[:2][start : start + limit], "count": 9})

    http.get(f"{BASE}/lying").mock(side_effect=lying)
    spec = _listing(
        "/lying", {"style": "offset", "offset": "o", "limit": "l", "max_size": 2}, "count"
    )
    with pytest.raises(BackendError, match="its total says 9 records"):
        run(with_source(lambda s: s.page(Plan(offset=0, limit=5)), spec))


@pytest.mark.parametrize(
    ("paging", "reason"),
    [
        ({"style": "next", "next": "links.next"}, "name the page size's parameter"),
        ({"style": "cursor", "size": "limit"}, "cursor paging needs cursor"),
        ({"style": "sideways", "size": "n"}, "give the style"),
        ({"style": "page", "size": "n", "cursor": "x"}, "unknown key(s) ['cursor']"),
    ],
)
def test_paging_blocks_are_checked_at_start_up(paging: dict[str, Any], reason: str) -> None:
    adapter = RestAdapter("b", RestOptions(base_url=BASE))
    with pytest.raises(SourceSpecError, match=re.escape(reason)):
        RestSource(adapter, _listing("/x", paging))


def test_range_filters_in_the_apis_own_syntax() -> None:
    spec = _listing("/x", {"style": "page", "size": "n"})
    spec["list"]["filters"] = {
        "created": {"ranges": "bracket"},
        "amount": {"param": "amount", "ranges": "suffix"},
        "issued": {"ranges": {"gte": "from", "lte": "to"}},
    }
    source = RestSource(RestAdapter("b", RestOptions(base_url=BASE)), spec)
    where = AllOf(
        (
            Compare("created", "gte", 1700000000),
            Compare("created", "lt", 1800000000),
            Compare("amount", "gt", 1000),
            Compare("amount", "eq", 7),
            Compare("issued", "lte", "2024-05-01"),
        )
    )
    assert source.list_filters.query(where) == {
        "created[gte]": "1700000000",
        "created[lt]": "1800000000",
        "amount_gt": "1000",
        "amount": "7",
        "to": "2024-05-01",
    }
    assert not source.accepts(Compare("issued", "gt", "2024-05-01"))  # no parameter for it
    assert not source.accepts(
        AllOf((Compare("created", "gte", 1), Compare("created", "gte", 2)))
    )  # the same parameter twice
