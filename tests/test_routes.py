"""The read API over the bundled legacy database, checked against the official OAS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import API, assert_valid, fetch_all

RESOURCES = [
    ("customerBill", "CustomerBill"),
    ("appliedCustomerBillingRate", "AppliedCustomerBillingRate"),
    ("billCycle", "BillCycle"),
    ("customerBillOnDemand", "CustomerBillOnDemand"),
]
LEGACY_COUNTS = {
    "customerBill": "SELECT count(*) FROM INV_HDR",
    "appliedCustomerBillingRate": "SELECT count(*) FROM CHG_LINE",
    "billCycle": "SELECT count(*) FROM BILL_RUN",
}


def legacy_count(db: Path, collection: str) -> int:
    if collection not in LEGACY_COUNTS:
        return 0  # no back end for on-demand requests yet
    with sqlite3.connect(db) as conn:
        return conn.execute(LEGACY_COUNTS[collection]).fetchone()[0]


@pytest.mark.parametrize(("collection", "schema"), RESOURCES)
def test_every_item_of_every_list_is_valid_and_complete(
    client: TestClient, demo_db: Path, collection: str, schema: str
) -> None:
    items = fetch_all(client, collection)
    assert len(items) == legacy_count(demo_db, collection)
    assert len({item["id"] for item in items}) == len(items), "ids are unique"
    for item in items:
        assert_valid(schema, item)
        assert item["@type"] == schema
        assert item["href"] == f"http://testserver{API}/{collection}/{item['id']}"


@pytest.mark.parametrize(("collection", "schema"), RESOURCES[:3])
def test_single_resource_is_valid_and_equals_its_list_entry(
    client: TestClient, collection: str, schema: str
) -> None:
    listed = client.get(f"{API}/{collection}?limit=5&offset=3").json()
    assert len(listed) == 5
    for item in listed:
        response = client.get(f"{API}/{collection}/{item['id']}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert_valid(schema, response.json())
        assert response.json() == item


@pytest.mark.parametrize(("collection", "schema"), RESOURCES)
def test_fields_keeps_only_the_asked_attributes_plus_id_href_type(
    client: TestClient, collection: str, schema: str
) -> None:
    wanted = {
        "customerBill": "state,amountDue",
        "appliedCustomerBillingRate": "isBilled,taxIncludedAmount",
        "billCycle": "name,billingDate",
        "customerBillOnDemand": "state",
    }[collection]
    response = client.get(f"{API}/{collection}?fields={wanted}&limit=7")
    assert response.status_code == 200
    for item in response.json():
        assert_valid(schema, item)
        assert set(item) <= {"id", "href", "@type", *wanted.split(",")}
        assert {"id", "href", "@type"} <= set(item)
    if collection != "customerBillOnDemand":
        first = response.json()[0]
        single = client.get(f"{API}/{collection}/{first['id']}?fields={wanted}").json()
        assert single == first


def test_fields_on_a_nested_attribute_keeps_the_reference_valid(client: TestClient) -> None:
    items = client.get(f"{API}/customerBill?fields=billingAccount.id,amountDue.value").json()
    for item in items:
        assert_valid("CustomerBill", item)
        assert set(item) == {"id", "href", "@type", "billingAccount", "amountDue"}
        assert set(item["billingAccount"]) == {"id", "@type"}
        assert set(item["amountDue"]) == {"value"}


@pytest.mark.parametrize(("collection", "schema"), RESOURCES[:3])
def test_paging_headers_and_windows(
    client: TestClient, demo_db: Path, collection: str, schema: str
) -> None:
    total = legacy_count(demo_db, collection)
    everything = fetch_all(client, collection)
    response = client.get(f"{API}/{collection}?offset=4&limit=3")
    assert response.headers["X-Total-Count"] == str(total)
    assert response.headers["X-Result-Count"] == "3"
    assert [i["id"] for i in response.json()] == [i["id"] for i in everything[4:7]]
    for item in response.json():
        assert_valid(schema, item)
    tail = client.get(f"{API}/{collection}?offset={total - 2}&limit=10")
    assert tail.headers["X-Result-Count"] == "2"
    assert tail.headers["X-Total-Count"] == str(total)
    past = client.get(f"{API}/{collection}?offset={total + 5}")
    assert past.status_code == 200 and past.json() == []
    assert past.headers["X-Total-Count"] == str(total)
    assert past.headers["X-Result-Count"] == "0"
    zero = client.get(f"{API}/{collection}?limit=0")
    assert zero.json() == [] and zero.headers["X-Total-Count"] == str(total)


def test_default_and_maximum_limit(client: TestClient) -> None:
    default = client.get(f"{API}/appliedCustomerBillingRate")
    assert default.headers["X-Result-Count"] == "20"
    capped = client.get(f"{API}/appliedCustomerBillingRate?limit=5000")
    assert capped.status_code == 200
    assert capped.headers["X-Result-Count"] == "1000"


@pytest.mark.parametrize("param", ["limit=-1", "offset=-3", "limit=abc", "offset=1.5", "limit="])
def test_bad_paging_is_a_400_error(client: TestClient, param: str) -> None:
    response = client.get(f"{API}/customerBill?{param}")
    assert response.status_code == 400
    body = response.json()
    assert_valid("Error", body)
    assert body["status"] == "400"
    assert param.split("=")[0] in body["message"]


@pytest.mark.parametrize("collection", [c for c, _ in RESOURCES])
def test_unknown_id_is_a_404_error(client: TestClient, collection: str) -> None:
    for ident in ("987654321", "not-a-number", "0"):
        response = client.get(f"{API}/{collection}/{ident}")
        assert response.status_code == 404
        assert_valid("Error", response.json())
        assert response.json()["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/customerBill/1"),
        ("POST", "/customerBill"),
        ("PUT", "/customerBill/1"),
        ("PATCH", "/billCycle/1"),
        ("DELETE", "/appliedCustomerBillingRate/1"),
        ("POST", "/billCycle"),
        ("GET", "/hub"),
    ],
)
def test_methods_the_oas_does_not_define_are_405(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, f"{API}{path}")
    assert response.status_code == 405
    assert_valid("Error", response.json())
    assert response.json()["status"] == "405"
    assert method not in response.headers["Allow"]


def test_allow_header_lists_every_method_of_the_path(client: TestClient) -> None:
    response = client.delete(f"{API}/customerBill/1")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed == {"GET", "HEAD", "PATCH"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/hub"), ("DELETE", "/hub/1"), ("POST", "/customerBillOnDemand")],
)
def test_operations_without_configured_support_are_501(
    demo_db: Path, method: str, path: str
) -> None:
    from gateway.app import create_app
    from tests.conftest import gateway_config

    config = gateway_config(demo_db, on_demand=None, events=None)
    with TestClient(create_app(config)) as bare:
        response = bare.request(method, f"{API}{path}", json={"callback": "http://x"})
        assert bare.get(f"{API}/customerBillOnDemand").status_code == 501
    assert response.status_code == 501
    assert_valid("Error", response.json())


def test_unknown_path_is_a_tmf_404(client: TestClient) -> None:
    response = client.get("/tmf-api/customerBillManagement/v4/customerBill")
    assert response.status_code == 404
    assert_valid("Error", response.json())


def test_values_come_from_the_legacy_columns(client: TestClient, demo_db: Path) -> None:
    with sqlite3.connect(demo_db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM INV_HDR WHERE RUN_ID IS NOT NULL LIMIT 1").fetchone()
        taxes = conn.execute(
            "SELECT * FROM INV_TAX WHERE INV_ID = ? ORDER BY SEQ_NO", (row["INV_ID"],)
        ).fetchall()
    bill = client.get(f"{API}/customerBill/{row['INV_ID']}").json()
    assert bill["billNo"] == row["INV_NO"]
    assert bill["amountDue"] == {"unit": row["CURR_CD"], "value": row["GRS_AMT"] / 100}
    assert bill["remainingAmount"]["value"] == row["OPEN_AMT"] / 100
    d = row["INV_DT"]
    assert bill["billDate"].startswith(f"{d[:4]}-{d[4:6]}-{d[6:]}T00:00:00+0")
    codes = {"N": "new", "H": "onHold", "V": "validated", "S": "sent", "C": "settled"}
    assert bill["state"] == {**codes, "P": "partiallyPaid"}[row["STAT_CD"]]
    assert bill["billingAccount"]["id"] == row["ACCT_NO"]
    assert bill["billCycle"]["id"] == str(row["RUN_ID"])
    assert bill["billCycle"]["href"].endswith(f"/billCycle/{row['RUN_ID']}")
    assert bill["billDocument"][0]["id"] == row["ARCH_KEY"]
    assert [t["taxAmount"]["value"] for t in bill["taxItem"]] == [t["TAX_AMT"] / 100 for t in taxes]


def test_public_base_url_replaces_the_request_host(demo_db: Path) -> None:
    from gateway.app import create_app
    from tests.conftest import gateway_config

    config = gateway_config(demo_db, public_base_url="https://api.example.com/billing")
    with TestClient(create_app(config)) as other:
        bill = other.get(f"{API}/customerBill?runType=onCycle&limit=1").json()[0]
    root = f"https://api.example.com/billing{API}"
    assert bill["href"] == f"{root}/customerBill/{bill['id']}"
    assert bill["billCycle"]["href"].startswith(f"{root}/billCycle/")
