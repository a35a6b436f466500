"""The lean httpx transport against a raw HTTP/1.1 server on loopback, byte by byte."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trustme
from pydantic import ValidationError

from adapters.base import BackendError
from adapters.http_transport import FastTransport, backend_tls
from adapters.rest import RestAdapter, RestOptions
from adapters.soap import SoapOptions

# A handler gets (request number on its connection, request head + body) and returns the
# raw reply bytes, with `CLOSE` appended to close the connection after them, or None to
# close it without a reply.
Handler = Callable[[int, bytes], Awaitable[bytes | None]]
CLOSE = b"<close>"


class RawServer:
    """A loopback HTTP/1.1 server whose replies the test writes as bytes."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            for number in range(1, 1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = await self.handler(number, request)
                if reply is None:
                    return
                writer.write(reply.removesuffix(CLOSE))
                await writer.drain()
                if reply.endswith(CLOSE):
                    return
        finally:
            self.open -= 1
            writer.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def always_ok(number: int, request: bytes) -> bytes:
    return ok(b"n=%d" % number)


def run(work: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(work())


def client(**options: Any) -> httpx.AsyncClient:
    timeout = options.pop("timeout", 5)
    return httpx.AsyncClient(transport=FastTransport(**options), timeout=timeout)


def test_keep_alive_connections_are_reused() -> None:
    async def work() -> tuple[list[str], int]:
        async with RawServer(always_ok) as server, client() as c:
            bodies = [(await c.get(f"{server.url}/x")).text for _ in range(5)]
            return bodies, server.connections

    bodies, connections = run(work)
    assert bodies == ["n=1", "n=2", "n=3", "n=4", "n=5"]
    assert connections == 1


def test_chunked_and_gzip_replies_are_decoded() -> None:
    packed = gzip.compress(b"x" * 3000)

    async def chunked(number: int, request: bytes) -> bytes:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (packed[:100], packed[100:]))
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )

    async def work() -> tuple[str, str]:
        async with RawServer(chunked) as server, client() as c:
            first = await c.get(f"{server.url}/a")
            second = await c.get(f"{server.url}/b")  # the same connection, still in step
            return first.text, second.text

    assert run(work) == ("x" * 3000, "x" * 3000)


def test_connection_close_and_close_delimited_bodies() -> None:
    async def closing(number: int, request: bytes) -> bytes:
        if b"/old" in request:  # HTTP/1.0 style: the body ends with the connection
            return b"HTTP/1.0 200 OK\r\n\r\nuntil the end" + CLOSE
        return ok(b"bye", b"Connection: close\r\n") + CLOSE

    async def work() -> tuple[list[str], int]:
        async with RawServer(closing) as server, client() as c:
            texts = [(await c.get(f"{server.url}/{p}")).text for p in ("new", "old", "new")]
            return texts, server.connections

    texts, connections = run(work)
    assert texts == ["bye", "until the end", "bye"]
    assert connections == 3


def test_request_bodies_go_whole_with_a_length() -> None:
    async def stream():  # an async body: httpx would announce it as chunked
        yield b"abc"
        yield b"def"

    async def work() -> list[bytes]:
        async with RawServer(always_ok) as server, client() as c:
            await c.post(f"{server.url}/p", content=b'{"a":1}')
            await c.post(f"{server.url}/s", content=stream())
            return server.requests

    posted, streamed = run(work)
    assert posted.lower().count(b"content-length: 7") == 1 and posted.endswith(b'{"a":1}')
    assert b"transfer-encoding" not in streamed.lower()
    assert b"Content-Length: 6" in streamed and streamed.endswith(b"abcdef")


def test_a_slow_reply_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def slow(number: int, request: bytes) -> bytes:
        if b"/slow" in request:
            await asyncio.sleep(1)
        return ok()

    async def work() -> tuple[type[Exception], str, int]:
        async with RawServer(slow) as server, client(timeout=0.2) as c:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await c.get(f"{server.url}/slow")
            after = await c.get(f"{server.url}/fast")
            return caught.type, after.text, server.connections

    kind, text, connections = run(work)
    assert kind is httpx.ReadTimeout and text == "hello"
    assert connections == 2  # the late reply cannot be mistaken for the next one


def test_refused_connections_and_malformed_replies() -> None:
    async def garbage(number: int, request: bytes) -> bytes:
        return b"HTTP/1.1 banana\r\n\r\n"

    async def work() -> None:
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("http://127.0.0.1:9/")  # discard port: nobody listens
        async with RawServer(garbage) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
                await c.get(f"{server.url}/x")

    run(work)


def test_replies_beyond_the_size_limit_are_refused() -> None:
    async def big(number: int, request: bytes) -> bytes:
        return ok(b"y" * 5000)

    async def work() -> None:
        async with RawServer(big) as server, client(max_body_bytes=1000) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="larger than 1000"):
                await c.get(f"{server.url}/x")

    run(work)


def test_a_stale_connection_is_retried_for_reads_only() -> None:
    async def drops_second(number: int, request: bytes) -> bytes | None:
        return None if number == 2 else ok(b"n=%d" % number)

    async def work() -> tuple[str, int, int]:
        async with RawServer(drops_second) as server, client() as c:
            await c.get(f"{server.url}/a")
            retried = (await c.get(f"{server.url}/b")).text  # dropped, then on a new one
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(f"{server.url}/c", content=b"1")  # dropped: not sent again
            posts = sum(r.startswith(b"POST /c ") for r in server.requests)
            return retried, posts, server.connections

    retried, posts, connections = run(work)
    assert retried == "n=1" and posts == 1
    assert connections == 2


def test_the_pool_bounds_open_connections_and_times_out_waiters() -> None:
    async def slowish(number: int, request: bytes) -> bytes:
        await asyncio.sleep(0.05)
        return ok()

    async def work() -> tuple[list[int], int]:
        async with RawServer(slowish) as server, client(max_connections=2) as c:
            replies = await asyncio.gather(*(c.get(f"{server.url}/{n}") for n in range(10)))
            most = server.most_open
        async with RawServer(slowish) as server:
            tight = httpx.Timeout(5, pool=0.01)
            async with client(max_connections=1, timeout=tight) as c:
                with pytest.raises(httpx.PoolTimeout):
                    await asyncio.gather(c.get(f"{server.url}/1"), c.get(f"{server.url}/2"))
        return [r.status_code for r in replies], most

    statuses, most = run(work)
    assert statuses == [200] * 10 and most == 2


def test_head_replies_end_at_the_headers() -> None:
    async def head(number: int, request: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    async def work() -> tuple[int, str]:
        async with RawServer(head) as server, client() as c:
            reply = await c.head(f"{server.url}/x")
            return reply.status_code, reply.headers["content-length"]

    assert run(work) == (200, "1234")


def test_back_ends_use_it_unless_told_otherwise() -> None:
    async def transport(**options: Any) -> Any:
        adapter = RestAdapter("r", RestOptions(base_url="http://x", **options))
        await adapter.open()
        try:
            assert adapter._client is not None
            return adapter._client._transport
        finally:
            await adapter.close()

    assert isinstance(run(lambda: transport()), FastTransport)
    assert isinstance(run(lambda: transport(http_transport="httpx")), httpx.AsyncHTTPTransport)
    with pytest.raises(ValidationError, match="http_transport"):
        RestOptions(base_url="http://x", http_transport="curl")
    with pytest.raises(ValidationError, match="http_transport"):
        SoapOptions(wsdl="http://x/w", http_transport="curl")


def test_a_cancelled_request_gives_its_connection_back() -> None:
    async def slowish(number: int, request: bytes) -> bytes:
        await asyncio.sleep(0.1 if b"/slow" in request else 0)
        return ok()

    async def work() -> tuple[list[int], int]:
        async with RawServer(slowish) as server, client(max_connections=1) as c:
            slow = asyncio.ensure_future(c.get(f"{server.url}/slow"))
            waiting = asyncio.ensure_future(c.get(f"{server.url}/queued"))
            await asyncio.sleep(0.02)
            slow.cancel()  # holds the only connection
            waiting.cancel()  # waits for it
            replies = [await c.get(f"{server.url}/after/{n}") for n in range(3)]
            outcomes = await asyncio.gather(slow, waiting, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
            return [r.status_code for r in replies], server.connections

    statuses, connections = run(work)
    assert statuses == [200, 200, 200]
    assert connections == 2  # the cancelled one's connection was dropped, one new one serves


def test_https_checks_the_certificate(tmp_path: Any) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    async def work() -> tuple[str, str]:
        async with RawServer(always_ok, server_tls) as server:
            async with client(tls=backend_tls("b", str(ca_file))) as c:
                trusted = (await c.get(f"{server.url}/x")).text
            async with client(tls=backend_tls("b", True)) as c:  # public CAs only
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.get(f"{server.url}/x")
            async with client(tls=backend_tls("b", False)) as c:
                unchecked = (await c.get(f"{server.url}/x")).text
            return trusted, unchecked

    assert run(work) == ("n=1", "n=1")
    with pytest.raises(BackendError, match="cannot use CA file"):
        RestAdapter("r", RestOptions(base_url="https://x", verify=str(tmp_path / "missing.pem")))
    with pytest.raises(ValidationError, match="verify"):
        SoapOptions(wsdl="https://x/w", verify=1)
