"""Session authentication: log in once, carry the session on every call, log in again.

Many billing APIs (SOAP and REST alike) are not OAuth2: a `login` call with a user and
password returns a session id that later calls carry in a SOAP header, an HTTP header or
a cookie, and that expires. This module holds what is common to all of them; the
adapter says how to log in (its own call) and where the session goes.

    session:
      login:
        operation: login                      # SOAP operation (or a REST path)
        request: {username: "${BILLING_USER}", password: "${BILLING_PASSWORD}"}
        result: Session                       # the reply element/field with the session id
      carry: {soap_header: {element: SessionHeader, field: session}}
      #   or {http_header: {name: Authorization, format: "Session {session}"}}
      #      (`{token}` is the same value, for REST configs that read better with it)
      #   or {cookie: {name: ZSession}}
      invalid: [INVALID_SESSION]              # fault codes (or HTTP statuses) of a stale one
      lifetime_seconds: 900                   # log in again this long after a login ...
      renew_before_seconds: 30                # ... minus this margin

One login is shared by the concurrent requests that need it (single flight); a call
refused for a stale session is repeated once after a new login, so a session expiring in
the middle of a paged list is renewed without the caller seeing it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import structlog
from pydantic import Field, model_validator

from adapters.base import BackendError, StrictModel

log = structlog.get_logger("adapters.session")


class LoginCall(StrictModel):
    """The call that returns a session: operation (or path), request, result field."""

    operation: str = Field(min_length=1)
    request: dict[str, Any] = {}
    result: str = Field(min_length=1)


class SoapHeaderPlace(StrictModel):
    element: str = Field(min_length=1)
    field: str = Field(min_length=1)


class HttpHeaderPlace(StrictModel):
    name: str = Field(min_length=1)
    format: str = "{session}"


class CookiePlace(StrictModel):
    name: str = Field(min_length=1)


class Carry(StrictModel):
    """Where the session goes on each call: exactly one of the three."""

    soap_header: SoapHeaderPlace | None = None
    http_header: HttpHeaderPlace | None = None
    cookie: CookiePlace | None = None

    @model_validator(mode="after")
    def _one_place(self) -> Carry:
        given = [p for p in (self.soap_header, self.http_header, self.cookie) if p is not None]
        if len(given) != 1:
            raise ValueError("carry takes exactly one of soap_header, http_header, cookie")
        return self


class SessionOptions(StrictModel):
    login: LoginCall
    carry: Carry
    #: Fault codes (SOAP) or HTTP statuses (as text) by which the back end says "log in again".
    invalid: list[str] = Field(default_factory=lambda: ["INVALID_SESSION"], min_length=1)
    lifetime_seconds: float | None = Field(None, gt=0)
    renew_before_seconds: float = Field(30.0, ge=0)


class Grant(NamedTuple):
    """A login's session id with the lifetime its reply gave (None: the configured one)."""

    token: str
    lifetime_seconds: float | None = None


class SessionExpired(BackendError):
    """The back end refused the session: log in again and repeat the call once."""


class Session:
    """The current session id of one back end, renewed by `login` (single flight)."""

    def __init__(
        self,
        backend: str,
        options: SessionOptions,
        login: Callable[[], Awaitable[str | Grant]],
    ) -> None:
        self.backend = backend
        self.options = options
        self._login = login
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        #: Logins made (for the log and tests).
        self.logins = 0

    def is_invalid(self, code: str) -> bool:
        """Whether a fault code or HTTP status says the session is no longer valid."""
        local = code.rpartition(":")[2]
        return code in self.options.invalid or local in self.options.invalid

    async def token(self) -> str:
        """A session id believed valid; logs in when there is none or it is about to expire."""
        token = self._token
        if token is not None and time.monotonic() < self._expires:
            return token
        return await self._renew(token)

    async def renewed(self, stale: str) -> str:
        """A new session after `stale` was refused (one login for all who saw it refused)."""
        return await self._renew(stale)

    async def _renew(self, seen: str | None) -> str:
        async with self._lock:
            # Someone else logged in while this caller waited: use theirs.
            if self._token is not None and self._token != seen and time.monotonic() < self._expires:
                return self._token
            granted = await self._login()
            grant = granted if isinstance(granted, Grant) else Grant(granted)
            token = grant.token
            if not token:
                raise BackendError(f"back end {self.backend!r}: login returned no session")
            self.logins += 1
            lifetime = grant.lifetime_seconds or self.options.lifetime_seconds
            margin = self.options.renew_before_seconds
            # A lifetime shorter than the margin still serves half of it (not a login a call).
            self._expires = (
                float("inf")
                if lifetime is None
                else time.monotonic() + max(lifetime - margin, lifetime / 2)
            )
            self._token = token
            log.info("backend_login", backend=self.backend, logins=self.logins)
            return token

    def forget(self) -> None:
        self._token = None

    def http_headers(self, token: str) -> dict[str, str]:
        """HTTP headers that carry the session (for REST back ends)."""
        carry = self.options.carry
        if carry.http_header is not None:
            value = carry.http_header.format.format(session=token, token=token)
            return {carry.http_header.name: value}
        if carry.cookie is not None:
            return {"Cookie": f"{carry.cookie.name}={token}"}
        return {}
