"""A JWKS parsed once into verification keys, one PyJWK per (kid, algorithm) it may verify.

Binding each key to the algorithms its type fits, here and not per request, is what
refuses algorithm confusion: an RSA key is never offered to HS256 (or to ES256), and a
token can only be checked with a key under an algorithm from the configured allowlist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = structlog.get_logger("gateway.auth")

#: The asymmetric JWS algorithms, with the key type (and EC curves) each one verifies with.
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
ASYMMETRIC_ALGORITHMS = frozenset(_KEY_TYPES)


class JwksError(ValueError):
    """A JWKS document is not a JSON object with a `keys` list."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The usable keys of one JWKS: kid (None for a key without one) -> algorithm -> key."""

    keys: Mapping[str | None, Mapping[str, PyJWK]] = field(default_factory=dict)

    def lookup(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for a token's `kid` and `alg`; a token without `kid` needs a one-key set."""
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values())).get(alg)
        by_alg = self.keys.get(kid)
        return None if by_alg is None else by_alg.get(alg)

    def knows(self, kid: str | None) -> bool:
        return kid in self.keys or (kid is None and len(self.keys) == 1)

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(document: object, algorithms: Iterable[str]) -> KeyRing:
    """The verification keys of a JWKS for the allowed `algorithms`.

    Keys that cannot serve (symmetric, private, encryption-only, too short, of an
    algorithm not allowed) are left out with a warning naming only their `kid`.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("a JWKS must be a JSON object with a 'keys' list")
    allowed = [alg for alg in algorithms if alg in _KEY_TYPES]
    ring: dict[str | None, dict[str, PyJWK]] = {}
    for jwk in document["keys"]:
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if kid is not None and not isinstance(kid, str):
            log.warning("jwks_key_skipped", reason="kid is not a string")
            continue
        keys = _verification_keys(jwk, allowed, kid)
        if not keys:
            continue
        if kid in ring:
            log.warning("jwks_key_skipped", kid=kid, reason="duplicate kid")
            continue
        ring[kid] = keys
    if None in ring and len(ring) > 1:
        # A token without `kid` could not tell such a key from the others: unusable.
        log.warning("jwks_key_skipped", reason="a key without kid among several keys")
        del ring[None]
    return KeyRing(ring)


def _verification_keys(jwk: object, allowed: list[str], kid: str | None) -> dict[str, PyJWK]:
    if not isinstance(jwk, dict):
        log.warning("jwks_key_skipped", reason="not a JSON object")
        return {}
    reason = _unusable(jwk)
    if reason:
        log.warning("jwks_key_skipped", kid=kid, reason=reason)
        return {}
    declared = jwk.get("alg")
    keys: dict[str, PyJWK] = {}
    for alg in allowed:
        kty, curves = _KEY_TYPES[alg]
        if jwk.get("kty") != kty or (curves is not None and jwk.get("crv") not in curves):
            continue
        if declared is not None and declared != alg:
            continue
        try:
            key = PyJWK(jwk, algorithm=alg)
        except PyJWTError as exc:
            log.warning("jwks_key_skipped", kid=kid, reason=type(exc).__name__)
            return {}
        short = key.Algorithm.check_key_length(key.key)
        if short:
            log.warning("jwks_key_skipped", kid=kid, reason="key too short")
            return {}
        keys[alg] = key
    if not keys:
        log.warning("jwks_key_skipped", kid=kid, reason="fits no allowed algorithm")
    return keys


def _unusable(jwk: dict[str, Any]) -> str | None:
    if jwk.get("kty") == "oct":
        return "symmetric key"
    if "d" in jwk:
        return "private key material"
    if jwk.get("use", "sig") != "sig":
        return "not a signing key"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops without verify"
    return None
