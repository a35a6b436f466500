"""The gateway in front of a failing SOAP back end, through real sockets.

The gateway runs for real on loopback (uvicorn, its lifespan opening the services) in
front of the SOAP simulator, with the fault-injecting proxy of tests/faults.py between
them. Reads of every fault are answered as their kind (503 + Retry-After, 504, 502,
never a TMF 404); an unreachable or hanging SOAP service at start-up does not stop the
gateway: that back end is not ready and its resources answer 503 until it comes up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from gateway.app import create_app
from gateway.config import GatewayConfig, ResilienceSettings, load_config
from gateway.services import StartupError
from simulators.soap_billing import ConsumerData, seed
from simulators.soap_billing import create_app as create_simulator
from tests.conftest import API, ROOT, assert_valid
from tests.faults import SOAP_FAULT_TEXT, FaultProxy
from tests.misbehaving import Misbehaving, Reply, answers
from tests.servers import ThreadedServer
from tests.test_resilience import GatewayServer, merge

BILL = f"{API}/customerBill"
SOAP_PATH = ("/soap",)  # faults hit the operations; the WSDL was loaded at start-up


@pytest.fixture
def soap_back_end() -> Iterator[tuple[FaultProxy, Misbehaving, ConsumerData]]:
    """The SOAP simulator (behind `Misbehaving`, for wrong replies) behind the fault proxy."""
    data = seed()
    simulator = Misbehaving(create_simulator(data))
    with ThreadedServer(simulator) as server, FaultProxy(server.port) as proxy:
        yield proxy, simulator, data


def soap_config(path: Path, wsdl: str, timeout: float, **resilience: Any) -> GatewayConfig:
    """A config file (`path`) with the SOAP back end at `wsdl`, its timeout and policy."""
    config = load_config(path)
    backends = dict(config.backends)
    options = {"wsdl": wsdl, "timeout_seconds": timeout, "wsdl_retry_max_seconds": 0.2}
    backends["consumer"] = backends["consumer"].model_copy(update=options)
    defaults: dict[str, Any] = {
        "default": {"retry": {"base_seconds": 0.01}, "breaker": {"cool_down_seconds": 0.3}}
    }
    settings = ResilienceSettings.model_validate(merge(defaults, resilience))
    return config.model_copy(update={"backends": backends, "resilience": settings})


Start = Callable[..., GatewayServer]


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
    running: list[GatewayServer] = []

    def start(
        wsdl: str, timeout: float = 1.0, config: Path | None = None, **resilience: Any
    ) -> GatewayServer:
        path = config or ROOT / "config" / "soap.yaml"
        server = GatewayServer(soap_config(path, wsdl, timeout, **resilience))
        running.append(server.__enter__())
        return server

    yield start
    for server in running:
        server.__exit__()


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert_valid("Error", body)
    assert "'consumer'" in body["message"]
    return body


def attempts(gw: GatewayServer) -> int:
    guard = gw.app.state.services.readiness.resilience.guard("consumer")
    made: int = guard.attempts
    return made


# Reads through each fault.


@pytest.mark.parametrize(
    ("fault", "options", "status", "tries"),
    [
        ("refuse", {}, 503, 4),  # nothing listens: retried, then unavailable
        ("reset", {}, 503, 4),  # reset before any reply
        ("reset_mid", {}, 503, 4),
        ("truncate", {}, 503, 4),  # half a reply, then a clean close
        ("status", {"status": 503}, 503, 4),  # an overloaded service: retried
        ("html", {}, 502, 1),  # a proxy's page, not the service: a bad gateway, not retried
        ("html", {"status": 404}, 502, 1),  # a wrong route is no "no such bill"
        ("soap_fault", {}, 502, 1),  # the service's own failure: not retried either
        ("blackhole", {}, 504, None),  # no answer: retried while the deadline allows
        ("hang", {}, 504, None),
        ("delay", {"delay": 0.6}, 504, None),
    ],
)
def test_each_fault_of_a_soap_read_is_answered_as_its_kind(
    gateway: Start,
    soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData],
    fault: str,
    options: dict[str, Any],
    status: int,
    tries: int | None,
) -> None:
    proxy, _, _ = soap_back_end
    gw = gateway(f"{proxy.base}/billing.wsdl", timeout=0.3, request_deadline_seconds=1.0)
    assert gw.http.get(f"{BILL}/C-1001").status_code == 200  # the connection is made
    before = attempts(gw)
    proxy.inject(fault, paths=SOAP_PATH, **options)
    started = time.monotonic()
    response = gw.http.get(f"{BILL}/C-1002")
    elapsed = time.monotonic() - started
    body = error(response, status)
    made = attempts(gw) - before
    if tries is not None:
        assert made == tries
    else:  # each try timed out after 0.3 s; the request's deadline (1 s) ended the retries
        assert 2 <= made <= 4 and elapsed < 1.0 + 0.25
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    if fault == "soap_fault":  # shortened for the caller
        assert "SOAP fault Internal: ORA-00060: deadlock detected" in body["message"]
        assert SOAP_FAULT_TEXT not in body["message"] and len(body["message"]) < 250
    proxy.heal()
    assert gw.http.get(f"{BILL}/C-1003").status_code == 200


def test_flaky_soap_503s_are_retried_until_they_succeed(
    gateway: Start, soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData]
) -> None:
    proxy, _, data = soap_back_end
    gw = gateway(f"{proxy.base}/billing.wsdl")
    ids = sorted(data.invoices)[:40]
    proxy.inject("status", status=503, rate=0.3, paths=SOAP_PATH, seed=7)
    answers_ = [gw.http.get(f"{BILL}/{ident}") for ident in ids]
    assert [a.status_code for a in answers_] == [200] * len(ids)
    assert [a.json()["id"] for a in answers_] == ids
    assert proxy.faulted > 5


def test_a_soap_fault_is_whole_in_the_log(
    gateway: Start, soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData]
) -> None:
    proxy, _, _ = soap_back_end
    gw = gateway(f"{proxy.base}/billing.wsdl")
    proxy.inject("soap_fault", paths=SOAP_PATH)
    with capture_logs() as logs:
        error(gw.http.get(f"{BILL}/C-1004"), 502)
    details = [e.get("detail", "") for e in logs if e.get("event") == "backend_error"]
    assert any(SOAP_FAULT_TEXT in d for d in details), logs


def test_a_reply_without_its_record_is_a_502_never_a_404(
    gateway: Start, soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData]
) -> None:
    proxy, simulator, _ = soap_back_end
    gw = gateway(f"{proxy.base}/billing.wsdl")
    empty = (
        b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<s:Body><cb:GetInvoiceResponse xmlns:cb="urn:example:consumer-billing:v2"/>'
        b"</s:Body></s:Envelope>"
    )
    simulator.on(
        lambda call: b"GetInvoice>" in call.body,
        answers(lambda call: Reply(200, empty, [(b"content-type", b"text/xml")])),
    )
    before = attempts(gw)
    error(gw.http.get(f"{BILL}/C-1005"), 502)
    assert attempts(gw) - before == 1  # the same question gets the same answer: not retried
    simulator.heal()
    assert gw.http.get(f"{BILL}/C-1005").status_code == 200
    assert gw.http.get(f"{BILL}/C-99999").status_code == 404  # the declared NotFound Fault


# Start-up with the SOAP service unreachable.

FEDERATED = """
backends:
  legacy_billing: {{kind: sql, url: "sqlite+aiosqlite:///{db}"}}
  consumer: {{kind: soap, wsdl: "{wsdl}", timeout_seconds: 1 {extra}}}
resources:
  customerBill:
    - {{backend: legacy_billing, mapping: {root}/mappings/legacy_sql/customer_bill.yaml,
       id_prefix: "L-", accounts: "^BA-"}}
    - {{backend: consumer, mapping: {root}/mappings/consumer_soap/customer_bill.yaml,
       id_prefix: "S-", accounts: "^CUST"}}
  billCycle:
    - {{backend: legacy_billing, mapping: {root}/mappings/legacy_sql/bill_cycle.yaml,
       id_prefix: "L-"}}
    - {{backend: consumer, mapping: {root}/mappings/consumer_soap/bill_cycle.yaml,
       id_prefix: "S-"}}
store:
  url: sqlite+aiosqlite:///{store}
"""


def federated_config(tmp_path: Path, db: Path, wsdl: str, extra: str = "") -> Path:
    path = tmp_path / "federated.yaml"
    store = tmp_path / "store.sqlite"
    text = FEDERATED.format(db=db, wsdl=wsdl, root=ROOT, store=store, extra=extra)
    path.write_text(text)
    return path


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def consumer_down_then_up(gw: GatewayServer, proxy: FaultProxy) -> None:
    """While the WSDL cannot be loaded: not ready, 503 naming it; the SQL back end serves."""
    ready = gw.http.get("/ready")
    assert ready.status_code == 503, ready.text
    consumer = ready.json()["backends"]["consumer"]
    assert consumer["state"] == "unavailable" and consumer["lastError"] == "WSDL not loaded"
    assert ready.json()["backends"]["legacy_billing"]["state"] == "closed"
    assert "127.0.0.1" not in ready.text
    body = error(gw.http.get(f"{BILL}/S-C-1001"), 503)
    assert body["code"] == "BACKEND_ERROR" and "WSDL not loaded" in body["message"]
    assert int(gw.http.get(f"{BILL}/S-C-1002").headers["Retry-After"]) >= 1
    assert gw.http.get(f"{BILL}/L-1").status_code == 200
    assert gw.http.get(f"{API}/billCycle/L-1").status_code == 200
    assert gw.http.get(f"{BILL}?billingAccount.id=BA-000003").status_code == 200
    error(gw.http.get(f"{API}/billCycle/S-CYC202401"), 503)

    proxy.heal()  # the service comes up: the WSDL is loaded in the background

    def serving() -> bool:
        return gw.http.get(f"{BILL}/S-C-1001").status_code == 200

    wait_for(serving)
    wait_for(lambda: gw.http.get("/ready").status_code == 200)
    assert gw.http.get(f"{API}/billCycle/S-CYC202401").json()["id"] == "S-CYC202401"
    listed = gw.http.get(f"{BILL}?limit=1000")
    assert listed.status_code == 200 and {b["id"][:2] for b in listed.json()} == {"L-", "S-"}


def test_a_refused_wsdl_at_start_up_does_not_stop_the_gateway(
    gateway: Start,
    soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData],
    demo_db: Path,
    tmp_path: Path,
) -> None:
    proxy, _, _ = soap_back_end
    proxy.inject("refuse")
    wsdl = f"{proxy.base}/billing.wsdl"
    started = time.monotonic()
    gw = gateway(wsdl, config=federated_config(tmp_path, demo_db, wsdl))
    assert time.monotonic() - started < 5
    consumer_down_then_up(gw, proxy)


def test_a_hanging_wsdl_at_start_up_delays_it_by_one_timeout_only(
    gateway: Start,
    soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData],
    demo_db: Path,
    tmp_path: Path,
) -> None:
    proxy, _, _ = soap_back_end
    proxy.inject("blackhole")  # connections accepted, never answered
    wsdl = f"{proxy.base}/billing.wsdl"
    started = time.monotonic()
    gw = gateway(wsdl, timeout=1.0, config=federated_config(tmp_path, demo_db, wsdl))
    assert time.monotonic() - started < 1.0 + 4
    consumer_down_then_up(gw, proxy)


def test_a_local_wsdl_copy_serves_from_the_start(
    gateway: Start,
    soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData],
    demo_db: Path,
    tmp_path: Path,
) -> None:
    """With `wsdl_file` the mappings are checked at start-up; calls fail until it is up."""
    proxy, _, _ = soap_back_end
    proxy.inject("refuse")
    wsdl = f"{proxy.base}/billing.wsdl"
    local = ROOT / "simulators" / "wsdl" / "consumer_billing.wsdl"
    extra = f', wsdl_file: "{local}", address: "{proxy.base}/soap"'
    gw = gateway(wsdl, config=federated_config(tmp_path, demo_db, wsdl, extra))
    assert gw.http.get("/ready").json()["backends"]["consumer"]["state"] == "closed"
    error(gw.http.get(f"{BILL}/S-C-1001"), 503)  # refused: the service is down
    assert gw.http.get(f"{BILL}/L-1").status_code == 200
    proxy.heal()
    wait_for(lambda: gw.http.get(f"{BILL}/S-C-1001").status_code == 200)


def test_a_local_wsdl_copy_without_a_named_operation_stops_start_up(
    demo_db: Path, tmp_path: Path
) -> None:
    """A mapping naming an operation the local copy lacks is a start-up error, as ever."""
    local = tmp_path / "old.wsdl"
    text = (ROOT / "simulators" / "wsdl" / "consumer_billing.wsdl").read_text()
    local.write_text(
        text.replace('<wsdl:operation name="ListBillCycles">', '<wsdl:operation name="ListCycles">')
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        FEDERATED.format(
            db=demo_db,
            wsdl="http://127.0.0.1:9/billing.wsdl",
            root=ROOT,
            store=tmp_path / "store.sqlite",
            extra=f', wsdl_file: "{local}"',
        )
    )
    app = create_app(soap_config(config, "http://127.0.0.1:9/billing.wsdl", 1.0))
    with pytest.raises(StartupError, match="no operation 'ListBillCycles'"), TestClient(app):
        pass


def test_a_late_wsdl_without_a_named_operation_keeps_the_back_end_unavailable(
    gateway: Start,
    soap_back_end: tuple[FaultProxy, Misbehaving, ConsumerData],
    demo_db: Path,
    tmp_path: Path,
) -> None:
    """The mappings could not be checked at start-up; they are when the WSDL arrives."""
    proxy, simulator, _ = soap_back_end
    text = (ROOT / "simulators" / "wsdl" / "consumer_billing.wsdl").read_text()
    renamed = text.replace(
        '<wsdl:operation name="ListBillCycles">', '<wsdl:operation name="ListCycles">'
    ).replace("http://127.0.0.1:8702/soap", f"{proxy.base}/soap")
    simulator.on(
        lambda call: call.path == "/billing.wsdl",
        answers(lambda call: Reply(200, renamed.encode(), [(b"content-type", b"text/xml")])),
    )
    proxy.inject("refuse")
    wsdl = f"{proxy.base}/billing.wsdl"
    gw = gateway(wsdl, config=federated_config(tmp_path, demo_db, wsdl))
    proxy.heal()

    def wsdl_asked() -> int:
        return len([c for c in simulator.calls if c.path == "/billing.wsdl"])

    def consumer() -> dict[str, Any]:
        backends: dict[str, Any] = gw.http.get("/ready").json()["backends"]
        return dict(backends["consumer"])

    wait_for(lambda: consumer()["lastError"] != "WSDL not loaded")
    assert consumer() == {
        "state": "unavailable",
        "serves": ["customerBill", "billCycle"],
        "lastError": "WSDL lacks an operation a mapping names",
        "lastErrorAgeSeconds": None,
    }
    assert gw.http.get("/ready").status_code == 503
    error(gw.http.get(f"{BILL}/S-C-1001"), 503)
    assert gw.http.get(f"{BILL}/L-1").status_code == 200
    asked = wsdl_asked()
    time.sleep(0.5)  # it was checked once: not loaded again and again
    assert wsdl_asked() == asked == 1
