"""How the REST and SOAP adapters reach their back ends over HTTP: options, TLS, clients.

Both adapters speak through an `httpx.AsyncClient` (zeep's AsyncTransport and respx are
built on that API). Underneath it is aiohttp by default (the `httpx-aiohttp` package:
aiohttp's C-accelerated HTTP/1.1 client costs a fraction of httpx's stock transport per
call), or httpx's own transport (`http_transport: httpx`, e.g. for HTTP/2 one day).

Everything a back end's config says is checked here once, at start-up: CA and client
certificate files are loaded when the adapter is built, so a bad file stops the gateway
with the back end's name instead of failing its first request. Proxies come from the
environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) through httpx's own mounts,
for either transport, unless `trust_env: false`.

Two guards sit in httpx's event hooks, so they hold for both transports and in tests:
a header holding CR, LF or NUL is never sent, and a reply body is read up to
`MAX_REPLY_BYTES` only.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient
from pydantic import Field, SecretStr, StrictBool, model_validator

from adapters.base import BackendError, BackendOptions

#: The largest reply body read from a back end (whole replies are held in memory).
MAX_REPLY_BYTES = 64 * 1024 * 1024

_LINE_BREAK = re.compile(rb"[\r\n\0]")


class HttpOptions(BackendOptions):
    """How a REST or SOAP back end is reached over HTTP.

    `verify` is true (the CA bundle httpx uses), false, or the path of a CA file (PEM);
    `cert` a client certificate (PEM, with its key unless `key` names another file) for
    back ends that require mutual TLS, `key_password` the key's passphrase if it has one.
    `trust_env: false` ignores the environment's proxy (and SSL_CERT_FILE) settings.
    `timeout_seconds` (every back end's) bounds each call; `connect_timeout_seconds`
    bounds opening a connection.
    """

    max_connections: int = Field(100, gt=0)
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    verify: StrictBool | str = True
    cert: str | None = None
    key: str | None = None
    key_password: SecretStr | None = None
    trust_env: StrictBool = True
    connect_timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> HttpOptions:
        if self.cert is None and (self.key is not None or self.key_password is not None):
            raise ValueError("key and key_password go with cert (the client certificate)")
        return self


def tls_context(backend: str, options: HttpOptions) -> ssl.SSLContext:
    """The back end's TLS settings as one context; BackendError naming it when a file is bad."""
    verify = options.verify
    try:
        if isinstance(verify, str):
            context = ssl.create_default_context(cafile=verify)
        else:  # httpx's own bundle (certifi, or SSL_CERT_FILE when trusting the environment)
            context = httpx.create_ssl_context(verify=verify, trust_env=options.trust_env)
    except (OSError, ssl.SSLError) as exc:
        raise BackendError(f"back end {backend!r}: cannot use CA file {verify!r}: {exc}") from exc
    if options.cert is not None:
        secret = options.key_password
        try:
            context.load_cert_chain(
                options.cert,
                options.key,
                # Never OpenSSL's interactive prompt: an encrypted key without a password fails.
                secret.get_secret_value() if secret is not None else _no_password,
            )
        except (OSError, ssl.SSLError) as exc:
            files = options.cert if options.key is None else f"{options.cert} / {options.key}"
            raise BackendError(
                f"back end {backend!r}: cannot use client certificate {files}: {exc}"
                + ("" if secret is not None else " (an encrypted key needs key_password)")
            ) from exc
    return context


def _no_password() -> bytes:
    return b""


class ReplyTooLarge(httpx.RemoteProtocolError):
    """A reply body beyond the bound: the back end's answer is refused, not truncated."""


class _BoundedStream(httpx.AsyncByteStream):
    """A reply body that fails once more than `limit` bytes have arrived."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int, request: httpx.Request) -> None:
        self.inner, self.limit, self.request = inner, limit, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.inner:
            size += len(chunk)
            if size > self.limit:
                raise ReplyTooLarge(f"reply larger than {self.limit} bytes", request=self.request)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def refuse_line_breaks(request: httpx.Request) -> None:
    """A header holding CR, LF or NUL would split the request: it is never written."""
    for name, value in request.headers.raw:
        if _LINE_BREAK.search(value) or _LINE_BREAK.search(name):
            raise httpx.LocalProtocolError(
                f"header {name.decode('ascii', 'replace')!r} holds a line break: not sent",
                request=request,
            )


def reply_bound(limit: int) -> Any:
    """A response hook that refuses a body over `limit` bytes: as announced, or (chunked or
    ended by closing) as it arrives."""

    async def bound(response: httpx.Response) -> None:
        # Raw headers: httpx's decoded look-up costs more than the rest of this check.
        length = next((v for k, v in response.headers.raw if k.lower() == b"content-length"), b"")
        if length.isdigit():  # the transport reads no more than this
            if int(length) > limit:
                raise ReplyTooLarge(f"reply announces {int(length)} bytes, over {limit}")
        elif isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _BoundedStream(response.stream, limit, response.request)

    return bound


def failure(backend: str, what: str, exc: httpx.HTTPError | aiohttp.ClientError) -> BackendError:
    """A transport failure as the gateway's answer: 504 when the back end did not answer in
    time, 503 for anything else that kept a usable answer from arriving."""
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) else exc
    # httpx-aiohttp reports some connection failures (refused, reset) as ConnectTimeout:
    # only a timeout underneath is one.
    aio = isinstance(cause, aiohttp.ClientError)
    timed_out = not aio or isinstance(cause, TimeoutError)
    if isinstance(exc, httpx.TimeoutException) and timed_out:
        return BackendError(
            f"back end {backend!r}: {what} timed out, no answer ({exc!r})", status=504
        )
    # aiohttp's own error says what happened; httpx's does otherwise.
    detail = f"{type(cause).__name__}: {cause}" if aio else repr(exc)
    return BackendError(f"back end {backend!r}: {what}: {detail}", status=503)


class BackendHttp:
    """One back end's HTTP settings, checked once at start-up, and the clients built on them."""

    def __init__(
        self, backend: str, options: HttpOptions, *, max_reply_bytes: int = MAX_REPLY_BYTES
    ) -> None:
        self.backend = backend
        self.transport = options.http_transport
        self.max_connections = options.max_connections
        self.trust_env = options.trust_env
        self.timeout_seconds = options.timeout_seconds
        self.timeout = httpx.Timeout(
            options.timeout_seconds, connect=options.connect_timeout_seconds
        )
        self.tls = tls_context(backend, options)
        self.max_reply_bytes = max_reply_bytes

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        """A pooled client with a transport of its own (closing the client closes it)."""
        kind = HttpxAiohttpClient if self.transport == "aiohttp" else httpx.AsyncClient
        return kind(
            verify=self.tls,
            trust_env=self.trust_env,
            # Idle connections go before a server's usual 5 s keep-alive closes them under a
            # request (a POST, never sent again, would fail).
            limits=httpx.Limits(max_connections=self.max_connections, keepalive_expiry=4.0),
            timeout=self.timeout,
            event_hooks={
                "request": [refuse_line_breaks],
                "response": [reply_bound(self.max_reply_bytes)],
            },
            **options,
        )

    def sync_client(self) -> httpx.Client:
        """A blocking client with the same TLS, proxies and timeouts (zeep loads WSDL so)."""
        return httpx.Client(verify=self.tls, trust_env=self.trust_env, timeout=self.timeout)

    @asynccontextmanager
    async def call(self, what: str) -> AsyncIterator[None]:
        """One call's deadline (`timeout_seconds`, the whole call) and its failures as
        BackendError."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                yield
        except TimeoutError as exc:
            raise BackendError(
                f"back end {self.backend!r}: {what} timed out, no answer within "
                f"{self.timeout_seconds:g} s",
                status=504,
            ) from exc
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            # aiohttp's own errors for a malformed reply are not mapped by httpx-aiohttp.
            raise failure(self.backend, what, exc) from exc
