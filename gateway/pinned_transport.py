"""HTTP to checked addresses only: each request goes to the address its `PinnedTarget` names.

The request keeps its URL's host name in the Host header and, over https, as the TLS server
name (SNI) that the certificate is verified against, while the connection goes to the
pinned address: the name is never resolved a second time between the check and the
connection, so DNS rebinding cannot move it. Redirects are never followed.

Connections are pooled per host name for https (and per address inside that), so a TLS
connection verified for one name is never reused for another name on the same address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from time import monotonic

import httpx

from gateway.callbacks import CallbackPolicy, CallbackRefused, PinnedTarget

#: The request extension that carries a request's `PinnedTarget`.
PINNED = "gateway.pinned_target"

_DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


@dataclass
class _Pool:
    transport: httpx.AsyncHTTPTransport
    in_use: int = 0
    last_used: float = field(default_factory=monotonic)


class _Released(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed (the connection is free)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends each request to its pinned address; refuses requests that carry none."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        idle_seconds: float = 60.0,
    ) -> None:
        # One TLS context for every pool: building one loads the CA bundle.
        if not isinstance(verify, ssl.SSLContext):
            verify = httpx.create_ssl_context(verify)
        self._ssl = verify
        self._limits = limits
        self._idle_seconds = idle_seconds
        self._pools: dict[str, _Pool] = {}
        self._last_sweep = monotonic()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = request.extensions.get(PINNED)
        if not isinstance(target, PinnedTarget):
            raise CallbackRefused("the request was not checked against the callback policy")
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        if (url.scheme, port) != (target.scheme, target.port) or not _same_host(
            url.raw_host.decode("ascii"), target.host
        ):
            raise CallbackRefused(f"the request to {url.host!r} is not the checked callback")
        extensions = {k: v for k, v in request.extensions.items() if k != PINNED}
        if url.scheme == "https":
            extensions["sni_hostname"] = target.host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=str(target.address)),
            headers=request.headers,  # the Host header still names the callback's host
            stream=request.stream,
            extensions=extensions,
        )
        await self._sweep()
        # Plain http has no server identity to keep apart: its pool is keyed by address.
        key = target.host if url.scheme == "https" else ""
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(
                httpx.AsyncHTTPTransport(verify=self._ssl, limits=self._limits, trust_env=False)
            )
        pool.in_use += 1
        pool.last_used = monotonic()

        def release() -> None:
            pool.in_use -= 1
            pool.last_used = monotonic()

        try:
            response = await pool.transport.handle_async_request(pinned)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, release),
            extensions=response.extensions,
        )

    async def _sweep(self) -> None:
        """Close the pools of hosts not called for `idle_seconds`, so they do not pile up."""
        now = monotonic()
        if now - self._last_sweep < self._idle_seconds / 4:
            return
        self._last_sweep = now
        idle = [
            key
            for key, pool in self._pools.items()
            if pool.in_use == 0 and now - pool.last_used > self._idle_seconds
        ]
        for key in idle:
            await self._pools.pop(key).transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.transport.aclose()


class CallbackClient:
    """POSTs to callback URLs: each call checked by the policy, sent to the checked address."""

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        timeout: float,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            transport=PinnedTransport(verify=verify, limits=limits),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,  # a redirect would lead past the check
            trust_env=False,  # an environment proxy would resolve the name itself
        )

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """Resolve and check `url` once, then POST to the address checked.

        Raises `CallbackRefused` when the policy refuses the URL, else what httpx raises;
        a resolution slower than the timeout is an `httpx.ConnectTimeout`.
        """
        try:
            async with asyncio.timeout(self._timeout):
                target = await self.policy.resolve(url)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"{url}: the host did not resolve in time") from None
        return await self._http.post(
            url, content=content, headers=dict(headers), extensions={PINNED: target}
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _same_host(wire: str, checked: str) -> bool:
    try:
        return ipaddress.ip_address(wire) == ipaddress.ip_address(checked)
    except ValueError:
        return wire.lower() == checked.lower()
