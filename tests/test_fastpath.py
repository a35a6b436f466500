"""The generated mapping function: same output, key order and errors as the closure tree."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mappings.compiler import load_mapping
from mappings.errors import RecordMappingError
from mappings.nodes import ResourceNode
from tests.test_compiler import (
    BASE,
    DEFAULT_SUM,
    DERIVED,
    DERIVED_RECORD,
    LEDGER,
    NATIVE_SPEC,
    RECORD,
    TEMPLATED,
    TEXT_SUM,
    TYPED,
    TYPES,
    compiled,
    write,
)


def variants() -> list[dict[str, Any]]:
    """The test record with each column nulled or removed in turn, and its rows emptied."""
    out = [RECORD, {**RECORD, "lines": []}, {**RECORD, "lines": None}]
    for column in RECORD:
        out.append({**RECORD, column: None})
        out.append({k: v for k, v in RECORD.items() if k != column})
    out.append({**RECORD, "lines": [{"K": 7, "CAT": None, "AMT": None}]})
    out.append({**RECORD, "lines": [{"K": 7}]})
    out.append({**RECORD, "ST": "Z", "DT": "bad"})
    return out


def outcome(fn: Any, record: dict[str, Any]) -> Any:
    try:
        return list(fn(record, BASE).items())  # order matters: it is the JSON order
    except RecordMappingError as exc:
        return ("error", exc.field, exc.reason)


@pytest.mark.parametrize("record", variants())
def test_fast_and_slow_paths_agree(tmp_path: Path, record: dict[str, Any]) -> None:
    mapping = compiled(tmp_path)
    assert outcome(mapping.to_tmf, record) == outcome(mapping.fast_path.slow, record)


def test_a_record_that_fits_never_reaches_the_node_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = compiled(tmp_path)
    expected = mapping.fast_path.slow(RECORD, BASE)

    def refuse(self: ResourceNode, record: Any, base: str) -> Any:
        raise AssertionError("the generated function fell back on the node tree")

    monkeypatch.setattr(ResourceNode, "__call__", refuse)
    assert list(mapping.to_tmf(RECORD, BASE).items()) == list(expected.items())
    with pytest.raises(AssertionError, match="fell back"):  # and a misfit does reach it
        mapping.to_tmf({**RECORD, "ST": "Z"}, BASE)


def test_column_reads_are_inlined(tmp_path: Path) -> None:
    source = compiled(tmp_path).fast_path.source
    assert "r['NO']" in source and "r['CUR']" in source
    assert "for x in r.get('lines')" in source  # child rows in a generated loop


def test_every_bundled_mapping_compiles_to_a_fast_path() -> None:
    root = Path(__file__).resolve().parent.parent / "mappings"
    files = [p for p in root.rglob("*.yaml") if "actions" not in p.parts]
    assert len(files) >= 6
    for path in files:
        source = load_mapping(path).fast_path.source
        assert "def fast(r, base):" in source and "r['" in source, path  # columns inlined


def derived_variants() -> list[dict[str, Any]]:
    """The derived-values record with nulls, missing columns and rows in turn."""
    base = DERIVED_RECORD
    out: list[dict[str, Any]] = [base, {**base, "lines": [], "pays": []}, {**base, "ST": "D"}]
    for column in base:
        out.append({**base, column: None})
        out.append({k: v for k, v in base.items() if k != column})
    out.append({**base, "lines": [{**row, "AMT": None} for row in base["lines"]]})
    out.append({**base, "lines": [{"K": 7, "CAT": "TAX"}]})
    out.append({**base, "pays": [{"K": 7, "AMT": "x", "OK": True}]})
    return out


@pytest.mark.parametrize("record", derived_variants())
def test_fast_and_slow_paths_agree_on_derived_values(
    tmp_path: Path, record: dict[str, Any]
) -> None:
    mapping = load_mapping(write(tmp_path, DERIVED), columns=LEDGER, attribute_types=TYPES)
    assert outcome(mapping.to_tmf, record) == outcome(mapping.fast_path.slow, record)


def test_the_demo_bill_reads_each_column_once_and_builds_each_object_whole() -> None:
    path = Path(__file__).resolve().parent.parent / "mappings/legacy_sql/customer_bill.yaml"
    source = load_mapping(path).fast_path.source
    assert source.count("r['CURR_CD']") == 1  # four amounts, one read
    assert "'] = " not in source  # no object is filled key by key


def text_variants() -> list[dict[str, Any]]:
    """Records whose summed and templated columns are text, numbers, nulls, junk or absent."""
    out = []
    for tax in ("12.50", " 3 ", 4, Decimal("1.25"), 2.5, None, "x", "NaN", "Infinity", True):
        out.append({**RECORD, "AMT": "0.10", "TAX": tax})
        out.append({**RECORD, "AMT": None, "TAX": tax})
    out.append({k: v for k, v in RECORD.items() if k != "TAX"})
    out.append({**RECORD, "NO": "ab-c", "RUN": None})
    out.append({**RECORD, "NO": 12})
    return out


@pytest.mark.parametrize("spec", [TEXT_SUM, DEFAULT_SUM, TEMPLATED], ids=["text", "default", "tpl"])
@pytest.mark.parametrize("record", text_variants())
def test_fast_and_slow_paths_agree_on_text_sums_and_transformed_templates(
    tmp_path: Path, spec: str, record: dict[str, Any]
) -> None:
    mapping = compiled(tmp_path, spec)
    assert outcome(mapping.to_tmf, record) == outcome(mapping.fast_path.slow, record)


def test_text_sums_and_transformed_templates_stay_on_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: ResourceNode, record: Any, base: str) -> Any:
        raise AssertionError("the generated function fell back on the node tree")

    text_sum, templated = compiled(tmp_path, TEXT_SUM), compiled(tmp_path, TEMPLATED)
    record = {**RECORD, "AMT": "12.50", "TAX": "0.10"}
    monkeypatch.setattr(ResourceNode, "__call__", refuse)
    assert text_sum.to_tmf(record, BASE)["taxIncludedAmount"]["value"] == 12.6
    assert templated.to_tmf(RECORD, BASE)["billNo"] == "B-7-3"
    assert "SUM((" in text_sum.fast_path.source
    typed = load_mapping(write(tmp_path, NATIVE_SPEC), columns=TYPED, attribute_types=TYPES)
    assert "sum((" in typed.fast_path.source  # reflected number columns: a plain sum
