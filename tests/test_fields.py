"""`fields=` projection."""

from __future__ import annotations

from gateway.fields import compile_fields, project

BILL = {
    "id": "1",
    "href": "h",
    "@type": "CustomerBill",
    "state": "new",
    "amountDue": {"unit": "EUR", "value": 1.5},
    "billingAccount": {"@type": "BillingAccountRef", "id": "A", "name": "n"},
    "taxItem": [
        {"@type": "TaxItem", "taxCategory": "VAT", "taxRate": 19.0},
        {"@type": "TaxItem", "taxCategory": "ECO", "taxRate": 0.0},
    ],
}


def test_first_level_attributes_plus_identity() -> None:
    assert project(BILL, compile_fields(["state"])) == {
        "id": "1",
        "href": "h",
        "@type": "CustomerBill",
        "state": "new",
    }


def test_nested_paths_keep_the_sub_objects_identity() -> None:
    out = project(BILL, compile_fields(["billingAccount.name", "amountDue.value"]))
    assert out["billingAccount"] == {"@type": "BillingAccountRef", "id": "A", "name": "n"}
    assert out["amountDue"] == {"value": 1.5}
    assert "state" not in out


def test_paths_through_arrays_apply_to_every_element() -> None:
    out = project(BILL, compile_fields(["taxItem.taxRate"]))
    assert out["taxItem"] == [
        {"@type": "TaxItem", "taxRate": 19.0},
        {"@type": "TaxItem", "taxRate": 0.0},
    ]


def test_a_whole_attribute_wins_over_its_sub_paths_in_any_order() -> None:
    for paths in (["amountDue.value", "amountDue"], ["amountDue", "amountDue.value"]):
        assert project(BILL, compile_fields(paths))["amountDue"] == BILL["amountDue"]


def test_absent_attributes_are_simply_absent() -> None:
    assert project(BILL, compile_fields(["billCycle"])) == {
        "id": "1",
        "href": "h",
        "@type": "CustomerBill",
    }
