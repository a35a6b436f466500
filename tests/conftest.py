"""Shared fixtures: a seeded legacy billing database on disk and a gateway over it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig, load_config
from gateway.oas import schema_errors
from simulators.billing_db import create_and_seed

ROOT = Path(__file__).resolve().parent.parent
API = "/tmf-api/customerBillManagement/v5"


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo database, seeded once per test run (tests must not write to it)."""
    path = tmp_path_factory.mktemp("legacy") / "legacy_billing.sqlite"
    create_and_seed(f"sqlite:///{path}")
    return path


@pytest.fixture
def scratch_db(demo_db: Path, tmp_path: Path) -> Path:
    """A private copy of the demo database that a test may change."""
    copy = tmp_path / "scratch.sqlite"
    shutil.copyfile(demo_db, copy)
    return copy


def gateway_config(db: Path, store: Path | None = None, **overrides: Any) -> GatewayConfig:
    """The default config file, pointed at `db` (and a store file beside it)."""
    config = load_config(ROOT / "config" / "default.yaml")
    backend = config.backends["legacy_billing"]
    backend.options["url"] = f"sqlite+aiosqlite:///{db}"
    store = store or db.with_name(db.stem + "_store.sqlite")
    object.__setattr__(config, "store_url", f"sqlite+aiosqlite:///{store}")
    for key, value in overrides.items():
        object.__setattr__(config, key, value)
    return config


@pytest.fixture(scope="session")
def client(demo_db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(gateway_config(demo_db))) as test_client:
        yield test_client


def assert_valid(schema: str, instance: Any) -> None:
    """The official OAS is the oracle for every response shape."""
    errors = schema_errors(schema, instance)
    assert not errors, f"{schema} invalid against the TMF678 OAS: {errors[:5]}"


def fetch_all(client: TestClient, collection: str, params: str = "") -> list[dict[str, Any]]:
    """Every item of a collection, page by page (the pages' headers are checked too)."""
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        sep = "&" if params else ""
        response = client.get(f"{API}/{collection}?{params}{sep}offset={offset}&limit=1000")
        assert response.status_code == 200, response.text
        page = response.json()
        assert int(response.headers["X-Result-Count"]) == len(page)
        items.extend(page)
        offset += len(page)
        if offset >= int(response.headers["X-Total-Count"]) or not page:
            return items
