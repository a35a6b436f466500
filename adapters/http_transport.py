"""A lean httpx transport for many small calls to a few back ends.

httpx's stock transport (httpcore over anyio) spends about a millisecond of CPU per call
once fifty are in flight, most of it scanning its pool and wrapping sockets; in the
gateway that was more than the rest of a request put together. This transport keeps,
per origin, a stack of idle keep-alive connections (asyncio protocols), writes each
request in one send and parses the reply with httptools, the C parser uvicorn uses.
The httpx API above it is unchanged (clients, auth, timeouts, respx in tests).

Scope, on purpose: HTTP/1.1 only, no proxies, whole bodies (replies are read into
memory, up to `max_body_bytes`). A back end that needs more uses
`http_transport: httpx` in its config.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any, Literal

import httptools
import httpx
from pydantic import Field, StrictBool

from adapters.base import BackendError, BackendOptions

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_Origin = tuple[bytes, str, int]


class _Reply:
    """One response as it is parsed: status, raw headers, body chunks."""

    __slots__ = ("status", "headers", "body", "size", "keep_alive", "framed")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = False
        self.framed = False  # a Content-Length or chunked body: its end is known


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, origin: _Origin, max_body_bytes: int) -> None:
        self.origin = origin
        self.max_body_bytes = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: _Reply | None = None
        self.waiter: asyncio.Future[_Reply] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.head = False
        self.received = False  # any byte of the current reply
        self.counted = True  # still counted in the pool's open connections

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reply = self.reply
        if reply is not None and reply.status and not reply.framed and not self.head:
            self._finish()  # a body delimited by the end of the connection
        else:
            self._fail(httpx.RemoteProtocolError("server disconnected without a full reply"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reply = _Reply()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.reply is not None
        self.reply.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.reply.framed = True

    def on_headers_complete(self) -> None:
        assert self.reply is not None
        self.reply.status = self.parser.get_status_code()
        self.reply.keep_alive = self.parser.should_keep_alive()
        if self.reply.status in (204, 304) or 100 <= self.reply.status < 200:
            self.reply.framed = True
        if self.head:
            self.reply.keep_alive = False  # the parser would wait for a body that never comes
            self._finish()

    def on_body(self, body: bytes) -> None:
        reply = self.reply
        assert reply is not None
        reply.size += len(body)
        if reply.size > self.max_body_bytes:
            self._fail(httpx.RemoteProtocolError(f"reply larger than {self.max_body_bytes} bytes"))
            return
        reply.body.append(body)

    def on_message_complete(self) -> None:
        if self.reply is not None and 100 <= self.reply.status < 200:
            self.reply = None  # an interim reply: the real one follows
            return
        self._finish()

    # ours
    def _finish(self) -> None:
        waiter, reply = self.waiter, self.reply
        if waiter is not None and not waiter.done() and reply is not None:
            waiter.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, data: bytes, head: bool, timeout: float | None) -> _Reply:
        """Send one request and wait for its whole reply (ReadTimeout after `timeout`)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.reply, self.head, self.received = None, head, False
        self.transport.write(data)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self.waiter = None


def _expire(waiter: asyncio.Future[_Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no reply within the read timeout"))


class FastTransport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 keep-alive connections, parsed in C (see the module docstring)."""

    def __init__(
        self,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
        tls: ssl.SSLContext | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.max_body_bytes = max_body_bytes
        self._tls = tls
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._active = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 without brackets
        origin = (url.raw_scheme, host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        data = _serialise(request, body)
        head = request.method == "HEAD"
        for attempt in (1, 2):
            connection, reused = await self._acquire(origin, timeouts)
            try:
                reply = await connection.exchange(data, head, timeouts.get("read"))
            except httpx.RemoteProtocolError:
                self._discard(connection)
                # A reused connection the server closed as we wrote: nothing was read,
                # so an idempotent request can safely go again on a new one.
                retry = attempt == 1 and reused and not connection.received
                if retry and request.method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
            self._release(connection, reply.keep_alive)
            return httpx.Response(
                reply.status,
                headers=reply.headers,
                stream=httpx.ByteStream(b"".join(reply.body)),
                extensions={"http_version": b"HTTP/1.1"},
            )
        raise AssertionError("unreachable")

    async def _acquire(self, origin: _Origin, timeouts: dict[str, Any]) -> tuple[_Connection, bool]:
        """An idle connection to `origin`, or a new one once the pool has room."""
        deadline = None
        while True:
            if self._closed:
                raise httpx.ConnectError("transport is closed")
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.closed or now - connection.idle_since > self.keepalive_expiry:
                    self._discard(connection)
                    continue
                return connection, True
            if self._active < self.max_connections:
                break
            spare = next((pool for pool in self._idle.values() if pool), None)
            if spare:  # an idle connection to another origin makes room
                self._discard(spare.pop())
                continue
            if deadline is None and timeouts.get("pool") is not None:
                deadline = now + timeouts["pool"]
            await self._wait_for_slot(None if deadline is None else deadline - now)
        self._active += 1
        try:
            return await self._connect(origin, timeouts.get("connect")), False
        except BaseException:
            self._active -= 1
            self._wake()
            raise

    async def _wait_for_slot(self, timeout: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        woken = False
        try:
            async with asyncio.timeout(None if timeout is None else max(timeout, 0)):
                await waiter
            woken = True
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection within the pool timeout") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not woken and waiter.done() and not waiter.cancelled():
                self._wake()  # woken, then cancelled or timed out: the slot goes on

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: _Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == b"https":
            context = self._tls = self._tls or tls_context(True)
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin, self.max_body_bytes),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection, keep_alive: bool) -> None:
        if not keep_alive or connection.closed or self._closed:
            self._discard(connection)
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        if connection.counted:
            connection.counted = False
            self._active -= 1
            self._wake()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _serialise(request: httpx.Request, body: bytes) -> bytes:
    """The request head and body as one buffer (one write, one syscall)."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if name.lower() != b"transfer-encoding":  # the body goes whole, with a length
            lines += (name, b": ", value, b"\r\n")
    if body and "content-length" not in request.headers:
        lines += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """Certificates checked against httpx's CA bundle, a CA file's, or (False) not at all."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if verify:
        return httpx.create_ssl_context()  # the bundle httpx itself would use (certifi)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def backend_tls(backend: str, verify: Any) -> ssl.SSLContext:
    """A back end's `verify` option (true, false or a CA file) as a TLS context, at start-up."""
    if not isinstance(verify, (bool, str)):
        raise BackendError(f"back end {backend!r}: verify must be true, false or a CA file")
    try:
        return tls_context(verify)
    except (OSError, ssl.SSLError) as exc:
        raise BackendError(f"back end {backend!r}: cannot use CA file {verify!r}: {exc}") from exc


class HttpOptions(BackendOptions):
    """How a REST or SOAP back end is reached over HTTP.

    `http_transport` is "fast" (ours) or "httpx" (httpx's own, for proxies or HTTP/2);
    `verify` is true (httpx's CA bundle), false, or the path of a CA file.
    """

    max_connections: int = Field(100, gt=0)
    http_transport: Literal["fast", "httpx"] = "fast"
    verify: StrictBool | str = True


class BackendHttp:
    """How a REST or SOAP back end is reached: options checked once, at start-up."""

    def __init__(self, backend: str, options: HttpOptions) -> None:
        self.transport = options.http_transport
        self.max_connections = options.max_connections
        self.tls = backend_tls(backend, options.verify)

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        """A pooled client with a transport of its own (a client closes its transport)."""
        transport = None
        if self.transport == "fast":
            transport = FastTransport(max_connections=self.max_connections, tls=self.tls)
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.max_connections),
            verify=self.tls,
            transport=transport,
            **options,
        )
