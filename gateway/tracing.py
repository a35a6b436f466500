"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the caller's trace, carried on.

A request's `traceparent` is accepted when it is well formed; otherwise (absent, or any
field malformed) the gateway starts a new trace, as the recommendation says. Either way
the gateway is one hop of the trace: it gives its back-end calls a `traceparent` with
the same trace id and a span id of its own, the caller's sampled flag, and `tracestate`
passed on unchanged (only with a valid parent, and only if short), plus the request id.
Those go into `adapters.base.OUTGOING_HEADERS` for the REST and SOAP adapters to send.

No spans are exported (OpenTelemetry is not wired in): the trace id is in every log line
of the request, which is what joins the gateway's logs to the caller's and back ends'.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

#: version-traceid-parentid-flags; a later version may append `-more` (kept compatible).
_TRACEPARENT = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?$"
)
#: Printable ASCII: list members are `key=value`, values 0x20-0x7e but `,` and `=`.
_TRACESTATE = re.compile(r"^[\x20-\x7e]*$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: The longest `tracestate` passed on (the recommendation's 32 members, bounded).
MAX_TRACESTATE = 512


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The trace this request belongs to, and the gateway's span in it."""

    trace_id: str
    #: The gateway's own span id: the parent of its back-end calls.
    span_id: str
    #: The caller's span id (None when the gateway started the trace).
    parent_id: str | None
    flags: str
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """The `traceparent` the gateway's back-end calls carry."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid `traceparent`, else None."""
    if not value:
        return None
    found = _TRACEPARENT.match(value.strip())
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def trace_context(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """Join the caller's trace, or start one when its `traceparent` is absent or invalid."""
    span_id = secrets.token_hex(8)
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        # A new trace: sampled flag left off (the gateway records no spans itself).
        return TraceContext(secrets.token_hex(16), span_id, None, "00")
    trace_id, parent_id, flags = parsed
    state = tracestate.strip() if tracestate else None
    if state and (len(state) > MAX_TRACESTATE or not _TRACESTATE.match(state)):
        state = None  # passed on only as the recommendation writes it
    # Only the sampled bit is defined for version 00; other bits are not passed on.
    sampled = "01" if int(flags, 16) & 1 else "00"
    return TraceContext(trace_id, span_id, parent_id, sampled, state or None)


def outgoing_headers(context: TraceContext, request_id: str) -> dict[str, str]:
    """What each back-end HTTP call of the request carries."""
    headers = {"traceparent": context.traceparent, "x-request-id": request_id}
    if context.tracestate:
        headers["tracestate"] = context.tracestate
    return headers
