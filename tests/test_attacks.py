"""Attacks, tried as an attacker would: each is refused with a TMF Error and changes nothing.

Every row of the table sends one hostile request and checks the status, the `Error` body
(valid against the OAS, the expected code, a bounded message), the safety headers, and
that the legacy database and the gateway store are exactly as before. Further tests run
the same kind of requests against a real server process (what uvicorn sees first), and
check the response headers, CORS and the logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from starlette.testclient import TestClient

from adapters.base import MATCH_NONE, AllOf, AnyOf, Compare, IsNull
from gateway.app import create_app
from gateway.errors import MAX_MESSAGE
from gateway.guards import GuardMiddleware
from gateway.logs import configure_logging, logged_query
from gateway.pushdown import INT64_MAX, INT64_MIN, within_int64
from tests.conftest import API, assert_valid, gateway_config, tuned
from tests.test_main import free_port, start, stop, wait_ready

BIG = "9223372036854775808"  # 2^63: one past the largest SQL BIGINT
HUGE = "99999999999999999999999"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
QUERY_PATCH = "application/json-patch-query+json"
ON_DEMAND = f"{API}/customerBillOnDemand"
HUB = f"{API}/hub"


def nested(levels: int, leaf: str = "1") -> str:
    """JSON objects nested `levels` deep, as text (orjson refuses to write such depth)."""
    return '{"a":' * levels + leaf + "}" * levels


@dataclass(frozen=True)
class Attack:
    name: str
    method: str
    path: str
    status: int
    code: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    words: str = ""  # expected in the message

    def send(self, client: TestClient) -> Any:
        headers = dict(self.headers)
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return client.request(self.method, self.path, content=self.body, headers=headers)


def patch_bill(body: Any, content_type: str = MERGE, bill: str = "1") -> dict[str, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return {
        "method": "PATCH",
        "path": f"{API}/customerBill/{bill}",
        "body": data,
        "content_type": content_type,
    }


def post(path: str, body: Any, content_type: str | None = "application/json") -> dict[str, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return {"method": "POST", "path": path, "body": data, "content_type": content_type}


def get(path: str) -> dict[str, Any]:
    return {"method": "GET", "path": f"{API}/{path}", "content_type": None}


ACCOUNT = {"billingAccount": {"id": "BA-000001"}}
TAX_ITEM_PATH = "/taxItem/\u00b2/taxRate"  # '²': a digit to str.isdigit() and int()

ATTACKS = [
    # Sizes: the body limit, counted before reading and while reading.
    Attack(
        "10 MB description",
        **patch_bill({"description": "x" * 10_000_000}),
        status=413,
        code="PAYLOAD_TOO_LARGE",
    ),
    Attack(
        "20 MB JSON Patch of 400k operations",
        **patch_bill([{"op": "test", "path": "/id", "value": "1"}] * 400_000, JSON_PATCH),
        status=413,
        code="PAYLOAD_TOO_LARGE",
    ),
    Attack(
        "JSON Patch of 1,001 operations",
        **patch_bill([{"op": "test", "path": "/id", "value": "1"}] * 1001, JSON_PATCH),
        status=400,
        code="INVALID_BODY",
        words="at most 1000 operations",
    ),
    Attack(
        "JSON Patch doubling the bill 40 times by copy",
        **patch_bill([{"op": "copy", "from": "", "path": f"/c{i}"} for i in range(40)], JSON_PATCH),
        status=400,
        code="INVALID_BODY",
        words="copy operations duplicate more than",
    ),
    Attack(
        "5 MB hub query",
        **post(HUB, {"callback": "http://127.0.0.1:9/cb", "query": "a=" * 2_500_000}),
        status=413,
        code="PAYLOAD_TOO_LARGE",
    ),
    Attack(
        "hub query longer than a URL may be",
        **post(HUB, {"callback": "http://127.0.0.1:9/cb", "query": "state=new&" * 1000}),
        status=400,
        code="INVALID_QUERY",
        words="at most 8192 characters",
    ),
    Attack(
        "300k empty arrays (cheap bytes, costly to validate)",
        **post(ON_DEMAND, {**ACCOUNT, "relatedParty": [[]] * 300_000}),
        status=400,
        code="INVALID_BODY",
        words="more than 20000 JSON values",
    ),
    Attack(
        "header block of 20 kB",
        **get("billCycle/1"),
        headers={"X-Filler": "f" * 20_000},
        status=431,
        code="HEADERS_TOO_LARGE",
    ),
    # Depth: what would exhaust Python's recursion in merge patch or jsonschema.
    Attack(
        "merge patch nested 990 deep",
        **patch_bill(nested(990).encode()),
        status=400,
        code="INVALID_BODY",
        words="more than 32 levels",
    ),
    Attack(
        "JSON Patch value nested 1000 deep",
        **patch_bill(
            b'[{"op":"add","path":"/x","value":' + b"[" * 1000 + b"]" * 1000 + b"}]", JSON_PATCH
        ),
        status=400,
        code="INVALID_BODY",
        words="more than 32 levels",
    ),
    Attack(
        "JSON nested past the parser's own limit",
        **patch_bill(b"[" * 2000 + b"]" * 2000, JSON_PATCH),
        status=400,
        code="INVALID_BODY",
        words="not JSON",
    ),
    Attack(
        "on-demand relatedParty nested 300 deep",
        **post(
            ON_DEMAND,
            ('{"billingAccount":{"id":"BA-000001"},"relatedParty":[' + nested(300) + "]}").encode(),
        ),
        status=400,
        code="INVALID_BODY",
        words="more than 32 levels",
    ),
    Attack(
        "JSON-Patch-Query path with a superscript digit",
        **patch_bill([{"op": "replace", "path": TAX_ITEM_PATH, "value": 7}], QUERY_PATCH),
        status=400,
        code="INVALID_BODY",
        words="not an index",
    ),
    Attack(
        "JSON Patch replacing the whole bill with a list",
        **patch_bill([{"op": "replace", "path": "", "value": []}], JSON_PATCH),
        status=400,
        code="INVALID_BODY",
        words="must stay a JSON object",
    ),
    Attack(
        "JSON Patch moving an array to the root",
        **patch_bill([{"op": "move", "from": "/taxItem", "path": ""}], JSON_PATCH),
        status=400,
        code="INVALID_BODY",
        words="must stay a JSON object",
    ),
    # Integers past 64 bits.
    *(
        Attack(f"GET {kind} id 2^63", **get(f"{kind}/{BIG}"), status=404, code="NOT_FOUND")
        for kind in ("customerBill", "billCycle", "appliedCustomerBillingRate")
    ),
    Attack(
        "GET on-demand id 2^63", **get(f"customerBillOnDemand/{BIG}"), status=404, code="NOT_FOUND"
    ),
    Attack(
        "GET a 4,400-digit id", **get("customerBill/" + "1" * 4400), status=404, code="NOT_FOUND"
    ),
    Attack(
        "PATCH bill id 2^63",
        **patch_bill({"state": "onHold"}, bill=BIG),
        status=404,
        code="NOT_FOUND",
    ),
    Attack(
        "PATCH billCycle.id past 64 bits",
        **patch_bill({"billCycle": {"id": HUGE, "@type": "BillCycleRef"}}),
        status=400,
        code="INVALID_BODY",
        words="does not exist",
    ),
    Attack(
        "filter value 1E999990 (a minute of integer arithmetic)",
        **get("customerBill?amountDue.value.gt=1E999990"),
        status=400,
        code="INVALID_QUERY",
        words="out of range",
    ),
    Attack(
        "range filter on an id of 5,000 digits",
        **get("customerBill?amountDue.value.gt=" + "9" * 5000),
        status=400,
        code="INVALID_QUERY",
        words="out of range",
    ),
    # What reaches the application of odd request lines.
    Attack(
        "id of 60,000 characters",
        **get("customerBill/" + "1" * 60_000),
        status=414,
        code="URI_TOO_LONG",
    ),
    Attack(
        "id of 300 characters", **get("customerBill/" + "a" * 300), status=404, code="NOT_FOUND"
    ),
    Attack("NUL in the path", **get("customerBill/%00"), status=400, code="INVALID_PATH"),
    Attack("newline in the path", **get("customerBill/1%0aX"), status=400, code="INVALID_PATH"),
    Attack(
        "unknown method",
        method="FOO",
        path=f"{API}/customerBill",
        content_type=None,
        status=405,
        code="METHOD_NOT_ALLOWED",
    ),
    Attack(
        "long unknown method",
        method="X" * 5000,
        path=f"{API}/customerBill",
        content_type=None,
        status=405,
        code="METHOD_NOT_ALLOWED",
    ),
    # Bodies a cross-site form can send without a CORS preflight.
    *(
        Attack(
            f"on-demand as {kind}",
            **post(ON_DEMAND, body, kind),
            status=415,
            code="UNSUPPORTED_MEDIA_TYPE",
            words="takes application/json",
        )
        for kind, body in (
            ("text/plain", orjson.dumps(ACCOUNT)),
            ("application/x-www-form-urlencoded", b"billingAccount=BA-000001"),
            ("multipart/form-data; boundary=x", b"--x\r\n\r\n{}\r\n--x--\r\n"),
            (None, orjson.dumps(ACCOUNT)),
        )
    ),
    Attack(
        "hub as text/plain",
        **post(HUB, {"callback": "http://127.0.0.1:9/cb"}, "text/plain"),
        status=415,
        code="UNSUPPORTED_MEDIA_TYPE",
    ),
    Attack(
        "PATCH as a form",
        **patch_bill(b"state=onHold", "application/x-www-form-urlencoded"),
        status=415,
        code="UNSUPPORTED_MEDIA_TYPE",
        words="application/json-patch-query+json",
    ),
    # Errors that used to quote the input whole.
    Attack(
        "filter on a 7,000-character attribute",
        **get("customerBill?" + "a" * 7000 + "=1"),
        status=400,
        code="INVALID_QUERY",
    ),
    Attack(
        "JSON Patch test against 500 kB",
        **patch_bill([{"op": "test", "path": "/billNo", "value": "x" * 500_000}], JSON_PATCH),
        status=409,
        code="PATCH_CONFLICT",
    ),
    Attack(
        "on-demand relatedParty of 900 kB of text",
        **post(ON_DEMAND, {**ACCOUNT, "relatedParty": ["p" * 900_000]}),
        status=400,
        code="INVALID_BODY",
    ),
]


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): the limit must be counted while reading."""
    yield b'{"billingAccount":{"id":"BA-000001"},"description":"'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


class Snapshot:
    """The legacy database's content and the store's rows, to compare before and after."""

    def __init__(self, legacy: Path, store: Path) -> None:
        self.legacy, self.store = legacy, store

    def take(self) -> tuple[str, dict[str, int]]:
        with sqlite3.connect(self.legacy) as conn:
            digest = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
        with sqlite3.connect(self.store) as conn:
            counts = {
                table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("bill_on_demand", "hub", "outbox")
            }
        return digest, counts


@pytest.fixture(scope="module")
def target(demo_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    legacy = tmp_path_factory.mktemp("attacks") / "legacy.sqlite"
    shutil.copyfile(demo_db, legacy)
    store = legacy.with_name("store.sqlite")
    # Change detection idle: the snapshots compare what requests did, nothing else.
    app = create_app(tuned(gateway_config(legacy, store), detection_seconds=3600))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, Snapshot(legacy, store)


def assert_tmf_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert_valid("Error", body)
    assert body["@type"] == "Error" and body["status"] == str(status)
    assert body["reason"] and len(body.get("message", "")) <= MAX_MESSAGE
    if code is not None:
        assert body["code"] == code
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    return body


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused_and_changes_nothing(target: Any, attack: Attack) -> None:
    client, snapshot = target
    before = snapshot.take()
    bill = client.get(f"{API}/customerBill/1").json()
    response = attack.send(client)
    body = assert_tmf_error(response, attack.status, attack.code)
    assert attack.words in body.get("message", "")
    assert len(response.content) < 2000  # nothing echoed at size
    assert client.get(f"{API}/customerBill/1").json() == bill
    assert snapshot.take() == before


def test_a_chunked_body_is_cut_off_at_the_limit(target: Any) -> None:
    client, snapshot = target
    before = snapshot.take()
    response = client.post(
        ON_DEMAND, content=chunks(3 << 20), headers={"Content-Type": "application/json"}
    )
    assert_tmf_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert response.headers["connection"] == "close"
    assert snapshot.take() == before


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"amountDue.value={HUGE}", "none"),
        (f"amountDue.value.gt={HUGE}", "none"),
        (f"amountDue.value.gte={HUGE}", "none"),
        (f"amountDue.value.lt={HUGE}", "all"),
        (f"amountDue.value.lte={HUGE}", "all"),
        (f"amountDue.value.ne={HUGE}", "all"),
        (f"amountDue.value.gt=-{HUGE}", "all"),
        (f"amountDue.value.lt=-{HUGE}", "none"),
        (f"id={BIG}", "none"),
        (f"id.ne={BIG}", "all"),
        (f"id={BIG},1", "one"),
        (f"billCycle.id={HUGE}", "none"),
        ("id=" + "1" * 4400, "none"),
        ("id.ne=" + "1" * 4400, "all"),
        ("billDate=0001-01-01", "none"),
        ("billDate.gt=0001-01-01T00:00:00Z", "all"),
        ("billDate.lt=0001-01-01T00:00:00Z", "none"),
        ("billDate.lt=9999-12-31T23:59:59-23:59", "all"),
    ],
)
def test_filters_past_64_bits_mean_what_they_say(target: Any, query: str, expected: str) -> None:
    """Also values no back-end value stands for (the year 1 in a `%Y%m%d` column)."""
    client, _ = target
    total = int(client.get(f"{API}/customerBill?limit=1").headers["X-Total-Count"])
    response = client.get(f"{API}/customerBill?{query}&limit=1")
    assert response.status_code == 200, response.text[:300]
    count = int(response.headers["X-Total-Count"])
    assert count == {"none": 0, "all": total, "one": 1}[expected]


@pytest.mark.parametrize(
    "path",
    [
        f"appliedCustomerBillingRate?taxExcludedAmount.value.gt={HUGE}",
        f"appliedCustomerBillingRate?id={BIG}",
        f"appliedCustomerBillingRate?bill.id={HUGE}",
        f"billCycle?id={BIG}",
    ],
)
def test_filters_past_64_bits_on_the_other_resources_match_nothing(target: Any, path: str) -> None:
    client, _ = target
    response = client.get(f"{API}/{path}")
    assert response.status_code == 200, response.text[:300]
    assert response.json() == [] and response.headers["X-Total-Count"] == "0"


def test_within_int64_rewrites_only_what_overflows() -> None:
    past, below = INT64_MAX + 1, INT64_MIN - 1
    assert within_int64(Compare("C", "eq", INT64_MAX)) == Compare("C", "eq", INT64_MAX)
    assert within_int64(Compare("C", "eq", past)) == MATCH_NONE
    assert within_int64(Compare("C", "gt", past)) == MATCH_NONE
    assert within_int64(Compare("C", "lt", past)) == Compare("C", "lte", INT64_MAX)
    assert within_int64(Compare("C", "lt", below)) == MATCH_NONE
    assert within_int64(Compare("C", "gte", below)) == Compare("C", "gte", INT64_MIN)
    assert within_int64(Compare("C", "eq", "9" * 30)) == Compare("C", "eq", "9" * 30)
    assert within_int64(Compare("C", "eq", True)) == Compare("C", "eq", True)
    tree = AllOf((AnyOf((Compare("C", "ne", past), IsNull("C"))), Compare("D", "eq", 1)))
    assert within_int64(tree) == AllOf(
        (AnyOf((Compare("C", "lte", INT64_MAX), IsNull("C"))), Compare("D", "eq", 1))
    )


def test_json_values_decoded_past_64_bits_do_not_reach_the_back_end(target: Any) -> None:
    client, snapshot = target
    before = snapshot.take()
    response = client.patch(
        f"{API}/customerBill/1",
        content=b'{"billCycle": {"id": 18446744073709551615, "@type": "BillCycleRef"}}',
        headers={"Content-Type": MERGE},
    )
    assert_tmf_error(response, 400, "INVALID_BODY")
    assert snapshot.take() == before


def test_an_exponent_filter_is_refused_at_once(target: Any) -> None:
    client, _ = target
    started = time.perf_counter()
    response = client.get(f"{API}/customerBill?amountDue.value=9E99999")
    assert_tmf_error(response, 400, "INVALID_QUERY")
    assert time.perf_counter() - started < 2


# --- Response headers and CORS ----------------------------------------------------------


def test_every_response_says_nosniff_and_no_store_without_a_server_banner(target: Any) -> None:
    client, _ = target
    for response in (client.get(f"{API}/customerBill/0"), client.get("/")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert "server" not in response.headers
    # Reads from the cache may be kept by the caller's own cache, never by a shared one.
    for response in (
        client.get(f"{API}/customerBill?limit=1"),
        client.get(f"{API}/customerBill/1"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"].startswith("private, max-age=")
        assert "server" not in response.headers


def test_cors_is_off_by_default(target: Any) -> None:
    client, _ = target
    origin = {"Origin": "https://evil.example"}
    response = client.get(f"{API}/customerBill/1", headers=origin)
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("access-control-")]
    preflight = client.options(
        f"{API}/customerBill/1", headers={**origin, "Access-Control-Request-Method": "PATCH"}
    )
    assert_tmf_error(preflight, 405, "METHOD_NOT_ALLOWED")
    assert not [h for h in preflight.headers if h.startswith("access-control-")]


def test_cors_allows_the_listed_origins_only(demo_db: Path, tmp_path: Path) -> None:
    app = create_app(gateway_config(demo_db, tmp_path / "store.sqlite", events=None))
    guarded = GuardMiddleware(app, cors_origins=["https://portal.example"])
    with TestClient(guarded) as client:  # the app's lifespan runs through the guard
        allowed = {"Origin": "https://portal.example"}
        response = client.get(f"{API}/customerBill/1", headers=allowed)
        assert response.headers["access-control-allow-origin"] == "https://portal.example"
        assert "ETag" in response.headers["access-control-expose-headers"]
        preflight = client.options(
            f"{API}/customerBill/1",
            headers={
                **allowed,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization, if-match, content-type",
            },
        )
        assert preflight.status_code == 200
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["x-content-type-options"] == "nosniff"
        other = {"Origin": "https://evil.example"}
        response = client.get(f"{API}/customerBill/1", headers=other)
        assert "access-control-allow-origin" not in response.headers
        refused = client.options(
            f"{API}/customerBill/1", headers={**other, "Access-Control-Request-Method": "GET"}
        )
        assert_tmf_error(refused, 400, "CORS_REFUSED")
        assert "access-control-allow-origin" not in refused.headers
        # A refusal of the guard itself is readable by the allowed origin.
        too_long = client.get(f"{API}/customerBill/" + "1" * 9000, headers=allowed)
        assert_tmf_error(too_long, 414, "URI_TOO_LONG")
        assert too_long.headers["access-control-allow-origin"] == "https://portal.example"


# --- Logs --------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the logging setup a test replaces with the gateway's real one."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quieted = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in quieted.items():
            logging.getLogger(name).setLevel(was)


@pytest.mark.usefixtures("restore_logging")
def test_a_500_logs_its_trace_without_locals_or_the_token(
    demo_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"

    async def exploding(self: Any, ident: str, base: str) -> Any:
        credential = f"Bearer {token}"  # a local the trace must not show
        raise RuntimeError(f"failed after {len(credential)} characters")

    configure_logging("INFO")  # JSON lines on (the captured) stdout, as the server logs
    app = create_app(gateway_config(demo_db, tmp_path / "store.sqlite", events=None))
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(type(app.state.services.customer_bills), "get", exploding)
        response = client.get(
            f"{API}/customerBill/1?access_token={token}",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "boom-1"},
        )
    assert_tmf_error(response, 500)
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    text = json.dumps(lines)
    (error,) = [e for e in lines if e["event"] == "unhandled_error"]
    frames = error["exception"][0]["frames"]
    assert any(frame["name"] == "exploding" for frame in frames)
    assert all("locals" not in frame for frame in frames)
    assert token not in text and "c2VjcmV0" not in text
    (request,) = [e for e in lines if e["event"] == "request" and e.get("request_id") == "boom-1"]
    assert request["query"] == "access_token=REDACTED"


def test_logged_queries_are_redacted_and_clipped() -> None:
    assert logged_query(b"") is None
    assert logged_query(b"state=new&api_key=abc&x=1") == "state=new&api_key=REDACTED&x=1"
    assert logged_query(b"Access%5FToken=abc") == "Access%5FToken=REDACTED"
    assert len(logged_query(b"a=" + b"b" * 10_000) or "") < 2100


# --- A real server: what uvicorn sees before the application -----------------------------


@pytest.fixture(scope="module")
def server(demo_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("attack_server")
    legacy = directory / "legacy.sqlite"
    shutil.copyfile(demo_db, legacy)
    port = free_port()
    env = {
        "LEGACY_DB": str(legacy),
        "GATEWAY_STORE": str(directory / "store.sqlite"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    process: subprocess.Popen[str] = start(env)
    try:
        wait_ready(f"http://127.0.0.1:{port}{API}/billCycle?limit=1", process)
        yield port
    finally:
        stop(process)


def exchange(port: int, request: bytes, *, wait: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the status, headers and body of the answer (the connection's end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        # The server may close before taking everything: its answer is what counts.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        headers = {k.lower(): v for k, v in headers.items()}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def test_server_sends_no_banner_and_the_safety_headers(server: int) -> None:
    status, headers, _ = exchange(server, request_bytes("GET", f"{API}/billCycle/1", {}))
    assert status == 200
    assert "server" not in headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "private, max-age=300"  # billCycle's TTL


def test_server_refuses_a_declared_20_mb_body_without_reading_it(server: int) -> None:
    started = time.perf_counter()
    status, headers, body = exchange(
        server,
        request_bytes(
            "PATCH",
            f"{API}/customerBill/1",
            {"Content-Type": JSON_PATCH, "Content-Length": str(20 << 20)},
            b"[",
        ),
    )
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
    assert time.perf_counter() - started < 2


def test_server_cuts_off_a_chunked_body_past_the_limit(server: int) -> None:
    chunk = b"x" * 0x10000
    body = b"".join(b"10000\r\n" + chunk + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    status, headers, reply = exchange(
        server,
        request_bytes(
            "POST",
            ON_DEMAND,
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            body,
        ),
    )
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(reply)["@type"] == "Error"


def test_server_refuses_an_oversized_header_block_with_a_tmf_error(server: int) -> None:
    status, _, body = exchange(
        server, request_bytes("GET", f"{API}/billCycle/1", {"X-Filler": "f" * 100_000})
    )
    assert status == 431
    assert json.loads(body)["code"] == "HEADERS_TOO_LARGE"


def test_server_answers_a_long_id_with_a_tmf_error(server: int) -> None:
    status, _, body = exchange(
        server, request_bytes("GET", f"{API}/customerBill/{'1' * 60_000}", {})
    )
    assert status == 414
    assert json.loads(body)["code"] == "URI_TOO_LONG"


@pytest.mark.parametrize(
    "request_line",
    [
        b"FOO /tmf-api/customerBillManagement/v5/customerBill HTTP/1.1",
        b"GET /tmf-api/customerBillManagement/v5/customerBill/\x00 HTTP/1.1",
        b"GET /tmf-api/customerBillManagement/v5/customerBill/" + b"1" * 70_000 + b" HTTP/1.1",
        b"HELLO",
    ],
    ids=["unknown method", "raw NUL", "URL over 64 KiB", "no request line"],
)
def test_what_the_server_refuses_itself_is_a_tmf_error_too(
    server: int, request_line: bytes
) -> None:
    """uvicorn answers these before the application; gateway/server.py words the answer."""
    status, headers, body = exchange(server, request_line + b"\r\nHost: x\r\n\r\n")
    assert status == 400 and headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert_valid("Error", error)
    assert error["status"] == "400" and error["code"] == "BAD_REQUEST"


def test_a_huge_patch_does_not_stall_other_requests(server: int) -> None:
    """The copy-doubling patch is refused early; a read meanwhile is served promptly."""
    patch = orjson.dumps([{"op": "copy", "from": "", "path": f"/c{i}"} for i in range(40)])
    started = time.perf_counter()
    status, _, _ = exchange(
        server,
        request_bytes(
            "PATCH",
            f"{API}/customerBill/1",
            {"Content-Type": JSON_PATCH, "Content-Length": str(len(patch))},
            patch,
        ),
    )
    assert status == 400
    status, _, _ = exchange(server, request_bytes("GET", f"{API}/billCycle/1", {}))
    assert status == 200
    assert time.perf_counter() - started < 2


def test_decimal_filter_values_keep_their_meaning_below_the_bound(target: Any) -> None:
    client, _ = target
    bills = client.get(f"{API}/customerBill?limit=1000").json()
    top = max(Decimal(str(b["amountDue"]["value"])) for b in bills if "amountDue" in b)
    response = client.get(f"{API}/customerBill?amountDue.value.gte={top}")
    assert response.status_code == 200 and int(response.headers["X-Total-Count"]) >= 1
