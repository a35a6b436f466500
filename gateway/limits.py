"""How much one request may make the gateway read, hold or do.

Without bounds one caller can stall everyone (a 20 MB JSON Patch of 400k operations held
the event loop for 13 s) or crash a route (JSON nested 990 deep exhausts Python's
recursion). The HTTP guard (gateway/guards.py) enforces the request-level numbers and
makes its `Limits` the current ones for the request, so the body parsers deep inside
(gateway/patch.py) apply the same configuration without it being passed down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated

from pydantic import Field

from adapters.base import StrictModel

Positive = Annotated[int, Field(gt=0)]


class Limits(StrictModel):
    """The `limits:` section of the configuration; each bound has a safe default."""

    #: Bytes of a request body (413 beyond), checked on Content-Length and while reading.
    body_bytes: Positive = 1 << 20
    #: Bytes of the raw path and query string together (414 beyond).
    url_bytes: Positive = 8 << 10
    #: Characters of one path segment, e.g. an id (404 beyond: no resource has such an id).
    segment_chars: Positive = 256
    #: Bytes of all request header names and values together (431 beyond).
    header_bytes: Positive = 16 << 10
    #: Number of request header lines (431 beyond).
    header_count: Positive = 100
    #: Nesting of arrays and objects in any JSON body (400 beyond).
    json_depth: Positive = 32
    #: JSON values (nodes) in any body (400 beyond): schema validation and its messages
    #: cost per value, and a request of this API needs a few thousand at most.
    json_nodes: Positive = 20_000
    #: Operations in one JSON Patch, before and after selector expansion (400 beyond).
    patch_operations: Positive = 1000
    #: JSON values (nodes) the `copy` operations of one patch may duplicate (400 beyond):
    #: each copy can double the document, 2^30 times its size after 30 operations.
    patch_copied_nodes: Positive = 100_000


DEFAULT_LIMITS = Limits()

_current: ContextVar[Limits] = ContextVar("gateway_limits", default=DEFAULT_LIMITS)


def current_limits() -> Limits:
    """The limits of the request being served (the defaults outside any request)."""
    return _current.get()


@contextmanager
def limits_in_effect(limits: Limits) -> Iterator[None]:
    """Make `limits` the current ones for the code run inside (one request)."""
    token = _current.set(limits)
    try:
        yield
    finally:
        _current.reset(token)
