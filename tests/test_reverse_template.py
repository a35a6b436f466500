"""Reading a template backwards: every cut of the value, exactly; nothing it cannot tell."""

from __future__ import annotations

import time

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull
from mappings.reverse_template import negate, template_differs, template_equals

TEXT = {"A": "text", "B": "text", "N": "integer", "D": "date"}


def pieces(*items: tuple[str, str | None]) -> tuple[tuple[str, str | None], ...]:
    return tuple(items)


def test_one_column_and_a_suffix() -> None:
    pdf = pieces(("", "A"), (".pdf", None))
    assert template_equals(pdf, "INV24-000001.pdf", TEXT) == Compare("A", "eq", "INV24-000001")
    assert template_equals(pdf, "INV24-000001.txt", TEXT) == MATCH_NONE  # never produced
    assert template_equals(pdf, ".pdf", TEXT) == Compare("A", "eq", "")


def test_every_cut_is_asked_for() -> None:
    dash = pieces(("", "A"), ("-", "B"))
    assert template_equals(dash, "x-y-z", TEXT) == AnyOf(
        (
            AllOf((Compare("A", "eq", "x"), Compare("B", "eq", "y-z"))),
            AllOf((Compare("A", "eq", "x-y"), Compare("B", "eq", "z"))),
        )
    )


def test_integers_only_as_written_canonically() -> None:
    url = pieces(("/bills/", "N"), ("", None))
    assert template_equals(url, "/bills/42", TEXT) == Compare("N", "eq", 42)
    assert template_equals(url, "/bills/-7", TEXT) == Compare("N", "eq", -7)
    for never in ("/bills/042", "/bills/4x", "/bills/", "/bills/-0", "/bills/٤٢"):
        assert template_equals(url, never, TEXT) == MATCH_NONE, never


def test_what_cannot_be_told_is_left_to_the_gateway() -> None:
    assert template_equals(pieces(("", "base"), ("/x", None)), "http://h/x", TEXT) is None
    assert (
        template_equals(
            pieces(
                ("", "D"),
            ),
            "2024-01-01",
            TEXT,
        )
        is None
    )  # str(date)
    assert (
        template_equals(
            pieces(
                ("", "A"),
            ),
            "x",
            None,
        )
        is None
    )  # kinds unknown
    # Adjacent columns cut a long value too many ways: not reversed, and quickly so.
    many = pieces(("", "A"), ("x", "B"), ("x", "A"), ("y", None))
    started = time.perf_counter()
    assert template_equals(many, "x" * 3000, TEXT) is None
    assert time.perf_counter() - started < 1


def test_a_constant_template_and_negation() -> None:
    fixed = pieces(("Bill", None))
    assert template_equals(fixed, "Bill", TEXT) == MATCH_ALL
    assert template_equals(fixed, "Bull", TEXT) == MATCH_NONE
    pdf = pieces(("", "A"), (".pdf", None))
    assert template_differs(pdf, "a.pdf", TEXT) == AnyOf((Compare("A", "ne", "a"), IsNull("A")))
    assert negate(MATCH_NONE) == MATCH_ALL and negate(MATCH_ALL) == MATCH_NONE


def test_a_prefix_narrows_a_templates_first_column() -> None:
    from mappings.reverse_template import template_prefix_candidates

    def starts(column: str, text: str) -> Compare:
        return Compare(column, "starts", text)

    pdf = pieces(("", "A"), (".pdf", None))
    assert template_prefix_candidates(pdf, "INV", TEXT, starts) == AnyOf(
        (
            Compare("A", "starts", "INV"),
            Compare("A", "eq", ""),
            Compare("A", "eq", "I"),
            Compare("A", "eq", "IN"),
        )
    )
    url = pieces(("https://dms/", "A"))
    assert template_prefix_candidates(url, "https://", TEXT, starts) is None  # all may
    assert template_prefix_candidates(url, "ftp://", TEXT, starts) == MATCH_NONE
    assert template_prefix_candidates(url, "https://dms/k", TEXT, starts) == AnyOf(
        (Compare("A", "starts", "k"), Compare("A", "eq", ""))
    )
    assert template_prefix_candidates(pieces(("", "N")), "4", TEXT, starts) is None
    assert template_prefix_candidates(pdf, "", TEXT, starts) is None
