"""The generated mapping function: same output, key order and errors as the closure tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mappings.compiler import load_mapping
from mappings.errors import RecordMappingError
from mappings.nodes import ResourceNode
from tests.test_compiler import (
    BASE,
    DERIVED,
    DERIVED_RECORD,
    LEDGER,
    RECORD,
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
