"""Shared fixtures: a seeded legacy billing database on disk and a gateway over it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import ChangeDetection, GatewayConfig, load_config
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


def gateway_config(
    db: Path,
    store: Path | None = None,
    *,
    public_base_url: str | None = None,
    scan_batch_size: int | None = None,
    bill_transitions: dict[str, tuple[str, ...]] | None = None,
    **sections: Any,
) -> GatewayConfig:
    """The default config file, pointed at `db` (and a store file beside it).

    `sections` replace top-level sections (`events=None` turns events off).
    """
    config = load_config(ROOT / "config" / "default.yaml")
    store = store or db.with_name(db.stem + "_store.sqlite")
    backend = config.backends["legacy_billing"].model_copy(
        update={"url": f"sqlite+aiosqlite:///{db}"}
    )
    update: dict[str, Any] = {
        "backends": {**config.backends, "legacy_billing": backend},
        "store": config.store.model_copy(update={"url": f"sqlite+aiosqlite:///{store}"}),
        **sections,
    }
    if public_base_url is not None:
        update["api"] = config.api.model_copy(update={"public_base_url": public_base_url})
    if scan_batch_size is not None:
        update["paging"] = config.paging.model_copy(update={"scan_batch_size": scan_batch_size})
    if bill_transitions is not None:
        update["lifecycle"] = {"customerBill": {k: list(v) for k, v in bill_transitions.items()}}
    return config.model_copy(update=update)


def tuned(
    config: GatewayConfig,
    *,
    worker: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    detection_seconds: float | None = None,
    allow_callback_networks: list[str] | None = None,
) -> GatewayConfig:
    """`config` with its background work tuned for tests (faster polls, shorter retries)."""
    update: dict[str, Any] = {}
    if worker and config.on_demand is not None:
        settings = config.on_demand.worker.model_copy(update=worker)
        update["on_demand"] = config.on_demand.model_copy(update={"worker": settings})
    events: dict[str, Any] = {}
    if config.events is not None:
        if delivery:
            events["delivery"] = config.events.delivery.model_copy(update=delivery)
        if detection_seconds is not None:
            attribute = config.events.change_detection["customerBill"].attribute
            events["change_detection"] = {
                "customerBill": ChangeDetection(
                    attribute=attribute, interval_seconds=detection_seconds
                )
            }
        if allow_callback_networks is not None:
            events["allow_callback_networks"] = allow_callback_networks
        update["events"] = config.events.model_copy(update=events)
    return config.model_copy(update=update)


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
