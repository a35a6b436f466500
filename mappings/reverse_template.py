"""A template's value back to its columns: `{INV_NO}.pdf` = 'INV24-000001.pdf' is
`INV_NO = 'INV24-000001'`.

A template writes each column as `str(value)` between literal pieces. A value is
reversed by finding every way the literal pieces can cut it (`{A}-{B}` cuts 'x-y-z' two
ways) and asking for any of them: exact, as long as each column's text says its value
unambiguously, which holds for text columns and for integers written canonically
('42', never '042'). Anything else (dates, decimals, `{base}`, too many cuts) is not
reversed here and the gateway compares the built value itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from adapters.base import MATCH_ALL, MATCH_NONE, AllOf, AnyOf, Compare, IsNull, Predicate
from adapters.kinds import Kind

#: Cuts of one value beyond which the template is not reversed (the OR would be long).
MAX_CUTS = 32
#: Positions tried while cutting, beyond which the template is not reversed: adjacent
#: columns could otherwise cost the length of the value to the power of their number.
MAX_STEPS = 10_000
_INTEGER_KINDS = frozenset({"integer"})

Pieces = tuple[tuple[str, str | None], ...]
#: The back end's test that a column starts with a text: `(column, text) -> predicate`.
StartsWith = Callable[[str, str], Predicate]


def template_equals(
    pieces: Pieces, value: str, kinds: Mapping[str, Kind] | None
) -> Predicate | None:
    """Records whose template gives exactly `value`; None when it cannot be told so."""
    columns = [name for _, name in pieces if name is not None]
    if kinds is None or "base" in columns:
        return None
    if any(kinds.get(c) not in ("text", "integer") for c in columns):
        return None
    choices: list[Predicate] = []
    steps = [0]
    try:
        cuts = list(_cuts(pieces, value, 0, 0, steps))
    except _TooMany:
        return None
    if len(cuts) > MAX_CUTS:
        return None
    for cut in cuts:
        terms = []
        for column, text in zip(columns, cut, strict=True):
            raw = _raw(text, kinds[column])
            if raw is None:
                break
            terms.append(Compare(column, "eq", raw))
        else:
            choices.append(terms[0] if len(terms) == 1 else AllOf(tuple(terms)))
    if not columns:
        return MATCH_ALL if _literal(pieces) == value else MATCH_NONE
    if not choices:
        return MATCH_NONE
    return choices[0] if len(choices) == 1 else AnyOf(tuple(dict.fromkeys(choices)))


def template_differs(
    pieces: Pieces, value: str, kinds: Mapping[str, Kind] | None
) -> Predicate | None:
    """Records whose template gives no value or another one: the complement of equals."""
    equal = template_equals(pieces, value, kinds)
    if equal is None:
        return None
    return negate(equal)


def negate(predicate: Predicate) -> Predicate:
    """NOT of an AND/OR of equalities, with SQL's nulls: a null column is "different"."""
    if predicate == MATCH_ALL:
        return MATCH_NONE
    if predicate == MATCH_NONE:
        return MATCH_ALL
    if isinstance(predicate, Compare) and predicate.op == "eq":
        return AnyOf((Compare(predicate.column, "ne", predicate.value), IsNull(predicate.column)))
    if isinstance(predicate, AllOf):
        return AnyOf(tuple(negate(t) for t in predicate.terms))
    if isinstance(predicate, AnyOf):
        return AllOf(tuple(negate(t) for t in predicate.terms))
    raise TypeError(f"cannot negate {predicate!r}")


def _literal(pieces: Pieces) -> str:
    return "".join(text for text, _ in pieces)


class _TooMany(Exception):
    pass


def _cuts(
    pieces: Pieces, value: str, index: int, pos: int, steps: list[int]
) -> Iterator[tuple[str, ...]]:
    """Every way to read `value[pos:]` as `pieces[index:]`: the columns' texts."""
    steps[0] += 1
    if steps[0] > MAX_STEPS:
        raise _TooMany
    if index == len(pieces):
        if pos == len(value):
            yield ()
        return
    literal, name = pieces[index]
    if not value.startswith(literal, pos):
        return
    pos += len(literal)
    if name is None:
        yield from _cuts(pieces, value, index + 1, pos, steps)
        return
    for end in range(pos, len(value) + 1):
        for rest in _cuts(pieces, value, index + 1, end, steps):
            yield (value[pos:end], *rest)


def _raw(text: str, kind: Kind | None) -> object | None:
    """The column value whose `str` is `text`, or None when there is none."""
    if kind == "text":
        return text
    if kind in _INTEGER_KINDS:
        body = text[1:] if text.startswith("-") else text
        if not body.isascii() or not body.isdigit() or len(body) > 19:
            return None
        if body != "0" and body.startswith("0") or text == "-0":
            return None
        return int(text)
    return None


def template_prefix_candidates(
    pieces: Pieces, prefix: str, kinds: Mapping[str, Kind] | None, starts_with: StartsWith
) -> Predicate | None:
    """Records whose template value may start with `prefix` (a superset; None: all may).

    The value is `literal + first column + the rest`: it starts with the prefix when the
    first column does (after the literal), or when that column is a shorter start of it
    and the rest completes it, which only the gateway can tell: those few values are
    asked for by equality. `starts_with(column, text)` is the back end's prefix test.
    """
    if not prefix or not pieces or kinds is None:
        return None
    literal, column = pieces[0]
    if len(prefix) <= len(literal):
        return MATCH_NONE if not literal.startswith(prefix) else None
    if column is None or kinds.get(column) != "text":
        return None
    if not prefix.startswith(literal):
        return MATCH_NONE
    rest = prefix[len(literal) :]
    shorter = [Compare(column, "eq", rest[:k]) for k in range(len(rest))]
    return AnyOf((starts_with(column, rest), *shorter))
