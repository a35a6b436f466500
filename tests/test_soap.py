"""The SOAP adapter: zeep over respx for failure modes, the SOAP simulator end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from adapters.base import ActionResult, BackendError, BackendReplyError, Compare, Plan
from adapters.soap import FAULT_SUMMARY_CHARS, SoapAdapter, SoapFault, SoapOptions, SoapSource
from gateway.app import create_app
from gateway.config import load_config
from simulators.soap_billing import WSDL, seed
from simulators.soap_billing import create_app as create_simulator
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.misbehaving import done_but_answers, late
from tests.servers import ThreadedServer
from tests.test_on_demand import ident_of, request_bill, soap_bill_now, wait_until_finished
from tests.test_on_demand import soap_gateway as on_demand_gateway

HOST = "http://soap.test"
SOURCE = {
    "key": "invoiceRef",
    "list": {
        "operation": "ListInvoices",
        "request": {"fromIndex": "{offset}", "maxRecords": "{limit}"},
        "records": "invoice",
        "total": "totalCount",
        "max_records": 2,
        "filters": {"statusWord": {"element": "statusWord", "multiple": True}},
    },
    "get": {
        "operation": "GetInvoice",
        "request": {"invoiceRef": "{key}"},
        "not_found_fault": "NotFound",
    },
}
ENVELOPE = (
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    "<s:Body>{}</s:Body></s:Envelope>"
)


def reply_with(body: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, text=ENVELOPE.format(body), headers={"Content-Type": "text/xml"})


async def with_source(work: Any) -> Any:
    adapter = SoapAdapter("consumer", SoapOptions(wsdl=f"{HOST}/billing.wsdl", timeout_seconds=2))
    await adapter.open()
    try:
        return await work(await adapter.bind(SOURCE))
    finally:
        await adapter.close()


@pytest.fixture
def soap_mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, using="httpx") as router:
        wsdl = WSDL.read_text().replace("http://127.0.0.1:8702/soap", f"{HOST}/soap")
        router.get(f"{HOST}/billing.wsdl").mock(return_value=httpx.Response(200, text=wsdl))
        yield router


def test_list_replies_become_flat_records_and_requests_follow_the_wsdl(
    soap_mock: respx.MockRouter,
) -> None:
    invoice = "<invoice><invoiceRef>C-{0}</invoiceRef><statusWord>HELD</statusWord></invoice>"
    pages = iter(
        [
            reply_with(f"<R><totalCount>3</totalCount>{invoice.format(1)}{invoice.format(2)}</R>"),
            reply_with(f"<R><totalCount>3</totalCount>{invoice.format(3)}</R>"),
        ]
    )
    route = soap_mock.post(f"{HOST}/soap").mock(side_effect=lambda r: next(pages))
    where = Compare("statusWord", "eq", "HELD")
    page = asyncio.run(with_source(lambda s: s.page(Plan(where=where, limit=10))))
    assert [r["invoiceRef"] for r in page.records] == ["C-1", "C-2", "C-3"]
    assert page.total == 3
    first = route.calls[0].request.content.decode()
    assert "<ns0:statusWord>HELD</ns0:statusWord>" in first and "ListInvoices" in first
    assert "<ns0:fromIndex>0</ns0:fromIndex>" in first


@pytest.mark.parametrize(
    ("reply", "status", "words"),
    [
        (httpx.Response(200, text="<not-xml"), 502, "not XML"),
        (reply_with("<R><count>1</count></R>"), 502, "no number at 'totalCount'"),
        (
            reply_with(
                "<s:Fault><faultcode>s:Server</faultcode><faultstring>db down</faultstring>"
                "</s:Fault>",
                500,
            ),
            502,
            "db down",
        ),
        (httpx.TimeoutException("slow"), 504, "timed out"),
        (httpx.ConnectError("refused"), 503, "refused"),
    ],
)
def test_bad_replies_are_backend_errors(
    soap_mock: respx.MockRouter, reply: Any, status: int, words: str
) -> None:
    soap_mock.post(f"{HOST}/soap").mock(side_effect=[reply])
    with pytest.raises(BackendError) as info:
        asyncio.run(with_source(lambda s: s.page(Plan(limit=1))))
    assert info.value.status == status and words in info.value.reason


def test_not_found_fault_is_no_record(soap_mock: respx.MockRouter) -> None:
    fault = (
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>no</faultstring>"
        "<detail><code>NotFound</code></detail></s:Fault>"
    )
    soap_mock.post(f"{HOST}/soap").mock(return_value=reply_with(fault, 500))
    assert asyncio.run(with_source(lambda s: s.one(Compare("invoiceRef", "eq", "C-9")))) is None


def test_an_unknown_operation_in_a_mapping_stops_start_up(soap_mock: respx.MockRouter) -> None:
    async def bind() -> None:
        adapter = SoapAdapter("consumer", SoapOptions(wsdl=f"{HOST}/billing.wsdl"))
        await adapter.open()
        try:
            SoapSource(adapter, {**SOURCE, "list": {**SOURCE["list"], "operation": "ListAll"}})
        finally:
            await adapter.close()

    with pytest.raises(Exception, match="no operation 'ListAll'"):
        asyncio.run(bind())


# The whole path: gateway -> SOAP adapter (zeep) -> the SOAP simulator on loopback.

STATES = {
    "DRAFT": "new",
    "HELD": "onHold",
    "CHECKED": "validated",
    "DISPATCHED": "sent",
    "CLEARED": "settled",
    "PARTIAL": "partiallyPaid",
}


@pytest.fixture
def soap_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    simulator = create_simulator(seed())
    with ThreadedServer(simulator) as server:
        monkeypatch.setenv("CONSUMER_WSDL", f"{server.base}/billing.wsdl")
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = tuned(load_config(ROOT / "config" / "soap.yaml"), worker={"poll_seconds": 0.05})
        with TestClient(create_app(config)) as client:
            client.simulator = simulator.state.data  # type: ignore[attr-defined]
            yield client


def ordered(data: Any) -> list[dict[str, str]]:
    return sorted(data.invoices.values(), key=lambda i: int(i["invoiceRef"][2:]))


def test_reads_filters_and_paging_through_soap(soap_gateway: TestClient) -> None:
    invoices = ordered(soap_gateway.simulator)
    bills = fetch_all(soap_gateway, "customerBill")
    assert [b["id"] for b in bills] == [i["invoiceRef"] for i in invoices]
    for bill, invoice in zip(bills, invoices, strict=True):
        assert_valid("CustomerBill", bill)
        assert bill["state"] == STATES[invoice["statusWord"]]
        assert bill["amountDue"]["value"] == float(invoice["grossAmount"])
    cases = [
        ("state=new,sent", lambda i: i["statusWord"] in ("DRAFT", "DISPATCHED")),
        ("billingAccount.id=CUST00003", lambda i: i["customerRef"] == "CUST00003"),
        ("amountDue.value.gt=200", lambda i: float(i["grossAmount"]) > 200),
    ]
    for params, oracle in cases:
        expected = [i["invoiceRef"] for i in invoices if oracle(i)]
        assert 0 < len(expected) < len(invoices), params
        assert [b["id"] for b in fetch_all(soap_gateway, "customerBill", params)] == expected
        page = soap_gateway.get(f"{API}/customerBill?{params}&offset=2&limit=3")
        assert page.headers["X-Total-Count"] == str(len(expected))
        assert [b["id"] for b in page.json()] == expected[2:5]
    by_date = fetch_all(soap_gateway, "customerBill", "sort=-billDate")
    dates = [b["billDate"] for b in by_date]
    assert dates == sorted(dates, reverse=True)
    assert soap_gateway.get(f"{API}/customerBill/C-1").status_code == 404


def test_patch_and_bill_on_demand_through_soap(soap_gateway: TestClient) -> None:
    data = soap_gateway.simulator
    ident = next(i["invoiceRef"] for i in ordered(data) if i["statusWord"] == "DRAFT")
    response = soap_gateway.patch(
        f"{API}/customerBill/{ident}",
        json={"state": "validated"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert data.invoices[ident]["statusWord"] == "CHECKED"

    customer = next(c for c, amount in sorted(data.unbilled.items()) if amount > 0)
    created = soap_gateway.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": customer}}
    )
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 10
    while (request := soap_gateway.get(created.headers["Location"]).json())[
        "state"
    ] == "inProgress":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert request["state"] == "done"
    assert_valid("CustomerBillOnDemand", request)
    bill = soap_gateway.get(request["customerBill"]["href"]).json()
    assert_valid("CustomerBill", bill)
    assert bill["billingAccount"]["id"] == customer and bill["runType"] == "offCycle"
    empty = next(c for c, amount in sorted(data.unbilled.items()) if amount == 0)
    rejected = soap_gateway.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": empty}}
    ).json()
    deadline = time.monotonic() + 10
    while (rejected := soap_gateway.get(rejected["href"]).json())["state"] == "inProgress":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert rejected["state"] == "rejected" and "nothing to bill" in rejected["description"]
    unknown = soap_gateway.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": "CUST99999"}}
    )
    assert unknown.status_code == 400


def test_a_record_that_does_not_fit_is_a_502(soap_gateway: TestClient) -> None:
    data = soap_gateway.simulator
    ident = ordered(data)[0]["invoiceRef"]
    data.invoices[ident]["statusWord"] = "LOST"
    response = soap_gateway.get(f"{API}/customerBill/{ident}")
    assert response.status_code == 502
    assert_valid("Error", response.json())
    assert "consumer" in response.json()["message"] and "'state'" in response.json()["message"]


# Replies that do not say what the action declares.


def action_reply(soap_mock: respx.MockRouter, body: str, spec: dict[str, Any]) -> Any:
    soap_mock.post(f"{HOST}/soap").mock(return_value=reply_with(body))

    async def work() -> Any:
        adapter = SoapAdapter("consumer", SoapOptions(wsdl=f"{HOST}/billing.wsdl"))
        await adapter.open()
        try:
            return await adapter.action({"run": spec}).run({"account_id": "C", "request_id": "r"})
        finally:
            await adapter.close()

    return asyncio.run(work())


BILL_NOW = {
    "operation": "BillNow",
    "request": {"customerRef": "{account_id}", "reference": "{request_id}"},
    "result": "result",
    "ok": "OK",
    "value": "invoiceRef",
    "reject": {"NOTHING_TO_BILL": "nothing to bill"},
}
FIND = {
    "operation": "FindInvoiceByReference",
    "request": {"reference": "{request_id}"},
    "result": "result",
    "ok": "FOUND",
    "value": "invoiceRef",
    "reject": {"NONE": "none made"},
}
NS = 'xmlns:cb="urn:example:consumer-billing:v2"'


@pytest.mark.parametrize(
    ("spec", "body", "words"),
    [
        (
            BILL_NOW,
            f"<cb:BillNowResponse {NS}><cb:result>OK</cb:result></cb:BillNowResponse>",
            "answered 'OK' without 'invoiceRef'",
        ),
        (BILL_NOW, f"<cb:BillNowResponse {NS}/>", "has no 'result'"),
        (BILL_NOW, f"<cb:Other {NS}><cb:invoiceRef>C-1</cb:invoiceRef></cb:Other>", "no 'result'"),
        (
            FIND,
            f"<cb:FindInvoiceByReferenceResponse {NS}><cb:result>FOUND</cb:result>"
            "</cb:FindInvoiceByReferenceResponse>",
            "without 'invoiceRef'",
        ),
    ],
)
def test_an_action_reply_of_the_wrong_shape_is_a_reply_error(
    soap_mock: respx.MockRouter, spec: dict[str, Any], body: str, words: str
) -> None:
    """Not worth another try (the same call gets the same answer): the on-demand request
    ends terminatedWithError (tests/test_on_demand.py), never `done` without a bill."""
    with pytest.raises(BackendReplyError, match=words) as caught:
        action_reply(soap_mock, body, spec)
    assert caught.value.status == 502


def test_action_replies_as_declared(soap_mock: respx.MockRouter) -> None:
    found = f"<cb:R {NS}><cb:result>FOUND</cb:result><cb:invoiceRef>C-7</cb:invoiceRef></cb:R>"
    assert action_reply(soap_mock, found, FIND) == ActionResult("done", "C-7")
    none = f"<cb:R {NS}><cb:result>NONE</cb:result></cb:R>"
    assert action_reply(soap_mock, none, FIND) == ActionResult("rejected", None, "none made")


def test_a_get_reply_without_its_record_is_a_reply_error_not_no_record(
    soap_mock: respx.MockRouter,
) -> None:
    soap_mock.post(f"{HOST}/soap").mock(return_value=reply_with(f"<cb:GetInvoiceResponse {NS}/>"))
    with pytest.raises(BackendReplyError, match="has no 'invoice'") as caught:
        asyncio.run(with_source(lambda s: s.one(Compare("invoiceRef", "eq", "C-9"))))
    assert caught.value.status == 502


def test_a_soap_fault_is_shortened_for_callers() -> None:
    fault = SoapFault("consumer", "Server", "line one\n  line two " + "x" * 300)
    assert fault.summary.startswith("SOAP fault Server: line one line two xxx")
    assert len(fault.summary) == FAULT_SUMMARY_CHARS and fault.summary.endswith("…")
    assert "x" * 300 in fault.reason  # the log gets it all


# Bill now, through the bundled config and the simulator.


def test_a_bill_now_answered_after_the_timeout_ends_done_with_the_bill_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform takes 6 s (timeout 5 s) but made the bill: the bundled action's `find:`
    (FindInvoiceByReference) looks it up, so the request is `done` with it, at once."""
    with on_demand_gateway(tmp_path, monkeypatch, timeout=5.0) as (client, back_end, data):
        customer = next(c for c, amount in sorted(data.unbilled.items()) if amount > 0)
        back_end.on(soap_bill_now, late(6.0))
        invoices_before = len(data.invoices)
        href = request_bill(client, customer)
        done = wait_until_finished(client.get, href, 20)
        assert done["state"] == "done", done
        assert done["customerBill"]["id"] == data.references[ident_of(href)]
        assert len(data.invoices) == invoices_before + 1
        assert len([c for c in back_end.calls if soap_bill_now(c)]) == 1  # found, not redone
        assert any(b"FindInvoiceByReference>" in c.body for c in back_end.calls)
        bill = client.get(done["customerBill"]["href"])
        assert bill.status_code == 200 and bill.json()["billingAccount"]["id"] == customer
        assert_valid("CustomerBill", bill.json())


def test_charges_and_bill_cycles_through_soap(soap_gateway: TestClient) -> None:
    """The SOAP example config serves all three resources; filters agree with the data."""
    data = soap_gateway.simulator
    rates = fetch_all(soap_gateway, "appliedCustomerBillingRate")
    assert [r["id"] for r in rates] == list(data.charges)
    for rate in rates:
        assert_valid("AppliedCustomerBillingRate", rate)
    unbilled = fetch_all(soap_gateway, "appliedCustomerBillingRate", "isBilled=false")
    expected = [c["chargeRef"] for c in data.charges.values() if c["billedFlag"] == "N"]
    assert len(expected) > 0 and [r["id"] for r in unbilled] == expected
    cycles = fetch_all(soap_gateway, "billCycle", "sort=-billingDate")
    assert [c["id"] for c in cycles] == sorted(data.cycles, reverse=True)
    for cycle in cycles:
        assert_valid("BillCycle", cycle)
    one = soap_gateway.get(f"{API}/billCycle/CYC202403")
    assert one.status_code == 200 and one.json()["billingPeriod"] == "March"
    assert soap_gateway.get(f"{API}/billCycle/CYC209901").status_code == 404


def test_bill_now_ok_without_its_invoice_ends_the_request_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok_without_ref = (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<s:Body><cb:BillNowResponse {NS}><cb:result>OK</cb:result></cb:BillNowResponse>"
        "</s:Body></s:Envelope>"
    ).encode()
    with on_demand_gateway(tmp_path, monkeypatch) as (client, back_end, data):
        customer = next(c for c, amount in sorted(data.unbilled.items()) if amount > 0)
        back_end.on(soap_bill_now, done_but_answers(200, ok_without_ref, b"text/xml"))
        failed = wait_until_finished(client.get, request_bill(client, customer), 10)
        assert failed["state"] == "terminatedWithError", failed
        assert "BillNow answered 'OK' without 'invoiceRef'" in failed["description"]
        assert_valid("CustomerBillOnDemand", failed)
        assert len([c for c in back_end.calls if soap_bill_now(c)]) == 1  # not retried


# Request templates: placeholders inside strings, escaped for a quoted literal.


def test_placeholders_inside_strings_are_escaped_and_typed() -> None:
    from adapters.soap import _fill, fill_text

    assert fill_text("where Id = '{key}'", {"key": "a'b\\c"}) == "where Id = 'a\\'b\\\\c'"
    assert fill_text("where N = {n:int} and A > {a:number}", {"n": 42, "a": "1.5"}) == (
        "where N = 42 and A > 1.5"
    )
    for bad in ({"n": "1 or 1=1"}, {"n": True}, {}):
        with pytest.raises(ValueError):
            fill_text("where N = {n:int}", bad)
    # A whole-value placeholder passes the value as it is (left out when it has none);
    # nested and typed objects are filled alike.
    template = {
        "a": "{n}",
        "b": "{missing}",
        "zObjects": [{"@type": "Invoice", "Id": "{key}", "Note": "of {key}"}],
    }
    assert _fill(template, {"n": 7, "key": "k'1"}) == {
        "a": 7,
        "zObjects": [{"@type": "Invoice", "Id": "k'1", "Note": "of k\\'1"}],
    }


def test_a_session_is_carried_in_exactly_one_place() -> None:
    from pydantic import ValidationError

    from adapters.session import SessionOptions

    login = {"operation": "login", "result": "Session"}
    with pytest.raises(ValidationError, match="exactly one"):
        SessionOptions.model_validate({"login": login, "carry": {}})
    with pytest.raises(ValidationError, match="exactly one"):
        SessionOptions.model_validate(
            {"login": login, "carry": {"cookie": {"name": "s"}, "http_header": {"name": "X"}}}
        )
    rest = SessionOptions.model_validate(
        {"login": login, "carry": {"http_header": {"name": "X-Session", "format": "S {session}"}}}
    )
    assert rest.carry.http_header is not None
    with pytest.raises(Exception, match="soap_header"):
        SoapAdapter("b", SoapOptions(wsdl="http://x/w.wsdl", session=rest))
