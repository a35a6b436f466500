"""Caller authentication: OAuth2 bearer JWTs checked against the issuer's JWKS."""

from gateway.auth.authenticator import AuthConfigError, Authenticator
from gateway.auth.caller import Caller
from gateway.auth.settings import AuthScopes, AuthSettings

__all__ = ["AuthConfigError", "AuthScopes", "AuthSettings", "Authenticator", "Caller"]
