"""`tmf678-gateway check`, run as a real process on good and broken configurations."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.rest_billing import create_app as create_simulator
from simulators.rest_billing import seed
from tests.conftest import ROOT
from tests.servers import ThreadedServer

MAPPINGS = ROOT / "mappings" / "legacy_sql"


def run_check(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def sql_config(tmp_path: Path, db: Path, bill_mapping: Path | None = None) -> Path:
    """A configuration of the demo database, its customerBill mapping replaceable."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""backends:
  legacy_billing:
    kind: sql
    url: sqlite+aiosqlite:///{db}
    timeout_seconds: 5
resources:
  customerBill:
    backend: legacy_billing
    mapping: {bill_mapping or MAPPINGS / "customer_bill.yaml"}
  billCycle:
    backend: legacy_billing
    mapping: {MAPPINGS / "bill_cycle.yaml"}
on_demand:
  backend: legacy_billing
  action: {MAPPINGS / "actions" / "produce_bill.yaml"}
  mapping: {ROOT / "mappings" / "gateway_store" / "customer_bill_on_demand.yaml"}
store:
  url: sqlite+aiosqlite:///{tmp_path / "store.sqlite"}
"""
    )
    return config


def test_a_good_configuration_passes(demo_db: Path, tmp_path: Path) -> None:
    code, out, err = run_check(sql_config(tmp_path, demo_db), "--sample", "5")
    assert code == 0, err
    assert "customerBill on legacy_billing: 5 records valid" in out
    assert "billCycle on legacy_billing: 5 records valid" in out
    assert "is ready to serve" in out
    assert not (tmp_path / "store.sqlite").exists()  # the store is not touched


def test_the_bundled_default_configuration_passes(demo_db: Path, tmp_path: Path) -> None:
    env = {"LEGACY_DB": str(demo_db), "GATEWAY_STORE": str(tmp_path / "store.sqlite")}
    code, out, err = run_check(ROOT / "config" / "default.yaml", env=env)
    assert code == 0, err
    assert "appliedCustomerBillingRate on legacy_billing" in out


def test_a_broken_configuration_file_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("paging:\n  default_limit: 20\n  max_limit: lots\n")
    code, _, err = run_check(config)
    assert code == 2
    assert f"{config}:3" in err and "max_limit" in err


def test_a_broken_mapping_names_file_and_line(demo_db: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "customer_bill.yaml"
    text = (MAPPINGS / "customer_bill.yaml").read_text()
    mapping.write_text(text.replace("  billNo: INV_NO\n", "  billNo: NO_SUCH_COLUMN\n"))
    line = next(n for n, t in enumerate(mapping.read_text().splitlines(), 1) if "NO_SUCH" in t)
    code, out, err = run_check(sql_config(tmp_path, demo_db, mapping))
    assert code == 1
    assert f"{mapping}:{line}: attributes.billNo" in err
    assert "billCycle on legacy_billing" in out  # the other resources are still checked
    assert "1 problem(s)" in err


def test_a_broken_action_names_file_and_line(demo_db: Path, tmp_path: Path) -> None:
    action = tmp_path / "produce_bill.yaml"
    action.write_text("kind: nonsense\n")
    config = sql_config(tmp_path, demo_db)
    config.write_text(
        config.read_text().replace(str(MAPPINGS / "actions" / "produce_bill.yaml"), str(action))
    )
    code, _, err = run_check(config)
    assert code == 1
    assert re.search(rf"{re.escape(str(action))}:\d+: ", err), err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_unreachable_back_end_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        "ENTERPRISE_URL": f"http://127.0.0.1:{free_port()}",  # nobody listens there
        "GATEWAY_STORE": str(tmp_path / "store.sqlite"),
    }
    code, _, err = run_check(ROOT / "config" / "rest.yaml", env=env)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("back end enterprise:")]
    assert len(lines) == 1 and "unreachable" in lines[0]
    assert "Traceback" not in err


def test_records_that_break_the_oas_name_the_mapping_line(tmp_path: Path) -> None:
    data = seed()
    first = next(iter(data.invoices.values()))
    first["invoice_number"] = 12345  # the OAS wants billNo a string
    mapping = ROOT / "mappings" / "enterprise_rest" / "customer_bill.yaml"
    line = next(
        n for n, t in enumerate(mapping.read_text().splitlines(), 1) if t.startswith("  billNo:")
    )
    with ThreadedServer(create_simulator(data)) as server:
        env = {"ENTERPRISE_URL": server.base, "GATEWAY_STORE": str(tmp_path / "store.sqlite")}
        code, _, err = run_check(ROOT / "config" / "rest.yaml", "--sample", "100", env=env)
    assert code == 1
    problems = [p for p in err.splitlines() if "breaks the OAS" in p]
    assert len(problems) == 1, err
    file, at, rest = problems[0].split(":", 2)
    assert Path(file).resolve() == mapping and at == str(line)
    assert rest.startswith(" customerBill id 'EI-000001' on enterprise")
    assert "billNo: 12345 is not of type 'string'" in problems[0]


@pytest.mark.parametrize("sample", ["0", "-1"])
def test_the_sample_must_be_positive(demo_db: Path, tmp_path: Path, sample: str) -> None:
    code, _, err = run_check(sql_config(tmp_path, demo_db), "--sample", sample)
    assert code == 2 and "--sample" in err
