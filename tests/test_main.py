"""`python -m gateway` as `make run` starts it: a real server process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API, ROOT, assert_valid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(url: str, process: subprocess.Popen[str], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"gateway exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start in time")


def stop(process: subprocess.Popen[str]) -> str:
    """End the gateway and return what it printed (closing its pipe)."""
    if process.poll() is None:
        process.terminate()
    output, _ = process.communicate(timeout=10)
    return output


@pytest.fixture(scope="module")
def server(demo_db: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = start({"LEGACY_DB": str(demo_db), "HOST": "127.0.0.1", "PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}{API}/billCycle?limit=1", process)
        yield base, process
    finally:
        stop(process)


def test_serves_the_readme_calls(server: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = server
    bills = httpx.get(f"{base}{API}/customerBill?limit=3", timeout=5)
    assert bills.status_code == 200 and bills.headers["X-Result-Count"] == "3"
    for bill in bills.json():
        assert_valid("CustomerBill", bill)
        assert bill["href"].startswith(f"{base}{API}/customerBill/")
    first = httpx.get(bills.json()[0]["href"], timeout=5)
    assert first.json() == bills.json()[0]
    filtered = httpx.get(
        f"{base}{API}/customerBill?state=new&sort=-billDate&fields=billNo,amountDue", timeout=5
    )
    assert filtered.status_code == 200 and int(filtered.headers["X-Total-Count"]) >= 36
    rates = httpx.get(f"{base}{API}/appliedCustomerBillingRate?isBilled=false&limit=2", timeout=5)
    assert [r["isBilled"] for r in rates.json()] == [False, False]


def test_one_json_log_line_per_request_with_request_id(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    base, process = server
    response = httpx.get(
        f"{base}{API}/billCycle/3?fields=name", headers={"X-Request-ID": "trace-abc-123"}, timeout=5
    )
    assert response.headers["X-Request-ID"] == "trace-abc-123"
    generated = httpx.get(f"{base}{API}/billCycle/999", timeout=5)
    assert len(generated.headers["X-Request-ID"]) == 32
    output = stop(process)
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    assert len(lines) >= 4, output
    (entry,) = [e for e in lines if e.get("request_id") == "trace-abc-123"]
    assert entry["event"] == "request"
    assert entry["method"] == "GET" and entry["path"] == f"{API}/billCycle/3"
    assert entry["status"] == 200
    assert entry["duration_ms"] >= entry["backend_ms"] > 0
    (missing,) = [e for e in lines if e.get("request_id") == generated.headers["X-Request-ID"]]
    assert missing["status"] == 404
    assert all("Traceback" not in line for line in output.splitlines())


def test_a_wrong_mapping_stops_start_up_with_file_line_and_reason(
    demo_db: Path, tmp_path: Path
) -> None:
    mapping = tmp_path / "bill_cycle.yaml"
    original = (ROOT / "mappings" / "legacy_sql" / "bill_cycle.yaml").read_text()
    mapping.write_text(original.replace("name: RUN_CD", "name: RUN_CODE"))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n"
        "  legacy_billing: {kind: sql, url: 'sqlite+aiosqlite:///${LEGACY_DB}'}\n"
        "resources:\n"
        f"  billCycle: {{backend: legacy_billing, mapping: {mapping}}}\n"
    )
    process = start({"LEGACY_DB": str(demo_db), "PORT": str(free_port())}, "--config", str(config))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 3
    line = original.splitlines().index("  name: RUN_CD") + 1
    assert f"{mapping}:{line}: attributes.name: unknown column 'RUN_CODE'" in output


def test_a_wrong_config_file_stops_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n  b: {kind: sql, url: x}\nresources:\n  customerBills: {backend: b}\n"
    )
    process = start({"PORT": str(free_port())}, "--config", str(config))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert f"{config}:4: resources.customerBills: Input should be 'customerBill'," in output
