"""A Stripe-like SaaS billing API by YAML alone (config/saas_rest.yaml), against the project's
own simulator on a loopback socket: every list, filter, sort and deep offset is held to the
simulator's own data (totals included), with enough invoices that several cursor pages
are walked for each answer."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.base import BackendError, Compare, Plan, QueryRefused
from adapters.rest import RestAdapter, RestOptions
from gateway.app import create_app
from gateway.config import GatewayConfig, load_config
from gateway.services import StartupError
from mappings.transforms import build_transform
from simulators.saas_billing import API_KEY, SaasData, newest_first, seed
from simulators.saas_billing import create_app as create_simulator
from tests.conftest import API, ROOT, assert_valid, tuned
from tests.servers import ThreadedServer
from tests.test_on_demand import ident_of, request_bill, wait_until_finished

INVOICES = 260  # three cursor pages of 100
STATES = {
    "draft": "new",
    "open": "sent",
    "paid": "settled",
    "uncollectible": "onHold",
    "void": "onHold",
}
SAAS_CONFIG = ROOT / "config" / "saas_rest.yaml"
MAPPINGS = ROOT / "mappings" / "saas_rest"


def instant(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def money(currency: str, cents: int) -> dict[str, Any]:
    return {"unit": currency.upper(), "value": cents / 100}


def expected_bill(invoice: dict[str, Any]) -> dict[str, Any]:
    """The TMF bill of a simulator invoice, worked out here from the invoice itself."""
    cur = invoice["currency"]
    bill: dict[str, Any] = {
        "id": invoice["id"],
        "billNo": invoice["number"],
        "billDate": instant(invoice["created"]),
        "paymentDueDate": instant(invoice["due_date"]),
        "state": STATES[invoice["status"]],
        "runType": "onCycle" if invoice["billing_reason"] == "subscription_cycle" else "offCycle",
        "category": invoice["collection_method"],
        "amountDue": money(cur, invoice["amount_due"]),
        "remainingAmount": money(cur, invoice["amount_remaining"]),
        "taxExcludedAmount": money(cur, invoice["subtotal"]),
        "taxIncludedAmount": money(cur, invoice["total"]),
        "billingAccount": {"@type": "BillingAccountRef", "id": invoice["customer"]},
        "billingPeriod": {
            "startDateTime": instant(invoice["period_start"]),
            "endDateTime": instant(invoice["period_end"]),
        },
        "billDocument": [
            {
                "@type": "AttachmentRef",
                "id": invoice["id"],
                "name": "invoice.pdf",
                "url": invoice["invoice_pdf"],
            }
        ],
        "taxItem": [
            {
                "@type": "TaxItem",
                "taxCategory": tax["label"],
                "taxRate": float(tax["percentage"]),
                "taxAmount": money(cur, tax["amount"]),
            }
            for tax in invoice["total_tax_amounts"]
        ],
    }
    return {k: v for k, v in bill.items() if v is not None}


@contextmanager
def saas_gateway(
    tmp_path: Path,
    data: SaasData | None = None,
    *,
    config_file: Path = SAAS_CONFIG,
    api_key: str = API_KEY,
    adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
) -> Iterator[tuple[TestClient, SaasData]]:
    data = data if data is not None else seed(INVOICES)
    with ThreadedServer(create_simulator(data)) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("SAAS_URL", server.base)
        env.setenv("SAAS_API_KEY", api_key)
        env.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = tuned(load_config(config_file), worker={"poll_seconds": 0.05})
        if adjust is not None:
            config = adjust(config)
        with TestClient(create_app(config)) as client:
            yield client, data


@pytest.fixture(scope="module")
def saas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, SaasData]]:
    """A gateway over an untouched simulator (reads only)."""
    with saas_gateway(tmp_path_factory.mktemp("saas")) as running:
        yield running


def listed(client: TestClient, query: str) -> tuple[list[dict[str, Any]], int]:
    """One list call: its items (each valid against the OAS) and its X-Total-Count."""
    response = client.get(f"{API}/customerBill?{query}")
    assert response.status_code == 200, response.text
    items = response.json()
    for item in items:
        assert_valid("CustomerBill", item)
    assert int(response.headers["X-Result-Count"]) == len(items)
    return items, int(response.headers["X-Total-Count"])


def test_every_bill_as_the_simulator_holds_it(saas: tuple[TestClient, SaasData]) -> None:
    client, data = saas
    truth = newest_first(data)
    bills, total = listed(client, "limit=1000")
    assert total == INVOICES
    assert len(bills) == INVOICES
    for bill, invoice in zip(bills, truth, strict=True):
        served = {k: v for k, v in bill.items() if k not in ("href", "@type")}
        assert served == expected_bill(invoice)
    one = client.get(f"{API}/customerBill/{truth[7]['id']}")
    assert one.status_code == 200
    assert_valid("CustomerBill", one.json())
    assert {k: v for k, v in one.json().items() if k not in ("href", "@type")} == expected_bill(
        truth[7]
    )
    missing = client.get(f"{API}/customerBill/in_999999")
    assert missing.status_code == 404
    assert_valid("Error", missing.json())


def _day(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


FILTERS: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
    ("state=onHold", lambda i: i["status"] in ("void", "uncollectible")),
    ("state=settled", lambda i: i["status"] == "paid"),
    ("state=new,sent", lambda i: i["status"] in ("draft", "open")),
    ("state!=onHold" if False else "state.ne=onHold", lambda i: STATES[i["status"]] != "onHold"),
    ("billingAccount.id=cus_0003", lambda i: i["customer"] == "cus_0003"),
    ("billDate.gte=2024-06-01", lambda i: i["created"] >= _day("2024-06-01")),
    ("billDate.lt=2024-03-15T12:00:00Z", lambda i: i["created"] < _day("2024-03-15T12:00:00")),
    (
        "billDate.gt=2024-02-01&billDate.lte=2024-09-30",
        lambda i: _day("2024-02-01") < i["created"] <= _day("2024-09-30"),
    ),
    (
        "paymentDueDate.gte=2024-10-01",
        lambda i: i["due_date"] is not None and i["due_date"] >= _day("2024-10-01"),
    ),
    ("taxIncludedAmount.value.gt=500", lambda i: i["total"] > 50_000),
    ("taxIncludedAmount.value.lte=123.45", lambda i: i["total"] <= 12_345),
    ("amountDue.value.gte=800.5", lambda i: i["amount_due"] >= 80_050),  # by the gateway
    ("amountDue.unit=GBP", lambda i: i["currency"] == "gbp"),
    ("amountDue.unit=gbp", lambda i: False),  # served upper-case only
    ("category=send_invoice", lambda i: i["collection_method"] == "send_invoice"),
    ("billNo=INV-000042", lambda i: i["number"] == "INV-000042"),
    ("taxItem.taxRate=20", lambda i: i["currency"] == "gbp"),
    (
        "state=onHold&billDate.gte=2024-05-01&billingAccount.id=cus_0007",
        lambda i: (
            i["status"] in ("void", "uncollectible")
            and i["created"] >= _day("2024-05-01")
            and i["customer"] == "cus_0007"
        ),
    ),
]


@pytest.mark.parametrize(("query", "oracle"), FILTERS, ids=[q for q, _ in FILTERS])
@pytest.mark.parametrize("window", ["", "offset=3&limit=7", "offset=90&limit=30"])
def test_filters_against_the_simulator(
    saas: tuple[TestClient, SaasData],
    query: str,
    oracle: Callable[[dict[str, Any]], bool],
    window: str,
) -> None:
    client, data = saas
    truth = [i["id"] for i in newest_first(data) if oracle(i)]
    items, total = listed(client, f"{query}&{window or 'limit=1000'}")
    assert total == len(truth)
    offset, limit = (3, 7) if window.startswith("offset=3") else (90, 30) if window else (0, 1000)
    assert [b["id"] for b in items] == truth[offset : offset + limit]


def test_filters_go_down_in_the_apis_own_syntax(saas: tuple[TestClient, SaasData]) -> None:
    client, data = saas
    before = len(data.calls)
    listed(client, "state=onHold&billDate.gte=2024-06-01&taxIncludedAmount.value.lt=100.5")
    sent = data.calls[before:]
    assert sent, "no back-end call"
    params = parse_qs(urlsplit(sent[0].split(" ", 1)[1]).query)
    assert params == {
        "status": ["uncollectible,void"],  # onHold is either: one OR, as the API takes it
        "created[gte]": [str(_day("2024-06-01"))],  # a date-time as unix seconds
        "total[lt]": ["10050"],  # a decimal as minor units
        "limit": ["100"],
    }


SORTS: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    ("-amountDue.value", lambda i: i["amount_due"], True),
    ("amountDue.value", lambda i: i["amount_due"], False),
    ("billDate", lambda i: i["created"], False),
    ("-billDate", lambda i: i["created"], True),
    ("billNo", lambda i: i["number"] or "", False),
]


@pytest.mark.parametrize(("sort", "key", "descending"), SORTS, ids=[s for s, _, _ in SORTS])
def test_sorts_against_the_simulator(
    saas: tuple[TestClient, SaasData],
    sort: str,
    key: Callable[[dict[str, Any]], Any],
    descending: bool,
) -> None:
    client, data = saas
    truth = newest_first(data)
    if sort == "billNo":  # bills without a number sort last (the attribute is absent)
        numbered = sorted((i for i in truth if i["number"]), key=key)
        expected = [i["id"] for i in numbered]
        items, total = listed(client, f"sort={sort}&limit=1000")
        assert [b["id"] for b in items][: len(expected)] == expected and total == INVOICES
        return
    ordered = sorted(truth, key=key, reverse=descending)
    items, total = listed(client, f"sort={sort}&offset=40&limit=25")
    assert total == INVOICES
    assert [key(i) for i in ordered[40:65]] == [
        key(data.invoices[b["id"]]) for b in items
    ]  # values, so ties in any order agree
    top, _ = listed(client, f"sort={sort}&limit=3")
    assert [key(data.invoices[b["id"]]) for b in top] == [key(i) for i in ordered[:3]]


@pytest.mark.parametrize(
    ("offset", "limit"), [(0, 1), (99, 2), (150, 10), (199, 3), (255, 10), (259, 1), (300, 5)]
)
def test_deep_offsets_and_bounded_calls(
    saas: tuple[TestClient, SaasData], offset: int, limit: int
) -> None:
    client, data = saas
    truth = [i["id"] for i in newest_first(data)]
    before = len(data.calls)
    items, total = listed(client, f"offset={offset}&limit={limit}")
    assert total == INVOICES
    assert [b["id"] for b in items] == truth[offset : offset + limit]
    # No totals: counting walks the list, in pages of 100 — three calls, never more.
    assert len(data.calls) - before == 3


def test_rates_from_the_nested_invoice_lines(saas: tuple[TestClient, SaasData]) -> None:
    client, data = saas
    lines = [(line, invoice) for invoice in newest_first(data) for line in invoice["lines"]["data"]]
    response = client.get(f"{API}/appliedCustomerBillingRate?limit=1000")
    assert response.status_code == 200
    rates = response.json()
    assert int(response.headers["X-Total-Count"]) == len(lines)
    for rate, (line, invoice) in zip(rates, lines, strict=True):
        assert_valid("AppliedCustomerBillingRate", rate)
        assert rate["id"] == line["id"]
        assert rate["bill"]["id"] == invoice["id"]
        assert rate["bill"]["href"].endswith(f"/customerBill/{invoice['id']}")
        assert rate["billingAccount"]["id"] == invoice["customer"]
        assert rate["taxExcludedAmount"] == money(line["currency"], line["amount"])
        tax = line["tax_amounts"][0]
        assert rate["appliedTax"][0]["taxAmount"] == money(invoice["currency"], tax["amount"])
        assert rate["periodCoverage"]["startDateTime"] == instant(line["period"]["start"])
    wanted = newest_first(data)[11]
    before = len(data.calls)
    of_bill = client.get(f"{API}/appliedCustomerBillingRate?bill.id={wanted['id']}").json()
    assert [r["id"] for r in of_bill] == [line["id"] for line in wanted["lines"]["data"]]
    assert data.calls[before:] == [f"GET /v1/invoices/{wanted['id']}"]  # the invoice's get
    of_customer = client.get(
        f"{API}/appliedCustomerBillingRate?billingAccount.id=cus_0004&limit=1000"
    ).json()
    assert [r["id"] for r in of_customer] == [
        line["id"] for line, invoice in lines if invoice["customer"] == "cus_0004"
    ]
    line = lines[201][0]
    one = client.get(f"{API}/appliedCustomerBillingRate/{line['id']}")
    assert one.status_code == 200 and one.json()["id"] == line["id"]
    assert client.get(f"{API}/appliedCustomerBillingRate/il_999999_1").status_code == 404


def test_a_list_past_the_walk_budget_is_refused(tmp_path: Path) -> None:
    def small_budget(config: GatewayConfig) -> GatewayConfig:
        backend = config.backends["saas"].model_copy(update={"list_walk_budget": 120})
        return config.model_copy(update={"backends": {"saas": backend}})

    with saas_gateway(tmp_path, adjust=small_budget) as (client, data):
        before = len(data.calls)
        refused = client.get(f"{API}/customerBill?limit=5")
        assert refused.status_code == 400, refused.text
        assert_valid("Error", refused.json())
        assert "120 records" in refused.json()["message"]
        assert len(data.calls) - before == 2  # stopped at the budget, not at the end
        narrowed, total = listed(client, "billingAccount.id=cus_0002&limit=5")
        assert total == sum(1 for i in data.invoices.values() if i["customer"] == "cus_0002")
        assert len(narrowed) == min(5, total)


def _loop_config(tmp_path: Path, paging: dict[str, Any]) -> Path:
    """config/saas_rest.yaml with the bills' paging block replaced."""
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    bill_file = mappings / "customer_bill.yaml"
    spec = yaml.safe_load(bill_file.read_text())
    spec["source"]["list"]["paging"] = paging
    bill_file.write_text(yaml.safe_dump(spec))
    config = (
        SAAS_CONFIG.read_text()
        .replace("../mappings/saas_rest/", f"{mappings}/")
        .replace("../mappings/", f"{ROOT / 'mappings'}/")
    )
    path = tmp_path / "saas.yaml"
    path.write_text(config)
    return path


def test_a_next_link_to_the_list_itself_ends_at_once(tmp_path: Path) -> None:
    """`next: url` names the list's own URL: the same link twice is a loop, a 502 at once."""
    config = _loop_config(
        tmp_path, {"style": "next", "next": "url", "size": "limit", "max_size": 100}
    )
    with saas_gateway(tmp_path, config_file=config) as (client, data):
        before = len(data.calls)
        looped = client.get(f"{API}/customerBill?limit=5")
        assert looped.status_code == 502
        assert_valid("Error", looped.json())
        assert "'saas'" in looped.json()["message"] and "loop" in looped.json()["message"]
        assert len(data.calls) - before == 1


def test_a_cursor_the_back_end_ignores_ends_after_two_calls(tmp_path: Path) -> None:
    """A back end that answers every page with the first one (it ignores the cursor)."""
    calls: list[str] = []

    async def same_page(request: Request) -> JSONResponse:
        calls.append(str(request.url))
        rows = [{"id": f"in_{n}", "status": "open"} for n in range(3)]
        return JSONResponse({"data": rows, "has_more": True})

    app = Starlette(routes=[Route("/v1/invoices", same_page)])
    spec = {
        "key": "id",
        "list": {
            "path": "/v1/invoices",
            "records": "data",
            "paging": {
                "style": "cursor",
                "cursor": "starting_after",
                "size": "limit",
                "has_more": "has_more",
                "cursor_from": "id",
            },
        },
    }

    async def work(base: str) -> None:
        adapter = RestAdapter("looping", RestOptions(base_url=base))
        await adapter.open()
        try:
            source = await adapter.bind(spec)
            with pytest.raises(BackendError, match="'looping': paging loop"):
                await source.page(Plan(limit=5))
        finally:
            await adapter.close()

    with ThreadedServer(app) as server:
        asyncio.run(work(server.base))
    assert len(calls) == 2
    assert "starting_after=in_2" in calls[1]


def test_state_changes_are_the_apis_own_calls(tmp_path: Path) -> None:
    with saas_gateway(tmp_path) as (client, data):
        opened = [i for i in newest_first(data) if i["status"] == "open"]
        first, second = opened[0], opened[1]
        before = len(data.calls)
        paid = client.patch(
            f"{API}/customerBill/{first['id']}",
            json={"state": "settled"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert paid.status_code == 200, paid.text
        assert_valid("CustomerBill", paid.json())
        assert paid.json()["state"] == "settled"
        assert paid.json()["remainingAmount"]["value"] == 0
        assert data.invoices[first["id"]]["status"] == "paid"
        assert f"POST /v1/invoices/{first['id']}/pay" in data.calls[before:]
        assert any(key.endswith(f"{first['id']}-pay") for key in data.idempotent)

        held = client.patch(
            f"{API}/customerBill/{second['id']}",
            json={"state": "onHold"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert held.status_code == 200 and data.invoices[second["id"]]["status"] == (
            "uncollectible"
        )

        # A void bill cannot be finalized: the back end says so, in words the caller reads.
        void = next(i for i in newest_first(data) if i["status"] == "void")
        refused = client.patch(
            f"{API}/customerBill/{void['id']}",
            json={"state": "sent"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert refused.status_code == 409, refused.text
        assert_valid("Error", refused.json())
        assert "You cannot finalize an invoice that is void" in refused.json()["message"]
        assert data.invoices[void["id"]]["status"] == "void"

        # No call makes a bill new again.
        back = client.patch(
            f"{API}/customerBill/{second['id']}",
            json={"state": "new"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert back.status_code == 422, back.text
        assert_valid("Error", back.json())


def test_a_bill_on_demand_is_created_then_finalized_once(tmp_path: Path) -> None:
    with saas_gateway(tmp_path) as (client, data):
        customer = next(c for c, pending in data.pending.items() if pending)
        amounts = list(data.pending[customer])
        count = len(data.invoices)
        href = request_bill(client, customer)
        done = wait_until_finished(client.get, href)
        assert done["state"] == "done", done
        made = [i for i in data.invoices.values() if i["billing_reason"] == "manual"]
        assert len(made) == 1 and len(data.invoices) == count + 1
        invoice = made[0]
        assert invoice["status"] == "open" and invoice["customer"] == customer
        assert [line["amount"] for line in invoice["lines"]["data"]] == amounts
        assert done["customerBill"]["id"] == invoice["id"]
        bill = client.get(f"{API}/customerBill/{invoice['id']}").json()
        assert bill["state"] == "sent" and bill["runType"] == "offCycle"
        request_id = ident_of(href)
        assert f"{request_id}-create" in data.idempotent

        # The same request's steps run again (a retry after a lost answer): nothing new.
        async def again() -> Any:
            adapter = RestAdapter(
                "saas",
                RestOptions(
                    base_url=os.environ["SAAS_URL"],
                    auth={"type": "bearer", "token": API_KEY},
                    error_message="error.message",
                ),
            )
            await adapter.open()
            try:
                action_spec = yaml.safe_load((MAPPINGS / "actions" / "bill_now.yaml").read_text())
                action_spec.pop("find", None)
                return await adapter.action(action_spec).run(
                    {"request_id": request_id, "account_id": customer}
                )
            finally:
                await adapter.close()

        result = asyncio.run(again())
        assert result.outcome == "done" and result.value == invoice["id"]
        assert len(data.invoices) == count + 1
        assert data.invoices[invoice["id"]]["status"] == "open"


def test_a_wrong_api_key_is_found_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), saas_gateway(tmp_path, api_key="sk_wrong") as (client, _):
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["backends"]["saas"]["lastError"] == "credentials refused (401)"
    with saas_gateway(tmp_path) as (client, _):
        assert client.get("/ready").status_code == 200


def test_the_back_ends_own_error_message_reaches_log_and_caller(tmp_path: Path) -> None:
    """A filter parameter the API does not know: its 400 says so, in its own words."""
    config = _loop_config(
        tmp_path,
        {
            "style": "cursor",
            "cursor": "starting_after",
            "size": "limit",
            "has_more": "has_more",
            "cursor_from": "id",
        },
    )
    bill_file = tmp_path / "mappings" / "customer_bill.yaml"
    spec = yaml.safe_load(bill_file.read_text())
    spec["source"]["list"]["filters"]["number"] = {"param": "number"}
    bill_file.write_text(yaml.safe_dump(spec))
    with saas_gateway(tmp_path, config_file=config) as (client, _):
        failed = client.get(f"{API}/customerBill?billNo=INV-000001")
        assert failed.status_code == 502
        assert_valid("Error", failed.json())
        assert "Received unknown parameter: number" in failed.json()["message"]


def test_writes_without_a_way_to_write_stop_start_up(tmp_path: Path) -> None:
    config = _loop_config(
        tmp_path,
        {
            "style": "cursor",
            "cursor": "starting_after",
            "size": "limit",
            "has_more": "has_more",
            "cursor_from": "id",
        },
    )
    bill_file = tmp_path / "mappings" / "customer_bill.yaml"
    spec = yaml.safe_load(bill_file.read_text())
    del spec["source"]["update"]
    bill_file.write_text(yaml.safe_dump(spec))
    with (
        pytest.raises(StartupError, match="no way to write status"),
        saas_gateway(tmp_path, config_file=config),
    ):
        pass


def test_unix_time_case_and_chained_transforms() -> None:
    seconds = build_transform("unix_seconds")
    assert seconds.to_tmf(1714521600) == "2024-05-01T00:00:00+00:00"
    since = datetime(2024, 5, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert seconds.condition("created", "gte", since) == Compare("created", "gt", 1714521600)
    assert seconds.condition("created", "lt", since) == Compare("created", "lte", 1714521600)
    millis = build_transform({"unix_milliseconds": {"zone": "Europe/Berlin"}})
    assert millis.to_tmf(1714521600123) == "2024-05-01T02:00:00.123000+02:00"
    assert millis.condition("at", "gte", since) == Compare("at", "gte", 1714521600500)
    upper = build_transform("upper")
    assert upper.to_tmf("usd") == "USD" and upper.to_raw("USD") == "usd"
    assert upper.condition("currency", "eq", "USD") == Compare("currency", "eq", "usd")
    chained = build_transform([{"minor_units": 2}, "identity"])
    assert chained.to_tmf(1234) == 12.34 and chained.to_raw(Decimal("12.34")) == 1234


def test_query_refused_is_not_a_back_end_failure() -> None:
    refused = QueryRefused("log text", "caller text")
    assert not isinstance(refused, BackendError) and refused.status == 400
