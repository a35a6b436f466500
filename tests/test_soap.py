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

from adapters.base import BackendError, Compare, Plan
from adapters.soap import SoapAdapter, SoapOptions, SoapSource
from gateway.app import create_app
from gateway.config import load_config
from simulators.soap_billing import WSDL, seed
from simulators.soap_billing import create_app as create_simulator
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.servers import ThreadedServer

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
