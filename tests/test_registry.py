"""Back-end kinds: the bundled ones, and a plugin registered through an entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from adapters.registry import ENTRY_POINT_GROUP, adapter_class
from gateway.app import create_app
from gateway.config import ConfigError, load_config
from tests.conftest import API, ROOT, assert_valid, fetch_all

PLUGIN = ROOT / "examples" / "csv_adapter"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin as an installed distribution would look to importlib.metadata."""
    info = tmp_path / "tmf678_csv_adapter-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tmf678-csv-adapter\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ncsv = tmf678_csv_adapter:CsvAdapter\n"
    )
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_bundled_kinds() -> None:
    for kind in ("sql", "rest", "soap"):
        assert adapter_class(kind).__name__.lower().startswith(kind)


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(LookupError, match="unknown back-end kind 'ldap' .*rest, soap, sql"):
        adapter_class("ldap")


def test_a_plugin_kind_serves_the_api(installed_plugin: None, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    mapping = PLUGIN / "customer_bill.yaml"
    config.write_text(
        f"backends:\n  kiosk: {{kind: csv, directory: {PLUGIN / 'data'}}}\n"
        f"resources:\n  customerBill: {{backend: kiosk, mapping: {mapping}}}\n"
    )
    assert adapter_class("csv").__name__ == "CsvAdapter"
    with TestClient(create_app(load_config(config))) as client:
        bills = fetch_all(client, "customerBill")
        assert [b["id"] for b in bills] == ["K-1", "K-2", "K-3"]
        for bill in bills:
            assert_valid("CustomerBill", bill)
        assert [b["id"] for b in fetch_all(client, "customerBill", "state=new")] == ["K-1", "K-3"]
        assert client.get(f"{API}/customerBill/K-2").json()["state"] == "settled"
        assert client.get(f"{API}/customerBill?sort=-amountDue.value").json()[0]["id"] == "K-3"


def test_a_wrong_adapter_option_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    mapping = ROOT / "mappings" / "enterprise_rest" / "customer_bill.yaml"
    config.write_text(
        "backends:\n  e:\n    kind: rest\n    base_url: 'http://127.0.0.1:1'\n"
        "    http_transport: curl\n"
        f"resources:\n  customerBill: {{backend: e, mapping: {mapping}}}\n"
    )
    with pytest.raises(ConfigError, match=f"^{config}:5: backends.e.http_transport: Input should"):
        load_config(config)


def test_a_plugin_kind_checks_its_own_options(installed_plugin: None, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("backends:\n  kiosk:\n    kind: csv\n    directroy: /tmp\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}:4: backends.kiosk.directroy: unknown key 'directroy' (did you mean 'directory'?)"
    )
