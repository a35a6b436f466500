"""A query-language SOAP back end end to end: config/soap_query.yaml over the simulator.

Every list, filter, sort, deep offset and read by id is compared with the simulator's
own data (330 invoices, 50 records per query batch), totals included, and every
response is validated against the OAS. Sessions: a session that expires in the middle
of a list is renewed without the caller seeing it; concurrent callers share one login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.base import Compare, Plan
from adapters.session import SessionOptions
from adapters.soap import SoapAdapter, SoapOptions, SoapRequestRefused
from adapters.soap_query import SoapQuerySource, WalkTooDeep
from gateway.app import create_app
from gateway.config import load_config
from gateway.services import StartupError, bind_reader
from simulators.soap_query_billing import PASSWORD, USERNAME, QueryData, seed
from simulators.soap_query_billing import create_app as create_simulator
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.servers import ThreadedServer
from tests.test_on_demand import request_bill, wait_until_finished

INVOICES = 330
STATES = {"Draft": "new", "Posted": "sent", "Canceled": "onHold"}
Invoice = dict[str, str]


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, QueryData]]:
    data = seed(INVOICES)
    store = tmp_path_factory.mktemp("soap_query") / "store.sqlite"
    with ThreadedServer(create_simulator(data)) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("SOAP_QUERY_URL", server.base)
        env.setenv("GATEWAY_STORE", str(store))
        yield from _gateway(data, env)


def _gateway(data: QueryData, env: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, QueryData]]:
    config = tuned(load_config(ROOT / "config" / "soap_query.yaml"), worker={"poll_seconds": 0.05})
    with TestClient(create_app(config)) as client:
        yield client, data


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[TestClient, QueryData, Any]]:
    """A gateway over a simulator of its own (writes, sessions), the simulator's service too."""
    data = seed(INVOICES)
    simulator = create_simulator(data)
    with ThreadedServer(simulator) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("SOAP_QUERY_URL", server.base)
        env.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        for client, _ in _gateway(data, env):
            yield client, data, simulator.state.service


def ordered(data: QueryData) -> list[Invoice]:
    return [data.invoices[k] for k in sorted(data.invoices)]


def currency(data: QueryData, record: Invoice) -> str:
    return data.accounts[record["AccountId"]]["Currency"]


def same_bill(data: QueryData, bill: dict[str, Any], invoice: Invoice) -> None:
    assert_valid("CustomerBill", bill)
    assert bill["id"] == invoice["Id"] and bill["billNo"] == invoice["InvoiceNumber"]
    assert bill["state"] == STATES[invoice["Status"]]
    assert bill["billDate"] == f"{invoice['InvoiceDate']}T00:00:00+00:00"
    assert bill["amountDue"] == {
        "unit": currency(data, invoice),
        "value": float(invoice["Amount"]),
    }
    assert bill["remainingAmount"]["value"] == float(invoice["Balance"])
    assert bill["billingAccount"]["id"] == invoice["AccountId"]
    # Absent from the reply (a draft's due date): absent from the resource.
    assert ("paymentDueDate" in bill) == ("DueDate" in invoice)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def test_the_whole_list_matches_the_simulator(simulated: tuple[TestClient, QueryData]) -> None:
    client, data = simulated
    invoices = ordered(data)
    bills = fetch_all(client, "customerBill")
    assert ids(bills) == [i["Id"] for i in invoices]
    for bill, invoice in zip(bills, invoices, strict=True):
        same_bill(data, bill, invoice)
    assert {b["amountDue"]["unit"] for b in bills} == {"EUR", "USD", "GBP"}
    assert data.calls["queryMore"] >= INVOICES // 50


@pytest.mark.parametrize(
    ("offset", "limit"),
    [
        (0, 1),
        (0, 2),
        (49, 2),
        (50, 1),
        (51, 50),
        (100, 100),
        (149, 3),
        (250, 1000),
        (329, 5),
        (330, 5),
        (400, 10),
        (7, 0),
    ],
)
def test_offsets_walk_the_cursor(
    simulated: tuple[TestClient, QueryData], offset: int, limit: int
) -> None:
    client, data = simulated
    expected = [i["Id"] for i in ordered(data)]
    response = client.get(f"{API}/customerBill?offset={offset}&limit={limit}")
    assert response.status_code == 200, response.text
    assert ids(response.json()) == expected[offset : offset + limit]
    assert response.headers["X-Total-Count"] == str(INVOICES)
    for bill in response.json():
        assert_valid("CustomerBill", bill)


FILTERS: list[tuple[str, Callable[[Invoice], bool]]] = [
    ("state=sent", lambda i: i["Status"] == "Posted"),
    ("state=new,onHold", lambda i: i["Status"] in ("Draft", "Canceled")),
    ("state.ne=sent", lambda i: i["Status"] != "Posted"),
    ("billDate.gte=2024-07-01", lambda i: i["InvoiceDate"] >= "2024-07-01"),
    ("billDate.lt=2024-03-01T00:00:00Z", lambda i: i["InvoiceDate"] < "2024-03-01"),
    ("paymentDueDate.gte=2024-06-01", lambda i: i.get("DueDate", "") >= "2024-06-01"),
    ("amountDue.value.gt=500", lambda i: Decimal(i["Amount"]) > 500),
    (
        "state=sent&billDate.gte=2024-07-01&amountDue.value.lte=600",
        lambda i: (
            i["Status"] == "Posted"
            and i["InvoiceDate"] >= "2024-07-01"
            and Decimal(i["Amount"]) <= 600
        ),
    ),
    ("billNo=INV00000051", lambda i: i["InvoiceNumber"] == "INV00000051"),
]


@pytest.mark.parametrize(("params", "oracle"), FILTERS, ids=[f for f, _ in FILTERS])
def test_filters_match_the_simulator(
    simulated: tuple[TestClient, QueryData], params: str, oracle: Callable[[Invoice], bool]
) -> None:
    client, data = simulated
    invoices = ordered(data)
    expected = [i["Id"] for i in invoices if oracle(i)]
    assert 0 < len(expected) < len(invoices), params
    assert ids(fetch_all(client, "customerBill", params)) == expected
    for offset, limit in ((0, 3), (2, 5), (len(expected) - 1, 10), (55, 50)):
        page = client.get(f"{API}/customerBill?{params}&offset={offset}&limit={limit}")
        assert page.status_code == 200, page.text
        assert page.headers["X-Total-Count"] == str(len(expected)), params
        assert ids(page.json()) == expected[offset : offset + limit]


@pytest.mark.parametrize(
    ("params", "sent"),
    [
        ("state=sent", "where Status = 'Posted'"),
        ("state=new,onHold", "where (Status = 'Draft' or Status = 'Canceled')"),
        ("billDate.gte=2024-07-01", "where InvoiceDate >= '2024-07-01'"),
        (
            "state=sent&billDate.lt=2024-03-01",
            "where (Status = 'Posted' and InvoiceDate < '2024-03-01')",
        ),
        ("billNo=it's", "where InvoiceNumber = 'it\\'s'"),
        ("sort=-billDate", "from Invoice order by InvoiceDate desc, Id"),
        ("amountDue.value.gt=5", "from Invoice"),  # amounts are text to it: the gateway filters
    ],
)
def test_filters_and_sorts_go_into_the_query_language(
    simulated: tuple[TestClient, QueryData], params: str, sent: str
) -> None:
    client, data = simulated
    before = len(data.queries)
    assert client.get(f"{API}/customerBill?{params}&limit=1").status_code == 200
    query = next(q for q in data.queries[before:] if "from Invoice" in q)
    assert query.startswith("select Id, AccountId, Amount,") and query.endswith(sent), query


def test_account_filter_and_sorts_match_the_simulator(
    simulated: tuple[TestClient, QueryData],
) -> None:
    client, data = simulated
    invoices = ordered(data)
    account = invoices[17]["AccountId"]
    expected = [i["Id"] for i in invoices if i["AccountId"] == account]
    assert ids(fetch_all(client, "customerBill", f"billingAccount.id={account}")) == expected
    by_date = sorted(invoices, key=lambda i: i["Id"])
    by_date.sort(key=lambda i: i["InvoiceDate"], reverse=True)  # stable: Id breaks ties
    assert ids(fetch_all(client, "customerBill", "sort=-billDate")) == [i["Id"] for i in by_date]
    page = client.get(f"{API}/customerBill?sort=-billDate&offset=120&limit=60")
    assert ids(page.json()) == [i["Id"] for i in by_date[120:180]]
    by_number = sorted(invoices, key=lambda i: i["InvoiceNumber"])
    assert ids(fetch_all(client, "customerBill", "sort=billNo")) == [i["Id"] for i in by_number]
    # A sort the language cannot do (amounts are text to it): the gateway sorts, exactly.
    by_amount = sorted(invoices, key=lambda i: (Decimal(i["Amount"]), i["Id"]))
    got = fetch_all(client, "customerBill", "sort=amountDue.value&state=sent")
    assert ids(got) == [i["Id"] for i in by_amount if i["Status"] == "Posted"]


def test_every_bill_reads_by_id(simulated: tuple[TestClient, QueryData]) -> None:
    client, data = simulated
    for invoice in ordered(data):
        response = client.get(f"{API}/customerBill/{invoice['Id']}")
        assert response.status_code == 200, invoice["Id"]
        same_bill(data, response.json(), invoice)
    # A quote in an id is escaped inside the query's literal: no injection, no record.
    for ident in ("nope", "x' or Id != '", "x\\' or Id != \\'"):
        assert client.get(f"{API}/customerBill/{ident}").status_code == 404


def test_applied_rates_come_with_the_accounts_currency(
    simulated: tuple[TestClient, QueryData],
) -> None:
    client, data = simulated
    items = [data.items[k] for k in sorted(data.items)]
    rates = fetch_all(client, "appliedCustomerBillingRate")
    assert ids(rates) == [i["Id"] for i in items]
    for rate, item in zip(rates, items, strict=True):
        assert_valid("AppliedCustomerBillingRate", rate)
        assert rate["bill"]["id"] == item["InvoiceId"]
        assert rate["taxExcludedAmount"]["unit"] == currency(data, item)
        assert ("product" in rate) == ("ProductName" in item)
    bill = items[101]["InvoiceId"]
    expected = [i["Id"] for i in items if i["InvoiceId"] == bill]
    assert ids(fetch_all(client, "appliedCustomerBillingRate", f"bill.id={bill}")) == expected
    one = client.get(f"{API}/appliedCustomerBillingRate/{items[222]['Id']}")
    assert one.status_code == 200 and one.json()["id"] == items[222]["Id"]


def test_a_session_expiring_mid_list_is_renewed(fresh: tuple[TestClient, QueryData, Any]) -> None:
    client, data, service = fresh
    original = service.query_more
    walked = 0

    def expiring(call: Any, session: str) -> Any:
        nonlocal walked
        walked += 1
        reply = original(call, session)
        if walked == 2:  # the platform ends the session in the middle of the walk
            service.sessions = dict.fromkeys(service.sessions, 0.0)
        return reply

    service.query_more = expiring
    response = client.get(f"{API}/customerBill?offset=0&limit=330")
    assert response.status_code == 200, response.text
    assert ids(response.json()) == [i["Id"] for i in ordered(data)]
    assert data.calls["login"] == 2 and walked == 6  # the refused call made again


def test_concurrent_calls_share_one_login_and_a_lifetime_renews_before_expiry() -> None:
    data = seed(60)
    with ThreadedServer(create_simulator(data, session_seconds=0.4)) as server:

        async def run() -> None:
            options = SoapOptions(
                wsdl=f"{server.base}/query.wsdl",
                timeout_seconds=5,
                session=SessionOptions.model_validate(
                    {
                        "login": {
                            "operation": "login",
                            "request": {"username": USERNAME, "password": PASSWORD},
                            "result": "Session",
                        },
                        "carry": {"soap_header": {"element": "SessionHeader", "field": "session"}},
                        "lifetime_seconds": 0.3,
                        "renew_before_seconds": 0.1,
                    }
                ),
            )
            adapter = SoapAdapter("billing", options)
            await adapter.open()
            try:
                source = await adapter.bind(SOURCE)
                pages = await asyncio.gather(*(source.page(Plan(limit=5)) for _ in range(8)))
                assert all(p.total == 60 for p in pages)
                assert data.calls["login"] == 1
                await asyncio.sleep(0.25)  # past lifetime - margin: renewed before expiry
                await source.page(Plan(limit=1))
                assert data.calls["login"] == 2
                # A configuration error: zeep refuses the shape, nothing is sent.
                sent = data.calls["update"]
                with pytest.raises(SoapRequestRefused, match="Bogus"):
                    await adapter.call("update", {"zObjects": [{"@type": "Invoice", "Bogus": 1}]})
                assert data.calls["update"] == sent
                # Offsets deeper than the walk budget are the caller's 400.
                assert isinstance(source, SoapQuerySource)
                source.max_walk = 20
                with pytest.raises(WalkTooDeep) as deep:
                    await source.page(Plan(offset=21, limit=1))
                assert deep.value.status == 400
                by_key = await source.one(Compare("Id", "eq", sorted(data.invoices)[3]))
                assert by_key is not None and by_key["Id"] == sorted(data.invoices)[3]
            finally:
                await adapter.close()

        asyncio.run(run())


SOURCE = {
    "key": "Id",
    "query": {
        "object": "Invoice",
        "fields": ["Id", "Status", "InvoiceDate"],
        "filters": {"Id": ["eq"], "Status": ["eq"]},
    },
    "get": {"query": "select {fields} from Invoice where Id = '{key}'"},
}


def test_a_misspelt_field_stops_start_up_with_file_and_line(tmp_path: Path) -> None:
    data = seed(5)
    mapping = (ROOT / "mappings" / "soap_query" / "customer_bill.yaml").read_text()
    broken = tmp_path / "customer_bill.yaml"
    broken.write_text(mapping.replace("InvoiceNumber,", "InvoiceNumbr,", 1))
    line = next(
        n for n, text in enumerate(broken.read_text().splitlines(), 1) if "InvoiceNumbr" in text
    )
    with ThreadedServer(create_simulator(data)) as server:

        async def run() -> str:
            adapter = SoapAdapter("billing", SoapOptions(wsdl=f"{server.base}/query.wsdl"))
            await adapter.open()
            try:
                with pytest.raises(StartupError) as info:
                    await bind_reader("customerBill", broken, adapter, 5, 100)
                return str(info.value)
            finally:
                await adapter.close()

        message = asyncio.run(run())
    assert f"{broken}:" in message and "InvoiceNumbr" in message
    assert f":{line - 1}:" in message or f":{line}:" in message


def test_patch_of_state_and_bills_on_demand(fresh: tuple[TestClient, QueryData, Any]) -> None:
    client, data, _ = fresh
    draft = next(i for i in ordered(data) if i["Status"] == "Draft")
    response = client.patch(
        f"{API}/customerBill/{draft['Id']}",
        json={"state": "sent"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert response.json()["state"] == "sent" and data.invoices[draft["Id"]]["Status"] == "Posted"
    assert data.calls["update"] == 1
    # Bills on demand: generate with a polymorphic Invoice zObject.
    account = next(a for a, amount in sorted(data.unbilled.items()) if amount > 0)
    done = wait_until_finished(client.get, request_bill(client, account), 10)
    assert done["state"] == "done", done
    made = data.references[done["id"]]
    assert done["customerBill"]["id"] == made
    bill = client.get(f"{API}/customerBill/{made}")
    assert bill.status_code == 200 and bill.json()["state"] == "new"
    assert_valid("CustomerBill", bill.json())
    nothing = next(a for a, amount in sorted(data.unbilled.items()) if amount == 0)
    refused = wait_until_finished(client.get, request_bill(client, nothing), 10)
    assert refused["state"] == "rejected" and "nothing to bill" in refused["description"]
    unknown = client.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": "no-such'account"}}
    )
    if unknown.status_code == 201:
        gone = wait_until_finished(client.get, unknown.headers["Location"], 10)
        assert gone["state"] == "rejected", gone
    else:
        assert unknown.status_code in (400, 422), unknown.text


def test_a_misspelt_field_of_a_polymorphic_object_stops_start_up(tmp_path: Path) -> None:
    action = (ROOT / "mappings" / "soap_query" / "actions" / "generate.yaml").read_text()
    broken = tmp_path / "generate.yaml"
    broken.write_text(action.replace("Reference:", "Referense:"))
    config = (ROOT / "config" / "soap_query.yaml").read_text()
    config = config.replace("../mappings/soap_query/actions/generate.yaml", str(broken))
    config = config.replace("../mappings/", f"{ROOT}/mappings/")
    config_file = tmp_path / "soap_query.yaml"
    config_file.write_text(config)
    with ThreadedServer(create_simulator(seed(5))) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("SOAP_QUERY_URL", server.base)
        env.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        with pytest.raises(StartupError, match="Referense") as info:  # noqa: SIM117
            with TestClient(create_app(load_config(config_file))):
                pass
    assert f"{broken}:" in str(info.value) and "no field 'Referense'" in str(info.value)


def test_a_query_more_that_repeats_the_first_batch_is_a_502(
    fresh: tuple[TestClient, QueryData, Any],
) -> None:
    client, _, service = fresh
    first: dict[str, Any] = {}
    original = service.query

    def remembering(call: Any, session: str) -> Any:
        first["reply"] = original(call, session)
        return first["reply"]

    def repeating(call: Any, session: str) -> Any:
        reply = first["reply"]  # the first batch again, still "not done"
        return type(reply)(reply.body, status_code=200, media_type="text/xml")

    service.query, service.query_more = remembering, repeating
    for params in ("offset=0&limit=120", "state=sent&limit=5&sort=amountDue.value"):
        response = client.get(f"{API}/customerBill?{params}")
        assert response.status_code == 502, response.text
        assert_valid("Error", response.json())
        assert "'billing'" in response.json()["message"]
