"""Which back ends a federated list may leave out, told from the list down to its routes.

`TolerantFederatedReader` (gateway/partial.py) opens a `tolerating()` block around its
fan-out; each route's `ResourceReader.list` that fails because its back end is down asks
`leave_out`, and answers an empty page when it may. The routes run in tasks that copy
the context, so they all report to the same `Outcomes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.errors import ApiError


@dataclass(slots=True)
class Outcomes:
    answered: int = 0
    #: (back end, its error) for each route left out.
    down: list[tuple[str, ApiError]] = field(default_factory=list)


_collecting: ContextVar[Outcomes | None] = ContextVar("tolerated_outcomes", default=None)


@contextmanager
def tolerating() -> Iterator[Outcomes]:
    outcomes = Outcomes()
    token = _collecting.set(outcomes)
    try:
        yield outcomes
    finally:
        _collecting.reset(token)


def leave_out(backend: str, error: ApiError) -> bool:
    """Whether a list may go on without this back end (and it is noted as left out)."""
    outcomes = _collecting.get()
    if outcomes is None:
        return False
    outcomes.down.append((backend, error))
    return True


def answered() -> None:
    outcomes = _collecting.get()
    if outcomes is not None:
        outcomes.answered += 1
