"""The served OAS: the vendored TMF678 document with `servers` naming this deployment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from gateway.api_description import MAX_ROOTS, ApiDescription
from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.oas import SPEC_PATH
from tests.conftest import API, gateway_config
from tests.tokens import ISSUER, Signer


def vendored() -> dict[str, Any]:
    """The vendored document as JSON sees it (dates in examples become strings)."""
    with SPEC_PATH.open(encoding="utf-8") as f:
        document: dict[str, Any] = orjson.loads(orjson.dumps(yaml.safe_load(f)))
    return document


@pytest.fixture
def client(demo_db: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    with TestClient(create_app(config)) as served:
        yield served


def test_json_is_the_vendored_document_with_this_deployments_server(client: TestClient) -> None:
    response = client.get(f"{API}/openapi.json", headers={"Host": "billing.local:8678"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["servers"] == [{"url": f"http://billing.local:8678{API}"}]
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == vendored()["info"]["title"]
    assert {**document, "servers": None} == {**vendored(), "servers": None}
    # Every path of the document is served under the server URL.
    assert f"{API}/customerBill" in {p.path for p in client.app.routes}  # type: ignore[attr-defined]
    assert "/customerBill/{id}" in document["paths"]


def test_yaml_is_the_same_document(client: TestClient) -> None:
    as_json = client.get(f"{API}/openapi.json").json()
    response = client.get(f"{API}/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    as_yaml = json.loads(orjson.dumps(yaml.safe_load(response.text)))
    assert as_yaml == as_json
    assert as_yaml["servers"] == [{"url": f"http://testserver{API}"}]


def test_the_public_base_url_names_the_server_whatever_the_host(
    demo_db: Path, tmp_path: Path
) -> None:
    config = gateway_config(
        demo_db,
        tmp_path / "store.sqlite",
        events=None,
        on_demand=None,
        public_base_url="https://api.example.com/billing",
    )
    with TestClient(create_app(config)) as client:
        for kind in ("json", "yaml"):
            response = client.get(f"{API}/openapi.{kind}", headers={"Host": "evil.example"})
            document = yaml.safe_load(response.text)  # JSON is YAML too
            assert document["servers"] == [{"url": f"https://api.example.com/billing{API}"}]


def test_it_needs_no_token_when_the_api_does(demo_db: Path, tmp_path: Path) -> None:
    signer = Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "oas-test")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk]}))
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    auth = AuthSettings(enabled=True, issuer=ISSUER, jwks_file=jwks)
    with TestClient(create_app(config.model_copy(update={"auth": auth}))) as client:
        assert client.get(f"{API}/customerBill").status_code == 401
        assert client.get(f"{API}/openapi.json").status_code == 200


def test_hosts_outside_allowed_hosts_get_no_document(demo_db: Path, tmp_path: Path) -> None:
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    api = config.api.model_copy(update={"allowed_hosts": ["api.example.com"]})
    with TestClient(create_app(config.model_copy(update={"api": api}))) as client:
        good = client.get(f"{API}/openapi.json", headers={"Host": "api.example.com"})
        assert good.json()["servers"] == [{"url": f"http://api.example.com{API}"}]
        assert client.get(f"{API}/openapi.json", headers={"Host": "evil.example"}).status_code in (
            400,
            421,
        )


def test_renderings_are_kept_per_root_and_bounded() -> None:
    description = ApiDescription()
    first = description.render("https://a.example/api", "json")
    assert description.render("https://a.example/api", "json") is first  # rendered once
    assert json.loads(first)["servers"] == [{"url": "https://a.example/api"}]
    for n in range(MAX_ROOTS * 3):
        description.render(f"https://h{n}.example/api", "json")
    assert len(description._rendered) <= MAX_ROOTS * 2
    assert json.loads(description.render("https://a.example/api", "json"))["servers"] == [
        {"url": "https://a.example/api"}
    ]
