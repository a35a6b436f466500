"""Every failure leaves as a TMF Error with the right status, and never as a stack trace."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from adapters.base import BackendError
from gateway.app import create_app
from gateway.errors import MAX_ECHO, MAX_MESSAGE, ApiError, clip, error_response
from tests.conftest import API, assert_valid, gateway_config


def client_for(db: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(gateway_config(db, **overrides)), raise_server_exceptions=False)


def test_unexpected_exception_is_a_500_without_internals(
    demo_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with client_for(demo_db) as client:

        async def exploding(*args: Any) -> Any:
            raise RuntimeError("secret connection string postgres://u:pw@db")

        reader = client.app.state.services.customer_bills
        monkeypatch.setattr(type(reader), "list", exploding)
        response = client.get(f"{API}/customerBill", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    body = response.json()
    assert_valid("Error", body)
    assert body["status"] == "500"
    assert "req-500" in body["message"]
    assert "secret" not in response.text and "Traceback" not in response.text


def test_a_back_end_record_that_does_not_fit_is_a_502_naming_backend_and_field(
    scratch_db: Path,
) -> None:
    with sqlite3.connect(scratch_db) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE INV_HDR SET STAT_CD = 'Z' WHERE INV_ID = 2")
        conn.execute("UPDATE INV_HDR SET INV_DT = '2024-13-45' WHERE INV_ID = 3")
    with client_for(scratch_db) as client, capture_logs() as logs:
        bad_state = client.get(f"{API}/customerBill/2")
        bad_date = client.get(f"{API}/customerBill?offset=2&limit=3")
        fine = client.get(f"{API}/customerBill/1")
    for response in (bad_state, bad_date):
        assert response.status_code == 502
        assert_valid("Error", response.json())
        assert "legacy_billing" in response.json()["message"]
    assert "'state'" in bad_state.json()["message"]
    assert "'billDate'" in bad_date.json()["message"]
    assert fine.status_code == 200
    mismatches = [e for e in logs if e["event"] == "backend_reply_mismatch"]
    assert [(e["backend"], e["field"]) for e in mismatches] == [
        ("legacy_billing", "state"),
        ("legacy_billing", "billDate"),
    ]
    assert "'Z'" in mismatches[0]["detail"]


def test_a_slow_back_end_is_a_504_after_its_timeout(demo_db: Path) -> None:
    with client_for(demo_db) as client:
        reader = client.app.state.services.bill_cycles
        reader.timeout = 0.05
        original = reader.source

        class Slow:
            columns = original.columns
            can_push = staticmethod(original.can_push)
            can_sort = staticmethod(original.can_sort)

            async def page(self, plan: Any) -> Any:
                await asyncio.sleep(5)

        reader.source = Slow()
        response = client.get(f"{API}/billCycle")
    assert response.status_code == 504
    assert_valid("Error", response.json())
    assert "0.05 s" in response.json()["message"]


@pytest.mark.parametrize("status", [502, 503])
def test_back_end_failures_keep_their_status_and_hide_details(demo_db: Path, status: int) -> None:
    with client_for(demo_db) as client, capture_logs() as logs:
        reader = client.app.state.services.bill_cycles

        real = reader.source

        class Broken:
            can_push = staticmethod(real.can_push)  # the id lookup is still planned as usual

            async def one(self, where: Any) -> Any:
                raise BackendError("disk I/O error at /var/lib/secret", status=status)

        reader.source = Broken()
        response = client.get(f"{API}/billCycle/1")
    assert response.status_code == status
    assert_valid("Error", response.json())
    assert "secret" not in response.text
    assert any(e["event"] == "backend_error" and "secret" in e["detail"] for e in logs)


def test_errors_are_json_even_for_unknown_routes_and_methods(client: TestClient) -> None:
    for response in (client.get("/"), client.put(f"{API}/billCycle/1")):
        assert response.headers["content-type"] == "application/json"
        assert_valid("Error", response.json())


def test_clip_keeps_short_text_and_cuts_long_text_to_the_limit() -> None:
    assert clip("short") == "short"
    assert clip(12345, 3) == "123"  # too short to say how long it was
    cut = clip("x" * 10_000)
    assert len(cut) == MAX_ECHO and cut.endswith("... (10000 characters)")


def test_an_error_body_caps_its_message_and_reason() -> None:
    body = ApiError(400, "r" * 5000, "m" * 5_000_000).body()
    assert len(body["message"]) == MAX_MESSAGE and body["message"].endswith("characters)")
    assert len(body["reason"]) <= MAX_ECHO
    assert_valid("Error", body)


def test_error_responses_are_neither_sniffed_nor_cached() -> None:
    response = error_response(ApiError(404, "Not found", headers={"Cache-Control": "max-age=5"}))
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "max-age=5"  # an explicit header wins
    assert error_response(ApiError(400, "Bad")).headers["cache-control"] == "no-store"
