"""Session login for REST back ends whose token endpoint is not OAuth2.

    session:
      login:
        method: POST                        # default POST
        path: /api/login
        encoding: json                      # or form
        body: {user: "${BILLING_USER}", password: "${BILLING_PASSWORD}"}
        token: data.session_token           # where the token is in the reply (dotted)
        expires_in: data.expires_in         # the reply's lifetime in seconds, if it has one
      lifetime_seconds: 900                 # else a fixed lifetime (none: until refused)
      renew_before_seconds: 30
      carry: {http_header: {name: Authorization, format: "Bearer {token}"}}
      #   or {cookie: {name: SESSION}}
      invalid: ["401"]                      # statuses, or codes found at `invalid_code`
      invalid_code: error.code              # where a reply says "session expired" (dotted)

The shared part (single-flight login, expiry) is adapters/session.py; this module says
how a REST back end logs in and how it tells a stale session from any other refusal.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
import orjson
from pydantic import Field, model_validator

from adapters.base import StrictModel
from adapters.rest_paging import at_path
from adapters.session import Carry, LoginCall, SessionOptions


class RestLogin(StrictModel):
    """The call that returns a token: method, path, body (JSON or form), reply fields."""

    method: str = "POST"
    path: str = Field(min_length=1)
    encoding: Literal["json", "form"] = "json"
    body: dict[str, Any] = Field(default_factory=dict)
    #: Where the token is in the reply (dotted).
    token: str = Field(min_length=1)
    #: Where the reply gives the token's lifetime in seconds (dotted), if it does.
    expires_in: str | None = None


class RestSessionOptions(StrictModel):
    login: RestLogin
    carry: Carry
    #: HTTP statuses (as text) or, with `invalid_code`, the reply's codes for a stale session.
    invalid: list[str] = Field(default_factory=lambda: ["401"], min_length=1)
    invalid_code: str | None = None
    lifetime_seconds: float | None = Field(None, gt=0)
    renew_before_seconds: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _http_place(self) -> RestSessionOptions:
        if self.carry.soap_header is not None:
            raise ValueError("a REST back end carries its session in an http_header or cookie")
        return self

    def shared(self) -> SessionOptions:
        """The options adapters/session.py works with."""
        return SessionOptions(
            login=LoginCall(
                operation=self.login.path, request=self.login.body, result=self.login.token
            ),
            carry=self.carry,
            invalid=self.invalid,
            lifetime_seconds=self.lifetime_seconds,
            renew_before_seconds=self.renew_before_seconds,
        )

    def login_arguments(self) -> dict[str, Any]:
        """httpx keyword arguments carrying the login body in its encoding."""
        if not self.login.body:
            return {}
        return {"json" if self.login.encoding == "json" else "data": self.login.body}

    def is_stale(self, reply: httpx.Response) -> bool:
        """Whether the reply says the session is no longer valid (log in again)."""
        if str(reply.status_code) in self.invalid:
            return True
        if self.invalid_code is None or reply.status_code < 400:
            return False
        try:
            code = at_path(orjson.loads(reply.content), self.invalid_code)
        except orjson.JSONDecodeError:
            return False
        return code is not None and str(code) in self.invalid
