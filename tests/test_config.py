"""Gateway configuration: the default file, environment values, and start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import DEFAULT_CONFIG, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_default_config_serves_three_resources_from_the_demo_database() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert set(config.resources) == {"customerBill", "appliedCustomerBillingRate", "billCycle"}
    assert config.backends["legacy_billing"].kind == "sql"
    for binding in config.resources.values():
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
    assert config.public_base_url == "https://api.example.com"
    assert config.backends["b"].options == {"url": "sqlite+aiosqlite:///x.db"}
    assert config.backends["b"].timeout == 2.5
    assert config.resources["billCycle"].mapping == tmp_path / "m.yaml"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("bogus: 1\n", 1, "bogus: unknown key"),
        ("paging: {max_limit: 0}\n", 1, "max_limit: must be a positive whole number"),
        ("paging:\n  default_limit: 50\n  max_limit: 10\n", 2, "default_limit: exceeds max_limit"),
        ("api: {public_base_url: ftp://x}\n", 1, "must start with http(s)://"),
        ("backends:\n  b: {url: x}\n", 2, "backends.b: a back end needs at least {kind"),
        ("backends:\n  b: {kind: sql, timeout_seconds: -1}\n", 2, "timeout_seconds: must be > 0"),
        (
            "backends: {b: {kind: sql}}\nresources:\n  bills: {backend: b, mapping: m}\n",
            3,
            "resources.bills: not a TMF678 resource collection",
        ),
        (
            "backends: {b: {kind: sql}}\nresources:\n  billCycle: {backend: c, mapping: m}\n",
            3,
            "resources.billCycle.backend: no back end 'c'",
        ),
        (
            "backends: {b: {kind: sql}}\nresources:\n  billCycle: {backend: b}\n",
            3,
            "expected {backend, mapping}",
        ),
        ("backends: [1, 2]\n", 1, "backends: must be a mapping"),
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
