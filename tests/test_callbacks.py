"""The callback SSRF guard: which URLs pass, and that delivery connects only where it checked.

Name resolution is the test's (socket.getaddrinfo is replaced for the test's names), and
every connection the HTTP client opens is recorded; one to anything but 127.0.0.1 fails
before a packet is sent, so these tests never leave loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import orjson
import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.callbacks import MAX_CALLBACK_LENGTH, CallbackPolicy, CallbackRefused
from gateway.config import DeliverySettings
from gateway.delivery import DeliveryWorker
from gateway.pinned_transport import PINNED, CallbackClient, PinnedTransport
from gateway.store import ClaimedEvent, GatewayStore
from tests.conftest import API, assert_valid
from tests.listener import Listener
from tests.servers import ThreadedServer

PUBLIC = "1.2.3.4"  # globally routable; the connection guard never lets a packet go there
LOOPBACK = ("127.0.0.0/8", "::1/128")
_real_getaddrinfo = socket.getaddrinfo


class FakeDns:
    """Answers for the test's names, one answer list per call (the last one repeats)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str] | OSError]] = {}
        self.queries: list[str] = []

    def set(self, name: str, *answers: list[str] | OSError) -> None:
        self.answers[name] = list(answers)

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        self.queries.append(name)
        queue = self.answers[name]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, OSError):
            raise answer
        infos = []
        for text in answer:
            address = ipaddress.ip_address(text)
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            sockaddr = (text, int(port)) if address.version == 4 else (text, int(port), 0, 0)
            infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts the HTTP client opens TCP connections to; only 127.0.0.1 is really dialled.

    A host name is looked up as the client's own connect would (through getaddrinfo, so
    through `FakeDns`) and dialled only if it means 127.0.0.1.
    """
    opened: list[str] = []
    connect = httpcore.AnyIOBackend.connect_tcp

    async def guarded(self: httpcore.AnyIOBackend, host: str, port: int, **kw: Any) -> Any:
        opened.append(host)
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        addresses = {info[4][0] for info in infos}
        if addresses != {"127.0.0.1"}:
            raise httpcore.ConnectError(f"test guard: no connection to {host} ({addresses})")
        return await connect(self, "127.0.0.1", port, **kw)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", guarded)
    return opened


def resolve(policy: CallbackPolicy, url: str) -> Any:
    return asyncio.run(policy.resolve(url))


NAMED = "http://named.test/cb"
LONGEST = "http://1.2.3.4/" + "a" * (MAX_CALLBACK_LENGTH - len("http://1.2.3.4/"))


@pytest.mark.parametrize(
    ("url", "allow", "refused_because"),
    [
        # Addresses that are not globally routable, or cloud metadata services.
        ("http://100.100.100.200/cb", (), "cloud metadata"),
        ("http://100.64.0.1/cb", (), "not globally routable"),
        ("http://192.0.0.192/cb", (), "not globally routable"),
        ("http://168.63.129.16/cb", (), "cloud metadata"),
        ("http://169.254.169.254/latest", (), "cloud metadata"),
        ("http://[fd00:ec2::254]/", (), "cloud metadata"),
        ("http://10.1.2.3/cb", (), "not globally routable"),
        ("http://0.0.0.0:8080/cb", (), "not globally routable"),
        ("http://224.0.0.1/cb", (), "not globally routable"),
        ("http://[ff0e::1]/cb", (), "not globally routable"),
        ("http://[::]/cb", (), "not globally routable"),
        ("http://[::1]:9/cb", (), "not globally routable"),
        ("http://127.0.0.1:9/cb", (), "not globally routable"),
        # IPv4 inside IPv6: mapped, compatible, 6to4, NAT64, Teredo.
        ("http://[::ffff:127.0.0.1]:9/cb", (), "not globally routable"),
        ("http://[::ffff:a9fe:a9fe]/cb", (), "cloud metadata"),
        ("http://[::10.0.0.1]/cb", (), "embeds 10.0.0.1"),
        ("http://[::8.8.8.8]/cb", (), "not globally routable"),
        ("http://[2002:a9fe:a9fe::1]/cb", (), "embeds 169.254.169.254"),
        ("http://[2002:0a00:0001::1]/cb", (), "embeds 10.0.0.1"),
        ("http://[64:ff9b::a9fe:a9fe]/cb", (), "embeds 169.254.169.254"),
        ("http://[64:ff9b::7f00:1]/cb", (), "embeds 127.0.0.1"),
        ("http://[64:ff9b:1::a00:1]/cb", (), "not globally routable"),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/cb", (), "embeds 192.0.2.45"),
        ("http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/cb", (), "not globally routable"),
        ("http://[fe80::1%25eth0]/cb", (), "not a valid host name"),
        # Names resolving to such addresses (resolved by the system, or by the test).
        ("http://localhost:9/cb", (), "non-public address"),
        ("http://127.1:9/cb", (), "resolves to 127.0.0.1"),
        ("http://mixed.test/cb", (), "resolves to 10.9.8.7"),
        ("http://gone.test/cb", (), "does not resolve"),
        # URL shapes: the appended /listener/... must stay the path; no credentials.
        ("http://named.test/cb?x=", (), "query or fragment"),
        ("http://named.test/cb?", (), "query or fragment"),
        ("http://named.test/cb#", (), "query or fragment"),
        ("http://named.test/cb#frag", (), "query or fragment"),
        ("http://user:pass@named.test/cb", (), "user info"),
        ("http://user@named.test/cb", (), "user info"),
        ("http://@named.test/cb", (), "user info"),
        ("ftp://named.test/cb", (), "http or https"),
        ("http:///cb", (), "http or https"),
        ("http://named.test:99999/cb", (), "out of range"),
        ("http://named.test:x/cb", (), "not a valid URL"),
        ("http://ex\u2764ample.test/cb", (), "IDNA"),
        ("http://%31%32%37.0.0.1/cb", (), "not a valid host name"),
        ("http://a..b/cb", (), "not a valid host name"),
        ("http://named.test/c b", (), "spaces"),
        ("http://named.test\\@127.0.0.1/cb", (), "backslashes"),
        (LONGEST + "a", (), "longer than 2048"),
        # Allowed: public addresses, and any address inside an allowlisted network.
        (LONGEST, (), None),
        (NAMED, (), None),
        ("https://[2606:4700::1111]/cb", (), None),
        ("http://[::ffff:8.8.8.8]/cb", (), None),
        ("http://[2002:0808:0808::1]/cb", (), None),
        ("http://[64:ff9b::808:808]/cb", (), None),
        ("http://b\u00fccher.test/cb", (), None),
        ("http://127.0.0.1:9/cb", LOOPBACK, None),
        ("http://[::ffff:127.0.0.1]:9/cb", LOOPBACK, None),
        ("http://[::1]:9/cb", LOOPBACK, None),
        ("http://localhost:9/cb", LOOPBACK, None),
        ("http://10.1.2.3/cb", ("10.0.0.0/8",), None),
        ("http://168.63.129.16/cb", ("168.63.129.16/32",), None),
    ],
)
def test_which_callbacks_are_allowed(
    dns: FakeDns, url: str, allow: tuple[str, ...], refused_because: str | None
) -> None:
    dns.set("named.test", [PUBLIC])
    dns.set("xn--bcher-kva.test", [PUBLIC])
    dns.set("mixed.test", [PUBLIC, "10.9.8.7"])
    dns.set("gone.test", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    policy = CallbackPolicy(allow)
    if refused_because is None:
        target = resolve(policy, url)
        assert target.port in (9, 80, 443)
        assert policy.address_allowed(target.address)
        return
    with pytest.raises(CallbackRefused) as refused:
        resolve(policy, url)
    assert refused_because in refused.value.reason


def test_the_target_names_the_host_as_sent_and_the_address_checked(dns: FakeDns) -> None:
    dns.set("xn--bcher-kva.test", [PUBLIC])
    target = resolve(CallbackPolicy(), "https://B\u00fccher.test:8443/cb")
    assert (target.scheme, target.host, target.port) == ("https", "xn--bcher-kva.test", 8443)
    assert target.address == ipaddress.ip_address(PUBLIC)
    assert dns.queries == ["xn--bcher-kva.test"]  # one resolution, of the encoded name
    mapped = resolve(CallbackPolicy(LOOPBACK), "http://[::ffff:127.0.0.1]:9/x")
    assert mapped.address == ipaddress.ip_address("127.0.0.1")  # dialled as the IPv4 it is


def test_each_check_resolves_again(dns: FakeDns) -> None:
    dns.set("flip.test", [PUBLIC], ["127.0.0.1"])
    policy = CallbackPolicy()
    asyncio.run(policy.check("http://flip.test/cb"))
    with pytest.raises(CallbackRefused, match="resolves to 127.0.0.1"):
        asyncio.run(policy.check("http://flip.test/cb"))
    assert dns.queries == ["flip.test", "flip.test"]


@pytest.mark.parametrize(
    ("callback", "words"),
    [
        ("http://127.0.0.1:9/cb?x=", "query or fragment"),
        ("http://127.0.0.1:9/cb#", "query or fragment"),
        ("http://user:pass@127.0.0.1:9/cb", "user info"),
        ("http://100.100.100.200/cb", "cloud metadata"),
        ("http://[2002:a9fe:a9fe::1]/cb", "embeds 169.254.169.254"),
    ],
)
def test_registration_refuses_with_a_tmf_error(
    client: TestClient, callback: str, words: str
) -> None:
    response = client.post(f"{API}/hub", json={"callback": callback})
    assert response.status_code == 400, response.text
    body = response.json()
    assert_valid("Error", body)
    assert body["code"] == "INVALID_CALLBACK" and words in body["message"]


def event(url: str, event_id: str) -> ClaimedEvent:
    payload = {"eventId": event_id, "eventType": "CustomerBillCreateEvent", "event": {}}
    return ClaimedEvent(0, event_id, url, orjson.dumps(payload).decode(), 0, 0.0)


@pytest.mark.parametrize("allow", [(), LOOPBACK], ids=["loopback-refused", "loopback-allowed"])
def test_delivery_connects_only_to_the_address_it_checked(
    dns: FakeDns, connections: list[str], allow: tuple[str, ...], tmp_path: Path
) -> None:
    """DNS rebinding: public when checked, loopback on any later lookup."""
    with Listener() as listener:
        port = listener.base.rsplit(":", 1)[1]
        dns.set("rebind.test", [PUBLIC], ["127.0.0.1"])
        url = f"http://rebind.test:{port}/ok-rebind/listener/customerBillCreateEvent"

        async def deliver_twice() -> list[tuple[str, bool] | None]:
            store = GatewayStore(f"sqlite+aiosqlite:///{tmp_path / 'unused.sqlite'}")
            worker = DeliveryWorker(
                store, DeliverySettings(timeout_seconds=2), CallbackPolicy(allow)
            )
            try:
                first = await worker._post(event(url, "e-1"))
                after_first = (list(dns.queries), list(connections), len(listener.received))
                second = await worker._post(event(url, "e-2"))
            finally:
                await worker.close()
            assert after_first == (["rebind.test"], [PUBLIC], 0)
            return [first, second]

        first, second = asyncio.run(deliver_twice())

    # The first delivery checked 1.2.3.4 and dialled it (the guard failed it): it never
    # looked the name up again, so it never reached the listener behind 127.0.0.1.
    assert first is not None and first[1] is False and "test guard" in first[0]
    assert dns.queries == ["rebind.test", "rebind.test"]  # one lookup per delivery
    if allow:
        # The second delivery checked 127.0.0.1, which is allowed, and went there.
        assert second is None
        assert connections == [PUBLIC, "127.0.0.1"]
        assert [e["eventId"] for e in listener.events("ok-rebind")] == ["e-2"]
    else:
        assert second is not None and second[1] is True and "non-public" in second[0]
        assert connections == [PUBLIC]
        assert listener.received == []


class TlsServer:
    """A uvicorn HTTPS server on 127.0.0.1 that records the SNI names and Host headers."""

    def __init__(self, authority: trustme.CA, name: str, tmp_path: Path) -> None:
        pem = tmp_path / "server.pem"
        authority.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=[Route("/{rest:path}", self._handle, methods=["POST"])]),
            host="127.0.0.1",
            port=self.port,
            ssl_keyfile=str(pem),
            ssl_certfile=str(pem),
            log_level="warning",
            lifespan="off",
        )
        config.load()
        assert config.ssl is not None
        config.ssl.sni_callback = self._sni
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def _handle(self, request: Request) -> Response:
        self.hosts.append(request.headers["host"])
        return Response(status_code=204)

    def __enter__(self) -> TlsServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(authority: trustme.CA, tmp_path: Path) -> Iterator[TlsServer]:
    with TlsServer(authority, "callback.test", tmp_path) as server:
        yield server


def trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


def run_client(
    authority: trustme.CA, work: Callable[[CallbackClient], Any], allow: tuple[str, ...]
) -> Any:
    async def main() -> Any:
        client = CallbackClient(CallbackPolicy(allow), timeout=5, verify=trusting(authority))
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_https_is_pinned_and_verified_against_the_callback_name(
    dns: FakeDns, connections: list[str], authority: trustme.CA, tls_server: TlsServer
) -> None:
    dns.set("callback.test", ["127.0.0.1"])
    dns.set("other.test", ["127.0.0.1"])  # same address, a name the certificate lacks
    good = f"https://callback.test:{tls_server.port}/cb/listener/customerBillCreateEvent"
    other = f"https://other.test:{tls_server.port}/cb/listener/customerBillCreateEvent"
    headers = {"Content-Type": "application/json"}

    async def work(client: CallbackClient) -> list[int]:
        statuses = []
        for _ in range(2):  # the second reuses the verified connection
            response = await client.post(good, content=b"{}", headers=headers)
            statuses.append(response.status_code)
        # The pooled connection to 127.0.0.1 was verified for callback.test only: a
        # different name on the same address gets its own connection, and fails.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post(other, content=b"{}", headers=headers)
        return statuses

    assert run_client(authority, work, LOOPBACK) == [204, 204]
    assert tls_server.server_names == ["callback.test", "other.test"]
    assert tls_server.hosts == [f"callback.test:{tls_server.port}"] * 2
    assert connections == ["127.0.0.1", "127.0.0.1"]
    assert dns.queries == ["callback.test", "callback.test", "other.test"]


def test_https_callback_refused_before_connecting_when_not_allowlisted(
    dns: FakeDns, connections: list[str], authority: trustme.CA, tls_server: TlsServer
) -> None:
    dns.set("callback.test", ["127.0.0.1"])
    url = f"https://callback.test:{tls_server.port}/cb"

    async def work(client: CallbackClient) -> None:
        with pytest.raises(CallbackRefused, match="non-public"):
            await client.post(url, content=b"{}", headers={})

    run_client(authority, work, ())
    assert connections == [] and tls_server.hosts == []


def test_the_transport_sends_nothing_it_was_not_given_a_checked_target_for(
    dns: FakeDns, connections: list[str]
) -> None:
    dns.set("one.test", ["127.0.0.1"])

    async def main() -> None:
        target = await CallbackPolicy(LOOPBACK).resolve("http://one.test:9/cb")
        async with httpx.AsyncClient(transport=PinnedTransport()) as client:
            with pytest.raises(CallbackRefused, match="not checked"):
                await client.post("http://one.test:9/cb")
            with pytest.raises(CallbackRefused, match="not the checked callback"):
                await client.post("http://two.test:9/cb", extensions={PINNED: target})
            with pytest.raises(CallbackRefused, match="not the checked callback"):
                await client.post("http://one.test:10/cb", extensions={PINNED: target})

    asyncio.run(main())
    assert connections == []


def test_redirects_are_not_followed(dns: FakeDns, connections: list[str]) -> None:
    async def redirect(request: Request) -> Response:
        return Response(status_code=307, headers={"Location": "http://169.254.169.254/"})

    app = Starlette(routes=[Route("/{rest:path}", redirect, methods=["POST"])])
    with ThreadedServer(app) as server:
        dns.set("hop.test", ["127.0.0.1"])

        async def main() -> int:
            client = CallbackClient(CallbackPolicy(LOOPBACK), timeout=5)
            try:
                url = f"http://hop.test:{server.port}/cb"
                return (await client.post(url, content=b"{}", headers={})).status_code
            finally:
                await client.aclose()

        assert asyncio.run(main()) == 307
    assert connections == ["127.0.0.1"]
