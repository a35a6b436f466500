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
`MAX_REPLY_BYTES` only. The same hook adds the current request's trace headers
(`adapters.base.OUTGOING_HEADERS`) to every call.

The calls the adapters make (a GET, zeep's POST: no per-call auth, cookies or files)
go from httpx's API straight onto aiohttp's session (`DirectAiohttpClient`): httpx's
own request/response machinery costs about twice what aiohttp does per call, and a
single-record read is mostly that call. The short way keeps the same guards, timeouts
and connection pool, and steps aside whenever httpx would do something more: a proxy or
a mock (respx) chosen for the URL, client auth other than basic, cookies, hooks, a URL
that httpx would have to re-encode.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import httpx
from httpx._client import ACCEPT_ENCODING, USE_CLIENT_DEFAULT
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient
from httpx_aiohttp.transport import map_aiohttp_exceptions
from pydantic import Field, SecretStr, StrictBool, model_validator

from adapters.base import OUTGOING_HEADERS, BackendError, BackendOptions

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


async def outgoing_headers(request: httpx.Request) -> None:
    """The current request's trace headers on every call; a header holding CR, LF or NUL
    would split the request, so it is never written."""
    extra = OUTGOING_HEADERS.get()
    if extra:
        request.headers.update(extra)
    for name, value in request.headers.raw:
        if _LINE_BREAK.search(value) or _LINE_BREAK.search(name):
            raise _split_header(name.decode("ascii", "replace"), request)


def _split_header(name: str, request: httpx.Request | None = None) -> httpx.LocalProtocolError:
    return httpx.LocalProtocolError(
        f"header {name!r} holds a line break: not sent", request=request
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


#: A URL the short way sends as written: already percent-encoded, nothing httpx would
#: re-encode, no user name or password in it.
_PLAIN_URL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:/?]+|%[0-9A-Fa-f]{2})*")
_LINE_BREAK_TEXT = re.compile(r"[\r\n\0]")
#: Content codings aiohttp decodes itself (its reply then has the decoded body).
_DECODED_BY_AIOHTTP = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
#: The arguments httpx's get/post/request pass on when a call does not give them: a call
#: with any other value for these (per-call auth, cookies, timeout...) goes httpx's way.
_LEFT_TO_THE_CLIENT: dict[str, object] = {
    "cookies": None,
    "auth": USE_CLIENT_DEFAULT,
    "follow_redirects": USE_CLIENT_DEFAULT,
    "timeout": USE_CLIENT_DEFAULT,
    "extensions": None,
    "data": None,
    "files": None,
    "json": None,
}
_MAX_ORIGINS = 64


class _Reply(httpx.Response):
    """A reply read whole by the short way; its `httpx.Request` is built only if asked
    for (error messages), not on every call."""

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        method: str,
        url: str,
        encoding: Any,
    ) -> None:
        super().__init__(
            status, headers=headers, stream=httpx.ByteStream(body), default_encoding=encoding
        )
        self._content = body  # read, as httpx leaves a Response(content=...)
        self.is_stream_consumed = self.is_closed = True
        self._sent = (method, url)

    @property
    def request(self) -> httpx.Request:
        if self._request is None:
            self._request = httpx.Request(*self._sent)
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


class DirectAiohttpClient(HttpxAiohttpClient):
    """httpx's client over httpx-aiohttp, whose plain calls go straight to aiohttp's session.

    A call takes the short way when httpx would only have built a Request, sent it
    through this client's own aiohttp transport and wrapped the reply: a `str` URL it
    needs not re-encode, headers as a dict, bytes or no content, flat query parameters,
    nothing per call that httpx handles (auth, cookies, timeout, extensions, files), and
    a client without cookies, redirects, default query parameters or hooks of others
    (client auth may be basic). It keeps what httpx's way does: the client's headers,
    `OUTGOING_HEADERS`, the line-break and reply-size guards (the size counted after
    decoding), the timeouts, the connection pool. Anything else, and any URL for which
    httpx picks another transport (a proxy from the environment, respx in tests), goes
    through httpx unchanged.
    """

    def __init__(self, *, max_reply_bytes: int, **options: Any) -> None:
        bound = reply_bound(max_reply_bytes)
        super().__init__(
            event_hooks={"request": [outgoing_headers], "response": [bound]}, **options
        )
        self._own_hooks = {"request": [outgoing_headers], "response": [bound]}
        self._max_reply_bytes = max_reply_bytes
        self._direct_possible = isinstance(self._transport, AiohttpTransport)
        self._origins: dict[str, httpx.URL] = {}
        self._base_source: httpx.URL | None = None
        self._base = ""
        self._headers_source: tuple[list[tuple[bytes, bytes]], httpx.Auth | None] | None = None
        self._sent_headers: dict[str, tuple[str, str]] | None = None
        self._timeout_source: httpx.Timeout | None = None
        self._aiohttp_timeout = aiohttp.ClientTimeout()

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        target = self._direct_url(url, kwargs)
        if target is None:
            return await super().request(method, url, **kwargs)
        return await self._direct(method, target, kwargs.get("headers"), kwargs.get("content"))

    def _direct_url(self, url: httpx.URL | str, kwargs: dict[str, Any]) -> str | None:
        """The whole URL when the call can take the short way, else None."""
        if not (self._direct_possible and isinstance(url, str) and _PLAIN_URL.fullmatch(url)):
            return None
        query = ""
        for name, value in kwargs.items():
            if name in _LEFT_TO_THE_CLIENT:
                if value is not _LEFT_TO_THE_CLIENT[name]:
                    return None
            elif value is None:
                continue
            elif name == "params" and type(value) is dict:
                if any(type(v) not in (str, int) for v in value.values()):
                    return None
                query = urlencode([(k, v if type(v) is str else str(v)) for k, v in value.items()])
            elif name == "headers" and type(value) is dict:
                if any(type(v) is not str for v in value.values()):
                    return None
            elif name != "content" or type(value) is not bytes:
                return None
        if (
            self.is_closed
            or self.follow_redirects
            or self._params
            or self._cookies
            or self._event_hooks != self._own_hooks
            or not (self._auth is None or isinstance(self._auth, httpx.BasicAuth))
        ):
            return None
        if url.startswith(("http://", "https://")):
            whole = url
        elif url.startswith("/") and not url.startswith("//"):
            if self._base_url is not self._base_source:
                base = str(self._base_url)  # httpx's is absolute, or empty
                base += "" if base.endswith("/") else "/"  # its path ends in "/" (or is empty)
                plain = base.startswith(("http://", "https://")) and _PLAIN_URL.fullmatch(base)
                self._base = base if plain and "?" not in base else ""
                self._base_source = self._base_url
            if not self._base:
                return None
            whole = self._base + url[1:]
        else:
            return None
        if query:
            if "?" in whole:
                return None
            whole = f"{whole}?{query}"
        return whole if self._own_transport_for(whole) else None

    def _own_transport_for(self, url: str) -> bool:
        """Whether httpx would send to `url` through this client's own aiohttp transport:
        not a proxy's, not a mock's."""
        end = url.find("/", url.index("//") + 2)
        origin = url if end < 0 else url[:end]
        probe = self._origins.get(origin)
        if probe is None:
            probe = httpx.URL(origin)
            if len(self._origins) < _MAX_ORIGINS:
                self._origins[origin] = probe
        return self._transport_for_url(probe) is self._transport

    def _headers_for(self, extra: dict[str, str] | None) -> Any:
        """The client's headers, its basic auth, the call's and the trace headers, each
        checked for line breaks (the client's once, when they change)."""
        source = (self._headers.raw, self._auth)
        if source != self._headers_source or self._sent_headers is None:
            self._sent_headers = self._client_headers()
            self._headers_source = source
        outgoing = OUTGOING_HEADERS.get()
        if not extra and not outgoing:
            return self._sent_headers.values()
        merged = self._sent_headers.copy()
        for more in (extra, outgoing):
            for name, value in (more or {}).items():
                if _LINE_BREAK_TEXT.search(name) or _LINE_BREAK_TEXT.search(value):
                    raise _split_header(name)
                merged[name.lower()] = (name, value)
        return merged.values()

    def _client_headers(self) -> dict[str, tuple[str, str]]:
        sent: dict[str, tuple[str, str]] = {}
        for name, value in self._headers.multi_items():
            if _LINE_BREAK_TEXT.search(name) or _LINE_BREAK_TEXT.search(value):
                raise _split_header(name)
            if name == "accept-encoding" and value == ACCEPT_ENCODING:
                continue  # httpx's own list: aiohttp sends the codings it can decode
            key = name.lower()
            sent[key] = (name, f"{sent[key][1]}, {value}" if key in sent else value)
        if isinstance(self._auth, httpx.BasicAuth):
            signed = next(self._auth.sync_auth_flow(httpx.Request("GET", "http://auth.invalid")))
            sent["authorization"] = ("Authorization", signed.headers["Authorization"])
        return sent

    async def _direct(
        self, method: str, url: str, headers: dict[str, str] | None, content: bytes | None
    ) -> httpx.Response:
        transport = self._transport
        assert isinstance(transport, AiohttpTransport)
        session = transport.client
        if not isinstance(session, aiohttp.ClientSession):
            session = transport.client = transport.get_client()
        sent = self._headers_for(headers)
        if self._timeout is not self._timeout_source:
            limits = self._timeout
            self._aiohttp_timeout = aiohttp.ClientTimeout(
                sock_connect=limits.connect, sock_read=limits.read, connect=limits.pool
            )
            self._timeout_source = limits
        with map_aiohttp_exceptions():
            reply = await session.request(
                method,
                url,
                headers=sent,
                data=content or None,
                allow_redirects=False,
                timeout=self._aiohttp_timeout,
                # httpx sends bytes without a Content-Type of its own: so here.
                skip_auto_headers=("Content-Type",) if content else None,
            )
            try:
                body, decoded = await self._read(reply)
            finally:
                reply.release()
        raw = list(reply.raw_headers)
        if decoded:  # the body is decoded: its coding and length no longer apply
            raw = [
                (k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length")
            ]
        response = _Reply(reply.status, raw, body, method, url, self._default_encoding)
        if "Set-Cookie" in reply.headers:
            self._cookies.extract_cookies(response)
        return response

    async def _read(self, reply: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The whole body, refused past the bound: as announced, or as it arrives (after
        decoding); and whether aiohttp decoded it."""
        limit = self._max_reply_bytes
        coding = reply.headers.get("Content-Encoding", "").strip().lower()
        decoded = coding in _DECODED_BY_AIOHTTP
        length = reply.content_length
        if length is not None and not decoded:
            if length > limit:
                raise ReplyTooLarge(f"reply announces {length} bytes, over {limit}")
            return await reply.read(), False
        parts, size = [], 0
        async for chunk in reply.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise ReplyTooLarge(f"reply larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts), decoded


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
        common: dict[str, Any] = {
            "verify": self.tls,
            "trust_env": self.trust_env,
            # Idle connections go before a server's usual 5 s keep-alive closes them under a
            # request (a POST, never sent again, would fail).
            "limits": httpx.Limits(max_connections=self.max_connections, keepalive_expiry=4.0),
            "timeout": self.timeout,
            **options,
        }
        if self.transport == "aiohttp":
            return DirectAiohttpClient(max_reply_bytes=self.max_reply_bytes, **common)
        return httpx.AsyncClient(
            event_hooks={
                "request": [outgoing_headers],
                "response": [reply_bound(self.max_reply_bytes)],
            },
            **common,
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
