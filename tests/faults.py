"""A fault-injecting HTTP proxy on loopback, in front of a real back end (the simulators).

The gateway talks to the proxy as to its back end; the proxy forwards each request to
the real server, or does what the test asked instead, per request, at a rate:

    refuse      nothing listens: connections are refused
    blackhole   connections are accepted and requests read, never answered
    delay       the real reply, `delay` seconds late
    status      an error reply of `status` (503 by default, `Retry-After` if given)
    reset       the connection reset (RST) before any reply
    reset_mid   half of the real reply, then a reset
    truncate    half of the real reply, then a clean close
    html        an HTML page of `status` (200 by default) instead of the reply
    soap_fault  a SOAP 1.1 Fault (HTTP 500, code Server, a long faultstring: SOAP_FAULT_TEXT)
    hang        the real reply's head, then nothing

It counts the requests it received by path, so a test can tell how many back-end calls
the gateway made. HTTP/1.1 is parsed and written by h11 (no hand-made framing); the
proxy runs its own event loop in a thread, on 127.0.0.1 only.

    with ThreadedServer(simulator) as server, FaultProxy(server.port) as proxy:
        proxy.inject("reset", rate=0.3, paths=("/api/",))
        ...
        proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import h11

FAULTS = (
    "none",
    "refuse",
    "blackhole",
    "delay",
    "status",
    "reset",
    "reset_mid",
    "truncate",
    "html",
    "soap_fault",
    "hang",
)
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Service Temporarily Unavailable</h1></body></html>"
#: The faultstring of a `soap_fault`: longer than a caller is shown.
SOAP_FAULT_TEXT = (
    "ORA-00060: deadlock detected while waiting for resource; rating engine node 7 of"
    " cluster BILL-PROD-B rolled back transaction 4711 (see trace file bill_ora_13371.trc"
    " for the complete statement and bind values)"
)
SOAP_FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope'
    ' xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    "<soapenv:Fault><faultcode>soapenv:Server</faultcode>"
    f"<faultstring>{SOAP_FAULT_TEXT}</faultstring><detail><code>Internal</code></detail>"
    "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
).encode()


@dataclass(frozen=True, slots=True)
class Plan:
    fault: str = "none"
    #: Share of the matching requests that get the fault (the rest pass).
    rate: float = 1.0
    status: int | None = None
    delay: float = 0.0
    retry_after: int | None = None
    #: Path prefixes the fault applies to (others always pass).
    paths: tuple[str, ...] = ("/",)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", seed: int = 678):
        self.upstream = (upstream_host, upstream_port)
        self.plan = Plan()
        self.requests: Counter[str] = Counter()  # by path, every request received
        self.faulted = 0
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    # The test's side (any thread).

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def inject(
        self,
        fault: str,
        *,
        rate: float = 1.0,
        status: int | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
        paths: Sequence[str] = ("/",),
        seed: int | None = None,
    ) -> None:
        """From now on, `fault` for `rate` of the requests under `paths`."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        if seed is not None:
            self._rng.seed(seed)
        self.plan = Plan(fault, rate, status, delay, retry_after, tuple(paths))
        if fault == "refuse":
            self._run(self._refuse())
        elif self._server is None:
            self._run(self._listen())

    def heal(self) -> None:
        self.inject("none")

    def calls(self, prefix: str = "/api/") -> int:
        """Requests received under a path prefix (back-end calls the gateway made)."""
        return sum(n for path, n in list(self.requests.items()) if path.startswith(prefix))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    # The proxy's side (its own loop).

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accepted, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _refuse(self) -> None:
        """Stop listening and drop every open connection: new ones are refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._clients):
            writer.transport.abort()  # each handler then sees its connection end, and returns

    async def _shutdown(self) -> None:
        await self._refuse()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._clients.add(writer)
        upstream: _Upstream | None = None
        try:
            client = h11.Connection(h11.SERVER)
            while True:
                request = await _read_message(client, reader)
                if request is None:
                    return
                head, body = request
                assert isinstance(head, h11.Request)
                path = head.target.decode("latin-1").split("?", 1)[0]
                self.requests[path] += 1
                plan = self._plan_for(path)
                if plan.fault == "blackhole":
                    await _drain_until_closed(reader)
                    return
                if plan.fault == "reset":
                    _reset(writer)
                    return
                if plan.fault in ("status", "html", "soap_fault"):
                    writer.write(_synthetic(client, plan))
                    await writer.drain()
                    client.start_next_cycle()
                    continue
                if upstream is None or upstream.closed:
                    upstream = await _Upstream.open(*self.upstream)
                reply = await upstream.forward(head, body)
                wire = _serialize(client, reply)
                if plan.fault == "delay":
                    await asyncio.sleep(plan.delay)
                elif plan.fault in ("truncate", "reset_mid"):
                    writer.write(wire[: len(wire) // 2])
                    await writer.drain()
                    if plan.fault == "reset_mid":
                        _reset(writer)
                    return
                elif plan.fault == "hang":
                    head_end = wire.index(b"\r\n\r\n") + 4
                    writer.write(wire[:head_end])
                    await writer.drain()
                    await _drain_until_closed(reader)
                    return
                writer.write(wire)
                await writer.drain()
                if client.our_state is h11.MUST_CLOSE:
                    return
                client.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._handlers.discard(task)
            self._clients.discard(writer)
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(Exception):
                writer.close()

    def _plan_for(self, path: str) -> Plan:
        plan = self.plan
        if plan.fault == "none" or not path.startswith(plan.paths):
            return Plan()
        if plan.rate < 1.0 and self._rng.random() >= plan.rate:
            return Plan()
        self.faulted += 1
        return plan


@dataclass(slots=True)
class _Reply:
    head: h11.Response
    body: bytes


class _Upstream:
    """One keep-alive connection from the proxy to the real server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> _Upstream:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def forward(self, head: h11.Request, body: bytes) -> _Reply:
        conn = self.conn
        data = conn.send(h11.Request(method=head.method, target=head.target, headers=head.headers))
        if body:
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        self.writer.write(data)
        await self.writer.drain()
        message = await _read_message(conn, self.reader)
        if message is None:
            raise ConnectionResetError("the back end closed the connection")
        reply, content = message
        assert isinstance(reply, h11.Response)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.close()
        else:
            conn.start_next_cycle()
        return _Reply(reply, content)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()


async def _read_message(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | h11.Response, bytes] | None:
    """The next whole request or response on a connection; None when it closed first."""
    head: h11.Request | h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request | h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body)


def _serialize(client: h11.Connection, reply: _Reply) -> bytes:
    """The back end's reply as the proxy sends it on (h11 frames it)."""
    headers = [(k, v) for k, v in reply.head.headers if k.lower() != b"transfer-encoding"]
    if not any(k.lower() == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(reply.body)).encode()))
    wire = client.send(h11.Response(status_code=reply.head.status_code, headers=headers)) or b""
    if reply.body:
        wire += client.send(h11.Data(data=reply.body)) or b""
    return wire + (client.send(h11.EndOfMessage()) or b"")


def _synthetic(client: h11.Connection, plan: Plan) -> bytes:
    if plan.fault == "html":
        status, body, kind = plan.status or 200, HTML_PAGE, b"text/html; charset=utf-8"
    elif plan.fault == "soap_fault":
        status, body, kind = plan.status or 500, SOAP_FAULT, b"text/xml; charset=utf-8"
    else:
        status = plan.status or 503
        body = b'{"error": {"code": "UNAVAILABLE", "message": "try later"}}'
        kind = b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    if plan.retry_after is not None:
        headers.append((b"retry-after", str(plan.retry_after).encode()))
    wire = client.send(h11.Response(status_code=status, headers=headers)) or b""
    wire += client.send(h11.Data(data=body)) or b""
    return wire + (client.send(h11.EndOfMessage()) or b"")


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    """Swallow whatever arrives until the other side gives up (or the proxy stops)."""
    while await reader.read(65536):
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
