"""Gateway configuration: the default file, environment values, and start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.sql import SqlOptions
from gateway.config import DEFAULT_CONFIG, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_default_config_serves_three_resources_from_the_demo_database() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert set(config.resources) == {"customerBill", "appliedCustomerBillingRate", "billCycle"}
    assert config.backends["legacy_billing"].kind == "sql"
    for binding in config.single().values():
        assert binding.mapping.is_file()


def test_environment_values_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_URL", "sqlite+aiosqlite:///x.db")
    monkeypatch.delenv("NOT_SET", raising=False)
    config = load_config(
        write(
            tmp_path,
            "api: {public_base_url: '${NOT_SET:-https://api.example.com/}'}\n"
            "backends:\n  b: {kind: sql, url: '${BILLING_URL}', timeout_seconds: 2.5}\n"
            "resources:\n  billCycle: {backend: b, mapping: m.yaml}\n",
        )
    )
    assert config.api.public_base_url == "https://api.example.com"
    backend = config.backends["b"]
    assert isinstance(backend, SqlOptions)
    assert backend.url == "sqlite+aiosqlite:///x.db"
    assert backend.timeout_seconds == 2.5
    assert config.single()["billCycle"].mapping == tmp_path / "m.yaml"


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "sqlite+aiosqlite:///var/legacy.sqlite"),
        ({"LEGACY_DB": "/tmp/x.sqlite"}, "sqlite+aiosqlite:////tmp/x.sqlite"),
        (
            {"LEGACY_DB": "/tmp/x.sqlite", "LEGACY_DB_URL": "postgresql+asyncpg://h/db"},
            "postgresql+asyncpg://h/db",
        ),
    ],
)
def test_a_default_may_name_another_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str
) -> None:
    for name in ("LEGACY_DB", "LEGACY_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(
        write(
            tmp_path,
            "backends:\n  b: {kind: sql, url: "
            "'${LEGACY_DB_URL:-sqlite+aiosqlite:///${LEGACY_DB:-var/legacy.sqlite}}'}\n"
            "resources:\n  billCycle: {backend: b, mapping: m.yaml}\n",
        )
    )
    assert config.backends["b"].url == url  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("bogus: 1\n", 1, "bogus: unknown key 'bogus' (known: api, paging, backends"),
        ("paging: {max_limit: 0}\n", 1, "paging.max_limit: Input should be greater than 0"),
        ("paging:\n  default_limit: 50\n  max_limit: 10\n", 1, "default_limit exceeds max_limit"),
        ("api: {public_base_url: ftp://x}\n", 1, "api.public_base_url: String should match"),
        ("backends:\n  b: {url: x}\n", 2, "backends.b: a back end needs at least {kind"),
        (
            "backends:\n  b: {kind: sql, url: x, timeout_seconds: -1}\n",
            2,
            "backends.b.timeout_seconds: Input should be greater than 0",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\nresources:\n  bills: {backend: b, mapping: m}\n",
            3,
            "resources.bills: Input should be 'customerBill', 'appliedCustomerBillingRate'",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\n"
            "resources:\n  billCycle: {backend: c, mapping: m}\n",
            3,
            "resources.billCycle.backend: no back end 'c'",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\nresources:\n  billCycle: {backend: b}\n",
            3,
            "resources.billCycle: missing 'mapping'",
        ),
        ("backends: [1, 2]\n", 1, "backends: Input should be a valid dictionary"),
        # An adapter's own options, checked with its model, on the offending key's line.
        (
            "backends:\n  e:\n    kind: rest\n    base_url: http://x\n    max_conections: 5\n",
            5,
            "backends.e.max_conections: unknown key 'max_conections' "
            "(did you mean 'max_connections'?)",
        ),
        ("backends:\n  e: {kind: ldap}\n", 2, "backends.e: unknown back-end kind (known: rest"),
        (
            "backends:\n  e:\n    kind: soap\n    wsdl: http://x/w\n    verify: 1\n",
            5,
            "backends.e.verify:",
        ),
        ("paging:\n  max_limt: 5\n", 2, "unknown key 'max_limt' (did you mean 'max_limit'?)"),
        (
            "events:\n  change_detection:\n    customerBill:\n      attribute: lastUpdate\n"
            "      interval_seconds: soon\n",
            5,
            "events.change_detection.customerBill.interval_seconds: Input should be a valid number",
        ),
        (
            "events:\n  delivery:\n    post_to: elsewhere\n",
            3,
            "events.delivery.post_to: Input should be 'listener' or 'callback'",
        ),
        (
            "events:\n  allow_callback_networks: [10.0.0.0/8, nowhere]\n",
            2,
            "events.allow_callback_networks[1]: Input is not a valid IPv4 network",
        ),
        (
            "lifecycle:\n  customerBill:\n    new: [sent, bogus]\n",
            3,
            "lifecycle.customerBill.new[1]: Input should be 'new', 'onHold'",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\nresources:\n  customerBill:\n"
            "    - {backend: b, mapping: m, id_prefix: A}\n"
            "    - {backend: b, mapping: m}\n",
            5,
            "resources.customerBill[1]: missing 'id_prefix'",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\nresources:\n  customerBill:\n"
            "    - {backend: b, mapping: m, id_prefix: A}\n"
            "    - {backend: b, mapping: m, id_prefix: AB}\n",
            3,
            "resources.customerBill: id_prefix 'A' is not distinct",
        ),
        (
            "on_demand:\n  backend: x\n  mapping: m\n",
            1,
            "on_demand: expected {backend, action, mapping} or {actions",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\non_demand:\n  backend: c\n  action: a\n"
            "  mapping: m\n",
            3,
            "on_demand.backend: no back end 'c'",
        ),
        (
            "backends: {b: {kind: sql, url: x}}\non_demand:\n  backend: b\n  action: a\n"
            "  mapping: m\n  worker:\n    max_atempts: 3\n",
            7,
            "on_demand.worker.max_atempts: unknown key 'max_atempts' (did you mean",
        ),
    ],
)
def test_mistakes_name_file_line_and_place(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)
