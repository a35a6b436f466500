"""Signed test tokens: real keys made in the tests, their public halves as JWKs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/realms/billing"


@dataclass
class Signer:
    """A private key with its kid and algorithm; its public half as a JWK."""

    key: Any
    alg: str
    kid: str
    jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        self.jwk = {**jwk, "kid": self.kid}

    def token(
        self, kid: str | None = "", headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": "tmf678",
            "sub": "alice",
            "client_id": "billing-portal",
            "scope": "tmf678:read",
            "iat": now,
            "exp": now + 300,
            "billing_accounts": ["BA-000003", "BA-000010"],
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"kid": self.kid if kid == "" else kid, **(headers or {})}
        if head["kid"] is None:
            del head["kid"]
        return jwt.encode(body, self.key, algorithm=self.alg, headers=head)
