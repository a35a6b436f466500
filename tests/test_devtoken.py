"""The dev token helper: its key, its JWKS, and tokens the gateway's Authenticator accepts."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import jwt
import pytest

from gateway.auth import Authenticator, AuthSettings, Caller
from gateway.devtoken import DEFAULT_ISSUER, main
from gateway.errors import ApiError


def make_token(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1, out
    return lines[0]


def verify(jwks: Path, token: str, scope: str, issuer: str = DEFAULT_ISSUER) -> Caller:
    async def scenario() -> Caller:
        auth = Authenticator(AuthSettings(enabled=True, jwks_file=jwks, issuer=issuer))
        await auth.open()
        try:
            return await auth.authenticate(f"Bearer {token}", scope)
        finally:
            await auth.close()

    return asyncio.run(scenario())


def test_token_verifies_against_the_written_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    token = make_token(
        capsys,
        *("--dir", str(keys), "--scope", "tmf678:read  tmf678:write"),
        *("--accounts", "BA-000003, BA-000010", "--subject", "bob", "--client-id", "cli"),
        *("--ttl", "120"),
    )
    key_file, jwks = keys / "dev-signing-key.pem", keys / "dev-jwks.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    caller = verify(jwks, token, "tmf678:write")
    assert caller == Caller(
        subject="bob",
        client_id="cli",
        scopes=frozenset({"tmf678:read", "tmf678:write"}),
        accounts=frozenset({"BA-000003", "BA-000010"}),
        anonymous=False,
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    with pytest.raises(ApiError) as caught:
        verify(jwks, token, "tmf678:order")
    assert caught.value.status == 403


def test_second_run_reuses_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = make_token(capsys, "--dir", str(tmp_path))
    key_pem = (tmp_path / "dev-signing-key.pem").read_bytes()
    document = json.loads((tmp_path / "dev-jwks.json").read_text())
    second = make_token(capsys, "--dir", str(tmp_path), "--scope", "tmf678:hub")
    assert (tmp_path / "dev-signing-key.pem").read_bytes() == key_pem
    assert json.loads((tmp_path / "dev-jwks.json").read_text()) == document
    assert [k["kid"] for k in document["keys"]] == [jwt.get_unverified_header(second)["kid"]]
    jwks = tmp_path / "dev-jwks.json"
    assert verify(jwks, first, "tmf678:read").accounts == frozenset()
    assert verify(jwks, second, "tmf678:hub").scopes == {"tmf678:hub"}


def test_issuer_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_ISSUER", "https://login.example.test/dev")
    token = make_token(capsys, "--dir", str(tmp_path))
    jwks = tmp_path / "dev-jwks.json"
    assert verify(jwks, token, "tmf678:read", issuer="https://login.example.test/dev").subject
    with pytest.raises(ApiError, match="wrong issuer"):
        verify(jwks, token, "tmf678:read")


def test_a_key_that_is_not_ec_p256_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dev-signing-key.pem").write_text("not a key")
    assert main(["--dir", str(tmp_path)]) == 2
    assert "tmf678-gateway token:" in capsys.readouterr().err
