"""How REST and SOAP back ends are reached: both transports against real loopback servers
(plain HTTP, HTTPS, mutual TLS, a forward proxy from the environment, slow back ends),
and the guards on what goes out and comes back."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from httpx_aiohttp import AiohttpTransport
from pydantic import ValidationError

from adapters.backend_http import MAX_REPLY_BYTES, BackendHttp, ReplyTooLarge
from adapters.base import OUTGOING_HEADERS, BackendError, Compare, Plan
from adapters.registry import build_adapter
from adapters.rest import RestAdapter, RestOptions
from adapters.soap import SoapAdapter, SoapOptions
from gateway.config import load_config
from simulators.soap_billing import WSDL
from tests.raw_http import ForwardProxy, RawRequest, RawServer, reply

TRANSPORTS = ("aiohttp", "httpx")
SPEC = {
    "key": "id",
    "list": {"path": "/items", "records": "data", "total": "total"},
    "get": {"path": "/items/{key}"},
}


def run(work: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(work())


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def record(request: RawRequest) -> bytes:
    return reply(orjson.dumps({"id": request.target.rsplit("/", 1)[1], "n": 1}))


async def fetch(base_url: str, ident: str = "i1", **options: Any) -> dict[str, Any] | None:
    """One record by key through a REST adapter built from `options`."""
    adapter = RestAdapter("billing", RestOptions(base_url=base_url, **options))
    await adapter.open()
    try:
        source = await adapter.bind(SPEC)
        return await source.one(Compare("id", "eq", ident))
    finally:
        await adapter.close()


# Plain HTTP, both transports.


def test_plain_http_through_either_transport(transport: str) -> None:
    async def work() -> tuple[list[Any], type[Any], int, list[RawRequest]]:
        async with RawServer(record) as server:
            adapter = RestAdapter(
                "billing", RestOptions(base_url=server.url, http_transport=transport)
            )
            await adapter.open()
            try:
                assert adapter._client is not None
                kind = type(adapter._client._transport)
                source = await adapter.bind(SPEC)
                found = [await source.one(Compare("id", "eq", f"i{n}")) for n in range(3)]
            finally:
                await adapter.close()
            return found, kind, server.connections, server.requests

    found, kind, connections, requests = run(work)
    assert found == [{"id": f"i{n}", "n": 1} for n in range(3)]
    assert kind is (AiohttpTransport if transport == "aiohttp" else httpx.AsyncHTTPTransport)
    assert connections == 1  # keep-alive: one connection served all three
    assert [r.target for r in requests] == ["/items/i0", "/items/i1", "/items/i2"]


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="http_transport"):
        RestOptions(base_url="http://x", http_transport="fast")
    with pytest.raises(ValidationError, match="http_transport"):
        SoapOptions(wsdl="http://x/w", http_transport="curl")
    with pytest.raises(ValidationError, match="verify"):
        SoapOptions(wsdl="https://x/w", verify=1)
    with pytest.raises(ValidationError, match="connect_timeout_seconds"):
        RestOptions(base_url="http://x", connect_timeout_seconds=0)
    with pytest.raises(ValidationError, match="key and key_password go with cert"):
        RestOptions(base_url="http://x", key="client.key")
    with pytest.raises(ValidationError, match="trust_env"):
        RestOptions(base_url="http://x", trust_env="yes")
    options = RestOptions(base_url="http://x", cert="c.pem", key_password="s3cret")
    assert "s3cret" not in repr(options)  # a secret, kept out of logs
    defaults = RestOptions(base_url="http://x")
    assert (defaults.http_transport, defaults.verify, defaults.trust_env) == ("aiohttp", True, True)
    assert (defaults.connect_timeout_seconds, defaults.timeout_seconds) == (5.0, 10.0)


# TLS: a CA file, client certificates, bad files at start-up.


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def server_tls(authority: trustme.CA, name: str = "127.0.0.1", *, mutual: bool = False) -> Any:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    if mutual:
        authority.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return str(path)


def test_https_checks_the_certificate_against_the_ca_file(
    transport: str, authority: trustme.CA, ca_file: str
) -> None:
    async def work() -> tuple[Any, Any, BackendError]:
        async with RawServer(record, server_tls(authority)) as server:
            trusted = await fetch(server.url, http_transport=transport, verify=ca_file)
            unchecked = await fetch(server.url, http_transport=transport, verify=False)
            with pytest.raises(BackendError) as refused:  # public CAs only
                await fetch(server.url, http_transport=transport)
            return trusted, unchecked, refused.value

    trusted, unchecked, refused = run(work)
    assert trusted == unchecked == {"id": "i1", "n": 1}
    assert refused.status == 503 and "CERTIFICATE_VERIFY_FAILED" in refused.reason


def test_mutual_tls_sends_the_client_certificate(
    transport: str, authority: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    client = authority.issue_cert("gateway.client.test")
    combined, cert, key, locked = (tmp_path / n for n in ("both.pem", "c.pem", "k.pem", "e.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(combined))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    client.private_key_pem.write_to_path(str(key))
    private = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    tls = {"http_transport": transport, "verify": ca_file}

    async def work() -> tuple[list[Any], BackendError, int]:
        async with RawServer(record, server_tls(authority, mutual=True)) as server:
            found = [
                await fetch(server.url, cert=str(combined), **tls),
                await fetch(server.url, cert=str(cert), key=str(key), **tls),
                await fetch(
                    server.url, cert=str(cert), key=str(locked), key_password="s3cret", **tls
                ),
            ]
            with pytest.raises(BackendError) as refused:  # no client certificate
                await fetch(server.url, **tls)
            return found, refused.value, len(server.requests)

    found, refused, served = run(work)
    assert found == [{"id": "i1", "n": 1}] * 3
    assert refused.status == 503, refused.reason
    assert served == 3  # the client without a certificate got no request through


def test_bad_tls_files_stop_the_back_end_at_start_up(
    authority: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    client = authority.issue_cert("gateway.client.test")
    cert, locked = tmp_path / "c.pem", tmp_path / "e.pem"
    client.cert_chain_pems[0].write_to_path(str(cert))
    private = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    cases = [
        ({"verify": str(tmp_path / "missing.pem")}, "cannot use CA file"),
        ({"verify": str(garbage)}, "cannot use CA file"),
        ({"cert": str(tmp_path / "missing.pem")}, "cannot use client certificate"),
        ({"cert": str(cert)}, "cannot use client certificate"),  # no key in it
        ({"cert": str(cert), "key": str(garbage)}, "cannot use client certificate"),
        ({"cert": str(cert), "key": str(locked)}, "needs key_password"),
        ({"cert": str(cert), "key": str(locked), "key_password": "wrong"}, "client certificate"),
    ]
    for options, words in cases:
        with pytest.raises(BackendError, match=words) as caught:
            RestAdapter("billing", RestOptions(base_url="https://127.0.0.1:1", **options))
        assert "'billing'" in caught.value.reason
        with pytest.raises(BackendError, match=words) as caught:
            SoapAdapter("consumer", SoapOptions(wsdl="https://127.0.0.1:1/w", **options))
        assert "'consumer'" in caught.value.reason


# Proxies from the environment.


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield monkeypatch


def test_proxies_come_from_the_environment(
    transport: str, no_proxy_env: pytest.MonkeyPatch, authority: trustme.CA, ca_file: str
) -> None:
    """billing.test resolves nowhere: only the proxy (which sends all to 127.0.0.1) can
    reach it. NO_PROXY=127.0.0.1 keeps the direct back end direct."""

    async def work() -> tuple[list[Any], list[str], int, int]:
        async with (
            ForwardProxy() as proxy,
            RawServer(record) as plain,
            RawServer(record, server_tls(authority, "billing.test")) as secure,
        ):
            no_proxy_env.setenv("HTTP_PROXY", proxy.url)
            no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
            no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
            options = {"http_transport": transport, "verify": ca_file}
            found = [
                await fetch(f"http://billing.test:{plain.port}", "p", **options),
                await fetch(f"https://billing.test:{secure.port}", "s", **options),
                await fetch(plain.url, "direct", **options),
            ]
            return found, proxy.forwarded, len(plain.requests), len(secure.requests)

    found, forwarded, plain_served, secure_served = run(work)
    assert [r and r["id"] for r in found] == ["p", "s", "direct"]
    assert forwarded[0].startswith("GET http://billing.test:")
    assert forwarded[0].endswith("/items/p")
    assert forwarded[1].startswith("CONNECT billing.test:")
    assert len(forwarded) == 2  # the direct one did not go through the proxy
    assert (plain_served, secure_served) == (2, 1)


def test_trust_env_false_ignores_proxy_settings(
    transport: str, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async def work() -> tuple[Any, list[str]]:
        async with ForwardProxy() as proxy, RawServer(record) as server:
            no_proxy_env.setenv("HTTP_PROXY", proxy.url)
            found = await fetch(server.url, http_transport=transport, trust_env=False)
            return found, proxy.forwarded

    found, forwarded = run(work)
    assert found == {"id": "i1", "n": 1} and forwarded == []


# Deadlines: timeout_seconds bounds each call, connect_timeout_seconds the connecting.


async def slow(request: RawRequest) -> bytes:
    await asyncio.sleep(3)
    return reply()


def test_rest_calls_end_at_the_configured_timeout(transport: str) -> None:
    async def work() -> list[tuple[BackendError, float]]:
        outcomes = []
        async with RawServer(slow) as server:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(BackendError) as caught:
                    await fetch(server.url, http_transport=transport, timeout_seconds=0.5)
                outcomes.append((caught.value, time.monotonic() - started))
        return outcomes

    for error, elapsed in run(work):
        assert error.status == 504 and "timed out" in error.reason
        assert 0.4 < elapsed < 1.5  # the configured 0.5 s, not the 10 s default


def test_the_timeout_written_in_the_config_file_is_the_adapters(tmp_path: Path) -> None:
    """`timeout_seconds` goes from the YAML file through the options model to the calls."""

    async def work(config: Path) -> tuple[BackendError, float]:
        async with RawServer(slow) as server:
            config.write_text(
                "backends:\n  billing:\n    kind: rest\n"
                f"    base_url: {server.url}\n    timeout_seconds: 0.5\n"
            )
            adapter = build_adapter("billing", load_config(config).backends["billing"])
            await adapter.open()
            started = time.monotonic()
            try:
                source = await adapter.bind(SPEC)
                with pytest.raises(BackendError) as caught:
                    await source.one(Compare("id", "eq", "i1"))
            finally:
                await adapter.close()
            return caught.value, time.monotonic() - started

    error, elapsed = asyncio.run(work(tmp_path / "gateway.yaml"))
    assert error.status == 504
    assert 0.4 < elapsed < 1.5  # the file's 0.5 s, not the 10 s default


def test_a_trickling_reply_is_bounded_as_a_whole(transport: str) -> None:
    """Each read gets a byte within 0.2 s, so only a deadline on the whole call stops it."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        try:
            for _ in range(50):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def work() -> tuple[BackendError, float]:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started = time.monotonic()
        try:
            with pytest.raises(BackendError) as caught:
                await fetch(url, http_transport=transport, timeout_seconds=0.6)
        finally:
            server.close()
        return caught.value, time.monotonic() - started

    error, elapsed = run(work)
    assert error.status == 504 and 0.5 < elapsed < 1.5


def soap_service(operation_delay: float) -> Callable[[RawRequest], Awaitable[bytes]]:
    """Serves the simulator's WSDL (pointing back here) and answers operations late."""

    async def handle(request: RawRequest) -> bytes:
        if request.method == "GET":
            host = request.header("host")
            text = WSDL.read_text().replace("127.0.0.1:8702", str(host))
            return reply(text.encode(), headers={"Content-Type": "text/xml"})
        await asyncio.sleep(operation_delay)
        return reply(b"<late/>", headers={"Content-Type": "text/xml"})

    return handle


def test_soap_calls_end_at_the_configured_timeout(transport: str) -> None:
    async def work() -> tuple[BackendError, float]:
        async with RawServer(soap_service(3)) as server:
            options = SoapOptions(
                wsdl=f"{server.url}/billing.wsdl", http_transport=transport, timeout_seconds=0.5
            )
            adapter = SoapAdapter("consumer", options)
            await adapter.open()
            try:
                started = time.monotonic()
                with pytest.raises(BackendError) as caught:
                    await adapter.call("GetInvoice", {"invoiceRef": "C-1001"})
                return caught.value, time.monotonic() - started
            finally:
                await adapter.close()

    error, elapsed = run(work)
    assert error.status == 504 and "GetInvoice timed out" in error.reason
    assert 0.4 < elapsed < 1.5


def test_connecting_is_bounded_by_connect_timeout_seconds(transport: str) -> None:
    """A listener whose backlog is full drops new connection attempts unanswered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = []
        try:
            for _ in range(4):  # fill the accept queue; none is accepted
                waiting = socket.socket()
                waiting.setblocking(False)
                waiting.connect_ex(("127.0.0.1", port))
                queued.append(waiting)
            time.sleep(0.1)

            async def work() -> tuple[BackendError, float]:
                started = time.monotonic()
                with pytest.raises(BackendError) as caught:
                    await fetch(
                        f"http://127.0.0.1:{port}",
                        http_transport=transport,
                        connect_timeout_seconds=0.3,
                        timeout_seconds=5,
                    )
                return caught.value, time.monotonic() - started

            error, elapsed = run(work)
        finally:
            for waiting in queued:
                waiting.close()
    assert error.status == 504 and "ConnectTimeout" in error.reason
    assert elapsed < 1.5  # the configured 0.3 s, not the 5 s of timeout_seconds


# Failures: what the gateway answers.


def test_refused_and_malformed_replies_are_503s(transport: str) -> None:
    async def banana(request: RawRequest) -> bytes:
        return b"HTTP/1.1 banana\r\n\r\n"

    async def work() -> tuple[BackendError, BackendError]:
        with pytest.raises(BackendError) as refused:
            await fetch("http://127.0.0.1:9", http_transport=transport)  # nobody listens
        async with RawServer(banana) as server:
            with pytest.raises(BackendError) as malformed:
                await fetch(server.url, http_transport=transport)
        return refused.value, malformed.value

    refused, malformed = run(work)
    assert refused.status == 503  # unreachable, not a timeout, whatever the transport says
    assert malformed.status == 503


# Guards: header line breaks never reach the wire; replies are bounded.


def test_header_values_with_line_breaks_are_never_sent(transport: str) -> None:
    with pytest.raises(ValidationError, match="line break"):
        RestOptions(base_url="http://x", headers={"X-Tenant": "a\r\nX-Injected: yes"})

    async def token_then_record(request: RawRequest) -> bytes:
        if request.target == "/token":  # a back end handing out a token that splits headers
            return reply(b'{"access_token": "t\\r\\nX-Injected: yes", "expires_in": 600}')
        return await record(request)

    async def work() -> tuple[BackendError, httpx.LocalProtocolError, list[RawRequest]]:
        async with RawServer(token_then_record) as server:
            auth = {
                "type": "oauth2_client_credentials",
                "token_url": "/token",
                "client_id": "c",
                "client_secret": "s",
            }
            with pytest.raises(BackendError) as from_token:
                await fetch(server.url, http_transport=transport, auth=auth)
            options = RestOptions(base_url=server.url, http_transport=transport)
            async with BackendHttp("billing", options).async_client() as client:
                with pytest.raises(httpx.LocalProtocolError) as from_call:
                    await client.get(f"{server.url}/x", headers={"X-A": "v\nX-Injected: 1"})
            return from_token.value, from_call.value, server.requests

    from_token, from_call, requests = run(work)
    assert "line break" in from_token.reason and "line break" in str(from_call)
    assert [r.target for r in requests] == ["/token"]  # nothing else reached the wire
    assert all(b"X-Injected" not in r.head for r in requests)


def test_replies_beyond_the_bound_are_refused(transport: str) -> None:
    async def big(request: RawRequest) -> bytes:
        if request.target == "/announced":  # says so up front; no body follows
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_REPLY_BYTES + 1)
        chunk = b"y" * 1000  # 5,000 bytes, chunked: counted as they arrive
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def streamed(limit: int) -> int:
        async with RawServer(big) as server:
            options = RestOptions(base_url=server.url, http_transport=transport)
            http = BackendHttp("billing", options, max_reply_bytes=limit)
            async with http.async_client(base_url=server.url) as client:
                return len((await client.get("/streamed")).content)

    async def announced() -> BackendError:
        async with RawServer(big) as server:  # the adapter, with the default bound
            adapter = RestAdapter(
                "billing", RestOptions(base_url=server.url, http_transport=transport)
            )
            await adapter.open()
            try:
                with pytest.raises(BackendError) as caught:
                    await adapter.request("GET", "/announced")
                return caught.value
            finally:
                await adapter.close()

    assert run(lambda: streamed(5000)) == 5000
    with pytest.raises(ReplyTooLarge, match="larger than 4999 bytes"):
        run(lambda: streamed(4999))
    error = run(announced)
    assert error.status == 503 and f"over {MAX_REPLY_BYTES}" in error.reason


# The gateway's trace headers ride on every back-end call.

TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "X-Request-ID": "req-42",
}
SOAP_REPLY = (
    b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
    b"<r:GetInvoiceResponse xmlns:r='urn:example:consumer-billing:v2'/></s:Body></s:Envelope>"
)


async def wsdl_or_reply(request: RawRequest) -> bytes:
    """The simulator's WSDL (pointing back here) on GET, an empty SOAP answer on POST."""
    if request.method == "GET":
        text = WSDL.read_text().replace("127.0.0.1:8702", str(request.header("host")))
        return reply(text.encode(), headers={"Content-Type": "text/xml"})
    return reply(SOAP_REPLY, headers={"Content-Type": "text/xml"})


async def rest_and_soap_calls(transport: str) -> tuple[list[RawRequest], list[RawRequest]]:
    """One REST call and one SOAP call, each to its loopback server."""
    async with RawServer(record) as rest, RawServer(wsdl_or_reply) as soap:
        assert await fetch(rest.url, http_transport=transport) == {"id": "i1", "n": 1}
        adapter = SoapAdapter(
            "consumer", SoapOptions(wsdl=f"{soap.url}/billing.wsdl", http_transport=transport)
        )
        await adapter.open()
        try:
            await adapter.call("GetInvoice", {"invoiceRef": "C-1001"})
        finally:
            await adapter.close()
        return rest.requests, soap.requests


def test_rest_and_soap_calls_carry_the_outgoing_headers(transport: str) -> None:
    async def work() -> tuple[list[RawRequest], list[RawRequest]]:
        OUTGOING_HEADERS.set(TRACE)  # as the gateway does per incoming request
        return await rest_and_soap_calls(transport)

    rest, soap = run(work)
    calls = [rest[-1], soap[-1]]
    assert [(r.method, r.target) for r in calls] == [("GET", "/items/i1"), ("POST", "/soap")]
    for sent in calls:
        assert sent.header("traceparent") == TRACE["traceparent"]
        assert sent.header("x-request-id") == "req-42"
    assert soap[-1].header("soapaction") is not None  # zeep's own headers stay
    assert soap[-1].header("content-type") == "text/xml; charset=utf-8"


def test_no_outgoing_headers_none_sent(transport: str) -> None:
    rest, soap = run(lambda: rest_and_soap_calls(transport))
    for sent in (rest[-1], soap[-1]):
        assert sent.header("traceparent") is None and sent.header("x-request-id") is None


def test_outgoing_headers_with_line_breaks_are_never_sent(transport: str) -> None:
    async def work() -> tuple[BackendError, list[RawRequest]]:
        OUTGOING_HEADERS.set({"traceparent": "00-x\r\nX-Injected: yes"})
        async with RawServer(record) as server:
            with pytest.raises(BackendError) as caught:
                await fetch(server.url, http_transport=transport)
            return caught.value, server.requests

    error, requests = run(work)
    assert "line break" in error.reason and requests == []


# What httpx's client does, the short way onto aiohttp does the same.


def test_basic_auth_and_static_headers_reach_the_wire(transport: str) -> None:
    async def work() -> list[RawRequest]:
        async with RawServer(record) as server:
            auth = {"type": "basic", "username": "gw", "password": "pw"}
            headers = {"X-Tenant": "t1"}
            await fetch(server.url, http_transport=transport, auth=auth, headers=headers)
            return server.requests

    sent = run(work)[-1]
    assert sent.header("authorization") == "Basic Z3c6cHc="  # gw:pw
    assert sent.header("x-tenant") == "t1"
    assert sent.header("user-agent") is not None


def test_cookies_a_back_end_sets_are_sent_back(transport: str) -> None:
    async def session(request: RawRequest) -> bytes:
        if request.target.endswith("/i0"):
            return reply(b'{"id": "i0"}', headers={"Set-Cookie": "session=abc; Path=/"})
        return await record(request)

    async def work() -> list[RawRequest]:
        async with RawServer(session) as server:
            adapter = RestAdapter(
                "billing", RestOptions(base_url=server.url, http_transport=transport)
            )
            await adapter.open()
            try:
                source = await adapter.bind(SPEC)
                for ident in ("i0", "i1"):
                    await source.one(Compare("id", "eq", ident))
            finally:
                await adapter.close()
            return server.requests

    first, second = run(work)
    assert first.header("cookie") is None and second.header("cookie") == "session=abc"


def test_query_parameters_and_encoded_paths_reach_the_wire(transport: str) -> None:
    async def page(request: RawRequest) -> bytes:
        return reply(orjson.dumps({"data": [{"id": "a b/c"}], "total": 1}))

    async def work() -> list[RawRequest]:
        async with RawServer(page) as server:
            spec = {**SPEC, "list": {**SPEC["list"], "filters": {"n": {"param": "n q"}}}}
            adapter = RestAdapter(
                "billing", RestOptions(base_url=f"{server.url}/api", http_transport=transport)
            )
            await adapter.open()
            try:
                source = await adapter.bind(spec)
                await source.one(Compare("id", "eq", "a b/c"))
                await source.page(Plan(Compare("n", "eq", "x&y=é"), limit=5))
            finally:
                await adapter.close()
            return server.requests

    one, listed = run(work)
    assert one.target == "/api/items/a%20b%2Fc"
    assert listed.target.startswith("/api/items?") and "n+q=x%26y%3D%C3%A9" in listed.target


def test_compressed_replies_are_decoded_and_bounded_when_decoded() -> None:
    """gzip is undone on the way in; the short way counts the decoded bytes against the
    bound, so a small compressed reply cannot expand past it."""
    body = orjson.dumps({"id": "i1", "pad": "z" * 20_000})
    packed = gzip.compress(body)

    async def zipped(request: RawRequest) -> bytes:
        return reply(packed, headers={"Content-Encoding": "gzip"})

    async def work(limit: int) -> httpx.Response:
        async with RawServer(zipped) as server:
            options = RestOptions(base_url=server.url)
            http = BackendHttp("billing", options, max_reply_bytes=limit)
            async with http.async_client(base_url=server.url) as client:
                return await client.get("/items/i1")

    got = run(lambda: work(len(body)))
    with pytest.raises(ReplyTooLarge, match=f"larger than {len(body) - 1} bytes"):
        run(lambda: work(len(body) - 1))
    assert len(packed) < len(body) - 1  # counted as received, it would have passed
    assert got.content == body and orjson.loads(got.content)["id"] == "i1"
    assert "content-encoding" not in got.headers  # what is held is no longer gzip
