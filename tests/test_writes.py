"""PATCH /customerBill/{id}: the four formats, what may change, lifecycle, ETags, races."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ApiError
from gateway.limits import Limits, limits_in_effect
from gateway.patch import apply_patch, parse_body
from tests.conftest import API, assert_valid, gateway_config
from tests.test_main import free_port, start, stop, wait_ready

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
QUERY_PATCH = "application/json-patch-query+json"
CODES = {"new": "N", "onHold": "H", "validated": "V", "sent": "S", "settled": "C"}
CODES["partiallyPaid"] = "P"


@pytest.fixture
def writable(scratch_db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(gateway_config(scratch_db))) as client:
        client.db = scratch_db  # type: ignore[attr-defined]
        yield client


def row(db: Path, bill: str) -> sqlite3.Row:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM INV_HDR WHERE INV_ID = ?", (int(bill),)).fetchone()


def bill_in(client: TestClient, state: str, skip: int = 0) -> str:
    bills = client.get(f"{API}/customerBill?state={state}&runType=onCycle&limit=1&offset={skip}")
    return bills.json()[0]["id"]


def patch(client: TestClient, bill: str, body: Any, content_type: str, **headers: str):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = client.patch(
        f"{API}/customerBill/{bill}",
        content=data,
        headers={"Content-Type": content_type, **headers},
    )
    assert_valid("CustomerBill" if response.status_code == 200 else "Error", response.json())
    return response


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", {"state": "onHold"}),
        ("application/json; charset=utf-8", {"state": "onHold", "@type": "CustomerBill"}),
        (MERGE, {"state": "onHold"}),
        (JSON_PATCH, [{"op": "replace", "path": "/state", "value": "onHold"}]),
        (QUERY_PATCH, [{"op": "replace", "path": "/state?state=new", "value": "onHold"}]),
    ],
)
def test_each_format_changes_the_state_in_the_back_end(
    writable: TestClient, content_type: str, body: Any
) -> None:
    bill = bill_in(writable, "new")
    before = row(writable.db, bill)
    response = patch(writable, bill, body, content_type)
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert response.json()["state"] == "onHold"
    after = row(writable.db, bill)
    assert after["STAT_CD"] == "H"
    assert after["UPD_TS"] > before["UPD_TS"]  # the legacy "last change" column is stamped
    assert (
        response.json()["lastUpdate"] != writable.get(f"{API}/customerBill/1").json()["lastUpdate"]
    )
    assert writable.get(f"{API}/customerBill/{bill}").json() == response.json()
    assert response.headers["ETag"] == writable.get(f"{API}/customerBill/{bill}").headers["ETag"]


def test_bill_cycle_is_written_as_its_legacy_key(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    target = "7" if row(writable.db, bill)["RUN_ID"] != 7 else "8"
    body = {"billCycle": {"id": target, "@type": "BillCycleRef"}}
    response = patch(writable, bill, body, MERGE)
    assert response.status_code == 200, response.text
    assert response.json()["billCycle"]["id"] == target
    assert response.json()["billCycle"]["href"].endswith(f"/billCycle/{target}")
    assert row(writable.db, bill)["RUN_ID"] == int(target)
    unknown = patch(writable, bill, {"billCycle": {"id": "999", "@type": "BillCycleRef"}}, MERGE)
    assert unknown.status_code == 400 and "999" in unknown.json()["message"]


def test_json_patch_that_fails_halfway_changes_nothing(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    before = row(writable.db, bill)
    ops = [
        {"op": "replace", "path": "/state", "value": "validated"},
        {"op": "test", "path": "/billNo", "value": "not-this-bill"},
    ]
    failed = patch(writable, bill, ops, JSON_PATCH)
    assert failed.status_code == 409
    assert_valid("Error", failed.json())
    ops[1] = {"op": "replace", "path": "/billNo", "value": "X-1"}
    refused = patch(writable, bill, ops, JSON_PATCH)
    assert refused.status_code == 400 and "billNo" in refused.json()["message"]
    ops[1] = {"op": "remove", "path": "/nonexistent"}
    broken = patch(writable, bill, ops, JSON_PATCH)
    assert broken.status_code == 400
    assert tuple(row(writable.db, bill)) == tuple(before)


def test_multi_operation_json_patch_applies_in_order(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    ops = [
        {"op": "test", "path": "/state", "value": "new"},
        {"op": "replace", "path": "/state", "value": "onHold"},
        {"op": "replace", "path": "/state", "value": "validated"},
    ]
    response = patch(writable, bill, ops, JSON_PATCH)
    assert response.status_code == 200 and response.json()["state"] == "validated"


def test_patch_query_selector_that_matches_nothing_is_409(writable: TestClient) -> None:
    bill = bill_in(writable, "sent")
    response = patch(
        writable,
        bill,
        [{"op": "replace", "path": "/state?state=new", "value": "onHold"}],
        QUERY_PATCH,
    )
    assert response.status_code == 409
    assert row(writable.db, bill)["STAT_CD"] == "S"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        ("text/plain", b"state=onHold", 415, "application/merge-patch+json"),
        (None, b"{}", 415, "no Content-Type"),
        (MERGE, b"{not json", 400, "not JSON"),
        (MERGE, b"[1, 2]", 400, "JSON object"),
        (MERGE, {"state": "paid"}, 400, "'paid' is not one of"),
        (MERGE, {"billNo": "X"}, 400, "billNo cannot be changed"),
        (MERGE, {"amountDue": {"value": 0}}, 400, "amountDue cannot be changed"),
        (MERGE, {"@type": "Invoice"}, 400, "@type must stay"),
        (MERGE, {"billCycle": None}, 400, "billCycle cannot be removed"),
        (
            JSON_PATCH,
            [{"op": "replace", "path": "/billCycle", "value": {"id": "5"}}],
            400,
            "'@type' is a required property",
        ),
        (JSON_PATCH, {"op": "replace"}, 400, "is not of type 'array'"),
        (JSON_PATCH, [{"op": "jump", "path": "/state"}], 400, "'jump' is not one of"),
        (QUERY_PATCH, [{"op": "replace", "path": "/state?state", "value": "new"}], 400, "selector"),
    ],
)
def test_bad_patches_are_refused_and_change_nothing(
    writable: TestClient, content_type: str | None, body: Any, status: int, words: str
) -> None:
    bill = bill_in(writable, "new")
    before = tuple(row(writable.db, bill))
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": content_type} if content_type else {}
    response = writable.patch(f"{API}/customerBill/{bill}", content=data, headers=headers)
    assert response.status_code == status, response.text
    assert_valid("Error", response.json())
    assert words in response.json()["message"]
    assert tuple(row(writable.db, bill)) == before


def test_unknown_bill_is_404(writable: TestClient) -> None:
    response = patch(writable, "987654", {"state": "onHold"}, MERGE)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("start", "target", "status"),
    [
        ("settled", "new", 409),
        ("settled", "sent", 409),
        ("new", "settled", 409),
        ("sent", "new", 409),
        ("new", "validated", 200),
        ("validated", "sent", 200),
        ("sent", "settled", 200),
        ("partiallyPaid", "settled", 200),
        ("settled", "settled", 200),
    ],
)
def test_lifecycle_table(writable: TestClient, start: str, target: str, status: int) -> None:
    bill = bill_in(writable, start)
    response = patch(writable, bill, {"state": target}, MERGE)
    assert response.status_code == status, response.text
    expected = target if status == 200 else start
    assert row(writable.db, bill)["STAT_CD"] == CODES[expected]
    if status == 409:
        assert_valid("Error", response.json())
        assert start in response.json()["message"] and target in response.json()["message"]


def test_lifecycle_table_comes_from_configuration(scratch_db: Path) -> None:
    config = gateway_config(scratch_db, bill_transitions={"settled": ("new",)})
    with TestClient(create_app(config)) as client:
        bill = bill_in(client, "settled")
        assert patch(client, bill, {"state": "new"}, MERGE).status_code == 200
        assert patch(client, bill, {"state": "sent"}, MERGE).status_code == 409


def test_if_match_with_a_stale_etag_is_412(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    tag = writable.get(f"{API}/customerBill/{bill}").headers["ETag"]
    first = patch(writable, bill, {"state": "onHold"}, MERGE, **{"If-Match": tag})
    assert first.status_code == 200 and first.headers["ETag"] != tag
    stale = patch(writable, bill, {"state": "validated"}, MERGE, **{"If-Match": tag})
    assert stale.status_code == 412
    assert_valid("Error", stale.json())
    assert row(writable.db, bill)["STAT_CD"] == "H"
    fresh = patch(
        writable, bill, {"state": "validated"}, MERGE, **{"If-Match": first.headers["ETag"]}
    )
    assert fresh.status_code == 200


def test_fields_on_the_patch_response(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    response = writable.patch(
        f"{API}/customerBill/{bill}?fields=state",
        content=b'{"state": "onHold"}',
        headers={"Content-Type": MERGE},
    )
    assert response.json() == {
        "id": bill,
        "href": response.json()["href"],
        "@type": "CustomerBill",
        "state": "onHold",
    }


def test_a_patch_that_changes_nothing_writes_nothing(writable: TestClient) -> None:
    bill = bill_in(writable, "new")
    before = tuple(row(writable.db, bill))
    response = patch(writable, bill, {"state": "new"}, MERGE)
    assert response.status_code == 200
    assert tuple(row(writable.db, bill)) == before


@pytest.fixture
def live(scratch_db: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    process = start({"LEGACY_DB": str(scratch_db), "PORT": str(port), "LOG_LEVEL": "WARNING"})
    base = f"http://127.0.0.1:{port}{API}"
    try:
        wait_ready(f"{base}/billCycle?limit=1", process)
        yield base, scratch_db
    finally:
        stop(process)


async def _concurrently(
    base: str, bill: str, bodies: list[tuple[str, Any]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.patch(
                    f"{base}/customerBill/{bill}",
                    content=orjson.dumps(body),
                    headers={"Content-Type": content_type},
                )
                for content_type, body in bodies
            )
        )
    for response in responses:
        assert_valid("CustomerBill" if response.status_code == 200 else "Error", response.json())
    return responses


def test_concurrent_conditional_patches_exactly_one_wins(live: tuple[str, Path]) -> None:
    base, db = live
    with sqlite3.connect(db) as conn:
        (bill,) = conn.execute("SELECT INV_ID FROM INV_HDR WHERE STAT_CD = 'N' LIMIT 1").fetchone()
    targets = ["onHold", "validated", "sent"] * 4
    bodies = [
        (QUERY_PATCH, [{"op": "replace", "path": "/state?state=new", "value": t}]) for t in targets
    ]
    responses = asyncio.run(_concurrently(base, str(bill), bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * (len(targets) - 1), [r.text for r in responses]
    (winner,) = [r.json()["state"] for r in responses if r.status_code == 200]
    assert row(db, str(bill))["STAT_CD"] == CODES[winner]


def test_concurrent_patches_never_break_the_lifecycle(live: tuple[str, Path]) -> None:
    base, db = live
    with sqlite3.connect(db) as conn:
        bills = [
            b for (b,) in conn.execute("SELECT INV_ID FROM INV_HDR WHERE STAT_CD = 'S' LIMIT 5")
        ]
    for bill in bills:
        bodies = [(MERGE, {"state": "settled"}), (MERGE, {"state": "partiallyPaid"})] * 3
        responses = asyncio.run(_concurrently(base, str(bill), bodies))
        final = row(db, str(bill))["STAT_CD"]
        won = {r.json()["state"] for r in responses if r.status_code == 200}
        assert all(r.status_code in (200, 409) for r in responses)
        # settled is final: once any "settled" succeeded, nothing may follow it
        assert "settled" in won and final == "C"


BILL_DOC = {
    "id": "1",
    "@type": "CustomerBill",
    "state": "new",
    "taxItem": [
        {"@type": "TaxItem", "taxCategory": "VAT", "taxRate": 19},
        {"@type": "TaxItem", "taxCategory": "RED", "taxRate": 7},
    ],
}


def test_json_patch_operations_are_bounded_before_and_after_selector_expansion() -> None:
    test_id = {"op": "test", "path": "/id", "value": "1"}
    with limits_in_effect(Limits(patch_operations=2)):
        assert apply_patch(BILL_DOC, orjson.dumps([test_id] * 2), JSON_PATCH) == BILL_DOC
        with pytest.raises(ApiError, match="at most 2 operations, not 3"):
            apply_patch(BILL_DOC, orjson.dumps([test_id] * 3), JSON_PATCH)
        # Two operations, but the selector picks both tax items: three once expanded.
        every_rate = {"op": "replace", "path": "/taxItem?@type=TaxItem/taxRate", "value": 5}
        with pytest.raises(ApiError, match="not 3"):
            apply_patch(BILL_DOC, orjson.dumps([test_id, every_rate]), QUERY_PATCH)
        patched = apply_patch(BILL_DOC, orjson.dumps([every_rate]), QUERY_PATCH)
        assert [item["taxRate"] for item in patched["taxItem"]] == [5, 5]


def test_copy_operations_share_one_budget_of_values() -> None:
    doubling = orjson.dumps([{"op": "copy", "from": "", "path": f"/c{i}"} for i in range(3)])
    with limits_in_effect(Limits(patch_copied_nodes=100)):
        patched = apply_patch(BILL_DOC, doubling, JSON_PATCH)
        assert patched["c2"]["c1"]["c0"] == BILL_DOC
        more = orjson.dumps([{"op": "copy", "from": "", "path": f"/c{i}"} for i in range(4)])
        with pytest.raises(ApiError, match="duplicate more than 100 values"):
            apply_patch(BILL_DOC, more, JSON_PATCH)
    assert BILL_DOC.keys() == {"id", "@type", "state", "taxItem"}  # never changed in place


@pytest.mark.parametrize("index", ["\u00b2", "\u0663", "x", "-1"])
def test_query_patch_array_index_must_be_ascii_digits(index: str) -> None:
    body = orjson.dumps([{"op": "replace", "path": f"/taxItem/{index}/taxRate", "value": 1}])
    with pytest.raises(ApiError) as caught:
        apply_patch(BILL_DOC, body, QUERY_PATCH)
    assert caught.value.status == 400 and "not an index" in (caught.value.message or "")


def test_query_patch_index_of_thousands_of_digits_selects_nothing() -> None:
    body = orjson.dumps([{"op": "replace", "path": "/taxItem/" + "9" * 5000, "value": 1}])
    with pytest.raises(ApiError) as caught:
        apply_patch(BILL_DOC, body, QUERY_PATCH)
    assert caught.value.status == 409


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"a":' * 33 + b"1" + b"}" * 33, "more than 32 levels"),
        (b"[" * 32 + b"]" * 32, None),
        (orjson.dumps({"a": [0] * 20_000}), "more than 20000 JSON values"),
        (orjson.dumps({"a": [0] * 19_998}), None),
    ],
)
def test_parse_body_bounds_depth_and_size(body: bytes, words: str | None) -> None:
    if words is None:
        parse_body(body)
        return
    with pytest.raises(ApiError) as caught:
        parse_body(body)
    assert caught.value.status == 400 and words in (caught.value.message or "")
