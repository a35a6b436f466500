"""W3C trace context: accepted from callers (or started), logged, passed to back ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from adapters.base import OUTGOING_HEADERS
from gateway.app import create_app
from gateway.config import load_config
from gateway.tracing import outgoing_headers, parse_traceparent, trace_context
from simulators.rest_billing import create_app as create_simulator
from tests.conftest import API, ROOT, gateway_config
from tests.servers import ThreadedServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, (TRACE, PARENT, "01")),
        (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, "00")),
        # A later version may add fields; its first four are read as version 00's.
        (f"cc-{TRACE}-{PARENT}-01-what-comes-next", (TRACE, PARENT, "01")),
        (None, None),
        ("", None),
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # lowercase hex only
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        (f"00-{TRACE}-{PARENT}-1", None),
        ("garbage", None),
    ],
)
def test_traceparent_is_validated(header: str | None, expected: object) -> None:
    assert parse_traceparent(header) == expected


def test_the_gateway_is_a_hop_of_the_callers_trace() -> None:
    context = trace_context(TRACEPARENT, "vendor=abc")
    assert context.trace_id == TRACE and context.parent_id == PARENT
    assert context.span_id != PARENT and len(context.span_id) == 16
    assert context.traceparent == f"00-{TRACE}-{context.span_id}-01"
    assert parse_traceparent(context.traceparent) is not None
    assert outgoing_headers(context, "req-1") == {
        "traceparent": context.traceparent,
        "x-request-id": "req-1",
        "tracestate": "vendor=abc",
    }


def test_an_odd_or_long_tracestate_is_not_passed_on() -> None:
    assert trace_context(TRACEPARENT, "vendor=\u00e9").tracestate is None
    assert trace_context(TRACEPARENT, "v=" + "x" * 600).tracestate is None
    assert trace_context(TRACEPARENT, " a=1,b=2 ").tracestate == "a=1,b=2"


def test_an_invalid_parent_starts_a_new_trace() -> None:
    first = trace_context(f"00-{'0' * 32}-{PARENT}-01", "vendor=abc")
    second = trace_context(None)
    assert first.trace_id != second.trace_id
    assert first.parent_id is None and first.tracestate is None  # state only with a parent
    for context in (first, second):
        assert parse_traceparent(context.traceparent) is not None


@pytest.fixture
def gateway(demo_db: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    with TestClient(create_app(config)) as client:
        yield client


def test_the_trace_id_is_in_the_request_logs(gateway: TestClient) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        joined = gateway.get(f"{API}/customerBill?limit=1", headers={"traceparent": TRACEPARENT})
        started = gateway.get(f"{API}/customerBill?limit=1", headers={"traceparent": "bad"})
    assert joined.status_code == started.status_code == 200
    requests = [e for e in logs if e["event"] == "request"]
    assert [e["trace_id"] for e in requests][0] == TRACE
    assert requests[1]["trace_id"] != TRACE and len(requests[1]["trace_id"]) == 32
    assert requests[0]["request_id"] == joined.headers["X-Request-ID"]


def test_two_traceparent_headers_start_a_new_trace(gateway: TestClient) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        gateway.get(
            f"{API}/billCycle?limit=1",
            headers=[("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],
        )
    (request,) = [e for e in logs if e["event"] == "request"]
    assert request["trace_id"] != TRACE


def test_outgoing_headers_are_only_set_during_a_request(gateway: TestClient) -> None:
    assert OUTGOING_HEADERS.get() is None
    assert gateway.get(f"{API}/billCycle?limit=1").status_code == 200
    assert OUTGOING_HEADERS.get() is None


class HeaderRecorder:
    """The REST simulator, remembering the headers of every call it gets (test-local)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.calls.append((scope["path"], headers))
        await self.app(scope, receive, send)


@pytest.fixture
def rest_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, HeaderRecorder]]:
    recorder = HeaderRecorder(create_simulator())
    with ThreadedServer(recorder) as server:
        monkeypatch.setenv("ENTERPRISE_URL", server.base)
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = load_config(ROOT / "config" / "rest.yaml")
        with TestClient(create_app(config)) as client:
            yield client, recorder


def _api_calls(recorder: HeaderRecorder) -> list[dict[str, str]]:
    return [headers for path, headers in recorder.calls if not path.startswith("/oauth")]


def test_traceparent_and_request_id_reach_the_rest_back_end(
    rest_gateway: tuple[TestClient, HeaderRecorder],
) -> None:
    client, recorder = rest_gateway
    recorder.calls.clear()
    response = client.get(
        f"{API}/customerBill?limit=2",
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
    )
    assert response.status_code == 200
    calls = _api_calls(recorder)
    assert calls, "the back end was not called"
    for headers in calls:
        parsed = parse_traceparent(headers.get("traceparent"))
        assert parsed is not None
        trace_id, parent_id, flags = parsed
        assert trace_id == TRACE and parent_id != PARENT and flags == "01"
        assert headers["x-request-id"] == response.headers["X-Request-ID"]
        assert headers["tracestate"] == "vendor=abc"


def test_a_new_trace_reaches_the_back_end_when_the_caller_sent_none(
    rest_gateway: tuple[TestClient, HeaderRecorder],
) -> None:
    client, recorder = rest_gateway
    seen: list[Any] = []
    for limit, header in ((1, None), (3, "00-nonsense")):  # two queries: no cache hit
        recorder.calls.clear()
        extra = {"traceparent": header} if header else {}
        answer = client.get(f"{API}/customerBill?limit={limit}", headers=extra)
        assert answer.status_code == 200
        calls = _api_calls(recorder)
        assert calls
        parsed = parse_traceparent(calls[0].get("traceparent"))
        assert parsed is not None and "tracestate" not in calls[0]
        seen.append(parsed[0])
    assert seen[0] != seen[1]  # each request its own new trace
