"""REST back ends with a declared session login (adapters/rest_session.py), against a
small token service on a loopback socket that issues expiring tokens: renewal in the
middle of a list, one login for concurrent callers, one re-login (never a loop) on a
refusal, JSON and form login bodies, wrong credentials found at start-up."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.base import BackendError, Compare, Plan
from adapters.rest import RestAdapter, RestOptions
from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import API, ROOT, assert_valid, tuned
from tests.servers import ThreadedServer

USER, PASSWORD = "gateway", "s3cret"
ITEMS = 40


@dataclass
class TokenService:
    """Issues tokens that expire after `lifetime` seconds; lists `ITEMS` items by page."""

    lifetime: float = 60.0
    #: Whether the login reply tells the lifetime (`expires_in`).
    tells_lifetime: bool = True
    #: Seconds each list page takes (to let a token expire in the middle of a list).
    page_delay: float = 0.0
    #: Refuse every call but the login (a back end that never accepts its own tokens).
    always_refuse: bool = False
    #: The password the service accepts (changed to refuse the gateway's).
    password: str = PASSWORD
    #: How a stale session is answered: a 401, or a 400 with an error code.
    stale_as_code: bool = False
    tokens: dict[str, float] = field(default_factory=dict)
    logins: int = 0
    refusals: int = 0
    calls: int = 0
    login_bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    async def login(self, request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0]
        if kind == "application/json":
            body = dict(await request.json())
        else:
            body = dict(parse_qsl((await request.body()).decode()))
        self.login_bodies.append((kind, body))
        if body.get("user") != USER or body.get("password") != self.password:
            return JSONResponse({"error": {"message": "bad user or password"}}, 401)
        await asyncio.sleep(0.05)  # a login takes a while: concurrent callers overlap it
        token = secrets.token_hex(8)
        with self.lock:
            self.logins += 1
            self.tokens[token] = time.monotonic() + self.lifetime
        reply: dict[str, Any] = {"data": {"session_token": token}}
        if self.tells_lifetime:
            reply["data"]["expires_in"] = self.lifetime
        return JSONResponse(reply)

    def _token_of(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ")
        return request.cookies.get("SESSION")

    def _refused(self, request: Request) -> JSONResponse | None:
        with self.lock:
            self.calls += 1
            expires = self.tokens.get(self._token_of(request) or "")
            valid = expires is not None and time.monotonic() < expires
        if valid and not self.always_refuse:
            return None
        self.refusals += 1
        if self.stale_as_code:
            return JSONResponse({"error": {"code": "SESSION_EXPIRED", "message": "stale"}}, 400)
        return JSONResponse({"error": {"message": "session expired"}}, 401)

    async def items(self, request: Request) -> JSONResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        await asyncio.sleep(self.page_delay)
        page, size = int(request.query_params["page"]), int(request.query_params["size"])
        rows = [{"id": n, "name": f"item {n}"} for n in range(ITEMS)]
        return JSONResponse({"items": rows[(page - 1) * size : page * size], "total": ITEMS})

    async def item(self, request: Request) -> JSONResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        ident = int(request.path_params["ident"])
        return JSONResponse({"id": ident, "name": f"item {ident}"})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/login", self.login, methods=["POST"]),
                Route("/api/items", self.items),
                Route("/api/items/{ident}", self.item),
            ]
        )


SOURCE = {
    "key": "id",
    "list": {
        "path": "/api/items",
        "records": "items",
        "total": "total",
        "paging": {"style": "page", "page": "page", "size": "size", "first": 1, "max_size": 5},
    },
    "get": {"path": "/api/items/{key}"},
}


def session_options(encoding: str = "json", carry: str = "header", **extra: Any) -> dict[str, Any]:
    place = (
        {"http_header": {"name": "Authorization", "format": "Bearer {token}"}}
        if carry == "header"
        else {"cookie": {"name": "SESSION"}}
    )
    return {
        "login": {
            "path": "/api/login",
            "encoding": encoding,
            "body": {"user": USER, "password": PASSWORD},
            "token": "data.session_token",
            "expires_in": "data.expires_in",
        },
        "carry": place,
        **extra,
    }


@contextmanager
def served(service: TokenService) -> Iterator[str]:
    with ThreadedServer(service.app()) as server:
        yield server.base


async def _open(base: str, session: dict[str, Any]) -> RestAdapter:
    adapter = RestAdapter("tokens", RestOptions(base_url=base, session=session))
    await adapter.open()
    return adapter


def test_a_session_expiring_mid_list_is_renewed_before_it_expires() -> None:
    """The reply's lifetime (0.3 s) is shorter than the list (8 pages of 0.1 s)."""
    service = TokenService(lifetime=0.3, page_delay=0.1)

    async def work(base: str) -> list[Any]:
        adapter = await _open(base, session_options(renew_before_seconds=0.05))
        try:
            source = await adapter.bind(SOURCE)
            rows: list[Any] = []
            async for batch in source.stream(Plan(), 5):
                rows.extend(r["id"] for r in batch)
            return rows
        finally:
            await adapter.close()

    with served(service) as base:
        rows = asyncio.run(work(base))
    assert rows == list(range(ITEMS))
    assert service.logins >= 3  # renewed along the way, not once
    assert service.refusals <= 1  # renewed ahead of expiry (at most one race with the clock)


def test_a_session_refused_mid_list_is_renewed_transparently() -> None:
    """The login reply gives no lifetime: the back end's 401 is the only sign of expiry."""
    service = TokenService(lifetime=0.3, tells_lifetime=False, page_delay=0.1)
    options = session_options()
    del options["login"]["expires_in"]

    async def work(base: str) -> Any:
        adapter = await _open(base, options)
        try:
            source = await adapter.bind(SOURCE)
            return await source.page(Plan(limit=ITEMS))
        finally:
            await adapter.close()

    with served(service) as base:
        page = asyncio.run(work(base))
    assert [r["id"] for r in page.records] == list(range(ITEMS))
    assert page.total == ITEMS
    assert service.refusals >= 1
    assert service.logins == service.refusals + 1  # each refusal: exactly one new login


def test_concurrent_requests_share_one_login() -> None:
    service = TokenService()

    async def work(base: str) -> list[Any]:
        adapter = await _open(base, session_options())
        try:
            source = await adapter.bind(SOURCE)
            service.revoke_all()  # every one of the calls below is refused at first
            return await asyncio.gather(*(source.one(Compare("id", "eq", n)) for n in range(12)))
        finally:
            await adapter.close()

    with served(service) as base:
        found = asyncio.run(work(base))
    assert [r["id"] for r in found] == list(range(12))
    assert service.logins == 2  # the one at start-up, one for all twelve refused calls
    assert service.refusals == 12


@pytest.mark.parametrize(
    ("encoding", "carry", "content_type"),
    [
        ("json", "header", "application/json"),
        ("form", "cookie", "application/x-www-form-urlencoded"),
    ],
)
def test_json_and_form_login_bodies(encoding: str, carry: str, content_type: str) -> None:
    service = TokenService()

    async def work(base: str) -> Any:
        adapter = await _open(base, session_options(encoding, carry))
        try:
            source = await adapter.bind(SOURCE)
            return await source.one(Compare("id", "eq", 7))
        finally:
            await adapter.close()

    with served(service) as base:
        found = asyncio.run(work(base))
    assert found == {"id": 7, "name": "item 7"}
    assert service.login_bodies == [(content_type, {"user": USER, "password": PASSWORD})]
    assert service.refusals == 0


def test_a_declared_invalid_session_code_triggers_a_relogin() -> None:
    service = TokenService(stale_as_code=True)
    options = session_options(invalid=["SESSION_EXPIRED"], invalid_code="error.code")

    async def work(base: str) -> Any:
        adapter = await _open(base, options)
        try:
            source = await adapter.bind(SOURCE)
            service.revoke_all()
            return await source.one(Compare("id", "eq", 3))
        finally:
            await adapter.close()

    with served(service) as base:
        found = asyncio.run(work(base))
    assert found == {"id": 3, "name": "item 3"}
    assert (service.logins, service.refusals) == (2, 1)


def test_a_back_end_that_always_refuses_gets_one_relogin_then_an_error() -> None:
    service = TokenService(always_refuse=True)

    async def work(base: str) -> None:
        adapter = await _open(base, session_options())
        try:
            source = await adapter.bind(SOURCE)
            with pytest.raises(BackendError, match="'tokens'.*401"):
                await source.one(Compare("id", "eq", 3))
        finally:
            await adapter.close()

    with served(service) as base:
        asyncio.run(work(base))
    assert (service.logins, service.calls) == (2, 2)


def test_a_login_refused_later_makes_the_back_end_not_ready() -> None:
    """The password is changed on the back end while the gateway runs."""
    service = TokenService()

    async def work(base: str) -> None:
        adapter = await _open(base, session_options())
        try:
            assert adapter.not_ready() is None
            source = await adapter.bind(SOURCE)
            service.password = "changed"
            service.revoke_all()
            with pytest.raises(BackendError, match="'tokens': login refused \\(401\\)"):
                await source.one(Compare("id", "eq", 3))
            assert adapter.not_ready() == "login refused (401)"
        finally:
            await adapter.close()

    with served(service) as base:
        asyncio.run(work(base))
    assert (service.logins, service.calls) == (1, 1)


# Through the gateway: config/saas_rest.yaml with the API key replaced by a session login.

SAAS_CONFIG = ROOT / "config" / "saas_rest.yaml"


def _session_config(tmp_path: Path) -> Path:
    text = SAAS_CONFIG.read_text()
    auth = '    auth: {type: bearer, token: "${SAAS_API_KEY:-sk_test_gateway}"}\n'
    check = "    credentials_check: /v1/account"
    assert auth in text and check in text
    session = (
        "    session:\n"
        "      login:\n"
        "        path: /api/login\n"
        "        encoding: form\n"
        '        body: {user: "${REST_USER}", password: "${REST_PASSWORD}"}\n'
        "        token: data.session_token\n"
        "        expires_in: data.expires_in\n"
        '      carry: {http_header: {name: Authorization, format: "Bearer {token}"}}\n'
    )
    text = text.replace(auth, session).replace(check, "    # no credentials_check")
    text = text.replace("../mappings/", f"{ROOT / 'mappings'}/")
    path = tmp_path / "saas_session.yaml"
    path.write_text(text)
    return path


@contextmanager
def session_gateway(
    tmp_path: Path, service: TokenService, password: str = PASSWORD
) -> Iterator[TestClient]:
    app = service.app()
    app.router.routes.append(Route("/v1/invoices", service.items))
    with ThreadedServer(app) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("SAAS_URL", server.base)
        env.setenv("REST_USER", USER)
        env.setenv("REST_PASSWORD", password)
        env.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = tuned(load_config(_session_config(tmp_path)), worker={"poll_seconds": 0.05})
        with TestClient(create_app(config)) as client:
            yield client


def test_a_back_end_that_always_refuses_is_a_502_naming_it(tmp_path: Path) -> None:
    service = TokenService(always_refuse=True)
    with session_gateway(tmp_path, service) as client:
        assert client.get("/ready").status_code == 200
        logins, calls = service.logins, service.calls
        failed = client.get(f"{API}/customerBill?limit=5")
        assert failed.status_code == 502, failed.text
        assert_valid("Error", failed.json())
        assert "'saas'" in failed.json()["message"]
        # One re-login and one repeat, then the error: never a loop.
        assert (service.calls - calls, service.logins - logins) == (2, 1)
    assert service.login_bodies[0][0] == "application/x-www-form-urlencoded"


def test_wrong_credentials_are_found_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = TokenService()
    with session_gateway(tmp_path, service, "wrong") as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["backends"]["saas"]["lastError"] == "login refused (401)"
    logged = capsys.readouterr().out
    assert "backend_login_refused" in logged and "bad user or password" in logged
    with session_gateway(tmp_path, service) as client:
        assert client.get("/ready").status_code == 200
