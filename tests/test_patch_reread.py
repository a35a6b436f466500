"""PATCH whose write succeeded but whose re-read failed: the client hears of the write.

The REST simulator on loopback, behind `Misbehaving`: the GET that follows a successful
PATCH of the invoice fails (503, then an HTML page), as a flaky back end's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_config
from simulators.rest_billing import BillingData
from simulators.rest_billing import create_app as rest_simulator
from simulators.rest_billing import seed as rest_seed
from tests.conftest import API, ROOT, assert_valid
from tests.misbehaving import Call, Forward, Misbehaving, Reply, unavailable
from tests.servers import ThreadedServer

MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Misbehaving, BillingData]]:
    data = rest_seed()
    back_end = Misbehaving(rest_simulator(data))
    with ThreadedServer(back_end) as server:
        monkeypatch.setenv("ENTERPRISE_URL", server.base)
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        with TestClient(create_app(load_config(ROOT / "config" / "rest.yaml"))) as client:
            yield client, back_end, data


def fail_reads_after_the_write(back_end: Misbehaving, ident: str, failure: Reply | None) -> None:
    """Once the invoice was PATCHed, its GETs fail (`failure`, or 503)."""
    written: list[Call] = []
    path = f"/api/v1/invoices/{ident}"

    async def patched(call: Call, forward: Forward) -> Reply:
        reply = await forward()
        written.append(call)
        return reply

    async def read(call: Call, forward: Forward) -> Reply:
        if not written:
            return await forward()
        if failure is not None:
            return failure
        return await unavailable()(call, forward)

    back_end.on(lambda call: call.path == path and call.method == "PATCH", patched)
    back_end.on(lambda call: call.path == path and call.method == "GET", read)


@pytest.mark.parametrize(
    "failure",
    [None, Reply(404, b"<html><body>Not Found</body></html>", [(b"content-type", b"text/html")])],
    ids=["503", "html-404"],
)
def test_a_write_whose_re_read_fails_is_reported_as_done(
    rest: tuple[TestClient, Misbehaving, BillingData], failure: Reply | None
) -> None:
    client, back_end, data = rest
    ident = next(i for i, v in sorted(data.invoices.items()) if v["status"] == "OPEN")
    before = client.get(f"{API}/customerBill/{ident}").json()
    fail_reads_after_the_write(back_end, ident, failure)
    response = client.patch(f"{API}/customerBill/{ident}", json={"state": "onHold"}, headers=MERGE)
    assert response.status_code == 200, response.text
    assert data.invoices[ident]["status"] == "ON_HOLD"  # the write happened
    body = response.json()
    assert_valid("CustomerBill", body)
    assert body["state"] == "onHold"
    assert {k: v for k, v in body.items() if k != "state"} == {
        k: v for k, v in before.items() if k != "state"
    }
    assert response.headers["ETag"]
    calls = [(c.method, c.path) for c in back_end.calls if c.path.endswith(ident)]
    assert calls[-3:] == [("GET", f"/api/v1/invoices/{ident}")] + [
        ("PATCH", f"/api/v1/invoices/{ident}"),
        ("GET", f"/api/v1/invoices/{ident}"),
    ]
