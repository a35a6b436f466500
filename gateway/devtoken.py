"""`tmf678-gateway token`: a signed bearer token for trying the API with auth on, locally.

The first run makes an EC P-256 signing key (mode 0600) and the JWKS that publishes its
public half; later runs reuse the key. Point the gateway's `auth.jwks_file` at the JWKS
and `auth.issuer` at the same issuer, and the printed tokens are accepted. Dev only: a
real deployment takes its tokens from the organisation's authorization server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEFAULT_ISSUER = "http://127.0.0.1:8678/dev-issuer"
KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "dev-jwks.json"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    directory = Path(args.dir)
    first_use = not (directory / KEY_FILE).exists()
    try:
        key = _signing_key(directory / KEY_FILE)
        kid = _write_jwks(key.public_key(), directory / JWKS_FILE)
    except (OSError, ValueError, TypeError) as exc:
        print(f"tmf678-gateway token: {exc}", file=sys.stderr)
        return 2
    if first_use:
        print(_hint(directory, args.issuer, args.audience), file=sys.stderr)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": args.issuer,
        "aud": args.audience,
        "sub": args.subject,
        "client_id": args.client_id,
        "scope": " ".join(args.scope.split()),
        "iat": now,
        "exp": now + args.ttl,
        "jti": uuid.uuid4().hex,
    }
    if args.accounts is not None:
        claims[args.accounts_claim] = [a.strip() for a in args.accounts.split(",") if a.strip()]
    print(jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmf678-gateway token", description=__doc__)
    parser.add_argument("--dir", default="var", help="where the key and JWKS live (var)")
    parser.add_argument("--scope", default="tmf678:read", help="space-separated scopes")
    parser.add_argument("--accounts", help="comma-separated billing account ids")
    parser.add_argument("--accounts-claim", default="billing_accounts")
    parser.add_argument("--subject", default="dev-user")
    parser.add_argument("--client-id", default="dev-client")
    parser.add_argument("--issuer", default=os.environ.get("AUTH_ISSUER", DEFAULT_ISSUER))
    parser.add_argument("--audience", default="tmf678")
    parser.add_argument("--ttl", type=_positive, default=3600, help="lifetime in seconds")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The dev key at `path`, made (readable by its owner only) on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{path} is not an EC P-256 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    print(f"made dev signing key {path}", file=sys.stderr)
    return key


def _hint(directory: Path, issuer: str, audience: str) -> str:
    """The `auth:` config block that accepts this helper's tokens."""
    return (
        "gateway config to accept these tokens:\n"
        "  auth:\n"
        "    enabled: true\n"
        f"    jwks_file: {directory / JWKS_FILE}\n"
        f"    issuer: {issuer}\n"
        f"    audience: {audience}"
    )


def _write_jwks(public: ec.EllipticCurvePublicKey, path: Path) -> str:
    """Publish `public` as the one key of the JWKS at `path`; its kid is the thumbprint."""
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
    kid = _thumbprint(jwk)
    jwk.update(kid=kid, use="sig", alg="ES256")
    text = json.dumps({"keys": [jwk]}, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(text)
        scratch.replace(path)
        print(f"wrote JWKS {path}", file=sys.stderr)
    return kid


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint of an EC key: stable, so the kid survives re-runs."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
