"""Which callback URLs the gateway will call: a guard against server-side request forgery.

A subscriber chooses where the gateway sends events, so a callback must be http(s) and
must not resolve to loopback, private, link-local, multicast, reserved or cloud-metadata
addresses, unless the configuration allows those networks explicitly (tests and the demo
allow loopback). The check runs at registration and again before each delivery, since a
name may resolve elsewhere later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from gateway.errors import ApiError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class CallbackRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CallbackPolicy:
    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def address_allowed(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed):
            return True
        return not (
            address in _METADATA
            or address.is_loopback
            or address.is_private
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )

    async def check(self, url: str) -> None:
        """Raise `CallbackRefused` unless `url` is one the gateway may call."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallbackRefused("the callback must be an http or https URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise CallbackRefused("the callback's port is not a number") from None
        try:
            infos = await asyncio.to_thread(
                socket.getaddrinfo, parts.hostname, port, type=socket.SOCK_STREAM
            )
        except OSError:
            raise CallbackRefused(
                f"the callback host {parts.hostname!r} does not resolve"
            ) from None
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            if not self.address_allowed(address):
                raise CallbackRefused(
                    f"the callback resolves to {address}, a non-public address"
                    " (allow its network in events.allow_callback_networks to use it)"
                )

    async def require(self, url: str) -> None:
        """`check` as a 400 TMF error, for registration."""
        try:
            await self.check(url)
        except CallbackRefused as exc:
            raise ApiError(400, "Callback refused", exc.reason, code="INVALID_CALLBACK") from None
