"""The `auth:` configuration section: how bearer tokens are checked, validated at start-up."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Self

import httpx
from pydantic import (
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from adapters.base import StrictModel
from gateway.auth.keys import ASYMMETRIC_ALGORITHMS

# RFC 6749 scope-token (NQCHAR): printable ASCII without space, `"` or `\`, so a scope can
# go into a `WWW-Authenticate` quoted string as it is.
_SCOPE_TOKEN = r"^[\x21\x23-\x5B\x5D-\x7E]+$"
ScopeName = Annotated[str, StringConstraints(pattern=_SCOPE_TOKEN)]
_QUOTABLE = re.compile(r"^[\x20\x21\x23-\x5B\x5D-\x7E]+$")


class AuthScopes(StrictModel):
    """The scope names granting each kind of operation, as the authorization server spells them."""

    read: ScopeName = "tmf678:read"
    write: ScopeName = "tmf678:write"
    order: ScopeName = "tmf678:order"
    hub: ScopeName = "tmf678:hub"
    #: Lifts the billing-account restriction: the caller sees every account.
    all_accounts: ScopeName = "tmf678:all-accounts"


class AuthSettings(StrictModel):
    """Bearer JWT validation. Off by default: the demo runs anonymous with every scope."""

    enabled: bool = False
    #: Serve anonymously on an address other than loopback (refused unless said here).
    anonymous_beyond_loopback: bool = False
    #: A JWKS document on disk (re-read when a token names an unknown `kid`).
    jwks_file: Path | None = None
    #: The authorization server's JWKS endpoint (https; http only to a loopback host).
    jwks_url: str | None = None
    issuer: str | None = Field(default=None, min_length=1)
    audience: str = Field(default="tmf678", min_length=1)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    leeway_seconds: float = Field(default=30, ge=0, le=60)
    accounts_claim: str = Field(default="billing_accounts", min_length=1)
    scopes: AuthScopes = Field(default_factory=AuthScopes)
    #: The least time between two JWKS fetches that an unknown `kid` may trigger.
    jwks_refresh_seconds: float = Field(default=60, ge=1)
    jwks_timeout_seconds: float = Field(default=5, gt=0)
    #: The `realm` of the `WWW-Authenticate` challenges.
    realm: str = "tmf678"

    @field_validator("jwks_file", "jwks_url", "issuer", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return value or None  # `${AUTH_JWKS_URL:-}` in a config file: not given

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one signing algorithm is needed")
        for alg in value:
            if alg not in ASYMMETRIC_ALGORITHMS:
                allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
                raise ValueError(
                    f"algorithm {alg!r} is not accepted: only asymmetric algorithms ({allowed})"
                )
        return list(dict.fromkeys(value))

    @field_validator("jwks_url")
    @classmethod
    def _secure_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme == "https" and url.host:
            return value
        if url.scheme == "http" and _loopback(url.host):
            return value
        raise ValueError("jwks_url must be https (plain http only to a loopback host)")

    @field_validator("realm")
    @classmethod
    def _quotable(cls, value: str) -> str:
        if not _QUOTABLE.match(value):
            raise ValueError("realm must be printable ASCII without quotes or backslashes")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> Self:
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError("give either jwks_file or jwks_url, not both")
        if self.enabled:
            if self.jwks_file is None and self.jwks_url is None:
                raise ValueError("enabled needs the signing keys: jwks_file or jwks_url")
            if self.issuer is None:
                raise ValueError("enabled needs the expected token issuer")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
