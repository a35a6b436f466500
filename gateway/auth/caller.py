"""Who is calling: the verified token's subject, client, scopes and billing accounts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller (or the anonymous demo caller, when auth is off)."""

    subject: str
    client_id: str | None
    scopes: frozenset[str]
    #: The billing accounts the caller may see; None means every account.
    accounts: frozenset[str] | None
    anonymous: bool = False

    #: Auth disabled: every operation, every account.
    ANONYMOUS: ClassVar[Caller]

    def allows_account(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts

    def allows_scope(self, scope: str) -> bool:
        """Whether the caller holds `scope` (the anonymous caller holds them all)."""
        return self.anonymous or scope in self.scopes


Caller.ANONYMOUS = Caller(
    subject="anonymous",
    client_id=None,
    scopes=frozenset(
        {"tmf678:read", "tmf678:write", "tmf678:order", "tmf678:hub", "tmf678:all-accounts"}
    ),
    accounts=None,
    anonymous=True,
)
