"""Value transforms between back-end raw values and TMF values, both directions.

Forward (`to_tmf`) turns a raw column value into what the API returns. Reverse
(`condition`) turns a TMF filter term into a back-end `Predicate` on the raw column,
or returns None when the back end cannot be asked and the gateway must filter itself.

Filter values arrive typed (see gateway/query.py): `str`, `Decimal`, `bool`, or an
aware `datetime`. `compare_value` gives the same typed view of a forward value, so
the gateway's own (residual) filtering and the pushed-down one agree.

A transform is written in a mapping without knowing the column; `bind` then fits it to
the column's kind when the back end reports one (a SQL column's reflected type): a
native DATE is read as a date, a DECIMAL as an exact number, and a transform that
cannot read the column (a text date format on a DATE) is refused at start-up.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, tzinfo
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull, Predicate
from adapters.kinds import KIND_NAMES, Kind

#: What a transform's TMF values are, in the OAS's words ("any": cannot be said).
JSON_TYPES: Final = frozenset({"string", "date-time", "number", "integer", "boolean", "any"})
_JSON_TYPE_OF_KIND: Final[Mapping[str | None, str]] = {
    None: "any",
    "text": "string",
    "integer": "integer",
    "float": "number",
    "boolean": "boolean",
    "other": "any",
}


class TransformArgError(ValueError):
    """The arguments given to a transform in a mapping spec are wrong."""


class Transform:
    """Identity: the raw value is the TMF value (text or number columns)."""

    name = "identity"
    #: Raw order equals TMF order, so range filters and sorts can be pushed down.
    ordered = True
    #: The JSON type of the TMF values (one of `JSON_TYPES`), for the start-up OAS check.
    json_type = "any"

    def to_tmf(self, raw: Any) -> Any:
        return raw

    def converter(self) -> Callable[[Any], Any]:
        """What compiled mappings call per value: `to_tmf`, or a faster callable equal to it."""
        return self.to_tmf

    def memo(self) -> Memo | None:
        """Where compiled mappings look values up, for a transform worth caching (dates)."""
        return None

    def bind(self, kind: Kind | None) -> Transform:
        """This transform fitted to a column of `kind` (None: unknown); refuses a misfit.

        Identity serves text, integers, floats and booleans as they are; DECIMAL as an
        exact number; UUID as its text. A DATE or DATETIME has no offset of its own:
        the `date` transform must say in which zone it is read.
        """
        if kind == "decimal":
            return NativeNumber()
        if kind == "uuid":
            return UuidText()
        if kind == "timestamptz":
            return AwareDateTime(None)
        if kind in ("date", "datetime"):
            raise TransformArgError(
                f"this {KIND_NAMES[kind]} column is served as a date-time with an offset:"
                " use transform {date: {zone: <IANA zone>}}"
            )
        if kind == "binary":
            raise TransformArgError(f"this {KIND_NAMES[kind]} column cannot be served as JSON")
        bound = copy.copy(self)
        bound.json_type = _JSON_TYPE_OF_KIND[kind]
        return bound

    def values(self) -> tuple[Any, ...] | None:
        """Every TMF value the transform can give, when that is a known few (code tables)."""
        return None

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


def _refuse(transform: Transform, kind: Kind | None, allowed: frozenset[str], hint: str) -> None:
    if kind is not None and kind != "other" and kind not in allowed:
        raise TransformArgError(
            f"{transform.name} cannot read this {KIND_NAMES[kind]} column{hint}"
        )


class IntegerText(Transform):
    """An integer key shown as a string id ("42"); only equality can be pushed down."""

    name = "integer_text"
    ordered = False
    json_type = "string"

    def to_tmf(self, raw: Any) -> str:
        return str(int(raw))

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"integer", "decimal", "text"}), "")
        return self

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


class UuidText(Transform):
    """A native UUID shown as its canonical text; equality is pushed down as a UUID."""

    name = "uuid"
    ordered = False
    json_type = "string"

    def to_tmf(self, raw: Any) -> str:
        return str(raw) if isinstance(raw, uuid.UUID) else str(uuid.UUID(str(raw)))

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"uuid", "text"}), "")
        return self

    def typed(self, raw: Any) -> Any:
        return self.to_tmf(raw)

    def to_raw(self, value: Any) -> uuid.UUID:
        return uuid.UUID(str(value))

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        if op not in ("eq", "ne"):
            return None
        try:
            parsed = uuid.UUID(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or str(parsed) != value:  # served text is canonical: none equal it
            return MATCH_NONE if op == "eq" else MATCH_ALL
        if op == "eq":
            return Compare(column, "eq", parsed)
        return AnyOf((Compare(column, "ne", parsed), IsNull(column)))


_ORDERED_DATE_FORMAT = re.compile(r"^%Y[^%]*(%m[^%]*(%d[^%]*(%H[^%]*(%M[^%]*(%S[^%]*)?)?)?)?)?$")


def _zone(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TransformArgError(f"unknown time zone {name!r}") from exc


class Memo(dict[Any, Any]):
    """`memo[raw]` is `convert(raw)`, each raw value converted once (up to `limit` kept).

    Legacy tables repeat the same few thousand dates and rates; a compiled mapping looks
    them up with one subscript, no call. Only raw values of the exact types `keeps` are
    kept, types whose equal values convert alike and equal no value of another type
    (text, dates; not numbers: 1 == True == Decimal(1); not datetimes, whose `fold` takes
    no part in equality yet may choose the offset); a value of another type is converted
    every time.
    """

    __slots__ = ("convert", "keeps", "limit")

    def __init__(
        self, convert: Callable[[Any], Any], keeps: tuple[type, ...], limit: int = 16384
    ) -> None:
        super().__init__()
        self.convert = convert
        self.keeps = frozenset(keeps)
        self.limit = limit

    def __missing__(self, raw: Any) -> Any:
        value = self.convert(raw)
        if type(raw) in self.keeps:
            if len(self) >= self.limit:
                self.clear()
            self[raw] = value
        return value


class _Instants(Transform):
    """Raw values that stand for instants, served as RFC 3339 (each value converted once).

    A subclass's `__init__` calls `_read_by` with what gives a raw value's instant.
    """

    name = "date"
    json_type = "date-time"
    _instant: Callable[[Any], datetime]

    def _read_by(self, instant: Callable[[Any], datetime], keeps: tuple[type, ...]) -> None:
        # Kept on the instance: `to_tmf` and `typed` call it with no method lookup.
        self._instant = instant
        self._memo = Memo(self.to_tmf, keeps)

    def to_tmf(self, raw: Any) -> str:
        return self._instant(raw).isoformat()

    def memo(self) -> Memo:
        return self._memo

    def typed(self, raw: Any) -> datetime:
        return self._instant(raw)

    def to_raw(self, value: Any) -> Any:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return self.floor_raw(value)


class DateTime(_Instants):
    """A legacy date/time string in a given format and time zone, shown as RFC 3339."""

    def __init__(self, fmt: str, zone: str) -> None:
        self.zone = _zone(zone)
        self.fmt = fmt
        try:
            datetime(2024, 1, 31, 12, 30, 15).strftime(fmt)
        except ValueError as exc:
            raise TransformArgError(f"invalid date format {fmt!r}") from exc
        # Zero-padded fields from year down, compared as text, sort like the instants do.
        self.ordered = bool(_ORDERED_DATE_FORMAT.match(fmt))
        # Legacy tables repeat the same few thousand dates: parse and format each once.
        self._read_by(lru_cache(maxsize=16384)(self._parse_uncached), (str,))

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(
            self,
            kind,
            frozenset({"text"}),
            f" with a text format ({self.fmt!r}): drop `format` to read it as a date",
        )
        return self

    def _parse_uncached(self, raw: str) -> datetime:
        return datetime.strptime(raw, self.fmt).replace(tzinfo=self.zone)

    def floor_raw(self, value: Any) -> str:
        if not isinstance(value, datetime):
            raise TypeError("date filter needs a date-time")
        return value.astimezone(self.zone).strftime(self.fmt)


class _NativeTime(_Instants):
    """A native date or date-time, served as RFC 3339 in `zone` (its own offset if None)."""

    #: The raw values whose conversions are kept (see `Memo`).
    keeps: tuple[type, ...] = (date,)

    def __init__(self, zone: tzinfo | None) -> None:
        self.zone = zone
        self._read_by(self.instant, self.keeps)

    def instant(self, raw: Any) -> datetime:
        raise NotImplementedError


class NativeDate(_NativeTime):
    """A DATE: midnight of that day in `zone`; filters compare as dates."""

    def __init__(self, zone: tzinfo) -> None:
        super().__init__(zone)
        self.local = zone

    def instant(self, raw: Any) -> datetime:
        if isinstance(raw, datetime):
            raw = raw.date()
        if not isinstance(raw, date):
            raise TypeError(f"not a date: {raw!r}")
        return datetime.combine(raw, time(), self.local)

    def floor_raw(self, value: Any) -> date:
        if not isinstance(value, datetime):
            raise TypeError("date filter needs a date-time")
        return value.astimezone(self.local).date()


class NaiveDateTime(_NativeTime):
    """A DATETIME/TIMESTAMP without offset: wall-clock time in `zone`."""

    def __init__(self, zone: tzinfo) -> None:
        super().__init__(zone)
        self.local = zone

    def instant(self, raw: Any) -> datetime:
        if not isinstance(raw, datetime):
            raise TypeError(f"not a date-time: {raw!r}")
        return raw.replace(tzinfo=self.local)

    def floor_raw(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError("date filter needs a date-time")
        return value.astimezone(self.local).replace(tzinfo=None, fold=0)


class AwareDateTime(_NativeTime):
    """A TIMESTAMP WITH TIME ZONE: an instant, served in `zone` (UTC when not given)."""

    def instant(self, raw: Any) -> datetime:
        if not isinstance(raw, datetime) or raw.tzinfo is None:
            raise TypeError(f"not a date-time with an offset: {raw!r}")
        return raw.astimezone(self.zone or UTC)

    def floor_raw(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError("date filter needs a date-time")
        return value


class LooseDate(_NativeTime):
    """Whatever a back end that cannot say its types gives: a date, a date-time or ISO text.

    Values without an offset are wall-clock time in `zone`. Not pushed down: a text
    column's order need not be the instants' order.
    """

    ordered = False
    keeps = (str, date)

    def __init__(self, zone: tzinfo) -> None:
        super().__init__(zone)
        self.local = zone

    def instant(self, raw: Any) -> datetime:
        if isinstance(raw, str):
            raw = datetime.fromisoformat(raw.strip().replace("z", "Z"))
        elif isinstance(raw, date) and not isinstance(raw, datetime):
            raw = datetime.combine(raw, time())
        if not isinstance(raw, datetime):
            raise TypeError(f"not a date-time: {raw!r}")
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=self.local)


class DateSpec(Transform):
    """`{date: {zone: Z}}` with no format: a native date/time, fitted to the column."""

    name = "date"
    ordered = False
    json_type = "date-time"

    def __init__(self, zone: str, zone_given: bool) -> None:
        self.zone = _zone(zone)
        self.zone_given = zone_given
        self._loose = LooseDate(self.zone)

    def to_tmf(self, raw: Any) -> str:
        return self._loose.to_tmf(raw)

    def typed(self, raw: Any) -> datetime:
        return self._loose.typed(raw)

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        return None

    def bind(self, kind: Kind | None) -> Transform:
        if kind == "date":
            return NativeDate(self.zone)
        if kind == "datetime":
            return NaiveDateTime(self.zone)
        if kind == "timestamptz":
            return AwareDateTime(self.zone if self.zone_given else None)
        _refuse(
            self,
            kind,
            frozenset({"text"}),
            ": give the text's `format`, or read a DATE/DATETIME column",
        )
        return self._loose


_RFC3339_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class Rfc3339Text(Transform):
    """Text that is already an RFC 3339 date-time with an offset: served as it is.

    Each value is checked, so a malformed one is a mapping error, not a served string.
    Not pushed down: text of different offsets does not sort like the instants.
    """

    name = "rfc3339"
    ordered = False
    json_type = "date-time"

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"text"}), "")
        return self

    def to_tmf(self, raw: Any) -> str:
        if not isinstance(raw, str) or not _RFC3339_TEXT.match(raw):
            raise ValueError(f"not an RFC 3339 date-time with an offset: {raw!r}")
        return raw

    def typed(self, raw: Any) -> datetime:
        return datetime.fromisoformat(self.to_tmf(raw))


class MinorUnits(Transform):
    """Integer minor units (cents) shown as a decimal amount (12.34)."""

    name = "minor_units"
    json_type = "number"

    def __init__(self, digits: int) -> None:
        if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 6:
            raise TransformArgError("minor_units takes the number of decimal digits (0 to 6)")
        self.scale = Decimal(10) ** digits
        self.divisor: int = 10**digits

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"integer", "decimal", "text"}), "")
        return self

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


class NativeNumber(Transform):
    """A DECIMAL/NUMERIC (or any number) served as a JSON number, compared exactly."""

    name = "decimal"
    json_type = "number"

    def to_tmf(self, raw: Any) -> float | int:
        if isinstance(raw, bool):
            raise TypeError(f"not a number: {raw!r}")
        return raw if isinstance(raw, int) else float(raw)

    def typed(self, raw: Any) -> Decimal:
        if isinstance(raw, bool):
            raise TypeError(f"not a number: {raw!r}")
        return raw if isinstance(raw, Decimal) else Decimal(str(raw))

    def floor_raw(self, value: Any) -> Decimal:
        if not isinstance(value, Decimal):
            raise TypeError("a number filter needs a number")
        return value

    def to_raw(self, value: Any) -> Decimal:
        return Decimal(str(value))


class DecimalText(Transform):
    """A decimal number stored as text ("19.00"); text order is not numeric order."""

    name = "decimal"
    ordered = False
    json_type = "number"

    def bind(self, kind: Kind | None) -> Transform:
        if kind in ("decimal", "integer", "float"):
            return NativeNumber()
        _refuse(self, kind, frozenset({"text"}), "")
        return self

    def __init__(self) -> None:
        self._memo = Memo(self.to_tmf, (str,))

    def memo(self) -> Memo:
        return self._memo

    def to_tmf(self, raw: Any) -> float:
        try:
            number = Decimal(str(raw).strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal number: {raw!r}") from exc
        if not number.is_finite():  # JSON has no NaN or Infinity
            raise ValueError(f"not a finite number: {raw!r}")
        return float(number)


def _code_reader(kind: Kind | None) -> Callable[[str], Any] | None:
    """How a code written in YAML (always text) reads as a value of a column of `kind`."""
    if kind == "integer":
        return int
    if kind in ("decimal", "float"):
        return Decimal
    if kind == "boolean":
        return lambda code: {"true": True, "false": False}[code.lower()]
    if kind == "date":
        return date.fromisoformat
    return None


class Enum(Transform):
    """A code table (status letters, type codes); several codes may share one value.

    Codes are written as YAML keys, so as text; on a column of numbers, booleans or
    dates they are read as such (`{1: open}` on an INTEGER column is the number 1).
    """

    name = "enum"
    ordered = False

    def __init__(self, table: Mapping[Any, Any]) -> None:
        if not isinstance(table, Mapping) or not table:
            raise TransformArgError("enum takes a non-empty table of code: value")
        self.table = dict(table)
        self.codes_of: dict[Any, list[Any]] = {}
        for code, value in self.table.items():
            self.codes_of.setdefault(_typed(value), []).append(code)
        types = {_json_type_of(v) for v in self.table.values()}
        self.json_type = types.pop() if len(types) == 1 else "any"

    def bind(self, kind: Kind | None) -> Transform:
        if kind in ("uuid", "binary", "timestamptz", "datetime"):
            raise TransformArgError(f"enum cannot read this {KIND_NAMES[kind]} column")
        read = _code_reader(kind)
        if read is None:
            return self
        table = {}
        for code, value in self.table.items():
            try:
                table[read(str(code)) if isinstance(code, str) else code] = value
            except (ValueError, KeyError, ArithmeticError):
                raise TransformArgError(
                    f"code {code!r} can never be read from this {KIND_NAMES[kind or 'other']}"
                    " column"
                ) from None
        return Enum(table)

    def values(self) -> tuple[Any, ...]:
        return tuple(dict.fromkeys(self.table.values()))

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


#: The JSON type of a value of these Python types, tried in order (a bool is an int too).
_JSON_TYPE_OF_CLASS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    ((float, Decimal), "number"),
    (str, "string"),
    (Mapping, "object"),
    (list, "array"),
)


def _json_type_of(value: Any) -> str:
    """The JSON type of a value written in a mapping (a const, an enum's value)."""
    return next((json for cls, json in _JSON_TYPE_OF_CLASS if isinstance(value, cls)), "any")


json_type_of = _json_type_of


class Json(Transform):
    """A JSON document kept as text (a sub-object stored whole); read only, never pushed."""

    name = "json"
    ordered = False

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"text"}), "")
        return self

    def to_tmf(self, raw: Any) -> Any:
        return orjson.loads(raw)

    def to_raw(self, value: Any) -> str:
        return orjson.dumps(value).decode()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnixTime(_Instants):
    """A unix time in seconds or milliseconds (SaaS APIs), served as RFC 3339 in `zone`;
    ranges and sort push down as the number (`created[gte]=1714521600`)."""

    json_type = "date-time"

    def __init__(self, per_second: int, zone: str) -> None:
        self.name = "unix_seconds" if per_second == 1 else "unix_milliseconds"
        self.per_second = per_second
        self.zone = _zone(zone)
        self._read_by(self._from_number, ())  # numbers: 1 == True == 1.0, none kept

    def _from_number(self, raw: Any) -> datetime:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError(f"not a unix time: {raw!r}")
        return datetime.fromtimestamp(raw / self.per_second, self.zone)

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"integer", "decimal", "float"}), "")
        return self

    def floor_raw(self, value: Any) -> int:
        if not isinstance(value, datetime):
            raise TypeError("a date filter needs a date-time")
        delta = value - _EPOCH
        seconds = delta.days * 86400 + delta.seconds
        return seconds * self.per_second + delta.microseconds * self.per_second // 1_000_000


class LetterCase(Transform):
    """Text the back end keeps in one letter case (`usd`) served in the other (`USD`)."""

    ordered = False
    json_type = "string"

    def __init__(self, upper: bool) -> None:
        self.name = "upper" if upper else "lower"
        self.upper = upper

    def bind(self, kind: Kind | None) -> Transform:
        _refuse(self, kind, frozenset({"text"}), "")
        return self

    def to_tmf(self, raw: Any) -> str:
        return str(raw).upper() if self.upper else str(raw).lower()

    def to_raw(self, value: Any) -> str:
        return str(value).lower() if self.upper else str(value).upper()

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        if op not in ("eq", "ne") or not isinstance(value, str):
            return None
        if self.to_tmf(value) != value:  # never served so: matches nothing
            return MATCH_NONE if op == "eq" else MATCH_ALL
        raw = self.to_raw(value)
        if op == "eq":
            return Compare(column, "eq", raw)
        return AnyOf((Compare(column, "ne", raw), IsNull(column)))


class Chain(Transform):
    """Transforms applied in turn (`[unix_seconds, ...]`); filters through a chain of more
    than one are the gateway's."""

    name = "chain"

    def __init__(self, links: Sequence[Transform]) -> None:
        if not links:
            raise TransformArgError("a chain of transforms needs at least one")
        self.links = tuple(links)
        self.json_type = self.links[-1].json_type
        self.ordered = all(link.ordered for link in self.links)

    def bind(self, kind: Kind | None) -> Transform:
        first = self.links[0].bind(kind)
        rest = [link.bind(None) if type(link) is not Transform else link for link in self.links[1:]]
        return first if not rest else Chain([first, *rest])

    def values(self) -> tuple[Any, ...] | None:
        return self.links[-1].values()

    def to_tmf(self, raw: Any) -> Any:
        for link in self.links:
            raw = link.to_tmf(raw)
        return raw

    def typed(self, raw: Any) -> Any:
        for link in self.links[:-1]:
            raw = link.to_tmf(raw)
        return self.links[-1].typed(raw)

    def to_raw(self, value: Any) -> Any:
        for link in reversed(self.links):
            value = link.to_raw(value)
        return value

    def condition(self, column: str, op: str, value: Any) -> Predicate | None:
        return self.links[0].condition(column, op, value) if len(self.links) == 1 else None


def _unix(per_second: int) -> Callable[[Any], Transform]:
    def make(args: Any) -> Transform:
        if args is None:
            args = {}
        if not isinstance(args, Mapping) or set(args) - {"zone"}:
            raise TransformArgError("unix time takes {zone: IANA zone} (UTC when not given)")
        return UnixTime(per_second, str(args.get("zone", "UTC")))

    return make


def _case(upper: bool) -> Callable[[Any], Transform]:
    def make(args: Any) -> Transform:
        if args not in (None, {}):
            raise TransformArgError("upper and lower take no arguments")
        return LetterCase(upper)

    return make


def _all(terms: Sequence[Predicate]) -> Predicate:
    return terms[0] if len(terms) == 1 else AllOf(tuple(terms))


def build_transform(spec: Any) -> Transform:
    """A transform from its spec: a name, or a one-key mapping `{name: arguments}`."""
    if spec is None:
        return Transform()
    if isinstance(spec, list):  # a chain, applied in turn
        return Chain([build_transform(link) for link in spec])
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
    if args is None:
        args = {}
    if not isinstance(args, Mapping) or set(args) - {"format", "zone"}:
        raise TransformArgError(
            "date takes {format: strftime pattern, zone: IANA zone} for text,"
            " {zone: IANA zone} for a DATE/DATETIME column"
        )
    zone = str(args.get("zone", "UTC"))
    if "format" not in args:
        return DateSpec(zone, "zone" in args)
    return DateTime(str(args["format"]), zone)


TRANSFORMS: dict[str, Callable[[Any], Transform]] = {
    "identity": _no_args(Transform),
    "integer_text": _no_args(IntegerText),
    "decimal": _no_args(DecimalText),
    "date": _date,
    "minor_units": lambda args: MinorUnits(args),
    "enum": lambda args: Enum(args),
    "json": _no_args(Json),
    "uuid": _no_args(UuidText),
    "rfc3339": _no_args(Rfc3339Text),
    "unix_seconds": _unix(1),
    "unix_milliseconds": _unix(1000),
    "upper": _case(True),
    "lower": _case(False),
}
