"""Bearer JWT authentication (RFC 6750) against the keys of a JWKS file or endpoint.

Keys are parsed when the JWKS is (re)loaded, never per request: a request costs a peek
at the token's header (to pick the key) and one PyJWT decode. A token naming an unknown
`kid` makes the JWKS be fetched again, at most once per `jwks_refresh_seconds` however
many such tokens come, so key rotation is picked up without letting callers hammer the
authorization server.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import structlog
from cachetools import TTLCache
from jwt import PyJWK
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.types import Options

from gateway.auth.caller import Caller
from gateway.auth.keys import JwksError, KeyRing, parse_jwks
from gateway.auth.settings import AuthSettings
from gateway.errors import ApiError

log = structlog.get_logger("gateway.auth")

_MAX_TOKEN = 16384
_VERIFIED_TOKENS = 10_000
_VERIFIED_SECONDS = 300.0
_DECODE_OPTIONS: Options = {
    "require": ["exp", "iss", "aud", "sub"],
    "enforce_minimum_key_length": True,
}
#: PyJWT's errors, most specific first, to the description a caller gets (never token text).
_DESCRIPTIONS: tuple[tuple[type[PyJWTError], str], ...] = (
    (ExpiredSignatureError, "The access token expired"),
    (ImmatureSignatureError, "The access token is not yet valid"),
    (InvalidIssuerError, "The access token has the wrong issuer"),
    (InvalidAudienceError, "The access token has the wrong audience"),
    (InvalidIssuedAtError, "The access token has an invalid iat claim"),
    (InvalidSubjectError, "The access token has an invalid sub claim"),
    (InvalidSignatureError, "The access token signature is invalid"),
    (InvalidAlgorithmError, "The access token signing algorithm is not allowed"),
    (InvalidKeyError, "The signing key cannot verify this access token"),
    (DecodeError, "The access token is malformed"),
)


class AuthConfigError(ValueError):
    """The configured JWKS file cannot be read or is not a JWKS: start-up stops."""


class Authenticator:
    """Checks `Authorization` headers; `open()` before use, `close()` at shutdown."""

    def __init__(
        self, settings: AuthSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._ring = KeyRing()
        self._algorithms = frozenset(settings.algorithms)
        #: Tokens already verified -> (caller, valid until epoch, valid from epoch). A
        #: client sends the same token for many requests; checking its signature once
        #: keeps authentication off the hot path. Emptied whenever the keys change.
        self._verified: TTLCache[str, tuple[Caller, float, float]] = TTLCache(
            maxsize=_VERIFIED_TOKENS, ttl=_VERIFIED_SECONDS
        )
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._last_fetch: float | None = None
        self._fetch_failed = False
        self._realm = f'realm="{settings.realm}"'

    @property
    def key_count(self) -> int:
        """How many usable keys the current JWKS holds (for health and logs)."""
        return len(self._ring)

    async def open(self) -> None:
        """Load the keys: a JWKS file must read; a URL that fails is retried on first use."""
        if not self.settings.enabled:
            return
        if self.settings.jwks_file is not None:
            try:
                self._ring = await self._load()
            except (OSError, ValueError) as exc:
                raise AuthConfigError(f"auth.jwks_file: {exc}") from exc
            self._last_fetch = self._clock()
            return
        self._client = httpx.AsyncClient(
            timeout=self.settings.jwks_timeout_seconds, follow_redirects=False
        )
        try:
            self._ring = await self._load()
            self._last_fetch = self._clock()
        except (httpx.HTTPError, ValueError) as exc:
            # Not fatal: the authorization server may come up after us. First use retries.
            log.warning("jwks_fetch_failed", url=self.settings.jwks_url, error=str(exc))
            self._fetch_failed = True

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def authenticate(self, authorization: str | None, scope: str) -> Caller:
        """The caller of a request whose operation needs `scope`, or an ApiError (401/403/503)."""
        if not self.settings.enabled:
            return Caller.ANONYMOUS
        token = self._bearer_token(authorization)
        try:  # (not `.get`: that looks the key up twice, and this runs on every request)
            known: tuple[Caller, float, float] | None = self._verified[token]
        except KeyError:
            known = None
        now = time.time()
        leeway = self.settings.leeway_seconds
        if known is not None and known[2] - leeway <= now < known[1] + leeway:
            return self._allowed(known[0], scope)
        header = _peek_header(token)
        if header is None:
            raise self._invalid("The access token is malformed")
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._invalid("The access token is malformed")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise self._invalid("The access token signing algorithm is not allowed", kid)
        key = self._ring.lookup(kid, alg)
        if key is None:
            key = await self._key_after_refresh(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options=_DECODE_OPTIONS,
            )
        except MissingRequiredClaimError as exc:
            raise self._invalid(f"The access token lacks the {exc.claim} claim", kid) from None
        except PyJWTError as exc:
            raise self._invalid(_describe(exc), kid) from None
        caller = self._caller(claims, kid)
        nbf = claims.get("nbf")
        self._verified[token] = (
            caller,
            float(claims["exp"]),
            float(nbf) if isinstance(nbf, int | float) else -math.inf,
        )
        return self._allowed(caller, scope)

    def _allowed(self, caller: Caller, scope: str) -> Caller:
        """The caller, when its token carries `scope`; else 403."""
        if scope not in caller.scopes:
            log.debug("auth_forbidden", sub=caller.subject, scope=scope)
            raise ApiError(
                403,
                "Insufficient scope",
                f"The access token lacks the scope {scope}",
                code="INSUFFICIENT_SCOPE",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer {self._realm}, error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        return caller

    def _bearer_token(self, authorization: str | None) -> str:
        if not authorization:
            raise self._challenge("A bearer access token is required")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise self._challenge("The Authorization scheme must be Bearer")
        token = token.strip()
        if not token or len(token) > _MAX_TOKEN:
            raise self._invalid("The access token is malformed")
        return token

    async def _key_after_refresh(self, kid: str | None, alg: str) -> PyJWK:
        if self._ring.knows(kid):
            raise self._invalid("The signing key does not fit the token algorithm", kid)
        async with self._lock:
            # Tokens that waited here while another fetched see the fetched keys.
            key = self._ring.lookup(kid, alg)
            if key is not None:
                return key
            wait = self._refresh_wait()
            if wait <= 0:
                await self._refresh()
                key = self._ring.lookup(kid, alg)
                if key is not None:
                    return key
                wait = self._refresh_wait()
        if self._fetch_failed:
            raise ApiError(
                503,
                "Service unavailable",
                "The token signing keys cannot be fetched now",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if self._ring.knows(kid):
            raise self._invalid("The signing key does not fit the token algorithm", kid)
        raise self._invalid("The access token signing key is unknown", kid)

    def _refresh_wait(self) -> float:
        if self._last_fetch is None:
            return 0.0
        return self._last_fetch + self.settings.jwks_refresh_seconds - self._clock()

    async def _refresh(self) -> None:
        self._last_fetch = self._clock()
        try:
            ring = await self._load()
        except (OSError, httpx.HTTPError, ValueError) as exc:
            log.warning("jwks_refresh_failed", error=str(exc))
            self._fetch_failed = True
            return
        self._fetch_failed = False
        log.info("jwks_refreshed", keys=len(ring))
        self._ring = ring
        self._verified.clear()  # a key that is gone must not keep vouching for its tokens

    async def _load(self) -> KeyRing:
        if self.settings.jwks_file is not None:
            raw = await asyncio.to_thread(self.settings.jwks_file.read_bytes)
        else:
            assert self._client is not None and self.settings.jwks_url is not None
            response = await self._client.get(
                self.settings.jwks_url, headers={"Accept": "application/json"}
            )
            response.raise_for_status()
            raw = response.content
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise JwksError("the JWKS is not JSON") from None
        return parse_jwks(document, self.settings.algorithms)

    def _caller(self, claims: dict[str, Any], kid: str | None) -> Caller:
        scopes = _scopes(claims)
        if scopes is None:
            raise self._invalid("The access token scope claim is malformed", kid)
        name = self.settings.accounts_claim
        listed = claims.get(name)
        if listed is None:
            accounts: frozenset[str] = frozenset()
        elif isinstance(listed, list) and all(isinstance(a, str) for a in listed):
            accounts = frozenset(listed)
        else:
            raise self._invalid(f"The access token {name} claim must be a list of strings", kid)
        client_id = next(
            (v for c in ("client_id", "azp", "cid") if isinstance(v := claims.get(c), str)), None
        )
        return Caller(
            subject=claims["sub"],
            client_id=client_id,
            scopes=scopes,
            accounts=None if self.settings.scopes.all_accounts in scopes else accounts,
            anonymous=False,
        )

    def _challenge(self, message: str) -> ApiError:
        """No bearer token at all: RFC 6750 says the challenge then carries no error code."""
        return ApiError(
            401,
            "Authentication required",
            message,
            code="UNAUTHORIZED",
            headers={"WWW-Authenticate": f"Bearer {self._realm}"},
        )

    def _invalid(self, description: str, kid: str | None = None) -> ApiError:
        log.debug("auth_rejected", reason=description, kid=kid[:64] if kid else kid)
        return ApiError(
            401,
            "Invalid access token",
            description,
            code="INVALID_TOKEN",
            headers={
                "WWW-Authenticate": (
                    f'Bearer {self._realm}, error="invalid_token", '
                    f'error_description="{description}"'
                )
            },
        )


def _peek_header(token: str) -> dict[str, Any] | None:
    """The JOSE header, read only to pick the key; PyJWT's decode checks it again, strictly.

    (PyJWT's own `get_unverified_header` decodes and checks every segment: as costly as
    the decode itself, which would then do it all a second time.)
    """
    segment, dot, _ = token.partition(".")
    if not dot:
        return None
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        return None
    return header if isinstance(header, dict) else None


def _describe(exc: PyJWTError) -> str:
    for kind, description in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return description
    return "The access token is invalid"


def _scopes(claims: dict[str, Any]) -> frozenset[str] | None:
    """`scope` (RFC 9068: space-separated) or `scp` (a list, or a string); None if malformed."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return frozenset(value)
        return None
    return frozenset()
