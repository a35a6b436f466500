"""Value transforms, both directions: forward values, and reversed filter terms."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull
from mappings.transforms import (
    DateTime,
    Enum,
    IntegerText,
    Memo,
    MinorUnits,
    Transform,
    TransformArgError,
    build_transform,
)

BERLIN_DATE = DateTime("%Y%m%d", "Europe/Berlin")


def test_date_forward_is_rfc3339_in_the_legacy_zone() -> None:
    assert BERLIN_DATE.to_tmf("20240115") == "2024-01-15T00:00:00+01:00"
    assert BERLIN_DATE.to_tmf("20240715") == "2024-07-15T00:00:00+02:00"
    stamp = DateTime("%Y%m%d%H%M%S", "Europe/Berlin")
    assert stamp.to_tmf("20240331023000") == "2024-03-31T02:30:00+01:00"
    assert DateTime("%d.%m.%Y", "UTC").to_tmf("31.12.2023") == "2023-12-31T00:00:00+00:00"


def test_date_forward_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        BERLIN_DATE.to_tmf("2024-01-15")


def test_only_year_first_zero_padded_formats_are_ordered() -> None:
    assert BERLIN_DATE.ordered
    assert DateTime("%Y-%m-%d %H:%M", "UTC").ordered
    assert not DateTime("%d.%m.%Y", "UTC").ordered
    assert (
        DateTime("%d.%m.%Y", "UTC").condition("C", "gt", datetime(2024, 1, 1, tzinfo=UTC)) is None
    )


def berlin_midnight(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=timezone(timedelta(hours=1)))


@pytest.mark.parametrize(
    ("op", "instant", "expected"),
    [
        # exactly a legacy value (midnight Berlin)
        ("eq", berlin_midnight(15), Compare("C", "eq", "20240115")),
        ("gt", berlin_midnight(15), Compare("C", "gt", "20240115")),
        ("gte", berlin_midnight(15), Compare("C", "gte", "20240115")),
        ("lt", berlin_midnight(15), Compare("C", "lt", "20240115")),
        ("lte", berlin_midnight(15), Compare("C", "lte", "20240115")),
        ("ne", berlin_midnight(15), AnyOf((Compare("C", "ne", "20240115"), IsNull("C")))),
        # between two legacy values: midday of the 15th, Berlin time
        ("eq", berlin_midnight(15) + timedelta(hours=12), MATCH_NONE),
        ("ne", berlin_midnight(15) + timedelta(hours=12), MATCH_ALL),
        ("gt", berlin_midnight(15) + timedelta(hours=12), Compare("C", "gt", "20240115")),
        ("gte", berlin_midnight(15) + timedelta(hours=12), Compare("C", "gt", "20240115")),
        ("lt", berlin_midnight(15) + timedelta(hours=12), Compare("C", "lte", "20240115")),
        ("lte", berlin_midnight(15) + timedelta(hours=12), Compare("C", "lte", "20240115")),
        # a UTC instant that is already the next day in Berlin
        ("gte", datetime(2024, 1, 14, 23, 0, tzinfo=UTC), Compare("C", "gte", "20240115")),
        ("gte", datetime(2024, 1, 14, 22, 59, tzinfo=UTC), Compare("C", "gt", "20240114")),
    ],
)
def test_date_filters_reverse_to_legacy_terms(op: str, instant: datetime, expected: object) -> None:
    assert BERLIN_DATE.condition("C", op, instant) == expected


def test_minor_units_match_exact_decimal_division() -> None:
    # to_tmf divides ints (correctly rounded); the exact decimal quotient rounded to a
    # float must be the same number for every amount and scale.
    values = [*range(-2000, 2000), 10**15 + 7, -(10**17) - 3, 2**53 + 1, 123456789012345678]
    for digits in range(7):
        transform = MinorUnits(digits)
        for value in values:
            assert transform.to_tmf(value) == float(Decimal(value) / Decimal(10) ** digits)


def test_minor_units_both_ways() -> None:
    cents = MinorUnits(2)
    assert cents.to_tmf(1234) == 12.34
    assert cents.to_tmf(-5) == -0.05
    assert cents.condition("A", "gt", Decimal("10")) == Compare("A", "gt", 1000)
    assert cents.condition("A", "gte", Decimal("10.005")) == Compare("A", "gt", 1000)
    assert cents.condition("A", "lt", Decimal("10.005")) == Compare("A", "lte", 1000)
    assert cents.condition("A", "eq", Decimal("10.50")) == Compare("A", "eq", 1050)
    assert cents.condition("A", "eq", Decimal("10.505")) == MATCH_NONE
    assert cents.condition("A", "lte", Decimal("-0.01")) == Compare("A", "lte", -1)
    with pytest.raises(TransformArgError):
        MinorUnits("two")


def test_enum_reverses_to_every_code_of_a_value() -> None:
    kinds = Enum({"REC": "charge", "OTC": "charge", "CRD": "credit"})
    assert kinds.to_tmf("CRD") == "credit"
    with pytest.raises(ValueError, match="unknown code"):
        kinds.to_tmf("XXX")
    assert kinds.condition("T", "eq", "charge") == AnyOf(
        (Compare("T", "eq", "REC"), Compare("T", "eq", "OTC"))
    )
    assert kinds.condition("T", "eq", "nothing") == MATCH_NONE
    assert kinds.condition("T", "ne", "credit") == AnyOf((Compare("T", "ne", "CRD"), IsNull("T")))
    assert kinds.condition("T", "ne", "charge") == AnyOf(
        (AllOf((Compare("T", "ne", "REC"), Compare("T", "ne", "OTC"))), IsNull("T"))
    )
    assert kinds.condition("T", "gt", "charge") is None


def test_boolean_flags_are_an_enum() -> None:
    flag = Enum({"Y": True, "N": False})
    assert flag.to_tmf("Y") is True
    assert flag.condition("F", "eq", False) == AnyOf((Compare("F", "eq", "N"),))


def test_integer_ids_push_down_equality_only() -> None:
    ids = IntegerText()
    assert ids.to_tmf(42) == "42"
    assert ids.condition("K", "eq", "42") == Compare("K", "eq", 42)
    assert ids.condition("K", "eq", "042") == MATCH_NONE
    assert ids.condition("K", "eq", "4x") == MATCH_NONE
    assert ids.condition("K", "ne", "abc") == MATCH_ALL
    assert ids.condition("K", "gt", "4") is None


def test_identity_pushes_text_and_numbers() -> None:
    same = Transform()
    assert same.condition("N", "gte", "INV24") == Compare("N", "gte", "INV24")
    assert same.condition("N", "eq", Decimal("3")) == Compare("N", "eq", 3)
    assert same.condition("N", "lt", Decimal("2.5")) == Compare("N", "lt", 2.5)


def test_decimal_text_is_read_but_not_pushed() -> None:
    rate = build_transform("decimal")
    assert rate.to_tmf("19.00") == 19.0
    assert rate.condition("R", "eq", Decimal("19")) is None
    with pytest.raises(ValueError):
        rate.to_tmf("n/a")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown transform 'nope'"),
        ({"date": {"zone": "UTC", "fmt": "%Y"}}, "date takes"),
        ({"date": {"format": "%Y", "zone": "Mars/Olympus"}}, "unknown time zone"),
        ({"enum": []}, "enum takes"),
        ({"minor_units": 9}, "minor_units takes"),
        ({"a": 1, "b": 2}, "one-key mapping"),
        ({"integer_text": {"x": 1}}, "takes no arguments"),
    ],
)
def test_bad_transform_specs_are_refused(spec: object, message: str) -> None:
    with pytest.raises(TransformArgError, match=message):
        build_transform(spec)


def test_native_dates_are_served_with_an_offset_and_compare_as_dates() -> None:
    day = build_transform({"date": {"zone": "Europe/Berlin"}}).bind("date")
    assert day.to_tmf(date(2024, 7, 15)) == "2024-07-15T00:00:00+02:00"
    assert day.condition("D", "gte", datetime(2024, 7, 14, 22, 0, tzinfo=UTC)) == Compare(
        "D", "gte", date(2024, 7, 15)
    )
    assert day.condition("D", "gte", datetime(2024, 7, 15, tzinfo=UTC)) == Compare(
        "D", "gt", date(2024, 7, 15)
    )
    assert day.condition("D", "eq", datetime(2024, 7, 15, tzinfo=UTC)) == MATCH_NONE
    utc = build_transform({"date": {"zone": "UTC"}}).bind("date")
    assert utc.condition("D", "eq", datetime(2024, 7, 15, tzinfo=UTC)) == Compare(
        "D", "eq", date(2024, 7, 15)
    )


def test_naive_and_aware_date_times() -> None:
    wall = build_transform({"date": {"zone": "Europe/Berlin"}}).bind("datetime")
    assert wall.to_tmf(datetime(2024, 1, 15, 9, 30)) == "2024-01-15T09:30:00+01:00"
    assert wall.condition("T", "lt", datetime(2024, 1, 15, 8, 30, tzinfo=UTC)) == Compare(
        "T", "lt", datetime(2024, 1, 15, 9, 30)
    )
    aware = build_transform({"date": {"zone": "Europe/Berlin"}}).bind("timestamptz")
    instant = datetime(2024, 1, 15, 8, 30, tzinfo=UTC)
    assert aware.to_tmf(instant) == "2024-01-15T09:30:00+01:00"
    assert aware.condition("T", "gte", instant) == Compare("T", "gte", instant)
    assert Transform().bind("timestamptz").to_tmf(instant) == "2024-01-15T08:30:00+00:00"


def test_decimals_booleans_and_uuids_are_read_as_what_they_are() -> None:
    amount = Transform().bind("decimal")
    assert amount.to_tmf(Decimal("12.3400")) == 12.34
    assert amount.condition("A", "gte", Decimal("10.005")) == Compare("A", "gte", Decimal("10.005"))
    assert build_transform("decimal").bind("decimal").ordered
    flag = Transform().bind("boolean")
    assert flag.json_type == "boolean" and flag.to_tmf(True) is True
    ident = Transform().bind("uuid")
    value = uuid.UUID("0b8d2e9e-5d1f-4c2a-9a55-1c3e3a2b9f10")
    assert ident.to_tmf(value) == str(value)
    assert ident.condition("K", "eq", str(value)) == Compare("K", "eq", value)
    assert ident.condition("K", "eq", str(value).upper()) == MATCH_NONE
    assert ident.condition("K", "ne", "x") == MATCH_ALL


@pytest.mark.parametrize(
    ("spec", "kind", "message"),
    [
        ({"date": {"format": "%Y%m%d"}}, "date", "date cannot read this DATE column with a text"),
        (None, "date", "use transform {date: {zone"),
        (None, "datetime", "use transform {date: {zone"),
        (None, "binary", "cannot be served as JSON"),
        ({"minor_units": 2}, "date", "minor_units cannot read this DATE"),
        ({"date": {"zone": "UTC"}}, "integer", "date cannot read this INTEGER"),
        ({"enum": {"A": "x"}}, "integer", "code 'A' can never be read from this INTEGER"),
        ({"enum": {"1": "x"}}, "boolean", "code '1' can never be read from this BOOLEAN"),
        ({"enum": {"x": "x"}}, "timestamptz", "enum cannot read this TIMESTAMP WITH"),
        ("integer_text", "uuid", "integer_text cannot read this UUID"),
        ("json", "integer", "json cannot read this INTEGER"),
    ],
)
def test_transforms_refuse_columns_they_cannot_read(spec: object, kind: str, message: str) -> None:
    with pytest.raises(TransformArgError, match=re.escape(message)):
        build_transform(spec).bind(kind)  # type: ignore[arg-type]


def test_enum_codes_are_read_as_the_column_holds_them() -> None:
    numbers = build_transform({"enum": {"1": "open", "2": "closed"}}).bind("integer")
    assert numbers.to_tmf(1) == "open"
    assert numbers.condition("S", "eq", "closed") == AnyOf((Compare("S", "eq", 2),))
    flags = build_transform({"enum": {"true": "yes", "FALSE": "no"}}).bind("boolean")
    assert flags.to_tmf(False) == "no"


def test_rfc3339_text_is_served_as_it_is_and_checked() -> None:
    text = build_transform("rfc3339").bind("text")
    assert text.to_tmf("2024-01-05T10:00:00Z") == "2024-01-05T10:00:00Z"
    assert text.json_type == "date-time"
    with pytest.raises(ValueError, match="not an RFC 3339"):
        text.to_tmf("2024-01-05 10:00")


def test_memo_converts_each_kept_value_once_and_no_other_type_shares_it() -> None:
    calls: list[object] = []

    def convert(raw: object) -> tuple[str, object]:
        calls.append(raw)
        return (type(raw).__name__, raw)

    memo = Memo(convert, (str,), limit=2)
    assert memo["a"] == ("str", "a") and memo["a"] == ("str", "a")
    assert calls == ["a"]  # the second time, looked up
    assert memo[1] == ("int", 1) and memo[1] == ("int", 1)
    assert calls == ["a", 1, 1] and list(memo) == ["a"]  # numbers are never kept
    memo["b"], memo["c"]
    assert len(memo) <= 2  # bounded: full, it starts afresh


def test_memo_keeps_no_datetime_whose_fold_chooses_the_offset() -> None:
    stamp = build_transform({"date": {"zone": "Europe/Berlin"}}).bind("datetime")
    memo = stamp.memo()
    assert memo is not None
    first, second = datetime(2024, 10, 27, 2, 30), datetime(2024, 10, 27, 2, 30, fold=1)
    assert first == second
    assert memo[first] == "2024-10-27T02:30:00+02:00"
    assert memo[second] == "2024-10-27T02:30:00+01:00"  # equal to `first`, other instant
    assert not memo
    day = build_transform({"date": {"zone": "Europe/Berlin"}}).bind("date").memo()
    assert day is not None and day[date(2024, 1, 31)] == "2024-01-31T00:00:00+01:00"
    assert list(day) == [date(2024, 1, 31)]


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-inf", "sNaN"])
def test_decimal_text_refuses_values_json_cannot_hold(text: str) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        build_transform("decimal").to_tmf(text)
