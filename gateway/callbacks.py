"""Which callback URLs the gateway will call: a guard against server-side request forgery.

A subscriber chooses where the gateway sends events, so a callback must be a plain http(s)
URL (no user info, query or fragment, which would swallow the `/listener/...` path the
gateway appends) whose host resolves only to globally routable addresses: never loopback,
private, link-local, shared, multicast, reserved or cloud-metadata ones, nor IPv6 forms
that carry such an IPv4 address inside. The configuration may allow networks explicitly
(tests and the demo allow loopback).

`resolve` is the whole check: it resolves the host once and returns the checked address
as a `PinnedTarget`, which delivery connects to (see `gateway.pinned_transport`), so a
name cannot pass the check with one address and be reached at another (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from gateway.errors import ApiError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest callback accepted; the gateway appends `/listener/{eventName}` to it.
MAX_CALLBACK_LENGTH = 2048

#: Cloud instance metadata services: AWS/GCP/Azure/OCI, AWS over IPv6, Azure's wire
#: server (a public address) and Alibaba's (in the shared address space).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200")
)

# Not globally routable, though `is_global` of older Pythons says so (the IANA
# special-purpose registries), or multicast, which `is_global` never excludes.
_NOT_GLOBAL: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.88.99.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
# IPv6 outside these is not routed on the Internet (2000::/3 is all global unicast today;
# well-known-prefix NAT64 reaches the IPv4 address inside, which is checked as well).
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# An ASCII host name as DNS carries it: letters, digits, hyphens, underscores, dots.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")


class CallbackRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """Where one delivery goes: the callback's host as named, and the checked address.

    `host` is what the Host header and the TLS server name carry (lower-case ASCII,
    IDNA-encoded; an IPv6 literal without brackets); `address` is the only place to connect.
    """

    scheme: str
    host: str
    port: int
    address: IPAddress


async def lookup(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, from the system resolver (one query per call)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for *_, sockaddr in infos]


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to: mapped, compatible, 6to4, NAT64, Teredo."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _not_global(address: IPAddress) -> str | None:
    """Why `address` is not a globally routable unicast address, or None if it is."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata service"
    if (
        not address.is_global
        or any(address in network for network in _NOT_GLOBAL)
        or (
            isinstance(address, ipaddress.IPv6Address)
            and address not in _GLOBAL_UNICAST
            and address not in _NAT64
        )
    ):
        return "not globally routable"
    return None


class CallbackPolicy:
    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def refusal(self, address: IPAddress) -> str | None:
        """Why the gateway must not connect to `address`, or None when it may."""
        if any(address in network for network in self.allowed):
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.refusal(address.ipv4_mapped)  # the socket connects to that IPv4
        for inner in embedded_ipv4(address):
            why = _not_global(inner)
            if why is not None:
                return f"it embeds {inner}, {why}"
        return _not_global(address)

    def address_allowed(self, address: IPAddress) -> bool:
        return self.refusal(address) is None

    async def resolve(self, url: str) -> PinnedTarget:
        """Check `url` and resolve its host once: the address to connect to for it.

        Raises `CallbackRefused` unless the URL is well formed and every address its host
        resolves to may be called; the first address is the one to use.
        """
        scheme, host, port = _parse(url)
        literal = _ip_literal(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = await lookup(host, port)
            except (OSError, UnicodeError, ValueError):
                addresses = []
            if not addresses:
                raise CallbackRefused(f"the callback host {host!r} does not resolve")
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                raise CallbackRefused(
                    f"the callback resolves to {address}, a non-public address ({why};"
                    " allow its network in events.allow_callback_networks to use it)"
                )
        first = addresses[0]
        if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
            first = first.ipv4_mapped
        return PinnedTarget(scheme, host, port, first)

    async def check(self, url: str) -> None:
        """Raise `CallbackRefused` unless `url` is one the gateway may call."""
        await self.resolve(url)

    async def require(self, url: str) -> None:
        """`check` as a 400 TMF error, for registration."""
        try:
            await self.check(url)
        except CallbackRefused as exc:
            raise ApiError(400, "Callback refused", exc.reason, code="INVALID_CALLBACK") from None


def _parse(url: str) -> tuple[str, str, int]:
    """Scheme, host (as `PinnedTarget.host`) and port of an acceptable URL.

    The URL is parsed as the HTTP client parses it, so the check and the request agree
    on the host; IDNA encoding (and refusing names that are not valid IDNA) is its too.
    """
    if len(url) > MAX_CALLBACK_LENGTH:
        raise CallbackRefused(f"the callback is longer than {MAX_CALLBACK_LENGTH} characters")
    if _UNSAFE_CHARACTERS.search(url):
        raise CallbackRefused("the callback contains spaces, control characters or backslashes")
    if "?" in url or "#" in url:
        raise CallbackRefused(
            "the callback must not have a query or fragment (the gateway appends a path to it)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CallbackRefused(f"the callback is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise CallbackRefused("the callback must be an http or https URL with a host")
    if parsed.userinfo or "@" in url.partition("//")[2].split("/", 1)[0]:
        raise CallbackRefused("the callback must not carry user info (user:password@)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise CallbackRefused(f"the callback's port {port} is out of range")
    host = parsed.raw_host.decode("ascii")
    literal = None if "%" in host else _ip_literal(host)  # no IPv6 zones: local links only
    if literal is None and (len(host) > 253 or not _HOST_NAME.fullmatch(host)):
        raise CallbackRefused(f"the callback host {parsed.host!r} is not a valid host name")
    return parsed.scheme, host, port


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
