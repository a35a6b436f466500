"""Declared REST calls, alone or in steps: what actions and per-state writes send.

One call:

    {method: POST, path: "/v1/invoices/{invoice}/finalize",
     body: {customer: "{account_id}"}, encoding: form,        # or json (the default)
     idempotency_key: "{request_id}-finalize",                 # sent as Idempotency-Key
     result: id, carry: {invoice: id},                        # values for the next step
     reject: {"400": nothing to bill}}

Steps are a list of calls run in order; each step's `carry` takes values from its reply
(dotted paths) under new names for the steps after it (create, then finalize the
created invoice). With an idempotency key on every step, running the steps again for
the same request repeats nothing: the API answers each retried call as the first time.

A failure carries the back end's own message (the `error_message` path of the back
end's error body): the whole of it in the log, shortened for the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

from adapters.base import BackendError, SourceSpecError, http_failure
from adapters.rest_paging import at_path

#: How much of a back end's own message reaches the caller.
SUMMARY_CHARS = 160
_CALL_KEYS = {
    "method",
    "path",
    "body",
    "encoding",
    "idempotency_key",
    "result",
    "carry",
    "reject",
}


def _fill(template: str, values: Mapping[str, Any], place: str) -> str:
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise BackendError(f"{place}: no value for {exc} in {template!r}") from None


@dataclass(frozen=True, slots=True)
class Call:
    """One declared call, checked at start-up."""

    method: str
    path: str
    body: Mapping[str, str] | None = None
    encoding: Literal["json", "form"] = "json"
    idempotency_key: str | None = None
    result: str | None = None
    carry: Mapping[str, str] = field(default_factory=dict)
    reject: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Any, place: str) -> Call:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("path"), str):
            raise SourceSpecError(place, "a call is {method, path, body, encoding, ...}")
        unknown = set(spec) - _CALL_KEYS
        if unknown:
            raise SourceSpecError(place, f"unknown key(s) {sorted(unknown)}")
        encoding = spec.get("encoding", "json")
        if encoding not in ("json", "form"):
            raise SourceSpecError(place, "encoding is json or form")
        body = spec.get("body")
        if body is not None and not isinstance(body, Mapping):
            raise SourceSpecError(place, "body is a table of field: template")
        carry = spec.get("carry") or {}
        if not isinstance(carry, Mapping):
            raise SourceSpecError(place, "carry is a table of name: path in the reply")
        return cls(
            method=str(spec.get("method", "POST")).upper(),
            path=spec["path"],
            body={str(k): str(v) for k, v in body.items()} if body is not None else None,
            encoding=encoding,
            idempotency_key=spec.get("idempotency_key"),
            result=spec.get("result"),
            carry={str(k): str(v) for k, v in carry.items()},
            reject={str(k): str(v) for k, v in (spec.get("reject") or {}).items()},
        )

    def request(self, values: Mapping[str, Any], path: str) -> tuple[str, str, dict[str, Any]]:
        """Method, path and httpx keyword arguments for this call with `values` filled in."""
        kwargs: dict[str, Any] = {}
        headers: dict[str, str] = {}
        body = {k: _fill(v, values, self.path) for k, v in (self.body or {}).items()}
        if self.encoding == "form" and (body or self.method in ("POST", "PUT", "PATCH")):
            # Encoded here: an empty form is still a form (httpx would send no type).
            kwargs["content"] = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif self.body is not None:
            kwargs["json"] = body
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = _fill(self.idempotency_key, values, self.path)
        if headers:
            kwargs["headers"] = headers
        return self.method, path, kwargs


def steps_from_spec(spec: Any, place: str) -> tuple[Call, ...]:
    """One call, or a list of them run in order."""
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if not spec:
            raise SourceSpecError(place, "give at least one step")
        return tuple(Call.from_spec(step, f"{place}[{n}]") for n, step in enumerate(spec))
    return (Call.from_spec(spec, place),)


def backend_message(reply: httpx.Response, message_at: str | None) -> str | None:
    """The back end's own text for a failure (at `message_at` in its JSON error body)."""
    if message_at is None:
        return None
    try:
        text = at_path(reply.json(), message_at)
    except ValueError:
        return None
    return text if isinstance(text, str) and text else None


def reply_failure(
    backend: str, what: str, reply: httpx.Response, message_at: str | None
) -> BackendError:
    """An unexpected status as a BackendError: the back end's message in full for the log,
    shortened (`summary`) for the caller."""
    error = http_failure(backend, what, reply.status_code, reply.headers.get("retry-after"))
    said = backend_message(reply, message_at)
    if said is not None:
        error.reason += f": {said}"
        error.args = (error.reason,)
        short = said if len(said) <= SUMMARY_CHARS else said[: SUMMARY_CHARS - 3] + "..."
        error.summary = f"{reply.status_code} {short}"  # type: ignore[attr-defined]
    return error
