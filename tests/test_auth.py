"""Bearer JWT authentication with real keys: signatures, claims, scopes, JWKS rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import AuthConfigError, Authenticator, AuthSettings, Caller
from gateway.auth.keys import parse_jwks
from gateway.errors import ApiError
from tests.servers import ThreadedServer
from tests.tokens import ISSUER, Signer

T = TypeVar("T")


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "rsa-1")


@pytest.fixture(scope="module")
def ec_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1")


@pytest.fixture(scope="module")
def ed_signer() -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA", "ed-1")


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_signer: Signer, ec_signer: Signer, ed_signer: Signer) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_signer.jwk, ec_signer.jwk, ed_signer.jwk]}))
    return path


def settings(jwks_file: Path | None = None, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {"enabled": True, "issuer": ISSUER, "jwks_file": jwks_file}
    return AuthSettings(**{**values, **overrides})


def run(settings: AuthSettings, work: Callable[[Authenticator], Awaitable[T]]) -> T:
    async def scenario() -> T:
        auth = Authenticator(settings)
        await auth.open()
        try:
            return await work(auth)
        finally:
            await auth.close()

    return asyncio.run(scenario())


def check(settings: AuthSettings, token: str | None, scope: str = "tmf678:read") -> Caller:
    header = None if token is None else f"Bearer {token}"
    return run(settings, lambda auth: auth.authenticate(header, scope))


def refused(
    settings: AuthSettings, authorization: str | None, scope: str = "tmf678:read"
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(settings, lambda auth: auth.authenticate(authorization, scope))
    return caught.value


def invalid(settings: AuthSettings, token: str, description: str) -> ApiError:
    error = refused(settings, f"Bearer {token}")
    assert error.status == 401
    assert error.code == "INVALID_TOKEN"
    assert error.message == description
    assert error.headers == {
        "WWW-Authenticate": (
            f'Bearer realm="tmf678", error="invalid_token", error_description="{description}"'
        )
    }
    assert error.body()["@type"] == "Error"
    return error


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built without PyJWT, for the forgeries PyJWT itself refuses to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# --- valid tokens -------------------------------------------------------------------------


def test_valid_rs256_token_gives_the_caller(jwks_file: Path, rsa_signer: Signer) -> None:
    caller = check(settings(jwks_file), rsa_signer.token())
    assert caller == Caller(
        subject="alice",
        client_id="billing-portal",
        scopes=frozenset({"tmf678:read"}),
        accounts=frozenset({"BA-000003", "BA-000010"}),
        anonymous=False,
    )
    assert caller.allows_account("BA-000003")
    assert not caller.allows_account("BA-000004")


@pytest.mark.parametrize("name", ["ec_signer", "ed_signer"])
def test_es256_and_eddsa_tokens_verify(
    jwks_file: Path, name: str, request: pytest.FixtureRequest
) -> None:
    signer: Signer = request.getfixturevalue(name)
    caller = check(settings(jwks_file), signer.token(sub=f"by-{signer.alg}"))
    assert caller.subject == f"by-{signer.alg}"


def test_eddsa_needs_to_be_allowed(jwks_file: Path, ed_signer: Signer) -> None:
    invalid(
        settings(jwks_file, algorithms=["RS256", "ES256"]),
        ed_signer.token(),
        "The access token signing algorithm is not allowed",
    )


def test_client_id_from_azp_or_cid_and_scopes_from_scp(jwks_file: Path, ec_signer: Signer) -> None:
    token = ec_signer.token(
        client_id=None, azp="portal-azp", scope=None, scp=["tmf678:read", "tmf678:hub"]
    )
    caller = check(settings(jwks_file), token)
    assert caller.client_id == "portal-azp"
    assert caller.scopes == frozenset({"tmf678:read", "tmf678:hub"})
    caller = check(settings(jwks_file), ec_signer.token(client_id=None, cid="okta-cid"))
    assert caller.client_id == "okta-cid"
    assert check(settings(jwks_file), ec_signer.token(client_id=None)).client_id is None


# --- time, issuer, audience ---------------------------------------------------------------


def test_expired_token(jwks_file: Path, rsa_signer: Signer) -> None:
    now = int(time.time())
    token = rsa_signer.token(iat=now - 600, exp=now - 120)
    invalid(settings(jwks_file), token, "The access token expired")


def test_a_token_is_verified_once_and_still_expires(
    jwks_file: Path, rsa_signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    expires = int(time.time()) + 2
    token = rsa_signer.token(exp=expires, scope="tmf678:read")
    decoded: list[str] = []
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        decoded.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)

    async def work(auth: Authenticator) -> None:
        header = f"Bearer {token}"
        for _ in range(5):
            assert (await auth.authenticate(header, "tmf678:read")).subject == "alice"
        with pytest.raises(ApiError) as refused:  # the scope is still checked on every request
            await auth.authenticate(header, "tmf678:write")
        assert refused.value.status == 403
        await asyncio.sleep(expires + 0.05 - time.time())
        with pytest.raises(ApiError) as expired:
            await auth.authenticate(header, "tmf678:read")
        assert expired.value.status == 401 and expired.value.message == "The access token expired"

    run(settings(jwks_file, leeway_seconds=0), work)
    assert decoded == [token, token]  # once when new, once more when its time was up


def test_leeway_covers_small_clock_skew(jwks_file: Path, rsa_signer: Signer) -> None:
    now = int(time.time())
    just_expired = rsa_signer.token(exp=now - 10)
    assert check(settings(jwks_file, leeway_seconds=30), just_expired).subject == "alice"
    invalid(settings(jwks_file, leeway_seconds=0), just_expired, "The access token expired")


def test_not_yet_valid_token(jwks_file: Path, rsa_signer: Signer) -> None:
    now = int(time.time())
    invalid(
        settings(jwks_file),
        rsa_signer.token(nbf=now + 120),
        "The access token is not yet valid",
    )
    assert check(settings(jwks_file), rsa_signer.token(nbf=now + 10)).subject == "alice"


def test_wrong_issuer(jwks_file: Path, rsa_signer: Signer) -> None:
    token = rsa_signer.token(iss="https://evil.example.test/")
    invalid(settings(jwks_file), token, "The access token has the wrong issuer")


def test_wrong_audience(jwks_file: Path, rsa_signer: Signer) -> None:
    token = rsa_signer.token(aud="another-api", sub="secret-subject-1234")
    error = invalid(settings(jwks_file), token, "The access token has the wrong audience")
    # Nothing of the token goes back to the caller.
    assert "secret-subject-1234" not in json.dumps(error.body()) + str(error.headers)
    # An audience list holding ours is fine.
    assert check(settings(jwks_file), rsa_signer.token(aud=["other", "tmf678"])).subject


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_required_claims(jwks_file: Path, rsa_signer: Signer, claim: str) -> None:
    token = rsa_signer.token(**{claim: None})
    invalid(settings(jwks_file), token, f"The access token lacks the {claim} claim")


# --- signatures and algorithms ------------------------------------------------------------


def test_tampered_signature(jwks_file: Path, rsa_signer: Signer) -> None:
    header, _, signature = rsa_signer.token().split(".")
    forged = {**claims_of(rsa_signer.token()), "billing_accounts": ["BA-000001"]}
    payload = b64(json.dumps(forged).encode())
    invalid(
        settings(jwks_file),
        f"{header}.{payload}.{signature}",
        "The access token signature is invalid",
    )


def test_signature_by_another_key_with_a_known_kid(jwks_file: Path, rsa_signer: Signer) -> None:
    impostor = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "x")
    token = impostor.token(kid=rsa_signer.kid)
    invalid(settings(jwks_file), token, "The access token signature is invalid")


def test_alg_none_is_refused(jwks_file: Path, rsa_signer: Signer) -> None:
    claims = claims_of(rsa_signer.token())
    for alg in ("none", "None", "NONE"):
        token = handmade({"alg": alg, "kid": rsa_signer.kid}, claims, lambda _: b"")
        invalid(settings(jwks_file), token, "The access token signing algorithm is not allowed")


def hs256_with_public_pem(signer: Signer) -> str:
    """The classic key confusion: HS256 with the RSA public key's PEM as the HMAC secret."""
    pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = claims_of(signer.token())
    return handmade(
        {"alg": "HS256", "typ": "JWT", "kid": signer.kid},
        claims,
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )


def test_hs256_key_confusion_is_refused(jwks_file: Path, rsa_signer: Signer) -> None:
    token = hs256_with_public_pem(rsa_signer)
    invalid(settings(jwks_file), token, "The access token signing algorithm is not allowed")


def test_hs256_refused_even_if_the_allowlist_were_bypassed(
    jwks_file: Path, rsa_signer: Signer
) -> None:
    # Config validation refuses HS256; built around it, the RSA key still never serves HMAC.
    bypassed = AuthSettings.model_construct(
        enabled=True,
        jwks_file=jwks_file,
        issuer=ISSUER,
        algorithms=["HS256", "RS256"],
    )
    token = hs256_with_public_pem(rsa_signer)
    invalid(bypassed, token, "The signing key does not fit the token algorithm")


def test_key_type_must_fit_the_algorithm(
    jwks_file: Path, rsa_signer: Signer, ec_signer: Signer
) -> None:
    # An ES256 token that names the RSA key's kid: the RSA key is not offered to ES256.
    token = ec_signer.token(kid=rsa_signer.kid)
    invalid(settings(jwks_file), token, "The signing key does not fit the token algorithm")


def test_malformed_tokens(jwks_file: Path, rsa_signer: Signer) -> None:
    for token in ("abc", "a.b.c", "!.!.!", "x" * 20000):
        invalid(settings(jwks_file), token, "The access token is malformed")
    numeric_kid = handmade({"alg": "RS256", "kid": 7}, {}, lambda _: b"sig")
    invalid(settings(jwks_file), numeric_kid, "The access token is malformed")
    # The header peek is lenient; PyJWT's decode then reads every segment strictly.
    head, payload, signature = rsa_signer.token().split(".")
    invalid(settings(jwks_file), f"{head}.{payload}!.{signature}", "The access token is malformed")
    no_alg = handmade({"kid": rsa_signer.kid}, {}, lambda _: b"sig")
    invalid(settings(jwks_file), no_alg, "The access token signing algorithm is not allowed")


# --- the Authorization header and scopes --------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "Basic YWxpY2U6c2VjcmV0", "Token abc"])
def test_no_bearer_token_gets_a_bare_challenge(jwks_file: Path, authorization: str | None) -> None:
    error = refused(settings(jwks_file), authorization)
    assert error.status == 401
    assert error.code == "UNAUTHORIZED"
    # RFC 6750 3.1: no error code when the request carried no bearer token at all.
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="tmf678"'}


def test_empty_bearer_is_a_malformed_token(jwks_file: Path) -> None:
    error = refused(settings(jwks_file), "Bearer   ")
    assert error.message == "The access token is malformed"


def test_scheme_is_case_insensitive(jwks_file: Path, ec_signer: Signer) -> None:
    caller = run(
        settings(jwks_file), lambda a: a.authenticate(f"bearer {ec_signer.token()}", "tmf678:read")
    )
    assert caller.subject == "alice"


def test_missing_scope_is_403_with_the_needed_scope(jwks_file: Path, rsa_signer: Signer) -> None:
    error = refused(settings(jwks_file), f"Bearer {rsa_signer.token()}", "tmf678:write")
    assert error.status == 403
    assert error.code == "INSUFFICIENT_SCOPE"
    assert error.message == "The access token lacks the scope tmf678:write"
    challenge = 'Bearer realm="tmf678", error="insufficient_scope", scope="tmf678:write"'
    assert error.headers == {"WWW-Authenticate": challenge}
    token = rsa_signer.token(scope="tmf678:read tmf678:write")
    assert check(settings(jwks_file), token, "tmf678:write").scopes == {
        "tmf678:read",
        "tmf678:write",
    }


def test_malformed_scope_claim(jwks_file: Path, rsa_signer: Signer) -> None:
    token = rsa_signer.token(scope={"read": True})
    invalid(settings(jwks_file), token, "The access token scope claim is malformed")


# --- billing accounts ---------------------------------------------------------------------


def test_accounts_claim_absent_means_no_account(jwks_file: Path, rsa_signer: Signer) -> None:
    caller = check(settings(jwks_file), rsa_signer.token(billing_accounts=None))
    assert caller.accounts == frozenset()
    assert not caller.allows_account("BA-000003")


@pytest.mark.parametrize("value", ["BA-000003", {"id": "BA-000003"}, ["BA-000003", 7], 3])
def test_accounts_claim_must_be_a_list_of_strings(
    jwks_file: Path, rsa_signer: Signer, value: Any
) -> None:
    invalid(
        settings(jwks_file),
        rsa_signer.token(billing_accounts=value),
        "The access token billing_accounts claim must be a list of strings",
    )


def test_accounts_claim_name_is_configurable(jwks_file: Path, rsa_signer: Signer) -> None:
    token = rsa_signer.token(billing_accounts=None, accts=["BA-1"])
    assert check(settings(jwks_file, accounts_claim="accts"), token).accounts == frozenset({"BA-1"})


def test_all_accounts_scope_lifts_the_restriction(jwks_file: Path, rsa_signer: Signer) -> None:
    token = rsa_signer.token(scope="tmf678:read tmf678:all-accounts", billing_accounts=None)
    caller = check(settings(jwks_file), token)
    assert caller.accounts is None
    assert caller.allows_account("BA-999999")
    custom = settings(jwks_file, scopes={"all_accounts": "billing.admin"})
    assert check(custom, token).accounts == frozenset()
    assert check(custom, rsa_signer.token(scope="tmf678:read billing.admin")).accounts is None


def test_disabled_auth_is_the_anonymous_caller(rsa_signer: Signer) -> None:
    off = AuthSettings()
    assert check(off, None, "tmf678:write") is Caller.ANONYMOUS
    assert check(off, "garbage", "tmf678:order") is Caller.ANONYMOUS
    anonymous = Caller.ANONYMOUS
    assert anonymous.anonymous and anonymous.accounts is None
    assert anonymous.allows_account("BA-000001") and anonymous.allows_scope("custom:scope")
    assert {"tmf678:read", "tmf678:write", "tmf678:order", "tmf678:hub"} <= anonymous.scopes


# --- the JWKS: file, endpoint, rotation ---------------------------------------------------


def test_unreadable_jwks_file_stops_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(AuthConfigError, match="auth.jwks_file"):
        run(settings(missing), lambda auth: asyncio.sleep(0))
    bad = tmp_path / "bad.json"
    bad.write_text('{"kid": "not a set"}')
    with pytest.raises(AuthConfigError, match="'keys' list"):
        run(settings(bad), lambda auth: asyncio.sleep(0))


def test_unusable_keys_are_left_out(rsa_signer: Signer, ec_signer: Signer) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = RSAAlgorithm.to_jwk(rsa_signer.key, as_dict=True)
    document = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": b64(b"0123456789abcdef0123456789abcdef")},
            {**private, "kid": "private"},
            {**rsa_signer.jwk, "kid": "enc", "use": "enc"},
            {**rsa_signer.jwk, "kid": "ps-only", "alg": "PS256"},
            {**RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "short"},
            {**rsa_signer.jwk, "kid": "verify-ops", "key_ops": ["verify"]},
            ec_signer.jwk,
        ]
    }
    ring = parse_jwks(document, ["RS256", "PS256", "ES256"])
    assert set(ring.keys) == {"ps-only", "verify-ops", "ec-1"}
    assert set(ring.keys["ps-only"]) == {"PS256"}
    assert set(ring.keys["verify-ops"]) == {"RS256", "PS256"}
    assert set(ring.keys["ec-1"]) == {"ES256"}


def test_a_token_without_kid_needs_a_single_key_set(tmp_path: Path, ec_signer: Signer) -> None:
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"keys": [ec_signer.jwk]}))
    assert check(settings(single), ec_signer.token(kid=None)).subject == "alice"


def test_a_token_without_kid_among_several_keys(jwks_file: Path, ec_signer: Signer) -> None:
    invalid(
        settings(jwks_file), ec_signer.token(kid=None), "The access token signing key is unknown"
    )


class JwksEndpoint:
    """An authorization server's JWKS endpoint on loopback that counts its fetches."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.status = 200
        self.app = Starlette(routes=[Route("/jwks", self.jwks)])

    async def jwks(self, request: Request) -> Response:
        self.fetches += 1
        if self.status != 200:
            return Response("down", status_code=self.status)
        return JSONResponse({"keys": self.keys})


@pytest.fixture
def endpoint() -> Iterator[tuple[JwksEndpoint, str]]:
    server = JwksEndpoint()
    with ThreadedServer(server.app) as running:
        yield server, f"{running.base}/jwks"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def flood(auth: Authenticator, signer: Signer, prefix: str) -> list[object]:
    """Fifty concurrent requests, each naming a different unknown kid."""
    calls = [
        auth.authenticate(f"Bearer {signer.token(kid=f'{prefix}-{i}')}", "tmf678:read")
        for i in range(50)
    ]
    return await asyncio.gather(*calls, return_exceptions=True)


def test_rotation_and_unknown_kid_floods(
    endpoint: tuple[JwksEndpoint, str], rsa_signer: Signer, ec_signer: Signer
) -> None:
    server, url = endpoint
    server.keys = [rsa_signer.jwk]
    clock = Clock()
    config = settings(jwks_url=url, jwks_refresh_seconds=60)

    async def scenario() -> None:
        auth = Authenticator(config, clock=clock)
        await auth.open()
        try:
            assert server.fetches == 1
            await auth.authenticate(f"Bearer {rsa_signer.token()}", "tmf678:read")
            assert server.fetches == 1  # known kid: no fetch

            # Rotation: the issuer now signs with a new key. Its first tokens, arriving
            # together, make one fetch, and those that waited for it are served by it.
            server.keys = [ec_signer.jwk]
            clock.now += 61
            header = f"Bearer {ec_signer.token()}"
            callers = await asyncio.gather(
                *[auth.authenticate(header, "tmf678:read") for _ in range(20)]
            )
            assert {c.subject for c in callers} == {"alice"} and server.fetches == 2
            # The retired key is gone with the old set.
            with pytest.raises(ApiError, match="signing key is unknown"):
                await auth.authenticate(f"Bearer {rsa_signer.token()}", "tmf678:read")
            assert server.fetches == 2  # within the interval: no second fetch

            # A flood of unknown kids after the interval: one fetch for all of them.
            clock.now += 61
            results = await flood(auth, ec_signer, "bogus")
            assert all(isinstance(r, ApiError) and r.status == 401 for r in results)
            assert server.fetches == 3
            clock.now += 30
            results = await flood(auth, ec_signer, "more")
            assert all(isinstance(r, ApiError) and r.status == 401 for r in results)
            assert server.fetches == 3
            clock.now += 31
            with pytest.raises(ApiError, match="signing key is unknown"):
                await auth.authenticate(f"Bearer {ec_signer.token(kid='late')}", "tmf678:read")
            assert server.fetches == 4
            # Known keys keep working without fetches all along.
            await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert server.fetches == 4
        finally:
            await auth.close()

    asyncio.run(scenario())


def test_failed_start_up_fetch_is_retried_on_first_use(
    endpoint: tuple[JwksEndpoint, str], ec_signer: Signer
) -> None:
    server, url = endpoint
    server.keys = [ec_signer.jwk]
    server.status = 503
    clock = Clock()
    config = settings(jwks_url=url, jwks_refresh_seconds=60)

    async def scenario() -> None:
        auth = Authenticator(config, clock=clock)
        await auth.open()  # does not raise
        try:
            assert server.fetches == 1 and auth.key_count == 0
            # Still down at first use: 503 (the keys, not the token, are the problem).
            with pytest.raises(ApiError) as caught:
                await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert caught.value.status == 503
            assert caught.value.headers == {"Retry-After": "60"}
            assert server.fetches == 2
            # Up again; the next attempt waits for the interval, then succeeds.
            server.status = 200
            clock.now += 20
            with pytest.raises(ApiError) as caught:
                await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert caught.value.headers == {"Retry-After": "40"} and server.fetches == 2
            clock.now += 41
            caller = await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert caller.subject == "alice" and server.fetches == 3
        finally:
            await auth.close()

    asyncio.run(scenario())


def test_start_up_fetch_failure_then_first_use_succeeds(
    endpoint: tuple[JwksEndpoint, str], ec_signer: Signer
) -> None:
    server, url = endpoint
    server.keys = [ec_signer.jwk]
    server.status = 500

    async def scenario() -> None:
        auth = Authenticator(settings(jwks_url=url))
        await auth.open()
        server.status = 200
        try:
            caller = await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert caller.subject == "alice" and server.fetches == 2
        finally:
            await auth.close()

    asyncio.run(scenario())


def test_jwks_file_is_reread_for_an_unknown_kid(
    tmp_path: Path, rsa_signer: Signer, ec_signer: Signer
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_signer.jwk]}))
    clock = Clock()

    async def scenario() -> None:
        auth = Authenticator(settings(path), clock=clock)
        await auth.open()
        try:
            path.write_text(json.dumps({"keys": [rsa_signer.jwk, ec_signer.jwk]}))
            with pytest.raises(ApiError, match="signing key is unknown"):
                await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            clock.now += 60
            caller = await auth.authenticate(f"Bearer {ec_signer.token()}", "tmf678:read")
            assert caller.subject == "alice"
        finally:
            await auth.close()

    asyncio.run(scenario())


# --- configuration ------------------------------------------------------------------------


def test_settings_defaults() -> None:
    config = AuthSettings()
    assert not config.enabled
    assert config.audience == "tmf678"
    assert config.algorithms == ["RS256", "ES256", "EdDSA"]
    assert config.leeway_seconds == 30
    assert config.accounts_claim == "billing_accounts"
    assert (config.jwks_refresh_seconds, config.jwks_timeout_seconds) == (60, 5)
    assert config.scopes.model_dump() == {
        "read": "tmf678:read",
        "write": "tmf678:write",
        "order": "tmf678:order",
        "hub": "tmf678:hub",
        "all_accounts": "tmf678:all-accounts",
    }
    with pytest.raises(ValidationError):
        setattr(config, "enabled", True)  # noqa: B010 (frozen: assignment must fail)


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        (["RS256", "HS256"], "'HS256' is not accepted"),
        (["none"], "'none' is not accepted"),
        (["HS512"], "'HS512' is not accepted"),
        ([], "at least one"),
    ],
)
def test_symmetric_and_none_algorithms_are_refused(algorithms: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthSettings(algorithms=algorithms)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"enabled": True, "issuer": ISSUER}, "jwks_file or jwks_url"),
        ({"enabled": True, "jwks_url": "https://idp.example.test/jwks"}, "issuer"),
        (
            {"jwks_file": "keys.json", "jwks_url": "https://idp.example.test/jwks"},
            "not both",
        ),
        ({"jwks_url": "http://idp.example.test/jwks"}, "must be https"),
        ({"jwks_url": "ftp://127.0.0.1/jwks"}, "must be https"),
        ({"leeway_seconds": 61}, "less than or equal to 60"),
        ({"leeway_seconds": -1}, "greater than or equal to 0"),
        ({"jwks_refresh_seconds": 0}, "greater than or equal to 1"),
        ({"scopes": {"read": "two words"}}, "should match pattern"),
        ({"scopes": {"admin": "x"}}, "unknown key 'admin'"),
        ({"secret": "x"}, "unknown key 'secret'"),
    ],
)
def test_settings_are_checked(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthSettings(**values)


def test_enabled_settings_accepted() -> None:
    by_url = AuthSettings(enabled=True, issuer=ISSUER, jwks_url="https://idp.example.test/jwks")
    assert by_url.jwks_url == "https://idp.example.test/jwks"
    loopback = AuthSettings(enabled=True, issuer=ISSUER, jwks_url="http://127.0.0.1:9/jwks")
    assert loopback.jwks_file is None
    # As the YAML config gives it: a string path.
    by_file = AuthSettings.model_validate(
        {"enabled": True, "issuer": ISSUER, "jwks_file": "var/dev-jwks.json"}
    )
    assert by_file.jwks_file == Path("var/dev-jwks.json")
