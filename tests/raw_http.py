"""Loopback HTTP/1.1 servers for transport tests that must see the bytes on the wire.

`RawServer` records every request it reads and answers with the bytes its handler
returns; `ForwardProxy` is a minimal forward proxy (absolute-form requests and CONNECT)
that records what it was asked to forward and sends everything to 127.0.0.1, whatever
host the request named. Both bind 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawRequest:
    method: str
    target: str
    head: bytes  # request line and headers, as sent
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


#: A handler answers a request with the raw reply bytes, or None to close without one.
Handler = Callable[[RawRequest], Awaitable[bytes | None]]


def reply(
    body: bytes = b"{}", status: str = "200 OK", headers: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 reply with a Content-Length."""
    fields = {"Content-Type": "application/json", **(headers or {})}
    fields.setdefault("Content-Length", str(len(body)))
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode("latin-1") + body


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """One request from the stream (Content-Length bodies only); None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    request = RawRequest(method, target, head[:-4], b"")
    length = int(request.header("content-length") or 0)
    request.body = await reader.readexactly(length) if length else b""
    return request


class RawServer:
    """A loopback HTTP/1.1 server whose replies the test writes as bytes."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[RawRequest] = []
        self.connections = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                answer = await self.handler(request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return  # a client that went away, or failed its TLS handshake
        except asyncio.CancelledError:
            return  # the test is over (a cancelled handler would be logged as an error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class ForwardProxy:
    """A forward proxy on loopback that records each request line it forwards."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []

    async def __aenter__(self) -> ForwardProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if request is None:
            writer.close()
            return
        self.forwarded.append(f"{request.method} {request.target}")
        if request.method == "CONNECT":
            port = int(request.target.rpartition(":")[2])
        else:
            port = urlsplit(request.target).port or 80
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(request.head + b"\r\n\r\n" + request.body)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            return  # the test is over
