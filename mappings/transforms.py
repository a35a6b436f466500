"""Value transforms between back-end raw values and TMF values, both directions.

Forward (`to_tmf`) turns a raw column value into what the API returns. Reverse
(`condition`) turns a TMF filter term into a back-end `Predicate` on the raw column,
or returns None when the back end cannot be asked and the gateway must filter itself.

Filter values arrive typed (see gateway/query.py): `str`, `Decimal`, `bool`, or an
aware `datetime`. `compare_value` gives the same typed view of a forward value, so
the gateway's own (residual) filtering and the pushed-down one agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull, Predicate


class TransformArgError(ValueError):
    """The arguments given to a transform in a mapping spec are wrong."""


class Transform:
    """Identity: the raw value is the TMF value (text or number columns)."""

    name = "identity"
    #: Raw order equals TMF order, so range filters and sorts can be pushed down.
    ordered = True

    def to_tmf(self, raw: Any) -> Any:
        return raw

    def converter(self) -> Callable[[Any], Any]:
        """What compiled mappings call per value: `to_tmf`, or a faster callable equal to it."""
        return self.to_tmf

    def floor_raw(self, value: Any) -> Any:
        """The greatest raw value whose TMF value is <= `value` (for range push-down)."""
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        return value

    def typed(self, raw: Any) -> Any:
        """The TMF value of `raw` in the comparable form filter values take."""
        return _typed(self.to_tmf(raw))

    def to_raw(self, value: Any) -> Any:
        """The raw value to write for a TMF value (writes); ValueError when there is none."""
        return value

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        if not self.ordered or op not in _RANGE_OPS:
            return None
        try:
            raw = self.floor_raw(value)
        except (TypeError, ValueError, ArithmeticError):
            return None
        exact = self.typed(raw) == value
        return _ordered_condition(column, op, raw, exact)


_RANGE_OPS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte"})


def _typed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    return value


def _ordered_condition(column: str, op: str, raw: Any, exact: bool) -> Predicate:
    """Range push-down for a monotone transform that truncates (dates, minor units).

    `raw` is the floor of the wanted value; `exact` says the floor maps back to it.
    """
    if op == "eq":
        return Compare(column, "eq", raw) if exact else MATCH_NONE
    if op == "ne":
        # A record without the attribute is "not equal" too, as in the residual filter.
        return AnyOf((Compare(column, "ne", raw), IsNull(column))) if exact else MATCH_ALL
    if op == "gt":
        return Compare(column, "gt", raw)
    if op == "gte":
        return Compare(column, "gte" if exact else "gt", raw)
    if op == "lt":
        return Compare(column, "lt" if exact else "lte", raw)
    return Compare(column, "lte", raw)  # lte


class IntegerText(Transform):
    """An integer key shown as a string id ("42"); only equality can be pushed down."""

    name = "integer_text"
    ordered = False

    def to_tmf(self, raw: Any) -> str:
        return str(int(raw))

    def typed(self, raw: Any) -> Any:
        return self.to_tmf(raw)

    def to_raw(self, value: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise ValueError(f"{value!r} is not an id of this back end (digits expected)")
        return int(value)

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        if op not in ("eq", "ne"):
            return None
        canonical = isinstance(value, str) and value.isascii() and value.isdigit()
        canonical = canonical and (value == "0" or not value.startswith("0"))
        if not canonical:
            return MATCH_NONE if op == "eq" else MATCH_ALL
        if op == "eq":
            return Compare(column, "eq", int(value))
        return AnyOf((Compare(column, "ne", int(value)), IsNull(column)))


_ORDERED_DATE_FORMAT = re.compile(r"^%Y[^%]*(%m[^%]*(%d[^%]*(%H[^%]*(%M[^%]*(%S[^%]*)?)?)?)?)?$")


class DateTime(Transform):
    """A legacy date/time string in a given format and time zone, shown as RFC 3339."""

    name = "date"

    def __init__(self, fmt: str, zone: str) -> None:
        try:
            self.zone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise TransformArgError(f"unknown time zone {zone!r}") from exc
        self.fmt = fmt
        try:
            datetime(2024, 1, 31, 12, 30, 15).strftime(fmt)
        except ValueError as exc:
            raise TransformArgError(f"invalid date format {fmt!r}") from exc
        # Zero-padded fields from year down, compared as text, sort like the instants do.
        self.ordered = bool(_ORDERED_DATE_FORMAT.match(fmt))
        # Legacy tables repeat the same few thousand dates: parse and format each once.
        self._parse = lru_cache(maxsize=16384)(self._parse_uncached)
        self._cached_to_tmf = lru_cache(maxsize=16384)(self.to_tmf)

    def _parse_uncached(self, raw: str) -> datetime:
        return datetime.strptime(raw, self.fmt).replace(tzinfo=self.zone)

    def to_tmf(self, raw: Any) -> str:
        return self._parse(raw).isoformat()

    def converter(self) -> Callable[[Any], str]:
        # Mappings call the cache of to_tmf itself, with no Python frame around it.
        return self._cached_to_tmf

    def typed(self, raw: Any) -> datetime:
        return self._parse(raw)

    def floor_raw(self, value: Any) -> str:
        if not isinstance(value, datetime):
            raise TypeError("date filter needs a date-time")
        return value.astimezone(self.zone).strftime(self.fmt)

    def to_raw(self, value: Any) -> str:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return self.floor_raw(value)


class MinorUnits(Transform):
    """Integer minor units (cents) shown as a decimal amount (12.34)."""

    name = "minor_units"

    def __init__(self, digits: int) -> None:
        if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 6:
            raise TransformArgError("minor_units takes the number of decimal digits (0 to 6)")
        self.scale = Decimal(10) ** digits
        self.divisor: int = 10**digits

    def to_tmf(self, raw: Any) -> float:
        # int / int is correctly rounded, as float(Decimal) of the exact quotient is.
        return int(raw) / self.divisor

    def typed(self, raw: Any) -> Decimal:
        return Decimal(int(raw)) / self.scale

    def floor_raw(self, value: Any) -> int:
        return int((Decimal(value) * self.scale).to_integral_value(rounding=ROUND_FLOOR))

    def to_raw(self, value: Any) -> int:
        scaled = Decimal(str(value)) * self.scale
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value!r} has more decimals than the back end keeps")
        return int(scaled)


class DecimalText(Transform):
    """A decimal number stored as text ("19.00"); text order is not numeric order."""

    name = "decimal"
    ordered = False

    def to_tmf(self, raw: Any) -> float:
        try:
            return float(Decimal(str(raw).strip()))
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal number: {raw!r}") from exc


class Enum(Transform):
    """A code table (status letters, type codes); several codes may share one value."""

    name = "enum"
    ordered = False

    def __init__(self, table: Mapping[Any, Any]) -> None:
        if not isinstance(table, Mapping) or not table:
            raise TransformArgError("enum takes a non-empty table of code: value")
        self.table = dict(table)
        self.codes_of: dict[Any, list[Any]] = {}
        for code, value in self.table.items():
            self.codes_of.setdefault(_typed(value), []).append(code)

    def to_tmf(self, raw: Any) -> Any:
        try:
            return self.table[raw]
        except KeyError:
            raise ValueError(f"unknown code {raw!r}") from None
        except TypeError:
            raise ValueError(f"unusable code {raw!r}") from None

    def to_raw(self, value: Any) -> Any:
        """The first code of the table for the value (codes are written as listed)."""
        codes = self.codes_of.get(_typed(value))
        if not codes:
            raise ValueError(f"{value!r} has no code in this back end")
        return codes[0]

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        if op not in ("eq", "ne"):
            return None
        codes = self.codes_of.get(value, [])
        if op == "eq":
            return AnyOf(tuple(Compare(column, "eq", code) for code in codes))
        if not codes:
            return MATCH_ALL
        terms = [Compare(column, "ne", code) for code in codes]
        return AnyOf((_all(terms), IsNull(column)))


class Json(Transform):
    """A JSON document kept as text (a sub-object stored whole); read only, never pushed."""

    name = "json"
    ordered = False

    def to_tmf(self, raw: Any) -> Any:
        return orjson.loads(raw)

    def to_raw(self, value: Any) -> str:
        return orjson.dumps(value).decode()


def _all(terms: Sequence[Predicate]) -> Predicate:
    return terms[0] if len(terms) == 1 else AllOf(tuple(terms))


def build_transform(spec: Any) -> Transform:
    """A transform from its spec: a name, or a one-key mapping `{name: arguments}`."""
    if spec is None:
        return Transform()
    if isinstance(spec, str):
        name, args = spec, None
    elif isinstance(spec, Mapping) and len(spec) == 1:
        ((name, args),) = spec.items()
    else:
        raise TransformArgError("a transform is a name or a one-key mapping {name: arguments}")
    factory = TRANSFORMS.get(name)
    if factory is None:
        raise TransformArgError(
            f"unknown transform {name!r} (known: {', '.join(sorted(TRANSFORMS))})"
        )
    return factory(args)


def _no_args(cls: type[Transform]) -> Callable[[Any], Transform]:
    def make(args: Any) -> Transform:
        if args not in (None, {}):
            raise TransformArgError(f"{cls.name} takes no arguments")
        return cls()

    return make


def _date(args: Any) -> Transform:
    if not isinstance(args, Mapping) or set(args) - {"format", "zone"} or "format" not in args:
        raise TransformArgError("date takes {format: strftime pattern, zone: IANA zone}")
    return DateTime(str(args["format"]), str(args.get("zone", "UTC")))


TRANSFORMS: dict[str, Callable[[Any], Transform]] = {
    "identity": _no_args(Transform),
    "integer_text": _no_args(IntegerText),
    "decimal": _no_args(DecimalText),
    "date": _date,
    "minor_units": lambda args: MinorUnits(args),
    "enum": lambda args: Enum(args),
    "json": _no_args(Json),
}
