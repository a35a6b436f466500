"""The state lifecycle of a customer bill: which `state` may follow which.

The default keeps a bill moving forward and never out of `settled`; an operator
replaces it under `lifecycle.customerBill` in the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import ApiError

BILL_STATES = ("new", "onHold", "validated", "sent", "settled", "partiallyPaid")

DEFAULT_BILL_TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "new": ("onHold", "validated", "sent"),
    "onHold": ("new", "validated", "sent"),
    "validated": ("onHold", "sent"),
    "sent": ("onHold", "partiallyPaid", "settled"),
    "partiallyPaid": ("onHold", "settled"),
    "settled": (),
}


class Lifecycle:
    def __init__(self, transitions: Mapping[str, tuple[str, ...]]) -> None:
        self.transitions = {state: frozenset(nexts) for state, nexts in transitions.items()}

    def check(self, old: str | None, new: str) -> None:
        """Raise 409 unless `old -> new` is allowed; staying in a state always is."""
        if old == new:
            return
        allowed = self.transitions.get(old or "", frozenset())
        if new not in allowed:
            choices = ", ".join(sorted(allowed)) or "none"
            raise ApiError(
                409,
                "State transition not allowed",
                f"A bill in state {old!r} cannot become {new!r} (allowed: {choices})",
                code="INVALID_STATE_TRANSITION",
            )
