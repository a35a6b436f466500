"""Filtering, sorting and paging through the API, against an oracle written here.

Each case states its expected result as plain Python over the full, unfiltered
collection; the gateway must agree on the items, their order, and X-Total-Count.
The same cases run a second time with push-down switched off, so the back end's
answer and the gateway's own filtering are held to the same semantics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from adapters.base import Source
from gateway.app import create_app
from gateway.auth import AuthSettings
from tests.conftest import API, assert_valid, fetch_all, gateway_config
from tests.tokens import ISSUER, Signer

Item = dict[str, Any]
SCHEMAS = {
    "customerBill": "CustomerBill",
    "appliedCustomerBillingRate": "AppliedCustomerBillingRate",
    "billCycle": "BillCycle",
}


def instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def key(item: Item) -> int:
    return int(item["id"])


class NoPushdown:
    """A source that refuses every filter and sort, so the gateway does all the work."""

    def __init__(self, inner: Source) -> None:
        self._inner = inner
        self.columns = inner.columns

    def can_push(self, column: str, op: str) -> bool:
        return False

    def can_sort(self, column: str) -> bool:
        return False

    def accepts(self, predicate: Any) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture(scope="module", params=["pushdown", "gateway"])
def api(request: pytest.FixtureRequest, demo_db: Path) -> Iterator[TestClient]:
    app = create_app(gateway_config(demo_db, scan_batch_size=37))
    with TestClient(app) as client:
        if request.param == "gateway":
            services = app.state.services
            for reader in (services.customer_bills, services.applied_rates, services.bill_cycles):
                for route in reader.routes:
                    route.reader.source = NoPushdown(route.reader.source)
        yield client


@pytest.fixture(scope="module")
def everything(client: TestClient) -> dict[str, list[Item]]:
    return {collection: fetch_all(client, collection) for collection in SCHEMAS}


Case = tuple[str, str, Callable[[Item], bool]]


def amount(item: Item, attr: str) -> float:
    return item[attr]["value"]


BILL_CASES: list[Case] = [
    ("customerBill", "state=new", lambda b: b["state"] == "new"),
    ("customerBill", "state=new,sent", lambda b: b["state"] in ("new", "sent")),
    ("customerBill", "state=new&state=onHold", lambda b: b["state"] in ("new", "onHold")),
    ("customerBill", "state.ne=settled", lambda b: b["state"] != "settled"),
    ("customerBill", "state.ne=settled,sent", lambda b: b["state"] not in ("settled", "sent")),
    ("customerBill", "state!=new", lambda b: b["state"] != "new"),
    ("customerBill", "state.gt=sent", lambda b: b["state"] > "sent"),
    ("customerBill", "state=~^(new|sent)$", lambda b: b["state"] in ("new", "sent")),
    (
        "customerBill",
        "billingAccount.id=BA-000010",
        lambda b: b["billingAccount"]["id"] == "BA-000010",
    ),
    (
        "customerBill",
        "billingAccount.id=BA-000010&state=settled",
        lambda b: b["billingAccount"]["id"] == "BA-000010" and b["state"] == "settled",
    ),
    ("customerBill", "amountDue.value.gt=250", lambda b: amount(b, "amountDue") > 250),
    ("customerBill", "amountDue.value.gte=160.89", lambda b: amount(b, "amountDue") >= 160.89),
    ("customerBill", "amountDue.value<100.5", lambda b: amount(b, "amountDue") < 100.5),
    ("customerBill", "amountDue.value.lte=100", lambda b: amount(b, "amountDue") <= 100),
    ("customerBill", "remainingAmount.value=0", lambda b: amount(b, "remainingAmount") == 0),
    ("customerBill", "remainingAmount.value.ne=0", lambda b: amount(b, "remainingAmount") != 0),
    (
        "customerBill",
        "billDate.gte=2024-07-01",
        lambda b: instant(b["billDate"]) >= instant("2024-07-01"),
    ),
    (
        "customerBill",
        "billDate>2024-07-01T00:00:00%2B02:00",
        lambda b: instant(b["billDate"]) > instant("2024-07-01T00:00:00+02:00"),
    ),
    (
        "customerBill",
        "billDate<=2024-03-01T12:00:00Z",
        lambda b: instant(b["billDate"]) <= instant("2024-03-01T12:00:00Z"),
    ),
    (
        "customerBill",
        "billDate=2024-02-01T00:00:00%2B01:00",
        lambda b: instant(b["billDate"]) == instant("2024-02-01T00:00:00+01:00"),
    ),
    (
        "customerBill",
        "billDate.ne=2024-02-01T00:00:00%2B01:00",
        lambda b: instant(b["billDate"]) != instant("2024-02-01T00:00:00+01:00"),
    ),
    (
        "customerBill",
        "billingPeriod.startDateTime.gte=2024-06-01&billingPeriod.startDateTime.lt=2024-09-01",
        lambda b: (
            instant("2024-06-01")
            <= instant(b["billingPeriod"]["startDateTime"])
            < instant("2024-09-01")
        ),
    ),
    (
        "customerBill",
        "billNo.regex=0[0-9]7$",
        lambda b: b["billNo"][-3] == "0" and b["billNo"][-1] == "7",
    ),
    ("customerBill", "billNo.gte=INV24-000290", lambda b: b["billNo"] >= "INV24-000290"),
    ("customerBill", "billCycle.id=3", lambda b: b.get("billCycle", {}).get("id") == "3"),
    ("customerBill", "billCycle.id.ne=3", lambda b: b.get("billCycle", {}).get("id") != "3"),
    ("customerBill", "runType=offCycle", lambda b: b["runType"] == "offCycle"),
    (
        "customerBill",
        "category=creditNote,interim",
        lambda b: b["category"] in ("creditNote", "interim"),
    ),
    ("customerBill", "id=5,17,400", lambda b: b["id"] in ("5", "17")),
    ("customerBill", "id.ne=5", lambda b: b["id"] != "5"),
    (
        "customerBill",
        "taxItem.taxCategory=VAT7",
        lambda b: any(t["taxCategory"] == "VAT7" for t in b["taxItem"]),
    ),
    (
        "customerBill",
        "taxItem.taxAmount.value.gt=40",
        lambda b: any(t["taxAmount"]["value"] > 40 for t in b["taxItem"]),
    ),
    (
        "customerBill",
        "billDocument.id=~INV24-00001",
        lambda b: "INV24-00001" in b["billDocument"][0]["id"],
    ),
    (
        "customerBill",
        "nextBillDate.gt=2020-01-01",
        lambda b: "nextBillDate" in b and instant(b["nextBillDate"]) > instant("2020-01-01"),
    ),
]

RATE_CASES: list[Case] = [
    ("appliedCustomerBillingRate", "isBilled=false", lambda r: r["isBilled"] is False),
    ("appliedCustomerBillingRate", "isBilled.ne=true", lambda r: r["isBilled"] is not True),
    (
        "appliedCustomerBillingRate",
        "appliedBillingRateType=appliedBillingCredit",
        lambda r: r["appliedBillingRateType"] == "appliedBillingCredit",
    ),
    (
        "appliedCustomerBillingRate",
        "appliedBillingRateType=appliedBillingCharge&isBilled=false",
        lambda r: r["appliedBillingRateType"] == "appliedBillingCharge" and not r["isBilled"],
    ),
    ("appliedCustomerBillingRate", "bill.id=12", lambda r: r.get("bill", {}).get("id") == "12"),
    (
        "appliedCustomerBillingRate",
        "taxExcludedAmount.value.lt=0",
        lambda r: r["taxExcludedAmount"]["value"] < 0,
    ),
    (
        "appliedCustomerBillingRate",
        "taxIncludedAmount.value.gt=50",
        lambda r: r["taxIncludedAmount"]["value"] > 50,
    ),
    (
        "appliedCustomerBillingRate",
        "date.gte=2024-12-15T00:00:00Z&billingAccount.id=BA-000003",
        lambda r: (
            instant(r["date"]) >= instant("2024-12-15T00:00:00Z")
            and r["billingAccount"]["id"] == "BA-000003"
        ),
    ),
    (
        "appliedCustomerBillingRate",
        "appliedTax.taxRate=7",
        lambda r: r["appliedTax"][0]["taxRate"] == 7,
    ),
    (
        "appliedCustomerBillingRate",
        "name=~(?i)^roaming",
        lambda r: r["name"].lower().startswith("roaming"),
    ),
]

CYCLE_CASES: list[Case] = [
    (
        "billCycle",
        "billingDate.gt=2024-06-15",
        lambda c: instant(c["billingDate"]) > instant("2024-06-15"),
    ),
    ("billCycle", "name=BR202403,BR202411", lambda c: c["name"] in ("BR202403", "BR202411")),
    (
        "billCycle",
        "billingPeriod=~^(March|April)",
        lambda c: c["billingPeriod"].startswith(("March", "April")),
    ),
    (
        "billCycle",
        "validFor.endDateTime.lte=2024-04-30",
        lambda c: instant(c["validFor"]["endDateTime"]) <= instant("2024-04-30"),
    ),
    (
        "billCycle",
        "BillCycleSpecification.id.ne=MONTHLY",
        lambda c: c["BillCycleSpecification"]["id"] != "MONTHLY",
    ),
]


@pytest.mark.parametrize(("collection", "params", "oracle"), BILL_CASES + RATE_CASES + CYCLE_CASES)
def test_filters_agree_with_the_oracle(
    api: TestClient,
    everything: dict[str, list[Item]],
    collection: str,
    params: str,
    oracle: Callable[[Item], bool],
) -> None:
    expected = [item["id"] for item in everything[collection] if oracle(item)]
    got = fetch_all(api, collection, params)
    assert [item["id"] for item in got] == expected
    first = api.get(f"{API}/{collection}?{params}&limit=3&offset=1")
    assert first.status_code == 200
    assert first.headers["X-Total-Count"] == str(len(expected))
    assert [item["id"] for item in first.json()] == expected[1:4]
    for item in first.json():
        assert_valid(SCHEMAS[collection], item)


def test_cases_select_something_and_not_everything(everything: dict[str, list[Item]]) -> None:
    """Guard against an oracle that silently selects all or nothing (a test that cannot fail)."""
    for collection, params, oracle in BILL_CASES + RATE_CASES + CYCLE_CASES:
        if params == "BillCycleSpecification.id.ne=MONTHLY":
            continue
        chosen = sum(1 for item in everything[collection] if oracle(item))
        assert 0 < chosen < len(everything[collection]), params


def sort_value(item: Item, path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str) and path.endswith(("Date", "DateTime", "date")):
        return instant(value)
    return value


@pytest.mark.parametrize(
    ("collection", "sort"),
    [
        ("customerBill", "-billDate"),
        ("customerBill", "billDate,-billNo"),
        ("customerBill", "-amountDue.value,billingAccount.id"),
        ("customerBill", "state,-remainingAmount.value"),
        ("customerBill", "billingAccount.id,-billDate"),
        ("customerBill", "nextBillDate"),
        ("customerBill", "-id"),
        ("appliedCustomerBillingRate", "-date,name"),
        ("appliedCustomerBillingRate", "bill.id"),
        ("billCycle", "-paymentDueDate"),
    ],
)
def test_sort_is_total_stable_and_pages_cleanly(
    api: TestClient, everything: dict[str, list[Item]], collection: str, sort: str
) -> None:
    items = everything[collection]
    expected = list(items)  # key order, then stable sorts from the last key to the first
    for term in reversed(sort.split(",")):
        path = term.lstrip("-")
        present = [i for i in expected if sort_value(i, path) is not None]
        missing = [i for i in expected if sort_value(i, path) is None]
        # Python's sort keeps ties in their order, reverse=True included.
        present.sort(key=lambda i: sort_value(i, path), reverse=term.startswith("-"))
        expected = present + missing
    got = fetch_all(api, collection, f"sort={sort}")
    assert [i["id"] for i in got] == [i["id"] for i in expected]
    pages: list[str] = []
    for offset in range(0, 60, 7):
        page = api.get(f"{API}/{collection}?sort={sort}&offset={offset}&limit=7").json()
        pages.extend(i["id"] for i in page)
    assert pages == [i["id"] for i in expected][:63]


def test_sort_by_numeric_id_string_is_text_order(api: TestClient) -> None:
    ids = [i["id"] for i in fetch_all(api, "billCycle", "sort=id")]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    "params",
    [
        "offset=100000",
        "limit=0",
        "state=new&offset=500",
        "state=new&limit=0",
        "taxItem.taxCategory=VAT7&limit=0",
        "taxItem.taxCategory=VAT7&offset=100000",
    ],
)
def test_paging_edges_keep_exact_totals(
    api: TestClient, everything: dict[str, list[Item]], params: str
) -> None:
    response = api.get(f"{API}/customerBill?{params}")
    assert response.status_code == 200
    assert response.json() == []
    filters = "&".join(p for p in params.split("&") if not p.startswith(("offset", "limit")))
    expected = len(fetch_all(api, "customerBill", filters))
    assert response.headers["X-Total-Count"] == str(expected)
    assert response.headers["X-Result-Count"] == "0"


BAD_QUERIES = {
    "customerBill": ["billDate.gt=soon", "state.like=new", "amountDue.value=abc"],
    "appliedCustomerBillingRate": ["isBilled=yes", "date.lt=tomorrow", "bill.nope=1"],
    "billCycle": ["billingDate>=x", "name.regex=(", "validFor=2024"],
    "customerBillOnDemand": ["limit=x", "lastUpdate.bogus=1", "billingAccount.id.regex=[z-a]"],
}


@pytest.mark.parametrize(
    ("collection", "params"),
    [(c, p) for c, queries in BAD_QUERIES.items() for p in queries],
)
def test_bad_filters_are_400_on_every_resource(
    client: TestClient, collection: str, params: str
) -> None:
    response = client.get(f"{API}/{collection}?{params}")
    assert response.status_code == 400, response.text
    assert_valid("Error", response.json())
    assert params.split("=")[0].split(">")[0] in response.json()["message"]


# The read cache: a cached answer is the back end's answer, for that query and caller only.


def test_cached_pages_answer_as_fresh_ones_per_query(client: TestClient) -> None:
    params = "state=settled,sent&sort=-billDate&offset=3&limit=7"
    first = client.get(f"{API}/customerBill?{params}")
    again = client.get(f"{API}/customerBill?limit=7&offset=3&sort=-billDate&state=sent,settled")
    assert again.headers["X-Cache"] == "hit"  # the same query, written another way
    assert again.json() == first.json()
    assert again.headers["X-Total-Count"] == first.headers["X-Total-Count"]
    projected = client.get(f"{API}/customerBill?{params}&fields=state")
    assert projected.headers["X-Cache"] == "hit"  # `fields` cuts the cached page
    assert [b["state"] for b in projected.json()] == [b["state"] for b in first.json()]
    other = client.get(f"{API}/customerBill?{params}&billingAccount.id=BA-000003")
    assert other.headers["X-Cache"] == "miss"
    assert {b["billingAccount"]["id"] for b in other.json()} <= {"BA-000003"}


def test_callers_with_other_accounts_never_share_a_cached_page(
    demo_db: Path, tmp_path: Path
) -> None:
    signer = Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "reads")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk]}))
    config = gateway_config(demo_db, store=tmp_path / "store.sqlite", events=None)
    auth = AuthSettings(enabled=True, issuer=ISSUER, jwks_file=jwks)

    def caller(*accounts: str) -> dict[str, str]:
        token = signer.token(scope="tmf678:read", billing_accounts=list(accounts))
        return {"Authorization": f"Bearer {token}"}

    alice, bob = caller("BA-000003"), caller("BA-000010", "BA-000011")
    with TestClient(create_app(config.model_copy(update={"auth": auth}))) as api:
        mine = api.get(f"{API}/customerBill?limit=50", headers=alice)
        theirs = api.get(f"{API}/customerBill?limit=50", headers=bob)
        assert mine.headers["X-Cache"] == theirs.headers["X-Cache"] == "miss"
        assert {b["billingAccount"]["id"] for b in mine.json()} == {"BA-000003"}
        assert {b["billingAccount"]["id"] for b in theirs.json()} == {"BA-000010", "BA-000011"}
        assert api.get(f"{API}/customerBill?limit=50", headers=alice).headers["X-Cache"] == "hit"
        # A bill by id is cached once for all callers; each caller's scope is still checked.
        ident = mine.json()[0]["id"]
        assert api.get(f"{API}/customerBill/{ident}", headers=alice).status_code == 200
        hidden = api.get(f"{API}/customerBill/{ident}", headers=bob)
        assert hidden.status_code == 404 and hidden.headers["X-Cache"] == "hit"
