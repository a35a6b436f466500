"""The mapping engine: compiled specs, and the start-up errors a wrong spec gives."""

from __future__ import annotations

import sqlite3
import textwrap
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from adapters.base import SourceColumns
from adapters.kinds import TypedColumns
from gateway.app import create_app
from gateway.oas import attribute_types
from mappings.compiler import compile_mapping, load_mapping, read_mapping
from mappings.errors import MappingSpecError, RecordMappingError
from mappings.transforms import MinorUnits
from tests.conftest import API, ROOT, gateway_config

COLUMNS = SourceColumns(
    record=frozenset({"K", "NO", "DT", "ST", "AMT", "TAX", "CUR", "RUN", "DOC"}),
    children={"lines": frozenset({"K", "CAT", "AMT"})},
)
TYPES = attribute_types("CustomerBill").types
BASE = "https://gw/api"

SPEC = """\
resource: CustomerBill
source: {table: T, key: K}
attributes:
  id: {column: K, transform: integer_text}
  billNo: NO
  billDate: {column: DT, transform: {date: {format: "%Y%m%d", zone: UTC}}}
  state: {column: ST, transform: {enum: {N: new, S: sent}}}
  amountDue:
    unit: CUR
    value: {column: AMT, transform: {minor_units: 2}}
  taxIncludedAmount:
    unit: {const: EUR}
    value: {sum: [AMT, TAX], transform: {minor_units: 2}}
  billCycle:
    when: RUN
    "@type": {const: BillCycleRef}
    id: {column: RUN, transform: integer_text}
    href: {template: "{base}/billCycle/{RUN}"}
  billDocument:
    list:
      - when: DOC
        "@type": {const: AttachmentRef}
        id: DOC
  taxItem:
    each: lines
    item:
      "@type": {const: TaxItem}
      taxCategory: CAT
      taxAmount: {value: {column: AMT, transform: {minor_units: 2}}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def compiled(tmp_path: Path, text: str = SPEC):
    return load_mapping(write(tmp_path, text), columns=COLUMNS, attribute_types=TYPES)


RECORD = {
    "K": 7,
    "NO": "B-7",
    "DT": "20240131",
    "ST": "S",
    "AMT": 1050,
    "TAX": 95,
    "CUR": "EUR",
    "RUN": 3,
    "DOC": "arch/7.pdf",
    "lines": [{"K": 7, "CAT": "VAT", "AMT": 95}, {"K": 7, "CAT": "ECO", "AMT": 0}],
}


def test_a_record_maps_to_the_tmf_resource(tmp_path: Path) -> None:
    mapping = compiled(tmp_path)
    assert mapping.to_tmf(RECORD, BASE) == {
        "id": "7",
        "href": "https://gw/api/customerBill/7",
        "@type": "CustomerBill",
        "billNo": "B-7",
        "billDate": "2024-01-31T00:00:00+00:00",
        "state": "sent",
        "amountDue": {"unit": "EUR", "value": 10.5},
        "taxIncludedAmount": {"unit": "EUR", "value": 11.45},
        "billCycle": {"@type": "BillCycleRef", "id": "3", "href": "https://gw/api/billCycle/3"},
        "billDocument": [{"@type": "AttachmentRef", "id": "arch/7.pdf"}],
        "taxItem": [
            {"@type": "TaxItem", "taxCategory": "VAT", "taxAmount": {"value": 0.95}},
            {"@type": "TaxItem", "taxCategory": "ECO", "taxAmount": {"value": 0.0}},
        ],
    }


def test_null_columns_and_guards_leave_attributes_out(tmp_path: Path) -> None:
    mapping = compiled(tmp_path)
    sparse = {**RECORD, "RUN": None, "DOC": None, "NO": None, "lines": []}
    out = mapping.to_tmf(sparse, BASE)
    assert "billCycle" not in out and "billDocument" not in out and "billNo" not in out
    assert out["taxItem"] == []


def test_pushable_fields_are_the_plain_column_attributes(tmp_path: Path) -> None:
    fields = compiled(tmp_path).fields
    assert set(fields) == {
        "id",
        "billNo",
        "billDate",
        "state",
        "amountDue.unit",
        "amountDue.value",
        "billCycle.id",
    }
    assert fields["amountDue.value"].column == "AMT"
    assert isinstance(fields["amountDue.value"].transform, MinorUnits)


def test_bad_back_end_values_name_the_field(tmp_path: Path) -> None:
    mapping = compiled(tmp_path)
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({**RECORD, "ST": "Z"}, BASE)
    assert info.value.field == "state" and "unknown code 'Z'" in info.value.reason
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({k: v for k, v in RECORD.items() if k != "AMT"}, BASE)
    assert info.value.field == "amountDue.value" and "AMT" in info.value.reason
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({**RECORD, "DT": "31/01/2024"}, BASE)
    assert info.value.field == "billDate"


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("billNo: NO", "billNo: NUMBER", 5, "attributes.billNo: unknown column 'NUMBER'"),
        (
            "{minor_units: 2}}\n  taxIncluded",
            "{minor_unit: 2}}\n  taxIncluded",
            10,
            "attributes.amountDue.value.transform: unknown transform 'minor_unit'",
        ),
        ("billNo: NO", "billNumber: NO", 5, "attributes.billNumber: not an attribute"),
        (
            "      taxCategory: CAT",
            "      taxCategory: CUR",
            28,
            "unknown column 'CUR' in child rows 'lines'",
        ),
        ("each: lines", "each: rows", 25, "unknown child rows 'rows'"),
        ("{base}/billCycle/{RUN}", "{base}/billCycle/{RUNID}", 18, "unknown column 'RUNID'"),
        ("when: RUN", "when: RUNNING", 15, "attributes.billCycle.when: unknown column"),
        ("billNo: NO", "billNo: [NO]", 5, "expected a column name or a mapping"),
        ("  billNo: NO", "  billNo: {column: NO, const: x}", 5, "exactly one of"),
        ("  billNo: NO", "  href: NO", 5, "set by the gateway itself"),
    ],
)
def test_wrong_specs_stop_with_file_place_line_and_reason(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in SPEC
    path = write(tmp_path, SPEC.replace(old, new, 1))
    with pytest.raises(MappingSpecError) as info:
        load_mapping(path, columns=COLUMNS, attribute_types=TYPES)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "resource: CustomerBill\nattributes:\n  id: [unclosed\n")
    with pytest.raises(MappingSpecError, match=rf"^{path}:\d+: invalid YAML"):
        read_mapping(path)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "resource: CustomerBill\nattributes:\n  id: K\n  id: NO\n")
    with pytest.raises(MappingSpecError, match=rf"^{path}:4: id: duplicate key"):
        read_mapping(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "a mapping file is a YAML mapping"),
        ("resource: CustomerBill\n", "attributes: missing"),
        ("resource: CustomerBill\nattributes: {billNo: NO}\n", "every resource needs id"),
        ("resource: CustomerBill\nattributes: {id: K}\nextra: 1\n", "extra: unknown top-level"),
    ],
)
def test_wrong_top_level_shapes(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingSpecError, match=message):
        load_mapping(write(tmp_path, text), columns=COLUMNS, attribute_types=TYPES)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(MappingSpecError, match="cannot read file"):
        read_mapping(tmp_path / "absent.yaml")


def test_bundled_mappings_compile_against_the_oas(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "mappings" / "legacy_sql"
    for path in sorted(root.glob("*.yaml")):
        spec = read_mapping(path)
        compile_mapping(
            spec, file=str(path), attribute_types=attribute_types(spec["resource"]).types
        )


TYPED = TypedColumns(
    record=COLUMNS.record,
    children=COLUMNS.children,
    kinds={
        "K": "integer",
        "NO": "text",
        "DT": "date",
        "ST": "text",
        "AMT": "integer",
        "TAX": "integer",
        "CUR": "text",
        "RUN": "integer",
        "DOC": "text",
    },
    child_kinds={"lines": {"K": "integer", "CAT": "text", "AMT": "decimal"}},
)

NATIVE_SPEC = SPEC.replace('{date: {format: "%Y%m%d", zone: UTC}}', "{date: {zone: UTC}}")


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        # a text format on a DATE column
        (
            "transform: {date: {zone: UTC}}",
            'transform: {date: {format: "%Y%m%d", zone: UTC}}',
            6,
            "attributes.billDate: date cannot read this DATE column with a text format",
        ),
        ("billNo: NO", "billNo: DT", 5, "this DATE column is served as a date-time"),
        (
            "{column: RUN, transform: integer_text}",
            "{column: RUN, transform: {enum: {A: x}}}",
            17,
            "code 'A' can never be read from this INTEGER column",
        ),
        (
            "value: {sum: [AMT, TAX]",
            "value: {sum: [AMT, CUR]",
            13,
            "sum of a non-number CUR (declared text (CHAR/VARCHAR))",
        ),
        (
            "{column: RUN, transform: integer_text}",
            "{column: DT, transform: integer_text}",
            17,
            "integer_text cannot read this DATE column",
        ),
    ],
)
def test_transforms_that_cannot_read_the_column_stop_start_up(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in NATIVE_SPEC
    load_mapping(write(tmp_path, NATIVE_SPEC), columns=TYPED, attribute_types=TYPES)
    path = write(tmp_path, NATIVE_SPEC.replace(old, new, 1))
    with pytest.raises(MappingSpecError) as info:
        load_mapping(path, columns=TYPED, attribute_types=TYPES)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text


def test_native_columns_need_no_text_format(tmp_path: Path) -> None:
    spec = SPEC.replace('{date: {format: "%Y%m%d", zone: UTC}}', "{date: {zone: Europe/Berlin}}")
    mapping = load_mapping(write(tmp_path, spec), columns=TYPED, attribute_types=TYPES)
    out = mapping.to_tmf({**RECORD, "DT": date(2024, 7, 1)}, BASE)
    assert out["billDate"] == "2024-07-01T00:00:00+02:00"
    # child AMT is a DECIMAL of cents here
    lines = [{"K": 7, "CAT": "VAT", "AMT": Decimal("95")}]
    out = mapping.to_tmf({**RECORD, "DT": date(2024, 7, 1), "lines": lines}, BASE)
    assert out["taxItem"][0]["taxAmount"]["value"] == 0.95


def test_a_record_that_does_not_fit_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC)
    mapping = load_mapping(path, columns=COLUMNS, attribute_types=TYPES)
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({**RECORD, "DT": date(2024, 1, 31)}, BASE)
    assert info.value.field == "billDate"
    assert info.value.where == f"{path}:6"
    assert "column DT=datetime.date(2024, 1, 31)" in info.value.reason
    assert f"(mapping {path}:6)" in str(info.value)
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({**RECORD, "lines": [{"K": 7, "CAT": "VAT", "AMT": "x"}]}, BASE)
    assert info.value.where == f"{path}:29"  # the child value's own line, not `each:`


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        # JSON type: an INTEGER column where the OAS wants text
        ("billNo: NO", "billNo: K", 5, "gives integer values, and the OAS wants a string"),
        # format: text that is not said to be a date-time
        (
            "billDate: {column: DT, transform: {date: {zone: UTC}}}",
            "billDate: NO",
            6,
            "gives string values, and the OAS wants a date-time",
        ),
        (
            "billDate: {column: DT, transform: {date: {zone: UTC}}}",
            'billDate: {const: "2024-01-31"}',
            6,
            "gives string values, and the OAS wants a date-time",
        ),
        (
            "billDate: {column: DT, transform: {date: {zone: UTC}}}",
            'billDate: {template: "{NO}T00:00:00Z"}',
            6,
            "gives string values, and the OAS wants a date-time",
        ),
        (
            "value: {column: AMT, transform: {minor_units: 2}}",
            "value: {const: ten}",
            10,
            "gives string values, and the OAS wants a number",
        ),
        # enum membership, over every value of the code table
        ("{N: new, S: sent}", "{N: new, S: sented}", 7, "gives 'sented', which the OAS does"),
        (
            "state: {column: ST, transform: {enum: {N: new, S: sent}}}",
            "state: ST",
            7,
            "the OAS allows only new, onHold",
        ),
        (
            '"@type": {const: BillCycleRef}',
            '"@type": {const: BillCycle}',
            16,
            "gives 'BillCycle', which the OAS does not allow (allowed: BillCycleRef)",
        ),
        # required @type / id of nested objects
        ('    "@type": {const: BillCycleRef}\n', "", 14, "the OAS requires @type in this object"),
        (
            "    id: {column: RUN, transform: integer_text}\n",
            "",
            14,
            "the OAS requires id in this object",
        ),
        ('      "@type": {const: TaxItem}\n', "", 26, "the OAS requires @type in this object"),
        (
            '        "@type": {const: AttachmentRef}\n',
            "",
            21,
            "the OAS requires @type in this object",
        ),
        # shapes: object, leaf, array
        ("  billNo: NO", "  billingAccount: NO", 5, "is an object in the OAS"),
        ("  billNo: NO", "  billNo: {id: NO}", 5, "is a string in the OAS, not an object"),
        ("    each: lines\n    item:\n", "    each: lines\n    item:\n", 24, None),
        ("  billNo: NO", "  billNo: {each: lines, item: CAT}", 5, "is not an array in the OAS"),
        ("  billNo: NO", "  taxItem: NO", 5, "is an array in the OAS"),
    ],
)
def test_values_the_oas_does_not_allow_stop_start_up(
    tmp_path: Path, old: str, new: str, line: int, message: str | None
) -> None:
    assert old in NATIVE_SPEC
    spec = NATIVE_SPEC.replace(old, new, 1)
    if "taxItem: NO" in spec:  # one taxItem only
        spec = spec[: spec.index("  taxItem:\n    each")]
    path = write(tmp_path, spec)
    if message is None:  # the unchanged spec compiles
        load_mapping(path, columns=TYPED, attribute_types=TYPES)
        return
    with pytest.raises(MappingSpecError) as info:
        load_mapping(path, columns=TYPED, attribute_types=TYPES)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text, text


def test_every_bundled_mapping_fits_the_oas() -> None:
    """The shipped mappings pass the same start-up check (with unknown column kinds)."""
    root = Path(__file__).resolve().parent.parent / "mappings"
    for path in sorted(root.rglob("*.yaml")):
        if "actions" in path.parts:
            continue
        spec = read_mapping(path)
        compile_mapping(
            spec, file=str(path), attribute_types=attribute_types(spec["resource"]).types
        )


def test_a_served_record_that_does_not_fit_is_logged_with_file_line_and_column(
    scratch_db: Path,
) -> None:
    with sqlite3.connect(scratch_db) as conn:
        conn.execute("UPDATE INV_HDR SET INV_DT = '2024-1-5' WHERE INV_ID = 7")
    with (
        TestClient(create_app(gateway_config(scratch_db, events=None, on_demand=None))) as client,
        capture_logs() as logs,
    ):
        response = client.get(f"{API}/customerBill/7")
    assert response.status_code == 502
    assert response.json()["code"] == "BACKEND_MAPPING_ERROR"
    (event,) = [e for e in logs if e["event"] == "backend_reply_mismatch"]
    mapping = ROOT / "mappings" / "legacy_sql" / "customer_bill.yaml"
    assert event["field"] == "billDate"
    assert "column INV_DT='2024-1-5'" in event["detail"]
    assert f"customer_bill.yaml:{_line_of(mapping, '  billDate:')}" in event["detail"]


def _line_of(path: Path, start: str) -> int:
    lines = path.read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.startswith(start))


LEDGER = TypedColumns(
    record=frozenset({"K", "NO", "ST", "CUR", "DT"}),
    children={
        "lines": frozenset({"K", "CAT", "AMT", "FROM", "FLAG"}),
        "pays": frozenset({"K", "AMT", "OK"}),
    },
    kinds={"K": "integer", "NO": "text", "ST": "text", "CUR": "text", "DT": "date"},
    child_kinds={
        "lines": {
            "K": "integer",
            "CAT": "text",
            "AMT": "decimal",
            "FROM": "date",
            "FLAG": "boolean",
        },
        "pays": {"K": "integer", "AMT": "decimal", "OK": "boolean"},
    },
)

DERIVED = """\
resource: CustomerBill
source: {table: T, key: K}
attributes:
  id: {column: K, transform: integer_text}
  state:
    case:
      - when: {ST: D}
        then: {const: new}
      - when:
          gte:
            - {coalesce: [{sum: {rows: pays, column: AMT, where: {OK: true}}}, 0]}
            - {sum: {rows: lines, column: AMT}}
        then: {const: settled}
    else: {const: sent}
  amountDue:
    unit: CUR
    value: {coalesce: [{sum: {rows: lines, column: AMT, where: {CAT: [TAX, VAT]}}}, 0]}
  remainingAmount:
    value: {subtract: [{sum: {rows: lines, column: AMT}}, {sum: {rows: pays, column: AMT}}]}
  billingPeriod:
    startDateTime: {min: {rows: lines, column: FROM}, transform: {date: {zone: UTC}}}
  billCycle:
    when: {ST: {ne: D}}
    "@type": {const: BillCycleRef}
    id: {column: K, transform: integer_text}
  taxItem:
    each: lines
    where: {CAT: TAX, AMT: {gt: 0}}
    item:
      "@type": {const: TaxItem}
      taxAmount: {value: AMT}
"""

DERIVED_RECORD = {
    "K": 7,
    "NO": "B-7",
    "ST": "S",
    "CUR": "EUR",
    "DT": date(2024, 1, 31),
    "lines": [
        {"K": 7, "CAT": "NET", "AMT": Decimal("0.10"), "FROM": date(2024, 1, 5), "FLAG": True},
        {"K": 7, "CAT": "TAX", "AMT": Decimal("0.20"), "FROM": date(2024, 1, 1), "FLAG": None},
        {"K": 7, "CAT": "TAX", "AMT": Decimal("-1"), "FROM": None, "FLAG": False},
    ],
    "pays": [
        {"K": 7, "AMT": Decimal("-0.70"), "OK": True},
        {"K": 7, "AMT": Decimal("5"), "OK": False},
    ],
}


def test_derived_values_compute_exactly_from_child_rows(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, DERIVED), columns=LEDGER, attribute_types=TYPES)
    out = mapping.to_tmf(DERIVED_RECORD, BASE)
    assert out["state"] == "settled"  # -0.70 paid >= -0.70 due, in exact decimals
    assert out["amountDue"] == {"unit": "EUR", "value": -0.8}
    assert out["remainingAmount"] == {"value": -5.0}  # -0.70 due, 4.30 paid in all
    assert out["billingPeriod"] == {"startDateTime": "2024-01-01T00:00:00+00:00"}
    assert out["billCycle"]["id"] == "7"
    assert out["taxItem"] == [{"@type": "TaxItem", "taxAmount": {"value": 0.2}}]
    draft = mapping.to_tmf({**DERIVED_RECORD, "ST": "D", "lines": [], "pays": []}, BASE)
    assert draft["state"] == "new" and "billCycle" not in draft
    assert draft["amountDue"] == {"unit": "EUR", "value": 0}
    assert draft["remainingAmount"] == {} and draft["billingPeriod"] == {}
    assert set(mapping.computed) == {
        "state",
        "amountDue.value",
        "remainingAmount.value",
        "billingPeriod.startDateTime",
    }
    assert mapping.fast_path.slow(DERIVED_RECORD, BASE) == out


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (
            "{rows: pays, column: AMT, where",
            "{rows: payz, column: AMT, where",
            11,
            "unknown child rows 'payz'",
        ),
        (
            "{rows: lines, column: FROM}",
            "{rows: lines, column: TO}",
            21,
            "unknown column 'TO' in child rows 'lines'",
        ),
        (
            "{rows: lines, column: FROM}",
            "{rows: lines, column: FLAG}",
            21,
            "date cannot read this BOOLEAN column",
        ),
        (
            "value: {subtract: [{sum: {rows: lines, column: AMT}}",
            "value: {subtract: [{sum: {rows: lines, column: CAT}}",
            19,
            "sum of a text (CHAR/VARCHAR) column",
        ),
        (
            "{subtract: [{sum: {rows: lines, column: AMT}}, {sum: {rows: pays, column: AMT}}]}",
            "{subtract: [{sum: {rows: lines, column: AMT}}]}",
            19,
            "takes a list of at least 2",
        ),
        (
            "then: {const: settled}",
            "then: {const: sented}",
            13,
            "gives 'sented', which the OAS does not allow",
        ),
        ("then: {const: settled}", "then: {const: 3}", 6, "its values are of different kinds"),
        (
            "when: {ST: D}",
            "when: {gt: [ST, {sum: {rows: lines, column: AMT}}]}",
            7,
            "compares a text (CHAR/VARCHAR) value with a DECIMAL/NUMERIC value",
        ),
        ("where: {OK: true}", "where: {OK: maybe}", 11, "OK: 'maybe' is not a boolean"),
        ("when: {ST: D}", "when: [ST, D]", 7, "a condition is a mapping"),
        ("when: {ST: {ne: D}}", "when: {ST: {like: D}}", 23, "a column test takes eq, gt"),
        (
            "where: {CAT: TAX, AMT: {gt: 0}}",
            "where: {CAT: TAX, AMT: {gt: zero}}",
            28,
            "AMT: 'zero' is not a value of this DECIMAL/NUMERIC column",
        ),
        (
            "      taxAmount: {value: AMT}",
            "      taxAmount: {value: {sum: {rows: pays, column: AMT}}}",
            31,
            "an aggregate over child rows inside child rows",
        ),
        (
            "where: {CAT: TAX, AMT: {gt: 0}}",
            "where: {KIND: TAX}",
            28,
            "unknown column 'KIND' in child rows 'lines'",
        ),
        (
            "    else: {const: sent}",
            "    else: {const: sent}\n    otherwise: x",
            6,
            "unknown key(s) ['otherwise']",
        ),
        (
            "startDateTime: {min: {rows: lines, column: FROM}, transform: {date: {zone: UTC}}}",
            "startDateTime: {min: {rows: lines, column: FROM}}",
            21,
            "this DATE column is served as a date-time",
        ),
    ],
)
def test_wrong_derived_values_stop_with_file_place_line_and_reason(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in DERIVED
    path = write(tmp_path, DERIVED.replace(old, new, 1))
    with pytest.raises(MappingSpecError) as info:
        load_mapping(path, columns=LEDGER, attribute_types=TYPES)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text, text


def test_a_derived_value_that_cannot_be_computed_names_file_line_and_column(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, DERIVED)
    mapping = load_mapping(path, columns=LEDGER, attribute_types=TYPES)
    broken = {**DERIVED_RECORD, "pays": [{"K": 7, "OK": True}]}
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf(broken, BASE)
    assert info.value.field == "state" and "column AMT missing" in info.value.reason
    assert info.value.where == f"{path}:6"
    with pytest.raises(RecordMappingError) as info:
        mapping.to_tmf({k: v for k, v in DERIVED_RECORD.items() if k != "lines"}, BASE)
    assert "child rows 'lines' missing" in info.value.reason


NAMED = """\
resource: CustomerBill
source: {table: T, key: K}
values:
  due: {coalesce: [{sum: {rows: lines, column: AMT}}, 0]}
  left: {subtract: [{use: due}, {sum: {rows: pays, column: AMT}}]}
attributes:
  id: {column: K, transform: integer_text}
  amountDue: {value: {use: due}}
  remainingAmount: {value: {use: left}}
"""


def test_named_values_are_used_where_they_are_needed(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, NAMED), columns=LEDGER, attribute_types=TYPES)
    out = mapping.to_tmf(DERIVED_RECORD, BASE)
    assert out["amountDue"] == {"value": -0.7} and out["remainingAmount"] == {"value": -5.0}
    assert "remainingAmount.value" in mapping.computed


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("value: {use: due}}", "value: {use: dues}}", 8, "no value 'dues' under values:"),
        ("{use: due}, {sum", "{use: left}, {sum", 5, "value 'left' uses itself"),
        ("column: AMT}}, 0]}", "column: AMOUNT}}, 0]}", 4, "values.due: unknown column 'AMOUNT'"),
        (
            "values:\n  due: {coalesce: [{sum: {rows: lines, column: AMT}}, 0]}\n"
            "  left: {subtract: [{use: due}, {sum: {rows: pays, column: AMT}}]}\n",
            "values: [due]\n",
            3,
            "values: a mapping of name: value",
        ),
    ],
)
def test_wrong_named_values_name_their_own_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in NAMED
    path = write(tmp_path, NAMED.replace(old, new, 1))
    with pytest.raises(MappingSpecError) as info:
        load_mapping(path, columns=LEDGER, attribute_types=TYPES)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text, text


COOKBOOK = """\
resource: CustomerBill
source: {table: T, key: K}
attributes:
  id: {column: K, transform: integer_text}
  state:
    case:
      - when: {ST: D}
        then: {const: N}
      - when: {DT: null}
        then: {const: H}
    else: {const: S}
    transform: {enum: {N: new, H: onHold, S: sent}}
  amountDue: {value: {sum: {rows: lines, column: K}, transform: {minor_units: 2}}}
  remainingAmount: {value: {count: {rows: lines, where: {FROM: null}}}}
"""


def test_cookbook_shapes_compile_and_serve(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, COOKBOOK), columns=LEDGER, attribute_types=TYPES)
    out = mapping.to_tmf(DERIVED_RECORD, BASE)
    assert out["state"] == "sent"
    assert mapping.to_tmf({**DERIVED_RECORD, "DT": None}, BASE)["state"] == "onHold"
    assert out["amountDue"] == {"value": 0.21} and out["remainingAmount"] == {"value": 1}
    bad = COOKBOOK.replace("H: onHold", "H: held")
    with pytest.raises(MappingSpecError, match="gives 'held', which the OAS does not allow"):
        load_mapping(write(tmp_path, bad), columns=LEDGER, attribute_types=TYPES)


def test_places_in_a_spec_have_their_own_lines(tmp_path: Path) -> None:
    text = (
        "resource: CustomerBill\n"
        "source:\n"
        "  table: T\n"
        "  children:\n"
        "    taxes:\n"
        "      table: TAXES\n"
        "      key: K\n"
        "attributes: {id: K}\n"
    )
    spec = read_mapping(write(tmp_path, text))
    assert spec.line_at("source.children.taxes.table") == 6
    assert spec.line_at("source.children.taxes.order_by") == 5  # not written: its mapping
    assert spec.line_at("source.types.X") == 2
    assert spec.line_at("source") == 2


TEMPLATED = SPEC.replace(
    "  billNo: NO\n", '  billNo: {template: "{NO}-{RUN}", transform: upper}\n'
).replace(
    '    href: {template: "{base}/billCycle/{RUN}"}\n',
    '    href: {template: "{base}/billCycle/{RUN}", transform: [lower, upper]}\n',
)


def test_a_template_result_goes_through_its_transform(tmp_path: Path) -> None:
    mapping = compiled(tmp_path, TEMPLATED)
    out = mapping.to_tmf({**RECORD, "NO": "b-7x"}, BASE)
    assert out["billNo"] == "B-7X-3"
    assert out["billCycle"]["href"] == "HTTPS://GW/API/BILLCYCLE/3"  # a chain, in turn
    assert "billNo" not in mapping.to_tmf({**RECORD, "RUN": None}, BASE)  # null stays null
    assert "billNo" in mapping.produced and "billNo" not in mapping.fields


def test_a_template_transform_is_checked_against_the_oas(tmp_path: Path) -> None:
    text = TEMPLATED.replace("transform: upper}", "transform: {minor_units: 2}}")
    with pytest.raises(MappingSpecError) as info:
        compiled(tmp_path, text)
    assert "billNo" in str(info.value) and ":5:" in str(info.value)


CUSTOMER_BILL = ROOT / "mappings" / "legacy_sql" / "customer_bill.yaml"
LOWER_FROM = 'name: {template: "{INV_NO}.pdf"}'
LOWER_TO = 'name: {template: "{INV_NO}.pdf", transform: lower}'


def test_filters_on_a_transformed_template_are_exact_with_push_down_on_and_off(
    demo_db: Path, tmp_path: Path
) -> None:
    import dataclasses

    from gateway.pushdown import plan_read
    from gateway.query import parse_query
    from tests.test_pushdown import NothingPushed

    mapping_file = tmp_path / "customer_bill.yaml"
    text = CUSTOMER_BILL.read_text()
    assert LOWER_FROM in text
    mapping_file.write_text(text.replace(LOWER_FROM, LOWER_TO))
    config = gateway_config(demo_db, events=None, on_demand=None)
    binding = config.resources["customerBill"].model_copy(update={"mapping": mapping_file})
    config = config.model_copy(update={"resources": {**config.resources, "customerBill": binding}})
    with sqlite3.connect(demo_db) as conn:
        numbers = [
            no for (no,) in conn.execute("SELECT INV_NO FROM INV_HDR WHERE ARCH_KEY IS NOT NULL")
        ]
        ids = dict(conn.execute("SELECT INV_NO, INV_ID FROM INV_HDR"))
    assert len(numbers) > 2, "no archived bills: the test would prove nothing"
    attributes = attribute_types("CustomerBill")
    app = create_app(config)
    with TestClient(app) as client:
        on = dataclasses.replace(app.state.services.customer_bills, cache=None, guard=None)
        off = dataclasses.replace(on, source=NothingPushed(on.source))

        def read(reader: object, term: str) -> tuple[list[str], int]:
            query = parse_query(term, attributes, default_limit=20, max_limit=5000)
            found, total = client.portal.call(reader.list, query, "h")  # type: ignore[attr-defined]
            return sorted(r["id"] for r in found), total

        chosen = numbers[len(numbers) // 2]
        cases = {
            f"billDocument.name={chosen.lower()}.pdf&limit=5000": [str(ids[chosen])],
            f"billDocument.name={chosen}.pdf&limit=5000": [],  # served in lower case only
        }
        for term, expected in cases.items():
            assert read(on, term) == read(off, term) == (expected, len(expected)), term
            query = parse_query(term, attributes, default_limit=20, max_limit=5000)
            assert plan_read(query, on.mapping, on.source).residual, "not the gateway's"
        response = client.get(f"{API}/customerBill?billDocument.name={chosen.lower()}.pdf")
        assert response.status_code == 200
        assert [bill["id"] for bill in response.json()] == [str(ids[chosen])]


#: The record's amounts as text (AMT is read as decimal text beside the sum).
TEXT_AMOUNTS = SPEC.replace(
    "value: {column: AMT, transform: {minor_units: 2}}\n  taxI",
    "value: {column: AMT, transform: decimal}\n  taxI",
)
TEXT_SUM = TEXT_AMOUNTS.replace(
    "value: {sum: [AMT, TAX], transform: {minor_units: 2}}", "value: {sum: [AMT, TAX]}"
)
DEFAULT_SUM = TEXT_AMOUNTS.replace(
    "value: {sum: [AMT, TAX], transform: {minor_units: 2}}", "value: {sum: [AMT, TAX], default: 0}"
)


@pytest.mark.parametrize(
    ("amount", "tax", "total"),
    [("12.50", "0.10", 12.6), ("0.1", "0.2", 0.3), (" 7 ", 2, 9), (1, Decimal("2.25"), 3.25)],
)
def test_a_sum_adds_numbers_given_as_text_exactly(
    tmp_path: Path, amount: object, tax: object, total: float
) -> None:
    mapping = compiled(tmp_path, TEXT_SUM)
    out = mapping.to_tmf({**RECORD, "AMT": amount, "TAX": tax}, BASE)
    assert out["taxIncludedAmount"]["value"] == total
    assert mapping.fast_path.slow({**RECORD, "AMT": amount, "TAX": tax}, BASE) == out


def test_a_sum_of_a_value_that_is_not_a_number_names_file_line_and_column(
    tmp_path: Path,
) -> None:
    mapping = compiled(tmp_path, TEXT_SUM)
    for bad in ("12,50", "NaN", True, "abc"):
        with pytest.raises(RecordMappingError) as info:
            mapping.to_tmf({**RECORD, "TAX": bad}, BASE)
        assert info.value.field == "taxIncludedAmount.value"
        assert f"column TAX={bad!r}" in info.value.reason
        assert info.value.where == f"{tmp_path / 'mapping.yaml'}:13"


def test_an_absent_term_leaves_a_sum_out_unless_it_has_a_default(tmp_path: Path) -> None:
    without = compiled(tmp_path, TEXT_SUM).to_tmf({**RECORD, "TAX": None}, BASE)
    assert "value" not in without["taxIncludedAmount"]
    mapping = compiled(tmp_path, DEFAULT_SUM)
    assert mapping.to_tmf({**RECORD, "TAX": None}, BASE)["taxIncludedAmount"]["value"] == 1050
    both = mapping.to_tmf({**RECORD, "TAX": None, "AMT": "1.5"}, BASE)
    assert both["taxIncludedAmount"]["value"] == 1.5


@pytest.mark.parametrize(
    ("default", "message"),
    [("x", "default of a sum must be a number, not 'x'"), ("[1]", "must be a number")],
)
def test_a_sum_default_must_be_a_number(tmp_path: Path, default: str, message: str) -> None:
    with pytest.raises(MappingSpecError) as info:
        compiled(tmp_path, DEFAULT_SUM.replace("default: 0", f"default: {default}"))
    assert message in str(info.value) and ":13:" in str(info.value)
