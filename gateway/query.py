"""TMF630 query parsing: the raw query string to a neutral, typed `Query`.

Filters: `attr=v`, dotted paths (`billingAccount.id=A1`), operator suffixes
(`.eq .ne .gt .gte .lt .lte .regex`) or symbols (`>`, `>=`, `<`, `<=`, `=~`, `!=`),
URL-encoded or not. OR by comma (`state=new,sent`) or by repeating a term; AND
across terms. `ne` with several values means "none of them". Values are typed from
the OAS: date-times as instants (date-only is midnight UTC, no zone is UTC),
numbers as `Decimal`, booleans as `bool`; `eq`/`ne` on an OAS enum (`state`) take only
its values. Regexes use RE2, which runs in linear
time, so no pattern can stall a request. Numbers are refused beyond 40 integer digits:
turning `1E999990` into the integer a back end compares would take a minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote_plus

import re2

from gateway.errors import bad_request, clip
from gateway.limits import current_limits
from gateway.oas import AttributeTypes

RESERVED = frozenset({"fields", "sort", "offset", "limit"})
OPERATORS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "regex"})
_SYMBOLS = {">=": "gte", "<=": "lte", "=~": "regex", "!=": "ne", ">": "gt", "<": "lt", "=": "eq"}
_TERM = re.compile(r"^(?P<attr>[^=<>!~]+?)(?P<sym>>=|<=|=~|!=|>|<|=)(?P<value>.*)$", re.DOTALL)
_SPACE_FOR_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")
_MAX_REGEX = 256
_MAX_WINDOW = 1_000_000_000
#: Digits before the decimal point a number filter value may have (amounts, ids: < 20).
MAX_NUMBER_DIGITS = 40

_re2_options = re2.Options()
_re2_options.log_errors = False
_re2_options.max_mem = 4 << 20


@dataclass(frozen=True, slots=True)
class Filter:
    """`path op value` for any of `values` (for `ne`: for none of them)."""

    path: str
    op: str
    values: tuple[Any, ...]
    param: str


@dataclass(frozen=True, slots=True)
class SortTerm:
    path: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Query:
    filters: tuple[Filter, ...] = ()
    sort: tuple[SortTerm, ...] = ()
    fields: tuple[str, ...] | None = None
    offset: int = 0
    limit: int = 20


def parse_query(
    query_string: str,
    attributes: AttributeTypes,
    *,
    default_limit: int,
    max_limit: int,
) -> Query:
    """Parse a raw query string; any mistake raises a 400 `ApiError` naming the parameter.

    A query longer than a URL may be (a hub's `query`, which comes in a body) is refused:
    its terms, values and regexes would otherwise cost without bound, once per event.
    """
    longest = current_limits().url_bytes
    if len(query_string) > longest:
        raise bad_request(
            "Query too long", f"A query takes at most {longest} characters, not {len(query_string)}"
        )
    reserved: dict[str, str] = {}
    grouped: dict[tuple[str, str], list[Any]] = {}
    params: dict[tuple[str, str], str] = {}
    for part in query_string.split("&"):
        if not part:
            continue
        text = unquote_plus(part)
        match = _TERM.match(text)
        if not match:
            raise bad_request(
                "Invalid query parameter", f"Cannot read {clip(text)!r} as attr=value"
            )
        attr, sym, value = match["attr"].strip(), match["sym"], match["value"]
        text = clip(text)  # from here on, only quoted in messages
        if attr in RESERVED:
            if sym != "=":
                raise bad_request("Invalid query parameter", f"{attr!r} takes '=' only")
            if attr in reserved:
                raise bad_request("Invalid query parameter", f"{attr!r} is given more than once")
            reserved[attr] = value
            continue
        op = _SYMBOLS[sym]
        head, _, suffix = attr.rpartition(".")
        if head and suffix in OPERATORS:
            if sym != "=":
                raise bad_request("Invalid filter", f"{text!r} mixes '.{suffix}' and {sym!r}")
            attr, op = head, suffix
        values = _typed_values(attr, op, value, attributes, text)
        grouped.setdefault((attr, op), []).extend(values)
        params.setdefault((attr, op), text)
    filters = tuple(
        Filter(path, op, tuple(values), params[(path, op)])
        for (path, op), values in grouped.items()
    )
    return Query(
        filters=filters,
        sort=_parse_sort(reserved.get("sort"), attributes),
        fields=_parse_fields(reserved.get("fields"), attributes),
        offset=_parse_int("offset", reserved.get("offset"), 0),
        limit=min(_parse_int("limit", reserved.get("limit"), default_limit), max_limit),
    )


def parse_fields(raw: str | None, attributes: AttributeTypes) -> tuple[str, ...] | None:
    """The `fields` parameter alone, for single-resource reads."""
    return _parse_fields(raw, attributes)


def _typed_values(
    attr: str, op: str, raw: str, attributes: AttributeTypes, param: str
) -> list[Any]:
    type_ = attributes.types.get(attr)
    if type_ is None:
        head, _, tail = attr.rpartition(".")
        if head in attributes.types and attributes.types[head] != "object":
            raise bad_request(
                "Unknown operator",
                f"{param!r}: {clip(tail)!r} is not an operator"
                f" (use {', '.join(sorted(OPERATORS))})",
            )
        raise bad_request(
            "Unknown attribute", f"{param!r}: {clip(attr)!r} is not an attribute here"
        )
    if type_ == "object":
        raise bad_request(
            "Invalid filter", f"{param!r}: filter on a leaf such as '{clip(attr)}.id'"
        )
    if op == "regex":
        if type_ != "string":
            raise bad_request("Invalid filter", f"{param!r}: regex applies to text attributes")
        return [compile_regex(raw, param)]
    parts = raw.split(",")
    allowed = attributes.enums.get(attr)
    if allowed is not None and op in ("eq", "ne"):
        for part in parts:
            if part not in allowed:
                raise bad_request(
                    "Invalid filter value",
                    f"{param!r}: {clip(part)!r} is not a value of {attr}"
                    f" (one of {', '.join(allowed)})",
                )
    return [_typed(type_, part, op, param) for part in parts]


def compile_regex(pattern: str, param: str) -> Any:
    if len(pattern) > _MAX_REGEX:
        raise bad_request("Invalid regex", f"{param!r}: longer than {_MAX_REGEX} characters")
    try:
        return re2.compile(pattern, _re2_options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise bad_request("Invalid regex", f"{param!r}: {detail}") from None


def _typed(type_: str, text: str, op: str, param: str) -> Any:
    if type_ in ("number", "integer"):
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise bad_request(
                "Invalid filter value", f"{param!r}: {clip(text)!r} is not a number"
            ) from None
        if not number.is_finite():
            raise bad_request("Invalid filter value", f"{param!r}: {clip(text)!r} is not a number")
        if number and number.adjusted() >= MAX_NUMBER_DIGITS:
            raise bad_request(
                "Invalid filter value",
                f"{param!r}: out of range (at most {MAX_NUMBER_DIGITS} digits before the point)",
            )
        return number
    if type_ == "boolean":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise bad_request("Invalid filter value", f"{param!r}: use true or false")
        if op not in ("eq", "ne"):
            raise bad_request("Invalid filter", f"{param!r}: booleans take eq or ne only")
        return lowered == "true"
    if type_ == "date-time":
        instant = parse_instant(text)
        if instant is None:
            raise bad_request(
                "Invalid filter value",
                f"{param!r}: {clip(text)!r} is not a date-time"
                " (use 2024-01-31 or 2024-01-31T10:00:00Z)",
            )
        return instant
    return text


def parse_instant(text: str) -> datetime | None:
    """An RFC 3339 date-time, or a date (midnight UTC); no zone means UTC."""
    text = _SPACE_FOR_PLUS.sub(r"\1+\2", text.strip())
    if not text or not text[:4].isdigit():
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_sort(raw: str | None, attributes: AttributeTypes) -> tuple[SortTerm, ...]:
    if raw is None:
        return ()
    terms = []
    for item in raw.split(","):
        item = item.strip()
        descending = item.startswith("-")
        path = item.lstrip("+-").strip()
        type_ = attributes.types.get(path)
        if type_ is None:
            raise bad_request("Invalid sort", f"sort: {clip(path)!r} is not an attribute here")
        if type_ == "object" or path in attributes.in_array:
            raise bad_request("Invalid sort", f"sort: {clip(path)!r} is not a single value")
        terms.append(SortTerm(path, descending))
    return tuple(terms)


def _parse_fields(raw: str | None, attributes: AttributeTypes) -> tuple[str, ...] | None:
    if raw is None:
        return None
    paths = tuple(p.strip() for p in raw.split(",") if p.strip())
    for path in paths:
        if path not in attributes.types:
            raise bad_request("Invalid fields", f"fields: {clip(path)!r} is not an attribute here")
    return paths


def _parse_int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(
            f"Invalid {name}", f"{name} must be a whole number, not {clip(raw)!r}"
        ) from None
    if value < 0:
        raise bad_request(f"Invalid {name}", f"{name} must not be negative")
    if value > _MAX_WINDOW:
        raise bad_request(f"Invalid {name}", f"{name} must not exceed {_MAX_WINDOW}")
    return value
